// serve/StepCost against the model's own forward run directly: exact at grid points (decode steps
// whole, mixed steps by operation kind), the documented interpolation between them, memoisation.
#include <gtest/gtest.h>

#include <thread>

#include "TestUtil.hpp"
#include "arch/NodeSpec.hpp"
#include "arch/Presets.hpp"
#include "ccl/Communicator.hpp"
#include "models/Sampler.hpp"
#include "runtime/Device.hpp"
#include "serve/StepCost.hpp"

using namespace ppu;
using namespace ppu::serve;

namespace {

struct Split {
  double dense = 0, head = 0, attention = 0;
  double total() const { return dense + head + attention; }
};

// One forward_sampled of `shape` ((tokens, past) per request) on a plain timing-only device of the
// chip, split by operation kind - what StepCost must reproduce at grid points.
Split direct(const std::vector<std::pair<int64_t, int64_t>>& shape, bool graph, const char* model = "tiny") {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  Qwen3Options o;
  o.max_batch = static_cast<int64_t>(shape.size());
  for (const auto& [n, p] : shape) o.slot_capacity.push_back(n + p);
  o.max_context = *std::max_element(o.slot_capacity.begin(), o.slot_capacity.end());
  Qwen3Model m(dev, load_model_config(model), Qwen3Weights::random(0), o);
  std::vector<std::vector<int32_t>> seqs;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i].second > 0) m.assume_past(i, shape[i].second);
    seqs.emplace_back(static_cast<size_t>(shape[i].first), 0);
  }
  Sampler greedy(SamplerOptions{});
  {
    GraphScope g(dev, graph);
    m.forward_sampled(seqs, greedy);
  }
  Split s;
  for (const auto& [kind, t] : m.op_times()) {
    if (kind == "attention")
      s.attention += t;
    else if (kind == "logit rows" || kind == "lm head" || kind == "sampling")
      s.head += t;
    else
      s.dense += t;
  }
  return s;
}

StepPlan plan(std::vector<StepItem> items) {
  StepPlan p;
  for (const auto& it : items) p.tokens += it.count;
  p.items = std::move(items);
  return p;
}

StepCost make_cost() {
  return StepCost(load_chip("h100"), load_model_config("tiny"), {},
                  {.max_batched_tokens = 256, .max_num_seqs = 16, .max_context = 16384});
}

constexpr double kRel = 1e-12;  // same kernels, same engine: equal up to summation order

}  // namespace

TEST(StepCost, DecodeStepAtAGridPointIsTheWholeGraphLaunchedForward) {
  StepCost cost = make_cost();
  // 4 requests at contexts averaging 64 (a grid point in both n and c).
  const StepTime t = cost.step(plan({{1, 60, 1, true}, {2, 68, 1, true}, {3, 64, 1, true}, {4, 64, 1, true}}));
  const double want = direct(std::vector<std::pair<int64_t, int64_t>>(4, {1, 64}), true).total();
  EXPECT_NEAR(t.decode_step_s, want, want * kRel);
  EXPECT_EQ(t.dense_s + t.head_s + t.decode_attention_s + t.prefill_attention_s, 0.0);
  EXPECT_GT(want, 0.0);
}

// Probes run one and two layers and extend the difference to all of them: checked against the whole
// 28-layer Qwen3-0.6B run directly, decode step and a prefill step's parts.
TEST(StepCost, TwoLayerProbesExtendExactlyToTheWholeModel) {
  StepCost cost(load_chip("h100"), load_model_config("qwen3-0.6b"), {},
                {.max_batched_tokens = 256, .max_num_seqs = 8, .max_context = 4096});
  const double dec = cost.step_s(plan({{1, 256, 1, true}, {2, 256, 1, true}}));
  const double want_dec = direct({{1, 256}, {1, 256}}, true, "qwen3-0.6b").total();
  EXPECT_NEAR(dec, want_dec, 1e-9 * want_dec);
  const StepTime pre = cost.step(plan({{1, 0, 128, true}}));
  const Split want = direct({{128, 0}}, false, "qwen3-0.6b");
  EXPECT_NEAR(pre.dense_s, want.dense, 1e-9 * want.dense);
  const double want_head = direct({{1, 0}}, false, "qwen3-0.6b").head;  // head(S = 1) comes from its own probe
  EXPECT_NEAR(pre.head_s, want_head, 1e-9 * want_head);
  EXPECT_NEAR(pre.prefill_attention_s, want.attention, 1e-9 * want.attention);
}

TEST(StepCost, DecodeStepBetweenGridPointsIsBilinear) {
  StepCost cost = make_cost();
  // n = 3 between 2 and 4; mean context 48 between 32 and 64.
  const double got = cost.step_s(plan({{1, 40, 1, true}, {2, 50, 1, true}, {3, 54, 1, true}}));
  const auto at = [](int64_t n, int64_t c) {
    return direct(std::vector<std::pair<int64_t, int64_t>>(static_cast<size_t>(n), {1, c}), true).total();
  };
  const double want = 0.5 * (0.5 * at(2, 32) + 0.5 * at(2, 64)) + 0.5 * (0.5 * at(4, 32) + 0.5 * at(4, 64));
  EXPECT_NEAR(got, want, want * 1e-9);
}

TEST(StepCost, MixedStepIsDenseHeadAndAttentionPartsAtGridPoints) {
  StepCost cost = make_cost();
  // Two decodes at context 128 and a prefill chunk of 62 tokens after 64 cached: T = 64, S = 3.
  const StepTime t = cost.step(plan({{1, 128, 1, true}, {2, 128, 1, true}, {3, 64, 62, true}}));
  EXPECT_EQ(t.decode_step_s, 0.0);
  const double dense = direct({{64, 0}}, false).dense;
  const double head = direct({{1, 0}, {1, 0}, {1, 0}}, false).head;  // S = 3: between 2 and 4
  const double head2 = direct({{1, 0}, {1, 0}}, false).head, head4 = direct(std::vector<std::pair<int64_t, int64_t>>(4, {1, 0}), false).head;
  const double dec_attn = direct({{1, 128}, {1, 128}}, true).attention;
  // q = 62 between 32 and 64 at past 64 (a context grid point: chunks this short use the grid).
  const double pre = (2.0 / 32) * direct({{32, 64}}, false).attention + (30.0 / 32) * direct({{64, 64}}, false).attention;
  EXPECT_NEAR(t.dense_s, dense, dense * kRel);
  EXPECT_NEAR(t.head_s, 0.5 * (head2 + head4), head * 1e-9);
  EXPECT_NEAR(t.decode_attention_s, dec_attn, dec_attn * kRel);
  EXPECT_NEAR(t.prefill_attention_s, pre, pre * 1e-9);
}

TEST(StepCost, ProbesAreMemoisedAndTheCacheNumbersMatchTheModel) {
  StepCost cost = make_cost();
  const StepPlan p = plan({{1, 0, 100, true}, {2, 16, 1, true}});
  const double a = cost.step_s(p);
  const int64_t n = cost.probes();
  EXPECT_GT(n, 0);
  EXPECT_EQ(cost.step_s(p), a);
  EXPECT_EQ(cost.probes(), n);
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  Qwen3Options o;
  o.max_context = 16;
  Qwen3Model m(dev, load_model_config("tiny"), Qwen3Weights::random(0), o);
  EXPECT_EQ(cost.weight_bytes(), m.weight_bytes());
  EXPECT_DOUBLE_EQ(cost.kv_bytes_per_token(), static_cast<double>(m.kv_cache_bytes()) / 16.0);
  EXPECT_GT(cost.activation_bytes(256), cost.activation_bytes(16));
}

// Chunks of 512 tokens or more: linear in the cached positions from their probes after 0 and 2048,
// checked against direct probes of Qwen3-0.6B (a model that fills the chip with attention tiles, as
// served models do; `tiny`'s 4 heads do not) far beyond (6000) and between (1000); shorter chunks on
// the context grid.
TEST(StepCost, LongChunksAreLinearInThePast) {
  StepCost cost(load_chip("h100"), load_model_config("qwen3-0.6b"), {},
                {.max_batched_tokens = 1024, .max_num_seqs = 4, .max_context = 8192});
  for (const int64_t q : {512, 1024}) {
    for (const int64_t past : {1000, 6000}) {
      const double got = cost.step(plan({{1, past, q, true}})).prefill_attention_s;
      const double want = direct({{q, past}}, false, "qwen3-0.6b").attention;
      EXPECT_NEAR(got, want, 0.04 * want) << q << " tokens after " << past;
    }
  }
  const double a = direct({{512, 0}}, false, "qwen3-0.6b").attention;
  const double b = direct({{512, 2048}}, false, "qwen3-0.6b").attention;
  const double got = cost.step(plan({{1, 3000, 512, true}})).prefill_attention_s;
  EXPECT_NEAR(got, a + (b - a) * 3000.0 / 2048, 1e-9 * got);
  // A short chunk far out: exact at a context grid point.
  StepCost small = make_cost();
  const double short_chunk = small.step(plan({{1, 8192, 64, true}})).prefill_attention_s;
  const double want_short = direct({{64, 8192}}, false).attention;
  EXPECT_NEAR(short_chunk, want_short, 1e-9 * want_short);
}

TEST(StepCost, RejectsBadLimitsAndParallelLayouts) {
  EXPECT_EQ(test::error_message([] {
              StepCost(load_chip("h100"), load_model_config("tiny"), {}, {.max_batched_tokens = 0});
            }),
            "step cost: max_batched_tokens 0, max_num_seqs 256, max_context 32768; each must be at least 1");
  Qwen3Options tp;
  tp.tp_size = 2;
  test::expect_error([&] { StepCost(load_chip("h100"), load_model_config("tiny"), tp, {}); },
                     {"give the parallel layout as a ParallelLayout"});
  const auto layout = [](bool node, int t, int e) {
    ParallelLayout l;
    if (node) l.node = load_node("h100-dgx");
    l.tp = t;
    l.ep = e;
    return l;
  };
  const auto err = [&](const char* model, const ParallelLayout& l) {
    return test::error_message([&] { StepCost(load_chip("h100"), load_model_config(model), {}, {}, l); });
  };
  EXPECT_EQ(err("tiny", layout(false, 2, 1)),
            "--tp 2 --ep 1: give the node whose chips run the shards (--node; see ppu nodes)");
  EXPECT_EQ(err("tiny-moe", layout(true, 2, 3)),
            "--ep 3 must be a multiple of --tp 2 (attention runs in ep / tp groups of tp chips)");
  EXPECT_EQ(err("tiny", layout(true, 1, 2)),
            "--ep 2: model 'tiny' is dense; expert parallelism needs an MoE model (valid: --ep 1)");
  EXPECT_EQ(err("tiny-moe", layout(true, 1, 16)), "--tp 1 --ep 16: 16 chips asked for; node 'h100-dgx' has 8");
  EXPECT_EQ(err("tiny", layout(true, 0, 1)), "--tp 0 --ep 1: each degree must be at least 1");
  // The model's own split checks, before any rank starts: tiny-moe has 2 key/value heads.
  EXPECT_EQ(err("tiny-moe", layout(true, 4, 4)),
            "model 'tiny-moe': a TP degree of 4 does not divide the 2 key/value heads; valid TP: 1, 2");
}

// --- A split model on a node: StepCost against the split model's forward run directly, one host
// thread per rank as `ppu run --node --tp --ep` runs it, rank 0's times.

namespace {

struct RankZero {
  Split split;            // dense: every kind but attention, the head and the experts' kinds
  double expert = 0;      // "moe dispatch", "moe expert gemm", "mlp activation", "moe combine"
  double sim_time_s = 0;  // rank 0's ForwardResult::sim_time_s
  double total() const { return split.total() + expert; }
  int64_t weight_bytes = 0, kv_bytes = 0;
};

// Every rank of (tp, ep) on h100-dgx runs forward_sampled of `shape` (each DP group the same shape).
RankZero direct_split(const std::vector<std::pair<int64_t, int64_t>>& shape, bool graph, const ModelConfig& cfg, int tp,
                      int ep) {
  const NodeSpec node = load_node("h100-dgx");
  const int world = std::max(tp, ep);
  std::vector<std::unique_ptr<Device>> devs;
  std::vector<Device*> ranks;
  for (int r = 0; r < world; ++r) {
    devs.push_back(std::make_unique<Device>(node.chip, ExecMode::kTimingOnly));
    ranks.push_back(devs.back().get());
  }
  ccl::Communicator comm(node, ranks);
  std::vector<std::unique_ptr<ccl::Communicator>> groups;
  if (ep > 1 && tp > 1)
    for (int g = 0; g < ep / tp; ++g) {
      ccl::CommOptions co;
      for (int t = 0; t < tp; ++t) co.chips.push_back(g * tp + t);
      groups.push_back(std::make_unique<ccl::Communicator>(
          node, std::vector<Device*>(ranks.begin() + g * tp, ranks.begin() + (g + 1) * tp), co));
    }
  std::vector<RankZero> out(static_cast<size_t>(world));
  const auto run = [&](int r) {
    Qwen3Options o;
    o.max_batch = static_cast<int64_t>(shape.size());
    for (const auto& [n, p] : shape) o.slot_capacity.push_back(n + p);
    o.max_context = *std::max_element(o.slot_capacity.begin(), o.slot_capacity.end());
    o.tp_size = tp;
    o.tp_rank = r % tp;
    o.tp_comm = tp == 1 ? nullptr : ep > 1 ? groups[static_cast<size_t>(r / tp)].get() : &comm;
    o.ep_size = ep;
    o.ep_rank = ep > 1 ? r : 0;
    o.ep_comm = ep > 1 ? &comm : nullptr;
    Device& dev = *devs[static_cast<size_t>(r)];
    Qwen3Model m(dev, cfg, Qwen3Weights::random(0), o);
    std::vector<std::vector<int32_t>> seqs;
    for (size_t i = 0; i < shape.size(); ++i) {
      if (shape[i].second > 0) m.assume_past(i, shape[i].second);
      seqs.emplace_back(static_cast<size_t>(shape[i].first), 0);
    }
    Sampler greedy(SamplerOptions{});
    RankZero z;
    {
      GraphScope g(dev, graph);
      z.sim_time_s = m.forward_sampled(seqs, greedy).sim_time_s;
    }
    for (const auto& [kind, t] : m.op_times()) {
      if (kind == "attention")
        z.split.attention += t;
      else if (kind == "logit rows" || kind == "lm head" || kind == "sampling")
        z.split.head += t;
      else if (kind == "moe dispatch" || kind == "moe expert gemm" || kind == "mlp activation" || kind == "moe combine")
        z.expert += t;
      else
        z.split.dense += t;
    }
    z.weight_bytes = m.weight_bytes();
    z.kv_bytes = m.kv_cache_bytes();
    out[static_cast<size_t>(r)] = z;
  };
  std::vector<std::thread> threads;
  for (int r = 1; r < world; ++r) threads.emplace_back(run, r);
  run(0);
  for (auto& t : threads) t.join();
  return out[0];
}

ParallelLayout dgx(int tp, int ep) {
  ParallelLayout l;
  l.node = load_node("h100-dgx");
  l.tp = tp;
  l.ep = ep;
  return l;
}

StepCost node_cost(const ModelConfig& cfg, int tp, int ep) {
  return StepCost(load_chip("h100"), cfg, {}, {.max_batched_tokens = 256, .max_num_seqs = 16, .max_context = 4096},
                  dgx(tp, ep));
}

}  // namespace

// TP 2 x EP 4 of tiny-moe: two DP groups of two chips. 8 decoding requests put 4 on each group; the
// step is the split model's whole-graph forward of 4 requests on every group.
TEST(StepCost, NodeDecodeStepIsTheSplitModelsForwardOfEachGroupsShare) {
  const ModelConfig cfg = load_model_config("tiny-moe");
  StepCost cost = node_cost(cfg, 2, 4);
  std::vector<StepItem> items;
  for (uint64_t i = 0; i < 8; ++i) items.push_back({i, 64, 1, true});
  const StepTime t = cost.step(plan(items));
  const RankZero want = direct_split(std::vector<std::pair<int64_t, int64_t>>(4, {1, 64}), true, cfg, 2, 4);
  EXPECT_NEAR(t.decode_step_s, want.total(), want.total() * kRel);
  EXPECT_GT(want.expert, 0.0);
  // Every op of the forward is timed by kind, collectives included; rank 0's clock adds only the
  // graph's launch, outside every op (as on one chip).
  EXPECT_LE(want.total(), want.sim_time_s);
  EXPECT_LT(want.sim_time_s - want.total(), 0.05 * want.sim_time_s);
}

// Prefill chunks go whole to the least-loaded group, longest first: 64 tokens on one group, 32 on
// the other. The step is the busiest group's (64 tokens: its projections, norms, head, attention),
// and the experts' kinds that of the mean share, 48 tokens per group (between 32 and 64).
TEST(StepCost, NodeMixedStepIsTheBusiestGroupsPartsAndTheMeanSharesExperts) {
  const ModelConfig cfg = load_model_config("tiny-moe");
  StepCost cost = node_cost(cfg, 2, 4);
  const StepTime t = cost.step(plan({{1, 0, 32, true}, {2, 0, 64, true}}));
  const RankZero want = direct_split({{64, 0}}, false, cfg, 2, 4);
  const double e32 = direct_split({{32, 0}}, false, cfg, 2, 4).expert;
  const double dense = want.split.dense + 0.5 * (e32 + want.expert);
  EXPECT_NEAR(t.dense_s, dense, dense * 1e-9);
  const double head = direct_split({{1, 0}}, false, cfg, 2, 4).split.head;  // the busiest group's S = 1: its own probe
  EXPECT_NEAR(t.head_s, head, head * kRel);
  EXPECT_NEAR(t.prefill_attention_s, want.split.attention, want.split.attention * kRel);
  EXPECT_EQ(t.decode_attention_s, 0.0);
  // Without EP (TP 2 alone) there is one group: the step holds both chunks, T = 96 (between 64 and 128).
  StepCost tp_only = node_cost(cfg, 2, 1);
  const StepTime both = tp_only.step(plan({{1, 0, 32, true}, {2, 0, 64, true}}));
  const RankZero r64 = direct_split({{64, 0}}, false, cfg, 2, 1);
  const double d64 = r64.split.dense + r64.expert;
  const RankZero r128 = direct_split({{128, 0}}, false, cfg, 2, 1);
  const double d128 = r128.split.dense + r128.expert;
  EXPECT_NEAR(both.dense_s, 0.5 * (d64 + d128), 1e-9 * d128);
}

// Probes run one and two layers and extend the difference to all of them; with collectives too:
// checked against a 5-layer tiny-moe split TP 2 x EP 4, run whole.
TEST(StepCost, NodeTwoLayerProbesExtendExactlyToTheWholeSplitModel) {
  ModelConfig cfg = load_model_config("tiny-moe");
  cfg.num_layers = 5;
  StepCost cost = node_cost(cfg, 2, 4);
  std::vector<StepItem> items;
  for (uint64_t i = 0; i < 4; ++i) items.push_back({i, 128, 1, true});
  const double dec = cost.step_s(plan(items));
  const RankZero want_dec = direct_split({{1, 128}, {1, 128}}, true, cfg, 2, 4);
  EXPECT_NEAR(dec, want_dec.total(), 1e-9 * want_dec.total());
  // One chunk of 128 on one group, the other idle: the experts at the mean share, 64 tokens.
  const StepTime pre = cost.step(plan({{1, 0, 128, true}}));
  const RankZero want = direct_split({{128, 0}}, false, cfg, 2, 4);
  const double dense = want.split.dense + direct_split({{64, 0}}, false, cfg, 2, 4).expert;
  EXPECT_NEAR(pre.dense_s, dense, 1e-9 * dense);
  const double head = direct_split({{1, 0}}, false, cfg, 2, 4).split.head;  // head(S = 1): its own probe
  EXPECT_NEAR(pre.head_s, head, 1e-9 * head);
  EXPECT_NEAR(pre.prefill_attention_s, want.split.attention, 1e-9 * want.split.attention);
}

// Weights and the KV cache per token are rank 0's share: TP halves the key/value heads on a chip,
// EP spreads the experts.
TEST(StepCost, NodeMemoryNumbersAreOneChipsShare) {
  const ModelConfig cfg = load_model_config("tiny-moe");
  StepCost one(load_chip("h100"), cfg, {}, {.max_batched_tokens = 256, .max_num_seqs = 16, .max_context = 4096});
  StepCost split = node_cost(cfg, 2, 4);
  const RankZero want = direct_split({{1, 0}}, false, cfg, 2, 4);
  EXPECT_EQ(split.weight_bytes(), want.weight_bytes);
  EXPECT_LT(split.weight_bytes(), one.weight_bytes());
  EXPECT_DOUBLE_EQ(split.kv_bytes_per_token(), one.kv_bytes_per_token() / 2);
  EXPECT_EQ(split.chip().name, load_node("h100-dgx").chip.name);
  EXPECT_EQ(split.layout().dp_groups(), 2);
}
