// ServeSim: request-level simulation of a serving engine on one chip - requests arrive, the
// scheduler (serve/Scheduler) batches them step by step over a paged KV cache (serve/KvBlocks), and
// each step advances a simulated clock by its time on the chip (serve/StepCost: the model's own
// kernels in timing-only mode, cached by shape). What it reports is what a serving benchmark
// (vLLM's benchmark_serving, genai-perf) measures on real hardware: time to first token (TTFT),
// time per output token after the first (TPOT), inter-token latency (ITL), end-to-end latency,
// throughput, goodput under an SLO, KV cache use over time, and the highest request rate that meets
// an SLO.
//
//   ServeSimConfig c;                          // scheduler defaults: vLLM's
//   ServeSim sim(load_chip("h20"), load_model_config("qwen3-32b"), c);
//   ServeReport r = sim.run(load_trace("azure-conv"));
//   r.ttft.p99, r.output_tokens_per_s, ...
//   ServeSim node_sim(chip, load_model_config("qwen3-235b-a22b"), c, {load_node("zhenwu-16"), 4, 16});
//
// Event loop: one serialized loop per run. At each step boundary, requests that have arrived are
// queued (in arrival order); the scheduler plans a step; the clock advances by its time; tokens the
// step samples are stamped with the step's end. When nothing is running or waiting the clock jumps
// to the next arrival. A request that can never fit (its sequence exceeds the model's context or the
// whole KV cache) is rejected at arrival, counted and named, not run.
//
// KV cache size: kv_memory_fraction x (HBM - weights - the activation peak of a step of
// max_batched_tokens tokens), in blocks of block_size positions, as vLLM sizes its cache after a
// profiling run (gpu_memory_utilization 0.9).
//
// On a node (ParallelLayout: --node --tp --ep): the same engine, one scheduler, its limits
// (max_num_seqs, max_batched_tokens) for the whole engine step; each step is priced by the split
// model (serve/StepCost: the busiest data-parallel attention group's share). Memory is per chip:
// its weight share (rank 0's: its TP shard of attention, its experts, the replicated embeddings
// and head) and activations; every chip of a DP group holds its TP share of each cached token, so
// a group caches as many tokens as one chip's free memory holds of its share, and the G = ep / tp
// groups cache G times that. The blocks are pooled: the scheduler sees one cache of G groups'
// blocks (a real DP engine keeps a request's KV in its group; the pool assumes requests spread
// evenly, as the step cost does).
//
// Not modelled: the host work between steps (scheduling, detokenisation, HTTP; a few ms per step on a
// busy vLLM server), sampling options beyond greedy (their kernels cost about the same), prompt
// contents (traces give lengths only, so prefix caching finds nothing in a trace replay).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "arch/ChipSpec.hpp"
#include "models/ModelConfig.hpp"
#include "models/Qwen3.hpp"
#include "serve/Scheduler.hpp"
#include "serve/StepCost.hpp"
#include "serve/Workload.hpp"

namespace ppu {
class TraceWriter;
}

namespace ppu::serve {

struct ServeSimConfig {
  SchedulerConfig scheduler;
  int64_t block_size = 16;             // KV positions per block (vLLM's default)
  bool prefix_caching = true;
  double kv_memory_fraction = 0.9;     // of the memory left after weights and activations
  DType matmul_dtype = DType::kBF16;   // weights and GEMM inputs
  DType kv_dtype = DType::kBF16;
  int64_t max_model_len = 0;           // 0: the model's max_position_embeddings
};

struct Percentiles {
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
  int64_t count = 0;
};
// Nearest-rank percentiles of `v` (sorted in place); all zero when empty.
Percentiles percentiles(std::vector<double>& v);

// A service-level objective: a request meets it when its TTFT and TPOT are within the bounds (0: no
// bound on that one).
struct Slo {
  double ttft_s = 0, tpot_s = 0;
  double attainment = 0.9;  // share of requests that must meet it for a rate to count as "under the SLO"
  bool any() const { return ttft_s > 0 || tpot_s > 0; }
};
// Parses "ttft=2s,tpot=100ms" (units s or ms; either key may be left out; "attainment=0.95" too).
// UserError naming the part that is wrong.
Slo parse_slo(const std::string& text);

struct RequestRecord {
  double arrival_s = 0, first_token_s = -1, finish_s = -1;
  int64_t input_tokens = 0, output_tokens = 0, preemptions = 0;
  bool rejected = false;
};

struct ServeReport {
  std::string chip, model;
  std::string node;                 // empty: one chip
  int tp = 1, ep = 1, chips = 1, dp_groups = 1;
  int64_t requests = 0, completed = 0, rejected = 0;
  std::string first_rejection;      // the first rejected request's reason, if any
  double duration_s = 0;            // first arrival to last completion (simulated)
  double request_rate = 0;          // arrivals per second over the arrival span
  double requests_per_s = 0, output_tokens_per_s = 0, total_tokens_per_s = 0;
  Percentiles ttft, tpot, itl, e2e;  // seconds
  std::optional<Slo> slo;
  double slo_attainment = 0;        // share of completed requests meeting it
  double goodput_rps = 0;           // requests meeting it per second of the run
  int64_t steps = 0, preemptions = 0;
  double mean_batch = 0;            // requests per step
  double mean_step_tokens = 0;
  int64_t kv_blocks = 0, block_size = 0;
  // KV bytes of one token position (all layers, every head: summed over a DP group's TP shards);
  // weights and activations: one chip's (rank 0).
  double kv_bytes_per_token = 0, weight_bytes = 0, activation_bytes = 0;
  double kv_peak_use = 0, kv_mean_use = 0;  // share of blocks in use (time-weighted mean)
  std::vector<std::pair<double, double>> kv_use;  // (time, share in use), at most ~500 points
  int64_t prefix_hit_tokens = 0;
  int64_t probes = 0;               // timing-only forwards run to price steps
  double host_s = 0;                // host seconds of this run (probes included)
  std::vector<RequestRecord> records;
  nlohmann::json to_json() const;
};

// Fills r.slo, r.slo_attainment (rejected requests count as missing it) and r.goodput_rps.
void apply_slo(ServeReport& r, const Slo& slo);

class ServeSim {
 public:
  // Builds the cache plan (a timing-only probe of the model: UserError for a bad config or layout,
  // DeviceOutOfMemory when the weights leave no room for one block) and the step cost. With a
  // layout on a node, `chip` is ignored (the node's chip is served).
  ServeSim(const ChipSpec& chip, const ModelConfig& cfg, const ServeSimConfig& c, const ParallelLayout& layout = {});
  ~ServeSim();

  // Replays `reqs` (arrival order) to completion. `trace`: optional Perfetto output (steps and
  // requests as lanes). Deterministic: the same inputs give the same report (host_s aside).
  ServeReport run(const std::vector<RequestSpec>& reqs, TraceWriter* trace = nullptr);

  // The highest Poisson arrival rate (requests/s, within 3%) at which at least slo.attainment of
  // `lengths`' requests meet `slo`, found by doubling then bisection over runs of those requests;
  // 0 when even the lowest rate tried (1/64 of a request per second) misses it. `report` gets the
  // run at that rate. UserError for an SLO without bounds.
  double max_rate(const std::vector<RequestSpec>& lengths, const Slo& slo, uint64_t seed, ServeReport* report = nullptr);

  int64_t kv_blocks() const { return kv_blocks_; }
  const ServeSimConfig& config() const { return c_; }

 private:
  ChipSpec chip_;
  ModelConfig cfg_;
  ServeSimConfig c_;
  ParallelLayout layout_;
  int64_t kv_blocks_ = 0;
  double kv_bytes_per_token_ = 0, weight_bytes_ = 0, activation_bytes_ = 0;
  std::unique_ptr<StepCost> cost_;
};

}  // namespace ppu::serve
