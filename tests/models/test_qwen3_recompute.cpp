// Tests of activation recomputation in training (nn::Graph::checkpoint, models/Qwen3 training_loss
// with nn::Recompute): with full (every layer) and selective (the attention core) recomputation the
// losses and every parameter gradient are bit-identical to none - the same kernels in the same
// order, dense, MoE and under tensor parallelism (whose recomputed forward repeats its all-reduces);
// full lowers the device's peak memory on a model with several layers; and the simulated step grows
// by exactly the recomputed forward, each "<kind> recompute" op time equal to the forward's time of
// that kind in the layers.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "Qwen3TestUtil.hpp"
#include "TestUtil.hpp"
#include "arch/NodeSpec.hpp"
#include "ccl/Communicator.hpp"
#include "models/Qwen3.hpp"
#include "train/TrainTestUtil.hpp"

namespace ppu {
namespace {

using test::tokens;

struct StepRun {
  std::vector<float> loss;
  std::map<std::string, std::vector<float>> grads;
  std::map<std::string, double> op_times;
  double step_s = 0;             // simulated seconds of forward + backward
  int64_t activation_peak = 0;   // peak device bytes above what the model held before the step
};

// One forward + backward of B sequences of S tokens with `rc` on a fresh model (seed 7) on dev.
void run(Device& dev, const ModelConfig& cfg, Qwen3Options o, int64_t B, int64_t S, nn::Recompute rc, StepRun& r) {
  o.max_context = S;
  Qwen3Model m(dev, cfg, Qwen3Weights::random(7), o);
  const int64_t base = dev.bytes_in_use();
  ASSERT_GE(base, dev.peak_bytes_in_use() - base) << "building the model must not set the peak the test reads";
  const double t0 = dev.synchronize();
  {
    nn::Graph g(m.context());
    nn::VarPtr loss = m.training_loss(g, tokens(B * S, 1), tokens(B * S, 2), B, S, rc);
    if (dev.functional()) r.loss = dev.download(loss->value);
    g.backward(loss, 1.0);
    g.reduce_tp_partial_grads();
    r.step_s = dev.synchronize() - t0;
    if (dev.functional())
      for (const nn::Parameter* p : m.trainable_parameters()) r.grads[p->name] = dev.download(g.param_grad(*p));
  }
  r.activation_peak = dev.peak_bytes_in_use() - base;
  r.op_times = m.op_times();
}

StepRun run_on_new_device(const ModelConfig& cfg, ExecMode mode, int64_t B, int64_t S, nn::Recompute rc) {
  Device dev(load_chip("zhenwu-810e"), mode, 1);
  StepRun r;
  run(dev, cfg, Qwen3Options{}, B, S, rc, r);
  return r;
}

void expect_identical(const StepRun& a, const StepRun& b, const char* what) {
  EXPECT_EQ(a.loss, b.loss) << what;
  ASSERT_EQ(a.grads.size(), b.grads.size()) << what;
  for (const auto& [name, g] : a.grads) EXPECT_EQ(g, b.grads.at(name)) << what << ": " << name;
}

TEST(Qwen3Recompute, FullAndSelectiveGiveBitIdenticalLossesAndGradients) {
  const ModelConfig cfg = test::small_model();
  const StepRun none = run_on_new_device(cfg, ExecMode::kFunctional, 2, 16, nn::Recompute::kNone);
  const StepRun sel = run_on_new_device(cfg, ExecMode::kFunctional, 2, 16, nn::Recompute::kSelective);
  const StepRun full = run_on_new_device(cfg, ExecMode::kFunctional, 2, 16, nn::Recompute::kFull);
  ASSERT_FALSE(none.grads.empty());
  expect_identical(none, sel, "selective");
  expect_identical(none, full, "full");
  EXPECT_EQ(none.op_times.count("linear recompute"), 0u);
  EXPECT_GT(sel.op_times.at("attention recompute"), 0.0);
  EXPECT_EQ(sel.op_times.count("linear recompute"), 0u) << "selective recomputes the attention core only";
  EXPECT_GT(full.op_times.at("linear recompute"), 0.0);
}

TEST(Qwen3Recompute, MoeFullRecomputationIsBitIdentical) {
  // The routes (chosen on the host from the recomputed probabilities) and the load-balancing loss's
  // gradient, which reaches each layer's probabilities through the region's outputs.
  ModelConfig cfg = test::small_model("tiny-moe");
  cfg.router_aux_loss_coef = 0.1;
  const StepRun none = run_on_new_device(cfg, ExecMode::kFunctional, 2, 16, nn::Recompute::kNone);
  const StepRun full = run_on_new_device(cfg, ExecMode::kFunctional, 2, 16, nn::Recompute::kFull);
  expect_identical(none, full, "full (MoE)");
  EXPECT_GT(full.op_times.at("moe expert gemm recompute"), 0.0);
}

// Timing-only, 6 layers, 2 x 512 tokens: full keeps one [tokens, hidden] input per layer instead of
// each layer's activations, so the peak falls; the step grows by the recomputed forward, which is
// every layer op's forward once more (the final norm, embedding and LM head are outside the layers).
TEST(Qwen3Recompute, FullLowersPeakMemoryAndAddsOneForwardOfTheLayers) {
  ModelConfig cfg = test::small_model();
  cfg.num_layers = 6;
  const int64_t B = 2, S = 512;
  const StepRun none = run_on_new_device(cfg, ExecMode::kTimingOnly, B, S, nn::Recompute::kNone);
  const StepRun full = run_on_new_device(cfg, ExecMode::kTimingOnly, B, S, nn::Recompute::kFull);
  const StepRun sel = run_on_new_device(cfg, ExecMode::kTimingOnly, B, S, nn::Recompute::kSelective);
  if (std::getenv("PPU_VERBOSE"))
    std::printf("activation peak: none %lld, selective %lld, full %lld bytes; step %.3e / %.3e / %.3e s\n",
                static_cast<long long>(none.activation_peak), static_cast<long long>(sel.activation_peak),
                static_cast<long long>(full.activation_peak), none.step_s, sel.step_s, full.step_s);
  EXPECT_LT(full.activation_peak, none.activation_peak);
  EXPECT_LE(sel.activation_peak, none.activation_peak);
  // Per kind: the recompute's time equals the forward's; the norm's forward has the final norm more.
  double recompute_s = 0;
  int kinds = 0;
  for (const auto& [kind, t] : full.op_times) {
    const std::string suffix = " recompute";
    if (kind.size() <= suffix.size() || kind.compare(kind.size() - suffix.size(), suffix.size(), suffix) != 0) continue;
    ++kinds;
    recompute_s += t;
    const std::string fwd = kind.substr(0, kind.size() - suffix.size());
    const double f = none.op_times.at(fwd);
    if (fwd == "norm")
      EXPECT_LT(t, f) << "the final norm is not recomputed";
    else
      EXPECT_NEAR(t, f, 1e-9 * f) << kind;
  }
  EXPECT_GE(kinds, 5) << "norm, linear, qk-norm and rope, attention, residual, swiglu";
  // The step: none's plus exactly the recomputed kernels (one stream: times add), to rounding.
  EXPECT_NEAR(full.step_s, none.step_s + recompute_s, 1e-9 * full.step_s);
  EXPECT_NEAR(sel.step_s, none.step_s + sel.op_times.at("attention recompute"), 1e-9 * sel.step_s);
  EXPECT_NEAR(sel.op_times.at("attention recompute"), none.op_times.at("attention"), 1e-9 * none.op_times.at("attention"));
}

// Two TP ranks: full recomputation repeats each layer's forward all-reduces ("tp all-reduce
// recompute", as Megatron's recomputed forward does) and the gradients stay bit-identical.
TEST(Qwen3Recompute, TensorParallelFullRecomputationRepeatsTheAllReduces) {
  const NodeSpec node = load_node("zhenwu-8");
  const ModelConfig cfg = test::small_model();
  std::map<nn::Recompute, std::vector<StepRun>> by;
  for (nn::Recompute rc : {nn::Recompute::kNone, nn::Recompute::kFull}) {
    std::vector<StepRun> ranks(2);
    const std::vector<std::string> errors = test::on_ranks(node, 2, [&](int r, Device& dev, ccl::Communicator& comm) {
      Qwen3Options o;
      o.tp_size = 2, o.tp_rank = r, o.tp_comm = &comm;
      run(dev, cfg, o, 2, 16, rc, ranks[static_cast<size_t>(r)]);
    });
    for (const std::string& e : errors) ASSERT_EQ(e, "");
    by[rc] = ranks;
  }
  for (int r = 0; r < 2; ++r) {
    const StepRun &none = by[nn::Recompute::kNone][static_cast<size_t>(r)], &full = by[nn::Recompute::kFull][static_cast<size_t>(r)];
    expect_identical(none, full, r == 0 ? "TP rank 0" : "TP rank 1");
    EXPECT_EQ(none.op_times.count("tp all-reduce recompute"), 0u);
    EXPECT_GT(full.op_times.at("tp all-reduce recompute"), 0.0);
  }
}

// A region must hand out something differentiable; a region no input of which wants a gradient just
// runs (nothing recorded, nothing to recompute).
TEST(Qwen3Recompute, CheckpointRefusesARegionWithoutAGradientPath) {
  Device dev(load_chip("zhenwu-810e"), ExecMode::kFunctional, 1);
  nn::Context ctx(dev, nn::ParallelGroups{}, DType::kBF16, DType::kBF16);
  nn::Graph g(ctx);
  const DeviceBuffer a = ctx.alloc(4, "a", DType::kF32), b = ctx.alloc(4, "b", DType::kF32);
  nn::VarPtr x = g.input(a, "x"), c = g.input(b, "c");
  x->requires_grad = true;
  test::expect_error([&] { g.checkpoint({x}, [](const std::vector<nn::VarPtr>&) { return std::vector<nn::VarPtr>{}; }); },
                     {"a checkpointed region returned no output"});
  test::expect_error([&] { g.checkpoint({x}, [&](const std::vector<nn::VarPtr>&) { return std::vector<nn::VarPtr>{c}; }); },
                     {"checkpointed region output 'c' does not depend on anything with a gradient"});
  EXPECT_TRUE(g.recording()) << "recording is back on after a region that threw";
  int runs = 0;
  const std::vector<nn::VarPtr> out = g.checkpoint({c}, [&](const std::vector<nn::VarPtr>& in) {
    ++runs;
    return std::vector<nn::VarPtr>{g.add(in[0], in[0], DType::kF32)};
  });
  EXPECT_EQ(runs, 1);
  EXPECT_FALSE(out[0]->requires_grad);
}

TEST(Qwen3Recompute, ModeNamesAreThoseOfSimulateTrain) {
  EXPECT_EQ(nn::parse_recompute("none", "--recompute"), nn::Recompute::kNone);
  EXPECT_EQ(nn::parse_recompute("selective", "--recompute"), nn::Recompute::kSelective);
  EXPECT_EQ(nn::parse_recompute("full", "--recompute"), nn::Recompute::kFull);
  EXPECT_STREQ(nn::recompute_name(nn::Recompute::kFull), "full");
  test::expect_error([] { nn::parse_recompute("ful", "--recompute"); },
                     {"--recompute 'ful' is not a recomputation mode", "none, selective", "full"});
}

}  // namespace
}  // namespace ppu
