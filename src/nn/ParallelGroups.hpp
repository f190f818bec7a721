// ParallelGroups: how a model is split over chips, in one place - the degrees (TP, SP, EP, CP, DP,
// PP), which rank does what (the rank map), the communicators its shards meet in or the capture sink
// that logs their collectives instead, and THE one validation of a split against a model's shape.
// The model (models/), the cluster layer's workload and layouts, and the CLI all validate through
// check_split, so a layout is refused with the same words wherever it is given.
//
//   nn::ParallelDegrees d; d.tp = 2; d.ep = 4;
//   nn::check_split(nn::SplitDims{"qwen3-30b-a3b", 32, 4, 0, 128, 768, 48}, d);   // UserError if impossible
//   nn::ParallelGroups g = nn::ParallelGroups::for_rank(d, 3);   // g.tp_rank == 1, g.ep_rank == 3
//
// Rank map inside one model replica (what one node runs): rank r is TP rank r % tp of TP group r / tp;
// with EP, the ep ranks are the replica's ranks in order (EP rank = r), so EP groups span ep / tp
// data-parallel attention groups. The cluster layer's placement of TP / CP / PP / DP groups on a
// cluster's chips (Megatron's or Llama 3's order) is in cluster/Training.
//
// Not here: pipeline scheduling (cluster/Training) or running collectives (ccl/Communicator).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ccl/Collective.hpp"
#include "isa/Kernel.hpp"

namespace ppu {
namespace ccl {
class Communicator;
}

namespace nn {

// What a timing-only forward did, for the cluster layer to build a training step from: every kernel
// launched (with the op kind it belongs to: "attention", "mlp gemm", "lm head", ...) and every
// collective the split model asked for, which in capture mode is logged instead of run.
struct CapturedLaunch {
  std::string kind;
  Kernel kernel;
  double seconds = 0;  // simulated time of the launch
};
struct CapturedCollective {
  std::string kind;      // the op kind it belongs to ("tp all-reduce", "moe dispatch", ...)
  std::string group;     // "tp" or "ep"
  ccl::Collective collective = ccl::Collective::kAllReduce;
  // Bytes per rank: all-reduce the buffer; reduce-scatter the full input; all-gather the full
  // output; all-to-all(-v) what this rank sends in total (cluster/Network.hpp's convention).
  double bytes = 0;
};
struct ForwardCapture {
  std::vector<CapturedLaunch> launches;
  std::vector<CapturedCollective> collectives;
};

struct ParallelDegrees {
  int tp = 1;          // tensor parallel (Megatron column / row splits)
  bool sp = false;     // sequence parallel (with tp > 1)
  int ep = 1;          // expert parallel (MoE; a multiple of tp)
  int cp = 1;          // context parallel (each chip holds 1/cp of every sequence)
  int dp = 1;          // data parallel replicas
  int pp = 1;          // pipeline stages
};

// What a split divides: a model's shape as the parallel degrees see it.
struct SplitDims {
  std::string model;              // for messages
  int64_t heads = 0, kv_heads = 0;
  int64_t ffn = 0;                // dense MLP width (0 for MoE models)
  int64_t experts = 0;            // routed experts (0: dense)
  int64_t expert_ffn = 0;         // each expert's MLP width
  int64_t layers = 0;
};

// "1, 2, 4, 8": the divisors of n, for "valid: ..." messages about parallel degrees.
std::string divisors_text(int64_t n);

// THE validation of a split. Throws UserError naming the model, the degree, what it must divide or
// be a multiple of, and the valid values, for: a degree below 1; TP not dividing the attention
// heads, the key/value heads, the MLP width or (without EP) each expert's width; EP > 1 on a dense
// model; EP not dividing the experts or not a multiple of TP; EP not dividing TP x DP (when dp is
// given above 1); CP > 1 without seq_len a multiple of 2 x CP (when seq_len > 0; each chip takes
// two chunks, one from each end, to balance causal work). PP is checked by the cluster layer,
// whose stage split lets the first and last stages hold a layer less.
void check_split(const SplitDims& m, const ParallelDegrees& d, int64_t seq_len = 0);

// One rank's place in a split model, and what its collectives go through.
struct ParallelGroups {
  ParallelDegrees degrees;
  int rank = 0;     // in the replica: 0 .. max(tp, ep) - 1
  int tp_rank = 0;  // rank % tp
  int ep_rank = 0;  // rank with EP, else 0
  ccl::Communicator* tp_comm = nullptr;  // this rank's TP group (tp > 1, unless capturing)
  ccl::Communicator* ep_comm = nullptr;  // the EP group (ep > 1, unless capturing)
  ForwardCapture* capture = nullptr;     // timing-only capture: collectives logged, not run

  // The rank map above. UserError if rank is outside 0 .. world() - 1.
  static ParallelGroups for_rank(const ParallelDegrees& d, int rank);
  // Chips of one model replica: max(tp, ep).
  int world() const { return degrees.ep > degrees.tp ? degrees.ep : degrees.tp; }
  // Checks the ranks are inside their degrees and, unless capturing, that every group of more than
  // one rank has a communicator of that size (UserError naming the model and the group).
  void check_wiring(const std::string& model) const;
};

}  // namespace nn
}  // namespace ppu
