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
// sample() runs on the host, on logits downloaded from the device. Qwen3Model::forward_sampled runs
// the same choice on the device instead (kernels/Sampling: arg-max or top-k on the chip, the draw
// on the host with this sampler's uniforms), giving the same tokens; it falls back to sample() when
// the options need the whole row (temperature > 0 with top_k 0 or above kernels::kTopKMax).
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
  // The next uniform draw in [0, 1) of this sampler's stream (sample() takes one per call when
  // temperature > 0; the device path takes one per row in row order, the same sequence).
  double next_uniform();
  const SamplerOptions& options() const { return opt_; }
  // Whether kernels::sample_tokens can make this sampler's choice on the device.
  bool device_capable() const;

 private:
  SamplerOptions opt_;
  uint64_t state_;
};

}  // namespace ppu
