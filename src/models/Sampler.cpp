#include "models/Sampler.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "arch/Error.hpp"

namespace ppu {

Sampler::Sampler(SamplerOptions opt) : opt_(opt), state_(opt.seed) {
  if (!(opt_.temperature >= 0.0) || !std::isfinite(opt_.temperature))
    throw UserError(fmt::format("sampling: temperature {} must be 0 (greedy) or positive", opt_.temperature));
  if (opt_.top_k < 0) throw UserError(fmt::format("sampling: top_k {} must be 0 (no limit) or positive", opt_.top_k));
  if (!(opt_.top_p > 0.0 && opt_.top_p <= 1.0))
    throw UserError(fmt::format("sampling: top_p {} must be in (0, 1]", opt_.top_p));
}

double Sampler::uniform() {
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
  const double maxl = logits[static_cast<size_t>(ids[0])];
  std::vector<double> p(k);
  double sum = 0;
  for (size_t i = 0; i < k; ++i) sum += p[i] = std::exp((logits[static_cast<size_t>(ids[i])] - maxl) / opt_.temperature);
  size_t keep = k;
  if (opt_.top_p < 1.0) {
    double mass = 0;
    for (size_t i = 0; i < k; ++i) {
      mass += p[i] / sum;
      if (mass >= opt_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept = 0;
  for (size_t i = 0; i < keep; ++i) kept += p[i];
  double r = uniform() * kept;
  for (size_t i = 0; i < keep; ++i) {
    r -= p[i];
    if (r < 0) return ids[i];
  }
  return ids[keep - 1];
}

}  // namespace ppu
