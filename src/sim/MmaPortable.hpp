// Internal to sim/Mma.cpp: the portable matrix-unit kernels (Highway, dispatched at run time to the
// widest target the CPU has and sim/HostIsa allows). See MmaPortable.cpp for the blocking.
#pragma once

#include <cstdint>

#include "arch/DType.hpp"

namespace ppu {
struct MmaScratch;
}

namespace ppu::detail {

// mma_tile's contract (sim/Mma.hpp) for any matrix dtype: inputs widened to fp32 into packed panels,
// a register-blocked FMA micro-kernel. Each output is c + sum over p in increasing order, one fp32
// rounding per addition (products of matrix dtypes are exact in fp32), so the result is the same
// bit for bit on every target and equals a sequential fp32 loop.
void mma_portable_panels(DType t, const void* a, int lda, bool trans_a, const void* b, int ldb, bool trans_b, float* c,
                         int ldc, int m, int n, int k, bool accumulate, MmaScratch& s);

// m <= kPortableDotMaxRows rows of A [m, k] times B^T, B stored [n, k] (a linear layer's weights),
// bf16 or fp16: dot products of contiguous rows, B read once without packing (the decode path).
// Each output is one SIMD accumulator over k and one horizontal sum: deterministic on a given
// target, within the fp32 summation bound of the sequential sum.
inline constexpr int kPortableDotMaxRows = 4;
bool mma_portable_dot_supports(DType t);
void mma_portable_dot(DType t, const uint16_t* a, int lda, const uint16_t* b, int ldb, float* c, int ldc, int m, int n,
                      int k, bool accumulate, MmaScratch& s);

}  // namespace ppu::detail
