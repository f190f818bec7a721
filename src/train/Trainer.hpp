// Trainer: optimizer steps of a model on the emulated PPU with real numbers - forward and backward
// through nn/Graph for each micro-batch, gradients accumulated over the step's micro-batches, the
// global gradient norm (and clipping), AdamW on the device with fp32 master weights and moments
// (the model's bf16 weights are the updated copies), a warmup + cosine learning-rate schedule - and
// what each step cost: host seconds and simulated seconds on the chip.
//
//   Qwen3Model model(dev, cfg, Qwen3Weights::random(seed), opts);
//   train::Trainer t(model, train::TrainConfig{.steps = 300, .batch = 8, .micro_batch = 4, .seq_len = 256});
//   train::StepResult r = t.step(tokens);   // tokens [batch, seq_len + 1]: inputs and shifted targets
//
// Non-finite values: a step whose loss or gradients are not finite throws NonFiniteError naming the
// step and the first non-finite gradient (its parameter), unless skip_nonfinite, which skips the
// update and counts it (StepResult::skipped). Deterministic: the same tokens and weights give the
// same bits for any host thread count (every kernel is).
//
// Data parallelism: with a DP communicator (one Trainer per rank, each on its own device and host
// thread, all built from the same weights), step() takes the same global batch on every rank, runs
// rank r's share of it (sequences [r * batch / dp, (r + 1) * batch / dp)), sums the gradients over
// the ranks with the collective library (timed on the node's links), and every rank applies the
// same update: the weights stay equal on all ranks.
//   zero 0: every gradient all-reduced; every rank holds all fp32 masters and moments.
//   zero 1 (ZeRO stage 1, Rajbhandari et al. 2020, arXiv:1910.02054, "P_os"; Megatron-LM's
//     distributed optimizer): the gradients, laid end to end in one fp32 buffer per parameter dtype
//     (padded to a multiple of dp), are reduce-scattered; rank r holds and updates only elements
//     [r, r + 1) x padded / dp of the fp32 masters and moments (12 bytes per element: the optimizer
//     state divided by dp), writes its updated 16-bit copies into the same slice of a flat buffer
//     that an all-gather then completes on every rank, and the model's weights are copied out of it.
//     With 2 ranks each gradient element is the same sum of two partials in either collective, so
//     the update is bit-identical to zero 0 except through the gradient norm, whose fp32 partial
//     sums are grouped per slice (then summed over DP): without clipping the losses are identical,
//     with it the clipping factor can move by an ulp (tests/train/test_parallel_training). With more
//     ranks the library's reduce-scatter and all-reduce algorithms may add in different orders.
//
// Tensor parallelism: a model built with Qwen3Options::tp_size > 1 (its TP communicator in its nn
// Context) trains as Megatron-LM does (Qwen3Model::training_loss): every TP rank of a DP rank runs
// the same sequences, sharded parameters get their shard's gradient and replicated ones (embedding,
// norms, LM head) identical gradients on every TP rank. The gradient norm counts each element once:
// squared norms of sharded parameters summed over the TP group, replicated ones taken once. The DP
// group of a rank is the ranks holding the same TP shard (rank = dp_rank x tp + tp_rank).
//
// fp16 loss scaling (loss_scale_init > 0; the CLI turns it on for fp16 activations): the backward is
// seeded with scale x the loss, the gradients' norm and non-finite counts are checked, and the
// update unscales them (AdamW's grad_scale = clip coefficient / scale). A step with a non-finite
// gradient is skipped (not an error) and the scale halves; after loss_scale_growth_interval good
// steps in a row it doubles (kernels::LossScaler, torch.amp.GradScaler's rules). StepResult carries
// the scale of each step.
//
// Not here: data (train/Data), checkpoints (train/Checkpoint), ZeRO stages 2-3 (gradients and
// weights sharded), sequence or expert parallelism in training, a device-side skip decision.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "arch/Error.hpp"
#include "kernels/Optimizer.hpp"
#include "models/Qwen3.hpp"

namespace ppu::ccl {
class Communicator;
}

namespace ppu::train {

struct TrainConfig {
  int64_t steps = 300;        // total optimizer steps (the schedule's length)
  int64_t batch = 8;          // sequences per optimizer step
  int64_t micro_batch = 0;    // sequences per forward/backward (0: the whole batch); divides batch
  int64_t seq_len = 256;      // tokens per sequence (inputs; targets are shifted by one)
  double lr = 3e-4;           // peak learning rate
  double min_lr = 3e-5;       // at the end of the cosine decay
  int64_t warmup_steps = -1;  // linear warmup (-1: min(100, steps / 10))
  double weight_decay = 0.1;  // AdamW's decoupled weight decay, on matrices only (not norms, not embeddings)
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double clip = 1.0;          // global gradient-norm clipping (<= 0: none)
  bool skip_nonfinite = false;
  int zero = 0;               // ZeRO stage over the DP group: 0 (none) or 1 (optimizer state sharded; needs dp > 1)
  double loss_scale_init = 0;                 // dynamic loss scaling's first scale (> 0: on; 0: off)
  int64_t loss_scale_growth_interval = 2000;  // good steps in a row before the scale doubles
  // Activation recomputation (models/Qwen3 training_loss): none, selective (the attention core) or
  // full (every layer); losses and gradients are the same bits, the step's simulated time grows by
  // the recomputed forward and the device's activation memory falls.
  nn::Recompute recompute = nn::Recompute::kNone;
};

// Throws UserError naming the field, its value and what is valid.
void check_train_config(const TrainConfig& c, const ModelConfig& model, int64_t max_context);

struct StepResult {
  int64_t step = 0;           // 1-based
  double loss = 0;            // mean over the step's tokens
  double grad_norm = 0;       // before clipping
  double lr = 0;
  double host_s = 0;          // wall seconds on this machine
  double sim_s = 0;           // simulated seconds on the chip (forward, backward, optimizer)
  int64_t tokens = 0;         // tokens of the step (batch x seq_len)
  bool skipped = false;       // non-finite, skipped (skip_nonfinite, or a loss-scale overflow)
  double loss_scale = 0;      // the scale this step's loss was multiplied by (0: no loss scaling)
};

class NonFiniteError : public UserError {
 public:
  using UserError::UserError;
};

class Trainer {
 public:
  // Allocates fp32 master copies of every parameter the model holds and zeroed moments on the
  // model's device. UserError for an invalid config.
  Trainer(Qwen3Model& model, const TrainConfig& cfg);
  // A data-parallel rank: rank `dp_rank` of `dp_comm` (whose size is the DP degree, and must divide
  // cfg.batch / micro-batch: UserError otherwise). With cfg.zero 1 the optimizer state allocated is
  // this rank's slice only (UserError for zero 1 without a DP group of 2 or more, or zero not 0/1).
  Trainer(Qwen3Model& model, const TrainConfig& cfg, ccl::Communicator* dp_comm, int dp_rank);

  // One optimizer step; tokens: [batch, seq_len + 1] ids, sequence-major. With DP or TP every rank
  // of the layout calls it at the same time with the same ids (its collectives meet).
  StepResult step(const std::vector<int32_t>& tokens);
  // Mean loss over sequences [n, seq_len + 1] (no gradients, no update), in micro-batches. Under
  // tensor parallelism every TP rank of the group calls it at the same time (its forward all-reduces).
  double evaluate(const std::vector<int32_t>& tokens);

  int64_t steps_done() const { return step_; }
  void set_steps_done(int64_t s) { step_ = s; }
  const TrainConfig& config() const { return cfg_; }
  // Training FLOPs of one token (3 x the forward's, causal attention over seq_len), for MFU.
  double flops_per_token() const;
  // Model FLOP utilisation of a step: flops_per_token x tokens / (sim_s x the chip's bf16 peak x the
  // chips of the step, dp x tp).
  double mfu(const StepResult& r) const;

  // The optimizer state of each parameter this rank holds (its TP part), in the model's order.
  struct ParamState {
    const nn::Parameter* param;
    DeviceBuffer master, exp_avg, exp_avg_sq;  // fp32, the parameter's local numel; empty under ZeRO-1
    bool decay = true;                         // weight decay applies
  };
  std::vector<ParamState>& state() { return state_; }
  // Host fp32 copies of parameter state()[i]'s master, exp_avg and exp_avg_sq, its local (TP) part
  // whole, for every i. Under ZeRO-1 the slices are all-gathered over the DP group: every DP rank must
  // call this at the same time (checkpoints do).
  std::vector<std::array<std::vector<float>, 3>> optimizer_state();
  // Sets them from host values of the same layout (under ZeRO-1 each rank keeps its slice). UserError
  // if a size differs.
  void set_optimizer_state(const std::vector<std::array<std::vector<float>, 3>>& s);
  int dp() const { return dp_; }
  int dp_rank() const { return dp_rank_; }
  int tp() const { return tp_; }
  // The dynamic loss scaler (loss_scale_init > 0), for checkpoints.
  std::optional<kernels::LossScaler>& loss_scaler() { return scaler_; }
  // Device bytes of the fp32 masters and moments this rank holds.
  int64_t optimizer_state_bytes() const;

 private:
  // Forward + backward of one micro-batch into the graph's parameter gradients; returns the sum of
  // its per-token losses (downloaded).
  double micro_step(nn::Graph& g, const std::vector<int32_t>& tokens, int64_t first_seq, int64_t n, double scale);

  // ZeRO-1: the parameters of one dtype laid end to end (offset[k] in the flat order of state_
  // indices `params`), padded to dp x slice; this rank's slice of the fp32 state.
  struct ZeroBucket {
    DType dtype = DType::kBF16;
    std::vector<size_t> params;
    std::vector<int64_t> offset;
    int64_t total = 0, padded = 0, slice = 0;
    DeviceBuffer master, exp_avg, exp_avg_sq;  // fp32 [slice]: flat elements [dp_rank x slice, + slice)
  };
  // The part of bucket b's parameter k inside this rank's slice: [lo, hi) in the flat order (empty
  // when lo >= hi).
  std::pair<int64_t, int64_t> slice_part(const ZeroBucket& b, size_t k) const;
  // Sums squared norms and non-finite counts over the whole model (TP shards summed, replicated
  // parameters once; ZeRO slices summed over DP). `tp_sharded[i]`: buffer i holds a TP shard.
  kernels::GradNorm global_norm(const std::vector<Buffer>& bufs, const std::vector<bool>& tp_sharded);

  Qwen3Model& model_;
  TrainConfig cfg_;
  ccl::Communicator* dp_comm_ = nullptr;
  int dp_rank_ = 0, dp_ = 1;
  ccl::Communicator* tp_comm_ = nullptr;  // the model's
  int tp_rank_ = 0, tp_ = 1;
  std::vector<ParamState> state_;
  std::vector<ZeroBucket> buckets_;  // ZeRO-1 only
  std::optional<kernels::LossScaler> scaler_;
  int64_t step_ = 0;
};

}  // namespace ppu::train
