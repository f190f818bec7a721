// Scheduler: iteration-level scheduling (continuous batching) over a paged KV cache - which tokens
// of which requests the next forward pass computes. One scheduler serves both clocks: the request
// simulation (serve/ServeSim, timing-only steps) and the functional engine feed it the same way.
//
// Each step has a token budget (max_batched_tokens) and a sequence cap (max_num_seqs). A request
// holds num_tokens = prompt + generated token ids, of which `computed` are in its KV cache; a step
// computes the next chunk of them. Running requests come first, in admission order: a decoding
// request needs one token, a request still prefilling takes what is left of the budget (chunked
// prefill: a long prompt is spread over several steps, mixed with the decodes of the others, as
// vLLM and SGLang run it). Then waiting requests are admitted first come, first served while the
// budget, the cap and the free blocks allow; a request that does not fit stops admission (no
// overtaking). A chunk that completes a request's known tokens makes the step sample its next token.
//
// KV blocks (serve/KvBlocks), two admission policies:
//  * kOnDemand (vLLM): blocks are taken as tokens are computed. When a running request cannot get
//    its next block, the most recently admitted running request is preempted by recompute: its
//    blocks are released and it goes back to the head of the queue, to be prefilled again (prompt
//    and generated tokens) when there is room. Prefix-cached blocks are matched at admission.
//  * kReserve (TensorRT-LLM's GUARANTEED_NO_EVICT): a request is admitted only if blocks for its
//    whole sequence (prompt + max_tokens) are free, and takes them all; nothing is ever preempted.
//
//   KvBlocks kv(4096, 16, true);
//   Scheduler s({.max_num_seqs = 64}, kv);
//   s.add({.id = 1, .prompt_len = 100, .max_tokens = 20});
//   StepPlan p = s.schedule();          // p.items: {1, start 0, count 100, samples}
//   ... run the forward ...
//   s.complete(p, sampled_ids);         // finished requests released
//
// Not here: priorities other than arrival order, speculative decoding, swapping KV to host memory,
// stop strings (the caller checks its tokens and calls abort()).
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "serve/KvBlocks.hpp"

namespace ppu::serve {

enum class Admission : uint8_t { kOnDemand, kReserve, kCount };
inline constexpr std::array<std::string_view, static_cast<size_t>(Admission::kCount)> kAdmissionNames = {"on-demand",
                                                                                                    "reserve"};

struct SchedulerConfig {
  int64_t max_num_seqs = 256;         // requests running at once (vLLM's max_num_seqs default)
  int64_t max_batched_tokens = 8192;  // tokens one step computes at most (vLLM's chunked-prefill budget)
  bool chunked_prefill = true;        // false: a prompt chunk must be the whole rest of the prompt
  Admission admission = Admission::kOnDemand;
  int64_t max_model_len = 0;          // prompt + max_tokens at most per request; 0: no limit but the cache
};

struct Request {
  uint64_t id = 0;
  int64_t prompt_len = 0;          // >= 1
  int64_t max_tokens = 1;          // tokens to generate at most, >= 1
  std::vector<int32_t> prompt;     // the ids (size prompt_len), or empty: lengths only (no prefix caching)
};

// One request's share of a step: computes its positions start .. start + count - 1.
struct StepItem {
  uint64_t id = 0;
  int64_t start = 0;
  int64_t count = 0;
  bool samples = false;  // the chunk reaches the request's last known token: the step samples one
};

struct StepPlan {
  std::vector<StepItem> items;
  int64_t tokens = 0;                 // sum of counts
  std::vector<uint64_t> preempted;    // requests sent back to the queue by this step
  bool empty() const { return items.empty(); }
};

// A request's state as the scheduler sees it.
struct SeqView {
  int64_t prompt_len = 0, generated = 0, computed = 0, preemptions = 0;
  int64_t prefix_hit = 0;  // positions taken from the prefix cache at its (last) admission
  bool running = false;
};

class Scheduler {
 public:
  // UserError for max_num_seqs, max_batched_tokens < 1 or max_model_len < 0. `kv` must outlive it.
  Scheduler(const SchedulerConfig& cfg, KvBlocks& kv);

  // Why `r` can never run (its sequence is longer than max_model_len, or than the whole cache
  // holds), as a message with the numbers; nullopt when it can. add() throws UserError with it.
  std::optional<std::string> never_fits(const Request& r) const;
  // Queues a request (UserError: prompt_len < 1, max_tokens < 1, prompt ids of another length, an
  // id already queued or running, or never_fits).
  void add(Request r);
  // The next step: running requests first, then admissions; empty when nothing can run (no
  // requests, or the head of the queue waits for blocks held by nobody - impossible once
  // never_fits passed).
  StepPlan schedule();
  // After the step ran: every item's chunk is computed; items that sample get the next id of
  // `sampled` (in item order; ignored when empty - lengths-only requests). Requests that reach
  // max_tokens finish and release their blocks; their ids are returned.
  std::vector<uint64_t> complete(const StepPlan& plan, const std::vector<int32_t>& sampled = {});
  // Ends a request now (a stop token, a stop string, a cancelled client): releases its blocks.
  // Unknown ids are ignored.
  void abort(uint64_t id);

  int64_t running() const { return static_cast<int64_t>(running_.size()); }
  int64_t waiting() const { return static_cast<int64_t>(waiting_.size()); }
  bool idle() const { return running_.empty() && waiting_.empty(); }
  const SeqView* view(uint64_t id) const;
  // Generated ids of a request (empty for lengths-only requests or unknown ids).
  std::vector<int32_t> generated_ids(uint64_t id) const;
  // Prompt + generated ids of a request (null for unknown ids; empty for lengths-only requests).
  const std::vector<int32_t>* tokens(uint64_t id) const;
  int64_t preemptions() const { return preemptions_; }
  const SchedulerConfig& config() const { return cfg_; }
  KvBlocks& kv() { return kv_; }

 private:
  struct Seq {
    Request req;
    std::vector<int32_t> tokens;  // prompt + generated ids (lengths-only: empty)
    SeqView v;
    int64_t num_tokens() const { return v.prompt_len + v.generated; }
  };
  // Sends running request `id` back to the head of the queue, releasing its blocks.
  void preempt(uint64_t id, StepPlan& plan);
  void remove(uint64_t id);

  SchedulerConfig cfg_;
  KvBlocks& kv_;
  std::unordered_map<uint64_t, Seq> seqs_;
  std::vector<uint64_t> running_;  // admission order
  std::deque<uint64_t> waiting_;   // arrival order (preempted ones at the front)
  int64_t preemptions_ = 0;
};

}  // namespace ppu::serve
