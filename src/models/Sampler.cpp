#include "models/Sampler.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "arch/Error.hpp"
#include "kernels/Sampling.hpp"

namespace ppu {

Sampler::Sampler(SamplerOptions opt) : opt_(opt), state_(opt.seed) {
  if (!(opt_.temperature >= 0.0) || !std::isfinite(opt_.temperature))
    throw UserError(fmt::format("sampling: temperature {} must be 0 (greedy) or positive", opt_.temperature));
  if (opt_.top_k < 0) throw UserError(fmt::format("sampling: top_k {} must be 0 (no limit) or positive", opt_.top_k));
  if (!(opt_.top_p > 0.0 && opt_.top_p <= 1.0))
    throw UserError(fmt::format("sampling: top_p {} must be in (0, 1]", opt_.top_p));
}

bool Sampler::device_capable() const {
  return opt_.temperature == 0.0 || (opt_.top_k >= 1 && opt_.top_k <= kernels::kTopKMax);
}

double Sampler::next_uniform() {
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

int32_t Sampler::sample(std::span<const float> logits) {
  if (logits.empty()) throw UserError("sampling: empty logits");
  const auto n = static_cast<int32_t>(logits.size());
  if (opt_.temperature == 0.0) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; ++i)
      if (logits[static_cast<size_t>(i)] > logits[static_cast<size_t>(best)]) best = i;
    return best;
  }
  std::vector<int32_t> ids(static_cast<size_t>(n));
  std::iota(ids.begin(), ids.end(), 0);
  auto by_logit = [&](int32_t a, int32_t b) {
    const float la = logits[static_cast<size_t>(a)], lb = logits[static_cast<size_t>(b)];
    return la != lb ? la > lb : a < b;
  };
  const auto k = static_cast<size_t>(opt_.top_k > 0 ? std::min<int64_t>(opt_.top_k, n) : n);
  std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(k), ids.end(), by_logit);
  ids.resize(k);
  std::vector<float> values(k);
  for (size_t i = 0; i < k; ++i) values[i] = logits[static_cast<size_t>(ids[i])];
  // The draw over the candidates is the device path's own (kernels/Sampling), so both give the same token.
  return kernels::sample_from_candidates(values, ids, opt_.temperature, opt_.top_p, next_uniform());
}

}  // namespace ppu
