// Bias add with an optional activation, the epilogue of a linear layer:
//   y[r, c] = act(x[r, c] + bias[c])
// for row-major x and y [rows, cols] and bias [cols] (one value per column, repeated down the
// rows). act is any UnaryOp: kCopy for a plain bias add, kGelu (tanh approximation) for the GPT
// MLP's first projection (Megatron's bias-GELU), kSilu, kRelu, ... x, bias and y may each be any
// dtype; the add and the activation are fp32 and y is rounded once, on store.
//
//   kernels::bias_activation(dev, fc1_out, fc1_bias, act_out, tokens, 4 * hidden, UnaryOp::kGelu);
//
// Rows up to kBiasTileElems long go several to a tile, the bias loaded once per block; longer rows
// take one block each, walked in chunks with the bias slice of each chunk. In-place use (y = x) is
// allowed.
//
// Not here: fusing the bias into the GEMM's store (kernels/Gemm stores C as it is), dropout, or a
// bias over rows (transpose first).
#pragma once

#include <vector>

#include "runtime/Device.hpp"

namespace ppu::kernels {

// Elements of one SRAM tile (fp32: 32 KiB); up to 2 * kBiasStages such tiles (x and a bias slice
// per stage) stay far below the smallest core SRAM (420 KiB, a100-80g / a800).
inline constexpr int kBiasTileElems = 8192;
inline constexpr int kBiasStages = 3;

// Builds y = act(x + bias) for x, y [rows, cols] and bias [cols]; `imm` is the activation's
// immediate (kScale, kAddImm). Throws UserError naming the kernel ("bias_add" for kCopy, else
// "bias_<act>", e.g. "bias_gelu") if rows or cols is not positive,
// a buffer's numel does not match its shape, or act is not a UnaryOp.
Kernel make_bias_activation(const Buffer& x, const Buffer& bias, const Buffer& y, int64_t rows, int64_t cols,
                            UnaryOp act = UnaryOp::kCopy, float imm = 0.0f);

KernelTiming bias_activation(Device& dev, const Buffer& x, const Buffer& bias, const Buffer& y, int64_t rows,
                             int64_t cols, UnaryOp act = UnaryOp::kCopy, float imm = 0.0f, Stream* s = nullptr);

// Scalar reference: fp32 add (as the vector unit does it), then the activation in double
// (kernels::unary_reference for ops other than GELU, whose formula is evaluated in double here).
// Returns [rows, cols], unrounded.
std::vector<double> bias_activation_reference(const std::vector<float>& x, const std::vector<float>& bias,
                                              int64_t rows, int64_t cols, UnaryOp act, float imm = 0.0f);

}  // namespace ppu::kernels
