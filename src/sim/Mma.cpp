#include "sim/Mma.hpp"

#include <cstring>

#include "arch/Error.hpp"
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

void mma_tile_i8(const int8_t* a, int lda, bool trans_a, const int8_t* b, int ldb, bool trans_b, int32_t* c, int ldc,
                 int m, int n, int k, bool accumulate, MmaScratch& s) {
  PPU_CHECK(k >= 0 && k <= kMmaInt8MaxK, "mma_tile_i8: k out of range (TileProgram::mma checks it)");
  // Widen both operands to int16 in [rows, k] layouts, so that every output is a dot product of two
  // contiguous rows (the loop the compiler turns into multiply-adds of int16 pairs).
  s.ai8.resize(static_cast<size_t>(m) * k);
  s.bi8.resize(static_cast<size_t>(n) * k);
  for (int i = 0; i < m; ++i)
    for (int p = 0; p < k; ++p)
      s.ai8[static_cast<size_t>(i) * k + p] = trans_a ? a[int64_t{p} * lda + i] : a[int64_t{i} * lda + p];
  for (int j = 0; j < n; ++j)
    for (int p = 0; p < k; ++p)
      s.bi8[static_cast<size_t>(j) * k + p] = trans_b ? b[int64_t{j} * ldb + p] : b[int64_t{p} * ldb + j];
  for (int i = 0; i < m; ++i) {
    const int16_t* ar = s.ai8.data() + static_cast<size_t>(i) * k;
    int32_t* cr = c + int64_t{i} * ldc;
    for (int j = 0; j < n; ++j) {
      const int16_t* br = s.bi8.data() + static_cast<size_t>(j) * k;
      int32_t dot = 0;  // |dot| <= k * 2^14 < 2^31 (kMmaInt8MaxK)
      for (int p = 0; p < k; ++p) dot += int32_t{ar[p]} * int32_t{br[p]};
      // The accumulator wraps modulo 2^32 like the hardware's (unsigned arithmetic: no overflow UB).
      const uint32_t prev = accumulate ? static_cast<uint32_t>(cr[j]) : 0u;
      cr[j] = static_cast<int32_t>(prev + static_cast<uint32_t>(dot));
    }
  }
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
