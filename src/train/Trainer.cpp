#include "train/Trainer.hpp"

#include <fmt/format.h>

#include <chrono>
#include <cmath>

#include "ccl/Communicator.hpp"
#include "kernels/Elementwise.hpp"
#include "kernels/Optimizer.hpp"

namespace ppu::train {

void check_train_config(const TrainConfig& c, const ModelConfig& model, int64_t max_context) {
  auto bad = [](const std::string& what) { throw UserError(what); };
  if (c.steps < 1) bad(fmt::format("--steps {}: must be at least 1", c.steps));
  if (c.batch < 1) bad(fmt::format("--batch {}: must be at least 1", c.batch));
  const int64_t mb = c.micro_batch == 0 ? c.batch : c.micro_batch;
  if (mb < 1 || c.batch % mb != 0)
    bad(fmt::format("--micro-batch {}: must divide the batch of {} sequences (valid: {})", c.micro_batch, c.batch,
                    nn::divisors_text(c.batch)));
  if (c.seq_len < 1 || c.seq_len > model.max_position_embeddings || c.seq_len > max_context)
    bad(fmt::format("--seq-len {}: valid 1 to model '{}''s context of {} positions", c.seq_len, model.name,
                    std::min<int64_t>(model.max_position_embeddings, max_context)));
  if (!(c.lr >= 0) || !std::isfinite(c.lr)) bad(fmt::format("--lr {}: must be finite and >= 0", c.lr));
  if (!(c.min_lr >= 0) || c.min_lr > c.lr) bad(fmt::format("--min-lr {}: valid 0 to --lr ({})", c.min_lr, c.lr));
  if (c.warmup_steps < -1 || c.warmup_steps > c.steps)
    bad(fmt::format("--warmup {}: valid 0 to --steps ({}), or -1 for the default", c.warmup_steps, c.steps));
}

namespace {

int64_t warmup_of(const TrainConfig& c) {
  return c.warmup_steps >= 0 ? c.warmup_steps : std::min<int64_t>(100, c.steps / 10);
}

// Matrices decay; norms (1-D) and embeddings do not (the common recipe: GPT-2, Llama, Qwen).
bool decays(const nn::Parameter& p) {
  return p.shape.size() == 2 && p.name.find("embed_tokens") == std::string::npos;
}

}  // namespace

Trainer::Trainer(Qwen3Model& model, const TrainConfig& cfg) : Trainer(model, cfg, nullptr, 0) {}

Trainer::Trainer(Qwen3Model& model, const TrainConfig& cfg, ccl::Communicator* dp_comm, int dp_rank)
    : model_(model), cfg_(cfg), dp_comm_(dp_comm), dp_rank_(dp_rank), dp_(dp_comm ? dp_comm->size() : 1) {
  check_train_config(cfg_, model.config(), model.max_context());
  if (dp_ > 1) {
    const int64_t mb = cfg_.micro_batch == 0 ? cfg_.batch / dp_ : cfg_.micro_batch;
    if (cfg_.batch % dp_ != 0 || mb < 1 || (cfg_.batch / dp_) % mb != 0)
      throw UserError(fmt::format("--batch {} with --dp {} and --micro-batch {}: each of the {} ranks takes batch / dp "
                                  "sequences, which the micro-batch must divide (valid batches: multiples of {})",
                                  cfg_.batch, dp_, cfg_.micro_batch, dp_, dp_ * std::max<int64_t>(1, cfg_.micro_batch)));
    if (dp_rank < 0 || dp_rank >= dp_)
      throw UserError(fmt::format("data-parallel rank {} of {}; valid: 0 to {}", dp_rank, dp_, dp_ - 1));
  }
  if (cfg_.micro_batch == 0) cfg_.micro_batch = cfg_.batch / dp_;
  Device& dev = model.device();
  for (const nn::Parameter* p : model.trainable_parameters()) {
    const int64_t n = p->value->numel;
    ParamState s{p, dev.alloc_owned(DType::kF32, n, p->name + ".master"), dev.alloc_owned(DType::kF32, n, p->name + ".exp_avg"),
                 dev.alloc_owned(DType::kF32, n, p->name + ".exp_avg_sq"), decays(*p)};
    kernels::copy(dev, p->value, s.master);  // the bf16 weights, exactly, in fp32
    kernels::fill(dev, s.exp_avg, 0.0f);
    kernels::fill(dev, s.exp_avg_sq, 0.0f);
    state_.push_back(std::move(s));
  }
}

double Trainer::micro_step(nn::Graph& g, const std::vector<int32_t>& tokens, int64_t first_seq, int64_t n,
                           double scale) {
  const int64_t S = cfg_.seq_len, row = S + 1;
  std::vector<int32_t> in, tgt;
  in.reserve(static_cast<size_t>(n * S));
  tgt.reserve(static_cast<size_t>(n * S));
  for (int64_t b = first_seq; b < first_seq + n; ++b) {
    const auto* r = tokens.data() + b * row;
    in.insert(in.end(), r, r + S);
    tgt.insert(tgt.end(), r + 1, r + 1 + S);
  }
  nn::VarPtr loss = model_.training_loss(g, in, tgt, n, S);
  double sum = 0;
  if (model_.device().functional())
    for (float v : model_.device().download(loss->value)) sum += v;
  if (scale != 0) g.backward(loss, scale);
  return sum;
}

StepResult Trainer::step(const std::vector<int32_t>& tokens) {
  const int64_t B = cfg_.batch, S = cfg_.seq_len, mb = cfg_.micro_batch;
  if (static_cast<int64_t>(tokens.size()) != B * (S + 1))
    throw UserError(fmt::format("train step: {} token ids; a batch of {} sequences of {} + 1 tokens needs {}",
                                tokens.size(), B, S, B * (S + 1)));
  Device& dev = model_.device();
  const auto wall0 = std::chrono::steady_clock::now();
  const double sim0 = dev.synchronize();
  StepResult r;
  r.step = step_ + 1;
  r.tokens = B * S;
  nn::Graph g(model_.context());
  double loss_sum = 0;
  const int64_t share = B / dp_, first = share * dp_rank_;  // this rank's sequences of the global batch
  for (int64_t b0 = first; b0 < first + share; b0 += mb)
    loss_sum += micro_step(g, tokens, b0, mb, static_cast<double>(mb) / static_cast<double>(B));
  std::vector<Buffer> grads;
  for (const ParamState& s : state_) grads.push_back(g.param_grad(*s.param));
  if (dp_ > 1) {  // sum the gradients (and the loss) over the data-parallel ranks
    for (const Buffer& gr : grads) dp_comm_->all_reduce(dp_rank_, gr, gr);
    DeviceBuffer l = dev.alloc_owned(DType::kF32, 1, "loss_sum");
    if (dev.functional()) dev.upload(l, {static_cast<float>(loss_sum)});
    dp_comm_->all_reduce(dp_rank_, l, l);
    if (dev.functional()) loss_sum = dev.download(l)[0];
  }
  r.loss = loss_sum / static_cast<double>(B * S);
  const kernels::GradNorm gn = kernels::grad_norm(dev, grads);
  r.grad_norm = gn.norm;
  const kernels::WarmupCosineSchedule sched{cfg_.lr, cfg_.min_lr, warmup_of(cfg_), cfg_.steps};
  r.lr = sched.lr(std::min(r.step, cfg_.steps));
  const bool finite = !dev.functional() || (gn.finite() && std::isfinite(r.loss));
  if (!finite) {
    const int64_t i = gn.first_nonfinite();
    const std::string what =
        i >= 0 ? fmt::format("the gradient of '{}'", state_[static_cast<size_t>(i)].param->name) : std::string("the loss");
    if (!cfg_.skip_nonfinite)
      throw NonFiniteError(fmt::format("step {}: {} is not finite (loss {}); lower --lr, or pass --skip-nonfinite to "
                                       "skip such steps",
                                       r.step, what, r.loss));
    r.skipped = true;
  } else {
    kernels::AdamWParams hp;
    hp.lr = r.lr;
    hp.beta1 = cfg_.beta1;
    hp.beta2 = cfg_.beta2;
    hp.eps = cfg_.eps;
    hp.step = r.step;
    hp.grad_scale = dev.functional() ? kernels::clip_coefficient(gn.norm, cfg_.clip) : 1.0;
    for (ParamState& s : state_) {
      hp.weight_decay = s.decay ? cfg_.weight_decay : 0.0;
      kernels::adamw(dev, hp, g.param_grad(*s.param), s.master, s.exp_avg, s.exp_avg_sq, s.param->value);
    }
  }
  step_ = r.step;
  r.sim_s = dev.synchronize() - sim0;
  r.host_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  return r;
}

double Trainer::evaluate(const std::vector<int32_t>& tokens) {
  const int64_t S = cfg_.seq_len, n = static_cast<int64_t>(tokens.size()) / (S + 1);
  if (n < 1 || static_cast<int64_t>(tokens.size()) != n * (S + 1))
    throw UserError(fmt::format("evaluate: {} token ids are not whole sequences of {} + 1 tokens", tokens.size(), S));
  double sum = 0;
  for (int64_t b0 = 0; b0 < n; b0 += cfg_.micro_batch) {
    nn::Graph g(model_.context());
    sum += micro_step(g, tokens, b0, std::min(cfg_.micro_batch, n - b0), 0.0);
  }
  return sum / static_cast<double>(n * S);
}

double Trainer::flops_per_token() const {
  // Causal attention over seq_len: on average (seq_len + 1) / 2 keys per token.
  return 3.0 * forward_flops_per_token(model_.config(), (static_cast<double>(cfg_.seq_len) + 1.0) / 2.0);
}

double Trainer::mfu(const StepResult& r) const {
  const double peak = model_.device().chip().matrix_flops_per_s(DType::kBF16);
  // Each of the dp chips does 1/dp of the step's tokens in the step's time.
  return r.sim_s > 0 && peak > 0 ? flops_per_token() * static_cast<double>(r.tokens) / (r.sim_s * peak * dp_) : 0.0;
}

}  // namespace ppu::train
