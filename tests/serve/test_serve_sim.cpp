// serve/ServeSim: the event loop against a hand-run reference (the same scheduler and step cost
// driven step by step), KV sizing, rejections, determinism, percentiles, SLOs and the rate search.
#include <gtest/gtest.h>

#include <cmath>
#include <optional>

#include "TestUtil.hpp"
#include "arch/NodeSpec.hpp"
#include "arch/Presets.hpp"
#include "serve/ServeSim.hpp"

using namespace ppu;
using namespace ppu::serve;

namespace {

ServeSimConfig small_config() {
  ServeSimConfig c;
  c.scheduler.max_num_seqs = 8;
  c.scheduler.max_batched_tokens = 256;
  c.max_model_len = 1024;
  return c;
}

// One request of `prompt` tokens and `decodes` more, run by hand on `cost`: the prefill step's time
// (its TTFT) and the end of its last decode step.
std::pair<double, double> one_request_by_hand(StepCost& cost, int64_t prompt, int64_t decodes) {
  const auto step = [&](int64_t start, int64_t count) {
    StepPlan p;
    p.items = {{0, start, count, true}};
    p.tokens = count;
    return cost.step_s(p);
  };
  const double ttft = step(0, prompt);
  double t = ttft;
  for (int64_t i = 0; i < decodes; ++i) t += step(prompt + i, 1);
  return {ttft, t};
}

}  // namespace

TEST(ServeSim, OneRequestMatchesItsStepsRunByHand) {
  const ServeSimConfig c = small_config();
  ServeSim sim(load_chip("h100"), load_model_config("tiny"), c);
  const ServeReport r = sim.run({{0.0, 100, 5}});
  ASSERT_EQ(r.completed, 1);
  // Reference: the prefill step, then four decode steps at contexts 100 .. 103.
  StepCost cost(load_chip("h100"), load_model_config("tiny"), {}, {256, 8, 1024});
  const auto [ttft, t] = one_request_by_hand(cost, 100, 4);
  EXPECT_DOUBLE_EQ(r.ttft.p50, ttft);
  EXPECT_DOUBLE_EQ(r.e2e.p50, t);
  EXPECT_NEAR(r.tpot.p50, (t - ttft) / 4, 1e-15);
  EXPECT_EQ(r.itl.count, 4);
  EXPECT_EQ(r.steps, 5);
  EXPECT_EQ(r.records[0].output_tokens, 5);
}

TEST(ServeSim, RequestsFarApartDoNotInteractAndTheClockJumpsToArrivals) {
  ServeSim sim(load_chip("h100"), load_model_config("tiny"), small_config());
  const ServeReport one = sim.run({{0.0, 50, 4}});
  const ServeReport two = sim.run({{0.0, 50, 4}, {100.0, 50, 4}});
  ASSERT_EQ(two.completed, 2);
  // Equal up to the rounding of times near 100 s.
  EXPECT_NEAR(two.records[1].first_token_s - two.records[1].arrival_s, one.ttft.p50, 1e-12);
  EXPECT_NEAR(two.records[1].finish_s, 100.0 + one.e2e.p50, 1e-12);
  EXPECT_NEAR(two.duration_s, 100.0 + one.e2e.p50, 1e-12);
}

TEST(ServeSim, KvCacheIsTheFreeMemoryShareInBlocks) {
  ServeSimConfig c = small_config();
  c.kv_memory_fraction = 0.5;
  ServeSim sim(load_chip("h100"), load_model_config("tiny"), c);
  const ServeReport r = sim.run({{0.0, 10, 2}});
  StepCost cost(load_chip("h100"), load_model_config("tiny"), {}, {256, 8, 1024});
  const double free = load_chip("h100").hbm_bytes() - static_cast<double>(cost.weight_bytes()) -
                      static_cast<double>(cost.activation_bytes(256));
  EXPECT_EQ(r.kv_blocks, static_cast<int64_t>(std::floor(0.5 * free / (16 * cost.kv_bytes_per_token()))));
  EXPECT_EQ(r.weight_bytes, static_cast<double>(cost.weight_bytes()));
}

TEST(ServeSim, RequestsThatCanNeverFitAreRejectedAndNamed) {
  ServeSim sim(load_chip("h100"), load_model_config("tiny"), small_config());
  const ServeReport r = sim.run({{0.0, 1000, 100}, {0.5, 10, 2}});
  EXPECT_EQ(r.rejected, 1);
  EXPECT_EQ(r.completed, 1);
  EXPECT_EQ(r.first_rejection, "request 0: 1000 prompt tokens + 100 max_tokens = 1100 exceeds the model's context of 1024 tokens");
  EXPECT_TRUE(r.records[0].rejected);
}

TEST(ServeSim, SameInputsGiveTheSameReport) {
  ServeSim a(load_chip("h100"), load_model_config("tiny"), small_config());
  ServeSim b(load_chip("h100"), load_model_config("tiny"), small_config());
  auto reqs = with_arrivals(fixed_lengths(200, 300, 20), {.rate = 50, .seed = 5});
  ServeReport ra = a.run(reqs), rb = b.run(reqs);
  ra.host_s = rb.host_s = 0;
  EXPECT_EQ(ra.to_json().dump(), rb.to_json().dump());
  EXPECT_GT(ra.mean_batch, 1.0);  // requests did overlap
}

TEST(ServeSim, SmallCacheForcesPreemptionsYetEveryRequestCompletes) {
  ServeSimConfig c = small_config();
  // `tiny` keeps 256 bytes per position, 4 KiB per block: 3e-6 of h100's 80 GB is about 58 blocks.
  c.kv_memory_fraction = 3e-6;
  ServeSim sim(load_chip("h100"), load_model_config("tiny"), c);
  ASSERT_LT(sim.kv_blocks(), 200);
  ASSERT_GT(sim.kv_blocks(), 30);
  const ServeReport r = sim.run(fixed_lengths(16, 200, 100));
  EXPECT_EQ(r.completed, 16);
  EXPECT_GT(r.preemptions, 0);
  EXPECT_LE(r.kv_peak_use, 1.0);
  for (const auto& rec : r.records) EXPECT_EQ(rec.output_tokens, 100);
}

TEST(ServeSim, PercentilesAreNearestRank) {
  std::vector<double> v{5, 1, 4, 2, 3, 6, 7, 8, 9, 10};
  const Percentiles p = percentiles(v);
  EXPECT_DOUBLE_EQ(p.mean, 5.5);
  EXPECT_DOUBLE_EQ(p.p50, 5);
  EXPECT_DOUBLE_EQ(p.p90, 9);
  EXPECT_DOUBLE_EQ(p.p99, 10);
  EXPECT_DOUBLE_EQ(p.max, 10);
  std::vector<double> none;
  EXPECT_EQ(percentiles(none).count, 0);
}

TEST(ServeSim, SloParsingAndItsErrors) {
  const Slo s = parse_slo("ttft=2s,tpot=100ms,attainment=0.95");
  EXPECT_DOUBLE_EQ(s.ttft_s, 2.0);
  EXPECT_DOUBLE_EQ(s.tpot_s, 0.1);
  EXPECT_DOUBLE_EQ(s.attainment, 0.95);
  EXPECT_DOUBLE_EQ(parse_slo("tpot=50ms").ttft_s, 0.0);
  using test::error_message;
  EXPECT_EQ(error_message([] { parse_slo("ttft=2"); }),
            "--slo 'ttft=2': '2' needs a unit, s or ms; e.g. ttft=2s,tpot=100ms (keys ttft, tpot, attainment)");
  EXPECT_EQ(error_message([] { parse_slo("latency=2s"); }),
            "--slo 'latency=2s': unknown key 'latency'; e.g. ttft=2s,tpot=100ms (keys ttft, tpot, attainment)");
  EXPECT_EQ(error_message([] { parse_slo("ttft=-1s"); }),
            "--slo 'ttft=-1s': '-1s' must be a positive time; e.g. ttft=2s,tpot=100ms (keys ttft, tpot, attainment)");
  EXPECT_EQ(error_message([] { parse_slo("attainment=0.9"); }),
            "--slo 'attainment=0.9': no bound given; e.g. ttft=2s,tpot=100ms (keys ttft, tpot, attainment)");
  EXPECT_EQ(error_message([] { parse_slo("attainment=2,ttft=1s"); }),
            "--slo 'attainment=2,ttft=1s': attainment '2' must be a fraction in (0, 1]; e.g. ttft=2s,tpot=100ms (keys "
            "ttft, tpot, attainment)");
}

TEST(ServeSim, MaxRateMeetsTheSloAndATighterSloLowersIt) {
  ServeSim sim(load_chip("h100"), load_model_config("tiny"), small_config());
  const auto lengths = fixed_lengths(100, 200, 16);
  // The unloaded TTFT of one request, and SLOs of 3x and 1.5x it.
  const double ttft1 = sim.run({{0.0, 200, 16}}).ttft.p50;
  ServeReport at;
  const Slo loose{.ttft_s = 3 * ttft1, .tpot_s = 0, .attainment = 0.9};
  const double rate = sim.max_rate(lengths, loose, 1, &at);
  ASSERT_GT(rate, 0.0);
  EXPECT_GE(at.slo_attainment, 0.9);
  const Slo tight{.ttft_s = 1.5 * ttft1, .tpot_s = 0, .attainment = 0.9};
  EXPECT_LT(sim.max_rate(lengths, tight, 1), rate);
  // Nothing meets a TTFT below one prefill.
  EXPECT_EQ(sim.max_rate(lengths, {.ttft_s = 0.5 * ttft1, .tpot_s = 0, .attainment = 0.9}, 1), 0.0);
  test::expect_error([&] { sim.max_rate(lengths, Slo{}, 1); }, {"the SLO bounds neither TTFT nor TPOT"});
}

// --- On a node (tiny-moe over h100-dgx chips).

namespace {

ParallelLayout dgx(int tp, int ep) {
  ParallelLayout l;
  l.node = load_node("h100-dgx");
  l.tp = tp;
  l.ep = ep;
  return l;
}

}  // namespace

TEST(ServeSim, NodeOneRequestMatchesItsStepsRunByHand) {
  const ServeSimConfig c = small_config();
  ServeSim sim(load_chip("a800"), load_model_config("tiny-moe"), c, dgx(2, 4));  // the node's chip wins
  const ServeReport r = sim.run({{0.0, 100, 5}});
  ASSERT_EQ(r.completed, 1);
  EXPECT_EQ(r.chip, "h100");
  StepCost cost(load_chip("h100"), load_model_config("tiny-moe"), {}, {256, 8, 1024}, dgx(2, 4));
  const auto [ttft, t] = one_request_by_hand(cost, 100, 4);
  EXPECT_DOUBLE_EQ(r.ttft.p50, ttft);
  EXPECT_DOUBLE_EQ(r.e2e.p50, t);
}

// Each chip caches its TP share of every token, and each of the ep / tp data-parallel groups caches
// its own tokens: more chips, more KV blocks.
TEST(ServeSim, NodeKvCacheGrowsWithTheChips) {
  ServeSimConfig c = small_config();
  c.kv_memory_fraction = 0.5;
  const ModelConfig cfg = load_model_config("tiny-moe");
  const auto blocks = [&](std::optional<ParallelLayout> l) {
    return (l ? ServeSim(load_chip("h100"), cfg, c, *l) : ServeSim(load_chip("h100"), cfg, c)).kv_blocks();
  };
  const int64_t one = blocks(std::nullopt), ep2 = blocks(dgx(1, 2)), ep4 = blocks(dgx(1, 4)), ep8 = blocks(dgx(1, 8));
  const int64_t tp2 = blocks(dgx(2, 1)), tp2ep4 = blocks(dgx(2, 4));
  EXPECT_LT(one, ep2);
  EXPECT_LT(ep2, ep4);
  EXPECT_LT(ep4, ep8);
  EXPECT_LT(one, tp2);
  EXPECT_LT(tp2, tp2ep4);
  // The formula: groups x floor(fraction x (HBM - one chip's weights and activations) / one chip's block).
  StepCost cost(load_chip("h100"), cfg, {}, {256, 8, 1024}, dgx(2, 4));
  const double free = load_chip("h100").hbm_bytes() - static_cast<double>(cost.weight_bytes()) -
                      static_cast<double>(cost.activation_bytes(256));
  EXPECT_EQ(tp2ep4, 2 * static_cast<int64_t>(std::floor(0.5 * free / (16 * cost.kv_bytes_per_token()))));
}

TEST(ServeSim, NodeReportNamesTheLayoutAndIsDeterministic) {
  ServeSim a(load_chip("h100"), load_model_config("tiny-moe"), small_config(), dgx(2, 4));
  ServeSim b(load_chip("h100"), load_model_config("tiny-moe"), small_config(), dgx(2, 4));
  auto reqs = with_arrivals(fixed_lengths(60, 300, 20), {.rate = 50, .seed = 5});
  ServeReport ra = a.run(reqs), rb = b.run(reqs);
  ra.host_s = rb.host_s = 0;
  EXPECT_EQ(ra.to_json().dump(), rb.to_json().dump());
  const auto j = ra.to_json();
  EXPECT_EQ(j["node"], "h100-dgx");
  EXPECT_EQ(j["tp"], 2);
  EXPECT_EQ(j["ep"], 4);
  EXPECT_EQ(j["chips"], 4);
  EXPECT_EQ(j["dp_groups"], 2);
  EXPECT_EQ(ra.completed, 60);
  // One chip's report has no node.
  ServeSim one(load_chip("h100"), load_model_config("tiny-moe"), small_config());
  EXPECT_TRUE(one.run({{0.0, 10, 2}}).to_json()["node"].is_null());
}
