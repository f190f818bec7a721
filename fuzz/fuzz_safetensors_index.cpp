// Fuzzes the sharded checkpoint index parser (models/Safetensors parse_safetensors_index, what
// CheckpointSet reads from model.safetensors.index.json): the input is the index's text.
// Finding: anything but a UserError (fuzz/FuzzInput.hpp), or a shard name that passes although it is
// absolute or climbs out with ".." (reported by abort). Seeds: indexes written for the tests/data
// checkpoints' tensor names.
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "FuzzInput.hpp"
#include "models/Safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ppu;
  return fuzz::run([&] {
    for (const auto& [tensor, shard] : parse_safetensors_index(fuzz::text(data, size), "fuzz.index.json")) {
      const std::filesystem::path p(shard);
      bool escapes = shard.empty() || p.is_absolute();
      for (const auto& part : p) escapes = escapes || part == "..";
      if (escapes) {
        std::fprintf(stderr, "index accepted shard '%s' for tensor '%s'\n", shard.c_str(), tensor.c_str());
        std::abort();
      }
    }
  });
}
