// Engine: the serving engine on real numbers - requests join and leave a running batch step by step
// (serve/Scheduler's continuous batching), each step one forward of the model on the emulated chip
// (Qwen3Model::forward_slots), each request sampled with its own options. The request simulation
// (serve/ServeSim) drives the same scheduler on the timing-only clock; this drives it with tokens.
//
//   Device dev(load_chip("zhenwu-810e"));
//   Qwen3Options mo;
//   mo.max_batch = 8;                                     // requests running at once (one KV slot each)
//   Qwen3Model model(dev, load_model_config("tiny"), Qwen3Weights::random(0), mo);
//   Engine engine(model, {});
//   engine.add({.id = 1, .prompt = ids, .sampling = {.max_tokens = 16}});
//   while (!engine.idle())
//     for (const TokenEvent& e : engine.step().events) stream(e.id, e.token, e.finish_reason);
//
// KV memory: each running request holds one of the model's sequence slots (max_context positions
// each, contiguous), assigned at admission and freed when it finishes or is preempted; the
// scheduler's block accounting (serve/KvBlocks, prefix caching off) covers exactly the slots, so it
// never preempts. Not here yet: attention that reads through block tables (so that blocks, not
// whole slots, are the unit of memory and prompts can share cached prefixes), stop strings (text:
// the server's, with the tokenizer), tensor/expert parallelism.
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
};

class Engine {
 public:
  // `model` (which must outlive the engine) gives the batch (Qwen3Options::max_batch requests at
  // once) and each request's context (max_context). Functional devices only (UserError otherwise:
  // ServeSim is the timing-only engine).
  Engine(Qwen3Model& model, const EngineConfig& cfg);

  // Queues a request. UserError naming the request: an empty prompt, a token id outside the
  // vocabulary, max_tokens < 1, prompt + max_tokens beyond the model's context, bad sampling options
  // (Sampler's checks; penalties outside [-2, 2]), an id already queued or running.
  void add(EngineRequest r);
  // Runs one step; empty when idle.
  EngineStep step();
  // Ends a request now and frees its slot (a client that went away). Unknown ids are ignored.
  void cancel(uint64_t id);

  bool idle() const { return sched_.idle(); }
  int64_t running() const { return sched_.running(); }
  int64_t waiting() const { return sched_.waiting(); }
  // The longest request, prompt + max_tokens (the model's context per slot, plus the last generated
  // token, which is never written to the cache).
  int64_t max_model_len() const { return sched_.config().max_model_len; }
  // KV cache blocks (of kv_block_size() positions) in use and in all.
  int64_t kv_blocks_used() const { return kv_.used_blocks(); }
  int64_t kv_blocks_total() const { return kv_.num_blocks(); }
  int64_t kv_block_size() const { return kv_.block_size(); }
  Qwen3Model& model() { return model_; }

 private:
  struct Live {
    SamplingParams params;
    std::unique_ptr<Sampler> sampler;
    std::unordered_map<int32_t, int64_t> counts;  // generated token -> times (for the penalties)
    int64_t slot = -1;
  };
  void release(uint64_t id);

  Qwen3Model& model_;
  KvBlocks kv_;
  Scheduler sched_;
  std::unordered_map<uint64_t, Live> live_;
  std::set<int64_t> free_slots_;  // a request takes the lowest
};

}  // namespace ppu::serve
