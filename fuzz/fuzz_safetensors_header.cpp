// Fuzzes the safetensors reader (models/Safetensors parse_safetensors, what SafetensorsFile runs on a
// mapped .safetensors file): the input is a whole file, [u64 header length][JSON header][data]. A file
// that parses has every tensor converted to fp32, reading every byte the header points at.
// Finding: anything but a UserError (fuzz/FuzzInput.hpp), e.g. a tensor reaching past the input (ASan).
// Seeds: tests/data/*/*.safetensors cut to the header plus a few data bytes, and small whole files.
#include <span>
#include <vector>

#include "FuzzInput.hpp"
#include "models/Safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ppu;
  return fuzz::run([&] {
    const SafetensorsHeader h =
        parse_safetensors(std::span(reinterpret_cast<const std::byte*>(data), size), "fuzz.safetensors");
    std::vector<float> values;
    for (const SafetensorsTensor& t : h.tensors) {
      if (t.numel() > (int64_t{1} << 20)) continue;  // the input is at most -max_len bytes anyway
      values = tensor_to_f32(t, t.shape);
    }
  });
}
