// AVX512-BF16 micro-kernels for the bf16 matrix unit. This file alone is compiled with AVX-512 target
// attributes; its functions are called only when the CPU reports avx512bf16 (see Mma.cpp).
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#define PPU_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

namespace ppu::detail {

namespace {

// MR rows x 32 columns. a: row-major pairs (element [r, 2kk..2kk+1] at a + r*lda + 2kk);
// bp: packed panel, 64 uint16 per k pair (lanes 0-15 = cols 0-15, 16-31 = cols 16-31, each lane the
// pair (B[2kk, j], B[2kk+1, j])).
template <int MR>
PPU_AVX512_TARGET void ukernel(const uint16_t* a, int lda, const uint16_t* bp, int kpairs, float* c, int ldc, int ncols,
                               bool accumulate) {
  __m512 acc0[MR], acc1[MR];
  const __mmask16 m0 = ncols >= 16 ? __mmask16(0xffff) : __mmask16((1u << ncols) - 1);
  const __mmask16 m1 = ncols >= 32 ? __mmask16(0xffff) : (ncols <= 16 ? __mmask16(0) : __mmask16((1u << (ncols - 16)) - 1));
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    if (accumulate) {
      acc0[r] = _mm512_maskz_loadu_ps(m0, c + r * ldc);
      acc1[r] = _mm512_maskz_loadu_ps(m1, c + r * ldc + 16);
    } else {
      acc0[r] = _mm512_setzero_ps();
      acc1[r] = _mm512_setzero_ps();
    }
  }
  for (int kk = 0; kk < kpairs; ++kk) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp + kk * 64);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(bp + kk * 64 + 32);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * lda + 2 * kk, 4);
      const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
      acc0[r] = _mm512_dpbf16_ps(acc0[r], av, b0);
      acc1[r] = _mm512_dpbf16_ps(acc1[r], av, b1);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    _mm512_mask_storeu_ps(c + r * ldc, m0, acc0[r]);
    _mm512_mask_storeu_ps(c + r * ldc + 16, m1, acc1[r]);
  }
}

template <int MR>
PPU_AVX512_TARGET void run_rows(const uint16_t* a, int lda, const uint16_t* bpack, int kpairs, float* c, int ldc, int m,
                                int n, bool accumulate) {
  const int panels = (n + 31) / 32;
  for (int p = 0; p < panels; ++p) {
    const uint16_t* bp = bpack + static_cast<int64_t>(p) * kpairs * 64;
    const int ncols = n - p * 32 < 32 ? n - p * 32 : 32;
    int i = 0;
    for (; i + MR <= m; i += MR) ukernel<MR>(a + i * lda, lda, bp, kpairs, c + i * ldc + p * 32, ldc, ncols, accumulate);
    const int rem = m - i;
    float* cc = c + i * ldc + p * 32;
    const uint16_t* aa = a + i * lda;
    switch (rem) {
#define PPU_REM(R) \
  case R: ukernel<R>(aa, lda, bp, kpairs, cc, ldc, ncols, accumulate); break;
      PPU_REM(1) PPU_REM(2) PPU_REM(3) PPU_REM(4) PPU_REM(5) PPU_REM(6) PPU_REM(7) PPU_REM(8) PPU_REM(9) PPU_REM(10)
      PPU_REM(11) PPU_REM(12) PPU_REM(13)
#undef PPU_REM
      default: break;
    }
  }
}

}  // namespace

// a: [m, 2*kpairs] row-major bf16 with stride lda (even), bpack as produced by pack_b_bf16_pairs.
PPU_AVX512_TARGET void mma_bf16_avx512(const uint16_t* a, int lda, const uint16_t* bpack, int kpairs, float* c, int ldc,
                                       int m, int n, bool accumulate) {
  run_rows<14>(a, lda, bpack, kpairs, c, ldc, m, n, accumulate);
}

}  // namespace ppu::detail
