// serve/Engine: continuous batching on real numbers. Requests that join and leave a running batch
// (chunked prefill mixed with decodes, memory reused) get exactly the tokens each gets alone from
// models/Session; per-request sampling, stop ids, penalties, cancellation and bad requests - on a
// paged KV cache (what `ppu serve` runs) and on contiguous slots (the Kv parameter). Paged only:
// prompts with a common prefix share its full blocks, preemption by recompute under a tiny pool,
// and every block freed when requests finish or are cancelled - all with the tokens of each alone.
#include <gtest/gtest.h>

#include <map>

#include <fmt/format.h>

#include "TestUtil.hpp"
#include "arch/NodeSpec.hpp"
#include "arch/Presets.hpp"
#include "models/Qwen3TestUtil.hpp"
#include "models/Session.hpp"
#include "serve/Engine.hpp"

using namespace ppu;
using namespace ppu::serve;

namespace {

const std::vector<std::vector<int32_t>> kPrompts = {
    {5, 17, 300, 42, 9, 77, 1}, {200, 3}, {11, 12, 13, 14}, {7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7}, {90}};

enum class Kv { kPaged, kSlots };

// Blocks of 4 positions: the test prompts (up to 13 tokens) span several, so blocks are shared,
// taken and freed within a few steps.
constexpr int64_t kBlockSize = 4;

struct Fixture {
  Device dev{load_chip("zhenwu-810e"), ExecMode::kFunctional, 1};
  std::unique_ptr<Qwen3Model> model;
  // `seqs` requests at once of `context` positions each; paged: a pool of `blocks` blocks (0: as
  // many as seqs x context positions need).
  explicit Fixture(int64_t seqs, int64_t context = 48, Kv kv = Kv::kPaged, int64_t blocks = 0) {
    const std::string dir = test::fixture("qwen3-tiny");
    Qwen3Options o;
    o.max_batch = seqs;
    o.max_context = context;
    if (kv == Kv::kPaged) {
      o.kv_block_size = kBlockSize;
      o.kv_blocks = blocks > 0 ? blocks : seqs * ((context + kBlockSize - 1) / kBlockSize);
    }
    model = std::make_unique<Qwen3Model>(dev, load_model_config(dir), Qwen3Weights::from_checkpoint(dir), o);
  }
};

class EngineKv : public ::testing::TestWithParam<Kv> {};

// What one request generates alone (greedy unless `opt` says otherwise).
std::vector<int32_t> alone(const std::vector<int32_t>& prompt, int64_t n, const SamplerOptions& opt = {},
                           std::vector<int32_t> stop = {}) {
  Device dev(load_chip("zhenwu-810e"), ExecMode::kFunctional, 1);
  const std::string dir = test::fixture("qwen3-tiny");
  Qwen3Options o;
  o.max_context = 48;
  Session s(dev, load_model_config(dir), Qwen3Weights::from_checkpoint(dir), o, opt);
  GenerateOptions g;
  g.max_new_tokens = n;
  g.stop_ids = std::move(stop);
  return s.generate(prompt, g).tokens.at(0);
}

// Runs the engine to idle, collecting each request's tokens and finish reason.
std::map<uint64_t, std::vector<int32_t>> drain(Engine& e, std::map<uint64_t, std::string>* reasons = nullptr,
                                               const std::function<void(int)>& between = {}) {
  std::map<uint64_t, std::vector<int32_t>> got;
  for (int step = 0; !e.idle() && step < 1000; ++step) {
    for (const TokenEvent& ev : e.step().events) {
      got[ev.id].push_back(ev.token);
      if (!ev.finish_reason.empty() && reasons) (*reasons)[ev.id] = ev.finish_reason;
    }
    if (between) between(step);
  }
  return got;
}

}  // namespace

TEST_P(EngineKv, RequestsJoiningARunningBatchGetWhatEachGetsAlone) {
  Fixture f(3, 48, GetParam());  // 3 at once for 5 requests: later ones wait, memory is reused
  Engine e(*f.model, {.max_batched_tokens = 6});  // prompts of 7 and 13 tokens are chunked
  const std::vector<int64_t> max_tokens = {6, 9, 4, 5, 7};
  e.add({0, kPrompts[0], {.max_tokens = max_tokens[0]}});
  e.add({1, kPrompts[1], {.max_tokens = max_tokens[1]}});
  const auto got = drain(e, nullptr, [&](int step) {
    if (step == 1) e.add({2, kPrompts[2], {.max_tokens = max_tokens[2]}});  // joins mid-decode
    if (step == 2) e.add({3, kPrompts[3], {.max_tokens = max_tokens[3]}});
    if (step == 4) e.add({4, kPrompts[4], {.max_tokens = max_tokens[4]}});
  });
  ASSERT_EQ(got.size(), 5u);
  for (uint64_t id = 0; id < 5; ++id) EXPECT_EQ(got.at(id), alone(kPrompts[id], max_tokens[id])) << "request " << id;
  EXPECT_EQ(e.running(), 0);
  EXPECT_EQ(e.kv_blocks_used(), 0);
}

TEST_P(EngineKv, SeededSamplingStopIdsAndReasons) {
  Fixture f(2, 48, GetParam());
  Engine e(*f.model, {});
  const SamplerOptions hot{.temperature = 0.9, .top_k = 20, .top_p = 0.95, .seed = 7};
  const auto want_hot = alone(kPrompts[0], 8, hot);
  const auto greedy = alone(kPrompts[1], 10);
  e.add({1, kPrompts[0], {.temperature = 0.9, .top_p = 0.95, .top_k = 20, .seed = 7, .max_tokens = 8}});
  e.add({2, kPrompts[1], {.max_tokens = 10, .stop_ids = {greedy[3]}}});  // ends at its 4th token
  std::map<uint64_t, std::string> why;
  const auto got = drain(e, &why);
  EXPECT_EQ(got.at(1), want_hot);
  EXPECT_EQ(why.at(1), "length");
  const std::vector<int32_t> upto(greedy.begin(), std::find(greedy.begin(), greedy.end(), greedy[3]) + 1);
  EXPECT_EQ(got.at(2), upto);
  EXPECT_EQ(why.at(2), "stop");
}

TEST_P(EngineKv, PenaltiesLowerTheLogitsOfGeneratedTokens) {
  // A prompt that greedy decoding repeats from; a large frequency penalty forbids repeats.
  Fixture f(1, 48, GetParam());
  Engine e(*f.model, {});
  e.add({1, kPrompts[3], {.max_tokens = 12, .frequency_penalty = 2.0}});
  const auto got = drain(e).at(1);
  const auto plain = alone(kPrompts[3], 12);
  std::map<int32_t, int> seen_plain, seen;
  for (int32_t t : plain) ++seen_plain[t];
  for (int32_t t : got) ++seen[t];
  EXPECT_GT(seen.size(), seen_plain.size()) << "the penalty should spread the tokens";
}

TEST_P(EngineKv, CancelFreesTheSlotForTheNextRequest) {
  Fixture f(1, 48, GetParam());
  Engine e(*f.model, {});
  e.add({1, kPrompts[0], {.max_tokens = 20}});
  e.add({2, kPrompts[2], {.max_tokens = 3}});
  e.step();
  e.step();
  EXPECT_EQ(e.running(), 1);
  EXPECT_EQ(e.waiting(), 1);
  e.cancel(1);
  const auto got = drain(e);
  EXPECT_EQ(got.count(1), 0u);
  EXPECT_EQ(got.at(2), alone(kPrompts[2], 3));  // on the reused memory, from position 0
  EXPECT_EQ(e.kv_blocks_used(), 0);
  e.cancel(99);  // unknown: ignored
}

TEST_P(EngineKv, BadRequestsAreUserErrorsNamingThem) {
  Fixture f(1, 16, GetParam());
  Engine e(*f.model, {});
  using test::error_message;
  EXPECT_EQ(error_message([&] { e.add({1, {}, {}}); }), "request 1: empty prompt");
  EXPECT_EQ(error_message([&] { e.add({1, {5, 999999}, {}}); }),
            fmt::format("request 1: prompt token 1 is id 999999; the model's vocabulary is 0 .. {}",
                        f.model->config().vocab_size - 1));
  EXPECT_EQ(error_message([&] { e.add({1, {5}, {.max_tokens = 0}}); }), "request 1: max_tokens 0; valid: at least 1");
  EXPECT_EQ(error_message([&] { e.add({1, {5}, {.max_tokens = 20}}); }),
            "request 1: 1 prompt tokens + 20 max_tokens = 21 exceeds the model's context of 17 tokens");
  EXPECT_EQ(error_message([&] { e.add({1, {5}, {.presence_penalty = 3}}); }), "request 1: presence_penalty 3; valid: -2 .. 2");
  test::expect_error([&] { e.add({1, {5}, {.temperature = -1}}); }, {"temperature"});
  e.add({1, {5}, {}});
  EXPECT_EQ(error_message([&] { e.add({1, {6}, {}}); }), "request 1: that id is already queued or running");
  Device timing(load_chip("zhenwu-810e"), ExecMode::kTimingOnly);
  Qwen3Model m(timing, load_model_config("tiny"), Qwen3Weights::random(0), {});
  test::expect_error([&] { Engine(m, {}); }, {"the model's device is timing-only"});
}

INSTANTIATE_TEST_SUITE_P(Kv, EngineKv, ::testing::Values(Kv::kPaged, Kv::kSlots),
                         [](const ::testing::TestParamInfo<Kv>& i) { return i.param == Kv::kPaged ? "paged" : "slots"; });

TEST(Engine, APagedEngineUsesTheModelsPool) {
  Fixture f(2, 48, Kv::kPaged, 30);
  Engine e(*f.model, {});
  EXPECT_EQ(e.kv_blocks_total(), 30);
  EXPECT_EQ(e.kv_block_size(), kBlockSize);
  EXPECT_EQ(e.max_model_len(), 49);
  Fixture g(2, 48, Kv::kSlots);
  Engine s(*g.model, {});
  EXPECT_EQ(s.kv_blocks_total(), 2 * 3);  // two slots of 48 positions, counted in blocks of 16
  EXPECT_EQ(s.kv_block_size(), 16);
}

TEST(Engine, PromptsWithACommonPrefixShareItsBlocks) {
  // 10 common tokens: two full blocks of 4 (positions 0..7) are shareable. Request 1 computes them;
  // request 2 (same prefix, another tail) joins while 1 decodes and request 3 (the same prompt as 1)
  // after 1 finished, when the blocks are cached but held by nobody. Each takes the 8 positions
  // from the cache, computes from position 8 on, and gets exactly its tokens alone.
  const std::vector<int32_t> common = {5, 17, 300, 42, 9, 77, 1, 8, 123, 456};
  std::vector<int32_t> p1 = common, p2 = common;
  p1.insert(p1.end(), {3, 14});
  p2.insert(p2.end(), {250, 251, 252});
  Fixture f(2);
  Engine e(*f.model, {});
  std::map<uint64_t, std::vector<int32_t>> got;
  auto run = [&](int steps) {
    for (int i = 0; i < steps && !e.idle(); ++i)
      for (const TokenEvent& ev : e.step().events) got[ev.id].push_back(ev.token);
  };
  e.add({1, p1, {.max_tokens = 6}});
  run(1);  // 1's prompt computed: its full blocks are registered
  EXPECT_EQ(e.prefix_hit_positions(), 0);
  EXPECT_EQ(e.kv_blocks_used(), 3);  // 12 positions (blocks are taken as positions are computed)
  e.add({2, p2, {.max_tokens = 5}});
  run(1);
  EXPECT_EQ(e.prefix_hit_positions(), 8);
  // 1 decodes position 12 (a 4th block); 2 holds 1's first 2 blocks and 2 of its own (positions
  // 8..12): 6 blocks in use, where unshared copies would take 8.
  EXPECT_EQ(e.kv_blocks_used(), 6);
  run(1000);
  EXPECT_EQ(e.kv_blocks_used(), 0);  // finished: cached blocks are free to take
  e.add({3, p1, {.max_tokens = 6}});
  run(1000);
  EXPECT_EQ(e.prefix_hit_positions(), 16);
  EXPECT_EQ(got.at(1), alone(p1, 6));
  EXPECT_EQ(got.at(2), alone(p2, 5));
  EXPECT_EQ(got.at(3), got.at(1));
  EXPECT_EQ(e.kv_blocks_used(), 0);
}

TEST(Engine, PrefixCachingOffSharesNothing) {
  Fixture f(2);
  Engine e(*f.model, {.prefix_caching = false});
  e.add({1, kPrompts[3], {.max_tokens = 3}});
  e.add({2, kPrompts[3], {.max_tokens = 3}});
  const auto got = drain(e);
  EXPECT_EQ(e.prefix_hit_positions(), 0);
  EXPECT_EQ(got.at(1), alone(kPrompts[3], 3));
  EXPECT_EQ(got.at(2), got.at(1));
}

TEST(Engine, PreemptionByRecomputeUnderATinyPoolGivesTheSameTokens) {
  // 3 requests of 7 + 13 + 4 prompt tokens, each growing by 10 (up to 4, 6 and 4 blocks), in a pool
  // of 8 blocks: the latest admitted are preempted (blocks freed, prefilled again with their
  // generated tokens) and finish later. Greedy and seeded sampling both come out as alone: a
  // recompute never samples again what was already sampled.
  Fixture f(3, 48, Kv::kPaged, 8);
  Engine e(*f.model, {});
  const SamplerOptions hot{.temperature = 0.8, .top_k = 30, .top_p = 0.9, .seed = 3};
  e.add({0, kPrompts[0], {.max_tokens = 10}});
  e.add({1, kPrompts[3], {.temperature = 0.8, .top_p = 0.9, .top_k = 30, .seed = 3, .max_tokens = 10}});
  e.add({2, kPrompts[2], {.max_tokens = 10}});
  int64_t peak = 0;
  std::map<uint64_t, std::vector<int32_t>> got;
  for (int step = 0; !e.idle() && step < 1000; ++step) {
    for (const TokenEvent& ev : e.step().events) got[ev.id].push_back(ev.token);
    peak = std::max(peak, e.kv_blocks_used());
  }
  EXPECT_GT(e.preemptions(), 0);
  EXPECT_LE(peak, 8);
  EXPECT_EQ(got.at(0), alone(kPrompts[0], 10));
  EXPECT_EQ(got.at(1), alone(kPrompts[3], 10, hot));
  EXPECT_EQ(got.at(2), alone(kPrompts[2], 10));
  EXPECT_EQ(e.kv_blocks_used(), 0);
}

TEST(Engine, CancellingRunningAndWaitingRequestsFreesEveryBlock) {
  Fixture f(2, 48, Kv::kPaged, 12);
  Engine e(*f.model, {.max_batched_tokens = 8});
  e.add({1, kPrompts[3], {.max_tokens = 20}});  // 13 tokens: prefilled in two chunks
  e.add({2, kPrompts[0], {.max_tokens = 20}});
  e.add({3, kPrompts[2], {.max_tokens = 20}});  // waits: 2 at once
  e.step();
  e.step();
  e.step();
  EXPECT_EQ(e.running(), 2);
  EXPECT_EQ(e.waiting(), 1);
  EXPECT_GT(e.kv_blocks_used(), 0);
  e.cancel(2);
  e.cancel(3);
  e.step();
  e.cancel(1);
  EXPECT_TRUE(e.idle());
  EXPECT_EQ(e.kv_blocks_used(), 0);
  // The pool is whole again: a request needing most of it runs, with its tokens alone.
  e.add({4, kPrompts[0], {.max_tokens = 30}});
  EXPECT_EQ(drain(e).at(4), alone(kPrompts[0], 30));
  EXPECT_EQ(e.kv_blocks_used(), 0);
}

TEST(Engine, AShardOfATensorParallelSplitIsRefused) {
  // One thread drives an engine; a TP shard's forward needs every shard's at once.
  const std::string dir = test::fixture("qwen3-tiny");
  const auto errors = test::on_ranks(load_node("zhenwu-8"), 2, [&](int r, Device& dev, ccl::Communicator& comm) {
    Qwen3Options o;
    o.tp_size = 2;
    o.tp_rank = r;
    o.tp_comm = &comm;
    o.kv_block_size = kBlockSize;
    o.kv_blocks = 8;
    Qwen3Model m(dev, load_model_config(dir), Qwen3Weights::from_checkpoint(dir), o);
    Engine e(m, {});
  });
  for (const std::string& err : errors)
    EXPECT_NE(err.find("serving engine: the model is one shard of a split (tp_size 2, ep_size 1)"), std::string::npos)
        << err;
}

TEST(Engine, ARequestLargerThanThePoolIsRefused) {
  Fixture f(1, 48, Kv::kPaged, 3);  // 12 positions
  Engine e(*f.model, {});
  EXPECT_EQ(test::error_message([&] { e.add({1, kPrompts[0], {.max_tokens = 7}}); }),
            "request 1: 7 prompt tokens + 7 max_tokens need 4 KV blocks of 4 positions; the whole cache holds 3 blocks "
            "(12 positions)");
  e.add({1, kPrompts[0], {.max_tokens = 6}});  // 12 positions: fits
  EXPECT_EQ(drain(e).at(1), alone(kPrompts[0], 6));
}

TEST(Engine, ForwardSlotsContinuesAnySlotAndRejectsBadOnes) {
  Fixture f(3, 48, Kv::kSlots);
  Qwen3Model& m = *f.model;
  // Slot 2 then slot 0, in one pass: each continues its own cache.
  const ForwardResult r = m.forward_slots({kPrompts[0], kPrompts[1]}, {2, 0});
  EXPECT_EQ(m.past_len(2), static_cast<int64_t>(kPrompts[0].size()));
  EXPECT_EQ(m.past_len(0), static_cast<int64_t>(kPrompts[1].size()));
  EXPECT_EQ(m.past_len(1), 0);
  EXPECT_EQ(r.rows, 2);
  m.reset_slot(2);
  EXPECT_EQ(m.past_len(2), 0);
  using test::error_message;
  EXPECT_EQ(error_message([&] { m.forward_slots({kPrompts[0]}, {0, 1}); }),
            "forward_slots: 1 sequences and 2 slots; give one slot per sequence");
  EXPECT_EQ(error_message([&] { m.forward_slots({kPrompts[0], kPrompts[1]}, {1, 1}); }),
            "forward: sequences 0 and 1 both continue slot 1");
  EXPECT_EQ(error_message([&] { m.forward_slots({kPrompts[0]}, {3}); }),
            "forward: 1 sequences in slots 3 .. 3; this model was built for 1 to 3 (slots 0 .. 2, Qwen3Options::max_batch)");
  EXPECT_EQ(error_message([&] { m.reset_slot(5); }), "reset_slot: slot 5; this model has 3 (Qwen3Options::max_batch)");
}
