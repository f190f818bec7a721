// The backward of each op class, beside its forward. A forward kernel says what it computes in a
// typed record (isa/Kernel.hpp: KernelOp, one OpClass with its dimensions); this file turns such a
// record into the kernels its backward pass launches in training (the ones nn::Graph launches for
// that op) and times them on a device. The cluster layer builds a training step from a model's
// captured forward this way (cluster/Workload).
//
//   Device dev(chip, ExecMode::kTimingOnly);
//   const double bwd_s = nn::backward_seconds(dev, forward_kernel, kernels::AttentionStyle::kPipelined);
//
// How each record's backward is obtained (BackwardMethod, kBackwardMethods printed in reports);
// gradients are fp32 as nn::Graph keeps them, saved activations in the forward's input dtype:
//   kGemm                dA = dC . op(B)^T and dB = op(A)^T . dC as two GEMMs of the forward's size
//                        (the weight gradient in fp32), grouped like the forward's launch;
//   kAttention           the attention backward kernel (kernels/AttentionBackward, FlashAttention-2's
//                        algorithm, recomputing the probabilities) on the forward's shape;
//   kRmsNorm, kLayerNorm the norm backward kernels (kernels/NormBackward), then dx added into the
//                        input's gradient (the residual stream's, which already holds one: an fp32 add);
//   kSoftmax             router (k >= 1): the router backward kernel (kernels/RouterBackward: top-k,
//                        renormalisation, softmax); plain: that kernel's softmax Jacobian product
//                        p * (dp - sum p dp) with the output gradient as dp;
//   kEmbedding           the table gradient zeroed, then the deterministic scatter-add
//                        (kernels/EmbeddingBackward) of the rows' gradients, ids spread over the table;
//   kGather              row gather: likewise into the source's gradient (nn::Graph::gather_rows);
//                        combine (k >= 1): the combine backward kernel (kernels/GatherBackward);
//   kRope                the inverse rotation (kernels/RopeBackward);
//   kElementwise by function: add (residual) - the gradient passed on to both inputs, one fp32 copy
//                        each (nn::Graph::add's first contribution to each input's gradient); copy/cast -
//                        one copy; mul - dx = dy * b, one product (the models' plain products are dropout
//                        masks, constants; SwiGLU's product is kSwiglu); SwiGLU - one SwiGLU backward kernel (charged to
//                        the product, the gate's silu none); GELU, bias + GELU, bias - the GELU backward
//                        kernel / the bias gradient's column sums (kernels/ActivationBackward);
//   none                 KV-cache writes (training has no cache), a split-K GEMM's reduce (its GEMM's
//                        record carries the backward), optimizer updates and backward kernels themselves.
// A record with no backward defined (an unspecified, generic unary/binary or triad elementwise
// function, a launch without records) is refused with a UserError: nothing is assumed.
//
// Not here: the autograd tape, gradient buffers, the optimizer (nn::Graph, kernels/Optimizer).
#pragma once

#include <array>
#include <string_view>

#include "isa/Kernel.hpp"
#include "kernels/Attention.hpp"
#include "runtime/Device.hpp"

namespace ppu::nn {

enum class BackwardMethod : uint8_t {
  kGemmDgradWgrad, kAttentionKernel, kNormKernel, kRouterKernel, kEmbeddingScatter, kCombineKernel, kRopeKernel,
  kGradientPassedOn, kProduct, kActivationKernel, kNone, kCount
};
inline constexpr std::array<std::string_view, static_cast<size_t>(BackwardMethod::kCount)> kBackwardMethods = {
    "dgrad and wgrad GEMMs",
    "attention backward kernel",
    "norm backward kernels, input gradient added into the residual's",
    "router / softmax backward kernel",
    "zeroed gradient + deterministic scatter-add kernel",
    "MoE combine backward kernel",
    "RoPE inverse-rotation kernel",
    "gradient passed on: a copy per input (residual add, cast)",
    "one elementwise product with the mask (dropout)",
    "SwiGLU / GELU / bias backward kernel",
    "none in training (KV-cache write, SwiGLU gate, split-K reduce, optimizer, backward kernels)"};
static_assert(kBackwardMethods.size() == static_cast<size_t>(BackwardMethod::kCount));
constexpr std::string_view backward_method_name(BackwardMethod m) { return kBackwardMethods[static_cast<size_t>(m)]; }

// How the backward of an op with this record is obtained; UserError naming the class and function
// for a record that has none defined (see the file comment).
BackwardMethod backward_method(const KernelOp& op);

// Simulated seconds of the backward of one forward launch `forward`, its kernels launched on `dev`
// (any mode; timing-only is what the cluster layer uses; the device must hold the gradient and
// saved-activation buffers, freed again before returning). Records of the same class and
// dimensions in one launch (a batch's concatenation) are backed as one launch of their total size.
// Attention backward kernels run in `style`. UserError if the launch has no records or one without
// a defined backward.
double backward_seconds(Device& dev, const Kernel& forward, kernels::AttentionStyle style);

}  // namespace ppu::nn
