// Host implementation of the matrix unit: one MMA tile instruction, with hardware numerics.
// (int8 inputs: mma_tile_i8, exact int32 sums; the rest of this header is about float inputs.)
//
// Products of bf16/fp16/fp8 inputs are exact in fp32 and are accumulated in fp32 (round to nearest
// even per addition), as tensor cores and the PPU's matrix unit do. The summation order over k
// depends on the path (below) - results match a naive fp32 loop to within fp32 rounding of the sum;
// tests state that tolerance. Every path is a pure function of its inputs (no threads inside), so
// the functional executor's results do not depend on its thread count.
//
// Paths, chosen at run time per call (never -march=native; sim/HostIsa's PPU_HOST_ISA narrows them):
// - bf16 on CPUs with AVX512-BF16: VDPBF16PS micro-kernels (MmaAvx512.cpp; pairs of k, then along k);
// - otherwise decode-shaped products (m <= 4, B stored [n, k], bf16 or fp16): portable dot products
//   streaming B unpacked (MmaPortable.cpp; one SIMD accumulator per output, then a horizontal sum);
// - everything else: portable blocked kernels (MmaPortable.cpp; inputs widened to fp32 in packed
//   panels, a register-blocked FMA micro-kernel), each output summed in increasing k - the same
//   bits on every SIMD target and as a sequential fp32 loop.
// The portable kernels are compiled by Highway for every SIMD target of the architecture (AVX-512,
// AVX2+FMA, SSE4, NEON, SVE, a C++ fallback) and dispatched to the widest the CPU has.
#pragma once

#include <cstdint>
#include <vector>

#include "arch/DType.hpp"
#include "isa/TileProgram.hpp"  // kMmaInt8MaxK

namespace ppu {

struct MmaScratch {
  std::vector<uint16_t> a16, b16;
  std::vector<float> a32, b32, row;
  std::vector<int16_t> ai8, bi8;  // int8 operands widened, A as [m, k] and B as [n, k]
};

// c[i*ldc + j] (+)= sum_p A[i,p] * B[p,j] for i < m, j < n, p < k.
// A[i,p] = a[i*lda + p] (or a[p*lda + i] if trans_a); B[p,j] = b[p*ldb + j] (or b[j*ldb + p] if trans_b).
// Strides are in elements of `in_type`. Not thread-safe per scratch object.
void mma_tile(DType in_type, const void* a, int lda, bool trans_a, const void* b, int ldb, bool trans_b, float* c,
              int ldc, int m, int n, int k, bool accumulate, MmaScratch& scratch);

// The integer matrix unit: c[i*ldc + j] (+)= sum_p A[i,p] * B[p,j] of int8 inputs, int32 results.
// Layouts as mma_tile's (strides in elements). Exact: integer addition is associative, so every
// path and order gives the same bits; the sum into c wraps modulo 2^32 (two's complement), and k
// must stay below kMmaInt8MaxK so that one call's own sum cannot. Plain C++ that the compiler
// vectorises for the build's baseline ISA (int16 x int16 -> int32 multiply-adds), so it is the same
// under every PPU_HOST_ISA. Not thread-safe per scratch object.
void mma_tile_i8(const int8_t* a, int lda, bool trans_a, const int8_t* b, int ldb, bool trans_b, int32_t* c, int ldc,
                 int m, int n, int k, bool accumulate, MmaScratch& scratch);

// True if the bf16 path uses AVX512-BF16 on this CPU and PPU_HOST_ISA allows it (for reports).
bool mma_has_avx512bf16();

// True if mma_tile streams B for this kind of product without packing it (small m, B stored [n, k],
// bf16 or fp16: decode-shaped products), so that one call over a longer k costs no more than several
// calls over its pieces and reads longer contiguous rows. The executor then merges consecutive k-steps of one
// accumulator into one call; the sum is then reassociated (one horizontal sum per output instead of
// one per k-step), within the fp32 accumulation bound the tests state.
bool mma_streams_long_k(DType in_type, int m, bool trans_a, bool trans_b);

}  // namespace ppu
