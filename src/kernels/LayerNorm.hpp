// LayerNorm over the last dim (GPT-2, Megatron GPT):
//   y[r, c] = (x[r, c] - mean_r) / sqrt(var_r + eps) * gamma[c] + beta[c]
// with mean_r and the biased variance var_r (divided by cols, as torch.nn.LayerNorm) over row r of
// a row-major x [rows, cols]; gamma and beta are [cols]. x, gamma, beta and y may each be fp32,
// bf16 or fp16 (any dtype the DMA converts, in fact); statistics and arithmetic are fp32 and y is
// rounded once, on store.
//
//   kernels::layer_norm(dev, hidden, ln_weight, ln_bias, out, tokens, hidden_size, 1e-5f);
//
// Rows up to kLayerNormTileElems long are held whole, several per tile: the mean, then the
// variance of the centred values (two passes over SRAM, not E[x^2] - mean^2, which cancels
// catastrophically when |mean| >> std). Longer rows take one block each and two passes over HBM:
// pass 1 computes each chunk's mean and centred sum of squares in SRAM and merges them into the
// running pair (Chan et al.'s parallel update, exact weights known when the program is built);
// pass 2 reloads every chunk with its slices of gamma and beta and stores the result. In-place use
// (y = x) is allowed.
//
// Not here: a fused residual add (RmsNorm has none either: add with kernels::binary first), RMSNorm
// (kernels/RmsNorm), or the variance's unbiased form.
#pragma once

#include <vector>

#include "runtime/Device.hpp"

namespace ppu::kernels {

// Elements of one SRAM tile (fp32: 32 KiB). The short-row path holds kLayerNormStages x tiles, a
// squares tile, gamma and beta (6 tiles, 192 KiB); the chunked path 3 per stage (288 KiB): both
// below the smallest core SRAM (420 KiB, a100-80g / a800).
inline constexpr int kLayerNormTileElems = 8192;
inline constexpr int kLayerNormStages = 3;

// Builds LayerNorm of x [rows, cols] with gamma, beta [cols] into y [rows, cols]. Throws UserError
// naming "layer_norm" if rows or cols is not positive, a buffer's numel does not match its shape,
// or eps is negative or not finite.
Kernel make_layer_norm(const Buffer& x, const Buffer& gamma, const Buffer& beta, const Buffer& y, int64_t rows,
                       int64_t cols, float eps);

KernelTiming layer_norm(Device& dev, const Buffer& x, const Buffer& gamma, const Buffer& beta, const Buffer& y,
                        int64_t rows, int64_t cols, float eps, Stream* s = nullptr);

// Scalar reference in double (two-pass mean and variance): x [rows, cols], gamma and beta [cols] as
// fp32 values (already rounded to their dtypes); returns [rows, cols], unrounded.
std::vector<double> layer_norm_reference(const std::vector<float>& x, const std::vector<float>& gamma,
                                         const std::vector<float>& beta, int64_t rows, int64_t cols, float eps);

}  // namespace ppu::kernels
