// Tests of train/Trainer: steps lower the loss of a small model on a repeating batch; losses are
// bit-identical across runs and across 1 and 2 host threads; micro-batching changes the result only
// within rounding; a non-finite gradient stops the run naming the step and the parameter, or is
// skipped and counted; bad configurations are refused naming the option.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <memory>
#include <thread>
#include <vector>

#include "TestUtil.hpp"
#include "TrainTestUtil.hpp"
#include "arch/NodeSpec.hpp"
#include "ccl/Communicator.hpp"
#include "train/Trainer.hpp"

namespace ppu::train {
namespace {

ModelConfig small() { return test::small_model(); }
using test::batch_tokens;

std::vector<double> run_losses(int threads, int64_t micro, int steps) {
  Device dev(load_chip("zhenwu-810e"), ExecMode::kFunctional, threads);
  Qwen3Options o;
  o.max_context = 16;
  Qwen3Model m(dev, small(), Qwen3Weights::random(11), o);
  TrainConfig c;
  c.steps = steps;
  c.batch = 4;
  c.micro_batch = micro;
  c.seq_len = 16;
  c.lr = 3e-3;
  c.min_lr = 3e-4;
  c.warmup_steps = 2;
  Trainer t(m, c);
  std::vector<double> losses;
  for (int s = 0; s < steps; ++s) {
    const StepResult r = t.step(batch_tokens(4, 16, s % 2));
    EXPECT_EQ(r.step, s + 1);
    EXPECT_GT(r.sim_s, 0.0);
    EXPECT_GT(t.mfu(r), 0.0);
    EXPECT_LT(t.mfu(r), 1.0);
    losses.push_back(r.loss);
  }
  return losses;
}

TEST(Trainer, LossFallsAndIsDeterministicAcrossThreadCounts) {
  const std::vector<double> a = run_losses(1, 2, 15), b = run_losses(2, 2, 15);
  EXPECT_EQ(a, b) << "bit-identical for 1 and 2 host threads";
  EXPECT_LT(a.back(), 0.8 * a.front()) << a.front() << " -> " << a.back();  // measured 6.24 -> 4.38
  const std::vector<double> whole = run_losses(2, 4, 3);
  for (size_t i = 0; i < whole.size(); ++i) EXPECT_NEAR(whole[i], a[i], 2e-3 * a[i]) << "step " << i + 1;
}

// Data parallelism over 2 emulated chips of a node: each rank runs half of every batch and the
// gradients are summed by the collective library's all-reduce. After 20 steps the losses equal one
// chip's within rounding: the two differ only in the order of fp32 sums (and bf16 roundings after),
// measured below 1e-3 relative.
TEST(Trainer, DataParallelOverTwoChipsMatchesOneChip) {
  const int steps = 20;
  TrainConfig c;
  c.steps = steps, c.batch = 4, c.micro_batch = 1, c.seq_len = 16, c.lr = 3e-3, c.min_lr = 3e-4, c.warmup_steps = 2;
  Qwen3Options o;
  o.max_context = 16;
  const NodeSpec node = load_node("zhenwu-8");
  std::vector<double> one;
  {
    Device dev(node.chip, ExecMode::kFunctional, 1);
    Qwen3Model m(dev, small(), Qwen3Weights::random(11), o);
    Trainer t(m, c);
    for (int s = 0; s < steps; ++s) one.push_back(t.step(batch_tokens(4, 16, s % 3)).loss);
  }
  std::vector<std::unique_ptr<Device>> devs;
  std::vector<Device*> ptrs;
  for (int r = 0; r < 2; ++r) {
    devs.push_back(std::make_unique<Device>(node.chip, ExecMode::kFunctional, 1));
    ptrs.push_back(devs.back().get());
  }
  ccl::Communicator comm(node, ptrs);
  std::vector<std::vector<double>> losses(2);
  std::vector<double> comm_time(2, 0.0);
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      try {
        Qwen3Model m(*devs[static_cast<size_t>(r)], small(), Qwen3Weights::random(11), o);
        Trainer t(m, c, &comm, r);
        for (int s = 0; s < steps; ++s) losses[static_cast<size_t>(r)].push_back(t.step(batch_tokens(4, 16, s % 3)).loss);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  ASSERT_EQ(errors[0], "");
  ASSERT_EQ(errors[1], "");
  EXPECT_EQ(losses[0], losses[1]) << "every rank reports the same (all-reduced) loss";
  for (int s = 0; s < steps; ++s) EXPECT_NEAR(losses[0][static_cast<size_t>(s)], one[static_cast<size_t>(s)], 1e-3 * one[static_cast<size_t>(s)]) << "step " << s + 1;
  EXPECT_LT(losses[0].back(), 0.8 * losses[0].front());
  bool collective = false;
  for (const OpRecord& rec : devs[0]->records()) collective = collective || rec.kind == OpKind::kCollective;
  EXPECT_TRUE(collective) << "the gradients crossed the node's links";
  // A batch the ranks cannot share is refused.
  Device d(node.chip, ExecMode::kTimingOnly);
  Qwen3Model m(d, small(), Qwen3Weights::random(1), o);
  TrainConfig bad = c;
  bad.batch = 3;
  test::expect_error([&] { Trainer t(m, bad, &comm, 0); }, {"--batch 3 with --dp 2", "multiples of 2"});
}

TEST(Trainer, NonFiniteGradientsStopTheRunOrAreSkipped) {
  Device dev(load_chip("zhenwu-810e"), ExecMode::kFunctional, 1);
  Qwen3Options o;
  o.max_context = 8;
  Qwen3Model m(dev, small(), Qwen3Weights::random(2), o);
  TrainConfig c;
  c.steps = 2, c.batch = 2, c.seq_len = 8;
  Trainer t(m, c);
  const std::string bad = "model.layers.1.mlp.down_proj.weight";
  for (const nn::Parameter* p : m.trainable_parameters())
    if (p->name == bad) {
      std::vector<float> v = dev.download(p->value);
      v[3] = std::numeric_limits<float>::quiet_NaN();
      dev.upload(p->value, v);
    }
  test::expect_error<NonFiniteError>([&] { t.step(batch_tokens(2, 8, 0)); }, {"step 1", "is not finite", "--skip-nonfinite"});
  c.skip_nonfinite = true;
  Trainer skipping(m, c);
  const StepResult r = skipping.step(batch_tokens(2, 8, 0));
  EXPECT_TRUE(r.skipped);
  EXPECT_EQ(skipping.steps_done(), 1);
}

// MoE (tiny-moe's shape, 512-token vocabulary): AdamW steps on one repeated batch lower its loss
// (router, experts and the load-balancing loss all train), bit-identically for 1 and 2 threads.
std::vector<double> moe_losses(int threads) {
  Device dev(load_chip("zhenwu-810e"), ExecMode::kFunctional, threads);
  Qwen3Options o;
  o.max_context = 16;
  Qwen3Model m(dev, test::small_model("tiny-moe"), Qwen3Weights::random(12), o);
  TrainConfig c;
  c.steps = 8;
  c.batch = 4;
  c.micro_batch = 4;
  c.seq_len = 16;
  c.lr = 3e-3;
  c.min_lr = 3e-4;
  c.warmup_steps = 2;
  Trainer t(m, c);
  std::vector<double> losses;
  for (int s = 0; s < c.steps; ++s) losses.push_back(t.step(batch_tokens(4, 16, 0)).loss);
  return losses;
}

TEST(Trainer, MoeLossFallsOnARepeatedBatch) {
  const std::vector<double> a = moe_losses(1), b = moe_losses(2);
  EXPECT_EQ(a, b) << "bit-identical for 1 and 2 host threads";
  EXPECT_LT(a.back(), 0.85 * a.front()) << a.front() << " -> " << a.back();  // measured 6.28 -> 4.70
}

TEST(Trainer, BadConfigurationsNameTheOption) {
  Device dev(load_chip("zhenwu-810e"), ExecMode::kTimingOnly);
  Qwen3Options o;
  o.max_context = 16;
  Qwen3Model m(dev, small(), Qwen3Weights::random(1), o);
  auto with = [&](auto edit) {
    TrainConfig c;
    c.steps = 10, c.batch = 4, c.seq_len = 16;
    edit(c);
    return [&m, c] { Trainer t(m, c); };
  };
  test::expect_error(with([](TrainConfig& c) { c.steps = 0; }), {"--steps 0"});
  test::expect_error(with([](TrainConfig& c) { c.batch = 0; }), {"--batch 0"});
  test::expect_error(with([](TrainConfig& c) { c.micro_batch = 3; }), {"--micro-batch 3", "valid: 1, 2, 4"});
  test::expect_error(with([](TrainConfig& c) { c.seq_len = 17; }), {"--seq-len 17", "context of 16 positions"});
  test::expect_error(with([](TrainConfig& c) { c.lr = -1; }), {"--lr -1"});
  test::expect_error(with([](TrainConfig& c) { c.min_lr = 1; }), {"--min-lr 1"});
  test::expect_error(with([](TrainConfig& c) { c.warmup_steps = 11; }), {"--warmup 11"});
  TrainConfig c;
  c.steps = 10, c.batch = 4, c.seq_len = 16;
  Trainer t(m, c);
  test::expect_error([&] { t.step(std::vector<int32_t>(10, 1)); }, {"10 token ids", "needs 68"});
}

}  // namespace
}  // namespace ppu::train
