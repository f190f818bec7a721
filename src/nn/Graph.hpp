// Graph: reverse-mode automatic differentiation over nn ops - a tape of backward closures recorded
// as the forward runs, replayed in reverse. Every op launches its forward kernels at once (real
// numbers in functional mode, simulated time in both) and records a closure that launches its
// backward kernels; gradients are fp32 device buffers.
//
//   nn::Graph g(ctx);
//   nn::VarPtr x = g.input(x_buf, "x");                        // no gradient wanted
//   nn::VarPtr y = g.linear(x, layer);                          // y = x . W^T, records dX and dW
//   ...
//   g.backward(loss, seed);                                     // seed: dLoss, fp32, loss's numel
//   const Buffer& dw = g.param_grad(layer.weight);              // fp32, the whole step's sum
//
// Gradients of parameters accumulate over every backward since the last reset_param_grads() (a
// step's micro-batches): the first contribution is written, later ones added - no zeroing pass.
// Activation gradients live only while backward needs them: a var's gradient is freed when the
// closure that consumes it has run. Saved tensors are the Vars a closure captures (shared
// ownership), freed with the tape entry.
//
// Dtypes: activations are what the ops produce (matrix inputs in the context's matmul dtype, the
// residual stream fp32); every gradient is fp32 and is rounded to the matmul dtype where a matrix
// product consumes it, as bf16-autocast frameworks do.
//
// Activation recomputation: checkpoint(inputs, fn) keeps only a region's inputs and outputs and
// re-runs its forward when the backward reaches it (models/Qwen3 training_loss applies it per layer
// for full recomputation, to the attention core for selective; nn::Recompute names the modes).
//
// Not here: higher-order gradients, in-place ops, ops without a backward (they refuse to record
// when an input wants a gradient).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "nn/Context.hpp"
#include "kernels/Attention.hpp"
#include "kernels/Rope.hpp"
#include "nn/Embedding.hpp"
#include "nn/Linear.hpp"
#include "nn/Norm.hpp"

namespace ppu::nn {

// Activation recomputation in training, with the names and meaning of `ppu simulate train
// --recompute` (cluster/Training's Recompute): none; selective - the attention core (q, k, v ->
// attention output) recomputed in the backward; full - every transformer layer recomputed from its
// input.
enum class Recompute : uint8_t { kNone, kSelective, kFull };
inline constexpr const char* kRecomputeNames[] = {"none", "selective", "full"};
// "none", "selective" or "full"; UserError naming `what`, the value and the valid ones otherwise.
Recompute parse_recompute(const std::string& s, const std::string& what);
inline const char* recompute_name(Recompute r) { return kRecomputeNames[static_cast<int>(r)]; }

struct Var {
  Buffer value;          // what ops read: owned below, an input's or a parameter's buffer
  DeviceBuffer owned;    // activations: the storage of value
  DeviceBuffer grad;     // fp32 gradient, once backward reaches the var
  const Parameter* param = nullptr;  // a parameter leaf: its gradient goes to Graph::param_grad
  bool requires_grad = false;
  std::string name;
  double loss_scale = 0;  // a loss var's d(scale x mean) seed, set by Graph::backward(loss, scale)
  bool is_loss = false;   // made by lm_head_cross_entropy
  std::shared_ptr<Var> base;  // a var sharing another's storage (tp_copy, tp_sum): keeps it alive
  int64_t numel() const { return value.numel; }
};
using VarPtr = std::shared_ptr<Var>;

// One mixture-of-experts layer's routing (Graph::moe_route): what the combine and the
// load-balancing loss need.
struct MoeRoute {
  VarPtr probs;                        // [rows, experts] fp32 softmax of the router logits
  VarPtr weights;                      // [rows, k] fp32 combine weights (renormalised if norm_topk_prob)
  std::vector<int32_t> choice;         // [rows * k] the chosen experts (host), by decreasing probability
  std::shared_ptr<DeviceBuffer> ids;   // the same on the device, as exact fp32 integers
  int64_t rows = 0, experts = 0, k = 0;
};

class Graph {
 public:
  explicit Graph(Context& ctx) : ctx_(ctx) {}
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  Context& ctx() { return ctx_; }

  // Leaves. input: data without a gradient; param: a parameter whose gradient is accumulated.
  VarPtr input(const Buffer& b, std::string name);
  VarPtr param(const Parameter& p);
  // A new activation var of `numel` elements (requires_grad when any of `from` does).
  VarPtr activation(int64_t numel, DType dtype, std::string name, std::initializer_list<VarPtr> from);

  // Records `backward` (run by backward() in reverse order) under op kind `kind` (its simulated time
  // is charged to kind + " backward").
  void record(const std::string& kind, std::function<void()> backward);

  // Seeds d(loss) = seed (fp32, loss's numel) and runs the recorded closures in reverse; the tape is
  // empty afterwards. UserError if loss does not require a gradient or seed's size differs.
  void backward(const VarPtr& loss, const Buffer& seed);
  // For a loss from lm_head_cross_entropy: differentiates scale x its mean over the rows with a
  // target (e.g. scale = 1 / micro-batches of the step). UserError for any other var.
  void backward(const VarPtr& loss, double scale);

  // The gradient of v as the closures see it (empty Buffer if nothing reached v yet).
  const Buffer& grad(const Var& v) const { return v.grad.get(); }
  // Adds g (any float dtype, v's numel) into v's gradient (written on first use, added after);
  // parameters' go to param_grad. Nothing if v does not require a gradient.
  void accumulate(Var& v, const Buffer& g);
  // The gradient of v rounded to `dtype` (a fresh buffer), e.g. the matrix input of a dgrad GEMM.
  DeviceBuffer grad_as(const Var& v, DType dtype, const std::string& name);

  // A parameter's accumulated gradient (fp32, the parameter's local numel); UserError if none.
  const Buffer& param_grad(const Parameter& p) const;
  bool has_param_grad(const Parameter& p) const { return param_grads_.count(&p) > 0; }
  // Forgets every parameter gradient (the next contribution is written, not added).
  void reset_param_grads() { param_grads_.clear(); }
  std::vector<const Parameter*> params_with_grad() const;

  // Tensor parallelism (Megatron-LM's conjugate operators f and g: Shoeybi et al. 2019,
  // arXiv:1909.08053, section 3 and figure 3). With TP 1 both return x itself (no op, no record).
  // tp_copy (f): y = x (the same storage), placed before column-parallel layers; in the backward
  //   dX = dY summed over the TP group (an all-reduce of the fp32 gradient, "tp all-reduce
  //   backward"), since each rank's columns contributed a part of it.
  // tp_sum (g): y = x summed over the TP group (an all-reduce in place on x's storage, "tp
  //   all-reduce"), placed after row-parallel layers; in the backward dX = dY. x must be a var whose
  //   value no backward reads (a linear's output is such a var).
  VarPtr tp_copy(const VarPtr& x);
  VarPtr tp_sum(const VarPtr& x);
  // Marks p's gradient as this rank's part of a sum over the TP group: a replicated parameter applied
  // only to this rank's share of something (QK-norm's weight on its heads). Nothing with TP 1.
  void sum_grad_over_tp(const Parameter& p);
  // All-reduces over the TP group the accumulated gradient of every parameter marked by
  // sum_grad_over_tp, in the order they were marked (the same on every rank); call it once per step,
  // after the last micro-batch's backward, on every TP rank.
  void reduce_tp_partial_grads();

  // Activation recomputation (gradient checkpointing: Chen et al. 2016, arXiv:1604.06174; Megatron's
  // full and selective recomputation, Korthikanti et al. 2022, arXiv:2205.05198). fn builds ops on
  // this graph from `inputs` and returns the region's outputs. The forward runs fn with recording
  // off: nothing inside the region is saved (its intermediates are freed as fn drops them), only
  // `inputs` (kept for the backward) and the outputs (which later ops read). When the backward
  // reaches the region it runs fn again on the same inputs, recording on a sub-tape, with every op
  // kind charged to "<kind> recompute" (a tp_sum inside repeats its all-reduce, "tp all-reduce
  // recompute", as Megatron's recomputed forward does), hands the outputs' gradients to the
  // recomputed outputs and runs the sub-tape: the same kernels in the same order as without
  // recomputation, so parameter and input gradients are bit-identical (fn must be deterministic and
  // must not keep what it builds outside its outputs). Nothing is recomputed when no input wants a
  // gradient (fn just runs). UserError if fn returns no output or one that does not want a gradient
  // while an input does.
  using RegionFn = std::function<std::vector<VarPtr>(const std::vector<VarPtr>&)>;
  std::vector<VarPtr> checkpoint(const std::vector<VarPtr>& inputs, RegionFn fn);
  // True while a checkpointed region's forward runs without recording.
  bool recording() const { return recording_; }

  // --- ops. Shapes: rows are tokens; x [rows, in]. Each returns a new var.
  // y [rows, out_local] = x . W^T (x in the matmul dtype; y in `out_dtype`). Biases are refused here
  // (their backward comes with the bias kernels).
  VarPtr linear(const VarPtr& x, const Linear& layer, int64_t rows, DType out_dtype);
  // y = a + b (same numel; y in `out_dtype`).
  VarPtr add(const VarPtr& a, const VarPtr& b, DType out_dtype);
  // y = x rounded to `dtype` (the gradient passes through unchanged).
  VarPtr cast(const VarPtr& x, DType dtype);
  // x [tokens, hidden] fp32 = the embedding's table rows at `tokens`.
  VarPtr embedding(const Embedding& e, const std::vector<int32_t>& tokens);
  // y [rows, cols] = norm(x) (RMSNorm or LayerNorm of `norm`), in `out_dtype`.
  VarPtr norm(const VarPtr& x, const Norm& norm, int64_t rows, DType out_dtype);
  // Per-row softmax cross-entropy of the logits h . W^T (W: `head` [vocab, hidden]) against
  // `targets` (-1: ignored row), computed chunk_rows rows at a time: [chunk_rows, vocab] logits are
  // the most ever held; with several chunks the backward recomputes each chunk's logits (with one,
  // the forward's are kept for it). Returns [rows] fp32 losses (0 on
  // ignored rows); differentiate it with backward(loss, scale). h and the logits are in the head's
  // dtype (bf16 even when the other matrix inputs are fp16).
  VarPtr lm_head_cross_entropy(const VarPtr& h, const Parameter& head, int64_t rows, const std::vector<int32_t>& targets,
                               int64_t chunk_rows = 1024);
  // y = silu(g) * u, [rows, cols] (SwiGLU's gate; y in `out_dtype`).
  VarPtr swiglu(const VarPtr& g, const VarPtr& u, DType out_dtype);
  // Rotary positions on x [tokens, heads * head_dim] (head_dim = the table's), token t at
  // positions[t]; y in x's dtype.
  VarPtr rope(const VarPtr& x, const kernels::RopeTable& table, int64_t tokens, int64_t heads,
              const std::vector<int32_t>& positions);
  // Causal (or not) self-attention of `batch` sequences of `seq` tokens each, no cache: q [batch *
  // seq, heads * d], k and v [batch * seq, kv_heads * d], all in one 16-bit dtype; returns o like q.
  // Forward: the attention kernel per sequence, keeping each row's log-sum-exp; backward: the
  // attention backward kernel (kernels/AttentionBackward) in `style`.
  VarPtr attention(const VarPtr& q, const VarPtr& k, const VarPtr& v, int64_t batch, int64_t seq, int64_t heads,
                   int64_t kv_heads, int64_t head_dim, bool causal, const kernels::AttentionWorkspace& ws,
                   kernels::AttentionStyle style = kernels::AttentionStyle::kPipelined);

  // --- mixture of experts (Qwen3-MoE; nn::Moe::training_forward chains these).
  // The routing of one layer: probs = softmax(logits) [rows, experts] (logits fp32, the router
  // linear's output), the top-k experts per row chosen on the host from the read-back probs
  // (nn::route_top_k, as the inference forward), and the combine weights [rows, k] fp32 (the chosen
  // probabilities, divided by their sum when norm_topk_prob). In timing-only mode the routes are
  // balanced (pair i -> expert i mod experts), weights 1/k. Backward: kernels::moe_router_backward
  // from the gradients of the weights and of probs (the load-balancing loss's): the choice itself
  // has no gradient. UserError if logits is not [rows, experts] fp32 or k is outside [1, experts].
  MoeRoute moe_route(const VarPtr& logits, int64_t rows, int64_t experts, int64_t k, bool norm_topk_prob);
  // y [rows.size(), cols] = x[rows[i], :] for x [n, cols] (kernels::gather_rows); y in `out_dtype`.
  // Backward: dX[r] += the dY rows gathered from r, in order (kernels::embedding_backward's
  // deterministic scatter-add). UserError for a row outside [0, n).
  VarPtr gather_rows(const VarPtr& x, int64_t cols, const std::vector<int32_t>& rows, DType out_dtype);
  // Grouped linear (the experts' projections): x [R, in] holds counts[e] rows for weights[e] one
  // group after another (R = sum counts); y [R, out] = each group . W_e^T, one grouped launch (every
  // W_e [out, in]); y in `out_dtype`. Backward: dX and dW_e per group; a weight whose group is empty
  // gets a zero gradient (so an optimizer finds one for every parameter). UserError on mismatched
  // sizes.
  VarPtr grouped_linear(const VarPtr& x, const std::vector<const Parameter*>& weights, const std::vector<int64_t>& counts,
                        DType out_dtype);
  // y [T, cols] = sum_j w[t, j] src[slot[t*k + j], :] (kernels::gather_combine) for T = slot.size()
  // / k, w [T, k]; every src row named at most once. Backward: kernels::gather_combine_backward
  // (dsrc, 0 on rows no slot names, and dw). y in `out_dtype`.
  VarPtr combine(const VarPtr& src, int64_t cols, const std::vector<int32_t>& slot, int64_t k, const VarPtr& w,
                 DType out_dtype);
  // Adds the auxiliary load-balancing loss of every MoE layer's route to the per-row losses of
  // lm_head_cross_entropy (in place, rows with a target >= 0), so that their mean is the
  // cross-entropy's mean plus coef * aux, the loss Hugging Face's Qwen3MoeForCausalLM trains on:
  // aux = E sum_e f_e P_e over the rows of all layers together (kernels/RouterBackward has the
  // definition and sources). The backward (run by backward(loss, scale)) gives each layer's probs
  // the gradient scale * coef * E count_e / N^2. Nothing if routes is empty or coef is 0. UserError
  // if loss is not a loss var of targets.size() rows or the routes disagree on experts or k.
  void add_load_balancing_loss(const VarPtr& loss, const std::vector<int32_t>& targets,
                               const std::vector<MoeRoute>& routes, double coef);

 private:
  // Runs the recorded closures in reverse order, emptying the tape.
  void run_tape();
  // p's gradient [m, n] += a^T . b (a [k, m], b [k, n], fp32): the GEMM writes the gradient itself on
  // p's first contribution, else a temporary that is added.
  void weight_grad(const Parameter& p, const Buffer& a, const Buffer& b, int64_t m, int64_t n, int64_t k);
  // Writes or adds a freshly computed fp32 gradient into `slot` (empty: takes it over).
  void add_into(DeviceBuffer& slot, DeviceBuffer&& g);
  void add_into(DeviceBuffer& slot, const Buffer& g);

  struct Entry {
    std::string kind;
    std::function<void()> backward;
    bool times_itself = false;  // a checkpointed region: its ops time themselves (not nested in kind)
  };
  bool recording_ = true;  // false inside a checkpointed region's first forward
  Context& ctx_;
  std::vector<Entry> tape_;
  std::map<const Parameter*, DeviceBuffer> param_grads_;
  std::vector<const Parameter*> tp_partial_;  // sum_grad_over_tp, in marking order
};

}  // namespace ppu::nn
