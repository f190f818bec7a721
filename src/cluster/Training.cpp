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

namespace {

// Forward FLOPs per token of one transformer layer: 2 x the matmul parameters a token passes through
// (q, k, v, o; the MLP, or the router and the routed experts) and the attention square,
// 4 x seq x attention width (causal_half: halved).
struct LayerFlopsPerToken {
  double matmul = 0, attention = 0;
};
LayerFlopsPerToken layer_flops_fwd_per_token(const ModelConfig& m, int64_t seq_len, bool causal_half) {
  const double h = static_cast<double>(m.hidden_size);
  double per_layer = h * m.q_width() * 2.0 + 2.0 * h * m.kv_width();  // q, o; k, v
  if (m.is_moe())
    per_layer += static_cast<double>(m.num_experts_per_tok) * 3.0 * h * m.moe_intermediate_size + h * m.num_experts;
  else
    per_layer += (m.activation == Activation::kGelu ? 2.0 : 3.0) * h * m.intermediate_size;
  return {2.0 * per_layer, 4.0 * static_cast<double>(seq_len) * m.q_width() * (causal_half ? 0.5 : 1.0)};
}

}  // namespace

double model_flops_per_token(const ModelConfig& m, int64_t seq_len, bool causal_half) {
  const LayerFlopsPerToken f = layer_flops_fwd_per_token(m, seq_len, causal_half);
  const double fwd = m.num_layers * (f.matmul + f.attention) + 2.0 * static_cast<double>(m.hidden_size) * m.vocab_size;
  return 3.0 * fwd;
}

double recomputed_layers(const Layout& l, double stage_layers) {
  if (l.recompute != Recompute::kFull) return 0;
  return l.recompute_layers > 0 ? std::min<double>(l.recompute_layers, stage_layers) : stage_layers;
}

double recomputed_flops_per_token(const ModelConfig& m, const Layout& l) {
  const LayerFlopsPerToken f = layer_flops_fwd_per_token(m, l.seq_len, false);
  if (l.recompute == Recompute::kSelective) return static_cast<double>(m.num_layers) * f.attention;
  double layers = 0;
  for (int64_t s : stage_layers(m.num_layers, l.pp)) layers += recomputed_layers(l, static_cast<double>(s));
  return layers * (f.matmul + f.attention);
}

int dp_group_dense(const Layout& l) { return l.dp * l.cp; }

int dp_group_expert(const Layout& l) {
  return l.ep > 1 ? static_cast<int>(int64_t{l.tp} * l.cp * l.dp / l.ep) : dp_group_dense(l);
}

namespace {

// Parameters one chip holds, by the group they are reduced and sharded over: `dense` over
// dp_group_dense, `expert` (routed experts with EP > 1) over dp_group_expert.
struct ChipParams {
  int64_t dense = 0, expert = 0;
};

// Training state of `p` on one chip: bf16 weights, fp32 gradients, fp32 master weights + two Adam
// moments (12 bytes per parameter), each sharded by the ZeRO stage over its parameters' group.
MemoryUse state_memory(const Layout& l, const ChipParams& p) {
  MemoryUse mem;
  auto add = [&](int64_t params, int group) {
    const double n = static_cast<double>(params);
    mem.weights += 2.0 * n / (l.zero == 3 ? group : 1);
    mem.gradients += 4.0 * n / (l.zero >= 2 ? group : 1);
    mem.optimizer += 12.0 * n / (l.zero >= 1 ? group : 1);
  };
  add(p.dense, dp_group_dense(l));
  add(p.expert, dp_group_expert(l));
  return mem;
}

// The parameters one chip holds on the pipeline stage with the most training state (state_memory):
// the first (its layers and the embedding) or the last (its layers, the final norm and LM head); with
// PP 1 the one stage holds both.
ChipParams fullest_stage_params(const std::vector<int64_t>& stages, const Layout& l, const WeightShares& ws) {
  auto of = [&](int64_t layers, int64_t other_bytes) {
    ChipParams p;
    p.expert = l.ep > 1 ? layers * ws.expert_params_per_layer : 0;  // EP 1: split over TP and counted as dense
    p.dense = (layers * ws.layer_bytes + other_bytes) / 2 - p.expert;
    return p;
  };
  const int64_t both = ws.embed_bytes + ws.head_bytes;
  const ChipParams first = of(stages.front(), l.pp == 1 ? both : ws.embed_bytes);
  const ChipParams last = of(stages.back(), l.pp == 1 ? both : ws.head_bytes);
  return state_memory(l, last).total() > state_memory(l, first).total() ? last : first;
}

}  // namespace

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
  const double Ls = static_cast<double>(*std::max_element(stages.begin(), stages.end()));
  MemoryUse mem = state_memory(l, fullest_stage_params(stages, l, ws));
  mem.capacity = chip.hbm_size.value;
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
    r.collectives.push_back({label, kind, bytes, group, stride, cost.seconds, cost.how});
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
    layer_comm[lc.group] += comm(lc.collective, lc.bytes, size, stride, lc.kind);
  }
  double head_comm = 0;
  for (const LayerComm& lc : w.head.comms) {
    const auto [size, stride] = group_of(lc.group);
    head_comm += comm(lc.collective, lc.bytes, size, stride, lc.kind);
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
    TrainingResult::StageParts parts;
    const double layers = static_cast<double>(stages[s]);
    parts.recompute_s = layers * recompute_s;
    for (const auto& [g, each] : layer_comm) {
      parts.fwd_comm_s[g] = parts.bwd_comm_s[g] = layers * each;
      parts.recompute_comm_s[g] = layers * share * each;
    }
    if (s + 1 == stages.size() && head_comm > 0) parts.fwd_comm_s["tp"] += head_comm, parts.bwd_comm_s["tp"] += head_comm;
    r.stage_parts.push_back(std::move(parts));
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

  // --- data parallelism: gradients of this chip's parameters, dense ones over DP x CP, routed experts
  // over the expert-data-parallel group: the groups training_memory shards their state over.
  WeightShares ws;
  ws.layer_bytes = w.layer.weight_bytes;
  ws.embed_bytes = w.embed.weight_bytes;
  ws.head_bytes = w.head.weight_bytes;
  ws.expert_params_per_layer = w.expert_params_per_layer;
  const ChipParams held = fullest_stage_params(stages, l, ws);
  const int dp_group = dp_group_dense(l);
  auto dp_time = [&](int64_t params, int group, int64_t stride, const std::string& label) {
    const double grad_bytes = static_cast<double>(l.grad_reduce_bytes) * static_cast<double>(params);
    if (l.zero == 0) return comm(ccl::Collective::kAllReduce, grad_bytes, group, stride, label + " all-reduce");
    return comm(ccl::Collective::kReduceScatter, grad_bytes, group, stride, label + " reduce-scatter") +
           comm(ccl::Collective::kAllGather, 2.0 * static_cast<double>(params), group, stride, label + " all-gather");
  };
  // Over DP x CP: with Llama 3's order and CP > 1 in two steps, over CP (stride TP), then the 1/CP
  // shards over DP.
  auto over_dp = [&](int64_t n, const std::string& prefix) {
    if (l.pp_inside_dp && l.cp > 1)
      return dp_time(n, l.cp, l.tp, prefix + "cp grads") + dp_time(n / l.cp, l.dp, dp_stride, prefix + "dp grads");
    return dp_time(n, dp_group, l.pp_inside_dp ? dp_stride : l.tp, prefix + "dp grads");
  };
  double dp_s = over_dp(held.dense, "");
  // Experts: in Megatron's order the ranks holding the same experts are EP apart; in Llama 3's order
  // EP is TP (check_layout), so they are the dense group.
  if (held.expert > 0)
    dp_s += l.pp_inside_dp ? over_dp(held.expert, "expert-")
                           : dp_time(held.expert, dp_group_expert(l), l.ep, "expert-dp grads");
  const double overlap_window = l.overlap_grad_reduce ? Ls * w.layer.bwd_s : 0.0;
  r.breakdown["dp comm"] = std::max(0.0, dp_s - overlap_window);
  if (l.zero == 3) {  // parameters all-gathered per layer in forward and backward, prefetched under compute
    // Dense parameters over the DP group; experts over theirs (Megatron's order; Llama 3's: the same group).
    auto gather = [&](int64_t n, bool expert, const std::string& label) {
      const double bytes = 2.0 * static_cast<double>(n);
      if (expert && !l.pp_inside_dp) return comm(ccl::Collective::kAllGather, bytes, dp_group_expert(l), l.ep, label);
      return l.pp_inside_dp && l.cp > 1 ? comm(ccl::Collective::kAllGather, bytes, l.dp, dp_stride, label)
                                        : comm(ccl::Collective::kAllGather, bytes, dp_group,
                                               l.pp_inside_dp ? dp_stride : l.tp, label);
    };
    const int64_t layer_expert = l.ep > 1 ? w.expert_params_per_layer : 0;
    const double ag = gather(w.layer.params - layer_expert, false, "zero-3 all-gather") +
                      gather(layer_expert, true, "expert zero-3 all-gather");
    r.breakdown["dp comm"] += mb * Ls * (std::max(0.0, ag - w.layer.fwd_s) + std::max(0.0, ag - w.layer.bwd_s));
  }

  // --- optimizer: Adam over this chip's share, a memory-bound kernel timed on the chip (Workload)
  const double opt_params = static_cast<double>(held.dense) / (l.zero >= 1 ? dp_group : 1) +
                            static_cast<double>(held.expert) / (l.zero >= 1 ? dp_group_expert(l) : 1);
  r.breakdown["optimizer"] = w.optimizer_s_per_param * opt_params;
  r.iteration_s = 0;
  for (const auto& [k, s] : r.breakdown) r.iteration_s += s;

  // --- throughput and FLOPs
  const double tokens = static_cast<double>(l.global_batch * l.seq_len);
  r.tokens_per_s = tokens / r.iteration_s;
  r.model_flops = model_flops_per_token(m, l.seq_len, false) * tokens;
  r.hardware_flops = r.model_flops + recomputed_flops_per_token(m, l) * tokens;
  r.tflops_per_chip = r.model_flops / r.iteration_s / static_cast<double>(chips) / 1e12;
  // Both utilisations divide their FLOPs the same way, so HFU == MFU exactly without recomputation.
  const double peak = chip.matrix_flops_per_s(DType::kBF16);
  r.mfu = r.model_flops / r.iteration_s / static_cast<double>(chips) / peak;
  r.hfu = r.hardware_flops / r.iteration_s / static_cast<double>(chips) / peak;

  r.memory = training_memory(m, chip, l, ws);
  r.notes.push_back("memory reserve: 2 GiB per chip for the runtime context, communication buffers and fragmentation "
                    "(assumed)");
  r.notes.push_back("backward of every forward kernel: the backward kernels training launches for it, timed on its "
                    "shape (nn/OpBackward: norm, SwiGLU/GELU, RoPE, embedding scatter-add, router, MoE combine, "
                    "cross-entropy; residual adds and casts pass the gradient on; KV-cache writes have none)");
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
  // Stage boundary b (stages b and b + 1): activations forward on track p + 1 + 2b, gradients back on
  // the next one.
  const double xfer = p > 1 ? r.p2p_s : 0.0;
  if (xfer > 0)
    for (int b = 0; b + 1 < p; ++b) {
      w.name_thread(pid, p + 1 + 2 * b, fmt::format("pp send/recv stage {} -> {} (activations)", b, b + 1));
      w.name_thread(pid, p + 2 + 2 * b, fmt::format("pp send/recv stage {} -> {} (gradients)", b + 1, b));
    }
  // Non-empty slices only.
  auto slice = [&](int tid, const std::string& name, double start_s, double dur_s, nlohmann::json args) {
    if (dur_s > 0) w.slice(pid, tid, name, start_s, dur_s, std::move(args));
  };
  auto sum = [](const std::map<std::string, double>& parts) {
    double total = 0;
    for (const auto& [g, t] : parts) total += t;
    return total;
  };
  // Communication per group back to back, the last ending exactly at `end_s` (nested in the slice
  // that ends there).
  auto comm_at_end = [&](int tid, const std::map<std::string, double>& parts, double end_s, int64_t i) {
    double left = sum(parts);
    for (const auto& [g, t] : parts) {
      const double start_s = end_s - left;
      left -= t;
      slice(tid, g + " comm", start_s, (left > 0 ? end_s - left : end_s) - start_s, {{"micro_batch", i}});
    }
  };
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
          slice(p + 1 + 2 * (s - 1), fmt::format("pp send/recv F {}", i), dep, xfer, {{"micro_batch", i}});
        }
        if (!is_fwd) {
          const double dep = s + 1 < p ? bwd_end[static_cast<size_t>(s + 1)][static_cast<size_t>(i)]
                                       : fwd_end[static_cast<size_t>(s)][static_cast<size_t>(i)];
          if (dep == 0) break;
          ready = std::max(ready, dep + (s + 1 < p ? xfer : 0.0));
          if (s + 1 < p) slice(p + 2 + 2 * s, fmt::format("pp send/recv B {}", i), dep, xfer, {{"micro_batch", i}});
        }
        const size_t si = static_cast<size_t>(s);
        const double dur = is_fwd ? r.stage_fwd_s[si] : r.stage_bwd_s[si];
        w.slice(pid, s, fmt::format("{} {}", is_fwd ? "F" : "B", i), ready, dur, {{"micro_batch", i}});
        if (si < r.stage_parts.size()) {
          const TrainingResult::StageParts& parts = r.stage_parts[si];
          if (is_fwd) {
            comm_at_end(s, parts.fwd_comm_s, ready + dur, i);
          } else {
            const double recompute = parts.recompute_s + sum(parts.recompute_comm_s);
            slice(s, "recompute", ready, recompute, {{"micro_batch", i}});
            if (recompute > 0) comm_at_end(s, parts.recompute_comm_s, ready + recompute, i);
            comm_at_end(s, parts.bwd_comm_s, ready + dur, i);
          }
        }
        (is_fwd ? fwd_end : bwd_end)[si][static_cast<size_t>(i)] = ready + dur;
        clock[si] = ready + dur;
        ++pos[si];
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
