// StepCost: the simulated time of one engine step (serve/Scheduler's StepPlan) on a chip, from the
// model's own forward in timing-only mode - the same kernels as every other prediction - cached by
// shape, so that a simulation of thousands of requests runs a few dozen forwards, not one per step.
//
// A decode-only step (every request computes one token: most steps of a busy server) is timed as
// a whole: the probe is a forward of n requests, one token each, at the mean context c of the
// step's requests, launched as one captured graph (as vLLM and TensorRT-LLM replay decode steps),
// sampling included; the time is interpolated in n and c between probes. A step with prefill chunks
// runs kernel by kernel and is split by the model's operation kinds (Qwen3Model::op_times):
//
//   dense(T)         every kind but attention and the head, for T = sum of the chunks' tokens
//                    (GEMMs, norms, activations see all tokens as rows);
//   head(S)          "logit rows", "lm head", "sampling" for S = the step's requests;
//   decode attention of the step's one-token requests: the attention share of the decode probe;
//   prefill(q, p)    attention of one chunk of q > 1 tokens after p cached positions, per chunk.
//                    A chunk of 512 tokens or more is probed after 0 and after 2048 cached
//                    positions and taken as linear in p: every cached position adds one key to every
//                    query row. Measured on zhenwu-810e, the cost per 1k cached positions varies by
//                    under 1% from 1k to 8k for Qwen3-32B chunks of 256, 1k and 4k tokens, under 4%
//                    for Qwen3-0.6B (tests/serve: within 4% of direct probes on h100). Shorter
//                    chunks, cheap to probe and further from linear (fewer tiles than the chip has
//                    cores; flash-decoding splits change with the length), use the context grid.
//
// Grids: T, S, n and q at powers of two (and the limit), contexts at 0 and powers of two from 16;
// linear interpolation between grid points (decode attention is close to linear in the context it
// reads, GEMMs in their rows between tile steps). A probe is a forward_sampled (greedy) of a model
// built for that shape on a timing-only device of the same chip (its HBM size raised, which no
// kernel's timing reads, so that any probe shape fits); the timing cache times each distinct kernel
// once. Every decoder layer runs the same kernels, so a probe runs the model with one layer and with
// two and extends the difference to all layers (exact: one stream adds the layers' times). A step's
// missing probes run together, spread over the host's cores (PPU_THREADS or the core count, at most
// 8; a fresh device per probe, one shared timing cache): a probe is a pure function of its shape, so
// results do not depend on the thread count (tests/cli/determinism.py).
//
// Approximations, stated where results are reported: a mixed step's attention is the sum of its
// decode term and its prefill chunks' terms (the engine launches them together, so the sum counts
// the launch and tail of each part); decode contexts enter through their mean; every request's
// logits are computed, as the model's forward does (chunks that do not sample would skip them).
//
//   StepCost cost(load_chip("h100"), load_model_config("qwen3-8b"), {}, {.max_batched_tokens = 8192});
//   double s = cost.step_s(plan);   // simulated seconds
//
// Parallel layouts (ParallelLayout: a node, TP and EP degrees, as `ppu run --node --tp --ep`): a
// probe is then the timing-only forward of the split model - one host thread per rank, each with its
// own device and Qwen3Model shard (tp_rank, ep_rank) over ccl::Communicators of the node's chips,
// every rank running the same shape - and the step time is rank 0's (every rank meets at every
// collective, so rank 0's clock ends with the slowest). With EP, attention runs data-parallel in
// G = ep / tp groups of tp chips; a step's requests are spread over the groups as a DP-attention
// engine balances them: decoding requests dealt round-robin (each group ceil(n / G) or floor),
// prefill chunks whole, longest first, each to the group with the fewest tokens so far. The step
// takes as long as its busiest group (most tokens; ties: most requests, then the lowest index),
// priced as above on that group's share - and the split model's timing-only forward assumes every
// group carries as many tokens as this one, so the MoE layers' expert kinds ("moe dispatch", "moe
// expert gemm", "mlp activation", "moe combine": what sees every group's tokens) of a step with
// prefill chunks are taken from the probe of the mean share, ceil(T / G) tokens (G x that many in
// all), and its other kinds from the busiest group's tokens. A decode-only step, balanced to within
// one request, is the whole-graph probe of ceil(n / G) requests per group. The one-and-two-layer
// extension stays exact with collectives (each layer runs the same collectives of the same sizes;
// tests/serve compares it with the whole model).
//
//   ParallelLayout l{load_node("zhenwu-16"), 4, 16};   // TP 4 x EP 16: 4 DP groups of 4 chips
//   StepCost split(l.node->chip, load_model_config("qwen3-235b-a22b"), {}, {}, l);
//
// Not thread-safe (one simulation drives one StepCost; it starts its own threads for probes).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "arch/ChipSpec.hpp"
#include "arch/NodeSpec.hpp"
#include "models/ModelConfig.hpp"
#include "models/Qwen3.hpp"
#include "serve/Scheduler.hpp"

namespace ppu {
class TimingCache;
}

namespace ppu::serve {

// Where the served model runs: one chip (no node), or split over world() chips of `node` - TP
// shards of the attention heads and MLP widths, experts spread over ep chips (MoE), attention in
// dp_groups() data-parallel groups of tp chips. The same meaning and checks as `ppu run --node --tp
// --ep` (ep a multiple of tp; world() at most the node's chips; EP only for MoE models).
struct ParallelLayout {
  std::optional<NodeSpec> node;
  int tp = 1, ep = 1;
  int world() const { return tp > ep ? tp : ep; }
  int dp_groups() const { return ep > 1 ? ep / tp : 1; }
  // UserError naming the option (--tp, --ep, --node) and what is valid; `cfg` for the MoE check.
  void check(const ModelConfig& cfg) const;
};

struct StepCostLimits {
  int64_t max_batched_tokens = 8192;  // T never exceeds it
  int64_t max_num_seqs = 256;         // S and n never exceed it
  int64_t max_context = 32768;        // positions a request reaches at most
};

// Per-kind split of one step's simulated time.
struct StepTime {
  double decode_step_s = 0;  // a decode-only step, timed whole (the other fields 0)
  double dense_s = 0, head_s = 0, decode_attention_s = 0, prefill_attention_s = 0;  // a step with prefill
  double total_s() const { return decode_step_s + dense_s + head_s + decode_attention_s + prefill_attention_s; }
};

class StepCost {
 public:
  // `model_options`: dtypes of the served model (its parallel fields come from `layout`: UserError
  // when set here). `chip`: the served chip, ignored when the layout has a node (the node's chip).
  // UserError for limits below 1 or a bad layout (ParallelLayout::check, the model's split checks).
  StepCost(const ChipSpec& chip, const ModelConfig& cfg, const Qwen3Options& model_options, const StepCostLimits& limits,
           const ParallelLayout& layout = {});
  ~StepCost();
  StepCost(const StepCost&) = delete;
  StepCost& operator=(const StepCost&) = delete;

  StepTime step(const StepPlan& plan);
  double step_s(const StepPlan& plan) { return step(plan).total_s(); }

  // On one chip (rank 0; with TP, its shard): bytes of the weights, of the KV cache per token
  // position (all layers, K and V of its heads), and the activation peak of a step of `tokens`
  // tokens (one prefill chunk on every DP group: a probe, memoised).
  int64_t weight_bytes() const { return weight_bytes_; }
  double kv_bytes_per_token() const { return kv_bytes_per_token_; }
  int64_t activation_bytes(int64_t tokens) { return probe({{tokens, 0}}, false).activation_bytes; }
  const ParallelLayout& layout() const { return layout_; }
  const ChipSpec& chip() const { return served_chip_; }  // the served chip (the node's, with one)

  int64_t probes() const { return probes_; }          // forwards run so far
  double probe_host_s() const { return probe_host_s_; }  // host seconds they took
  const ModelConfig& config() const { return cfg_; }

 private:
  struct Probe {
    double dense_s = 0, head_s = 0, attention_s = 0;
    double expert_s = 0;  // MoE models: the experts' kinds (with G groups, priced at the mean share)
    int64_t activation_bytes = 0;  // device memory above the model's weights and cache at the peak
    int64_t weight_bytes = 0, kv_bytes = 0;  // the model's (the constructor's probe only)
  };
  using Shape = std::vector<std::pair<int64_t, int64_t>>;  // (tokens, past) per request
  using Key = std::pair<Shape, bool>;                      // a shape, launched as one graph or not
  // Chunks of at least kLinearMinTokens tokens: attention probed after 0 and kPrefillAnchor cached
  // positions, linear in the cached positions (shorter chunks: the context grid).
  static constexpr int64_t kLinearMinTokens = 512;
  static constexpr int64_t kPrefillAnchor = 2048;
  // `plan`: the busiest group's share; `expert_tokens`: the mean share of the step's tokens.
  StepTime compute(const StepPlan& plan, int64_t expert_tokens);
  // The busiest DP group's share of `plan` (the plan itself with one group; see the file header).
  StepPlan busiest_group(const StepPlan& plan) const;
  // The forward of `shape` on a fresh device and model (as one graph when `graph`); with a parallel
  // layout, on fresh devices of every rank, one host thread each, rank 0's times. Thread-safe.
  Probe run_probe(const Shape& shape, bool graph) const;
  // Runs `per_rank(rank, device, options)` on every rank of the layout (rank 0 on this thread, the
  // others on their own), each on a fresh timing-only device of its chip with the model options of
  // its shard and the communicators wired; returns rank 0's result. The first failure is rethrown
  // (a rank's as UserError naming it).
  template <class F>
  Probe on_ranks(const Qwen3Options& base, F&& per_rank) const;
  // Runs the probes of `keys` not yet memoised, spread over the host's cores.
  void ensure(const std::vector<Key>& keys);
  // The memoised probe (run now if missing); while collecting, records the key and returns zeros.
  Probe probe(const Shape& shape, bool graph);
  // Every kind but attention and the head: the experts' kinds at `expert_tokens`, the rest at `tokens`.
  double dense(int64_t tokens, int64_t expert_tokens);
  double head(int64_t rows);
  // The decode probe at grid point (n, c): whole step (graph) or its attention share.
  Probe decode_probe(int64_t n, int64_t c);
  double prefill(int64_t q, int64_t past);

  ModelConfig cfg_;
  Qwen3Options opt_;
  StepCostLimits lim_;
  ParallelLayout layout_;
  ChipSpec served_chip_;
  ChipSpec chip_;  // the served chip, its HBM size raised
  std::optional<NodeSpec> node_;  // the layout's node with chip_ as its chip
  std::shared_ptr<TimingCache> timings_;
  int workers_ = 1;
  bool collecting_ = false;
  std::vector<Key> pending_;
  std::vector<int64_t> rows_grid_;  // 1, 2, 4, 8, ... up to the largest limit
  std::vector<int64_t> ctx_grid_;   // 0, 16, 32, 64, ... up to max_context
  std::map<Key, Probe> probes_by_shape_;
  int64_t probes_ = 0;
  int64_t weight_bytes_ = 0;
  double kv_bytes_per_token_ = 0;
  double probe_host_s_ = 0;
};

}  // namespace ppu::serve
