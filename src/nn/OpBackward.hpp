// The backward of each op class, beside its forward. A forward kernel says what it computes in a
// typed record (isa/Kernel.hpp: KernelOp, one OpClass with its dimensions); this file turns such a
// record into the kernels of its backward pass and times them on a device. The cluster layer builds
// a training step from a model's captured forward this way (cluster/Workload).
//
//   Device dev(chip, ExecMode::kTimingOnly);
//   const double bwd_s = nn::backward_seconds(dev, forward_kernel, forward_s, kernels::AttentionStyle::kPipelined);
//
// How each class's backward is obtained (kBackwardMethods, printed in reports):
//   kGemm       dA = dC . op(B)^T and dB = op(A)^T . dC as two GEMMs of the forward's size (the weight
//               gradient in fp32, as frameworks accumulate it), grouped like the forward's launch;
//   kAttention  the attention backward kernel (kernels/AttentionBackward, FlashAttention-2's
//               algorithm, recomputing the probabilities) on the forward's shape;
//   others      (norms, softmax, elementwise, embedding, gather, RoPE: memory-bound) twice the forward's
//               time: the backward reads the output gradient and the saved input and writes the input
//               gradient, about twice the bytes. An assumption, stated in reports, until their
//               backward tile programs exist.
// A launch whose records mix classes (a concatenation of different kernels) is memory-bound.
//
// Not here: the autograd tape, gradient buffers, the optimizer (they come with training).
#pragma once

#include <array>
#include <string_view>

#include "isa/Kernel.hpp"
#include "kernels/Attention.hpp"
#include "runtime/Device.hpp"

namespace ppu::nn {

enum class BackwardMethod : uint8_t { kGemmDgradWgrad, kAttentionKernel, kTwiceForward, kCount };
inline constexpr std::array<std::string_view, static_cast<size_t>(BackwardMethod::kCount)> kBackwardMethods = {
    "dgrad and wgrad GEMMs", "attention backward kernel", "2x forward time (assumed, memory-bound)"};
static_assert(kBackwardMethods.size() == static_cast<size_t>(BackwardMethod::kCount));

// How the backward of a launch with these records is obtained (kTwiceForward for none or a mix).
BackwardMethod backward_method(const std::vector<KernelOp>& ops);

// Simulated seconds of the backward of one forward launch `forward` that took `forward_s`, its
// kernels launched on `dev` (any mode; timing-only is what the cluster layer uses; the device must
// hold the gradient and saved-activation buffers, freed again before returning). Attention backward
// kernels run in `style`.
double backward_seconds(Device& dev, const Kernel& forward, double forward_s, kernels::AttentionStyle style);

}  // namespace ppu::nn
