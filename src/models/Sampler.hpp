// Token sampling from logits: greedy, temperature, top-k, top-p (nucleus); seeded and reproducible
// (the same seed and logits give the same tokens on every machine: the generator is splitmix64 and
// the uniform draw is built from its bits, not from a library distribution).
//
//   Sampler s({.temperature = 0.7, .top_k = 20, .top_p = 0.8, .seed = 42});
//   int32_t next = s.sample(logits);        // logits: one row of vocab values
//
// temperature 0 means greedy (argmax, ties to the lowest id). Otherwise: logits / temperature, keep
// the top_k largest (0: all), softmax, keep the smallest prefix (by descending probability, ties by id)
// whose mass reaches top_p, renormalise and draw.
//
// Runs on the host, on the logits the device produced: the last step of a generation loop, not
// part of the simulated chip's time (see docs/models.md).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace ppu {

struct SamplerOptions {
  double temperature = 0.0;  // 0: greedy
  int64_t top_k = 0;         // 0: no limit
  double top_p = 1.0;        // 1: no limit
  uint64_t seed = 0;
};

class Sampler {
 public:
  // Throws UserError for a negative temperature or top_k, or top_p outside (0, 1].
  explicit Sampler(SamplerOptions opt);
  int32_t sample(std::span<const float> logits);

 private:
  double uniform();  // [0, 1)
  SamplerOptions opt_;
  uint64_t state_;
};

}  // namespace ppu
