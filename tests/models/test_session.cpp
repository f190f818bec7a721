// The generation loop (models/Session.hpp) against the model driven by hand: greedy tokens equal
// Qwen3Model::forward + arg-max over the downloaded logits token for token (the same kernels compute
// the logits; the on-chip arg-max breaks ties to the lowest id like std::max_element, so equality is
// exact, no tolerance), and the PyTorch reference's greedy ids of the tiny checkpoint (fixture
// margins >= 0.1 in logits). Batched generation equals one sequence at a time, and prefill split
// into passes equals one pass: both change only GEMM row counts, i.e. the fp32 summation order, which
// is far below the fixture checkpoint's logit gaps on these prompts (the batch tests of
// test_qwen3_parity.cpp measure 1e-3 relative). Stop ids, timing-only placeholders, the parallel
// ranks' error reporting and every invalid input are checked exactly.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <utility>

#include "TestUtil.hpp"
#include "arch/NodeSpec.hpp"
#include "ccl/Communicator.hpp"
#include "models/Safetensors.hpp"
#include "models/Session.hpp"

namespace ppu {
namespace {

using test::expect_error;
using test::fixture;

const std::vector<std::vector<int32_t>> kPrompts = {{5, 17, 300, 42, 9, 77, 1}, {200, 3}, {11, 12, 13, 14}};

Device make_device(ExecMode mode = ExecMode::kFunctional) { return Device(load_chip("zhenwu-810e"), mode, 1); }

// A session on the tiny checkpoint fixture (real weights, vocab 512).
std::unique_ptr<Session> fixture_session(Device& dev, int64_t max_batch = 1, int64_t max_context = 32) {
  const std::string dir = fixture("qwen3-tiny");
  Qwen3Options o;
  o.max_batch = max_batch;
  o.max_context = max_context;
  return std::make_unique<Session>(dev, load_model_config(dir), Qwen3Weights::from_checkpoint(dir), o,
                                   SamplerOptions{});
}

GenerateOptions tokens_at_most(int64_t n) {
  GenerateOptions g;
  g.max_new_tokens = n;
  return g;
}

// Token ids of the fixture's PyTorch reference run: "input_ids" (the prompt), "generated_ids" (greedy).
std::vector<int32_t> reference_ids(const std::string& name) {
  const SafetensorsFile refs(fixture("qwen3-tiny") + "/reference.safetensors");
  const SafetensorsTensor& t = refs.at("ref." + name);
  std::vector<int32_t> v;
  for (float x : tensor_to_f32(t, t.shape)) v.push_back(static_cast<int32_t>(x));
  return v;
}

// The reference loop: prefill, then arg-max of the downloaded logits fed back, `n` tokens.
std::vector<int32_t> greedy_by_hand(Qwen3Model& m, const std::vector<int32_t>& prompt, int64_t n) {
  std::vector<int32_t> out;
  ForwardResult r = m.forward(prompt);
  while (static_cast<int64_t>(out.size()) < n) {
    out.push_back(static_cast<int32_t>(std::max_element(r.logits.begin(), r.logits.end()) - r.logits.begin()));
    if (static_cast<int64_t>(out.size()) < n) r = m.forward({out.back()});
  }
  return out;
}

TEST(Session, GreedyEqualsForwardAndArgmaxByHand) {
  const ModelConfig cfg = load_model_config("tiny");
  const std::vector<int32_t> prompt = {151644, 872, 198, 6023, 151645, 198, 151644, 77091, 198};
  Qwen3Options o;
  o.max_context = 32;
  Device ref_dev = make_device();
  Qwen3Model ref(ref_dev, cfg, Qwen3Weights::random(7), o);
  const std::vector<int32_t> want = greedy_by_hand(ref, prompt, 12);

  Device dev = make_device();
  Session s(dev, cfg, Qwen3Weights::random(7), o, SamplerOptions{});
  const GenerateResult r = s.generate(prompt, tokens_at_most(12));
  ASSERT_EQ(r.tokens.size(), 1u);
  EXPECT_EQ(r.tokens[0], want);
  EXPECT_EQ(r.prefill_passes, 1);
  EXPECT_EQ(r.decode_steps, 11);
  EXPECT_GT(r.prefill_time_s, 0);
  EXPECT_GT(r.decode_time_s, 0);
  EXPECT_DOUBLE_EQ(r.time_per_output_token_s(), r.decode_time_s / 11);
  EXPECT_GE(r.host_prefill_s, 0);
  EXPECT_GE(r.host_decode_s, 0);
  EXPECT_EQ(s.model().past_len(), static_cast<int64_t>(prompt.size()) + 11);  // the last token is not fed
  EXPECT_GT(s.model().op_times().at("sampling"), 0);
}

TEST(Session, GreedyEqualsThePyTorchReference) {
  const std::vector<int32_t> want = reference_ids("generated_ids");
  Device dev = make_device();
  const GenerateResult r = fixture_session(dev)->generate(reference_ids("input_ids"), tokens_at_most(std::ssize(want)));
  EXPECT_EQ(r.tokens.at(0), want);
}

TEST(Session, StopsAtTheFirstStopIdAndKeepsIt) {
  Device dev0 = make_device();
  const std::vector<int32_t> full = fixture_session(dev0)->generate(kPrompts[0], tokens_at_most(10)).tokens.at(0);
  // The first token that has not appeared before, past the first one.
  size_t k = 1;
  while (k < full.size() && std::find(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(k), full[k]) !=
                                full.begin() + static_cast<std::ptrdiff_t>(k))
    ++k;
  ASSERT_LT(k, full.size()) << "the fixture's generation repeats one token; pick another prompt";

  Device dev = make_device();
  GenerateOptions g = tokens_at_most(10);
  g.stop_ids = {511, full[k]};  // 511: never generated here, a stop id that does not fire
  ASSERT_EQ(std::count(full.begin(), full.end(), 511), 0);
  std::vector<std::pair<size_t, int32_t>> streamed;
  g.on_token = [&](size_t seq, int32_t id) { streamed.emplace_back(seq, id); };
  const GenerateResult r = fixture_session(dev)->generate(kPrompts[0], g);
  const std::vector<int32_t> want(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(k + 1));
  EXPECT_EQ(r.tokens.at(0), want);
  EXPECT_EQ(r.decode_steps, static_cast<int64_t>(k));
  ASSERT_EQ(streamed.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(streamed[i], std::make_pair(size_t{0}, want[i]));

  // A stop id as the very first token: no decode step at all.
  Device dev1 = make_device();
  g.stop_ids = {full[0]};
  const GenerateResult first = fixture_session(dev1)->generate(kPrompts[0], g);
  EXPECT_EQ(first.tokens.at(0), std::vector<int32_t>{full[0]});
  EXPECT_EQ(first.decode_steps, 0);
  EXPECT_EQ(first.time_per_output_token_s(), 0);
}

TEST(Session, BatchEqualsOneSequenceAtATime) {
  Device dev = make_device();
  GenerateOptions g = tokens_at_most(5);
  std::vector<std::pair<size_t, int32_t>> streamed;
  g.on_token = [&](size_t seq, int32_t id) { streamed.emplace_back(seq, id); };
  const GenerateResult batch = fixture_session(dev, 3)->generate_batch(kPrompts, g);
  ASSERT_EQ(batch.tokens.size(), 3u);
  EXPECT_EQ(batch.prefill_passes, 1);
  EXPECT_EQ(batch.decode_steps, 4);
  for (size_t b = 0; b < 3; ++b) {
    Device d = make_device();
    EXPECT_EQ(batch.tokens[b], fixture_session(d)->generate(kPrompts[b], tokens_at_most(5)).tokens.at(0))
        << "sequence " << b;
  }
  // Streamed step by step, sequence by sequence.
  ASSERT_EQ(streamed.size(), 15u);
  for (size_t i = 0; i < 15; ++i) EXPECT_EQ(streamed[i], std::make_pair(i % 3, batch.tokens[i % 3][i / 3]));
}

TEST(Session, PrefillSplitIntoPassesGivesTheSameTokens) {
  // Prompts of 7, 2 and 4 tokens: 8192 per pass -> one pass; 8 -> [7] [2 4]; 1 -> one prompt per pass.
  const std::pair<int64_t, int64_t> cases[] = {{8192, 1}, {8, 2}, {1, 3}};
  std::vector<std::vector<int32_t>> first;
  for (const auto& [per_pass, passes] : cases) {
    Device dev = make_device();
    GenerateOptions g = tokens_at_most(4);
    g.max_prefill_tokens = per_pass;
    const GenerateResult r = fixture_session(dev, 3)->generate_batch(kPrompts, g);
    EXPECT_EQ(r.prefill_passes, passes) << per_pass << " tokens per pass";
    EXPECT_GT(r.prefill_time_s, 0);
    if (first.empty()) first = r.tokens;
    EXPECT_EQ(r.tokens, first) << per_pass << " tokens per pass";
  }
}

TEST(Session, AStoppedSequenceRidesAlongInItsBatch) {
  Device dev0 = make_device();
  const std::vector<std::vector<int32_t>> full =
      fixture_session(dev0, 3)->generate_batch(kPrompts, tokens_at_most(6)).tokens;
  // Stop on sequence 0's second token; each sequence ends at its first occurrence of it (if any),
  // the others' tokens are unchanged since every step still runs the whole batch.
  GenerateOptions g = tokens_at_most(6);
  g.stop_ids = {full[0][1]};
  Device dev = make_device();
  const GenerateResult r = fixture_session(dev, 3)->generate_batch(kPrompts, g);
  int64_t longest = 0;
  for (size_t b = 0; b < 3; ++b) {
    const auto stop = std::find(full[b].begin(), full[b].end(), g.stop_ids[0]);
    const std::vector<int32_t> want(full[b].begin(), stop == full[b].end() ? stop : stop + 1);
    EXPECT_EQ(r.tokens[b], want) << "sequence " << b;
    longest = std::max(longest, std::ssize(want));
  }
  EXPECT_LE(r.tokens[0].size(), 2u);
  EXPECT_EQ(r.decode_steps, longest - 1);
}

TEST(Session, TimingOnlyFeedsThePlaceholderToken) {
  const ModelConfig cfg = load_model_config("qwen3-0.6b");
  EXPECT_EQ(timing_only_token(cfg), 1000);
  Device dev = make_device(ExecMode::kTimingOnly);
  Qwen3Options o;
  o.max_context = 64;
  Session s(dev, cfg, Qwen3Weights::random(0), o, SamplerOptions{});
  const GenerateResult r = s.generate(std::vector<int32_t>(32, 100), tokens_at_most(4));
  EXPECT_EQ(r.tokens.at(0), std::vector<int32_t>(4, 1000));
  EXPECT_EQ(r.decode_steps, 3);
  EXPECT_GT(r.prefill_time_s, 0);
  EXPECT_GT(r.time_per_output_token_s(), 0);
  // The placeholder is checked against the stop ids like any token.
  s.model().reset();
  GenerateOptions g = tokens_at_most(4);
  g.stop_ids = {1000};
  EXPECT_EQ(s.generate(std::vector<int32_t>(32, 100), g).tokens.at(0), std::vector<int32_t>{1000});
}

TEST(Session, DecodeStepsLaunchAsCapturedGraphsAndOnlyTimeChanges) {
  // Each decode step is one captured graph: its first kernel pays launch_latency, every other one
  // graph_node_latency; the prefill launches kernel by kernel either way. The tokens are the same.
  GenerateResult r[2];
  int64_t node_launches = 0;
  double saving = 0;
  for (int graph = 0; graph < 2; ++graph) {
    Device dev = make_device();
    saving = dev.chip().launch_latency.value - dev.chip().graph_node_latency_value();
    auto s = fixture_session(dev);
    GenerateOptions g = tokens_at_most(6);
    g.graph_decode = graph == 1;
    r[graph] = s->generate(kPrompts[0], g);
    if (graph == 1)
      for (const OpRecord& rec : dev.records())
        node_launches += rec.timing && rec.timing->launch_s < dev.chip().launch_latency.value;
  }
  ASSERT_GT(saving, 0);
  EXPECT_EQ(r[1].tokens, r[0].tokens);
  EXPECT_EQ(r[1].prefill_time_s, r[0].prefill_time_s);
  EXPECT_EQ(r[1].decode_steps, 5);
  EXPECT_GT(node_launches, 5 * 10) << "every kernel of a step but its first";
  EXPECT_NEAR(r[0].decode_time_s - r[1].decode_time_s, static_cast<double>(node_launches) * saving, 1e-12);
}

TEST(Session, InvalidInputsAreUserErrors) {
  Device dev = make_device();
  const std::unique_ptr<Session> s = fixture_session(dev, 2, 8);
  expect_error([&] { s->generate({}, tokens_at_most(2)); }, {"generate: the prompt is empty"});
  expect_error([&] { s->generate_batch({{1, 2}, {}}, tokens_at_most(2)); }, {"prompt 1 is empty"});
  expect_error([&] { s->generate({1, 2}, tokens_at_most(-1)); }, {"max_new_tokens -1 must be 0 or more"});
  expect_error([&] { s->generate(std::vector<int32_t>(9, 1), tokens_at_most(1)); },
               {"the prompt has 9 tokens", "the context holds 8 positions"});
  expect_error([&] { s->generate(std::vector<int32_t>(6, 1), tokens_at_most(4)); },
               {"the prompt (6 tokens) and max_new_tokens 4 need 9 positions", "the context holds 8"});
  expect_error([&] { s->generate_batch({}, tokens_at_most(1)); }, {"0 prompts", "1 to 2 sequences"});
  expect_error([&] { s->generate_batch({{1}, {2}, {3}}, tokens_at_most(1)); }, {"3 prompts", "1 to 2 sequences"});
  GenerateOptions zero = tokens_at_most(1);
  zero.max_prefill_tokens = 0;
  expect_error([&] { s->generate({1}, zero); }, {"max_prefill_tokens 0 must be at least 1"});
  // Nothing ran: the caches are empty. Then positions already cached count.
  EXPECT_EQ(s->model().past_len(0), 0);
  EXPECT_TRUE(s->generate({1, 2, 3, 4}, tokens_at_most(2)).tokens.at(0).size() == 2);
  EXPECT_EQ(s->model().past_len(0), 5);
  expect_error([&] { s->generate({1, 2, 3, 4}, tokens_at_most(1)); },
               {"the prompt has 4 tokens after 5 already cached", "holds 8"});
  // max_new_tokens 0: the prompt is prefilled, nothing is generated.
  const GenerateResult none = s->generate_batch({{7}, {1, 2, 3}}, tokens_at_most(0));
  EXPECT_EQ(none.tokens, (std::vector<std::vector<int32_t>>{{}, {}}));
  EXPECT_EQ(s->model().past_len(1), 3);
}

// --- generate_parallel

// `world` independent single-chip sessions of the fixture (no communicator), each on its own device.
struct Ranks {
  std::vector<std::unique_ptr<Device>> devs;
  explicit Ranks(int world) {
    for (int r = 0; r < world; ++r)
      devs.push_back(std::make_unique<Device>(load_chip("zhenwu-810e"), ExecMode::kFunctional, 1));
  }
  SessionFactory factory(int failing_rank = -1) {
    return [this, failing_rank](int r) {
      if (r == failing_rank && r == 0) throw SimEvent("rank zero broke");
      if (r == failing_rank) throw std::runtime_error("no weights for this rank");
      return fixture_session(*devs[static_cast<size_t>(r)]);
    };
  }
  double sim_time(int r) { return devs[static_cast<size_t>(r)]->synchronize(); }
};

TEST(SessionParallel, EveryRankRunsTheSameLoopAndRankZeroStreams) {
  Ranks ranks(3);
  GenerateOptions g = tokens_at_most(5);
  int streamed = 0;
  g.on_token = [&](size_t, int32_t) { ++streamed; };
  const ParallelGeneration p = generate_parallel(3, ranks.factory(), kPrompts[0], g);
  Device d = make_device();
  EXPECT_EQ(p.result.tokens.at(0), fixture_session(d)->generate(kPrompts[0], tokens_at_most(5)).tokens.at(0));
  EXPECT_EQ(streamed, 5);
  ASSERT_NE(p.session, nullptr);
  EXPECT_EQ(p.session->model().past_len(), 7 + 4);
  // The same kernels on every rank: the same simulated clock.
  for (int r = 1; r < 3; ++r) EXPECT_EQ(ranks.sim_time(r), ranks.sim_time(0)) << "rank " << r;
}

TEST(SessionParallel, ARankFailureIsAUserErrorNamingTheRank) {
  Ranks ranks(3);
  expect_error([&] { generate_parallel(3, ranks.factory(2), kPrompts[0], tokens_at_most(3)); },
               {"a parallel rank failed (rank 2 of 3): no weights for this rank"});
  EXPECT_GT(ranks.sim_time(1), 0);  // rank 1 ran to the end and was joined
  EXPECT_EQ(ranks.sim_time(1), ranks.sim_time(0));
}

TEST(SessionParallel, RankZerosFailureIsRethrownAsItWas) {
  Ranks ranks(2);
  expect_error<SimEvent>([&] { generate_parallel(2, ranks.factory(0), kPrompts[0], tokens_at_most(3)); },
                         {"rank zero broke"});
  EXPECT_GT(ranks.sim_time(1), 0);
}

TEST(SessionParallel, InvalidInputsAreUserErrors) {
  Ranks ranks(2);
  expect_error([&] { generate_parallel(0, ranks.factory(), kPrompts[0], tokens_at_most(1)); },
               {"generate_parallel: 0 ranks"});
  // Every rank rejects it; whichever reports, the message says what is wrong.
  expect_error([&] { generate_parallel(2, ranks.factory(), {}, tokens_at_most(1)); }, {"the prompt is empty"});
}

// Tensor parallelism over 2 chips of a node: the shards' all-reduces meet across the rank threads.
struct TensorParallelRanks {
  NodeSpec node = load_node("zhenwu-8");
  std::vector<std::unique_ptr<Device>> devs;
  std::unique_ptr<ccl::Communicator> comm;
  explicit TensorParallelRanks(double timeout_s) {
    std::vector<Device*> ptrs;
    for (int r = 0; r < 2; ++r) {
      devs.push_back(std::make_unique<Device>(node.chip, ExecMode::kFunctional, 1));
      ptrs.push_back(devs.back().get());
    }
    ccl::CommOptions co;
    co.rendezvous_timeout_s = timeout_s;
    comm = std::make_unique<ccl::Communicator>(node, ptrs, co);
  }
  std::unique_ptr<Session> session(int r) {
    const std::string dir = fixture("qwen3-tiny");
    Qwen3Options o;
    o.max_context = 32;
    o.tp_size = 2;
    o.tp_rank = r;
    o.tp_comm = comm.get();
    return std::make_unique<Session>(*devs[static_cast<size_t>(r)], load_model_config(dir),
                                     Qwen3Weights::from_checkpoint(dir), o, SamplerOptions{});
  }
};

TEST(SessionParallel, TensorParallelRanksGenerateWhatOneChipDoes) {
  // The reference prompt, whose greedy choices have margins (the shards' bf16 partial sums differ
  // from one chip's within 1e-2, test_tensor_parallel.cpp).
  TensorParallelRanks tp(30.0);
  const std::vector<int32_t> want = reference_ids("generated_ids");
  const ParallelGeneration p = generate_parallel(2, [&](int r) { return tp.session(r); }, reference_ids("input_ids"),
                                                 tokens_at_most(std::ssize(want)));
  EXPECT_EQ(p.result.tokens.at(0), want);
  EXPECT_GT(p.session->model().op_times().at("tp all-reduce"), 0);
}

TEST(SessionParallel, TheCauseIsReportedNotTheTimeoutItLeavesBehind) {
  // Rank 1 fails to build; rank 0 then waits in its first all-reduce until the rendezvous times
  // out. The report names rank 1's error, which came first.
  TensorParallelRanks tp(0.5);
  expect_error(
      [&] {
        generate_parallel(
            2,
            [&](int r) -> std::unique_ptr<Session> {
              if (r == 1) throw UserError("rank one has no checkpoint");
              return tp.session(r);
            },
            kPrompts[0], tokens_at_most(3));
      },
      {"a parallel rank failed (rank 1 of 2): rank one has no checkpoint"});
}

}  // namespace
}  // namespace ppu
