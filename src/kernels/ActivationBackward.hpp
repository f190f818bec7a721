// Backward kernels of the MLP activations for training: SwiGLU, GELU (tanh approximation, as
// UnaryOp::kGelu) with the bias gradient of bias_activation, and the bias gradient alone.
//
//   forward                                  backward (this file)
//   y = silu(g) * u                          dg = dy * u * silu'(g),  du = dy * silu(g)
//   y = gelu(x [+ bias])                     dx = dy * gelu'(x [+ bias]),  dbias = sum over rows of dx
//   y = x + bias                             dbias = sum over rows of dy  (dx = dy: no kernel)
//
//   with s = sigmoid(g): silu'(g) = s (1 + g (1 - s));  with t = tanh(k0 (h + c h^3)), k0 = sqrt(2/pi),
//   c = 0.044715: gelu'(h) = 0.5 (1 + t) + 0.5 h (1 - t^2) k0 (1 + 3 c h^2).
//
//   kernels::swiglu_backward(dev, gate, up, d_act, d_gate, d_up, tokens, ffn);
//   kernels::gelu_backward(dev, fc1_out, d_act, d_fc1_out, tokens, 4 * hidden, &fc1_bias, &d_fc1_bias);
//   kernels::bias_grad(dev, d_out, d_out_bias, tokens, hidden);
//
// Tensors are row-major [rows, cols]; every input and output is fp32, bf16 or fp16 (converted by the
// DMA) and the arithmetic is fp32; dbias is fp32 [cols]. A block takes a strip of columns (at most
// kActBwTileElems wide) over a group of rows, walked in [tile_rows, strip] tiles through
// kActBwStages pipeline stages. The bias gradient is deterministic whatever the host threads: a
// block sums its rows' fp32 values into a [tile_rows, strip] accumulator in SRAM, then adds that
// accumulator's rows into dbias with store_add (Kernel::accumulates: applied in block order), so the
// sum's order depends on the shape alone. In-place use (an output = an input of the same elements) is
// allowed; other overlaps are not.
//
// Not here: the backward of other bias activations (SiLU, ReLU), dropout, fusing the bias gradient
// into the weight-gradient GEMM (cuBLASLt's BGRADB epilogue), or the derivative of the exact (erf)
// GELU.
#pragma once

#include <vector>

#include "runtime/Device.hpp"

namespace ppu::kernels {

// Elements of one SRAM tile (fp32: 32 KiB) and pipeline stages: SwiGLU's three inputs per stage plus
// two temporaries (352 KiB) and GELU's two inputs per stage plus two temporaries, a bias strip and
// the bias-gradient accumulator (320 KiB) fit the smallest core SRAM (420 KiB, a100-80g / a800).
inline constexpr int kActBwTileElems = 8192;
inline constexpr int kActBwStages = 3;
// Most rows in one tile: bounds the store_add rows (one per tile row) a bias-gradient block ends with.
inline constexpr int kActBwMaxTileRows = 64;
// Blocks the planner aims for (a few waves on every preset), and the fewest row tiles a block of a
// bias-gradient kernel takes, so that its atomic adds (one tile's worth) stay <= 1/8 of what it reads.
inline constexpr int64_t kActBwTargetBlocks = 512;
inline constexpr int kBiasGradMinTiles = 8;

// SwiGLU backward: dg = dy * u * s (1 + g (1 - s)) and du = dy * g * s, s = sigmoid(g), for g, u,
// dy, dg, du [rows, cols]. Throws UserError naming "swiglu_backward", the buffer, its size or dtype
// and what is valid if rows or cols is not positive, a buffer's numel is not rows * cols, a dtype is
// not fp32/bf16/fp16, or dg and du are the same buffer.
Kernel make_swiglu_backward(const Buffer& g, const Buffer& u, const Buffer& dy, const Buffer& dg, const Buffer& du,
                            int64_t rows, int64_t cols);
KernelTiming swiglu_backward(Device& dev, const Buffer& g, const Buffer& u, const Buffer& dy, const Buffer& dg,
                             const Buffer& du, int64_t rows, int64_t cols, Stream* s = nullptr);

// GELU backward: dx = dy * gelu'(h), h = x, or fl32(x + bias[c]) if `bias` is given (the
// pre-activation of bias_activation(x, bias, ..., kGelu), recomputed as the forward rounds it). With
// `dbias` (fp32 [cols]) the kernel also ADDS the column sums of dx (the fp32 values, before dx is
// rounded to its dtype) into dbias: it is marked Kernel::accumulates. Throws UserError naming
// "gelu_backward" on non-positive sizes, a numel that does not match [rows, cols] (bias, dbias:
// [cols]), a dtype other than fp32/bf16/fp16 (dbias: fp32 only), or dbias overlapping another buffer.
Kernel make_gelu_backward(const Buffer& x, const Buffer& dy, const Buffer& dx, int64_t rows, int64_t cols,
                          const Buffer* bias = nullptr, const Buffer* dbias = nullptr);
// Launches make_gelu_backward; with `dbias` and accumulate_dbias false it first launches a kernel
// that zeroes dbias on the same stream (recorded on its own; the timing returned is the backward's),
// so dbias ends up = the column sums; with accumulate_dbias they are added to what dbias holds
// (gradient accumulation over micro-batches).
KernelTiming gelu_backward(Device& dev, const Buffer& x, const Buffer& dy, const Buffer& dx, int64_t rows,
                           int64_t cols, const Buffer* bias = nullptr, const Buffer* dbias = nullptr,
                           bool accumulate_dbias = false, Stream* s = nullptr);

// Bias gradient of y = x + bias (or of any op whose input gradient is dy): ADDS the column sums of dy
// [rows, cols] into dbias (fp32 [cols]); Kernel::accumulates. Throws UserError naming "bias_grad"
// as make_gelu_backward does.
Kernel make_bias_grad(const Buffer& dy, const Buffer& dbias, int64_t rows, int64_t cols);
// As gelu_backward: zeroes dbias first unless `accumulate`.
KernelTiming bias_grad(Device& dev, const Buffer& dy, const Buffer& dbias, int64_t rows, int64_t cols,
                       bool accumulate = false, Stream* s = nullptr);

// Scalar references in double, from the inputs as fp32 values (as the kernels read them); results
// unrounded, [rows, cols] in row-major order.
struct SwigluGrads {
  std::vector<double> dg, du;
};
SwigluGrads swiglu_backward_reference(const std::vector<float>& g, const std::vector<float>& u,
                                      const std::vector<float>& dy);
// h = fl32(x + bias[c]) when `bias` is given (as bias_activation_reference), then gelu'(h) in double;
// dbias [cols] = the column sums of dx in double.
struct GeluGrads {
  std::vector<double> dx, dbias;
};
GeluGrads gelu_backward_reference(const std::vector<float>& x, const std::vector<float>& dy, int64_t rows,
                                  int64_t cols, const std::vector<float>* bias = nullptr);
// [cols]: the column sums of dy in double.
std::vector<double> bias_grad_reference(const std::vector<float>& dy, int64_t rows, int64_t cols);
// gelu'(h) in double (tanh approximation), for references and tests.
double gelu_derivative(double h);

}  // namespace ppu::kernels
