// serve/Scheduler: continuous batching over a paged KV cache - hand-worked schedules (chunked
// prefill, the token budget, the sequence cap, preemption by recompute, reserve admission, prefix
// hits) and the invariants of randomly drawn workloads run to completion.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>

#include "TestUtil.hpp"
#include "serve/Scheduler.hpp"

using namespace ppu::serve;

namespace {

// Runs the scheduler until idle, sampling token id 7 for every request; returns the plans.
std::vector<StepPlan> run_all(Scheduler& s, int max_steps = 100000) {
  std::vector<StepPlan> plans;
  while (!s.idle()) {
    StepPlan p = s.schedule();
    EXPECT_FALSE(p.empty()) << "empty step with requests queued";
    if (p.empty() || static_cast<int>(plans.size()) >= max_steps) break;
    std::vector<int32_t> sampled;
    for (const auto& it : p.items)
      if (it.samples) sampled.push_back(7);
    s.complete(p, sampled);
    plans.push_back(std::move(p));
  }
  return plans;
}

}  // namespace

TEST(Scheduler, OneRequestPrefillsThenDecodesOneTokenPerStep) {
  KvBlocks kv(100, 4, false);
  Scheduler s({}, kv);
  s.add({1, 10, 3, {}});
  StepPlan p = s.schedule();
  ASSERT_EQ(p.items.size(), 1u);
  EXPECT_EQ(p.items[0].start, 0);
  EXPECT_EQ(p.items[0].count, 10);
  EXPECT_TRUE(p.items[0].samples);
  EXPECT_TRUE(s.complete(p).empty());
  EXPECT_EQ(s.view(1)->generated, 1);
  p = s.schedule();
  ASSERT_EQ(p.items.size(), 1u);
  EXPECT_EQ(p.items[0].start, 10);  // the first generated token goes into the cache now
  EXPECT_EQ(p.items[0].count, 1);
  EXPECT_TRUE(s.complete(p).empty());
  p = s.schedule();
  EXPECT_EQ(p.items[0].start, 11);
  EXPECT_EQ(s.complete(p), std::vector<uint64_t>{1});  // the third token: done
  EXPECT_TRUE(s.idle());
  EXPECT_EQ(kv.used_blocks(), 0);
}

TEST(Scheduler, ChunkedPrefillSplitsALongPromptOverTheBudget) {
  KvBlocks kv(100, 4, false);
  Scheduler s({.max_num_seqs = 8, .max_batched_tokens = 8}, kv);
  s.add({1, 20, 2, {}});
  std::vector<int64_t> counts;
  std::vector<bool> samples;
  for (const auto& p : run_all(s)) {
    counts.push_back(p.items[0].count);
    samples.push_back(p.items[0].samples);
  }
  EXPECT_EQ(counts, (std::vector<int64_t>{8, 8, 4, 1}));
  EXPECT_EQ(samples, (std::vector<bool>{false, false, true, true}));
}

TEST(Scheduler, DecodesComeFirstAndAdmissionsTakeWhatIsLeft) {
  KvBlocks kv(100, 4, false);
  Scheduler s({.max_num_seqs = 8, .max_batched_tokens = 10}, kv);
  s.add({1, 6, 5, {}});
  StepPlan p = s.schedule();  // request 1 prefills 6
  s.complete(p);
  s.add({2, 30, 5, {}});
  p = s.schedule();
  ASSERT_EQ(p.items.size(), 2u);
  EXPECT_EQ(p.items[0].id, 1u);  // the decode first
  EXPECT_EQ(p.items[0].count, 1);
  EXPECT_EQ(p.items[1].id, 2u);  // then 9 of request 2's prompt
  EXPECT_EQ(p.items[1].count, 9);
  EXPECT_EQ(p.tokens, 10);
}

TEST(Scheduler, SequenceCapHoldsTheThirdRequestUntilOneFinishes) {
  KvBlocks kv(100, 4, false);
  Scheduler s({.max_num_seqs = 2, .max_batched_tokens = 100}, kv);
  s.add({1, 4, 2, {}});
  s.add({2, 4, 4, {}});
  s.add({3, 4, 1, {}});
  StepPlan p = s.schedule();
  EXPECT_EQ(p.items.size(), 2u);
  EXPECT_EQ(s.waiting(), 1);
  s.complete(p);
  p = s.schedule();  // request 1's second token finishes it
  EXPECT_EQ(p.items.size(), 2u);
  EXPECT_EQ(s.complete(p), std::vector<uint64_t>{1});
  p = s.schedule();
  ASSERT_EQ(p.items.size(), 2u);
  EXPECT_EQ(p.items[1].id, 3u);  // admitted now
}

TEST(Scheduler, NoChunkedPrefillWaitsForRoomForTheWholePrompt) {
  KvBlocks kv(100, 4, false);
  Scheduler s({.max_num_seqs = 8, .max_batched_tokens = 10, .chunked_prefill = false}, kv);
  s.add({1, 4, 3, {}});
  s.complete(s.schedule());
  s.add({2, 10, 1, {}});  // needs the whole budget; request 1's decode takes one token
  StepPlan p = s.schedule();
  ASSERT_EQ(p.items.size(), 1u);
  EXPECT_EQ(p.items[0].id, 1u);
  EXPECT_EQ(s.waiting(), 1);
  EXPECT_EQ(ppu::test::error_message([&] { s.add({3, 11, 1, {}}); }),
            "request 3: a prompt of 11 tokens exceeds the step's token budget of 10 and chunked prefill is off");
}

TEST(Scheduler, FullCachePreemptsTheLatestRequestWhichRecomputesEverything) {
  // 6 blocks of 4: two requests of 8-token prompts (2 blocks each) that grow to 8 + 9 - 1 = 16
  // positions (4 blocks each) cannot both finish at once.
  KvBlocks kv(6, 4, false);
  Scheduler s({.max_num_seqs = 8, .max_batched_tokens = 64}, kv);
  s.add({1, 8, 9, {}});
  s.add({2, 8, 9, {}});
  const auto plans = run_all(s);
  EXPECT_GT(s.preemptions(), 0);
  std::map<uint64_t, int> sampled;
  bool saw_recompute = false;
  for (const auto& p : plans) {
    int64_t tokens = 0;
    for (const auto& it : p.items) {
      tokens += it.count;
      if (it.samples) ++sampled[it.id];
      if (it.id == 2 && it.start == 0 && it.count > 8) saw_recompute = true;  // prompt + generated again
    }
    EXPECT_EQ(tokens, p.tokens);
    for (uint64_t v : p.preempted) EXPECT_EQ(v, 2u);  // always the later one
  }
  EXPECT_TRUE(saw_recompute);
  EXPECT_EQ(sampled[1], 9);
  EXPECT_EQ(sampled[2], 9);
  EXPECT_EQ(kv.used_blocks(), 0);
}

TEST(Scheduler, ReserveAdmissionTakesTheWholeSequenceAndNeverPreempts) {
  KvBlocks kv(6, 4, false);
  Scheduler s({.max_num_seqs = 8, .max_batched_tokens = 64, .admission = Admission::kReserve}, kv);
  s.add({1, 8, 9, {}});
  s.add({2, 8, 9, {}});
  StepPlan p = s.schedule();
  ASSERT_EQ(p.items.size(), 1u);  // request 1 reserved 4 blocks; 2 do not hold request 2
  EXPECT_EQ(kv.used_blocks(), 4);
  const auto plans = run_all(s);
  EXPECT_EQ(s.preemptions(), 0);
  EXPECT_EQ(kv.used_blocks(), 0);
}

TEST(Scheduler, SecondIdenticalPromptHitsThePrefixCache) {
  KvBlocks kv(32, 4, true);
  Scheduler s({}, kv);
  std::vector<int32_t> prompt(10);
  for (int i = 0; i < 10; ++i) prompt[static_cast<size_t>(i)] = 100 + i;
  s.add({1, 10, 3, prompt});
  s.complete(s.schedule(), {5});
  s.add({2, 10, 2, prompt});
  StepPlan p = s.schedule();
  ASSERT_EQ(p.items.size(), 2u);
  EXPECT_EQ(p.items[1].start, 8);  // two full blocks cached
  EXPECT_EQ(p.items[1].count, 2);
  EXPECT_EQ(s.view(2)->prefix_hit, 8);
  s.complete(p, {6, 9});
  EXPECT_EQ(s.generated_ids(1), (std::vector<int32_t>{5, 6}));
  EXPECT_EQ(s.generated_ids(2), (std::vector<int32_t>{9}));
}

TEST(Scheduler, AbortReleasesBlocksAndForgetsTheRequest) {
  KvBlocks kv(10, 4, false);
  Scheduler s({}, kv);
  s.add({1, 12, 4, {}});
  s.add({2, 4, 4, {}});
  StepPlan p = s.schedule();
  s.abort(1);  // while its step runs
  s.complete(p);
  EXPECT_EQ(s.view(1), nullptr);
  EXPECT_EQ(kv.table(1).size(), 0u);
  EXPECT_EQ(s.running(), 1);
  s.abort(42);  // unknown: ignored
}

TEST(Scheduler, RejectsBadRequestsWithTheNumbers) {
  KvBlocks kv(4, 4, false);
  Scheduler s({.max_model_len = 100}, kv);
  using ppu::test::error_message;
  EXPECT_EQ(error_message([&] { s.add({1, 0, 1, {}}); }), "request 1: prompt of 0 tokens; valid: at least 1");
  EXPECT_EQ(error_message([&] { s.add({1, 3, 0, {}}); }), "request 1: max_tokens 0; valid: at least 1");
  EXPECT_EQ(error_message([&] { s.add({1, 3, 1, {1, 2}}); }), "request 1: 2 prompt ids for a prompt_len of 3");
  EXPECT_EQ(error_message([&] { s.add({1, 90, 20, {}}); }),
            "request 1: 90 prompt tokens + 20 max_tokens = 110 exceeds the model's context of 100 tokens");
  EXPECT_EQ(error_message([&] { s.add({1, 10, 8, {}}); }),
            "request 1: 10 prompt tokens + 8 max_tokens need 5 KV blocks of 4 positions; the whole cache holds 4 blocks "
            "(16 positions)");
  s.add({1, 10, 7, {}});  // 16 positions: fits exactly
  EXPECT_EQ(error_message([&] { s.add({1, 1, 1, {}}); }), "request 1: that id is already queued or running");
  EXPECT_EQ(error_message([&] { Scheduler({.max_num_seqs = 0}, kv); }), "scheduler: max_num_seqs 0; valid: at least 1");
  EXPECT_EQ(error_message([&] { Scheduler({.max_batched_tokens = 0}, kv); }),
            "scheduler: max_batched_tokens 0; valid: at least 1");
}

// Random workloads under random limits: every step within the budget and the cap, each request at
// most once per step and starting where its cache ends, the cache never over-committed, every
// request sampled exactly max_tokens times, and first admissions in arrival order.
TEST(Scheduler, RandomWorkloadsKeepEveryInvariant) {
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 60; ++trial) {
    const int64_t block = 1 + static_cast<int64_t>(rng() % 8);
    const int64_t blocks = 8 + static_cast<int64_t>(rng() % 64);
    const bool chunked = rng() % 4 != 0;
    SchedulerConfig cfg{.max_num_seqs = 1 + static_cast<int64_t>(rng() % 6),
                        .max_batched_tokens = 4 + static_cast<int64_t>(rng() % 60),
                        .chunked_prefill = chunked,
                        .admission = rng() % 3 == 0 ? Admission::kReserve : Admission::kOnDemand};
    KvBlocks kv(blocks, block, rng() % 2 == 0);
    Scheduler s(cfg, kv);
    std::map<uint64_t, int64_t> want, got, computed;
    std::vector<uint64_t> first_seen;
    std::set<uint64_t> seen;
    uint64_t next_id = 0;
    int added = 0;
    for (int step = 0; step < 20000 && (added < 25 || !s.idle()); ++step) {
      // Arrivals: up to 2 per step, 25 in all, lengths that fit the cache.
      for (int a = static_cast<int>(rng() % 3); a > 0 && added < 25; --a, ++added) {
        Request r{next_id++, 1 + static_cast<int64_t>(rng() % 40), 1 + static_cast<int64_t>(rng() % 12), {}};
        if (rng() % 2) {
          r.prompt.resize(static_cast<size_t>(r.prompt_len));
          for (auto& t : r.prompt) t = static_cast<int32_t>(rng() % 3);  // shared prefixes happen
        }
        if (s.never_fits(r)) continue;
        want[r.id] = r.max_tokens;
        s.add(r);
      }
      if (s.idle()) continue;
      StepPlan p = s.schedule();
      ASSERT_FALSE(p.empty());
      ASSERT_LE(p.tokens, cfg.max_batched_tokens);
      ASSERT_LE(static_cast<int64_t>(p.items.size()), cfg.max_num_seqs);
      ASSERT_LE(kv.used_blocks(), blocks);
      for (uint64_t v : p.preempted) computed[v] = 0;
      std::set<uint64_t> in_step;
      std::vector<int32_t> sampled;
      for (const auto& it : p.items) {
        ASSERT_TRUE(in_step.insert(it.id).second);
        ASSERT_GE(it.count, 1);
        const SeqView* v = s.view(it.id);
        ASSERT_NE(v, nullptr);
        // A fresh admission may start at its prefix hit; otherwise where the last step left it.
        if (computed.count(it.id) && computed[it.id] > 0) {
          ASSERT_EQ(it.start, computed[it.id]);
        } else {
          ASSERT_EQ(it.start % block, 0);  // 0, or a whole number of cached blocks
        }
        ASSERT_GE(static_cast<int64_t>(kv.table(it.id).size()) * block, it.start + it.count);
        if (!seen.count(it.id)) {
          seen.insert(it.id);
          first_seen.push_back(it.id);
        }
        if (it.samples) sampled.push_back(static_cast<int32_t>(rng() % 3));
      }
      s.complete(p, sampled);
      for (const auto& it : p.items) {
        computed[it.id] = it.start + it.count;
        if (it.samples) ++got[it.id];
      }
    }
    ASSERT_TRUE(s.idle()) << "trial " << trial;
    EXPECT_EQ(got, want) << "trial " << trial;
    EXPECT_TRUE(std::is_sorted(first_seen.begin(), first_seen.end())) << "trial " << trial;
    EXPECT_EQ(kv.used_blocks(), 0);
    if (cfg.admission == Admission::kReserve) {
      EXPECT_EQ(s.preemptions(), 0);
    }
  }
}
