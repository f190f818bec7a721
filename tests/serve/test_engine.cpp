// serve/Engine: continuous batching on real numbers. Requests that join and leave a running batch
// (chunked prefill mixed with decodes, slots reused) get exactly the tokens each gets alone from
// models/Session; per-request sampling, stop ids, penalties, cancellation and bad requests.
#include <gtest/gtest.h>

#include <map>

#include <fmt/format.h>

#include "TestUtil.hpp"
#include "arch/Presets.hpp"
#include "models/Session.hpp"
#include "serve/Engine.hpp"

using namespace ppu;
using namespace ppu::serve;

namespace {

const std::vector<std::vector<int32_t>> kPrompts = {
    {5, 17, 300, 42, 9, 77, 1}, {200, 3}, {11, 12, 13, 14}, {7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7}, {90}};

struct Fixture {
  Device dev{load_chip("zhenwu-810e"), ExecMode::kFunctional, 1};
  std::unique_ptr<Qwen3Model> model;
  explicit Fixture(int64_t slots, int64_t context = 48) {
    const std::string dir = test::fixture("qwen3-tiny");
    Qwen3Options o;
    o.max_batch = slots;
    o.max_context = context;
    model = std::make_unique<Qwen3Model>(dev, load_model_config(dir), Qwen3Weights::from_checkpoint(dir), o);
  }
};

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

TEST(Engine, RequestsJoiningARunningBatchGetWhatEachGetsAlone) {
  Fixture f(3);  // 3 slots for 5 requests: later ones wait for a slot, slots are reused
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
}

TEST(Engine, SeededSamplingStopIdsAndReasons) {
  Fixture f(2);
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

TEST(Engine, PenaltiesLowerTheLogitsOfGeneratedTokens) {
  // A prompt that greedy decoding repeats from; a large frequency penalty forbids repeats.
  Fixture f(1);
  Engine e(*f.model, {});
  e.add({1, kPrompts[3], {.max_tokens = 12, .frequency_penalty = 2.0}});
  const auto got = drain(e).at(1);
  const auto plain = alone(kPrompts[3], 12);
  std::map<int32_t, int> seen_plain, seen;
  for (int32_t t : plain) ++seen_plain[t];
  for (int32_t t : got) ++seen[t];
  EXPECT_GT(seen.size(), seen_plain.size()) << "the penalty should spread the tokens";
}

TEST(Engine, CancelFreesTheSlotForTheNextRequest) {
  Fixture f(1);
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
  EXPECT_EQ(got.at(2), alone(kPrompts[2], 3));  // on the reused slot, from position 0
  e.cancel(99);  // unknown: ignored
}

TEST(Engine, BadRequestsAreUserErrorsNamingThem) {
  Fixture f(1, 16);
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

TEST(Engine, ForwardSlotsContinuesAnySlotAndRejectsBadOnes) {
  Fixture f(3);
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
