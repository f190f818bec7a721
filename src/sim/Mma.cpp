#include "sim/Mma.hpp"

#include <cstring>

#include "sim/HostIsa.hpp"
#include "sim/MmaAvx512.hpp"
#include "sim/MmaPortable.hpp"

namespace ppu {

bool mma_has_avx512bf16() { return host_isa_allows_avx512bf16(); }

namespace {

#if defined(__x86_64__) || defined(__i386__)
inline uint16_t get16(const void* base, int64_t idx) { return static_cast<const uint16_t*>(base)[idx]; }

void mma_bf16_fast(const void* a, int lda, bool trans_a, const void* b, int ldb, bool trans_b, float* c, int ldc, int m,
                   int n, int k, bool accumulate, MmaScratch& s) {
  if (m <= detail::kDotMaxRows && trans_b && !trans_a) {
    detail::mma_bf16_dot_avx512(static_cast<const uint16_t*>(a), lda, static_cast<const uint16_t*>(b), ldb, c, ldc, m, n,
                                k, accumulate);
    return;
  }
  const int kpairs = (k + 1) / 2;
  constexpr int kW = detail::kPanelCols;
  const int panels = (n + kW - 1) / kW;
  s.b16.resize(static_cast<size_t>(panels) * kpairs * 2 * kW);
  uint16_t* bp = s.b16.data();
  for (int pn = 0; pn < panels; ++pn) {
    uint16_t* panel = bp + static_cast<int64_t>(pn) * kpairs * 2 * kW;
    const int j0 = pn * kW;
    const int nc = n - j0 < kW ? n - j0 : kW;
    for (int kk = 0; kk < kpairs; ++kk) {
      uint16_t* dst = panel + kk * 2 * kW;
      const int p0 = 2 * kk, p1 = 2 * kk + 1;
      if (!trans_b && nc == kW && p1 < k) {
        // Hot path: interleave two contiguous rows of B (the compiler vectorises this loop).
        const uint16_t* r0 = static_cast<const uint16_t*>(b) + int64_t{p0} * ldb + j0;
        const uint16_t* r1 = static_cast<const uint16_t*>(b) + int64_t{p1} * ldb + j0;
        for (int l = 0; l < kW; ++l) {
          dst[2 * l] = r0[l];
          dst[2 * l + 1] = r1[l];
        }
        continue;
      }
      for (int l = 0; l < kW; ++l) {
        uint16_t v0 = 0, v1 = 0;
        if (l < nc) {
          const int j = j0 + l;
          v0 = trans_b ? get16(b, int64_t{j} * ldb + p0) : get16(b, int64_t{p0} * ldb + j);
          if (p1 < k) v1 = trans_b ? get16(b, int64_t{j} * ldb + p1) : get16(b, int64_t{p1} * ldb + j);
        }
        dst[2 * l] = v0;
        dst[2 * l + 1] = v1;
      }
    }
  }
  const uint16_t* ap = static_cast<const uint16_t*>(a);
  int lda_p = lda;
  if (trans_a || (k & 1) || (lda & 1)) {
    lda_p = 2 * kpairs;
    s.a16.assign(static_cast<size_t>(m) * lda_p, 0);
    for (int i = 0; i < m; ++i)
      for (int p = 0; p < k; ++p)
        s.a16[static_cast<size_t>(i) * lda_p + p] = trans_a ? get16(a, int64_t{p} * lda + i) : get16(a, int64_t{i} * lda + p);
    ap = s.a16.data();
  }
  detail::mma_bf16_avx512(ap, lda_p, bp, kpairs, c, ldc, m, n, accumulate);
}
#endif  // x86

}  // namespace

bool mma_streams_long_k(DType t, int m, bool trans_a, bool trans_b) {
  if (!trans_b || trans_a) return false;
  if (t == DType::kBF16 && mma_has_avx512bf16()) return m <= detail::kDotMaxRows;
  return m <= detail::kPortableDotMaxRows && detail::mma_portable_dot_supports(t);
}

void mma_tile(DType t, const void* a, int lda, bool trans_a, const void* b, int ldb, bool trans_b, float* c, int ldc,
              int m, int n, int k, bool accumulate, MmaScratch& scratch) {
  init_host_isa_from_env();
#if defined(__x86_64__) || defined(__i386__)
  if (t == DType::kBF16 && mma_has_avx512bf16()) {
    mma_bf16_fast(a, lda, trans_a, b, ldb, trans_b, c, ldc, m, n, k, accumulate, scratch);
    return;
  }
#endif
  if (m <= detail::kPortableDotMaxRows && trans_b && !trans_a && detail::mma_portable_dot_supports(t)) {
    detail::mma_portable_dot(t, static_cast<const uint16_t*>(a), lda, static_cast<const uint16_t*>(b), ldb, c, ldc, m,
                             n, k, accumulate, scratch);
    return;
  }
  detail::mma_portable_panels(t, a, lda, trans_a, b, ldb, trans_b, c, ldc, m, n, k, accumulate, scratch);
}

}  // namespace ppu
