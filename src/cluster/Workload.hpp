// Workload: what one chip does for one micro-batch of a training step, taken from the framework in
// timing-only mode - the model's own forward (models/Qwen3: the TP/SP/EP shard, its kernels and the
// collectives it asks for) and a backward pass derived kernel by kernel from that forward - timed on
// the chip's timing engine. No hand formula decides what a kernel costs.
//
//   WorkloadOptions o; o.tp = 8; o.sp = true; o.micro_batch = 1; o.seq_len = 2048;
//   Workload w = extract_workload(load_model_config("gpt-175b"), load_chip("a100-80g"), o);
//   w.layer.fwd_s;      // one transformer layer's forward kernels, one micro-batch, one chip
//   w.layer.bwd_s;      // its backward kernels
//   w.layer.comms;      // the TP / EP collectives of one layer's forward (the backward mirrors them)
//
// How the backward is derived from the captured forward launches:
//   * a GEMM C = A . B (every linear layer, grouped expert GEMMs): two GEMM launches of the same
//     size, dA = dC . B^T (bf16) and dB = A^T . dC (fp32, as frameworks accumulate weight gradients
//     in fp32), grouped like the forward's;
//   * attention: the attention backward kernel (kernels/AttentionBackward: FlashAttention-2's
//     backward, recomputing the probabilities) on the forward's shape;
//   * any other (memory-bound) kernel - norms, activations, RoPE, residual adds, embedding - twice
//     its forward time: its backward reads the output gradient and the saved input and writes the
//     input gradient, about twice the bytes (an assumption, stated in reports).
// Method: the model is built with one and with two layers (timing only: weights only count against
// HBM); the second layer's launches and collectives are one layer's; what the one-layer model
// does besides its layer is the embedding (first pipeline stage) and the final norm + LM head (last
// stage). Identical kernels are timed once (Kernel::timing_key), and whole results are cached by
// (chip, model, options) in a WorkloadCache.
//
// Not here: the pipeline schedule, data parallelism, the network (cluster/Training, cluster/Network).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "arch/ChipSpec.hpp"
#include "ccl/Collective.hpp"
#include "kernels/Attention.hpp"
#include "models/ModelConfig.hpp"
#include "nn/ParallelGroups.hpp"
#include "sim/TimingEngine.hpp"

namespace ppu::cluster {

struct WorkloadOptions {
  int tp = 1;                 // tensor-parallel degree (Megatron column/row splits)
  bool sp = false;            // sequence parallelism (with tp > 1)
  int ep = 1;                 // expert parallelism (MoE; a multiple of tp, as models/Qwen3 splits)
  int cp = 1;                 // context parallelism: each chip holds seq_len / cp tokens of every sequence
  int64_t micro_batch = 1;    // sequences per micro-batch
  int64_t seq_len = 2048;     // tokens per sequence
  bool unfused_attention = false;  // attention as Megatron-LM (2021) ran it (models/Qwen3 AttentionImpl::kUnfused)
  // The fused attention's style, forward and backward (kernels::AttentionStyle).
  kernels::AttentionStyle attention_style = kernels::AttentionStyle::kPipelined;
  std::string key() const;
};

// One collective of a layer's forward, per micro-batch.
struct LayerComm {
  std::string kind;   // the model's op kind ("tp all-reduce", "moe dispatch", ...)
  std::string group;  // "tp", "ep" or "cp"
  ccl::Collective collective = ccl::Collective::kAllReduce;
  double bytes = 0;   // per rank, cluster/Network.hpp's convention
};

// Time of a part of the model on one chip for one micro-batch.
struct PartWork {
  double fwd_s = 0;
  double bwd_s = 0;
  double attention_fwd_s = 0;  // of fwd_s: the attention core (what selective recomputation redoes)
  double flops_fwd = 0;        // FLOPs the forward kernels do (hardware, for HFU)
  std::map<std::string, double> fwd_by_kind, bwd_by_kind;  // by the model's op kinds
  std::vector<LayerComm> comms;
  int64_t weight_bytes = 0;    // this chip's share of the part's weights (bf16 unless set)
  int64_t params = 0;          // parameters of those weights
};

struct Workload {
  WorkloadOptions options;
  std::string chip, model;
  PartWork layer;   // one transformer layer
  PartWork embed;   // embedding (first pipeline stage)
  PartWork head;    // final norm + LM head (last stage); the loss is in it (a softmax over the logits)
  int64_t expert_params_per_layer = 0;  // of layer.params: routed experts (data-parallel over dp_group_expert)
  // Adam's update per parameter: a memory-bound elementwise kernel moving 30 bytes per parameter
  // (fp32 master, gradient and two moments read; master, moments and a bf16 copy written), timed
  // on 16 Mi-element arrays and taken per parameter (it scales linearly).
  double optimizer_s_per_param = 0;
  double kernel_sim_wall_s = 0;  // host time spent timing kernels for this workload
  bool balanced_routing = false; // MoE: routing in timing-only mode is balanced
};

// Bytes of this chip's share of the weights (bf16), as the model allocates them under TP / EP:
// one layer, the embedding (first stage) and the final norm + LM head (last stage; vocab-parallel
// under TP). Builds the model in timing-only mode without running it: cheap.
struct WeightShares {
  int64_t layer_bytes = 0, embed_bytes = 0, head_bytes = 0;
  int64_t expert_params_per_layer = 0;  // of the layer's parameters: routed experts
};
WeightShares weight_shares(const ModelConfig& model, const ChipSpec& chip, int tp, int ep);

using nn::divisors_text;  // "1, 2, 4, 8", for "valid: ..." messages about parallel degrees

// Throws UserError for impossible options (tp not dividing heads, ep not dividing experts or not a
// multiple of tp, cp not dividing seq_len into even halves, non-positive sizes), naming the value and
// what would be valid.
// `timings`: kernel timings shared with other extractions on this chip (each distinct kernel is
// then timed once per process; null: none shared).
Workload extract_workload(const ModelConfig& model, const ChipSpec& chip, const WorkloadOptions& o,
                          std::shared_ptr<TimingCache> timings = nullptr);

// Thread-safe memo of extract_workload by (chip, model, options), with one kernel-timing cache per
// chip shared by all its extractions.
class WorkloadCache {
 public:
  const Workload& get(const ModelConfig& model, const ChipSpec& chip, const WorkloadOptions& o);
  size_t size() const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::unique_ptr<Workload>> cache_;
  std::map<std::string, std::shared_ptr<TimingCache>> timings_;  // by chip name
};

}  // namespace ppu::cluster
