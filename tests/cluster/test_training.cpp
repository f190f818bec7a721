// Training-step simulation: the workload taken from the model's forward (and its derived backward),
// the step composition (pipeline, data parallelism, optimizer) against hand-computed references on
// a fixed-cost network, memory accounting, the 1F1B schedule against the closed form, the planner,
// and one test per kind of bad layout.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cmath>
#include <map>

#include "arch/Error.hpp"
#include "cluster/Planner.hpp"
#include "kernels/Gemm.hpp"
#include "models/Qwen3.hpp"
#include "runtime/Device.hpp"

namespace ppu::cluster {
namespace {

// Every collective costs `seconds`, whatever it is: the step's arithmetic can then be checked exactly.
class FixedNetwork : public NetworkModel {
 public:
  explicit FixedNetwork(double seconds) : seconds_(seconds) {}
  CollectiveCost cost(const CollectiveRequest& r) override {
    ++calls;
    last = r;
    seen.push_back(r);
    return {seconds_, "fixed"};
  }
  std::string name() const override { return "fixed"; }
  int calls = 0;
  CollectiveRequest last;
  std::vector<CollectiveRequest> seen;

 private:
  double seconds_;
};

// A tiny preset at the tests' widths: hidden 256, 8 query and 4 key/value heads of 32, vocabulary
// 4096, untied LM head.
ModelConfig small_widths(const char* preset, int layers) {
  ModelConfig m = load_model_config(preset);
  m.num_layers = layers;
  m.hidden_size = 256;
  m.num_heads = 8;
  m.num_kv_heads = 4;
  m.head_dim = 32;
  m.vocab_size = 4096;
  m.tie_word_embeddings = false;
  return m;
}

ModelConfig small_dense(int layers = 8) {
  ModelConfig m = small_widths("tiny", layers);
  m.intermediate_size = 512;
  return m;
}

// 16 experts of width 512, top-2.
ModelConfig small_moe(int layers) {
  ModelConfig m = small_widths("tiny-moe", layers);
  m.num_experts = 16;
  m.moe_intermediate_size = 512;
  return m;
}

ClusterSpec small_cluster(int nodes = 4) {
  ClusterSpec c = load_cluster("h800-2k");
  c.nodes.value = nodes;
  c.tiers.front().nodes.value = nodes;
  c.tiers.resize(1);
  c.tiers.front().oversubscription.value = 1;
  return c;
}

Layout base_layout() {
  Layout l;
  l.tp = 2, l.pp = 2, l.dp = 8, l.micro_batch = 1, l.global_batch = 64, l.seq_len = 256;
  return l;
}

// The planner on the test's small clusters: 32 sequences of 256 tokens, 2 host threads.
PlanOptions small_plan_options() {
  PlanOptions p;
  p.global_batch = 32;
  p.seq_len = 256;
  p.threads = 2;
  return p;
}

double layer_gemm_flops(const ModelConfig& m, int tp, int64_t tokens) {
  const double h = m.hidden_size;
  return 2.0 * tokens * (h * m.q_width() * 2 + 2 * h * m.kv_width() + 3 * h * m.intermediate_size) / tp;
}

TEST(ClusterWorkload, ForwardKernelsComeFromTheModelAndBackwardDoublesTheGemms) {
  const ModelConfig m = small_dense();
  const ChipSpec chip = load_chip("h100");
  WorkloadOptions o;
  o.tp = 2;
  o.seq_len = 512;
  o.micro_batch = 2;
  const Workload w = extract_workload(m, chip, o);
  // The layer's forward FLOPs are its projections' GEMMs plus attention (causal, both products).
  const double gemm = layer_gemm_flops(m, 2, 1024);
  EXPECT_GT(w.layer.flops_fwd, gemm);
  EXPECT_LT(w.layer.flops_fwd, gemm * 1.5);
  // Backward of a GEMM is two GEMMs of the same size: between 1.5x and 3x the forward's time.
  for (const char* kind : {"attention gemm", "mlp gemm"}) {
    ASSERT_TRUE(w.layer.fwd_by_kind.count(kind)) << kind;
    const double ratio = w.layer.bwd_by_kind.at(kind) / w.layer.fwd_by_kind.at(kind);
    EXPECT_GT(ratio, 1.5) << kind;
    EXPECT_LT(ratio, 3.0) << kind;
  }
  // Attention's backward: the FlashAttention-2-style kernel (2.5x the FLOPs, recomputation inside).
  EXPECT_GT(w.layer.bwd_by_kind.at("attention"), 1.5 * w.layer.fwd_by_kind.at("attention"));
  // Tensor parallelism without SP: two all-reduces per layer of the [tokens, hidden] bf16 activations.
  ASSERT_EQ(w.layer.comms.size(), 2u);
  for (const auto& c : w.layer.comms) {
    EXPECT_EQ(c.collective, ccl::Collective::kAllReduce);
    EXPECT_EQ(c.group, "tp");
  }
  // The parameters this shard holds: q, k, v, o and the SwiGLU MLP split over 2, norms whole.
  const int64_t h = m.hidden_size;
  const int64_t expect = (h * m.q_width() * 2 + 2 * h * m.kv_width() + 3 * h * m.intermediate_size) / 2 + 2 * h +
                         (m.qk_norm ? 2 * m.head_dim : 0);
  EXPECT_EQ(w.layer.params, expect);
  EXPECT_EQ(w.head.params, (m.vocab_size / 2) * h + h);  // vocab-parallel LM head + final norm
  EXPECT_EQ(w.embed.params, m.vocab_size * h);
}

TEST(ClusterWorkload, SequenceExpertAndContextParallelCollectives) {
  const ChipSpec chip = load_chip("h100");
  WorkloadOptions o;
  o.tp = 2;
  o.sp = true;
  o.seq_len = 256;
  const Workload sp = extract_workload(small_dense(), chip, o);
  int gathers = 0, scatters = 0;
  for (const auto& c : sp.layer.comms) {
    gathers += c.collective == ccl::Collective::kAllGather;
    scatters += c.collective == ccl::Collective::kReduceScatter;
  }
  EXPECT_EQ(gathers, 2);
  EXPECT_EQ(scatters, 2);
  o.cp = 2;
  const Workload cp = extract_workload(small_dense(), chip, o);
  ASSERT_EQ(cp.layer.comms.back().group, "cp");
  // Keys and values of the whole sequence for this TP shard's kv heads, bf16.
  EXPECT_DOUBLE_EQ(cp.layer.comms.back().bytes, 2.0 * 256 * (4 / 2) * 32 * 2);
  WorkloadOptions e;
  e.tp = 1;
  e.ep = 4;
  e.seq_len = 64;
  e.micro_batch = 2;
  const Workload moe = extract_workload(load_model_config("tiny-moe"), chip, e);
  int a2a = 0;
  for (const auto& c : moe.layer.comms) a2a += c.collective == ccl::Collective::kAllToAllV && c.group == "ep";
  EXPECT_EQ(a2a, 2);  // dispatch and return
  EXPECT_GT(moe.expert_params_per_layer, 0);
}

TEST(ClusterWorkload, BadOptionsNameTheValue) {
  const ChipSpec chip = load_chip("h100");
  WorkloadOptions o;
  o.tp = 3;
  try {
    extract_workload(small_dense(), chip, o);
    FAIL();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("valid TP: 1, 2, 4"), std::string::npos) << e.what();
  }
  o.tp = 1;
  o.ep = 2;
  EXPECT_THROW(extract_workload(small_dense(), chip, o), UserError);  // dense model
  o.ep = 1;
  o.cp = 3;
  o.seq_len = 100;
  EXPECT_THROW(extract_workload(small_dense(), chip, o), UserError);
}

TEST(ClusterWorkload, CaptureModeOptionsAreTimingOnly) {
  const ModelConfig m = load_model_config("tiny");
  Device functional(load_chip("h100"));
  ForwardCapture cap;
  auto error_of = [&](Device& dev, Qwen3Options o) {
    try {
      Qwen3Model model(dev, m, Qwen3Weights::random(1), o);
    } catch (const UserError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  Qwen3Options o;
  o.capture = &cap;
  EXPECT_NE(error_of(functional, o).find("timing-only"), std::string::npos) << error_of(functional, o);
  Qwen3Options u;
  u.attention_impl = Qwen3Options::AttentionImpl::kUnfused;
  EXPECT_NE(error_of(functional, u).find("timing-only"), std::string::npos) << error_of(functional, u);
  Device timing(load_chip("h100"), ExecMode::kTimingOnly);
  Qwen3Options v;
  v.vocab_parallel = true;
  EXPECT_NE(error_of(timing, v).find("capture mode"), std::string::npos) << error_of(timing, v);
  // Capture mode needs no communicator for TP 2 and logs the collectives instead.
  Qwen3Options t;
  t.tp_size = 2;
  t.capture = &cap;
  t.max_context = 16;
  Qwen3Model model(timing, m, Qwen3Weights::random(1), t);
  model.forward(std::vector<int32_t>(16, 1));
  EXPECT_EQ(cap.collectives.size(), 2u * static_cast<size_t>(m.num_layers));  // attention and MLP all-reduce per layer
  EXPECT_FALSE(cap.launches.empty());
}

TEST(ClusterTraining, BreakdownMatchesTheScheduleArithmetic) {
  const ModelConfig m = small_dense();
  const ClusterSpec c = small_cluster();
  Layout l = base_layout();
  FixedNetwork net(1e-4);
  WorkloadCache cache;
  const TrainingResult r = simulate_training(m, c, l, net, cache, 32);
  const Workload& w = cache.get(m, c.node.chip, workload_options(l));
  double sum = 0;
  for (const auto& [k, v] : r.breakdown) sum += v;
  EXPECT_NEAR(sum, r.iteration_s, 1e-12);
  const double mb = 64.0 / 8;  // micro-batches per pipeline
  EXPECT_EQ(r.micro_batches, 8);
  // SP with TP 2: 4 TP collectives per layer, each 1e-4 s, forward and backward, 4 layers per stage.
  // The last stage (the busiest: the LM head) adds the head's all-gather, forward and backward.
  EXPECT_NEAR(r.breakdown.at("tp comm"), mb * 4 * 2 * 4 * 1e-4 + mb * 2 * 1e-4, 1e-12);
  // The busiest stage's compute: 4 layers plus the embedding or the head, whichever is larger.
  const double layers = 4 * (w.layer.fwd_s + w.layer.bwd_s);
  const double extra = std::max(w.embed.fwd_s + w.embed.bwd_s, w.head.fwd_s + w.head.bwd_s);
  EXPECT_NEAR(r.breakdown.at("compute"), mb * (layers + extra), 1e-9);
  // Bubble of 1F1B: (pp - 1) x one micro-batch's stage time (with its transfers).
  const double stage = std::max(r.stage_fwd_s[0] + r.stage_bwd_s[0], r.stage_fwd_s[1] + r.stage_bwd_s[1]);
  EXPECT_NEAR(r.breakdown.at("pipeline bubble"), 1.0 * (stage + 2 * 1e-4), 1e-9);
  EXPECT_NEAR(r.breakdown.at("pp send/recv"), mb * 2 * 1e-4, 1e-12);
  // Model FLOPs: PaLM's 6N + 12 L H Q T per token.
  EXPECT_NEAR(r.model_flops, model_flops_per_token(m, 256, false) * 64 * 256, 1);
  EXPECT_GT(r.tflops_per_chip, 0);
  EXPECT_NEAR(r.mfu, r.tflops_per_chip * 1e12 / c.node.chip.matrix_flops_per_s(DType::kBF16), 1e-12);
}

TEST(ClusterTraining, TokenBudgetInDaysChipHoursAndEnergy) {
  const ClusterSpec c = small_cluster();
  TrainingResult r;
  r.layout = base_layout();  // 32 chips, 64 x 256 tokens per iteration
  r.iteration_s = 2.0;
  const TrainingBudget b = training_budget(r, c, 64 * 256 * 1000.5);
  EXPECT_EQ(b.iterations, 1001);  // whole iterations
  EXPECT_NEAR(b.days, 1001 * 2.0 / 86400, 1e-12);
  EXPECT_NEAR(b.chip_hours, 32 * 1001 * 2.0 / 3600, 1e-9);
  const double watts = (32 * c.node.chip.power.value + 4 * c.node_power.value) * c.pue.value;
  EXPECT_NEAR(b.power_w, watts, 1e-6);
  EXPECT_NEAR(b.energy_mwh, watts * 1001 * 2.0 / 3.6e9, 1e-12);
  EXPECT_EQ(training_budget(r, c, 0).days, 0);
}

TEST(ClusterTraining, InterleavingShrinksTheBubbleAndDataParallelismKeepsComputePerChip) {
  const ModelConfig m = small_dense();
  const ClusterSpec c = small_cluster();
  FixedNetwork net(0);
  WorkloadCache cache;
  Layout l = base_layout();
  const TrainingResult plain = simulate_training(m, c, l, net, cache, 32);
  l.virtual_stages = 2;
  const TrainingResult inter = simulate_training(m, c, l, net, cache, 32);
  EXPECT_NEAR(inter.breakdown.at("pipeline bubble"), plain.breakdown.at("pipeline bubble") / 2, 1e-12);
  // Half the replicas with half the batch: the same work per chip.
  Layout half = base_layout();
  half.dp = 4;
  half.global_batch = 32;
  const TrainingResult r4 = simulate_training(m, c, half, net, cache, 16);
  EXPECT_NEAR(r4.breakdown.at("compute"), plain.breakdown.at("compute"), 1e-12);
}

TEST(ClusterTraining, TensorParallelOverlapHidesCommunicationUnderTheGemms) {
  const ModelConfig m = small_dense();
  const ClusterSpec c = small_cluster();
  WorkloadCache cache;
  Layout l = base_layout();
  const Workload& w = cache.get(m, c.node.chip, workload_options(l));
  double gemm = 0;
  for (const auto& [kind, t] : w.layer.fwd_by_kind)
    if (kind.find("gemm") != std::string::npos) gemm += t;
  // Four collectives per layer: a quarter of the GEMM time each hides entirely; twice the GEMM time
  // each leaves 4 x 2 - 1 GEMM times exposed per pass.
  FixedNetwork small(gemm / 4 / 4), large(2 * gemm);
  l.overlap_tp_comm = true;
  const TrainingResult hidden = simulate_training(m, c, l, small, cache, 32);
  const TrainingResult exposed = simulate_training(m, c, l, large, cache, 32);
  const double mb = 8, Ls = 4, passes = 2;
  EXPECT_NEAR(hidden.breakdown.at("tp comm"), mb * 2 * gemm / 16, 1e-12);  // only the head's all-gather is left
  EXPECT_NEAR(exposed.breakdown.at("tp comm"), mb * Ls * passes * (4 * 2 * gemm - gemm) + mb * 2 * 2 * gemm, 1e-9);
}

TEST(ClusterTraining, RankOrderPlacesPipelineNeighboursOrReplicasClose) {
  const ModelConfig m = small_dense();
  const ClusterSpec c = small_cluster();
  WorkloadCache cache;
  Layout l = base_layout();  // TP 2, PP 2, DP 8
  auto strides = [&](bool llama_order) {
    FixedNetwork net(1e-5);
    l.pp_inside_dp = llama_order;
    simulate_training(m, c, l, net, cache, 32);
    std::map<ccl::Collective, int64_t> by_kind;
    for (const auto& r : net.seen) by_kind[r.collective] = r.stride;
    return by_kind;
  };
  const auto megatron = strides(false), llama = strides(true);
  EXPECT_EQ(megatron.at(ccl::Collective::kSendRecv), 2 * 8);  // PP neighbours a whole DP x TP block apart
  EXPECT_EQ(megatron.at(ccl::Collective::kReduceScatter), 2);  // DP replicas next to each other (the last RS asked: gradients)
  EXPECT_EQ(llama.at(ccl::Collective::kSendRecv), 2);          // PP neighbours next to each other
  EXPECT_EQ(llama.at(ccl::Collective::kReduceScatter), 2 * 2); // DP replicas a whole PP x TP block apart
}

TEST(ClusterTraining, LeastRecomputationThatFits) {
  const ModelConfig m = small_dense();
  ChipSpec chip = load_chip("h100");
  Layout l = base_layout();
  l.global_batch = 512;  // 64 micro-batches: PP 2 in flight
  EXPECT_EQ(least_recomputation(m, chip, l).recompute, Recompute::kNone);
  // A chip with just enough memory for all but part of the activations.
  l.recompute = Recompute::kNone;
  const MemoryUse none = training_memory(m, chip, l);
  l.recompute = Recompute::kFull;
  l.recompute_layers = 2;
  const MemoryUse two = training_memory(m, chip, l);
  l.recompute_layers = 1;
  const MemoryUse one = training_memory(m, chip, l);
  EXPECT_LT(two.activations, one.activations);
  EXPECT_LT(one.activations, none.activations);
  chip.hbm_size.value = (one.total() + two.total()) / 2;  // two layers fit, one does not
  const Layout got = least_recomputation(m, chip, l);
  EXPECT_EQ(got.recompute, Recompute::kFull);
  EXPECT_EQ(got.recompute_layers, 2);
  // Recomputing 2 of 4 layers costs half the forward of the stage's layers again.
  const ClusterSpec c = small_cluster();
  FixedNetwork net(0);
  WorkloadCache cache;
  Layout a = base_layout(), b = base_layout();
  b.recompute = Recompute::kFull;
  b.recompute_layers = 2;
  const double t0 = simulate_training(m, c, a, net, cache, 32).breakdown.at("compute");
  const double t2 = simulate_training(m, c, b, net, cache, 32).breakdown.at("compute");
  const Workload& w = cache.get(m, c.node.chip, workload_options(a));
  EXPECT_NEAR(t2 - t0, 8 * 4 * 0.5 * w.layer.fwd_s, 1e-9);
  b.recompute = Recompute::kNone;
  EXPECT_THROW(check_layout(m, c, b, 32), UserError);  // layers without full recomputation
}

TEST(ClusterTraining, ScheduleTraceAgreesWithTheClosedForm) {
  const ModelConfig m = small_dense();
  const ClusterSpec c = small_cluster();
  FixedNetwork net(0);
  WorkloadCache cache;
  Layout l = base_layout();
  l.pp = 4;
  l.dp = 4;
  l.global_batch = 32;
  const TrainingResult r = simulate_training(m, c, l, net, cache, 32);
  TraceWriter w;
  write_training_trace(r, w);
  double end = 0;
  const nlohmann::json trace = w.to_json();
  int slices = 0;
  for (const auto& e : trace["traceEvents"]) {
    slices += e.value("ph", "") == "X";
    if (e.value("ph", "") == "X" && e.value("tid", -1) < 4) end = std::max(end, (e["ts"].get<double>() + e["dur"].get<double>()) * 1e-6);
  }
  // Uneven stages (embedding, head) make the event schedule at most the closed form, and close to it.
  const double closed = r.breakdown.at("compute") + r.breakdown.at("pipeline bubble") + r.breakdown.at("pp send/recv") +
                        r.breakdown.count("tp comm") * r.breakdown.at("tp comm");
  EXPECT_LE(end, closed * (1 + 1e-9));
  EXPECT_GT(end, closed * 0.9);
  EXPECT_EQ(slices, 4 * 2 * 8 + 1);  // F and B of 8 micro-batches on 4 stages, then the optimizer
}

// TP 2, PP 2 and full recomputation on a network where every collective costs 1e-4 s: each stage's
// track shows its micro-batches' exposed TP communication and recomputed forward nested in the
// forward and backward slices, the stage boundary has a track per direction with its transfers, the
// parts add up to what the step charges, and the schedule still ends within the iteration time.
TEST(ClusterTraining, ScheduleTraceShowsCommunicationTransfersAndRecomputation) {
  const ModelConfig m = small_dense();
  const ClusterSpec c = small_cluster();
  const double each = 1e-4;
  FixedNetwork net(each);
  WorkloadCache cache;
  Layout l = base_layout();  // TP 2 with SP, PP 2, DP 8: 8 micro-batches of 4 layers per stage
  l.recompute = Recompute::kFull;
  const TrainingResult r = simulate_training(m, c, l, net, cache, 32);
  const Workload& wl = cache.get(m, c.node.chip, workload_options(l));
  TraceWriter w;
  write_training_trace(r, w);
  std::map<int, std::string> tracks;
  std::map<int, std::map<std::string, double>> seconds;  // track -> slice name without its micro-batch -> total
  std::map<int, std::vector<std::pair<double, double>>> spans;
  double end = 0;
  const nlohmann::json trace = w.to_json();
  for (const auto& e : trace["traceEvents"]) {
    if (e.value("name", "") == "thread_name") tracks[e["tid"].get<int>()] = e["args"]["name"];
    if (e.value("ph", "") != "X") continue;
    std::string name = e["name"];
    if (e["args"].contains("micro_batch")) name = name.substr(0, name.find_last_not_of("0123456789 ") + 1);
    const double t0 = e["ts"].get<double>() * 1e-6, dur = e["dur"].get<double>() * 1e-6;
    seconds[e["tid"].get<int>()][name] += dur;
    spans[e["tid"].get<int>()].push_back({t0, t0 + dur});
    end = std::max(end, t0 + dur);
  }
  const double mb = 8, layers = 4, tp_per_layer = 4 * each;  // SP: 4 TP collectives per layer and pass
  for (int s = 0; s < 2; ++s) {
    EXPECT_EQ(tracks[s], fmt::format("pipeline stage {}", s));
    auto& got = seconds[s];
    EXPECT_NEAR(got["F"], mb * r.stage_fwd_s[static_cast<size_t>(s)], 1e-9) << s;
    EXPECT_NEAR(got["B"], mb * r.stage_bwd_s[static_cast<size_t>(s)], 1e-9) << s;
    // Forward, recomputation and backward each expose the layers' TP collectives; the last stage adds
    // the LM head's all-gather in forward and backward.
    EXPECT_NEAR(got["tp comm"], mb * (3 * layers * tp_per_layer + (s == 1 ? 2 * each : 0.0)), 1e-9) << s;
    EXPECT_NEAR(got["recompute"], mb * layers * (wl.layer.fwd_s + tp_per_layer), 1e-9) << s;
    // Slices on a stage's track nest (parts inside their forward or backward) or follow each other.
    auto& v = spans[s];
    std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.first != b.first ? a.first < b.first : a.second > b.second; });
    std::vector<double> open;
    for (const auto& [t0, t1] : v) {
      while (!open.empty() && open.back() <= t0 + 1e-12) open.pop_back();
      if (!open.empty()) {
        EXPECT_LE(t1, open.back() + 1e-12) << "stage " << s << " slice at " << t0;
      }
      open.push_back(t1);
    }
  }
  // The busiest stage's parts are the breakdown's.
  EXPECT_NEAR(seconds[1]["tp comm"], r.breakdown.at("tp comm"), 1e-9);
  // One transfer per micro-batch each way over the stage boundary.
  EXPECT_EQ(tracks[3], "pp send/recv stage 0 -> 1 (activations)");
  EXPECT_EQ(tracks[4], "pp send/recv stage 1 -> 0 (gradients)");
  EXPECT_NEAR(seconds[3]["pp send/recv F"], mb * each, 1e-12);
  EXPECT_NEAR(seconds[4]["pp send/recv B"], mb * each, 1e-12);
  EXPECT_NEAR(seconds[3]["pp send/recv F"] + seconds[4]["pp send/recv B"], r.breakdown.at("pp send/recv"), 1e-12);
  // The schedule (then the DP reduction and the optimizer) ends within the closed form's iteration.
  EXPECT_LE(end, r.iteration_s * (1 + 1e-9));
  EXPECT_GT(end, r.iteration_s * 0.9);
}

TEST(ClusterTraining, MemoryAccountingAndShortfall) {
  const ModelConfig m = small_dense();
  const ChipSpec chip = load_chip("h100");
  Layout l = base_layout();
  const MemoryUse none = training_memory(m, chip, l);
  l.recompute = Recompute::kFull;
  const MemoryUse full = training_memory(m, chip, l);
  EXPECT_LT(full.activations, none.activations);
  EXPECT_DOUBLE_EQ(full.weights, none.weights);
  l.zero = 0;
  const MemoryUse z0 = training_memory(m, chip, l);
  EXPECT_NEAR(z0.optimizer, full.optimizer * 8, 1e-6 * z0.optimizer);  // ZeRO-1 shards over DP 8
  // Weights: bf16 of the fullest stage's parameters; gradients fp32; Adam fp32 master + 2 moments.
  EXPECT_NEAR(z0.gradients, 2 * z0.weights, 1e-6);
  EXPECT_NEAR(z0.optimizer, 6 * z0.weights, 1e-6);
  // Context parallelism halves each chip's tokens but keeps the keys and values gathered from the other
  // CP rank: per layer 2 x (seq - seq/cp) x kv width / tp x 2 bytes, for 4 layers x 2 micro-batches in flight.
  Layout c1 = base_layout(), c2 = base_layout();
  c2.cp = 2;
  const double a1 = training_memory(m, chip, c1).activations, a2 = training_memory(m, chip, c2).activations;
  EXPECT_NEAR(a2 - a1 / 2, 4 * 2 * (2.0 * 128 * (m.kv_width() / 2) * 2), 1e-6 * a1);
  // A model far too large for the chip: reported, with its shortfall, not thrown.
  ModelConfig big = load_model_config("gpt-145.6b");
  Layout b;
  b.tp = 1, b.pp = 1, b.dp = 8, b.global_batch = 8, b.seq_len = 2048;
  const MemoryUse mem = training_memory(big, chip, b);
  EXPECT_FALSE(mem.fits());
  EXPECT_NEAR(mem.shortfall(), mem.total() - mem.capacity, 1);
  EXPECT_GT(mem.weights, 2 * 145e9);
}

TEST(ClusterTraining, ExpertStateIsShardedOverTheExpertDataParallelGroup) {
  // The groups: dense parameters over DP x CP; routed experts over the ranks holding the same experts,
  // TP x CP x DP / EP (each EP rank holds experts / EP whole experts); with EP 1 the dense group.
  Layout g;
  g.tp = 2, g.dp = 1024, g.ep = 128;
  EXPECT_EQ(dp_group_dense(g), 1024);
  EXPECT_EQ(dp_group_expert(g), 16);
  g.ep = 2;
  EXPECT_EQ(dp_group_expert(g), 1024);
  g.ep = 1;
  EXPECT_EQ(dp_group_expert(g), 1024);
  g.tp = 1, g.cp = 2, g.dp = 8, g.ep = 4;
  EXPECT_EQ(dp_group_dense(g), 16);
  EXPECT_EQ(dp_group_expert(g), 4);

  // Qwen3-235B-A22B at the planner's winning layout on h800-2k: TP 2, PP 1, DP 1024, EP 128, ZeRO-1.
  const ModelConfig m = load_model_config("qwen3-235b-a22b");
  const ChipSpec chip = load_chip("h800");
  Layout l;
  l.tp = 2, l.pp = 1, l.dp = 1024, l.ep = 128, l.global_batch = 1024, l.seq_len = 4096;
  l.recompute = Recompute::kFull, l.recompute_layers = 27;
  // By hand (hidden 4096, 64 x 128 query and 4 x 128 key/value widths, 128 experts of width 1536,
  // vocabulary 151936, 94 layers), one chip's parameters:
  //   per layer, dense: q and o 2 x 4096 x 8192 / 2, k and v 2 x 4096 x 512 / 2, the router 4096 x 128
  //   (whole on every rank), two norms 2 x 4096, q/k norms 2 x 128;
  //   per layer, experts: 128 / 128 = 1 expert of gate, up and down, 3 x 4096 x 1536;
  //   once: the embedding 151936 x 4096 (whole), the vocab-parallel LM head 151936 / 2 x 4096, the final norm 4096.
  const double dense_layer = 2.0 * 4096 * 8192 / 2 + 2.0 * 4096 * 512 / 2 + 4096.0 * 128 + 2 * 4096 + 2 * 128;
  const double expert_layer = 3.0 * 4096 * 1536;
  const double dense = 94 * dense_layer + 151936.0 * 4096 + 151936.0 / 2 * 4096 + 4096;  // 4,334,824,960
  const double expert = 94 * expert_layer;                                                 // 1,774,190,592
  EXPECT_EQ(weight_shares(m, chip, 2, 128).expert_params_per_layer, static_cast<int64_t>(expert_layer));
  const MemoryUse z1 = training_memory(m, chip, l);
  EXPECT_DOUBLE_EQ(z1.weights, 2 * (dense + expert));
  EXPECT_DOUBLE_EQ(z1.gradients, 4 * (dense + expert));
  // Adam's 12 bytes: dense parameters over the 1024 DP ranks, the expert over its 16 replicas (1.38 GB,
  // not the 0.072 GB of 12 bytes x all 6.11e9 parameters / 1024).
  EXPECT_DOUBLE_EQ(z1.optimizer, 12 * (dense / 1024 + expert / 16));
  EXPECT_NEAR(z1.optimizer, 1.3814e9, 1e5);
  l.zero = 2;
  EXPECT_DOUBLE_EQ(training_memory(m, chip, l).gradients, 4 * (dense / 1024 + expert / 16));
  l.zero = 3;
  const MemoryUse z3 = training_memory(m, chip, l);
  EXPECT_DOUBLE_EQ(z3.weights, 2 * (dense / 1024 + expert / 16));
  EXPECT_DOUBLE_EQ(z3.activations, z1.activations);
  // EP = TP: the expert-data-parallel group is all of DP, so every parameter shards over 1024 ranks
  // (64 experts per chip).
  l.zero = 1;
  l.ep = 2;
  EXPECT_DOUBLE_EQ(training_memory(m, chip, l).optimizer, 12 * (dense + 94 * 64 * expert_layer) / 1024);
}

TEST(ClusterTraining, HardwareFlopsAddTheRecomputedForwardCountedLikeModelFlops) {
  const ModelConfig m = small_dense();
  const ClusterSpec c = small_cluster();
  FixedNetwork net(1e-5);
  WorkloadCache cache;
  // By hand, per token: a layer's forward is 2 x (q, o 256 x 256 each; k, v 256 x 128 each; SwiGLU
  // 3 x 256 x 512) = 1,179,648 matmul FLOPs plus the attention square 4 x 256 x 256 = 262,144; the
  // LM head 2 x 256 x 4096; model FLOPs 3 x (8 layers + head).
  const double layer_fwd = 1179648.0 + 262144.0;
  EXPECT_DOUBLE_EQ(model_flops_per_token(m, 256, false), 3 * (8 * layer_fwd + 2.0 * 256 * 4096));
  const double tokens = 64.0 * 256;
  Layout l = base_layout();  // TP 2, PP 2 (4 layers per stage), DP 8
  const TrainingResult none = simulate_training(m, c, l, net, cache, 32);
  EXPECT_EQ(none.hardware_flops, none.model_flops);
  EXPECT_EQ(none.hfu, none.mfu);  // exactly: the same FLOPs divided the same way
  EXPECT_GT(none.mfu, 0);
  l.recompute = Recompute::kSelective;  // the attention core again in every layer
  const TrainingResult sel = simulate_training(m, c, l, net, cache, 32);
  EXPECT_DOUBLE_EQ(sel.hardware_flops - sel.model_flops, 8 * 262144.0 * tokens);
  EXPECT_GT(sel.hfu, sel.mfu);
  l.recompute = Recompute::kFull;  // every layer's forward again
  const TrainingResult full = simulate_training(m, c, l, net, cache, 32);
  EXPECT_DOUBLE_EQ(full.hardware_flops - full.model_flops, 8 * layer_fwd * tokens);
  EXPECT_GT(full.hfu, full.mfu);
  EXPECT_DOUBLE_EQ(full.hfu / full.mfu, full.hardware_flops / full.model_flops);
  l.recompute_layers = 1;  // 1 layer of each of the 2 stages
  const TrainingResult one = simulate_training(m, c, l, net, cache, 32);
  EXPECT_DOUBLE_EQ(one.hardware_flops - one.model_flops, 2 * layer_fwd * tokens);
  EXPECT_GT(one.hfu, one.mfu);
  EXPECT_DOUBLE_EQ(recomputed_flops_per_token(m, l), 2 * layer_fwd);
}

TEST(ClusterTraining, BadLayoutsNameWhatIsValid) {
  const ModelConfig m = small_dense();
  const ClusterSpec c = small_cluster();
  auto message = [&](Layout l, int64_t chips) {
    try {
      check_layout(m, c, l, chips);
    } catch (const UserError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  Layout l = base_layout();
  EXPECT_NE(message(l, 16).find("DP = 4"), std::string::npos) << message(l, 16);  // product != chips
  EXPECT_NE(message(l, 64).find("has 32"), std::string::npos) << message(l, 64);  // more than the cluster
  l = base_layout();
  l.tp = 3;
  l.dp = 4;
  EXPECT_NE(message(l, 24).find("valid TP: 1, 2, 4"), std::string::npos) << message(l, 24);
  l = base_layout();
  l.pp = 6;  // 8 layers: 2 per stage would need 12; the first and last may hold one fewer, not more
  l.dp = 2;
  l.global_batch = 64;
  EXPECT_NE(message(l, 24).find("valid PP: 1, 2, 3, 4, 5, 8"), std::string::npos) << message(l, 24);
  l = base_layout();
  l.global_batch = 60;
  EXPECT_NE(message(l, 32).find("multiple of DP x micro-batch"), std::string::npos) << message(l, 32);
  l = base_layout();
  l.ep = 2;
  EXPECT_NE(message(l, 32).find("dense"), std::string::npos) << message(l, 32);
  l = base_layout();
  l.virtual_stages = 3;
  EXPECT_NE(message(l, 32).find("virtual stages"), std::string::npos) << message(l, 32);
  l = base_layout();
  l.zero = 4;
  EXPECT_NE(message(l, 32).find("valid: 0, 1, 2, 3"), std::string::npos) << message(l, 32);
  // Llama 3's balance is allowed: 126 layers over 16 stages (first and last hold 7).
  ModelConfig llama = load_model_config("llama3-405b");
  Layout ll;
  ll.tp = 8, ll.pp = 16, ll.dp = 1, ll.global_batch = 16, ll.seq_len = 8192;
  ClusterSpec big = load_cluster("h100-24k");
  EXPECT_NO_THROW(check_layout(llama, big, ll, 128));
  {
    ModelConfig moe = load_model_config("tiny-moe");
    Layout e = base_layout();
    e.pp = 1;
    e.dp = 16;
    e.ep = 3;
    try {
      check_layout(moe, c, e, 32);
      ADD_FAILURE();
    } catch (const UserError& err) {
      EXPECT_NE(std::string(err.what()).find("valid EP: 1, 2, 4, 8"), std::string::npos) << err.what();
    }
  }
}

TEST(ClusterPlanner, RanksLayoutsThatFitAndExplainsTheWinner) {
  const ModelConfig m = small_dense();
  const ClusterSpec c = small_cluster(2);
  FixedNetwork net(2e-5);
  WorkloadCache cache;
  const Plan plan = plan_training(m, c, small_plan_options(), net, cache);
  ASSERT_FALSE(plan.ranked.empty());
  for (size_t i = 1; i < plan.ranked.size(); ++i) EXPECT_LE(plan.ranked[i - 1].iteration_s, plan.ranked[i].iteration_s);
  for (const auto& r : plan.ranked) {
    EXPECT_TRUE(r.memory.fits());
    EXPECT_EQ(r.layout.chips(), 16);
  }
  EXPECT_NE(plan.explanation.find("is fastest"), std::string::npos);
  EXPECT_NE(plan.explanation.find("runner-up"), std::string::npos);
  // Nothing fits: the closest layout and its shortfall instead of a ranking.
  ModelConfig huge = load_model_config("gpt-1008b");
  PlanOptions q;
  q.global_batch = 16;
  q.seq_len = 2048;
  q.chips = 8;
  const Plan none = plan_training(huge, c, q, net, cache);
  EXPECT_TRUE(none.ranked.empty());
  EXPECT_NE(none.explanation.find("short by"), std::string::npos) << none.explanation;
}

TEST(ClusterPlanner, NeverRanksALayoutOverTheChipsMemory) {
  // A MoE model whose experts are most of its parameters, on 16 chips with the HBM set in the test.
  const ModelConfig m = small_moe(4);
  ClusterSpec c = small_cluster(2);
  // TP 1, PP 1, DP 16, EP 16, ZeRO-1: one expert per chip and no other replica of it (expert-DP group
  // of 1), so its Adam state (12 B per parameter) stays whole. By hand, per chip: dense parameters
  // 4 layers x (q, o 2 x 256 x 256; k, v 2 x 256 x 128; router 256 x 16; norms 2 x 256; q/k norms
  // 2 x 32) + embedding and LM head 2 x 4096 x 256 + final norm 256, sharded over 16; experts 4 layers
  // x 3 x 256 x 512, whole.
  Layout x;
  x.tp = 1, x.pp = 1, x.dp = 16, x.ep = 16, x.global_batch = 32, x.seq_len = 256, x.zero = 1;
  x.recompute = Recompute::kFull;  // its least memory
  const double dense = 4 * (2.0 * 256 * 256 + 2.0 * 256 * 128 + 256 * 16 + 2 * 256 + 2 * 32) + 2.0 * 4096 * 256 + 256;
  const double expert = 4 * 3.0 * 256 * 512;
  const double optimizer = 12 * (dense / 16 + expert);
  const MemoryUse least = training_memory(m, c.node.chip, x);
  EXPECT_DOUBLE_EQ(least.optimizer, optimizer);
  // Between its memory and what it would be with the experts' state sharded over all 16 DP ranks: the
  // layout fits only if that state is (wrongly) counted so.
  const double wrong_saving = 12 * expert * (1 - 1.0 / 16);
  c.node.chip.hbm_size.value = least.total() - least.optimizer + optimizer - wrong_saving / 2;
  FixedNetwork net(2e-5);
  WorkloadCache cache;
  const Plan plan = plan_training(m, c, small_plan_options(), net, cache);
  ASSERT_FALSE(plan.ranked.empty()) << plan.explanation;
  EXPECT_GT(plan.rejected_memory, 0);
  for (const auto& r : plan.ranked) {
    const MemoryUse mem = training_memory(m, c.node.chip, r.layout);
    EXPECT_LE(r.memory.total(), c.node.chip.hbm_size.value) << r.layout.describe();
    EXPECT_DOUBLE_EQ(r.memory.total(), mem.total()) << r.layout.describe();
    const Layout& y = r.layout;
    EXPECT_FALSE(y.tp == 1 && y.pp == 1 && y.ep == 16 && y.zero == 1) << y.describe();
  }
}

}  // namespace
}  // namespace ppu::cluster
