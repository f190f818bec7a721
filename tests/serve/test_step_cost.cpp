// serve/StepCost against the model's own forward run directly: exact at grid points (decode steps
// whole, mixed steps by operation kind), the documented interpolation between them, memoisation.
#include <gtest/gtest.h>

#include "TestUtil.hpp"
#include "arch/Presets.hpp"
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
                     {"tensor or expert parallelism is not supported"});
}
