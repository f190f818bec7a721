#include "cluster/Training.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "arch/Error.hpp"

namespace ppu::cluster {

namespace {

// Layers of each pipeline stage: even, or (Llama 3's balance) the first and last stage one fewer.
std::vector<int64_t> stage_layers(int64_t layers, int pp) {
  std::vector<int64_t> s(static_cast<size_t>(pp), (layers + pp - 1) / pp);
  int64_t extra = static_cast<int64_t>(s.front()) * pp - layers;
  if (extra >= 1) --s.front();
  if (extra >= 2) --s.back();
  return s;
}

// Bytes per token per layer kept for the backward pass (bf16 activations, 1-byte dropout masks),
// Korthikanti et al. 2022 ("Reducing activation recomputation in large transformer models"), per
// tensor, for this model's widths; `replicated` is what stays whole on every TP rank without SP.
struct ActivationBytes {
  double sharded = 0, replicated = 0;
};
ActivationBytes activation_bytes_per_token(const ModelConfig& m, const Layout& l) {
  const double h = static_cast<double>(m.hidden_size), qw = static_cast<double>(m.q_width()),
               kvw = static_cast<double>(m.kv_width());
  const bool gpt = m.family == ModelFamily::kGpt;
  ActivationBytes a;
  a.replicated = 2 * h + 2 * h + 2 * h + 2 * h + (gpt ? 2 * h : 0);  // norm inputs, GEMM inputs, dropout masks
  a.sharded = 2 * (qw + 2 * kvw) + 2 * qw;                            // q, k, v; attention output
  a.sharded += 4.0 * qw / static_cast<double>(m.head_dim) / 2.0;       // softmax statistics (fp32 per head row)
  if (l.unfused_attention)  // scores' softmax output, dropout mask and output: 5 x heads x seq bytes
    a.sharded += 5.0 * static_cast<double>(m.num_heads) * static_cast<double>(l.seq_len);
  if (m.is_moe()) {
    const double k = static_cast<double>(m.num_experts_per_tok), fe = static_cast<double>(m.moe_intermediate_size);
    // each routed copy: its input row, gate, up and their product, and its output row
    a.sharded += k * (2 * h + 3 * 2 * fe + 2 * h);
  } else {
    const double f = static_cast<double>(m.intermediate_size);
    a.sharded += m.activation == Activation::kGelu ? 2 * 2 * f : 3 * 2 * f;
  }
  return a;
}

}  // namespace

std::string Layout::describe() const {
  std::string s = fmt::format("TP{} PP{} DP{}", tp, pp, dp);
  if (cp > 1) s += fmt::format(" CP{}", cp);
  if (ep > 1) s += fmt::format(" EP{}", ep);
  if (sp && tp > 1) s += " SP";
  if (virtual_stages > 1) s += fmt::format(" v{}", virtual_stages);
  s += fmt::format(" mb{} ZeRO-{} recompute {}", micro_batch, zero, kRecomputeNames[static_cast<size_t>(recompute)]);
  if (recompute == Recompute::kFull && recompute_layers > 0) s += fmt::format(" ({} layers per stage)", recompute_layers);
  if (pp_inside_dp) s += " order tp-cp-pp-dp";
  return s;
}

void check_layout(const ModelConfig& m, const ClusterSpec& c, const Layout& l, int64_t chips) {
  if (l.virtual_stages < 1)
    throw UserError(fmt::format("layout: virtual stages = {}; every degree must be >= 1", l.virtual_stages));
  nn::ParallelDegrees d;
  d.tp = l.tp;
  d.sp = l.sp;
  d.ep = l.ep;
  d.cp = l.cp;
  d.dp = l.dp;
  d.pp = l.pp;
  nn::check_split(split_dims(m), d, std::max<int64_t>(0, l.seq_len));  // its range is checked below
  const auto stages = stage_layers(m.num_layers, l.pp);
  if (l.pp > m.num_layers || stages.front() < 1 ||
      std::accumulate(stages.begin(), stages.end(), int64_t{0}) != m.num_layers) {
    std::string valid;
    for (int p = 1; p <= m.num_layers; ++p) {
      const auto s = stage_layers(m.num_layers, p);
      if (s.front() >= 1 && std::accumulate(s.begin(), s.end(), int64_t{0}) == m.num_layers)
        valid += (valid.empty() ? "" : ", ") + std::to_string(p);
    }
    throw UserError(fmt::format("layout: PP {} does not divide model '{}''s {} layers (the first and last stage may hold "
                                "one layer less each); valid PP: {}",
                                l.pp, m.name, m.num_layers, valid));
  }
  if (l.virtual_stages > 1 && (l.pp == 1 || stages[1 % stages.size()] % l.virtual_stages != 0))
    throw UserError(fmt::format("layout: {} virtual stages need PP > 1 and must divide the {} layers of a full stage; valid: {}",
                                l.virtual_stages, stages[1 % stages.size()], divisors_text(stages[1 % stages.size()])));
  if (l.recompute_layers < 0 || (l.recompute_layers > 0 && (l.recompute != Recompute::kFull ||
                                                            l.recompute_layers > stages[1 % stages.size()])))
    throw UserError(fmt::format("layout: recompute {} layers per stage; valid with full recomputation only, 1 to the {} "
                                "layers of a stage (0: all)",
                                l.recompute_layers, stages[1 % stages.size()]));
  if (l.pp_inside_dp && l.ep > 1 && l.ep != l.tp)
    throw UserError(fmt::format("layout: with the TP-CP-PP-DP rank order an expert-parallel group must be the TP group "
                                "(EP {} with TP {}); valid EP: 1, {}; or use Megatron's order",
                                l.ep, l.tp, l.tp));
  if (chips == 0) chips = c.num_chips();
  if (chips > c.num_chips())
    throw UserError(fmt::format("layout: {} chips asked for, but cluster '{}' has {}", chips, c.name, c.num_chips()));
  if (l.chips() != chips) {
    const int64_t tpc = int64_t{l.tp} * l.pp * l.cp;
    throw UserError(fmt::format("layout {}: TP x PP x DP x CP = {} chips, but the run uses {}{}; the product must equal "
                                "the chip count{}",
                                l.describe(), l.chips(), chips, chips == c.num_chips() ? " (all of cluster '" + c.name + "')" : "",
                                chips % tpc == 0 ? fmt::format(" (DP = {} with these TP, PP, CP)", chips / tpc)
                                                 : fmt::format(" (TP x PP x CP = {} does not divide {})", tpc, chips)));
  }
  if (l.micro_batch < 1 || l.global_batch < 1 || l.global_batch % (l.dp * l.micro_batch) != 0)
    throw UserError(fmt::format("layout: global batch {} must be a positive multiple of DP x micro-batch = {} x {} = {}",
                                l.global_batch, l.dp, l.micro_batch, int64_t{l.dp} * l.micro_batch));
  if (l.zero < 0 || l.zero > 3) throw UserError(fmt::format("layout: ZeRO stage {}; valid: 0, 1, 2, 3", l.zero));
  if (l.seq_len < 1 || l.seq_len > m.max_position_embeddings)
    throw UserError(fmt::format("layout: sequence length {}; valid: 1 to model '{}''s {} positions", l.seq_len, m.name,
                                m.max_position_embeddings));
}

double model_flops_per_token(const ModelConfig& m, int64_t seq_len, bool causal_half) {
  const double h = static_cast<double>(m.hidden_size);
  double per_layer = h * m.q_width() * 2.0 + 2.0 * h * m.kv_width();  // q, o; k, v
  if (m.is_moe())
    per_layer += static_cast<double>(m.num_experts_per_tok) * 3.0 * h * m.moe_intermediate_size + h * m.num_experts;
  else
    per_layer += (m.activation == Activation::kGelu ? 2.0 : 3.0) * h * m.intermediate_size;
  const double attention = 4.0 * static_cast<double>(seq_len) * m.q_width() * (causal_half ? 0.5 : 1.0);
  const double fwd = m.num_layers * (2.0 * per_layer + attention) + 2.0 * h * m.vocab_size;
  return 3.0 * fwd;
}

double recomputed_layers(const Layout& l, double stage_layers) {
  if (l.recompute != Recompute::kFull) return 0;
  return l.recompute_layers > 0 ? std::min<double>(l.recompute_layers, stage_layers) : stage_layers;
}

Layout least_recomputation(const ModelConfig& m, const ChipSpec& chip, Layout l) {
  return least_recomputation(m, chip, l, weight_shares(m, chip, l.tp, l.ep));
}

Layout least_recomputation(const ModelConfig& m, const ChipSpec& chip, Layout l, const WeightShares& ws) {
  l.recompute = Recompute::kNone;
  l.recompute_layers = 0;
  if (training_memory(m, chip, l, ws).fits()) return l;
  const auto stages = stage_layers(m.num_layers, l.pp);
  const int full = static_cast<int>(*std::max_element(stages.begin(), stages.end()));
  l.recompute = Recompute::kFull;
  for (int n = 1; n < full; ++n) {
    l.recompute_layers = n;
    if (training_memory(m, chip, l, ws).fits()) return l;
  }
  l.recompute_layers = 0;
  return l;
}

WorkloadOptions workload_options(const Layout& l) {
  WorkloadOptions wo;
  wo.tp = l.tp;
  wo.sp = l.sp && l.tp > 1;
  wo.ep = l.ep;
  wo.cp = l.cp;
  wo.micro_batch = l.micro_batch;
  wo.seq_len = l.seq_len;
  wo.unfused_attention = l.unfused_attention;
  wo.attention_style = l.attention_style;
  return wo;
}

MemoryUse training_memory(const ModelConfig& m, const ChipSpec& chip, const Layout& l) {
  return training_memory(m, chip, l, weight_shares(m, chip, l.tp, l.ep));
}

MemoryUse training_memory(const ModelConfig& m, const ChipSpec& chip, const Layout& l, const WeightShares& ws) {
  const auto stages = stage_layers(m.num_layers, l.pp);
  const double mb = static_cast<double>(l.global_batch / (l.dp * l.micro_batch));
  const double v = l.virtual_stages;
  const bool sp = l.sp && l.tp > 1;
  const int dp_group = l.dp * l.cp;
  const double Ls = static_cast<double>(*std::max_element(stages.begin(), stages.end()));
  double params_first = static_cast<double>(stages.front() * ws.layer_bytes + ws.embed_bytes) / 2;
  double params_last = static_cast<double>(stages.back() * ws.layer_bytes + ws.head_bytes) / 2;
  if (l.pp == 1) params_first = params_last = params_first + static_cast<double>(ws.head_bytes) / 2;
  MemoryUse mem;
  mem.capacity = chip.hbm_size.value;
  const double P = std::max(params_first, params_last);
  mem.weights = 2.0 * P / (l.zero == 3 ? dp_group : 1);
  mem.gradients = 4.0 * P / (l.zero >= 2 ? dp_group : 1);
  mem.optimizer = 12.0 * P / (l.zero >= 1 ? dp_group : 1);
  const ActivationBytes ab = activation_bytes_per_token(m, l);
  const double tok = static_cast<double>(l.micro_batch * (l.seq_len / l.cp));
  double per_layer_full = tok * (ab.sharded / l.tp + (sp ? ab.replicated / l.tp : ab.replicated));
  // Context parallelism: the keys and values gathered from the other CP ranks stay for the backward.
  if (l.cp > 1)
    per_layer_full += 2.0 * static_cast<double>(l.micro_batch * (l.seq_len - l.seq_len / l.cp)) *
                      static_cast<double>(m.kv_width() / l.tp) * 2.0;
  const double input_only = tok * 2.0 * static_cast<double>(m.hidden_size) / (sp ? l.tp : 1);
  double per_layer = per_layer_full;
  if (l.recompute == Recompute::kSelective && l.unfused_attention)
    per_layer -= tok * 5.0 * static_cast<double>(m.num_heads) * static_cast<double>(l.seq_len) / l.tp;
  const double in_flight = std::min<double>(mb, l.pp) * (l.virtual_stages > 1 ? 1.0 + (l.pp - 1.0) / (l.pp * v) : 1.0);
  const double recomputed = recomputed_layers(l, Ls);
  mem.activations = (recomputed * input_only + (Ls - recomputed) * per_layer) * in_flight +
                    (recomputed > 0 ? per_layer_full : 0.0);
  mem.buffers = tok * static_cast<double>((m.vocab_size + l.tp - 1) / l.tp) * 4.0 * 2.0;  // logits and their gradient
  mem.reserve = 2.0 * double(int64_t{1} << 30);
  return mem;
}

TrainingResult simulate_training(const ModelConfig& m, const ClusterSpec& c, const Layout& l, NetworkModel& net,
                                 WorkloadCache& cache, int64_t chips_used) {
  check_layout(m, c, l, chips_used);
  const auto wall0 = std::chrono::steady_clock::now();
  TrainingResult r;
  r.layout = l;
  const ChipSpec& chip = c.node.chip;
  const WorkloadOptions wo = workload_options(l);
  const Workload& w = cache.get(m, chip, wo);
  const int64_t chips = l.chips();
  const int64_t m_batches = l.global_batch / (l.dp * l.micro_batch);
  r.micro_batches = m_batches;

  // --- communication of one micro-batch, per layer and per stage boundary
  std::map<std::string, double> memo;
  auto comm = [&](ccl::Collective kind, double bytes, int group, int64_t stride, const std::string& label) {
    if (group <= 1 || bytes <= 0) return 0.0;
    const std::string key = fmt::format("{}|{}|{}|{}", static_cast<int>(kind), bytes, group, stride);
    auto it = memo.find(key);
    if (it != memo.end()) return it->second;
    CollectiveRequest q{kind, bytes, group, stride, chips};
    const CollectiveCost cost = net.cost(q);
    r.comm_how[label] = cost.how;
    return memo[key] = cost.seconds;
  };
  const int64_t dp_stride = l.pp_inside_dp ? int64_t{l.tp} * l.cp * l.pp : int64_t{l.tp} * l.cp;
  const int64_t pp_stride = l.pp_inside_dp ? int64_t{l.tp} * l.cp : int64_t{l.tp} * l.cp * l.dp;
  auto group_of = [&](const std::string& g) -> std::pair<int, int64_t> {
    if (g == "tp") return {l.tp, 1};
    if (g == "ep") return {l.ep, 1};
    return {l.cp, l.tp};  // "cp"
  };
  std::map<std::string, double> layer_comm;  // by group: forward once
  for (const LayerComm& lc : w.layer.comms) {
    const auto [size, stride] = group_of(lc.group);
    layer_comm[lc.group] += comm(lc.collective, lc.bytes, size, stride, lc.group + " " + lc.kind);
  }
  double head_comm = 0;
  for (const LayerComm& lc : w.head.comms) {
    const auto [size, stride] = group_of(lc.group);
    head_comm += comm(lc.collective, lc.bytes, size, stride, lc.group + " " + lc.kind);
  }
  // Recomputation, averaged over the stage's layers (block recomputation redoes only some of them).
  const auto stages = stage_layers(m.num_layers, l.pp);
  const double full_stage = static_cast<double>(*std::max_element(stages.begin(), stages.end()));
  const double share = l.recompute == Recompute::kFull ? recomputed_layers(l, full_stage) / full_stage : 0.0;
  const double comm_passes = 2.0 + share;  // forward, recomputation, backward
  const double recompute_s = l.recompute == Recompute::kFull        ? share * w.layer.fwd_s
                             : l.recompute == Recompute::kSelective ? w.layer.attention_fwd_s
                                                                    : 0.0;
  if (l.overlap_tp_comm && layer_comm.count("tp")) {
    // TP collectives split into chunks and pipelined with the GEMMs next to them (Megatron-core's
    // TP communication overlap): exposed only beyond the layer's GEMM time, per pass.
    double gemm_s = 0;
    for (const auto& [kind, t] : w.layer.fwd_by_kind)
      if (kind.find("gemm") != std::string::npos) gemm_s += t;
    layer_comm["tp"] = std::max(0.0, layer_comm["tp"] - gemm_s);
  }
  double layer_comm_s = 0;
  for (const auto& [g, s] : layer_comm) layer_comm_s += s;
  const double layer_s = w.layer.fwd_s + recompute_s + w.layer.bwd_s + comm_passes * layer_comm_s;
  // Each TP rank sends its 1/tp of the boundary activations (Megatron's scatter/gather: with SP that is
  // all it holds; without, the receiver all-gathers over the node's links, charged with the transfer).
  const double p2p_bytes = static_cast<double>(l.micro_batch * (l.seq_len / l.cp) * m.hidden_size) * 2.0 / l.tp;
  const double p2p_s =
      l.pp > 1 ? comm(ccl::Collective::kSendRecv, p2p_bytes, l.pp, pp_stride, "pp send/recv") : 0.0;

  // --- stages: time per micro-batch (compute and exposed communication)
  double worst = 0;
  size_t worst_stage = 0;
  std::vector<double> stage_s(stages.size());
  const double layer_fwd_s = w.layer.fwd_s + layer_comm_s;
  for (size_t s = 0; s < stages.size(); ++s) {
    double t = static_cast<double>(stages[s]) * layer_s;
    double f = static_cast<double>(stages[s]) * layer_fwd_s;
    if (s == 0) t += w.embed.fwd_s + w.embed.bwd_s, f += w.embed.fwd_s;
    if (s + 1 == stages.size()) t += w.head.fwd_s + w.head.bwd_s + 2 * head_comm, f += w.head.fwd_s + head_comm;
    r.stage_fwd_s.push_back(f);
    r.stage_bwd_s.push_back(t - f);
    stage_s[s] = t;
    if (t > worst) worst = t, worst_stage = s;
  }
  const double v = l.virtual_stages;
  const double p2p_per_mb = l.pp > 1 ? 2.0 * v * p2p_s : 0.0;
  r.p2p_s = p2p_s;
  const double Ls = static_cast<double>(stages[worst_stage]);
  const double mb = static_cast<double>(m_batches);
  // Split the busiest stage's time into compute and exposed communication per group.
  double compute_per_mb = Ls * (w.layer.fwd_s + recompute_s + w.layer.bwd_s);
  if (worst_stage == 0) compute_per_mb += w.embed.fwd_s + w.embed.bwd_s;
  if (worst_stage + 1 == stages.size()) compute_per_mb += w.head.fwd_s + w.head.bwd_s;
  r.breakdown["compute"] = mb * compute_per_mb;
  for (const auto& [g, s] : layer_comm) r.breakdown[g + " comm"] += mb * Ls * comm_passes * s;
  if (worst_stage + 1 == stages.size() && head_comm > 0) r.breakdown["tp comm"] += mb * 2 * head_comm;
  r.breakdown["pp send/recv"] = mb * p2p_per_mb;
  r.breakdown["pipeline bubble"] = (l.pp - 1) / v * (worst + p2p_per_mb);

  // --- data parallelism: gradients of this chip's parameters
  int64_t params_first = stages.front() * w.layer.params + w.embed.params;
  int64_t params_last = stages.back() * w.layer.params + w.head.params;
  if (l.pp == 1) params_first = params_last = params_first + w.head.params;
  const int64_t params_chip = std::max(params_first, params_last);
  const int64_t expert_params = static_cast<int64_t>(stages.front()) * w.expert_params_per_layer;
  const int64_t dense_params = params_chip - expert_params;
  const int dp_group = l.dp * l.cp;
  const int expert_dp = static_cast<int>(int64_t{l.dp} * l.cp * l.tp / l.ep);
  auto dp_time = [&](int64_t params, int group, int64_t stride, const std::string& label) {
    const double grad_bytes = static_cast<double>(l.grad_reduce_bytes) * static_cast<double>(params);
    if (l.zero == 0) return comm(ccl::Collective::kAllReduce, grad_bytes, group, stride, label + " all-reduce");
    return comm(ccl::Collective::kReduceScatter, grad_bytes, group, stride, label + " reduce-scatter") +
           comm(ccl::Collective::kAllGather, 2.0 * static_cast<double>(params), group, stride, label + " all-gather");
  };
  double dp_s = 0;
  if (l.pp_inside_dp && l.cp > 1) {  // two steps: over CP (stride TP), then the 1/CP shards over DP
    dp_s = dp_time(dense_params, l.cp, l.tp, "cp grads") + dp_time(dense_params / l.cp, l.dp, dp_stride, "dp grads");
  } else {
    dp_s = dp_time(dense_params, dp_group, l.pp_inside_dp ? dp_stride : l.tp, "dp grads");
  }
  if (expert_params > 0)
    dp_s += l.pp_inside_dp ? dp_time(expert_params, l.dp, dp_stride, "expert-dp grads")
                           : dp_time(expert_params, expert_dp, l.ep, "expert-dp grads");
  const double overlap_window = l.overlap_grad_reduce ? Ls * w.layer.bwd_s : 0.0;
  r.breakdown["dp comm"] = std::max(0.0, dp_s - overlap_window);
  if (l.zero == 3) {  // parameters all-gathered per layer in forward and backward, prefetched under compute
    const double ag = l.pp_inside_dp && l.cp > 1
                          ? comm(ccl::Collective::kAllGather, 2.0 * static_cast<double>(w.layer.params), l.dp, dp_stride,
                                 "zero-3 all-gather")
                          : comm(ccl::Collective::kAllGather, 2.0 * static_cast<double>(w.layer.params), dp_group,
                                 l.pp_inside_dp ? dp_stride : l.tp, "zero-3 all-gather");
    r.breakdown["dp comm"] += mb * Ls * (std::max(0.0, ag - w.layer.fwd_s) + std::max(0.0, ag - w.layer.bwd_s));
  }

  // --- optimizer: Adam over this chip's share, a memory-bound kernel timed on the chip (Workload)
  const double opt_params = static_cast<double>(params_chip) / (l.zero >= 1 ? dp_group : 1);
  r.breakdown["optimizer"] = w.optimizer_s_per_param * opt_params;
  r.iteration_s = 0;
  for (const auto& [k, s] : r.breakdown) r.iteration_s += s;

  // --- throughput and FLOPs
  const double tokens = static_cast<double>(l.global_batch * l.seq_len);
  r.tokens_per_s = tokens / r.iteration_s;
  r.model_flops = model_flops_per_token(m, l.seq_len, false) * tokens;
  const double passes = 3.0 + share;
  r.hardware_flops = (w.layer.flops_fwd * passes * static_cast<double>(m.num_layers) + w.head.flops_fwd * 3.0) *
                     static_cast<double>(int64_t{l.dp} * l.cp * l.tp) * mb;
  r.tflops_per_chip = r.model_flops / r.iteration_s / static_cast<double>(chips) / 1e12;
  const double peak = chip.matrix_flops_per_s(DType::kBF16);
  r.mfu = r.tflops_per_chip * 1e12 / peak;
  r.hfu = r.hardware_flops / r.iteration_s / static_cast<double>(chips) / peak;

  WeightShares ws;
  ws.layer_bytes = w.layer.weight_bytes;
  ws.embed_bytes = w.embed.weight_bytes;
  ws.head_bytes = w.head.weight_bytes;
  ws.expert_params_per_layer = w.expert_params_per_layer;
  r.memory = training_memory(m, chip, l, ws);
  r.notes.push_back("memory reserve: 2 GiB per chip for the runtime context, communication buffers and fragmentation "
                    "(assumed)");
  r.notes.push_back("backward of memory-bound kernels: twice the forward's time (assumed)");
  if (w.balanced_routing) r.notes.push_back("MoE routing balanced across experts (timing-only)");
  r.sim_wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  return r;
}

}  // namespace ppu::cluster

namespace ppu::cluster {

TrainingBudget training_budget(const TrainingResult& r, const ClusterSpec& c, double tokens) {
  TrainingBudget b;
  if (tokens <= 0) return b;
  b.iterations = std::ceil(tokens / static_cast<double>(r.layout.global_batch * r.layout.seq_len));
  const double seconds = b.iterations * r.iteration_s;
  b.days = seconds / 86400;
  const double chips = static_cast<double>(r.layout.chips());
  b.chip_hours = chips * seconds / 3600;
  b.power_w = (chips * c.node.chip.power.value + chips / c.chips_per_node() * c.node_power.value) * c.pue.value;
  b.energy_mwh = b.power_w * seconds / 3.6e9;
  return b;
}

void write_training_trace(const TrainingResult& r, TraceWriter& w) {
  const int p = static_cast<int>(r.stage_fwd_s.size());
  const int64_t m = r.micro_batches;
  const int pid = 1;
  w.name_process(pid, fmt::format("training iteration: {} ({} micro-batches)", r.layout.describe(), m));
  for (int s = 0; s < p; ++s) w.name_thread(pid, s, fmt::format("pipeline stage {}", s));
  w.name_thread(pid, p, "data parallel + optimizer");
  // 1F1B: stage s runs min(p - s - 1, m) warm-up forwards, then alternates one forward and one
  // backward, then drains the remaining backwards.
  std::vector<std::vector<double>> fwd_end(static_cast<size_t>(p), std::vector<double>(static_cast<size_t>(m), 0)),
      bwd_end = fwd_end;
  std::vector<std::vector<std::pair<bool, int64_t>>> order(static_cast<size_t>(p));
  for (int s = 0; s < p; ++s) {
    const int64_t warm = std::min<int64_t>(p - s - 1, m);
    int64_t f = 0, b = 0;
    for (; f < warm; ++f) order[static_cast<size_t>(s)].push_back({true, f});
    while (b < m) {
      if (f < m) order[static_cast<size_t>(s)].push_back({true, f++});
      order[static_cast<size_t>(s)].push_back({false, b++});
    }
  }
  // Relax until every op has its start (dependencies only point to earlier micro-batches or the
  // neighbouring stages, so sweeping stages in both directions converges).
  std::vector<size_t> pos(static_cast<size_t>(p), 0);
  std::vector<double> clock(static_cast<size_t>(p), 0);
  const double xfer = p > 1 ? r.p2p_s : 0.0;
  bool progress = true;
  while (progress) {
    progress = false;
    for (int s = 0; s < p; ++s) {
      auto& ops = order[static_cast<size_t>(s)];
      while (pos[static_cast<size_t>(s)] < ops.size()) {
        const auto [is_fwd, i] = ops[pos[static_cast<size_t>(s)]];
        double ready = clock[static_cast<size_t>(s)];
        if (is_fwd && s > 0) {
          const double dep = fwd_end[static_cast<size_t>(s - 1)][static_cast<size_t>(i)];
          if (dep == 0) break;
          ready = std::max(ready, dep + xfer);
        }
        if (!is_fwd) {
          const double dep = s + 1 < p ? bwd_end[static_cast<size_t>(s + 1)][static_cast<size_t>(i)]
                                       : fwd_end[static_cast<size_t>(s)][static_cast<size_t>(i)];
          if (dep == 0) break;
          ready = std::max(ready, dep + (s + 1 < p ? xfer : 0.0));
        }
        const double dur = is_fwd ? r.stage_fwd_s[static_cast<size_t>(s)] : r.stage_bwd_s[static_cast<size_t>(s)];
        w.slice(pid, s, fmt::format("{} {}", is_fwd ? "F" : "B", i), ready, dur, {{"micro_batch", i}});
        (is_fwd ? fwd_end : bwd_end)[static_cast<size_t>(s)][static_cast<size_t>(i)] = ready + dur;
        clock[static_cast<size_t>(s)] = ready + dur;
        ++pos[static_cast<size_t>(s)];
        progress = true;
      }
    }
  }
  double end = *std::max_element(clock.begin(), clock.end());
  for (const char* k : {"dp comm", "optimizer"}) {
    const auto it = r.breakdown.find(k);
    if (it == r.breakdown.end() || it->second <= 0) continue;
    w.slice(pid, p, k, end, it->second);
    end += it->second;
  }
}

}  // namespace ppu::cluster
