#include "train/Trainer.hpp"

#include <fmt/format.h>

#include <algorithm>
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
  if (c.zero != 0 && c.zero != 1) bad(fmt::format("--zero {}: valid 0 (off) or 1 (optimizer state sharded over --dp)", c.zero));
  if (!(c.loss_scale_init >= 0) || !std::isfinite(c.loss_scale_init) || c.loss_scale_init > 3.0e38)
    bad(fmt::format("--loss-scale {}: valid 0 (off) or a positive scale that fits fp32", c.loss_scale_init));
  if (c.loss_scale_growth_interval < 1)
    bad(fmt::format("--loss-scale-window {}: must be at least 1 step", c.loss_scale_growth_interval));
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
  if (cfg_.zero == 1 && dp_ < 2)
    throw UserError(fmt::format("--zero 1 shards the optimizer state over the data-parallel ranks; with --dp {} there "
                                "is nothing to shard (give --dp 2 or more, or --zero 0)",
                                dp_));
  if (cfg_.micro_batch == 0) cfg_.micro_batch = cfg_.batch / dp_;
  const nn::ParallelGroups& groups = model.context().groups();
  tp_ = groups.degrees.tp;
  tp_rank_ = groups.tp_rank;
  tp_comm_ = groups.tp_comm;
  if (tp_ > 1 && !tp_comm_ && !groups.capture)
    throw UserError(fmt::format("training model '{}' with tp {}: the model has no TP communicator", model.config().name, tp_));
  if (cfg_.loss_scale_init > 0)
    scaler_.emplace(kernels::LossScalerConfig{.init_scale = cfg_.loss_scale_init,
                                              .growth_interval = cfg_.loss_scale_growth_interval});
  Device& dev = model.device();
  for (const nn::Parameter* p : model.trainable_parameters()) {
    ParamState s{p, {}, {}, {}, decays(*p)};
    if (cfg_.zero == 0) {
      const int64_t n = p->value->numel;
      s.master = dev.alloc_owned(DType::kF32, n, p->name + ".master");
      s.exp_avg = dev.alloc_owned(DType::kF32, n, p->name + ".exp_avg");
      s.exp_avg_sq = dev.alloc_owned(DType::kF32, n, p->name + ".exp_avg_sq");
      kernels::copy(dev, p->value, s.master);  // the bf16 weights, exactly, in fp32
      kernels::fill(dev, s.exp_avg, 0.0f);
      kernels::fill(dev, s.exp_avg_sq, 0.0f);
    }
    state_.push_back(std::move(s));
  }
  if (cfg_.zero == 0) return;
  // ZeRO-1: one flat order per parameter dtype; this rank's slice of the fp32 state.
  for (size_t i = 0; i < state_.size(); ++i) {
    const DType dt = state_[i].param->value->dtype;
    auto it = std::find_if(buckets_.begin(), buckets_.end(), [&](const ZeroBucket& b) { return b.dtype == dt; });
    if (it == buckets_.end()) {
      buckets_.push_back(ZeroBucket{});
      it = buckets_.end() - 1;
      it->dtype = dt;
    }
    it->params.push_back(i);
    it->offset.push_back(it->total);
    it->total += state_[i].param->value->numel;
  }
  for (ZeroBucket& b : buckets_) {
    b.slice = (b.total + dp_ - 1) / dp_;
    b.padded = b.slice * dp_;
    const std::string name = fmt::format("zero1.{}", dtype_name(b.dtype));
    b.master = dev.alloc_owned(DType::kF32, b.slice, name + ".master");
    b.exp_avg = dev.alloc_owned(DType::kF32, b.slice, name + ".exp_avg");
    b.exp_avg_sq = dev.alloc_owned(DType::kF32, b.slice, name + ".exp_avg_sq");
    kernels::fill(dev, b.master, 0.0f);  // the padding stays 0
    kernels::fill(dev, b.exp_avg, 0.0f);
    kernels::fill(dev, b.exp_avg_sq, 0.0f);
    const int64_t first = b.slice * dp_rank_;
    for (size_t k = 0; k < b.params.size(); ++k) {
      const auto [lo, hi] = slice_part(b, k);
      if (lo < hi)
        kernels::copy(dev, state_[b.params[k]].param->value.view(lo - b.offset[k], hi - lo), b.master.view(lo - first, hi - lo));
    }
  }
}

std::pair<int64_t, int64_t> Trainer::slice_part(const ZeroBucket& b, size_t k) const {
  const int64_t first = b.slice * dp_rank_;
  const int64_t n = state_[b.params[k]].param->value->numel;
  return {std::max(first, b.offset[k]), std::min(first + b.slice, b.offset[k] + n)};
}

int64_t Trainer::optimizer_state_bytes() const {
  int64_t n = 0;
  for (const ParamState& s : state_)
    for (const DeviceBuffer* b : {&s.master, &s.exp_avg, &s.exp_avg_sq}) n += b->valid() ? (*b)->bytes : 0;
  for (const ZeroBucket& b : buckets_) n += b.master->bytes + b.exp_avg->bytes + b.exp_avg_sq->bytes;
  return n;
}

kernels::GradNorm Trainer::global_norm(const std::vector<Buffer>& bufs, const std::vector<bool>& tp_sharded) {
  Device& dev = model_.device();
  if (tp_ == 1 && cfg_.zero == 0) return kernels::grad_norm(dev, bufs);  // whole and local: the device's sum
  // A ZeRO slice can hold nothing but padding (a model of few elements over many ranks): it adds 0.
  kernels::GradNorm gn = bufs.empty() ? kernels::GradNorm{} : kernels::grad_norm(dev, bufs);
  gn.has_values = dev.functional();
  // [TP-sharded sum of squares, non-finite count, replicated sum of squares], fp32 on the device:
  // summed over DP (ZeRO slices), then the first two over TP.
  std::vector<float> v(3, 0.0f);
  if (gn.has_values)
    for (size_t i = 0; i < bufs.size(); ++i) {
      v[tp_sharded[i] ? 0 : 2] += gn.buffer_sum_squares[i];
      v[1] += static_cast<float>(gn.buffer_nonfinite[i]);
    }
  DeviceBuffer stats = dev.alloc_owned(DType::kF32, 3, "grad_norm.global");
  if (dev.functional()) dev.upload(stats, v);
  if (cfg_.zero == 1) dp_comm_->all_reduce(dp_rank_, stats, stats);
  if (tp_ > 1 && tp_comm_) tp_comm_->all_reduce(tp_rank_, stats.view(0, 2), stats.view(0, 2));
  if (!dev.functional()) return gn;
  v = dev.download(stats);
  gn.sum_squares = v[0] + v[2];
  gn.norm = std::sqrt(gn.sum_squares);
  const auto local_nonfinite = gn.nonfinite;
  gn.nonfinite = static_cast<int64_t>(v[1]);
  if (gn.nonfinite > 0 && local_nonfinite == 0) gn.buffer_nonfinite.assign(gn.buffer_nonfinite.size(), 0);
  return gn;
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
  nn::VarPtr loss = model_.training_loss(g, in, tgt, n, S, scale != 0 ? cfg_.recompute : nn::Recompute::kNone);
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
  // Loss scaling: the backward's seed is scale x the loss; the update divides it out again.
  const double ls = scaler_ ? static_cast<double>(scaler_->scale()) : 1.0;
  r.loss_scale = scaler_ ? ls : 0.0;
  const int64_t share = B / dp_, first = share * dp_rank_;  // this rank's sequences of the global batch
  for (int64_t b0 = first; b0 < first + share; b0 += mb)
    loss_sum += micro_step(g, tokens, b0, mb, ls * static_cast<double>(mb) / static_cast<double>(B));
  g.reduce_tp_partial_grads();  // QK-norm's weights: their heads' parts summed over TP
  std::vector<Buffer> grads;
  for (const ParamState& s : state_) grads.push_back(g.param_grad(*s.param));
  // ZeRO-1: each bucket's gradients end to end, reduce-scattered: this rank's slice summed over DP.
  std::vector<DeviceBuffer> grad_slices;
  if (dp_ > 1) {  // sum the gradients (and the loss) over the data-parallel ranks
    if (cfg_.zero == 1) {
      for (const ZeroBucket& b : buckets_) {
        DeviceBuffer flat = dev.alloc_owned(DType::kF32, b.padded, "zero1.grads");
        DeviceBuffer slice = dev.alloc_owned(DType::kF32, b.slice, "zero1.grad_slice");
        for (size_t k = 0; k < b.params.size(); ++k)
          kernels::copy(dev, grads[b.params[k]], flat.view(b.offset[k], grads[b.params[k]].numel));
        if (b.padded > b.total) kernels::fill(dev, flat.view(b.total, b.padded - b.total), 0.0f);
        dp_comm_->reduce_scatter(dp_rank_, flat, slice);
        grad_slices.push_back(std::move(slice));  // flat is freed here: the slice is all the update needs
      }
    } else {
      for (const Buffer& gr : grads) dp_comm_->all_reduce(dp_rank_, gr, gr);
    }
    DeviceBuffer l = dev.alloc_owned(DType::kF32, 1, "loss_sum");
    if (dev.functional()) dev.upload(l, {static_cast<float>(loss_sum)});
    dp_comm_->all_reduce(dp_rank_, l, l);
    if (dev.functional()) loss_sum = dev.download(l)[0];
  }
  r.loss = loss_sum / static_cast<double>(B * S);
  // The buffers the norm and the update read: whole gradients, or under ZeRO-1 each parameter's part
  // of this rank's slices (name: the state_ index of each).
  std::vector<Buffer> upd;
  std::vector<size_t> upd_param;
  std::vector<bool> tp_sharded;
  if (cfg_.zero == 1) {
    for (size_t bi = 0; bi < buckets_.size(); ++bi) {
      const ZeroBucket& b = buckets_[bi];
      for (size_t k = 0; k < b.params.size(); ++k) {
        const auto [lo, hi] = slice_part(b, k);
        if (lo >= hi) continue;
        upd.push_back(grad_slices[bi].view(lo - b.slice * dp_rank_, hi - lo));
        upd_param.push_back(b.params[k]);
      }
    }
  } else {
    upd = grads;
    for (size_t i = 0; i < state_.size(); ++i) upd_param.push_back(i);
  }
  for (size_t i : upd_param) tp_sharded.push_back(state_[i].param->split.parts > 1);
  const kernels::GradNorm gn = global_norm(upd, tp_sharded);  // every rank: it may run collectives
  r.grad_norm = gn.norm / ls;  // of the unscaled gradients
  const kernels::WarmupCosineSchedule sched{cfg_.lr, cfg_.min_lr, warmup_of(cfg_), cfg_.steps};
  r.lr = sched.lr(std::min(r.step, cfg_.steps));
  const bool grads_finite = !dev.functional() || gn.finite();
  const bool finite = grads_finite && (!dev.functional() || std::isfinite(r.loss));
  if (scaler_ && dev.functional()) scaler_->update(!grads_finite);  // overflow: back off, skip below
  if (!finite) {
    const int64_t i = gn.first_nonfinite();
    const std::string what =
        i >= 0 ? fmt::format("the gradient of '{}'", state_[upd_param[static_cast<size_t>(i)]].param->name)
        : gn.nonfinite > 0 ? std::string("a gradient on another rank")
                           : std::string("the loss");
    if (!cfg_.skip_nonfinite && !(scaler_ && !grads_finite && std::isfinite(r.loss)))
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
    hp.grad_scale = dev.functional() ? kernels::clip_coefficient(gn.norm / ls, cfg_.clip) / ls : 1.0;
    if (cfg_.zero == 0) {
      for (ParamState& s : state_) {
        hp.weight_decay = s.decay ? cfg_.weight_decay : 0.0;
        kernels::adamw(dev, hp, g.param_grad(*s.param), s.master, s.exp_avg, s.exp_avg_sq, s.param->value);
      }
    } else {  // this rank's slices; then the 16-bit copies all-gathered and copied into the weights
      size_t u = 0;
      for (ZeroBucket& b : buckets_) {
        DeviceBuffer flat = dev.alloc_owned(b.dtype, b.padded, "zero1.params");
        const int64_t first = b.slice * dp_rank_;
        const Buffer mine = flat.view(first, b.slice);
        if (b.padded > b.total) kernels::fill(dev, flat.view(b.total, b.padded - b.total), 0.0f);
        for (size_t k = 0; k < b.params.size(); ++k) {
          const auto [lo, hi] = slice_part(b, k);
          if (lo >= hi) continue;
          hp.weight_decay = state_[b.params[k]].decay ? cfg_.weight_decay : 0.0;
          const int64_t o = lo - first, n = hi - lo;
          kernels::adamw(dev, hp, upd[u++], b.master.view(o, n), b.exp_avg.view(o, n), b.exp_avg_sq.view(o, n),
                         mine.view(o, n));
        }
        dp_comm_->all_gather(dp_rank_, mine, flat);
        for (size_t k = 0; k < b.params.size(); ++k) {
          const Buffer& w = state_[b.params[k]].param->value;
          kernels::copy(dev, flat.view(b.offset[k], w.numel), w);
        }
      }
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
  // Each of the dp x tp chips does 1/(dp x tp) of the step's work in the step's time.
  return r.sim_s > 0 && peak > 0 ? flops_per_token() * static_cast<double>(r.tokens) / (r.sim_s * peak * dp_ * tp_) : 0.0;
}

std::vector<std::array<std::vector<float>, 3>> Trainer::optimizer_state() {
  Device& dev = model_.device();
  std::vector<std::array<std::vector<float>, 3>> out(state_.size());
  if (cfg_.zero == 0) {
    for (size_t i = 0; i < state_.size(); ++i)
      out[i] = {dev.download(state_[i].master), dev.download(state_[i].exp_avg), dev.download(state_[i].exp_avg_sq)};
    return out;
  }
  for (ZeroBucket& b : buckets_) {
    const std::array<const DeviceBuffer*, 3> slices = {&b.master, &b.exp_avg, &b.exp_avg_sq};
    for (size_t m = 0; m < 3; ++m) {
      DeviceBuffer whole = dev.alloc_owned(DType::kF32, b.padded, "zero1.gather");
      dp_comm_->all_gather(dp_rank_, *slices[m], whole);
      const std::vector<float> v = dev.download(whole);
      for (size_t k = 0; k < b.params.size(); ++k) {
        const auto n = static_cast<size_t>(state_[b.params[k]].param->value->numel);
        const auto at = v.begin() + b.offset[k];
        out[b.params[k]][m].assign(at, at + static_cast<std::ptrdiff_t>(n));
      }
    }
  }
  return out;
}

void Trainer::set_optimizer_state(const std::vector<std::array<std::vector<float>, 3>>& s) {
  if (s.size() != state_.size())
    throw UserError(fmt::format("optimizer state of {} parameters given to a trainer of {}", s.size(), state_.size()));
  for (size_t i = 0; i < s.size(); ++i)
    for (const auto& v : s[i])
      if (static_cast<int64_t>(v.size()) != state_[i].param->value->numel)
        throw UserError(fmt::format("optimizer state of '{}': {} values for its {} elements on this rank",
                                    state_[i].param->name, v.size(), state_[i].param->value->numel));
  Device& dev = model_.device();
  if (cfg_.zero == 0) {
    for (size_t i = 0; i < s.size(); ++i) {
      dev.upload(state_[i].master, s[i][0]);
      dev.upload(state_[i].exp_avg, s[i][1]);
      dev.upload(state_[i].exp_avg_sq, s[i][2]);
    }
    return;
  }
  for (ZeroBucket& b : buckets_) {
    const std::array<const DeviceBuffer*, 3> slices = {&b.master, &b.exp_avg, &b.exp_avg_sq};
    const int64_t first = b.slice * dp_rank_;
    for (size_t m = 0; m < 3; ++m) {
      std::vector<float> v(static_cast<size_t>(b.slice), 0.0f);
      for (size_t k = 0; k < b.params.size(); ++k) {
        const auto [lo, hi] = slice_part(b, k);
        for (int64_t e = lo; e < hi; ++e)
          v[static_cast<size_t>(e - first)] = s[b.params[k]][m][static_cast<size_t>(e - b.offset[k])];
      }
      dev.upload(*slices[m], v);
    }
  }
}

}  // namespace ppu::train
