// Engine: the serving engine on real numbers - requests join and leave a running batch step by step
// (serve/Scheduler's continuous batching), each step one forward of the model on the emulated chip
// (Qwen3Model::forward_paged), each request sampled with its own options. The request simulation
// (serve/ServeSim) drives the same scheduler on the timing-only clock; this drives it with tokens.
//
//   Device dev(load_chip("zhenwu-810e"));
//   Qwen3Options mo;
//   mo.max_batch = 8;                                     // requests running at once
//   mo.max_context = 2047;                                // positions per request
//   mo.kv_block_size = 16;                                // a paged KV cache ...
//   mo.kv_blocks = 8 * 128;                               // ... of 1024 blocks (8 x 2048 positions)
//   Qwen3Model model(dev, load_model_config("tiny"), Qwen3Weights::random(0), mo);
//   Engine engine(model, {});
//   engine.add({.id = 1, .prompt = ids, .sampling = {.max_tokens = 16}});
//   while (!engine.idle())
//     for (const TokenEvent& e : engine.step().events) stream(e.id, e.token, e.finish_reason);
//
// KV memory, as the model keeps it (Qwen3Options):
//  * a paged model (kv_block_size > 0; what `ppu serve` builds): vLLM's way. serve/KvBlocks manages
//    the model's pool (its blocks, of its block size), with prefix caching on: a request whose
//    prompt starts with full blocks another request computed takes them by reference and its first
//    step starts after them (StepItem::start). Admission is on demand: blocks are taken as tokens
//    are computed, and when a running request cannot get its next block the latest admitted one is
//    preempted by recompute (its blocks released, prefilled again later from its prompt and
//    generated tokens - the same tokens come out, since the sampler is not replayed). Finishing or
//    cancelling releases a request's blocks (registered full ones stay cached until evicted). Only
//    full blocks are shared, and a full block is never written again, so there is no copy-on-write.
//    Each step passes every request's block table and past length to forward_paged.
//  * contiguous slots (the default model; kept for callers that build one): each running request
//    holds one sequence slot (max_context positions), assigned at admission and freed when it
//    finishes; admission reserves the whole sequence, prefix caching is off and nothing is
//    preempted.
// Not here: stop strings (text: the server's, with the tokenizer), tensor/expert parallelism (one
// thread drives one model), swapping KV blocks to host memory.
//
// Deterministic: the same requests added in the same order between the same steps give the same
// tokens (each request's sampler is seeded by its own options). One thread drives an Engine.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "models/Qwen3.hpp"
#include "models/Sampler.hpp"
#include "serve/KvBlocks.hpp"
#include "serve/SamplingParams.hpp"
#include "serve/Scheduler.hpp"

namespace ppu::serve {

struct EngineRequest {
  uint64_t id = 0;
  std::vector<int32_t> prompt;
  SamplingParams sampling;
};

struct TokenEvent {
  uint64_t id = 0;
  int32_t token = 0;
  // "" while the request goes on; "stop" (a stop id), "length" (max_tokens).
  std::string finish_reason;
};

struct EngineStep {
  std::vector<TokenEvent> events;  // in the step's request order
  int64_t requests = 0, tokens = 0;
  double sim_time_s = 0;           // simulated time of the step's forward on the chip
};

struct EngineConfig {
  int64_t max_batched_tokens = 8192;  // tokens one step computes at most
  bool chunked_prefill = true;
  bool prefix_caching = true;         // paged models only (contiguous slots never share)
};

// What serve/Server drives: the Engine below, or a test's stand-in at this boundary (tests/serve's
// ScriptedEngine replays recorded model outputs). One thread drives it; the calls are Engine's.
class ServingEngine {
 public:
  virtual ~ServingEngine() = default;
  virtual void add(EngineRequest r) = 0;
  virtual EngineStep step() = 0;
  virtual void cancel(uint64_t id) = 0;
  virtual bool idle() const = 0;
  virtual int64_t running() const = 0;
  virtual int64_t waiting() const = 0;
  virtual int64_t max_model_len() const = 0;
  virtual int64_t kv_blocks_used() const = 0;
  virtual int64_t kv_blocks_total() const = 0;
  virtual int64_t max_batch() const = 0;   // requests running at once
  virtual int64_t vocab_size() const = 0;  // token ids are 0 .. vocab_size - 1
};

class Engine final : public ServingEngine {
 public:
  // `model` (which must outlive the engine) gives the batch (Qwen3Options::max_batch requests at
  // once), each request's context (max_context) and the KV memory (a paged pool, or one slot per
  // request; see the file header). Functional devices only (UserError otherwise: ServeSim is the
  // timing-only engine), or for a shard of a tensor/expert-parallel split. The engine assumes it is
  // the model's only user.
  Engine(Qwen3Model& model, const EngineConfig& cfg);

  // Queues a request. UserError naming the request: an empty prompt, a token id outside the
  // vocabulary, max_tokens < 1, prompt + max_tokens beyond the model's context, bad sampling options
  // (Sampler's checks; penalties outside [-2, 2]), an id already queued or running.
  void add(EngineRequest r) override;
  // Runs one step; empty when idle.
  EngineStep step() override;
  // Ends a request now and frees its KV blocks or slot (a client that went away). Unknown ids are
  // ignored.
  void cancel(uint64_t id) override;

  bool idle() const override { return sched_.idle(); }
  int64_t running() const override { return sched_.running(); }
  int64_t waiting() const override { return sched_.waiting(); }
  // The longest request, prompt + max_tokens (the model's context per sequence, plus the last
  // generated token, which is never written to the cache). A paged pool smaller than that refuses
  // longer requests at add() (Scheduler::never_fits).
  int64_t max_model_len() const override { return sched_.config().max_model_len; }
  // KV cache blocks (of kv_block_size() positions) referenced by a request, and in all. Paged: the
  // model's pool (kv_blocks, kv_block_size); cached prefix blocks no request holds are not in use.
  // Contiguous slots: each slot counted as the blocks of 16 positions that cover it.
  int64_t kv_blocks_used() const override { return kv_.used_blocks(); }
  int64_t kv_blocks_total() const override { return kv_.num_blocks(); }
  int64_t kv_block_size() const { return kv_.block_size(); }
  // Prompt positions found in the prefix cache (not computed) since construction, and requests
  // preempted by recompute (both 0 on contiguous slots).
  int64_t prefix_hit_positions() const { return kv_.prefix_hit_positions(); }
  int64_t preemptions() const { return sched_.preemptions(); }
  int64_t max_batch() const override { return model_.max_batch(); }
  int64_t vocab_size() const override { return model_.config().vocab_size; }
  Qwen3Model& model() { return model_; }

 private:
  struct Live {
    SamplingParams params;
    std::unique_ptr<Sampler> sampler;
    std::unordered_map<int32_t, int64_t> counts;  // generated token -> times (for the penalties)
    int64_t slot = -1;  // contiguous slots only
  };
  void release(uint64_t id);
  ForwardResult forward(const StepPlan& plan);

  Qwen3Model& model_;
  KvBlocks kv_;
  Scheduler sched_;
  std::unordered_map<uint64_t, Live> live_;
  std::set<int64_t> free_slots_;  // a request takes the lowest
};

}  // namespace ppu::serve
