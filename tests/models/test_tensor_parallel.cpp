// Tensor parallelism: a model split over 2 emulated chips of a node (Qwen3Options::tp_*), each
// shard's forward on its own host thread, the partial sums all-reduced by the collective library,
// must compute what one chip computes: the tiny dense and MoE checkpoints and a tiny GPT, prefill
// and decode, against the same model on one chip.
//
// Tolerance: the shards sum bf16 partial results of the output and down projections (rounded to
// bf16 before the all-reduce, which sums in fp32 and rounds once), where one chip rounds the full
// sum once: a few extra bf16 roundings per layer, RMS about 2^-9 relative each. Measured on the
// logits: below 1e-2 (PPU_VERBOSE=1 prints it); we allow 2.5e-2, as the PyTorch parity tests do.
// Decode steps feed the same tokens to both (greedy choices could differ where logits nearly tie).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <thread>

#include "TestUtil.hpp"
#include "arch/NodeSpec.hpp"
#include "ccl/Communicator.hpp"
#include "models/Qwen3.hpp"

namespace ppu {
namespace {

using test::fixture;
using test::rel_rms;

// Prefill `prompt`, then decode `forced` one token at a time (the same tokens for every run, so
// that runs compare call by call even where two logits nearly tie); the logits of every call.
struct Run {
  std::vector<std::vector<float>> logits;
  double sim_s = 0;
  std::map<std::string, double> ops;
};

Run run_model(Qwen3Model& m, const std::vector<int32_t>& prompt, const std::vector<int32_t>& forced) {
  Run r;
  ForwardResult f = m.forward(prompt);
  r.sim_s += f.sim_time_s;
  r.logits.push_back(f.logits);
  for (int32_t t : forced) {
    f = m.forward({t});
    r.sim_s += f.sim_time_s;
    r.logits.push_back(f.logits);
  }
  r.ops = m.op_times();
  return r;
}

// The model on `tp` chips of zhenwu-8, one host thread per shard; shard 0's run.
std::vector<Run> run_split(const ModelConfig& cfg, const Qwen3Weights& w, int tp, const std::vector<int32_t>& prompt,
                           const std::vector<int32_t>& forced, ExecMode mode = ExecMode::kFunctional, bool sp = false) {
  const NodeSpec node = load_node("zhenwu-8");
  std::vector<std::unique_ptr<Device>> devs;
  std::vector<Device*> ptrs;
  for (int r = 0; r < tp; ++r) {
    devs.push_back(std::make_unique<Device>(node.chip, mode, 1));
    ptrs.push_back(devs.back().get());
  }
  ccl::Communicator comm(node, ptrs);
  std::vector<Run> runs(static_cast<size_t>(tp));
  std::vector<std::string> errors(static_cast<size_t>(tp));
  std::vector<std::thread> threads;
  for (int r = 0; r < tp; ++r)
    threads.emplace_back([&, r] {
      try {
        Qwen3Options o;
        o.max_context = 128;
        o.tp_size = tp;
        o.tp_rank = r;
        o.tp_comm = &comm;
        o.sequence_parallel = sp;
        Qwen3Model m(*devs[static_cast<size_t>(r)], cfg, w, o);
        runs[static_cast<size_t>(r)] = run_model(m, prompt, forced);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (const auto& e : errors) EXPECT_EQ(e, "");
  return runs;
}

void check_split_equals_one_chip(const ModelConfig& cfg, const Qwen3Weights& w, int tp, bool sp = false) {
  const std::vector<int32_t> prompt = {5, 17, 300 % static_cast<int32_t>(cfg.vocab_size), 42, 9, 77, 1};
  Device one(load_chip("zhenwu-810e"));
  Qwen3Options o;
  o.max_context = 128;
  Qwen3Model m(one, cfg, w, o);
  const auto v = static_cast<int32_t>(cfg.vocab_size);
  const std::vector<int32_t> forced = {3 % v, 140 % v, 77 % v};
  const Run ref = run_model(m, prompt, forced);
  const std::vector<Run> split = run_split(cfg, w, tp, prompt, forced, ExecMode::kFunctional, sp);
  for (const Run& r : split) {
    ASSERT_EQ(r.logits.size(), ref.logits.size());
    for (size_t i = 0; i < ref.logits.size(); ++i) {
      const double e = rel_rms(r.logits[i], ref.logits[i]);
      if (std::getenv("PPU_VERBOSE")) std::printf("%s tp %d call %zu rel RMS %.3e\n", cfg.name.c_str(), tp, i, e);
      EXPECT_LE(e, 2.5e-2) << cfg.name << " call " << i;
    }
    EXPECT_GT(r.ops.at(sp ? "tp reduce-scatter" : "tp all-reduce"), 0.0);
    if (sp) {
      EXPECT_GT(r.ops.at("tp all-gather"), 0.0);
    }
  }
}

TEST(TensorParallel, DenseMatchesOneChip) {
  const std::string dir = fixture("qwen3-tiny");
  check_split_equals_one_chip(load_model_config(dir), Qwen3Weights::from_checkpoint(dir), 2);
}

TEST(TensorParallel, MoeMatchesOneChip) {
  const std::string dir = fixture("qwen3-tiny-moe");
  check_split_equals_one_chip(load_model_config(dir), Qwen3Weights::from_checkpoint(dir), 2);
}

TEST(TensorParallel, GptMatchesOneChip) {
  const ModelConfig cfg = parse_model_config(R"({"model_type": "gpt", "hidden_size": 64, "num_hidden_layers": 2,
      "num_attention_heads": 4, "intermediate_size": 256, "vocab_size": 97, "max_position_embeddings": 128,
      "tie_word_embeddings": true, "hidden_act": "gelu"})",
                                             "tiny-gpt");
  check_split_equals_one_chip(cfg, Qwen3Weights::random(5), 4);
}

// Sequence parallelism: the residual stream split by tokens (7 prompt tokens over 2 and 4 shards:
// uneven shares and a padded last shard), reduce-scatter + all-gather instead of all-reduce.
TEST(TensorParallel, SequenceParallelMatchesOneChip) {
  const std::string dir = fixture("qwen3-tiny");
  check_split_equals_one_chip(load_model_config(dir), Qwen3Weights::from_checkpoint(dir), 2, true);
  const ModelConfig gpt = parse_model_config(R"({"model_type": "gpt", "hidden_size": 64, "num_hidden_layers": 2,
      "num_attention_heads": 4, "intermediate_size": 256, "vocab_size": 97, "max_position_embeddings": 128,
      "tie_word_embeddings": true, "hidden_act": "gelu"})",
                                             "tiny-gpt");
  check_split_equals_one_chip(gpt, Qwen3Weights::random(5), 4, true);
  const std::string moe = fixture("qwen3-tiny-moe");  // experts split by width: a reduce-scatter of the MoE output
  check_split_equals_one_chip(load_model_config(moe), Qwen3Weights::from_checkpoint(moe), 2, true);
}

// Timing only: a large model split 8 ways takes less time per decode step than on 4 chips, and
// its collectives are part of the time.
TEST(TensorParallel, TimingOnlyLargeModelScales) {
  const ModelConfig cfg = load_model_config("qwen3-32b");
  const std::vector<int32_t> prompt(64, 7);
  const auto four = run_split(cfg, Qwen3Weights::random(1), 4, prompt, {1, 2}, ExecMode::kTimingOnly);
  const auto eight = run_split(cfg, Qwen3Weights::random(1), 8, prompt, {1, 2}, ExecMode::kTimingOnly);
  EXPECT_LT(eight[0].sim_s, four[0].sim_s);
  EXPECT_GT(eight[0].ops.at("tp all-reduce"), 0.0);
}

TEST(TensorParallel, BadDegreesAreErrors) {
  const std::string dir = fixture("qwen3-tiny");  // 4 heads, 2 kv heads
  Device dev(load_chip("zhenwu-810e"));
  Qwen3Options o;
  o.tp_size = 4;
  test::expect_error([&] { Qwen3Model(dev, load_model_config(dir), Qwen3Weights::random(1), o); },
                     {"needs a communicator of 4 ranks"});
  const NodeSpec node = load_node("zhenwu-8");
  std::vector<std::unique_ptr<Device>> devs;
  std::vector<Device*> ptrs;
  for (int r = 0; r < 4; ++r) {
    devs.push_back(std::make_unique<Device>(node.chip));
    ptrs.push_back(devs.back().get());
  }
  ccl::Communicator comm(node, ptrs);
  o.tp_comm = &comm;
  test::expect_error([&] { Qwen3Model(*devs[0], load_model_config(dir), Qwen3Weights::random(1), o); },
                     {"TP degree of 4 does not divide the 2 key/value heads", "valid TP: 1, 2"});
  o.tp_rank = 4;
  test::expect_error([&] { Qwen3Model(*devs[0], load_model_config(dir), Qwen3Weights::random(1), o); },
                     {"tensor-parallel rank 4 of 4"});
}

}  // namespace
}  // namespace ppu

namespace ppu {
namespace {

// tp x dp ranks on zhenwu-8 with expert parallelism over all of them: group g (ranks g*tp ..) runs
// prompts[g]; returns each group's first rank's run.
std::vector<Run> run_expert_parallel(const ModelConfig& cfg, const Qwen3Weights& w, int tp, int ep,
                                     const std::vector<std::vector<int32_t>>& prompts, const std::vector<int32_t>& forced,
                                     ExecMode mode = ExecMode::kFunctional, bool sp = false) {
  const NodeSpec node = load_node("zhenwu-8");
  std::vector<std::unique_ptr<Device>> devs;
  std::vector<Device*> ptrs;
  for (int r = 0; r < ep; ++r) {
    devs.push_back(std::make_unique<Device>(node.chip, mode, 1));
    ptrs.push_back(devs.back().get());
  }
  ccl::Communicator world(node, ptrs);
  std::vector<std::unique_ptr<ccl::Communicator>> groups;
  for (int g = 0; g < ep / tp; ++g) {
    ccl::CommOptions co;
    for (int t = 0; t < tp; ++t) co.chips.push_back(g * tp + t);
    groups.push_back(std::make_unique<ccl::Communicator>(
        node, std::vector<Device*>(ptrs.begin() + g * tp, ptrs.begin() + (g + 1) * tp), co));
  }
  std::vector<Run> runs(static_cast<size_t>(ep));
  std::vector<std::string> errors(static_cast<size_t>(ep));
  std::vector<std::thread> threads;
  for (int r = 0; r < ep; ++r)
    threads.emplace_back([&, r] {
      try {
        Qwen3Options o;
        o.max_context = 128;
        o.tp_size = tp;
        o.tp_rank = r % tp;
        o.tp_comm = groups[static_cast<size_t>(r / tp)].get();
        o.ep_size = ep;
        o.ep_rank = r;
        o.ep_comm = &world;
        o.sequence_parallel = sp;
        Qwen3Model m(*devs[static_cast<size_t>(r)], cfg, w, o);
        runs[static_cast<size_t>(r)] = run_model(m, prompts[static_cast<size_t>(r / tp)], forced);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (const auto& e : errors) EXPECT_EQ(e, "");
  std::vector<Run> firsts;
  for (int g = 0; g < ep / tp; ++g) firsts.push_back(runs[static_cast<size_t>(g * tp)]);
  return firsts;
}

void check_expert_parallel(int tp, int ep, bool sp = false) {
  const std::string dir = fixture("qwen3-tiny-moe");
  const ModelConfig cfg = load_model_config(dir);
  const Qwen3Weights w = Qwen3Weights::from_checkpoint(dir);
  // Different prompts (and lengths) per data-parallel group.
  const std::vector<std::vector<int32_t>> prompts = {{5, 17, 300, 42, 9, 77, 1}, {200, 3, 11}, {8, 8, 8, 8, 8}, {1}};
  const std::vector<int32_t> forced = {3, 140, 77};
  const std::vector<Run> split = run_expert_parallel(cfg, w, tp, ep, prompts, forced, ExecMode::kFunctional, sp);
  for (int g = 0; g < ep / tp; ++g) {
    Device one(load_chip("zhenwu-810e"));
    Qwen3Options o;
    o.max_context = 128;
    Qwen3Model m(one, cfg, w, o);
    const Run ref = run_model(m, prompts[static_cast<size_t>(g)], forced);
    const Run& r = split[static_cast<size_t>(g)];
    ASSERT_EQ(r.logits.size(), ref.logits.size());
    for (size_t i = 0; i < ref.logits.size(); ++i) {
      const double e = rel_rms(r.logits[i], ref.logits[i]);
      if (std::getenv("PPU_VERBOSE")) std::printf("ep %d tp %d group %d call %zu rel RMS %.3e\n", ep, tp, g, i, e);
      EXPECT_LE(e, 2.5e-2) << "ep " << ep << " tp " << tp << " group " << g << " call " << i;
    }
    EXPECT_GT(r.ops.at("moe dispatch"), 0.0);
    if (sp) {
      EXPECT_GT(r.ops.at("tp all-gather"), 0.0);
    }
  }
}

TEST(ExpertParallel, TwoRanksMatchOneChip) { check_expert_parallel(1, 2); }
TEST(ExpertParallel, TwoGroupsOfTwoMatchOneChip) { check_expert_parallel(2, 4); }
TEST(ExpertParallel, OneExpertPerRank) { check_expert_parallel(2, 8); }
TEST(ExpertParallel, WithSequenceParallelism) { check_expert_parallel(2, 4, true); }

TEST(ExpertParallel, TimingOnlyLargeMoe) {
  const ModelConfig cfg = load_model_config("qwen3-30b-a3b");
  const auto runs = run_expert_parallel(cfg, Qwen3Weights::random(1), 2, 8, {std::vector<int32_t>(64, 7),
                                        std::vector<int32_t>(64, 7), std::vector<int32_t>(64, 7),
                                        std::vector<int32_t>(64, 7)}, {1}, ExecMode::kTimingOnly);
  ASSERT_EQ(runs.size(), 4u);
  EXPECT_GT(runs[0].sim_s, 0.0);
  EXPECT_GT(runs[0].ops.at("moe dispatch"), 0.0);
}

TEST(ExpertParallel, BadDegreesAreErrors) {
  const std::string dir = fixture("qwen3-tiny-moe");  // 8 experts
  const NodeSpec node = load_node("zhenwu-8");
  std::vector<std::unique_ptr<Device>> devs;
  std::vector<Device*> ptrs;
  for (int r = 0; r < 3; ++r) {
    devs.push_back(std::make_unique<Device>(node.chip));
    ptrs.push_back(devs.back().get());
  }
  ccl::Communicator comm(node, ptrs);
  Qwen3Options o;
  o.ep_size = 3;
  o.ep_comm = &comm;
  test::expect_error([&] { Qwen3Model(*devs[0], load_model_config(dir), Qwen3Weights::random(1), o); },
                     {"EP degree of 3 does not divide the 8 experts", "valid EP: 1, 2, 4, 8"});
  test::expect_error([&] { Qwen3Model(*devs[0], load_model_config(fixture("qwen3-tiny")), Qwen3Weights::random(1), o); },
                     {"needs an MoE model"});
  o.ep_comm = nullptr;
  test::expect_error([&] { Qwen3Model(*devs[0], load_model_config(dir), Qwen3Weights::random(1), o); },
                     {"needs a communicator of 3 ranks"});
}

}  // namespace
}  // namespace ppu
