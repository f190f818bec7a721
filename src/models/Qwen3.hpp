// Qwen3 (dense and MoE) on one simulated chip: weights on the device, a KV cache, and a forward pass
// in which every operation is a PPU kernel (tile programs: real numbers in functional mode, time in
// both). The same code expresses Llama-style models (no QK-norm, Llama 3.1 RoPE scaling) and GPT
// (ModelFamily::kGpt: learned positions added to the embedding, LayerNorm with bias, biases on every
// projection, full multi-head attention, MLP fc2(gelu(fc1 h + b1)) + b2, no RoPE); GPT runs on
// random weights or timing only (its checkpoint layout is not read).
//
// The model is assembled from nn modules (nn/Embedding, Norm, SelfAttention, Mlp, Moe), which own
// their parameters and activations; this file keeps what is the model's own: the batch of sequences
// and their KV slots, sequence parallelism's residual shards, the logits and sampling, and
// training_loss, the training forward whose backward nn::Graph records.
//
// KV memory, one of two kinds chosen at construction:
//  * contiguous slots (the default): max_batch slots of up to max_context positions each, one after
//    another in one cache per layer; forward / forward_batch / forward_slots continue a slot, whose
//    past length the model tracks.
//  * a paged pool (Qwen3Options::kv_block_size > 0, the serving engine's): per layer one K and one V
//    pool of kv_blocks blocks of kv_block_size positions, [kv_blocks, kv_block_size, kv_heads, d];
//    forward_paged gives each sequence its block table and past length (the caller - serve/Engine
//    with serve/KvBlocks - owns the bookkeeping; the model keeps no per-sequence state). K/V are
//    written through the tables (kernels::make_paged_rope_write / make_paged_kv_write) and read by
//    kernels::paged_attention_batch; the numbers are bit-identical to the contiguous forward's.
//      Qwen3Options o;  o.kv_block_size = 16;  o.kv_blocks = 64;  o.max_batch = 8;
//      Qwen3Model m(dev, cfg, w, o);
//      m.forward_paged({prompt}, {{3, 7}}, {0});    // positions 0..31 in blocks 3 and 7
//
//   Device dev(load_chip("zhenwu-810e"));
//   Qwen3Model m(dev, load_model_config("qwen3-0.6b"), Qwen3Weights::random(42));   // or ::from_checkpoint(dir)
//   auto out = m.forward({9707, 1879});        // prefill: logits of the last token, KV cache filled
//   out = m.forward({next_id});                 // one decode step
//
// Per layer, top to bottom (x: residual stream [tokens, hidden]):
//   h  = rms_norm(x, input_layernorm)                       [T, hidden]
//   q  = h . Wq^T [T, heads*d];  k = h . Wk^T, v = h . Wv^T  [T, kv_heads*d]
//   q, k = rms_norm per head (q_norm, k_norm: QK-norm)      rows T*heads (T*kv_heads), cols d
//   q  = rope(q);  k_cache[past..] = rope(k);  v_cache[past..] = v
//   a  = attention(q, k_cache, v_cache)                     [T, heads, d], causal, GQA
//   x += a . Wo^T
//   h  = rms_norm(x, post_attention_layernorm)
//   dense: x += (silu(h . Wg^T) * (h . Wu^T)) . Wd^T
//   MoE:   p = softmax(h . Wr^T) [T, E]; top-k per token, renormalised (norm_topk_prob);
//          per expert e: rows of h routed to e -> SwiGLU_e -> rows of an [T*k, hidden] buffer;
//          x += sum_j p_tj * that row (gather_combine)
// then logits = rms_norm(x, norm) . lm_head^T (lm_head = embed_tokens when tied), fp32.
// GPT differs only where the config says: x = wte[tokens] + wpe[positions]; LayerNorm(w, b) for
// every norm; + bias after each projection; no QK-norm and no RoPE; the MLP above with GELU (tanh).
//
// Routing: the top-k choice is made on the host from the router probabilities read back (so the
// expert programs know their rows, as embedding lookups know their token ids); that read-back is
// not charged as a host round trip. In timing-only mode there are no probabilities: routing is
// balanced (token t, choice j -> expert (t*k + j) mod E), stated in every report.
//
// The residual stream is fp32; the other activations are `act_dtype` (bf16 by default, as frameworks
// run bf16 checkpoints; the matrix unit takes 16-bit inputs, so bf16 or fp16), the KV cache is bf16,
// router probabilities and logits are fp32. Not here: the paged cache's bookkeeping (serve/KvBlocks),
// unfused attention and the layer-0 K tap over a paged cache, expert- or sequence-parallel training,
// MoE training over several chips.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <algorithm>
#include <string>
#include <vector>

#include "ccl/Collective.hpp"
#include "kernels/Attention.hpp"
#include "kernels/Rope.hpp"
#include "models/ModelConfig.hpp"
#include "models/Sampler.hpp"
#include "nn/Context.hpp"
#include "nn/Embedding.hpp"
#include "nn/Graph.hpp"
#include "nn/Mlp.hpp"
#include "nn/Moe.hpp"
#include "nn/Norm.hpp"
#include "nn/SelfAttention.hpp"
#include "runtime/Device.hpp"

namespace ppu {
namespace ccl {
class Communicator;
}

// Capture records (timing-only forwards for the cluster layer) live with the parallel groups in nn.
using nn::CapturedCollective;
using nn::CapturedLaunch;
using nn::ForwardCapture;

// Where the weights come from.
struct Qwen3Weights {
  std::string checkpoint;  // directory / index / .safetensors; empty: random
  uint64_t seed = 0;
  static Qwen3Weights from_checkpoint(std::string path) { return {std::move(path), 0}; }
  static Qwen3Weights random(uint64_t seed) { return {"", seed}; }
};

struct Qwen3Options {
  DType act_dtype = DType::kBF16;
  // Weights of the projections, MLP and experts, and the activations fed to them (bf16, fp16, or
  // fp8e4m3/fp8e5m2 for FP8 inference as TensorRT-LLM runs it on chips with an fp8 matrix unit).
  // Embeddings, lm_head and norms stay bf16. Values are rounded to fp8 as they are (no per-tensor
  // scale factors yet), which is right for timing and coarse for numbers. int8 is W8A8 with scales
  // (SmoothQuant-style): weights quantised per output channel at load, each linear layer's input per
  // token (a kernel of its own), int8 GEMMs with int32 accumulation; activations stay act_dtype.
  DType matmul_dtype = DType::kBF16;
  DType kv_dtype = DType::kBF16;
  int64_t max_context = 0;  // KV cache positions per sequence; 0: min(max_position_embeddings, 4096)
  int64_t max_batch = 1;    // sequences that forward_batch may run together (one KV cache each)
  // KV positions of each sequence slot (size max_batch; each 1 .. max_context), laid out one after
  // another in one cache, as a paged cache holds only what each sequence reserved. Empty: every
  // slot holds max_context positions.
  std::vector<int64_t> slot_capacity;
  // Paged KV cache (see the file header): kv_block_size > 0 (a power of two, 1 .. 1024; vLLM's
  // default is 16) replaces the slots with a pool of kv_blocks blocks (1 .. 2^31 - 1) per layer,
  // used through forward_paged only; max_batch then caps the sequences of one forward, max_context
  // each sequence's positions, and slot_capacity must be empty. Works with tensor, sequence and
  // expert parallelism (each rank's pools hold its kv heads; every rank of a group must be given the
  // same tables); not with unfused attention (it reads a contiguous cache). 0: contiguous slots.
  int64_t kv_block_size = 0;
  int64_t kv_blocks = 0;
  // Tensor parallelism (Megatron-style): this model is shard tp_rank of tp_size. Attention heads (q
  // and kv), the dense MLP width and every expert's width are split; the output and down
  // projections give partial sums, all-reduced over tp_comm (rank r of the communicator is shard
  // r). Every shard's forward must run at the same time, one host thread per shard, since the
  // per-rank collective calls meet; embeddings, norms and the LM head are replicated. Weights (from
  // a checkpoint or random) are the single-chip model's, sliced, so the shards together compute
  // what one chip does. tp_size 1: no communicator.
  int tp_size = 1;
  int tp_rank = 0;
  ccl::Communicator* tp_comm = nullptr;
  // Sequence parallelism (with tp_size > 1): each shard keeps the residual stream of
  // its 1/tp_size of the tokens; norms and residual adds run on those rows, the all-reduce after each
  // row-parallel projection becomes a reduce-scatter and each norm's output is all-gathered for the
  // next column-parallel projections (Megatron's sequence parallelism; the same bytes on the links).
  bool sequence_parallel = false;
  // Expert parallelism (MoE models): ep_size ranks in ep_comm, this one ep_rank = dp * tp_size +
  // tp_rank. Each rank owns num_experts / ep_size whole experts (expert e on rank e / (E / ep));
  // attention runs data-parallel in ep_size / tp_size groups of tp_size ranks (tp_comm), each group on
  // its own sequences. In every MoE layer each rank of a group dispatches its share of the group's
  // tokens to the experts' owners (all-to-all-v, after an all-gather of the counts), the owners run
  // their experts as grouped GEMMs and send the rows back (all-to-all-v), the sender combines, and
  // the group all-gathers the combined rows. ep_size 1: experts live with their model (split by
  // width under TP). Timing-only runs assume every group has as many tokens as this one.
  int ep_size = 1;
  int ep_rank = 0;
  ccl::Communicator* ep_comm = nullptr;
  // Timing-only capture (cluster/Workload): launches and collectives go to *capture; collectives
  // are logged, not run, so tp_size / ep_size > 1 need no communicators (one shard stands for all:
  // they do the same work). Every forward then computes logits for every token, as training does.
  ForwardCapture* capture = nullptr;
  // With tp_size > 1: the LM head holds vocab_size / tp_size rows of the output embedding (rounded
  // up) and each shard computes its columns of the logits (Megatron's vocab-parallel head, as models
  // are trained). Capture mode only.
  bool vocab_parallel = false;
  // How attention runs. kFused: the attention kernel (kernels/Attention, FlashAttention-like).
  // kUnfused: as Megatron-LM (2021) and eager PyTorch train - scores = Q.K^T as a batched GEMM over
  // heads, materialised [heads, T, kv_len]; softmax (masked, the whole square); dropout on the
  // probabilities (a multiply by a mask); P.V as a second batched GEMM. Timing only (the kernels run
  // on head-major scratch buffers; no numbers).
  enum class AttentionImpl : uint8_t { kFused, kUnfused };
  AttentionImpl attention_impl = AttentionImpl::kFused;
  // How the fused attention kernel orders its work (kernels::AttentionStyle): the chip's pipelined
  // style, or FlashAttention-2's (as GPU training stacks of 2023-24 ran it).
  kernels::AttentionStyle attention_style = kernels::AttentionStyle::kPipelined;
};

struct ForwardResult {
  std::vector<float> logits;  // [rows, vocab]: the last token's, or every token's with all_logits (empty in timing-only mode
                              // and after forward_sampled)
  std::vector<int32_t> tokens;  // forward_sampled: each sequence's next token (empty in timing-only mode)
  int64_t rows = 0;
  double sim_time_s = 0;      // simulated time of this forward on the device
};

// Intermediate tensors a test can ask for (layer 0 and per-layer outputs), fp32 host copies.
struct ForwardTaps {
  std::map<std::string, std::vector<float>> values;
};

class Qwen3Model {
 public:
  // Allocates every weight on `dev` (DeviceOutOfMemory if they do not fit), loads or initialises
  // them, and the KV cache. Throws UserError on an unsupported config, or a checkpoint whose names
  // or shapes do not match the config (naming the file and tensor).
  Qwen3Model(Device& dev, ModelConfig cfg, const Qwen3Weights& weights, Qwen3Options opt = {});
  ~Qwen3Model();
  Qwen3Model(const Qwen3Model&) = delete;
  Qwen3Model& operator=(const Qwen3Model&) = delete;

  // Runs `tokens` at positions past_len() .. past_len()+T-1, appends them to the KV cache.
  // UserError if the context would exceed max_context or a token id is outside the vocabulary.
  ForwardResult forward(const std::vector<int32_t>& tokens, bool all_logits = false, ForwardTaps* taps = nullptr);
  // Several sequences in one pass (continuous-batching style): sequence b's tokens continue its own
  // KV cache (seqs.size() <= max_batch). GEMMs and norms see all tokens as rows; each sequence's
  // RoPE/cache writes and attention run as one launch for the batch. Logits: the last token of each
  // sequence, [seqs.size(), vocab].
  // first_slot: seqs[i] continues the cache of sequence first_slot + i (e.g. prefilling a batch in
  // chunks of sequences).
  ForwardResult forward_batch(const std::vector<std::vector<int32_t>>& seqs, int64_t first_slot = 0);
  // forward_batch with any slots: seqs[i] continues the cache of slot slots[i] (distinct; a
  // continuous-batching engine's requests come and go). UserError for a count mismatch, a slot out
  // of range or given twice.
  ForwardResult forward_slots(const std::vector<std::vector<int32_t>>& seqs, const std::vector<int64_t>& slots);
  // forward_batch, then each sequence's next token chosen on the device (kernels/Sampling: arg-max,
  // or top-k with the draw on the host from `sampler`'s stream), as serving engines sample: the
  // logits stay on the chip and only ids (or k candidates) cross the host link, and the simulated
  // time includes the sampling kernels ("sampling" in op_times). Same tokens as sampler.sample() on
  // the downloaded logits; options the device cannot do (top_k 0 or > kTopKMax with temperature
  // > 0) download the logits and use sampler.sample(). Timing-only: the kernels are timed, no tokens.
  ForwardResult forward_sampled(const std::vector<std::vector<int32_t>>& seqs, Sampler& sampler, int64_t first_slot = 0);
  // The four forwards above continue contiguous slots: UserError on a paged model.

  // Paged models only: seqs[i] runs at positions past_lens[i] .. past_lens[i] + seqs[i].size() - 1,
  // reading and writing its KV through tables[i] (pool block ids; position p in block
  // tables[i][p / kv_block_size()], row p % kv_block_size()). Positions before past_lens[i] must
  // hold what an earlier forward wrote there (any sequence's: blocks may be shared, e.g. a cached
  // prompt prefix); the blocks holding the new positions are written and must not be another
  // sequence's of this forward. Logits as forward_slots: the last token of each sequence,
  // [seqs.size(), vocab]. UserError on a contiguous model, for counts that differ, 0 or more than
  // max_batch sequences, an empty sequence, a negative past length, past + new beyond max_context,
  // a table too short for past + new positions or with an entry of those outside the pool, two
  // sequences writing one block, or a token id outside the vocabulary.
  ForwardResult forward_paged(const std::vector<std::vector<int32_t>>& seqs,
                              const std::vector<std::vector<int32_t>>& tables, const std::vector<int64_t>& past_lens);

  // Training forward: `batch` sequences of `seq` tokens (inputs [batch * seq], sequence-major) with
  // their next-token targets (-1: no loss on that position), causal attention without a cache. Every
  // op's backward is recorded on `graph` (nn/Graph); returns the [batch * seq] per-token losses of
  // Graph::lm_head_cross_entropy: graph.backward(loss, scale) then fills the parameters' gradients
  // (graph.param_grad). Tensor parallelism (tp_size > 1) as Megatron-LM trains: q/k/v and gate/up
  // column-parallel, o and down row-parallel, Graph::tp_copy before and Graph::tp_sum after each
  // split block, so every TP rank of a step must call this (and backward) at the same time; the
  // embedding, norms and the LM head stay replicated with identical gradients on every rank, and
  // QK-norm's gradient is marked for Graph::reduce_tp_partial_grads. MoE models (one chip): each
  // layer's block is nn::Moe::training_forward (router, top-k, experts, combine), and the per-token
  // losses carry router_aux_loss_coef x the load-balancing loss of all layers' routing
  // (Graph::add_load_balancing_loss), so their mean is the loss Hugging Face's Qwen3-MoE trains on.
  // UserError for GPT (biases, GELU), expert or sequence parallelism, MoE with tensor parallelism, a
  // vocab-parallel head, or seq beyond max_context().
  // Activation recomputation (`recompute`, the meaning of `simulate train --recompute`): full
  // checkpoints every layer (Graph::checkpoint: only each layer's input is kept, the layer's forward
  // runs again in the backward, a TP layer's all-reduces included); selective checkpoints the
  // attention core (q, k, v -> attention output). Gradients and losses are bit-identical to none.
  nn::VarPtr training_loss(nn::Graph& graph, const std::vector<int32_t>& inputs, const std::vector<int32_t>& targets,
                           int64_t batch, int64_t seq, nn::Recompute recompute = nn::Recompute::kNone);
  // Every parameter this rank holds, in checkpoint order (what an optimizer updates).
  std::vector<const nn::Parameter*> trainable_parameters() const;
  nn::Context& context() { return ctx_; }

  void reset() { std::fill(past_.begin(), past_.end(), 0); }  // contiguous slots (no-op when paged)
  // Empties one slot's cache (its next forward starts at position 0). UserError for a slot out of range.
  void reset_slot(size_t slot);
  // Timing-only mode: treat slot `seq` as holding `n` cached positions (their contents do not
  // matter to the time), e.g. to time a decode step deep into long contexts without simulating the
  // prefill. UserError in functional mode, on a paged model (forward_paged takes past lengths), or
  // if n is outside 0 .. the slot's capacity.
  void assume_past(size_t seq, int64_t n);
  int64_t past_len(size_t seq = 0) const { return past_[seq]; }
  int64_t slot_capacity(size_t seq) const { return slot_cap_[seq]; }
  int64_t max_batch() const { return opt_.max_batch; }  // sequence slots (paged: sequences per forward)
  bool paged() const { return opt_.kv_block_size > 0; }
  int64_t kv_block_size() const { return opt_.kv_block_size; }  // positions per block; 0: contiguous
  int64_t kv_blocks() const { return opt_.kv_blocks; }          // blocks of each layer's pools; 0: contiguous
  int64_t max_context() const { return max_context_; }
  const ModelConfig& config() const { return cfg_; }
  const Qwen3Options& options() const { return opt_; }
  Device& device() { return dev_; }
  int64_t weight_bytes() const { return weight_bytes_; }
  int64_t kv_cache_bytes() const { return kv_bytes_; }
  // Simulated time per operation kind ("attention", "mlp gemm", ...) accumulated since construction.
  const std::map<std::string, double>& op_times() const { return ctx_.op_times(); }
  // A weight by its checkpoint name (e.g. "model.layers.0.self_attn.q_proj.weight"), as fp32 host
  // values. UserError in timing-only mode or for a name the model does not have.
  std::vector<float> read_weight(const std::string& name);
  bool balanced_routing() const { return !dev_.functional(); }

 private:
  struct Layer;
  void load_weights(const Qwen3Weights& w);
  // Uploads a parameter's values (this rank's part); int8 ones are quantised per row first.
  void upload_weight(const nn::Parameter& p, const std::vector<float>& v);
  // Every parameter in checkpoint order (the order random weights are drawn in), including those
  // another rank holds (no buffer).
  std::vector<const nn::Parameter*> parameters() const;
  ForwardResult run(const std::vector<std::vector<int32_t>>& seqs, const std::vector<int64_t>& slots, bool all_logits,
                    ForwardTaps* taps, Sampler* sampler = nullptr);
  // The forward proper over a checked batch (contiguous slots or block tables) of `tokens`.
  ForwardResult run_layout(const nn::BatchLayout& batch, const std::vector<int32_t>& tokens, bool all_logits,
                           ForwardTaps* taps, Sampler* sampler);
  void sample_on_device(const Buffer& logits, int64_t rows, Sampler& sampler, ForwardResult& r);

  Device& dev_;
  ModelConfig cfg_;
  Qwen3Options opt_;
  nn::Context ctx_;  // this rank's groups, dtypes, op times, capture
  int64_t max_context_ = 0;
  std::vector<int64_t> past_;      // positions already in each sequence's KV cache
  std::vector<int64_t> slot_cap_;  // KV positions of each slot
  std::vector<int64_t> slot_off_;  // first position of each slot in the cache
  int64_t weight_bytes_ = 0, kv_bytes_ = 0;
  int64_t head_vocab_ = 0;  // rows of the LM head on this shard
  nn::Embedding embed_;
  std::vector<std::unique_ptr<Layer>> layers_;
  nn::Norm final_norm_;
  nn::Parameter lm_head_own_;  // untied (or vocab-parallel) heads
  Buffer lm_head_;             // the head's weights: embed_.table when tied
  kernels::RopeTable rope_;
  kernels::AttentionWorkspace attn_ws_;
};

}  // namespace ppu
