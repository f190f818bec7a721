// Shared steps of the model tests.
#pragma once

#include <algorithm>
#include <vector>

#include "models/Qwen3.hpp"

namespace ppu::test {

// Prefills `prompts` as one batch, then decodes `steps` greedy tokens for every sequence (each
// continuing its own cache); the logits of the last step, [prompts.size(), vocab].
inline std::vector<float> greedy_batch(Qwen3Model& m, const std::vector<std::vector<int32_t>>& prompts, int steps) {
  ForwardResult r = m.forward_batch(prompts);
  const auto vocab = static_cast<size_t>(m.config().vocab_size);
  for (int step = 0; step < steps; ++step) {
    std::vector<std::vector<int32_t>> next;
    for (size_t b = 0; b < prompts.size(); ++b) {
      const auto row = r.logits.begin() + static_cast<std::ptrdiff_t>(b * vocab);
      next.push_back({static_cast<int32_t>(std::max_element(row, row + static_cast<std::ptrdiff_t>(vocab)) - row)});
    }
    r = m.forward_batch(next);
  }
  return r.logits;
}

}  // namespace ppu::test
