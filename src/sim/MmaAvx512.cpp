// AVX512-BF16 micro-kernels for the bf16 matrix unit. This file alone is compiled with AVX-512 target
// attributes; its functions are called only when the CPU reports avx512bf16 (see Mma.cpp).
//
// Register blocking: kMR rows x kNV*16 columns of fp32 accumulators (6 x 64 = 24 zmm), so that each
// k pair costs kNV vector loads of B and kMR broadcasts of A for kMR*kNV VDPBF16PS - the load ports,
// not the dot-product units, are what limit a smaller block.
// GCC 12's AVX-512 headers fill "don't care" lanes with self-initialised _mm*_undefined_* values,
// which -Wuninitialized flags once the lane-sum below is inlined (a false positive inside the
// header, not our code; the build already silences its -Wmaybe-uninitialized twin for this file).
// On other architectures the file is empty (sim/HostIsa never allows this path there).
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "sim/MmaAvx512.hpp"

#define PPU_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

namespace ppu::detail {

namespace {

inline __mmask16 lane_mask(int ncols, int v) {
  const int c = ncols - 16 * v;
  if (c >= 16) return 0xffff;
  if (c <= 0) return 0;
  return static_cast<__mmask16>((1u << c) - 1);
}

// MR rows x (kNV*16) columns. a: row-major pairs (element [r, 2kk..2kk+1] at a + r*lda + 2kk);
// bp: packed panel, kNV*32 uint16 per k pair (vector v holds columns 16v..16v+15, each lane the pair
// (B[2kk, j], B[2kk+1, j])).
template <int MR>
PPU_AVX512_TARGET void ukernel(const uint16_t* a, int lda, const uint16_t* bp, int kpairs, float* c, int ldc, int ncols,
                               bool accumulate) {
  __m512 acc[MR][kNV];
  __mmask16 m[kNV];
#pragma GCC unroll 4
  for (int v = 0; v < kNV; ++v) m[v] = lane_mask(ncols, v);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v)
      acc[r][v] = accumulate ? _mm512_maskz_loadu_ps(m[v], c + r * ldc + 16 * v) : _mm512_setzero_ps();
  for (int kk = 0; kk < kpairs; ++kk) {
    __m512bh b[kNV];
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) b[v] = (__m512bh)_mm512_loadu_si512(bp + kk * (32 * kNV) + 32 * v);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * lda + 2 * kk, 4);
      const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 4
      for (int v = 0; v < kNV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, b[v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) _mm512_mask_storeu_ps(c + r * ldc + 16 * v, m[v], acc[r][v]);
}

}  // namespace

PPU_AVX512_TARGET void mma_bf16_avx512(const uint16_t* a, int lda, const uint16_t* bpack, int kpairs, float* c, int ldc,
                                       int m, int n, bool accumulate) {
  const int panels = (n + kPanelCols - 1) / kPanelCols;
  for (int p = 0; p < panels; ++p) {
    const uint16_t* bp = bpack + static_cast<int64_t>(p) * kpairs * (2 * kPanelCols);
    const int ncols = n - p * kPanelCols < kPanelCols ? n - p * kPanelCols : kPanelCols;
    int i = 0;
    for (; i + kMR <= m; i += kMR)
      ukernel<kMR>(a + i * lda, lda, bp, kpairs, c + i * ldc + p * kPanelCols, ldc, ncols, accumulate);
    float* cc = c + i * ldc + p * kPanelCols;
    const uint16_t* aa = a + i * lda;
    switch (m - i) {
      case 1: ukernel<1>(aa, lda, bp, kpairs, cc, ldc, ncols, accumulate); break;
      case 2: ukernel<2>(aa, lda, bp, kpairs, cc, ldc, ncols, accumulate); break;
      case 3: ukernel<3>(aa, lda, bp, kpairs, cc, ldc, ncols, accumulate); break;
      case 4: ukernel<4>(aa, lda, bp, kpairs, cc, ldc, ncols, accumulate); break;
      case 5: ukernel<5>(aa, lda, bp, kpairs, cc, ldc, ncols, accumulate); break;
      default: break;
    }
  }
}

}  // namespace ppu::detail

namespace ppu::detail {

// Small-m path for B stored transposed ([n, k], the layout of linear-layer weights): each output is
// a dot product of two contiguous bf16 rows, so nothing is packed. This is the weight-streaming path
// of decode, so it is written for memory bandwidth:
// - kDotRows rows of B are walked together, each loaded once and used for all m (<= kDotMaxRows)
//   rows of A, so m * kDotRows independent accumulator chains hide the VDPBF16PS latency;
// - the rows walked together are a quarter of n apart, not neighbours: when the rows are contiguous
//   (the executor merges a GEMM's k-steps into whole weight rows), each of them then advances
//   through its own quarter of one contiguous slab - four long sequential streams, which this
//   host's memory system serves about as fast as it can read (neighbouring rows would instead be
//   four short streams each ending where the next begins);
// - the row about kDotPrefetchBytes further along each stream is prefetched line by line, one
//   prefetch per load, which the hardware prefetchers alone pick up late for short or strided rows.
// Each output keeps one accumulator over k and one horizontal sum, so the result is the same bit
// for bit whichever rows are walked together.
namespace {

inline constexpr int kDotRows = 4;
// Prefetch distance along each stream: measured on the 2-core development host (AVX-512 Zen), 4 KiB
// ahead read 64-row blocks of 2 KiB rows at 30 GB/s on one core against 25 at 16 KiB ahead, where a
// stream of a block is only 32 KiB long, and no worse on long streams.
inline constexpr int kDotPrefetchBytes = 4096;

// Outputs j0 + jj * stride for jj < J; prefetches the rows `ahead` further along.
template <int M, int J>
PPU_AVX512_TARGET inline void dot_rows(const uint16_t* a, int lda, const uint16_t* b, int ldb, float* c, int ldc,
                                       int n, int j0, int stride, int ahead, int full, int rem, bool accumulate) {
  const __mmask32 tail = rem ? static_cast<__mmask32>((uint64_t{1} << rem) - 1) : 0;
  const uint16_t* brow[J];
  const char* pf[J];  // the row `ahead` further along each stream, clamped to B's last row
#pragma GCC unroll 4
  for (int jj = 0; jj < J; ++jj) {
    const int j = j0 + jj * stride;
    brow[jj] = b + static_cast<int64_t>(j) * ldb;
    pf[jj] = reinterpret_cast<const char*>(b + static_cast<int64_t>(j + ahead < n ? j + ahead : n - 1) * ldb);
  }
  __m512 acc[M][J];
#pragma GCC unroll 4
  for (int r = 0; r < M; ++r)
#pragma GCC unroll 4
    for (int jj = 0; jj < J; ++jj) acc[r][jj] = _mm512_setzero_ps();
  for (int q = 0; q < full; ++q) {
    __m512bh bv[J];
#pragma GCC unroll 4
    for (int jj = 0; jj < J; ++jj) {
      bv[jj] = (__m512bh)_mm512_loadu_si512(brow[jj] + 32 * q);
      _mm_prefetch(pf[jj] + 64 * q, _MM_HINT_T0);
    }
#pragma GCC unroll 4
    for (int r = 0; r < M; ++r) {
      const __m512bh av = (__m512bh)_mm512_loadu_si512(a + static_cast<int64_t>(r) * lda + 32 * q);
#pragma GCC unroll 4
      for (int jj = 0; jj < J; ++jj) acc[r][jj] = _mm512_dpbf16_ps(acc[r][jj], av, bv[jj]);
    }
  }
  if (rem) {
    __m512bh bv[J];
#pragma GCC unroll 4
    for (int jj = 0; jj < J; ++jj) bv[jj] = (__m512bh)_mm512_maskz_loadu_epi16(tail, brow[jj] + 32 * full);
#pragma GCC unroll 4
    for (int r = 0; r < M; ++r) {
      const __m512bh av = (__m512bh)_mm512_maskz_loadu_epi16(tail, a + static_cast<int64_t>(r) * lda + 32 * full);
#pragma GCC unroll 4
      for (int jj = 0; jj < J; ++jj) acc[r][jj] = _mm512_dpbf16_ps(acc[r][jj], av, bv[jj]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < M; ++r)
#pragma GCC unroll 4
    for (int jj = 0; jj < J; ++jj) {
      const float sum = _mm512_reduce_add_ps(acc[r][jj]);
      float& out = c[static_cast<int64_t>(r) * ldc + j0 + jj * stride];
      out = accumulate ? out + sum : sum;
    }
}

template <int M>
PPU_AVX512_TARGET void dot_m(const uint16_t* a, int lda, const uint16_t* b, int ldb, float* c, int ldc, int n, int k,
                             bool accumulate) {
  const int full = k / 32, rem = k - full * 32;
  const int quarter = n / kDotRows;
  const int64_t row_bytes = int64_t{ldb} * 2;
  const int ahead = static_cast<int>(std::max<int64_t>(1, (kDotPrefetchBytes + row_bytes - 1) / row_bytes));
  for (int j = 0; j < quarter; ++j)
    dot_rows<M, kDotRows>(a, lda, b, ldb, c, ldc, n, j, quarter, ahead, full, rem, accumulate);
  for (int j = kDotRows * quarter; j < n; ++j)
    dot_rows<M, 1>(a, lda, b, ldb, c, ldc, n, j, 1, ahead, full, rem, accumulate);
}

}  // namespace

PPU_AVX512_TARGET void mma_bf16_dot_avx512(const uint16_t* a, int lda, const uint16_t* b, int ldb, float* c, int ldc,
                                           int m, int n, int k, bool accumulate) {
  static_assert(kDotMaxRows == 4, "one dot_m instantiation per row count");
  switch (m) {
    case 1: dot_m<1>(a, lda, b, ldb, c, ldc, n, k, accumulate); break;
    case 2: dot_m<2>(a, lda, b, ldb, c, ldc, n, k, accumulate); break;
    case 3: dot_m<3>(a, lda, b, ldb, c, ldc, n, k, accumulate); break;
    case 4: dot_m<4>(a, lda, b, ldb, c, ldc, n, k, accumulate); break;
    default: break;
  }
}

}  // namespace ppu::detail

#endif  // x86
