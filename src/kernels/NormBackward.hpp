// Backward of RMSNorm and LayerNorm over the last dim, for training (forwards: kernels/RmsNorm,
// kernels/LayerNorm). Per row of a row-major x [rows, cols], with weight (gamma) w [cols], the
// output gradient dy [rows, cols] and g = w * dy:
//
//   RMSNorm    r = 1 / sqrt(mean(x^2) + eps),        xhat = x * r
//              dx = r * (g - xhat * mean(g * xhat))
//   LayerNorm  r = 1 / sqrt(var(x) + eps),           xhat = (x - mean(x)) * r   (biased variance)
//              dx = r * (g - mean(g) - xhat * mean(g * xhat))
//   both       dweight[c] = sum over rows of dy * xhat;   LayerNorm: dbias[c] = sum over rows of dy
//
// (for RMSNorm, r * mean(g * xhat) = r^3 * mean(g * x): the usual form). Rows may be anything with a
// norm over its last dim, e.g. Qwen3's QK-norm with rows = tokens * heads and cols = head_dim.
//
//   // y = rms_norm(x, w) forward; dy: dL/dy  ->  dx: dL/dx, dw: dL/dw (fp32, overwritten)
//   kernels::rms_norm_backward(dev, x, w, dy, dx, dw, tokens, hidden_size, 1e-6f);
//   kernels::layer_norm_backward(dev, x, gamma, dy, dx, dgamma, dbeta, tokens, hidden_size, 1e-5f);
//
// x, w, dy and dx are fp32, bf16 or fp16 (each its own; converted by the DMA); arithmetic is fp32
// and dx is rounded once, on store. dweight and dbias are fp32 [cols]: by default they are
// OVERWRITTEN with the sums (a small kernel zeroes them first); with accumulate = true the sums are
// ADDED to what they hold (gradient accumulation over micro-batches). dx may be the very buffer x
// or dy (in place); no other overlap is allowed.
//
// How it runs. Rows are cut into [tile_rows, chunk] tiles (chunk = cols when a row fits one tile of
// kNormBwTileElems, else about equal column chunks of at most that); a block of the gradient kernel
// takes one column chunk of a group of consecutive row tiles, streamed through kNormBwStages
// stages. A row that fits a tile gets its statistics (r, mean(g * xhat), LayerNorm's mean and
// mean(g)) in the tile, so x and dy are read once; longer rows (any length) get them from a first
// "stats" kernel (blocks of consecutive row tiles, walking each row's chunks; LayerNorm merges
// per-chunk moments with Chan's update, as the forward does) that writes them to an fp32 scratch of
// 2 (RMSNorm) or 4 (LayerNorm) values per row, so x and dy are read twice. The column
// sums are deterministic whatever the host threads: a block adds its rows' fp32 dy * xhat (and dy)
// into a [tile_rows, chunk] accumulator in SRAM, then adds the accumulator's rows into dweight
// (dbias) with store_add in a kernel marked Kernel::accumulates, which the executors apply in block
// order, so the order of every sum depends on the shape alone.
//
// Not here: taking the forward's saved mean / rstd (they are recomputed from x, which the backward
// reads anyway), a fused residual add, Gemma's (1 + w) weight, the framework habit of rounding xhat
// to the input dtype, and dweight / dbias in other dtypes than fp32.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/Device.hpp"

namespace ppu::kernels {

// Elements of one SRAM tile (fp32: 32 KiB). The gradient kernel holds x and dy per stage, a
// weight slice, two temporaries and one or two accumulators: 10 tiles (320 KiB) for RMSNorm, 11
// (352 KiB) for LayerNorm; the stats kernel x, dy and a weight slice per stage and two
// temporaries (352 KiB): all below the smallest core SRAM (420 KiB, a100-80g / a800).
inline constexpr int kNormBwTileElems = 8192;
inline constexpr int kNormBwStages = 3;
// Most rows in one tile: bounds the store_add rows (one per tile row) each block ends with.
inline constexpr int kNormBwMaxTileRows = 64;
// The gradient kernel aims for about this many blocks (a couple of waves on every preset, 64 to
// 148 cores) and gives each block at least kNormBwMinTiles row tiles where there are enough, so
// that a block's atomic adds (one tile's worth per gradient) stay a fraction of what it reads.
inline constexpr int64_t kNormBwTargetBlocks = 256;
inline constexpr int kNormBwMinTiles = 4;

// fp32 elements of scratch that make_rms_norm_backward / make_layer_norm_backward need for this
// shape: 0 when a row fits one tile (cols <= kNormBwTileElems), else 2 * rows (RMSNorm) or 4 * rows
// (LayerNorm). Sizes must be positive (UserError naming the function otherwise).
int64_t rms_norm_backward_scratch_numel(int64_t rows, int64_t cols);
int64_t layer_norm_backward_scratch_numel(int64_t rows, int64_t cols);

// Builds the kernels of the RMSNorm backward, to be launched in this order on one stream: "stats"
// (only when cols > kNormBwTileElems), "zero" (unless accumulate; zeroes dweight), "grad" (dx, and
// dweight through store_add). Shapes: x, dy, dx [rows, cols]; weight [cols]; dweight fp32 [cols];
// scratch fp32 with at least rms_norm_backward_scratch_numel(rows, cols) elements (any Buffer, e.g.
// Buffer{}, when that is 0). eps as the forward's. Throws UserError naming "rms_norm_backward", the
// buffer, and the expected shape or the valid dtypes, if rows or cols is not positive, a numel does
// not match its shape, x / weight / dy / dx is not fp32, bf16 or fp16, dweight or scratch is not
// fp32, the scratch is too small, eps is negative or not finite, or buffers overlap other than dx
// being x or dy.
std::vector<Kernel> make_rms_norm_backward(const Buffer& x, const Buffer& weight, const Buffer& dy, const Buffer& dx,
                                           const Buffer& dweight, const Buffer& scratch, int64_t rows, int64_t cols,
                                           float eps, bool accumulate = false);

// Simulated times of the kernels one backward launched, in launch order.
struct NormBackwardTiming {
  std::vector<KernelTiming> kernels;
  double time_s() const;
};

// Runs make_rms_norm_backward's kernels on `s` (the default stream if null), with a scratch buffer
// allocated for the call and freed after it (long rows only; DeviceOutOfMemory if it does not fit).
// Errors as make_rms_norm_backward.
NormBackwardTiming rms_norm_backward(Device& dev, const Buffer& x, const Buffer& weight, const Buffer& dy,
                                     const Buffer& dx, const Buffer& dweight, int64_t rows, int64_t cols, float eps,
                                     bool accumulate = false, Stream* s = nullptr);

// As make_rms_norm_backward for LayerNorm: gamma [cols] is the forward's scale (its beta is not
// needed); dgamma and dbeta are fp32 [cols]; "zero" zeroes both; scratch needs
// layer_norm_backward_scratch_numel(rows, cols). Errors name "layer_norm_backward".
std::vector<Kernel> make_layer_norm_backward(const Buffer& x, const Buffer& gamma, const Buffer& dy, const Buffer& dx,
                                             const Buffer& dgamma, const Buffer& dbeta, const Buffer& scratch,
                                             int64_t rows, int64_t cols, float eps, bool accumulate = false);

NormBackwardTiming layer_norm_backward(Device& dev, const Buffer& x, const Buffer& gamma, const Buffer& dy,
                                       const Buffer& dx, const Buffer& dgamma, const Buffer& dbeta, int64_t rows,
                                       int64_t cols, float eps, bool accumulate = false, Stream* s = nullptr);

// Scalar references in double, from the inputs as fp32 values (already rounded to their dtypes):
// dx [rows, cols], dweight [cols] (LayerNorm: dgamma) and dbias [cols] (LayerNorm's dbeta; empty for
// RMSNorm), unrounded, by the formulas at the top (two-pass mean and variance for LayerNorm).
struct NormBackwardReference {
  std::vector<double> dx, dweight, dbias;
};
NormBackwardReference rms_norm_backward_reference(const std::vector<float>& x, const std::vector<float>& weight,
                                                  const std::vector<float>& dy, int64_t rows, int64_t cols, float eps);
NormBackwardReference layer_norm_backward_reference(const std::vector<float>& x, const std::vector<float>& gamma,
                                                    const std::vector<float>& dy, int64_t rows, int64_t cols,
                                                    float eps);

}  // namespace ppu::kernels
