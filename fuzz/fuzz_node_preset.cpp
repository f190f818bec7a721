// Fuzzes the node preset parser (arch/NodeSpec parse_node, what `--node file.json` reads; its "chip"
// loads a built-in chip): the input is the file's text. Finding: anything but a UserError
// (fuzz/FuzzInput.hpp). Seeds: presets/nodes.
#include "FuzzInput.hpp"
#include "arch/NodeSpec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return ppu::fuzz::run([&] { ppu::parse_node(ppu::fuzz::text(data, size), "fuzz-node.json"); });
}
