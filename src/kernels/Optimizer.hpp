// Optimizer step for mixed-precision training: AdamW over flat fp32 master weights in one kernel, the
// global gradient norm over a list of gradient buffers with per-buffer non-finite flags, a fill kernel
// (zeroing gradient buffers), and the host-side pieces a training loop drives them with: a warmup +
// cosine learning-rate schedule, gradient clipping's coefficient and a dynamic fp16 loss scaler.
//
//   LossScaler scaler;                                       // PyTorch GradScaler defaults
//   WarmupCosineSchedule sched{.peak_lr = 3e-4, .min_lr = 3e-5, .warmup_steps = 2000, .total_steps = 100000};
//   // ... the loss multiplied by ls = scaler.scale(); backward wrote fp32 gradients into `grads` ...
//   GradNorm gn = kernels::grad_norm(dev, grads);          // of the scaled gradients
//   if (scaler.update(!gn.finite())) {                      // false: skip the step (scale backed off)
//     AdamWParams hp{.lr = sched.lr(t), .step = t, .grad_scale = clip_coefficient(gn.norm / ls, 1.0) / ls};
//     for (size_t i = 0; i < grads.size(); ++i)
//       kernels::adamw(dev, hp, grads[i], master[i], exp_avg[i], exp_avg_sq[i], weights_bf16[i]);
//     ++t;
//   }
//   for (const Buffer& g : grads) kernels::fill(dev, g, 0.0f);  // zero_grad
//
// AdamW (make_adamw) follows torch.optim.AdamW's default single-tensor path (amsgrad, maximize and
// capturable off): _single_tensor_adamw in torch/optim/adamw.py, which recent releases moved to
// torch/optim/adam.py's _single_tensor_adam with decoupled_weight_decay=True, same arithmetic. Per
// element, with the gradient first multiplied by `grad_scale` (unscaling after fp16 loss scaling and
// the global-norm clipping coefficient, folded into one factor):
//   g  = grad * grad_scale
//   p  = p * (1 - lr * weight_decay)                        (decoupled weight decay)
//   m  = beta1 * m + (1 - beta1) * g                        (PyTorch: exp_avg.lerp_(g, 1 - beta1))
//   v  = beta2 * v + (1 - beta2) * g * g
//   p  = p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// then the updated p is also stored rounded (RNE) to the bf16/fp16 copy the forward reads. The vector
// unit computes in fp32 with the per-step constants (1 - beta1, lr / (1 - beta1^t), 1 / sqrt(1 -
// beta2^t), 1 - lr * weight_decay ...) computed in double on the host and rounded to fp32 once, as
// a GPU kernel receives fp32 scalars. One read of grad, p, m, v (4 x fp32) and one write of p,
// m, v (fp32) and the copy (2 bytes) per parameter: 30 bytes, so the kernel is HBM-bound.
//
// The global norm (grad_norm) is deterministic for any number of host threads: each block squares and
// sums a contiguous range of one buffer's tiles in fp32, then adds its partial sums into a [2 * (B + 1)]
// fp32 statistics buffer with store_add (Kernel::accumulates: applied in block order), so the order
// of every addition depends on the buffer sizes and the chip alone. Alongside each sum of squares it
// counts the elements that are NaN or +-inf (x - x is not 0 for exactly those), per buffer, so a
// trainer can skip the step (fp16 loss scaling) or name the first offending tensor. A finite buffer
// whose squares overflow fp32 has an infinite sum of squares but a zero count.
//
// Scaling in place needs no kernel here: kernels::unary(dev, UnaryOp::kScale, g, g, s).
//
// Not here: other optimizers (SGD, Adam with coupled L2 decay, Adafactor, LAMB), AMSGrad, maximize,
// PyTorch's fused/foreach multi-tensor launches (one launch per parameter tensor here; concat_kernels
// joins several into one grid), ZeRO sharding of the optimizer state (the caller passes each rank's
// shard as its own buffers), a device-side skip of the step (the host reads the norm and decides, as
// PyTorch's GradScaler.step does with its found_inf check), and Megatron's loss-scaler hysteresis.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/Device.hpp"

namespace ppu::kernels {

// Elements per AdamW tile (fp32: 16 KiB). Four input tiles per stage, kAdamWStages stages and one
// temporary make 208 KiB, so two blocks fit even the smallest core SRAM (420 KiB, a100-80g / a800).
inline constexpr int kAdamWTileElems = 4096;
inline constexpr int kAdamWStages = 3;
// Elements per tile of the norm and fill kernels (fp32: 32 KiB); the norm keeps kNormStages input
// tiles and two temporaries (160 KiB).
inline constexpr int kNormTileElems = 8192;
inline constexpr int kNormStages = 3;

// One AdamW step's hyper-parameters. Defaults are torch.optim.AdamW's.
struct AdamWParams {
  double lr = 1e-3;            // >= 0, finite
  double beta1 = 0.9;          // in [0, 1)
  double beta2 = 0.999;        // in [0, 1)
  double eps = 1e-8;           // > 0, finite
  double weight_decay = 1e-2;  // >= 0, finite (decoupled: p *= 1 - lr * weight_decay)
  int64_t step = 1;            // t >= 1: this update's index, for the bias corrections 1 - beta^t
  double grad_scale = 1.0;     // > 0, finite: gradients are multiplied by it first
};

// Throws UserError naming the field, its value and the valid range if a field of `hp` is invalid.
void check_adamw_params(const AdamWParams& hp);

// Builds one AdamW step over n parameters, in place on param, exp_avg and exp_avg_sq:
//   grad [n] fp32 (read), param [n] fp32 master weights (read, written), exp_avg [n] and exp_avg_sq
//   [n] fp32 moments (read, written), param_copy [n] bf16 or fp16 (written: the updated param,
//   rounded RNE).
// Throws UserError (kernel "adamw") if a hyper-parameter is invalid (check_adamw_params), a buffer's
// numel differs from param's, a buffer has another dtype, or a per-step constant (grad_scale, eps,
// lr / (1 - beta1^t), ...) does not fit fp32. The buffers must not overlap.
Kernel make_adamw(const ChipSpec& chip, const AdamWParams& hp, const Buffer& grad, const Buffer& param,
                  const Buffer& exp_avg, const Buffer& exp_avg_sq, const Buffer& param_copy);
KernelTiming adamw(Device& dev, const AdamWParams& hp, const Buffer& grad, const Buffer& param, const Buffer& exp_avg,
                   const Buffer& exp_avg_sq, const Buffer& param_copy, Stream* s = nullptr);

// One parameter's state, for the reference.
struct AdamWState {
  double param = 0, exp_avg = 0, exp_avg_sq = 0;
};
// The AdamW step of the header formula in double (no rounding of the constants or the result), for
// one parameter with gradient `grad` (before grad_scale). Throws UserError as check_adamw_params.
AdamWState adamw_reference(const AdamWParams& hp, double grad, AdamWState s);

// Builds y[i] = value for every element of `y` (any dtype; value rounded RNE to it on store).
Kernel make_fill(const ChipSpec& chip, const Buffer& y, float value);
KernelTiming fill(Device& dev, const Buffer& y, float value, Stream* s = nullptr);

// Layout of the statistics buffer of make_grad_sum_squares for B gradient buffers: fp32 [2 * (B + 1)]
//   [0, B)           sum of squares of buffer i        [B]           of all buffers
//   [B + 1, 2B + 1)  NaN/inf elements of buffer i      [2B + 1]      of all buffers
// Counts are fp32 integers: exact below 2^24, and nonzero whenever an element is non-finite.
inline int64_t grad_stats_numel(int64_t buffers) { return 2 * (buffers + 1); }

// Builds the kernel that ADDS each gradient buffer's sum of squares and non-finite count into
// `stats` (fp32, grad_stats_numel(grads.size()) elements), which must hold zeros before (make_fill).
// grads: fp32, bf16 or fp16 buffers of any sizes (converted to fp32 on load). Blocks: each buffer
// gets a share of the persistent grid (kMapBlocksPerCore per core) proportional to its tiles, at
// least one. Throws UserError (kernel "grad_sum_squares") if `grads` is empty, a gradient has
// another dtype, or stats is not fp32 of that size.
Kernel make_grad_sum_squares(const ChipSpec& chip, const std::vector<Buffer>& grads, const Buffer& stats);

struct GradNorm {
  bool has_values = false;  // false on a timing-only device (only time_s is set)
  float sum_squares = 0;    // over every element of every buffer, as the device summed it in fp32
  float norm = 0;           // sqrt(sum_squares), in fp32
  int64_t nonfinite = 0;    // NaN/inf elements over all buffers
  std::vector<float> buffer_sum_squares;  // [B]
  std::vector<int64_t> buffer_nonfinite;  // [B]
  double time_s = 0;        // simulated: the fill and the reduction kernels (the download is recorded on the stream)
  bool finite() const { return nonfinite == 0; }
  // Index in the list of the first buffer holding a NaN or inf, -1 if none.
  int64_t first_nonfinite() const;
};

// Global gradient norm (as torch.nn.utils.clip_grad_norm_'s total 2-norm) and non-finite counts over
// `grads`: allocates the statistics buffer, zeroes it, runs make_grad_sum_squares and downloads the
// result (on a timing-only device: a timed download, no values). Errors as make_grad_sum_squares;
// DeviceOutOfMemory if the small statistics buffer does not fit.
GradNorm grad_norm(Device& dev, const std::vector<Buffer>& grads, Stream* s = nullptr);

// Gradient clipping's factor, as torch.nn.utils.clip_grad_norm_: min(1, max_norm / (total_norm +
// 1e-6)). max_norm <= 0 disables clipping (returns 1). Throws UserError if total_norm is negative or
// NaN (an inf norm gives 0: check the non-finite counts first).
double clip_coefficient(double total_norm, double max_norm);

// Linear warmup then cosine decay, as Megatron-LM's OptimizerParamScheduler ("cosine" style) with a
// 1-based step t (AdamW's):
//   t <= warmup_steps:               peak_lr * t / warmup_steps     (a line from 0 at t = 0)
//   warmup_steps < t <= total_steps: min_lr + (peak_lr - min_lr) * (1 + cos(pi * r)) / 2,
//                                    r = (t - warmup_steps) / (total_steps - warmup_steps)
//   t > total_steps:                 min_lr
// Edge cases: warmup_steps = 0 starts the cosine at t = 1 (just below peak); warmup_steps =
// total_steps has no decay (peak at t = total_steps, min_lr after); r = 1 gives exactly min_lr.
struct WarmupCosineSchedule {
  double peak_lr = 0;     // >= 0, finite
  double min_lr = 0;      // in [0, peak_lr]
  int64_t warmup_steps = 0;  // in [0, total_steps]
  int64_t total_steps = 1;   // >= 1
  // The learning rate of step t. Throws UserError naming the field if the schedule is invalid or t < 1.
  double lr(int64_t t) const;
};

// A dynamic loss scaler's settings; defaults are torch.amp.GradScaler's.
struct LossScalerConfig {
  double init_scale = 65536.0;     // > 0, finite in fp32
  double growth_factor = 2.0;      // > 1
  double backoff_factor = 0.5;     // in (0, 1)
  int64_t growth_interval = 2000;  // >= 1 consecutive finite steps before the scale grows
};

// fp16 loss scaling's state machine, as torch.amp.GradScaler.update (_amp_update_scale_): after a
// step with a non-finite gradient the scale is multiplied by backoff_factor and the step is skipped;
// after growth_interval consecutive finite steps it is multiplied by growth_factor, unless that
// overflows fp32 (then it stays). The scale is held in fp32, as PyTorch's is. Repeated overflows can
// take it down to 0 (nothing stops them, as in PyTorch). Not thread-safe.
class LossScaler {
 public:
  // Throws UserError naming the field if `config` is invalid.
  explicit LossScaler(const LossScalerConfig& config = {});
  float scale() const { return scale_; }
  // Finite steps since the last growth or backoff.
  int64_t growth_tracker() const { return tracker_; }
  int64_t skipped_steps() const { return skipped_; }
  // Records one step's overflow check and updates the scale. Returns whether that step's update
  // should be applied (no non-finite gradient).
  bool update(bool found_nonfinite);
  // Puts back a state saved from scale(), growth_tracker() and skipped_steps() (a resumed run).
  // UserError if scale is not > 0 and finite, or a count is negative.
  void restore(double scale, int64_t growth_tracker, int64_t skipped_steps);

 private:
  LossScalerConfig config_;
  float scale_;
  int64_t tracker_ = 0, skipped_ = 0;
};

}  // namespace ppu::kernels
