// Shared pieces of the training tests: a small model (a preset's shape with a 512-token vocabulary,
// so a step takes milliseconds) and batches with a learnable pattern.
#pragma once

#include <string>
#include <vector>

#include "models/ModelConfig.hpp"

namespace ppu::test {

inline ModelConfig small_model(const char* preset = "tiny") {
  ModelConfig c = load_model_config(preset);
  c.vocab_size = 512;
  c.name = std::string(preset) + "-512";
  return c;
}

// [batch, seq + 1] ids: each row counts up by a row-specific stride from `offset`.
inline std::vector<int32_t> batch_tokens(int64_t batch, int64_t seq, int offset) {
  std::vector<int32_t> t;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i <= seq; ++i) t.push_back(static_cast<int32_t>((offset + b * 7 + i * (b + 1)) % 512));
  return t;
}

// n token ids below 512 (the small model's vocabulary), a fixed pattern per seed.
inline std::vector<int32_t> tokens(int64_t n, int seed) {
  std::vector<int32_t> t;
  for (int64_t i = 0; i < n; ++i) t.push_back(static_cast<int32_t>((seed * 131 + i * 37 + (i * i) % 7) % 512));
  return t;
}

}  // namespace ppu::test
