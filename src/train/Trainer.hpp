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
// the ranks with an all-reduce of the collective library (timed on the node's links), and every rank
// applies the same update: the weights stay equal on all ranks.
//
// Not here: data (train/Data), checkpoints (train/Checkpoint), tensor parallelism, ZeRO sharding of
// the optimizer state, fp16 loss scaling.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "arch/Error.hpp"
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
  bool skipped = false;       // non-finite, skipped (skip_nonfinite)
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
  // cfg.batch / micro-batch: UserError otherwise).
  Trainer(Qwen3Model& model, const TrainConfig& cfg, ccl::Communicator* dp_comm, int dp_rank);

  // One optimizer step; tokens: [batch, seq_len + 1] ids, sequence-major.
  StepResult step(const std::vector<int32_t>& tokens);
  // Mean loss over sequences [n, seq_len + 1] (no gradients, no update), in micro-batches.
  double evaluate(const std::vector<int32_t>& tokens);

  int64_t steps_done() const { return step_; }
  void set_steps_done(int64_t s) { step_ = s; }
  const TrainConfig& config() const { return cfg_; }
  // Training FLOPs of one token (3 x the forward's, causal attention over seq_len), for MFU.
  double flops_per_token() const;
  // Model FLOP utilisation of a step: flops_per_token x tokens / (sim_s x the chip's bf16 peak x the
  // data-parallel degree).
  double mfu(const StepResult& r) const;

  // The optimizer state of each parameter (checkpoints save and restore it).
  struct ParamState {
    const nn::Parameter* param;
    DeviceBuffer master, exp_avg, exp_avg_sq;  // fp32, the parameter's local numel
    bool decay = true;                         // weight decay applies
  };
  std::vector<ParamState>& state() { return state_; }

 private:
  // Forward + backward of one micro-batch into the graph's parameter gradients; returns the sum of
  // its per-token losses (downloaded).
  double micro_step(nn::Graph& g, const std::vector<int32_t>& tokens, int64_t first_seq, int64_t n, double scale);

  Qwen3Model& model_;
  TrainConfig cfg_;
  ccl::Communicator* dp_comm_ = nullptr;
  int dp_rank_ = 0, dp_ = 1;
  std::vector<ParamState> state_;
  int64_t step_ = 0;
};

}  // namespace ppu::train
