#include "cluster/Workload.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <tuple>
#include <numeric>

#include "arch/Error.hpp"
#include "kernels/CrossEntropy.hpp"
#include "kernels/Softmax.hpp"
#include "kernels/Elementwise.hpp"
#include "kernels/Gemm.hpp"
#include "models/Qwen3.hpp"
#include "nn/OpBackward.hpp"
#include "runtime/Device.hpp"

namespace ppu::cluster {

namespace {

using kernels::GemmShape;

struct Capture {
  ForwardCapture cap;
  int64_t weight_bytes = 0;
};

PartWork part_of(Device& dev, const std::vector<CapturedLaunch>& launches, size_t from, size_t to,
                 kernels::AttentionStyle style) {
  PartWork p;
  for (size_t i = from; i < to; ++i) {
    const CapturedLaunch& l = launches[i];
    p.fwd_s += l.seconds;
    p.fwd_by_kind[l.kind] += l.seconds;
    p.flops_fwd += l.kernel.flops;
    if (l.kind == "attention") p.attention_fwd_s += l.seconds;
    const double b = nn::backward_seconds(dev, l.kernel, style);
    p.bwd_s += b;
    p.bwd_by_kind[l.kind] += b;
  }
  return p;
}

// The chip with HBM enough for any one- or two-layer shard: what fits is decided by the cluster
// layer's own accounting (cluster/Training), not by these throwaway devices.
ChipSpec unbounded(const ChipSpec& chip) {
  ChipSpec c = chip;
  c.hbm_size.value = 1e16;
  return c;
}

void check_options(const ModelConfig& m, const WorkloadOptions& o) {
  nn::ParallelDegrees d;
  d.tp = o.tp;
  d.sp = o.sp;
  d.ep = o.ep;
  d.cp = o.cp;
  if (o.seq_len < 1) throw UserError(fmt::format("sequences of {} tokens; must be >= 1", o.seq_len));
  nn::check_split(split_dims(m), d, o.seq_len);
  if (o.micro_batch < 1) throw UserError(fmt::format("micro-batch of {} sequences; must be >= 1", o.micro_batch));
  if (o.seq_len > m.max_position_embeddings)
    throw UserError(fmt::format("model '{}': sequences of {} tokens exceed its {} positions", m.name, o.seq_len,
                                m.max_position_embeddings));
}

}  // namespace

std::string WorkloadOptions::key() const {
  return fmt::format("tp{} sp{} ep{} cp{} mb{} s{} u{} a{}", tp, sp, ep, cp, micro_batch, seq_len, unfused_attention,
                     static_cast<int>(attention_style));
}

Workload extract_workload(const ModelConfig& model, const ChipSpec& chip, const WorkloadOptions& o,
                          std::shared_ptr<TimingCache> timings) {
  check_options(model, o);
  const auto wall0 = std::chrono::steady_clock::now();
  Workload w;
  w.options = o;
  w.chip = chip.name;
  w.model = model.name;
  // Each chip's share of a sequence (context parallelism: chunk c and 2cp-1-c of it, so every chip
  // sees on average half the causal context), as `past` positions before T new tokens.
  const int64_t T = o.seq_len / o.cp;
  const int64_t past = o.cp > 1 ? o.seq_len / 2 - T / 2 : 0;
  Device dev(unbounded(chip), ExecMode::kTimingOnly);
  if (timings) dev.share_timing_cache(timings);
  std::vector<ForwardCapture> caps(2);
  for (int layers = 1; layers <= 2; ++layers) {
    ModelConfig c = model;
    c.num_layers = layers;
    Qwen3Options q;
    q.tp_size = o.tp;
    q.sequence_parallel = o.sp && o.tp > 1;
    q.ep_size = o.ep;
    q.capture = &caps[static_cast<size_t>(layers - 1)];
    q.vocab_parallel = o.tp > 1;
    q.max_batch = o.micro_batch;
    q.max_context = past + T;
    if (o.unfused_attention) q.attention_impl = Qwen3Options::AttentionImpl::kUnfused;
    q.attention_style = o.attention_style;
    Qwen3Model m(dev, c, Qwen3Weights::random(1), q);
    for (int64_t b = 0; b < o.micro_batch; ++b) m.assume_past(static_cast<size_t>(b), past);
    m.forward_batch(std::vector<std::vector<int32_t>>(static_cast<size_t>(o.micro_batch), std::vector<int32_t>(T, 0)));
    w.balanced_routing = m.balanced_routing() && model.is_moe();
  }
  const auto& one = caps[0].launches;
  const auto& two = caps[1].launches;
  size_t e = 0;
  while (e < one.size() && one[e].kind == "embedding") ++e;
  const size_t per_layer = two.size() - one.size();
  PPU_CHECK(e + per_layer <= one.size(), "a one-layer forward launches fewer kernels than its layer");
  w.embed = part_of(dev, one, 0, e, o.attention_style);
  w.layer = part_of(dev, one, e, e + per_layer, o.attention_style);
  w.head = part_of(dev, one, e + per_layer, one.size(), o.attention_style);
  // The loss: softmax cross-entropy over this shard's logits, a softmax over [tokens, vocab / tp];
  // its backward the cross-entropy backward kernel (the probabilities minus the one-hot target, in
  // place, as nn::Graph::lm_head_cross_entropy launches it per chunk of rows).
  {
    const int64_t rows = o.micro_batch * T, cols = (model.vocab_size + o.tp - 1) / o.tp;
    Buffer logits = dev.alloc(DType::kF32, rows * cols, "logits"), probs = dev.alloc(DType::kF32, rows * cols, "probs"),
           lse = dev.alloc(DType::kF32, rows, "lse");
    const double t = kernels::softmax(dev, logits, probs, rows, cols).time_s;
    w.head.fwd_s += t;
    w.head.fwd_by_kind["loss"] += t;
    const double b = kernels::cross_entropy_backward(dev, logits, lse, logits, rows, cols,
                                                     std::vector<int32_t>(static_cast<size_t>(rows), 0), 1.0f)
                         .time_s;
    w.head.bwd_s += b;
    w.head.bwd_by_kind["loss"] += b;
    for (Buffer* x : {&logits, &probs, &lse}) dev.free(*x);
  }
  const auto& c1 = caps[0].collectives;
  const size_t layer_comms = caps[1].collectives.size() - c1.size();
  for (size_t i = 0; i < c1.size(); ++i) {
    LayerComm lc{c1[i].kind, c1[i].group, c1[i].collective, c1[i].bytes};
    (i < layer_comms ? w.layer : w.head).comms.push_back(lc);
  }
  if (o.cp > 1) {  // keys and values of the whole sequence gathered before attention (Llama 3's CP)
    const double kv = 2.0 * static_cast<double>(o.micro_batch * o.seq_len * (model.num_kv_heads / o.tp) * model.head_dim) *
                      dtype_size_bytes(DType::kBF16);
    w.layer.comms.push_back(LayerComm{"cp all-gather kv", "cp", ccl::Collective::kAllGather, kv});
  }
  {
    const int64_t n = int64_t{1} << 24;
    Buffer a = dev.alloc(DType::kF32, n, "adam_a"), b = dev.alloc(DType::kF32, n, "adam_b"),
           y = dev.alloc(DType::kF32, n, "adam_y");
    const double t = kernels::binary(dev, BinaryOp::kAdd, a, b, y).time_s;  // 12 bytes per element
    w.optimizer_s_per_param = t * (30.0 / 12.0) / static_cast<double>(n);
    for (Buffer* x : {&a, &b, &y}) dev.free(*x);
  }
  const WeightShares ws = weight_shares(model, chip, o.tp, o.ep);
  w.layer.weight_bytes = ws.layer_bytes;
  w.embed.weight_bytes = ws.embed_bytes;
  w.head.weight_bytes = ws.head_bytes;
  w.layer.params = ws.layer_bytes / 2;
  w.embed.params = ws.embed_bytes / 2;
  w.head.params = ws.head_bytes / 2;
  w.expert_params_per_layer = ws.expert_params_per_layer;
  w.kernel_sim_wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  return w;
}

WeightShares weight_shares(const ModelConfig& model, const ChipSpec& chip, int tp, int ep) {
  WorkloadOptions o;
  o.tp = tp;
  o.ep = ep;
  o.seq_len = 2;
  check_options(model, o);
  int64_t bytes[2] = {0, 0};
  Device dev(unbounded(chip), ExecMode::kTimingOnly);
  for (int layers = 1; layers <= 2; ++layers) {
    ModelConfig c = model;
    c.num_layers = layers;
    ForwardCapture cap;
    Qwen3Options q;
    q.tp_size = tp;
    q.ep_size = ep;
    q.capture = &cap;
    q.vocab_parallel = tp > 1;
    q.max_context = 2;
    Qwen3Model m(dev, c, Qwen3Weights::random(1), q);
    bytes[layers - 1] = m.weight_bytes();
  }
  WeightShares s;
  s.layer_bytes = bytes[1] - bytes[0];
  const int64_t rest = bytes[0] - s.layer_bytes;
  const int64_t head = ((model.vocab_size + tp - 1) / tp) * model.hidden_size * 2 + model.hidden_size * 2;
  s.head_bytes = std::min(rest, head);
  s.embed_bytes = rest - s.head_bytes;
  if (model.is_moe())
    s.expert_params_per_layer = 3 * model.hidden_size * model.moe_intermediate_size * model.num_experts / ep / (ep > 1 ? 1 : tp);
  return s;
}

const Workload& WorkloadCache::get(const ModelConfig& model, const ChipSpec& chip, const WorkloadOptions& o) {
  const std::string key = chip.name + "|" + model.name + "|" + o.key();
  std::shared_ptr<TimingCache> timings;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = cache_.find(key);
    if (it != cache_.end()) return *it->second;
    auto& t = timings_[chip.name];
    if (!t) t = std::make_shared<TimingCache>();
    timings = t;
  }
  auto w = std::make_unique<Workload>(extract_workload(model, chip, o, timings));
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, fresh] = cache_.emplace(key, std::move(w));
  return *it->second;
}

size_t WorkloadCache::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cache_.size();
}

}  // namespace ppu::cluster
