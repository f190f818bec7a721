// Fuzzes the chip preset parser (arch/ChipSpec parse_chip, what `--chip file.json` reads): the input
// is the file's text. Finding: anything but a UserError (fuzz/FuzzInput.hpp). Seeds: presets/chips.
#include "FuzzInput.hpp"
#include "arch/ChipSpec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return ppu::fuzz::run([&] { ppu::parse_chip(ppu::fuzz::text(data, size), "fuzz-chip.json"); });
}
