// Tests of training a Qwen3 model on the PPU (models/Qwen3 training_loss over nn/Graph): the initial
// loss of random weights is about ln(vocab); every trainable parameter receives a finite gradient;
// gradients of two micro-batches of one sequence each equal (within rounding) those of one batch of
// both; a few AdamW steps on one fixed batch drive its loss down (the model can learn); the whole
// model's gradients against PyTorch autograd for the tiny dense and the tiny MoE fixture (router,
// top-k, experts, combine and the load-balancing loss); and the errors for what cannot be trained
// yet.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "TestUtil.hpp"
#include "train/TrainTestUtil.hpp"
#include "kernels/Optimizer.hpp"
#include "Qwen3TestUtil.hpp"
#include "models/Qwen3.hpp"
#include "models/Safetensors.hpp"
#include "arch/NodeSpec.hpp"
#include "ccl/Communicator.hpp"

namespace ppu {
namespace {

const ChipSpec& chip() {
  static const ChipSpec c = load_chip("zhenwu-810e");
  return c;
}

// A small dense Qwen3 (tiny's shape with a 512-token vocabulary, so the tests stay fast).
ModelConfig small() { return test::small_model(); }

// A gradient fixture of tools/reference/gen_qwen3_grads.py (DIR/grads.safetensors): its tensors as
// fp32 and the batch's token ids (stored as exact floats).
struct GradFixture {
  explicit GradFixture(const std::string& dir) : file(dir + "/grads.safetensors") {
    for (float v : values("inputs")) inputs.push_back(static_cast<int32_t>(v));
    for (float v : values("targets")) targets.push_back(static_cast<int32_t>(v));
  }
  std::vector<float> values(const std::string& name) const {
    const SafetensorsTensor& t = file.at(name);
    return tensor_to_f32(t, t.shape);
  }
  SafetensorsFile file;
  std::vector<int32_t> inputs, targets;
};

using test::tokens;

double mean(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += x;
  return s / static_cast<double>(v.size());
}

TEST(Qwen3Training, InitialLossIsAboutLnVocabAndEveryParameterGetsAGradient) {
  Device dev(chip(), ExecMode::kFunctional, 2);
  Qwen3Options o;
  o.max_context = 32;
  Qwen3Model m(dev, small(), Qwen3Weights::random(3), o);
  nn::Graph g(m.context());
  const int64_t B = 2, S = 16;
  const std::vector<int32_t> in = tokens(B * S, 1), tgt = tokens(B * S, 2);
  nn::VarPtr loss = m.training_loss(g, in, tgt, B, S);
  const double l0 = mean(dev.download(loss->value));
  // Weights of std 0.02 give near-uniform logits: the loss is ln(512) = 6.24 within a few percent.
  EXPECT_NEAR(l0, std::log(512.0), 0.05 * std::log(512.0));
  g.backward(loss, 1.0);
  for (const nn::Parameter* p : m.trainable_parameters()) {
    ASSERT_TRUE(g.has_param_grad(*p)) << p->name;
    const std::vector<float> gr = dev.download(g.param_grad(*p));
    double sq = 0;
    for (float x : gr) {
      ASSERT_TRUE(std::isfinite(x)) << p->name;
      sq += double(x) * x;
    }
    EXPECT_GT(sq, 0.0) << p->name << " has an all-zero gradient";
  }
}

TEST(Qwen3Training, MicroBatchesAccumulateToTheWholeBatchsGradient) {
  Device dev(chip(), ExecMode::kFunctional, 2);
  Qwen3Options o;
  o.max_context = 16;
  Qwen3Model m(dev, small(), Qwen3Weights::random(4), o);
  const int64_t S = 16;
  const std::vector<int32_t> in = tokens(2 * S, 5), tgt = tokens(2 * S, 6);
  nn::Graph whole(m.context()), parts(m.context());
  whole.backward(m.training_loss(whole, in, tgt, 2, S), 1.0);
  for (int b = 0; b < 2; ++b) {
    const std::vector<int32_t> ib(in.begin() + b * S, in.begin() + (b + 1) * S), tb(tgt.begin() + b * S, tgt.begin() + (b + 1) * S);
    parts.backward(m.training_loss(parts, ib, tb, 1, S), 0.5);  // each micro-batch: half of the mean
  }
  for (const nn::Parameter* p : m.trainable_parameters()) {
    const std::vector<float> a = dev.download(whole.param_grad(*p)), b = dev.download(parts.param_grad(*p));
    // The two differ only in fp32 summation order (and bf16 roundings that follow): rel. RMS 1e-3.
    EXPECT_LT(test::rel_rms(b, a), 1e-3) << p->name;
  }
}

TEST(Qwen3Training, AdamWStepsLowerTheLossOfAFixedBatch) {
  Device dev(chip(), ExecMode::kFunctional, 2);
  Qwen3Options o;
  o.max_context = 16;
  Qwen3Model m(dev, small(), Qwen3Weights::random(5), o);
  const int64_t B = 2, S = 16;
  const std::vector<int32_t> in = tokens(B * S, 7), tgt = tokens(B * S, 8);
  // fp32 master weights and moments per parameter; the model's bf16 weights are the copies.
  struct State {
    const nn::Parameter* p;
    DeviceBuffer master, m, v;
  };
  std::vector<State> st;
  for (const nn::Parameter* p : m.trainable_parameters()) {
    State s{p, dev.alloc_owned(DType::kF32, p->value->numel, "master"), dev.alloc_owned(DType::kF32, p->value->numel, "m"),
            dev.alloc_owned(DType::kF32, p->value->numel, "v")};
    dev.upload(s.master, dev.download(p->value));
    kernels::fill(dev, s.m, 0.0f);
    kernels::fill(dev, s.v, 0.0f);
    st.push_back(std::move(s));
  }
  double first = 0, last = 0;
  for (int step = 1; step <= 12; ++step) {
    nn::Graph g(m.context());
    nn::VarPtr loss = m.training_loss(g, in, tgt, B, S);
    last = mean(dev.download(loss->value));
    if (step == 1) first = last;
    g.backward(loss, 1.0);
    kernels::AdamWParams hp;
    hp.lr = 1e-2;
    hp.weight_decay = 0.0;
    hp.step = step;
    for (State& s : st) kernels::adamw(dev, hp, g.param_grad(*s.p), s.master, s.m, s.v, s.p->value);
  }
  EXPECT_LT(last, 0.6 * first) << "first " << first << ", last " << last;
}

// Runs the fixture in `dir` (a checkpoint with grads.safetensors from tools/reference/
// gen_qwen3_grads.py) through training_loss and its backward and compares with PyTorch: the loss
// within 1e-2 relative, every weight's gradient within 3e-2 relative RMS; a weight whose reference
// gradient is all zero (an expert no row was routed to) must get exactly zero. `aux_coef_from_file`:
// the load-balancing weight is the file's router_aux_loss_coef instead of the config's. Returns how
// many weights had an all-zero gradient. PPU_VERBOSE=1 prints each weight's error.
int expect_gradients_match_fixture(const std::string& dir, bool aux_coef_from_file) {
  const GradFixture ref(dir);
  auto values = [&](const std::string& name) { return ref.values(name); };
  const std::vector<int32_t>& in = ref.inputs;
  const std::vector<int32_t>& tgt = ref.targets;
  const int64_t B = 2, S = static_cast<int64_t>(in.size()) / B;
  Device dev(chip(), ExecMode::kFunctional, 2);
  Qwen3Options o;
  o.max_context = S;
  ModelConfig cfg = load_model_config(dir);
  if (aux_coef_from_file) cfg.router_aux_loss_coef = values("router_aux_loss_coef")[0];
  Qwen3Model m(dev, cfg, Qwen3Weights::from_checkpoint(dir), o);
  nn::Graph g(m.context());
  nn::VarPtr loss = m.training_loss(g, in, tgt, B, S);
  EXPECT_NEAR(mean(dev.download(loss->value)), values("loss")[0], 1e-2 * values("loss")[0]);
  g.backward(loss, 1.0);
  int zero_grads = 0;
  for (const nn::Parameter* p : m.trainable_parameters()) {
    const std::vector<float> got = dev.download(g.param_grad(*p)), want = values("grad." + p->name);
    if (std::all_of(want.begin(), want.end(), [](float v) { return v == 0.0f; })) {
      ++zero_grads;
      EXPECT_TRUE(std::all_of(got.begin(), got.end(), [](float v) { return v == 0.0f; })) << p->name;
      continue;
    }
    const double e = test::rel_rms(got, want);
    EXPECT_LE(e, 3e-2) << p->name;
    if (std::getenv("PPU_VERBOSE")) std::printf("%-50s rel RMS %.2e\n", p->name.c_str(), e);
  }
  return zero_grads;
}

// The whole model's gradients against PyTorch autograd (tools/reference/gen_qwen3_grads.py: fp32
// math on the fixture's bf16 weights). Ours rounds activations and matrix inputs to bf16 (as bf16
// autocast training does), so agreement is to bf16-sized relative errors, compounded through two
// layers and the backward: a relative RMS of 3e-2 per weight's gradient (measured 0.6-1.9e-2), 1e-2 on the loss.
TEST(Qwen3Training, GradientsMatchPyTorchOnTheTinyFixture) {
  EXPECT_EQ(expect_gradients_match_fixture(test::fixture("qwen3-tiny"), false), 0) << "every dense weight gets a gradient";
}

// The tiny MoE fixture against PyTorch (the same generator): mean cross-entropy plus coef x HF's
// load-balancing loss, coef = 0.1 from the file (larger than the config's 0.001 so that the
// load-balancing term is a visible part of the router's gradient). The batch's routing gaps are at
// least 0.05 in log-probability (checked by the generator), so bf16 rounding picks the same experts
// as fp32 and the gradients are compared like the dense model's: relative RMS 3e-2 per weight
// (measured below, PPU_VERBOSE=1 prints them), 1e-2 on the loss. The reference gradients are stored
// as bf16 (2^-9 relative); experts no row was routed to must get exactly zero.
TEST(Qwen3Training, MoeGradientsMatchPyTorchOnTheTinyFixture) {
  EXPECT_LE(expect_gradients_match_fixture(test::fixture("qwen3-tiny-moe"), true), 6)
      << "the fixture has two unused experts (3 weights each) in layer 1";
}

// Without the load-balancing loss (coef 0) the loss is the cross-entropy alone, lower by exactly
// coef x aux; with it the router's gradient changes, the experts' hardly at all.
TEST(Qwen3Training, MoeLoadBalancingLossIsAddedWithItsCoefficient) {
  const std::string dir = test::fixture("qwen3-tiny-moe");
  Device dev(chip(), ExecMode::kFunctional, 2);
  Qwen3Options o;
  o.max_context = 16;
  const std::vector<int32_t> in = tokens(32, 3), tgt = tokens(32, 4);
  auto run = [&](double coef, std::vector<float>* router_grad) {
    ModelConfig cfg = load_model_config(dir);
    cfg.router_aux_loss_coef = coef;
    Qwen3Model m(dev, cfg, Qwen3Weights::from_checkpoint(dir), o);
    nn::Graph g(m.context());
    nn::VarPtr loss = m.training_loss(g, in, tgt, 2, 16);
    const double l = mean(dev.download(loss->value));
    g.backward(loss, 1.0);
    for (const nn::Parameter* p : m.trainable_parameters())
      if (p->name == "model.layers.0.mlp.gate.weight") *router_grad = dev.download(g.param_grad(*p));
    return l;
  };
  std::vector<float> g0, g1;
  const double l0 = run(0.0, &g0), l1 = run(1.0, &g1);
  // aux = E sum f_e P_e is at least k (= 2) x ... about k for near-balanced routing; 1 <= aux <= E.
  EXPECT_GT(l1 - l0, 1.0);
  EXPECT_LT(l1 - l0, 8.0);
  EXPECT_GT(test::rel_rms(g1, g0), 1e-2) << "the load-balancing loss must reach the router";
}

TEST(Qwen3Training, WhatCannotBeTrainedYetIsRefused) {
  Device dev(chip(), ExecMode::kTimingOnly);
  Qwen3Options o;
  o.max_context = 16;
  Qwen3Model dense(dev, small(), Qwen3Weights::random(1), o);
  nn::Graph g(dense.context());
  test::expect_error([&] { dense.training_loss(g, tokens(32, 1), tokens(32, 1), 1, 32); },
                     {"sequences of 32 tokens exceed the model's context of 16"});
  test::expect_error([&] { dense.training_loss(g, tokens(30, 1), tokens(32, 1), 2, 16); }, {"need 32 inputs and targets"});
  // MoE trains on one chip; expert parallelism in training is refused, saying so.
  const NodeSpec node = load_node("zhenwu-8");
  Device d0(node.chip, ExecMode::kTimingOnly), d1(node.chip, ExecMode::kTimingOnly);
  ccl::Communicator comm(node, {&d0, &d1});
  Qwen3Options eo = o;
  eo.ep_size = 2;
  eo.ep_comm = &comm;
  Qwen3Model moe(d0, test::small_model("tiny-moe"), Qwen3Weights::random(1), eo);
  nn::Graph ge(moe.context());
  test::expect_error([&] { moe.training_loss(ge, tokens(16, 1), tokens(16, 1), 1, 16); },
                     {"mixture-of-experts training runs on one chip", "ep 2",
                      "expert and tensor parallelism in training are not supported yet"});
}

}  // namespace
}  // namespace ppu
