// Host implementation of the matrix unit: one MMA tile instruction, with hardware numerics.
//
// Products of bf16/fp16/fp8 inputs are exact in fp32 and are accumulated in fp32 (round to nearest
// even per addition), as tensor cores and the PPU's matrix unit do. The summation order over k is
// the kernel's own (pairs of k, then along k) - results match a naive fp32 loop to within fp32
// rounding of the sum, not bit for bit; tests state that tolerance.
//
// Dispatch is at run time: on CPUs with AVX512-BF16 the bf16 path uses VDPBF16PS micro-kernels
// (compiled for that target only, called only after a CPUID check; never -march=native); other
// dtypes and CPUs convert to fp32 and use a portable kernel.
#pragma once

#include <cstdint>
#include <vector>

#include "arch/DType.hpp"

namespace ppu {

struct MmaScratch {
  std::vector<uint16_t> a16, b16;
  std::vector<float> a32, b32;
};

// c[i*ldc + j] (+)= sum_p A[i,p] * B[p,j] for i < m, j < n, p < k.
// A[i,p] = a[i*lda + p] (or a[p*lda + i] if trans_a); B[p,j] = b[p*ldb + j] (or b[j*ldb + p] if trans_b).
// Strides are in elements of `in_type`. Not thread-safe per scratch object.
void mma_tile(DType in_type, const void* a, int lda, bool trans_a, const void* b, int ldb, bool trans_b, float* c,
              int ldc, int m, int n, int k, bool accumulate, MmaScratch& scratch);

// True if the bf16 path uses AVX512-BF16 on this CPU (for reports).
bool mma_has_avx512bf16();

// True if mma_tile streams B for this kind of product without packing it (small m, B stored [n, k]:
// decode-shaped products), so that one call over a longer k costs no more than several calls over
// its pieces and reads longer contiguous rows. The executor then merges consecutive k-steps of one
// accumulator into one call; the sum is then reassociated (one horizontal sum per output instead of
// one per k-step), within the fp32 accumulation bound the tests state.
bool mma_streams_long_k(DType in_type, int m, bool trans_a, bool trans_b);

}  // namespace ppu
