// RMSNorm over the last dim (Llama, Qwen): y[r, c] = x[r, c] / sqrt(mean_c(x[r, c]^2) + eps) * w[c]
// for row-major x and y [rows, cols] and a weight w [cols]. x, w and y may be any dtype (each its
// own); everything between the loads and the store is fp32, and y is rounded once, on store.
//
//   kernels::rms_norm(dev, hidden, norm_weight, out, tokens, hidden_size, 1e-6f);
//
// Rows up to kRmsNormTileElems long are read once (the weight once per block); longer rows are
// done one row per block in two passes over chunks of kRmsNormTileElems columns: pass 1 sums the
// squares, pass 2 reloads each chunk with its slice of the weight and stores the result.
// In-place use (y = x) is allowed: every chunk of a row is read before it is written.
//
// Not here: LayerNorm (mean subtraction, bias), a fused residual add, or Gemma's (1 + w) weight.
// The framework convention of rounding x * rsqrt(...) to the input dtype before multiplying by the
// weight is not reproduced (one rounding at the end instead). The sum of squares is fp32: a row whose
// sum of squares exceeds the fp32 range (elements of about 1e19) gives zeros or NaN.
#pragma once

#include <vector>

#include "runtime/Device.hpp"

namespace ppu::kernels {

// Elements of one SRAM tile (fp32: 32 KiB). Up to 2 * kRmsNormStages such tiles (x and a weight
// slice per stage) stay far below the smallest core SRAM (420 KiB, a100-80g / a800).
inline constexpr int kRmsNormTileElems = 8192;
inline constexpr int kRmsNormStages = 3;  // tiles loaded ahead of the vector unit

// Builds RMSNorm of x [rows, cols] with weight [cols] into y [rows, cols]. eps is added to the mean
// square (models use 1e-5 or 1e-6). Throws UserError naming "rms_norm" if rows or cols is not
// positive, a buffer's numel does not match its shape, or eps is negative or not finite.
Kernel make_rms_norm(const Buffer& x, const Buffer& weight, const Buffer& y, int64_t rows, int64_t cols, float eps);

KernelTiming rms_norm(Device& dev, const Buffer& x, const Buffer& weight, const Buffer& y, int64_t rows, int64_t cols,
                      float eps, Stream* s = nullptr);

// Scalar reference in double: x [rows, cols] and weight [cols] as fp32 values (already rounded to
// their dtypes); returns [rows, cols] in double, unrounded.
std::vector<double> rms_norm_reference(const std::vector<float>& x, const std::vector<float>& weight, int64_t rows,
                                       int64_t cols, float eps);

}  // namespace ppu::kernels
