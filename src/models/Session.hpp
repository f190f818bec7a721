// Session: text generation on a Qwen3Model - the one generation loop that `ppu run` and (later) the
// HTTP server share. A Session builds and owns a model and its sampler; generate() prefills the
// prompt, then decodes up to max_new_tokens, sampling on the device (Qwen3Model::forward_sampled),
// and reports the simulated and host times. One thread drives a Session at a time.
//
//   Device dev(load_chip("zhenwu-810e"));
//   Session s(dev, load_model_config("tiny"), Qwen3Weights::random(0), {}, {.temperature = 0});
//   GenerateOptions g;
//   g.max_new_tokens = 16;
//   g.stop_ids = {151645, 151643};                              // <|im_end|>, <|endoftext|>
//   g.on_token = [&](size_t, int32_t id) { stream(id); };     // as each token is chosen
//   GenerateResult r = s.generate(prompt_ids, g);             // r.tokens[0], r.prefill_time_s, ...
//
// Each decode step is launched as one captured graph (GenerateOptions::graph_decode, as serving
// engines replay CUDA graphs): only its simulated time is shorter.
//
// Several sequences at once (generate_batch) run as one static batch: the prompts are prefilled a
// group at a time (at most max_prefill_tokens prompt tokens per pass), then every decode step runs
// all of them. A model split over chips (tensor / expert parallelism) runs with generate_parallel:
// one host thread per rank, each with its own Session built by a factory on that thread, all
// running the same loop; rank 0 streams and reports, the others run silently.
//
// Timing-only devices compute no tokens: each step then feeds the placeholder timing_only_token(cfg)
// (= 1000 mod vocab_size, what `ppu run` has always fed) and reports it as the generated token. It
// is checked against stop_ids like any token, so a timing-only run generates max_new_tokens unless
// 1000 mod vocab_size is a stop id (no special token of the Qwen3 or Llama 3 vocabularies is).
//
// Not here: continuous batching (sequences joining or leaving a running batch: a finished sequence
// keeps its slot until the whole batch ends), chat templates and tokenization (the caller's; ids in,
// ids out), logits (forward_sampled keeps them on the device; tests that compare logits drive
// Qwen3Model::forward directly), cancellation of a running generation.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "models/Qwen3.hpp"
#include "models/Sampler.hpp"

namespace ppu {

struct GenerateOptions {
  // Tokens generated per sequence at most (0: the prompt is prefilled into the cache, nothing is
  // returned). Must be >= 0.
  int64_t max_new_tokens = 32;
  // A sequence ends after it generates one of these ids (the stop id is kept as its last token).
  std::vector<int32_t> stop_ids;
  // Prompt tokens per prefill pass: whole prompts are packed in order while their sum stays within
  // this (one prompt per pass at least, however long), as serving engines cap the tokens of one
  // scheduler step, so that a large batch needs activation memory for a group of prompts only.
  // `ppu run --batch` has always used 8192. Must be >= 1.
  int64_t max_prefill_tokens = 8192;
  // Launch each decode step as one captured graph (Device::begin_graph: the step's first kernel pays
  // the chip's launch_latency, the others graph_node_latency), as TensorRT-LLM and vLLM replay
  // captured CUDA graphs for decode. Prefill passes launch kernel by kernel either way, as those
  // engines run them. Only simulated time changes.
  bool graph_decode = true;
  // Called with (sequence index, token id) for every generated token, in the order chosen
  // (sequence by sequence within a step), on the calling thread; also for a stop id. An exception
  // it throws ends the generation and propagates. Empty: no call.
  std::function<void(size_t seq, int32_t token)> on_token;
};

struct GenerateResult {
  std::vector<std::vector<int32_t>> tokens;  // [sequences][generated]: each ends at its stop id or max_new_tokens
  double prefill_time_s = 0;  // simulated: every prefill pass, sampling included (the batch's time to first token)
  int64_t prefill_passes = 0;
  double decode_time_s = 0;   // simulated: every decode step
  int64_t decode_steps = 0;   // forward passes after the prefill (each runs every sequence of the batch)
  double host_prefill_s = 0;  // this host's wall time for the prefill passes
  double host_decode_s = 0;   // this host's wall time for the decode steps, on_token calls included
  // Simulated time of one decode step (decode_time_s / decode_steps); 0 when there was none.
  double time_per_output_token_s() const {
    return decode_steps > 0 ? decode_time_s / static_cast<double>(decode_steps) : 0.0;
  }
};

// The token a timing-only step feeds and reports: 1000 mod vocab_size.
int32_t timing_only_token(const ModelConfig& cfg);

class Session {
 public:
  // Builds the model on `dev` (Qwen3Model's constructor: UserError for a bad config or checkpoint,
  // DeviceOutOfMemory if it does not fit) and a sampler with `sampling` (UserError for bad options).
  // The session keeps a reference to `dev`, which must outlive it.
  Session(Device& dev, ModelConfig cfg, const Qwen3Weights& weights, const Qwen3Options& model_options,
          const SamplerOptions& sampling);

  // One sequence in slot 0: generate_batch({prompt}, opt).
  GenerateResult generate(const std::vector<int32_t>& prompt, const GenerateOptions& opt);
  // prompts[b] continues the KV cache of slot b from where it stands (position 0 on a new session;
  // model().reset() starts over; the last generated token is not in the cache). Prefill passes,
  // then decode steps until every sequence has stopped or generated max_new_tokens; a sequence that
  // has stopped rides along in later steps (fed its last token) with nothing recorded. Sampling
  // draws from this session's sampler in row order, so a seed reproduces a run.
  // UserError, before anything runs: no prompts or more than Qwen3Options::max_batch, an empty
  // prompt, max_new_tokens < 0, max_prefill_tokens < 1, or a sequence whose cached positions +
  // prompt + max_new_tokens - 1 exceed its slot's capacity (naming the prompt and the numbers).
  // A token id outside the vocabulary: the model's UserError from the pass that feeds it.
  GenerateResult generate_batch(const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& opt);

  Qwen3Model& model() { return model_; }
  const Qwen3Model& model() const { return model_; }
  Sampler& sampler() { return sampler_; }

 private:
  int64_t max_batch_;
  Qwen3Model model_;
  Sampler sampler_;
};

// Rank `rank`'s session of a split model, built on that rank's thread (rank 0: the caller's).
using SessionFactory = std::function<std::unique_ptr<Session>(int rank)>;

struct ParallelGeneration {
  std::unique_ptr<Session> session;  // rank 0's, for its reports (model().op_times(), memory, ...)
  GenerateResult result;             // rank 0's
};

// Runs `world` ranks of a split model (the per-rank collective calls of tensor / expert parallelism
// meet, so every rank must run at once): ranks 1 .. world-1 each on a new host thread that builds
// its session with make_session(rank) and generates `prompt` with `opt` minus on_token; rank 0 does
// the same on the calling thread with `opt` as given (on_token streams from rank 0 only). Every rank
// runs the same loop and stops on the same stop ids (within a tensor-parallel group the ranks sample
// the same tokens). All threads are joined before it returns or throws. Errors: world < 1 is a
// UserError; otherwise the first failure in time is reported (the others are usually its
// consequence, e.g. a rendezvous timeout of the ranks left waiting in a collective): rank 0's
// exception as it was thrown, another rank's as UserError "a parallel rank failed (rank r of world):
// <its message>". world 1: rank 0 alone on the calling thread.
ParallelGeneration generate_parallel(int world, const SessionFactory& make_session, const std::vector<int32_t>& prompt,
                                     const GenerateOptions& opt);

}  // namespace ppu
