// GEMM on the PPU: C[b] = alpha * op(A[b]) . op(B[b]) for b < batch, fp32 accumulation.
//
//   A: [batch, M, K] row-major, or [batch, K, M] with trans_a
//   B: [batch, K, N] row-major, or [batch, N, K] with trans_b
//   C: [batch, M, N] row-major, fp32, bf16 or fp16 (rounded RNE on store)
//   A and B share a dtype: bf16, fp16, or fp8 (e4m3/e5m2) on chips with an fp8 matrix unit.
//
//   GemmShape s{.m = 512, .n = 384, .k = 1000};
//   KernelTiming t = kernels::gemm(dev, s, a, b, c);
//
// Each block computes one [tile_m, tile_n] tile of C: it streams [tile_m, tile_k] and [tile_k,
// tile_n] tiles of A and B through `stages` SRAM buffers (loads run ahead of the matrix unit, the
// dependencies derived from the buffers) and stores C once. Blocks are ordered in groups of rows of
// tiles so that concurrently running blocks share A and B tiles in L2. The tile shape is chosen per
// chip and problem (choose_gemm_config) - like a BLAS library's heuristic - but the time always
// comes from the timing engine running the resulting programs.
#pragma once

#include <string>

#include "runtime/Device.hpp"

namespace ppu::kernels {

struct GemmShape {
  int64_t m = 0, n = 0, k = 0;
  int64_t batch = 1;
  bool trans_a = false, trans_b = false;
  float alpha = 1.0f;
};

struct GemmConfig {
  int tile_m = 128, tile_n = 128, tile_k = 64;
  int stages = 2;
  int group_m = 8;  // block ordering: this many rows of tiles are walked together
  std::string describe() const;
};

// Picks a tile shape that fits the chip's SRAM and keeps the cores busy (wave quantization).
GemmConfig choose_gemm_config(const ChipSpec& chip, const GemmShape& s, DType in_type);

// Builds the kernel (validates shapes and dtypes; throws UserError naming the mismatch).
Kernel make_gemm(const ChipSpec& chip, const GemmShape& s, const Buffer& a, const Buffer& b, const Buffer& c,
                 const GemmConfig* config = nullptr);

KernelTiming gemm(Device& dev, const GemmShape& s, const Buffer& a, const Buffer& b, const Buffer& c,
                  Stream* stream = nullptr, const GemmConfig* config = nullptr);

// One launch for independent kernels (a grouped GEMM: every expert's GEMM in one grid), ordered
// largest SRAM need first as concat_kernels requires of block 0; a single part launches as it is.
KernelTiming launch_grouped(Device& dev, const std::string& name, std::vector<Kernel> parts, Stream* stream = nullptr);

// Scalar reference (double accumulation of fp32-converted inputs), for tests and --check.
// a, b, c hold the values as fp32 (already rounded to their dtypes).
void gemm_reference(const GemmShape& s, const std::vector<float>& a, const std::vector<float>& b, std::vector<float>& c);

}  // namespace ppu::kernels
