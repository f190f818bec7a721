// Symmetric per-row int8 quantisation (SmoothQuant-style W8A8): for each row r of x [rows, cols],
//   s[r] = max(max_c |x[r, c]| * (1 / 127), kQuantizeMinScale)      (fp32)
//   q[r, c] = int8(RNE(x[r, c] / s[r]))                              (in [-127, 127])
// so that x[r, c] ~ q[r, c] * s[r] with an error of at most s[r] / 2 per element.
//
//   kernels::quantize_rows_int8(dev, hidden, hidden_q, hidden_scale, tokens, hidden_size);
//
// Run on activations [tokens, hidden] it gives the per-token dynamic scales of W8A8 inference; run
// once on a linear layer's weight W [out, in] (as checkpoints store it) it gives the per-output-
// channel static scales. The result feeds kernels::gemm_w8a8.
//
// It is a vector-unit and memory kernel and is timed as one: rows up to kQuantizeTileElems long are
// read once; longer rows are done one row per block in two passes over column chunks (pass 1 the
// running max, pass 2 reloads and quantises), as a GPU kernel does when a row does not fit in
// shared memory.
//
// Not here: SmoothQuant's migration of activation outliers into the weights (a per-channel
// rescaling applied to the checkpoint offline), asymmetric (zero-point) or per-group scales.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/Device.hpp"

namespace ppu::kernels {

// Elements of one fp32 SRAM tile; a few such tiles stay far below the smallest core SRAM.
inline constexpr int kQuantizeTileElems = 8192;
// The smallest scale: an all-zero row gets this one (and zeros), not a division by zero.
inline constexpr float kQuantizeMinScale = 1e-30f;

// Builds the quantisation of x [rows, cols] (bf16, fp16 or fp32) into q [rows, cols] (int8) and
// scale [rows] (fp32). UserError naming "quantize_rows_int8" for a non-positive extent, a size that
// does not match, or a wrong dtype.
Kernel make_quantize_rows_int8(const Buffer& x, const Buffer& q, const Buffer& scale, int64_t rows, int64_t cols);

KernelTiming quantize_rows_int8(Device& dev, const Buffer& x, const Buffer& q, const Buffer& scale, int64_t rows,
                                int64_t cols, Stream* s = nullptr);

// Scalar reference with the kernel's fp32 arithmetic (the same operations in the same order, so the
// results are bit-identical): x [rows, cols] as fp32 values (already rounded to their dtype).
void quantize_rows_int8_reference(const std::vector<float>& x, int64_t rows, int64_t cols, std::vector<int8_t>& q,
                                  std::vector<float>& scale);

}  // namespace ppu::kernels
