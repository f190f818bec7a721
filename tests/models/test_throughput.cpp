// KV slots of chosen capacities, assume_past (timing-only) and the offline throughput estimate
// (models/Throughput.hpp): numbers equal to the default layout, the documented formula, monotonic
// in what should raise or lower throughput, and every bad input an error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "Qwen3TestUtil.hpp"
#include "TestUtil.hpp"
#include "models/Qwen3.hpp"
#include "models/Throughput.hpp"

namespace ppu {
namespace {

using test::fixture;
using test::rel_rms;

// Prefill three prompts and decode two greedy steps; the last logits of every sequence.
std::vector<float> run_three(const Qwen3Options& opt) {
  const std::string dir = fixture("qwen3-tiny");
  const std::vector<std::vector<int32_t>> prompts = {{5, 17, 300, 42, 9, 77, 1}, {200, 3}, {11, 12, 13, 14}};
  Device dev(load_chip("zhenwu-810e"));
  Qwen3Model m(dev, load_model_config(dir), Qwen3Weights::from_checkpoint(dir), opt);
  return test::greedy_batch(m, prompts, 2);
}

TEST(Qwen3Slots, ChosenCapacitiesGiveTheSameNumbers) {
  Qwen3Options wide;
  wide.max_context = 16;
  wide.max_batch = 3;
  Qwen3Options tight = wide;
  tight.slot_capacity = {9, 4, 6};  // exactly what each sequence needs (prompt + 2 steps)
  // The same kernels on the same values; only the cache addresses differ.
  EXPECT_EQ(run_three(wide), run_three(tight));
}

TEST(Qwen3Slots, BadCapacitiesAndOverflowAreErrors) {
  const std::string dir = fixture("qwen3-tiny");
  Device dev(load_chip("h100"));
  Qwen3Options opt;
  opt.max_context = 8;
  opt.max_batch = 2;
  opt.slot_capacity = {8};
  test::expect_error([&] { Qwen3Model(dev, load_model_config(dir), Qwen3Weights::random(1), opt); },
                     {"slot_capacity has 1 entries", "max_batch = 2"});
  opt.slot_capacity = {8, 0};
  test::expect_error([&] { Qwen3Model(dev, load_model_config(dir), Qwen3Weights::random(1), opt); },
                     {"slot_capacity[1] = 0", "1 to the context of 8"});
  opt.slot_capacity = {9, 2};
  test::expect_error([&] { Qwen3Model(dev, load_model_config(dir), Qwen3Weights::random(1), opt); },
                     {"slot_capacity[0] = 9"});
  opt.slot_capacity = {8, 2};
  Qwen3Model m(dev, load_model_config(dir), Qwen3Weights::random(1), opt);
  EXPECT_NO_THROW(m.forward_batch({{1, 2, 3}, {4, 5}}));
  test::expect_error([&] { m.forward_batch({{1}, {2}}); }, {"1 tokens after 2", "slot's capacity"});
}

TEST(Qwen3Slots, AssumePastIsTimingOnlyAndCostsWhatTheContextCosts) {
  const std::string dir = fixture("qwen3-tiny");
  Device dev(load_chip("h100"));
  Qwen3Model functional(dev, load_model_config(dir), Qwen3Weights::random(1));
  test::expect_error([&] { functional.assume_past(0, 3); }, {"timing-only mode only"});

  Device timed(load_chip("h100"), ExecMode::kTimingOnly);
  Qwen3Options opt;
  opt.max_context = 32768;
  Qwen3Model m(timed, load_model_config("qwen3-0.6b"), Qwen3Weights::random(1), opt);
  test::expect_error([&] { m.assume_past(1, 3); }, {"assume_past(1, 3)", "a slot below 1"});
  test::expect_error([&] { m.assume_past(0, 40000); }, {"assume_past(0, 40000)", "(32768)"});
  m.assume_past(0, 16);
  const double short_ctx = m.forward({0}).sim_time_s;
  EXPECT_EQ(m.past_len(), 17);
  m.assume_past(0, 32000);
  const double long_ctx = m.forward({0}).sim_time_s;
  EXPECT_GT(long_ctx, 1.2 * short_ctx);  // the step now reads 32k positions of K and V per layer
}

TEST(Throughput, FollowsItsFormulaAndRespondsToBatchAndLengths) {
  const ChipSpec chip = load_chip("h100");
  const ModelConfig cfg = load_model_config("qwen3-0.6b");
  ThroughputOptions opt;
  opt.max_batch = 16;
  const ThroughputEstimate e = estimate_offline_throughput(chip, cfg, 64, 128, opt);
  EXPECT_EQ(e.batch, 16);
  EXPECT_EQ(e.batch_limit, "max_batch");
  EXPECT_EQ(e.prefill_batch, 1);
  EXPECT_NEAR(e.mean_context, 64 + 64, 1.0);
  EXPECT_NEAR(e.output_tokens_per_s, 16 / (e.decode_step_s + 16.0 / 128 * e.prefill_s_per_request),
              1e-9 * e.output_tokens_per_s);
  double sum = 0;
  for (const auto& [kind, s] : e.decode_op_s) sum += s;
  EXPECT_NEAR(sum, e.decode_step_s, 1e-6 * e.decode_step_s);
  EXPECT_GT(e.weight_bytes, 0.5e9);  // bf16 embeddings (tied) + fp8 layers of a 0.6B model: 0.75 GB
  // A larger batch amortises the weights: more tokens per second.
  opt.max_batch = 64;
  const ThroughputEstimate big = estimate_offline_throughput(chip, cfg, 64, 128, opt);
  EXPECT_GT(big.output_tokens_per_s, 1.5 * e.output_tokens_per_s);
  // Longer prompts per output token cost more prefill per token.
  const ThroughputEstimate longer = estimate_offline_throughput(chip, cfg, 1024, 128, opt);
  EXPECT_LT(longer.output_tokens_per_s, big.output_tokens_per_s);
}

TEST(Throughput, TheKvCacheLimitsTheBatch) {
  // 0.6B with bf16 KV on a 96 GB chip: 114688 bytes per token, 4096-token requests.
  ThroughputOptions opt;
  opt.matmul_dtype = DType::kBF16;
  opt.kv_dtype = DType::kBF16;
  opt.max_batch = 100000;
  const ChipSpec chip = load_chip("zhenwu-810e");
  const ThroughputEstimate e = estimate_offline_throughput(chip, load_model_config("qwen3-0.6b"), 2048, 2048, opt);
  EXPECT_EQ(e.batch_limit, "KV cache memory");
  EXPECT_EQ(e.batch, static_cast<int64_t>(std::floor(e.kv_budget_bytes / (4096 * e.kv_bytes_per_token))));
  EXPECT_NEAR(e.kv_budget_bytes, 0.9 * (chip.hbm_bytes() - e.weight_bytes - e.activation_bytes), 1.0);
}

TEST(Throughput, BadInputIsAnError) {
  const ChipSpec chip = load_chip("h100");
  const ModelConfig cfg = load_model_config("qwen3-0.6b");
  test::expect_error([&] { estimate_offline_throughput(chip, cfg, 0, 10); }, {"input length 0"});
  test::expect_error([&] { estimate_offline_throughput(chip, cfg, 10, 0); }, {"output length 0"});
  ThroughputOptions opt;
  opt.kv_memory_fraction = 0;
  test::expect_error([&] { estimate_offline_throughput(chip, cfg, 10, 10, opt); }, {"kv_memory_fraction 0"});
  opt = {};
  opt.max_batch = 0;
  test::expect_error([&] { estimate_offline_throughput(chip, cfg, 10, 10, opt); }, {"max_batch 0"});
  test::expect_error([&] { estimate_offline_throughput(chip, cfg, 41000, 10); }, {"exceeds max_position_embeddings"});
  test::expect_error([&] { estimate_offline_throughput(load_chip("a100-80g"), cfg, 10, 10); },
                     {"no fp8e4m3 matrix unit"});
  EXPECT_THROW(estimate_offline_throughput(chip, load_model_config("qwen3-235b-a22b"), 10, 10), DeviceOutOfMemory);
}

}  // namespace
}  // namespace ppu

namespace ppu {
namespace {

// forward_sampled (sampling on the device) gives the tokens the host sampler gives on the
// downloaded logits, with the same seed: greedy, top-k with temperature and top-p, and an option
// the device cannot do (top_k 0: falls back to the host). Timing-only runs time the kernels.
TEST(Qwen3Sampling, DeviceSamplingMatchesTheHostSampler) {
  const std::string dir = fixture("qwen3-tiny");
  const std::vector<std::vector<int32_t>> prompts = {{5, 17, 300, 42}, {200, 3, 9}};
  for (const SamplerOptions so : {SamplerOptions{0.0, 0, 1.0, 1}, SamplerOptions{0.8, 20, 0.9, 7},
                                  SamplerOptions{1.5, 0, 1.0, 3}}) {
    Qwen3Options opt;
    opt.max_context = 16;
    opt.max_batch = 2;
    Device d1(load_chip("h100")), d2(load_chip("h100"));
    Qwen3Model on_device(d1, load_model_config(dir), Qwen3Weights::from_checkpoint(dir), opt);
    Qwen3Model on_host(d2, load_model_config(dir), Qwen3Weights::from_checkpoint(dir), opt);
    Sampler s1(so), s2(so);
    std::vector<std::vector<int32_t>> a = prompts, b = prompts;
    for (int step = 0; step < 4; ++step) {
      const ForwardResult rd = on_device.forward_sampled(a, s1);
      const ForwardResult rh = on_host.forward_batch(b);
      ASSERT_EQ(rd.tokens.size(), 2u);
      EXPECT_TRUE(rd.logits.empty());
      const auto vocab = static_cast<size_t>(on_host.config().vocab_size);
      for (size_t r = 0; r < 2; ++r) {
        const int32_t host = s2.sample(std::span<const float>(rh.logits).subspan(r * vocab, vocab));
        EXPECT_EQ(rd.tokens[r], host) << "temperature " << so.temperature << " top_k " << so.top_k << " step " << step;
        a[r] = {rd.tokens[r]};
        b[r] = {host};
      }
    }
    EXPECT_GT(on_device.op_times().at("sampling"), 0.0);
  }
  Device timed(load_chip("h100"), ExecMode::kTimingOnly);
  Qwen3Model m(timed, load_model_config("qwen3-0.6b"), Qwen3Weights::random(1));
  Sampler greedy({});
  const ForwardResult r = m.forward_sampled({{1, 2, 3}}, greedy);
  EXPECT_TRUE(r.tokens.empty());
  EXPECT_GT(m.op_times().at("sampling"), 0.0);
}

}  // namespace
}  // namespace ppu
