// Tests of tensor-parallel training (models/Qwen3 training_loss with tp_size 2 over nn/Graph's
// tp_copy / tp_sum): two emulated chips, each holding half of every attention head group and of the
// MLP width, compute the same loss and - shard for shard - the same gradients as one chip holding
// the whole model, within bf16 rounding; replicated parameters (embedding/LM head, norms, QK-norm
// after its TP sum) get bit-identical gradients on both ranks; the collectives are on the devices'
// clocks; sequence parallelism and a vocab-parallel head are refused (the TP degree's divisibility is
// nn::check_split's, tested there and in the CLI).
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

struct Result {
  std::vector<float> loss;
  std::map<std::string, std::vector<float>> grads;  // by parameter name: this rank's part
  std::map<std::string, nn::Split> splits;
  std::map<std::string, std::vector<int64_t>> shapes;  // the whole tensors'
  bool collective = false;
  double tp_forward_s = 0, tp_backward_s = 0;  // simulated time of the TP all-reduces (op times)
};

// One micro-batch (B sequences of S tokens) forward and backward on `m`.
void loss_and_grads(Qwen3Model& m, int64_t B, int64_t S, Result& r) {
  nn::Graph g(m.context());
  nn::VarPtr loss = m.training_loss(g, tokens(B * S, 1), tokens(B * S, 2), B, S);
  r.loss = m.device().download(loss->value);
  g.backward(loss, 1.0);
  g.reduce_tp_partial_grads();
  for (const nn::Parameter* p : m.trainable_parameters()) {
    r.grads[p->name] = m.device().download(g.param_grad(*p));
    r.splits[p->name] = p->split;
    r.shapes[p->name] = p->shape;
  }
  for (const OpRecord& rec : m.device().records()) r.collective = r.collective || rec.kind == OpKind::kCollective;
  r.tp_forward_s = m.op_times().count("tp all-reduce") ? m.op_times().at("tp all-reduce") : 0.0;
  r.tp_backward_s = m.op_times().count("tp all-reduce backward") ? m.op_times().at("tp all-reduce backward") : 0.0;
}

// Two TP ranks' gradients against one chip's: sharded parameters compared shard by shard
// (Parameter::shard_of the one-chip gradient), replicated ones whole and between the ranks. The
// two layouts differ only in the order of fp32 sums (the all-reduce adds two partial products where
// one chip's GEMM adds all terms) and in the bf16 roundings that follow: a relative RMS of 1e-4 per
// gradient and 1e-4 on the per-token losses (measured: at most 2.6e-7, the losses identical - at
// this size a changed fp32 sum rarely moves a bf16 rounding). A missing TP reduction anywhere
// (tp_copy's backward, QK-norm's sum) changes a gradient by tens of percent.
TEST(Qwen3TpTraining, TwoRanksMatchOneChipShardByShard) {
  const NodeSpec node = load_node("zhenwu-8");
  const ModelConfig cfg = test::small_model();
  const int64_t B = 2, S = 16;
  Qwen3Options o;
  o.max_context = S;
  Result one;
  {
    Device dev(node.chip, ExecMode::kFunctional, 1);
    Qwen3Model m(dev, cfg, Qwen3Weights::random(7), o);
    loss_and_grads(m, B, S, one);
  }
  std::vector<Result> ranks(2);
  const std::vector<std::string> errors = test::on_ranks(node, 2, [&](int r, Device& dev, ccl::Communicator& comm) {
    Qwen3Options ro = o;
    ro.tp_size = 2, ro.tp_rank = r, ro.tp_comm = &comm;
    Qwen3Model m(dev, cfg, Qwen3Weights::random(7), ro);
    loss_and_grads(m, B, S, ranks[static_cast<size_t>(r)]);
  });
  ASSERT_EQ(errors[0], "");
  ASSERT_EQ(errors[1], "");
  EXPECT_TRUE(ranks[0].collective) << "the TP all-reduces ran on the node's links";
  EXPECT_GT(ranks[0].tp_forward_s, 0.0) << "tp_sum's all-reduces are in the simulated time";
  EXPECT_GT(ranks[0].tp_backward_s, 0.0) << "tp_copy's backward all-reduces too";
  EXPECT_EQ(one.tp_forward_s + one.tp_backward_s, 0.0) << "one chip: no collectives";
  EXPECT_EQ(ranks[0].loss, ranks[1].loss) << "both ranks compute the same (replicated) loss";
  EXPECT_LT(test::rel_rms(ranks[0].loss, one.loss), 1e-4);
  if (std::getenv("PPU_VERBOSE")) std::printf("loss rel RMS %.2e\n", test::rel_rms(ranks[0].loss, one.loss));
  ASSERT_EQ(ranks[0].grads.size(), one.grads.size());
  int sharded = 0, replicated = 0;
  for (const auto& [name, whole] : one.grads) {
    const nn::Split sp = ranks[0].splits.at(name);
    if (sp.parts == 1) {
      ++replicated;
      EXPECT_EQ(ranks[0].grads.at(name), ranks[1].grads.at(name)) << name << ": replicated, identical on every rank";
      const double e = test::rel_rms(ranks[0].grads.at(name), whole);
      EXPECT_LT(e, 1e-4) << name;
      if (std::getenv("PPU_VERBOSE")) std::printf("%-45s replicated rel RMS %.2e\n", name.c_str(), e);
      continue;
    }
    ++sharded;
    for (int r = 0; r < 2; ++r) {
      const Result& rk = ranks[static_cast<size_t>(r)];
      const nn::Parameter part = nn::Parameter::elsewhere(name, rk.shapes.at(name), rk.splits.at(name));
      EXPECT_EQ(rk.splits.at(name).part, r) << name;
      const double e = test::rel_rms(rk.grads.at(name), part.shard_of(whole));
      EXPECT_LT(e, 1e-4) << name << " on rank " << r;
      if (std::getenv("PPU_VERBOSE")) std::printf("%-45s rank %d rel RMS %.2e\n", name.c_str(), r, e);
    }
  }
  EXPECT_GT(sharded, 0);
  EXPECT_GT(replicated, 0);
}

// What tensor-parallel training does not do yet is refused by name (timing-only shards in capture
// mode need no communicator).
TEST(Qwen3TpTraining, SequenceParallelAndVocabParallelHeadsAreRefused) {
  Device dev(load_chip("zhenwu-810e"), ExecMode::kTimingOnly);
  ForwardCapture cap;
  Qwen3Options o;
  o.max_context = 16;
  o.tp_size = 2;
  o.capture = &cap;
  o.sequence_parallel = true;
  Qwen3Model sp(dev, test::small_model(), Qwen3Weights::random(1), o);
  nn::Graph g(sp.context());
  test::expect_error([&] { sp.training_loss(g, tokens(16, 1), tokens(16, 2), 1, 16); },
                     {"sequence parallelism in training is not supported yet"});
  o.sequence_parallel = false;
  o.vocab_parallel = true;
  Qwen3Model vp(dev, test::small_model(), Qwen3Weights::random(1), o);
  nn::Graph g2(vp.context());
  test::expect_error([&] { vp.training_loss(g2, tokens(16, 1), tokens(16, 2), 1, 16); },
                     {"vocab-parallel LM head in training"});
}

}  // namespace
}  // namespace ppu
