// Internal to sim/Mma.cpp: the AVX512-BF16 micro-kernel and the packed layout it reads.
#pragma once

#include <cstdint>

namespace ppu::detail {

inline constexpr int kMR = 6;                // rows per micro-tile
inline constexpr int kNV = 4;                // zmm vectors (16 fp32 columns each) per row
inline constexpr int kPanelCols = 16 * kNV;  // columns per packed B panel

// a: [m, 2*kpairs] row-major bf16 pairs with row stride lda (even). bpack: panels of kPanelCols
// columns; panel p, pair kk, column l holds (B[2kk, j], B[2kk+1, j]) at
// p*kpairs*2*kPanelCols + kk*2*kPanelCols + 2l (+1), j = p*kPanelCols + l, zero beyond n or k.
// Call only if the CPU supports AVX512-BF16.
void mma_bf16_avx512(const uint16_t* a, int lda, const uint16_t* bpack, int kpairs, float* c, int ldc, int m, int n,
                     bool accumulate);

// m <= kDotMaxRows rows of A [m, k] (row stride lda) times B^T with B stored [n, k] (row stride ldb):
// dot products of contiguous rows, no packing. For decode-shaped products (a few tokens times a
// weight matrix). Call only if the CPU supports AVX512-BF16.
inline constexpr int kDotMaxRows = 4;
void mma_bf16_dot_avx512(const uint16_t* a, int lda, const uint16_t* b, int ldb, float* c, int ldc, int m, int n, int k,
                         bool accumulate);

}  // namespace ppu::detail
