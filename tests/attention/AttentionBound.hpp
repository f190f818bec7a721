// The error bound of attention (kernels/Attention.hpp) against attention_reference, per output
// element; derived in the header of tests/attention/test_attention.cpp. Shared by the contiguous and
// paged attention tests, with the forced tiling both use.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/Attention.hpp"
#include "kernels/KernelTestUtil.hpp"

namespace ppu::test {

// A tiling forced on an attention call (the tests' odd tiles, splits and packings).
inline kernels::AttentionConfig forced_attention_config(kernels::AttentionPacking packing, int tile_q, int tile_kv,
                                                        int stages, int splits) {
  kernels::AttentionConfig c;
  c.packing = packing;
  c.tile_q = tile_q;
  c.tile_kv = tile_kv;
  c.stages = stages;
  c.splits = splits;
  return c;
}

// Matrix-unit operand dtype of a tensor of dtype t (kernels/Attention.hpp, "Numerics").
inline DType attention_matrix_type(DType t) { return t == DType::kBF16 || t == DType::kF16 ? t : DType::kBF16; }

// The bound of test_attention.cpp's header for every element of out [q_tokens, q_heads, head_dim]:
// q, k, v the inputs as fp32 values (k, v [kv_capacity, kv_heads, head_dim]), ref the reference
// output, steps = KV tiles visited + splits.
inline std::vector<double> attention_bound(const kernels::AttentionShape& s, const std::vector<float>& q,
                                           const std::vector<float>& k, const std::vector<float>& v,
                                           const std::vector<double>& ref, DType q_t, DType k_t, DType v_t, DType out_t,
                                           int64_t steps) {
  const double u = test::kU32;
  const DType qk_t = attention_matrix_type(k_t), pv_t = attention_matrix_type(v_t);
  const double eps_q = q_t == qk_t ? 0.0 : unit_roundoff(qk_t), eps_k = k_t == qk_t ? 0.0 : unit_roundoff(qk_t);
  const double eps_v = v_t == pv_t ? 0.0 : unit_roundoff(pv_t);
  const double u_pv = unit_roundoff(pv_t);
  const double slack_pv = std::max(test::subnormal_slack(pv_t), std::exp(-87.0));
  const int64_t d = s.head_dim, g = s.q_heads / s.kv_heads;
  const double scale = 1.0 / std::sqrt(double(d));
  const double gamma_d = double(d) * u / (1 - double(d) * u);
  std::vector<double> bound(ref.size());
  std::vector<double> sc, eta, p;
  for (int64_t t = 0; t < s.q_tokens; ++t)
    for (int64_t h = 0; h < s.q_heads; ++h) {
      const int64_t n = s.causal ? s.past_len + t + 1 : s.kv_len(), kvh = h / g, row = t * s.q_heads + h;
      const float* qr = q.data() + row * d;
      sc.assign(static_cast<size_t>(n), 0.0);
      eta.assign(static_cast<size_t>(n), 0.0);
      p.assign(static_cast<size_t>(n), 0.0);
      double m = -INFINITY;
      for (int64_t j = 0; j < n; ++j) {
        const float* kr = k.data() + (j * s.kv_heads + kvh) * d;
        double dot = 0, a = 0;
        for (int64_t c = 0; c < d; ++c) {
          dot += double(qr[c]) * kr[c];
          a += std::fabs(double(qr[c]) * kr[c]);
        }
        sc[static_cast<size_t>(j)] = dot * scale;
        eta[static_cast<size_t>(j)] =
            scale * a * (eps_q + eps_k + eps_q * eps_k + gamma_d) + 2 * u * std::fabs(dot * scale);
        m = std::max(m, dot * scale);
      }
      double worst = 0, l = 0;
      for (int64_t j = 0; j < n; ++j) {
        const auto js = static_cast<size_t>(j);
        worst = std::max(worst, eta[js] + u * (m - sc[js] + eta[js]));
        l += p[js] = std::exp(sc[js] - m);
      }
      for (auto& x : p) x /= l;
      const double rho = std::expm1(worst + 8 * u) + 2 * u * double(steps + 2);
      const double gamma_n = double(n) * u / (1 - double(n) * u);
      for (int64_t c = 0; c < d; ++c) {
        const auto oi = static_cast<size_t>(row * d + c);
        const double o = ref[oi];
        double spread = 0, mag = 0, all = 0;
        for (int64_t j = 0; j < n; ++j) {
          const double vj = v[static_cast<size_t>((j * s.kv_heads + kvh) * d + c)];
          spread += p[static_cast<size_t>(j)] * std::fabs(vj - o);
          mag += p[static_cast<size_t>(j)] * std::fabs(vj);
          all += std::fabs(vj);
        }
        const double e = rho / (1 - rho) * spread + (u_pv + eps_v + 2 * gamma_n + 2 * u) * mag + slack_pv * all / l;
        bound[oi] = test::stored_bound(out_t, o, 1.01 * e);
      }
    }
  return bound;
}

}  // namespace ppu::test
