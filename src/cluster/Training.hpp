// Training: one iteration (optimizer step) of a model on a cluster under a parallel layout -
// iteration time and its breakdown, throughput, FLOPs, per-chip memory - composed from the
// workload (cluster/Workload: the framework's kernels on the chip's timing engine) and the network
// (cluster/Network: the collectives of every parallel group, all groups at once).
//
//   Layout l; l.tp = 8; l.pp = 8; l.dp = 24; l.global_batch = 1536; l.seq_len = 2048;
//   TrainingResult r = simulate_training(load_model_config("gpt-145.6b"), load_cluster("a100-selene"), l, *net, cache);
//   r.iteration_s; r.tflops_per_chip; r.memory.fits;
//
// The step, per pipeline stage (layers / pp layers; the first stage adds the embedding, the last
// the final norm, LM head and loss):
//   compute   m micro-batches x (forward + recomputation + backward) of the stage's layers;
//   tp/ep/cp  the layer's collectives (forward, again in recomputation, mirrored in backward) on
//             their groups, exposed (Megatron runs them between the kernels that need them), or with
//             overlap_tp_comm the TP part only beyond the layer's GEMM time (chunked overlap);
//   bubble    1F1B: (pp - 1) x one micro-batch's stage time; interleaved with v chunks: / v;
//   p2p       each micro-batch boundary sends the activations [micro_batch, seq/cp, hidden/(tp if sp)]
//             to the next stage forward and the gradient back (2 x v per micro-batch on the
//             critical path, as schedules block on them);
//   dp        gradients reduced over the data-parallel group (with CP: dp x cp; routed experts over
//             the expert-data-parallel group, dp_group_expert), all-reduce or, with
//             ZeRO >= 1, reduce-scatter + all-gather of the updated parameters (fp32 gradients);
//             overlapped with the backward of the last micro-batch when overlap_grad_reduce;
//             ZeRO-3 also all-gathers each layer's parameters in forward and backward;
//   optimizer Adam on this chip's share of the parameters, a memory-bound kernel over 30 bytes per
//             parameter (fp32 master, gradient, two moments read; master, moments and the bf16
//             copy written), timed on the chip.
// Memory per chip (the pipeline stage with the most training state): bf16 weights, fp32 gradients,
// fp32 master + Adam moments (sharded by ZeRO over the groups the gradients are reduced over: dense
// parameters over dp x cp, routed experts over the expert-data-parallel group), activations kept
// for backward (Korthikanti et al. 2022's per-layer accounting with a fused attention: no [s, s]
// scores; full recomputation keeps only each layer's input) for the micro-batches in flight, the
// logits buffer on the last stage, and a fixed framework reserve. A layout that does not fit is a
// result (fits = false, shortfall), not an error.
//
// Symmetry: every rank of a group does the same work, so one chip per pipeline stage is simulated
// and the network answers for all groups at once; the cost does not grow with the chip count
// except through the network model.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "arch/ClusterSpec.hpp"
#include "cluster/Network.hpp"
#include "cluster/Workload.hpp"
#include "models/ModelConfig.hpp"
#include "report/TraceWriter.hpp"

namespace ppu::cluster {

enum class Recompute : uint8_t { kNone, kSelective, kFull, kCount };
inline constexpr const char* kRecomputeNames[] = {"none", "selective", "full"};
static_assert(std::size(kRecomputeNames) == static_cast<size_t>(Recompute::kCount));

struct Layout {
  int tp = 1, pp = 1, dp = 1, cp = 1, ep = 1;
  bool sp = true;               // sequence parallelism with tp > 1
  int virtual_stages = 1;       // interleaved 1F1B: model chunks per chip (1: plain 1F1B)
  int64_t micro_batch = 1;      // sequences per micro-batch
  int64_t global_batch = 0;     // sequences per iteration
  int64_t seq_len = 2048;
  int zero = 1;                 // 0: plain DP; 1: optimizer states sharded; 2: + gradients; 3: + parameters
  Recompute recompute = Recompute::kNone;
  // Full recomputation of only this many layers of each stage (Megatron's --recompute-method block
  // --recompute-num-layers); 0: every layer. Only with Recompute::kFull.
  int recompute_layers = 0;
  // Rank order, fastest first: Megatron's TP, CP, DP, PP (false) or Llama 3's TP, CP, PP, DP (true:
  // pipeline neighbours close together, data-parallel replicas far apart). With CP > 1 the gradient
  // reduction then runs over CP (near) and DP (far) in two steps.
  bool pp_inside_dp = false;
  bool overlap_grad_reduce = true;  // DP gradient reduction overlapped with the last backward
  bool overlap_tp_comm = false;     // TP collectives pipelined with the adjacent GEMMs (exposed beyond them only)
  bool unfused_attention = false;   // Megatron-LM 2021 attention (see WorkloadOptions)
  kernels::AttentionStyle attention_style = kernels::AttentionStyle::kPipelined;  // the fused attention's style
  int grad_reduce_bytes = 4;        // bytes per gradient element in the DP reduction (4: fp32, as Llama 3; 2: fp16)
  int64_t chips() const { return int64_t{tp} * pp * dp * cp; }
  std::string describe() const;
};

struct MemoryUse {
  double weights = 0, gradients = 0, optimizer = 0, activations = 0, buffers = 0, reserve = 0;
  double total() const { return weights + gradients + optimizer + activations + buffers + reserve; }
  double capacity = 0;
  bool fits() const { return total() <= capacity; }
  double shortfall() const { return fits() ? 0 : total() - capacity; }
};

struct TrainingResult {
  Layout layout;
  int64_t micro_batches = 0;        // per pipeline per iteration
  double iteration_s = 0;
  // Breakdown of the iteration (sum = iteration_s): compute of the busiest stage, exposed
  // communication per group, pipeline bubble, optimizer.
  std::map<std::string, double> breakdown;
  double tokens_per_s = 0;
  double model_flops = 0;            // per iteration, all chips: model_flops_per_token x tokens (no recomputation)
  // Per iteration, all chips: model_flops + recomputed_flops_per_token x tokens (the recomputed forward,
  // counted the same way), so hardware_flops == model_flops exactly without recomputation.
  double hardware_flops = 0;
  double tflops_per_chip = 0;        // model FLOPs / time / chips
  double mfu = 0;                    // model_flops / (iteration_s x chips x the chip's dense bf16 peak)
  // hardware_flops / (iteration_s x chips x the same peak): == mfu without recomputation, > mfu with it.
  double hfu = 0;
  MemoryUse memory;
  std::vector<std::string> notes;    // assumptions that shaped the result
  // Each distinct collective call of the step (first use first): what it moves over which group, what
  // one call costs, and the network model's explanation.
  struct CollectiveUse {
    std::string label;             // "tp all-reduce", "dp grads reduce-scatter", "pp send/recv"
    ccl::Collective collective{};
    double bytes = 0;              // per rank
    int group = 0;                 // ranks taking part
    int64_t stride = 0;            // chips between consecutive ranks of the group
    double time_s = 0;             // one call
    std::string how;               // e.g. "ring over 1024 ranks (8 per node x 128 nodes), simple: NIC-bound ..."
  };
  std::vector<CollectiveUse> collectives;
  // Per micro-batch, for the schedule (trace): each stage's forward and backward (with recomputation
  // and exposed TP/EP/CP communication), the stage-boundary transfer, and the step's tail.
  std::vector<double> stage_fwd_s, stage_bwd_s;
  // Parts of one micro-batch's stage_fwd_s / stage_bwd_s, per stage: the recomputed forward's compute
  // (inside the backward) and the exposed communication of each layer group ("tp", "ep", "cp"; the
  // LM head's counts as "tp") in the forward, the recomputation and the backward. The rest of each is
  // compute: stage_bwd_s = backward compute + recompute_s + recompute comm + backward comm.
  struct StageParts {
    double recompute_s = 0;
    std::map<std::string, double> fwd_comm_s, recompute_comm_s, bwd_comm_s;
  };
  std::vector<StageParts> stage_parts;
  double p2p_s = 0;
  double sim_wall_s = 0;            // host seconds this simulation took
};

// Checks a layout against the model and cluster; throws UserError naming the first problem and what
// would be valid: degrees < 1; tp*pp*dp*cp != `chips` (the chips the run uses: 0 = the whole
// cluster; more than the cluster has is an error too);
// tp not dividing heads; pp not dividing layers (the first and last stages may hold one layer less
// each, as Llama 3 balanced 126 layers over 16 stages); ep not dividing experts or not dividing
// tp*dp...; global batch not a multiple of dp * micro_batch; virtual stages not dividing layers/pp.
void check_layout(const ModelConfig& m, const ClusterSpec& c, const Layout& l, int64_t chips = 0);

// Model FLOPs per token of training: forward 2 x (matmul parameters a token passes through, incl. the
// LM head) + 4 x seq x attention width per layer (causal_half: halved), times 3 for forward and
// backward. Reports use causal_half = false: PaLM's MFU definition (6N + 12 L H Q T) and
// Megatron-LM's formula both count the whole attention square.
double model_flops_per_token(const ModelConfig& m, int64_t seq_len, bool causal_half);

// Forward FLOPs per token (all chips) that the layout's recomputation adds, counted as
// model_flops_per_token(m, l.seq_len, false) counts a forward: full recomputation, each recomputed
// layer's 2 x matmul parameters + 4 x seq x attention width (every layer, or with recompute_layers N
// the first N of each stage); selective, the attention core's 4 x seq x attention width per layer.
// 0 without recomputation.
double recomputed_flops_per_token(const ModelConfig& m, const Layout& l);

// The data-parallel groups (ranks) over which a chip's parameters are replicated: their gradients
// are reduced, and with ZeRO their training state sharded, over these. Dense parameters: DP x CP.
// Routed experts with EP > 1: the expert-data-parallel group, the ranks of a pipeline stage that hold
// the same experts (each rank of an EP group holds experts / EP whole experts), TP x CP x DP / EP. With
// EP 1 the experts are split over TP like the dense MLP, so their group is the dense one.
int dp_group_dense(const Layout& l);
int dp_group_expert(const Layout& l);

// Memory per chip of a layout (the fullest pipeline stage), from the model's own weight allocation;
// cheap (no kernels are timed).
MemoryUse training_memory(const ModelConfig& m, const ChipSpec& chip, const Layout& l);
MemoryUse training_memory(const ModelConfig& m, const ChipSpec& chip, const Layout& l, const WeightShares& ws);

// The global batch (sequences per iteration) when none is given: about 4M tokens, rounded up to a
// whole number of `micro_batch` micro-batches on each of `dp` replicas.
inline int64_t default_global_batch(int64_t seq_len, int dp, int micro_batch) {
  const int64_t per_step = int64_t{dp} * micro_batch;
  return std::max<int64_t>(1, ((int64_t{4} << 20) / seq_len + per_step - 1) / per_step) * per_step;
}

// `l` with the least recomputation that fits in memory: none, else full recomputation of 1, 2, ...
// layers per stage, else of all; returned as full recomputation of all layers if even that does
// not fit (the caller sees the shortfall in training_memory).
Layout least_recomputation(const ModelConfig& m, const ChipSpec& chip, Layout l);
Layout least_recomputation(const ModelConfig& m, const ChipSpec& chip, Layout l, const WeightShares& ws);

// The per-chip workload a layout needs (cluster/Workload).
WorkloadOptions workload_options(const Layout& l);

TrainingResult simulate_training(const ModelConfig& m, const ClusterSpec& c, const Layout& l, NetworkModel& net,
                                 WorkloadCache& cache, int64_t chips = 0);

// Training on `tokens` tokens at this iteration time: iterations (whole), days, chip-hours, and
// energy with every chip at its TDP plus the cluster's per-node power beyond the chips, times the
// PUE. All zero for tokens <= 0.
struct TrainingBudget {
  double iterations = 0, days = 0, chip_hours = 0, power_w = 0, energy_mwh = 0;
};
TrainingBudget training_budget(const TrainingResult& r, const ClusterSpec& c, double tokens);

// One iteration as a Perfetto trace: a track per pipeline stage (one chip stands for its TP/DP/CP
// peers) with every micro-batch's forward "F i" and backward "B i" in 1F1B order (interleaved layouts
// drawn as plain 1F1B of whole stages), then the data-parallel reduction and the optimizer on a track
// of their own. Inside each slice, nested: the exposed communication of its layers per group
// ("tp comm", "ep comm", "cp comm"), drawn together at the slice's end (the model charges it per
// layer, not where each collective runs); inside each backward first the recomputed forward
// ("recompute", with its own communication nested). The stage transfers ("pp send/recv F i":
// activations forward, "pp send/recv B i": gradients back) get a track per stage boundary and
// direction. The schedule is computed from the per-stage times (each forward waits for the previous
// stage's and the transfer, each backward for the next stage's); slices of zero length are left out.
void write_training_trace(const TrainingResult& r, TraceWriter& w);

}  // namespace ppu::cluster
