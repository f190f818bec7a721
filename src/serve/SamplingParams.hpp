// SamplingParams: how one request of the serving engine (serve/Engine) chooses its tokens and when
// it ends - what the OpenAI API's sampling fields become (serve/OpenAi).
#pragma once

#include <cstdint>
#include <vector>

namespace ppu::serve {

struct SamplingParams {
  double temperature = 0.0;   // 0: greedy
  double top_p = 1.0;
  int64_t top_k = 0;          // 0: no limit
  uint64_t seed = 0;
  int64_t max_tokens = 16;    // >= 1
  std::vector<int32_t> stop_ids = {};  // the request ends after generating one (kept as its last token)
  // OpenAI's penalties on the logits of tokens already generated: - presence (once a token has
  // appeared) - frequency x (times it appeared). Each in [-2, 2].
  double presence_penalty = 0.0;
  double frequency_penalty = 0.0;
};

}  // namespace ppu::serve
