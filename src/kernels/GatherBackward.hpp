// Backward of the mixture-of-experts weighted combine (kernels::gather_combine) for training. The
// forward is y[t, :] = sum_j w[t, j] * src[index[t*k + j], :]; its gradients are
//
//   d_src[index[t*k + j], :] = w[t, j] * dy[t, :]             (a scatter of weighted dy rows)
//   d_w[t, j]                = dot(src[index[t*k + j], :], dy[t, :])
//
//   src, d_src: [n_src, width]; index: tokens * k rows of src, each at most once; w, d_w: [tokens, k];
//   dy: [tokens, width]. Every buffer fp32/bf16/fp16; the products and dots are fp32.
//
//   kernels::gather_combine_backward(dev, expert_out, H, slot, K, w, d_y, d_expert_out, d_w);
//
// In the model every row of src (the experts' outputs) is used by exactly one (token, choice), so
// d_src needs no sums: the kernel writes each referenced row once and checks that no index repeats.
// Rows of d_src that no index names are left as they are. A block takes kGatherRows tokens and walks
// the width in chunks of kCombineBwChunk columns, loading its dy rows once per chunk and, per
// choice j, gathering the k-th source rows with single-row DMA loads, multiplying them by dy and
// reducing each row into the fp32 d_w accumulator of j (so d_w needs no cross-block sum and is
// deterministic), then storing w[:, j] * dy with single-row DMA stores to the rows' places in d_src.
//
// Not here: the gradient of gather_combine's `accumulate` destination (the residual: dy itself), the
// router's softmax/top-k backward (kernels/RouterBackward), or repeated indices (a scatter-add; not
// what the model needs).
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/Device.hpp"

namespace ppu::kernels {

// Columns of one tile: dy and the gathered rows, two stages each, are [kGatherRows, 1024] fp32
// (64 KiB each, 256 KiB in all, with k [kGatherRows, 1] d_w accumulators).
inline constexpr int kCombineBwChunk = 1024;

// Builds the backward of gather_combine(src, width, index, k, weights, ...) with output gradient dy.
// Throws UserError naming "gather_combine_backward", the buffer and what is valid if width or k is
// not positive, src's numel is not a multiple of width, index is empty or not a multiple of k, an
// index is outside [0, n_src) or repeats (naming both positions), weights/d_weights are not
// [tokens, k], dy is not [tokens, width], d_src is not src's shape, a dtype is not fp32/bf16/fp16,
// or an output overlaps another buffer. The indices are copied into the kernel.
Kernel make_gather_combine_backward(const Buffer& src, int64_t width, const std::vector<int32_t>& index, int64_t k,
                                    const Buffer& weights, const Buffer& dy, const Buffer& d_src,
                                    const Buffer& d_weights);
KernelTiming gather_combine_backward(Device& dev, const Buffer& src, int64_t width, const std::vector<int32_t>& index,
                                     int64_t k, const Buffer& weights, const Buffer& dy, const Buffer& d_src,
                                     const Buffer& d_weights, Stream* s = nullptr);

// Reference in double from fp32 host values: d_src [n_src, width] (rows no index names are 0) and
// d_weights [tokens, k], unrounded.
struct CombineGrads {
  std::vector<double> d_src, d_weights;
};
CombineGrads gather_combine_backward_reference(const std::vector<float>& src, int64_t width,
                                               const std::vector<int32_t>& index, int64_t k,
                                               const std::vector<float>& weights, const std::vector<float>& dy);

}  // namespace ppu::kernels
