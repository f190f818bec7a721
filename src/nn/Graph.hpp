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

struct Var {
  Buffer value;          // what ops read: owned below, an input's or a parameter's buffer
  DeviceBuffer owned;    // activations: the storage of value
  DeviceBuffer grad;     // fp32 gradient, once backward reaches the var
  const Parameter* param = nullptr;  // a parameter leaf: its gradient goes to Graph::param_grad
  bool requires_grad = false;
  std::string name;
  double loss_scale = 0;  // a loss var's d(scale x mean) seed, set by Graph::backward(loss, scale)
  bool is_loss = false;   // made by lm_head_cross_entropy
  int64_t numel() const { return value.numel; }
};
using VarPtr = std::shared_ptr<Var>;

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
  // ignored rows); differentiate it with backward(loss, scale).
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
  };
  Context& ctx_;
  std::vector<Entry> tape_;
  std::map<const Parameter*, DeviceBuffer> param_grads_;
};

}  // namespace ppu::nn
