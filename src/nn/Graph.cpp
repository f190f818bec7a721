#include "nn/Graph.hpp"

#include <fmt/format.h>

#include <cmath>

#include "arch/Error.hpp"
#include "kernels/ActivationBackward.hpp"
#include "kernels/AttentionBackward.hpp"
#include "kernels/Elementwise.hpp"
#include "kernels/CrossEntropy.hpp"
#include "kernels/Embedding.hpp"
#include "kernels/EmbeddingBackward.hpp"
#include "kernels/Gemm.hpp"
#include "kernels/LayerNorm.hpp"
#include "kernels/NormBackward.hpp"
#include "kernels/RmsNorm.hpp"
#include "kernels/RopeBackward.hpp"

namespace ppu::nn {

VarPtr Graph::input(const Buffer& b, std::string name) {
  auto v = std::make_shared<Var>();
  v->value = b;
  v->name = std::move(name);
  return v;
}

VarPtr Graph::param(const Parameter& p) {
  if (!p.held()) throw UserError(fmt::format("autograd: parameter '{}' is held by another rank", p.name));
  auto v = std::make_shared<Var>();
  v->value = p.value;
  v->param = &p;
  v->requires_grad = true;
  v->name = p.name;
  return v;
}

VarPtr Graph::activation(int64_t numel, DType dtype, std::string name, std::initializer_list<VarPtr> from) {
  auto v = std::make_shared<Var>();
  v->owned = ctx_.alloc(numel, name, dtype);
  v->value = v->owned;
  v->name = std::move(name);
  for (const VarPtr& f : from) v->requires_grad = v->requires_grad || f->requires_grad;
  return v;
}

void Graph::record(const std::string& kind, std::function<void()> backward) {
  tape_.push_back(Entry{kind, std::move(backward)});
}

void Graph::backward(const VarPtr& loss, const Buffer& seed) {
  if (!loss->requires_grad)
    throw UserError(fmt::format("autograd: '{}' does not depend on anything with a gradient", loss->name));
  if (seed.numel != loss->numel())
    throw UserError(fmt::format("autograd: seed '{}' has {} elements; the loss '{}' has {}", seed.name, seed.numel,
                                loss->name, loss->numel()));
  accumulate(*loss, seed);
  run_tape();
}

void Graph::run_tape() {
  while (!tape_.empty()) {
    Entry e = std::move(tape_.back());
    tape_.pop_back();
    ctx_.op(e.kind + " backward", e.backward);
  }  // each entry's captured tensors are freed as it goes
}

void Graph::backward(const VarPtr& loss, double scale) {
  if (!loss->is_loss)
    throw UserError(fmt::format("autograd: '{}' is not a loss (lm_head_cross_entropy); seed it with a buffer", loss->name));
  if (!std::isfinite(scale)) throw UserError(fmt::format("autograd: loss scale {} is not finite", scale));
  loss->loss_scale = scale;
  run_tape();
}

void Graph::add_into(DeviceBuffer& slot, DeviceBuffer&& g) {
  if (!slot.valid() && g->dtype == DType::kF32) {
    slot = std::move(g);
    return;
  }
  add_into(slot, g.get());
}

void Graph::add_into(DeviceBuffer& slot, const Buffer& g) {
  Device& dev = ctx_.dev();
  if (!slot.valid()) {
    slot = ctx_.alloc(g.numel, g.name + ".grad", DType::kF32);
    kernels::copy(dev, g, slot);
    return;
  }
  if (g.numel != slot->numel)
    throw UserError(fmt::format("autograd: a gradient of {} elements added to one of {}", g.numel, slot->numel));
  kernels::binary(dev, BinaryOp::kAdd, slot, g, slot);
}

void Graph::weight_grad(const Parameter& p, const Buffer& a, const Buffer& b, int64_t m, int64_t n, int64_t k) {
  const kernels::GemmShape shape{m, n, k, 1, /*trans_a=*/true, false};
  DeviceBuffer& slot = param_grads_[&p];
  if (!slot.valid()) {  // the first contribution is written, not added to zeros
    slot = ctx_.alloc(m * n, p.name + ".grad", DType::kF32);
    kernels::gemm(ctx_.dev(), shape, a, b, slot);
    return;
  }
  DeviceBuffer g = ctx_.alloc(m * n, p.name + ".dw", DType::kF32);
  kernels::gemm(ctx_.dev(), shape, a, b, g);
  add_into(slot, g.get());
}

void Graph::accumulate(Var& v, const Buffer& g) {
  if (!v.requires_grad) return;
  if (g.numel != v.numel())
    throw UserError(fmt::format("autograd: gradient '{}' has {} elements; '{}' has {}", g.name, g.numel, v.name,
                                v.numel()));
  add_into(v.param ? param_grads_[v.param] : v.grad, g);
}

DeviceBuffer Graph::grad_as(const Var& v, DType dtype, const std::string& name) {
  if (!v.grad.valid()) throw UserError(fmt::format("autograd: '{}' has no gradient yet", v.name));
  DeviceBuffer out = ctx_.alloc(v.numel(), name, dtype);
  kernels::copy(ctx_.dev(), v.grad, out);
  return out;
}

const Buffer& Graph::param_grad(const Parameter& p) const {
  auto it = param_grads_.find(&p);
  if (it == param_grads_.end()) throw UserError(fmt::format("autograd: parameter '{}' has no gradient", p.name));
  return it->second;
}

std::vector<const Parameter*> Graph::params_with_grad() const {
  std::vector<const Parameter*> v;
  for (const auto& [p, g] : param_grads_) v.push_back(p);
  return v;
}

VarPtr Graph::linear(const VarPtr& x, const Linear& layer, int64_t rows, DType out_dtype) {
  if (layer.bias.held())
    throw UserError(fmt::format("autograd: linear '{}' has a bias; training biases is not supported yet",
                                layer.weight.name));
  const int64_t in = layer.in_local(), out = layer.out_local();
  if (x->numel() != rows * in)
    throw UserError(fmt::format("autograd: linear '{}' takes [{}, {}] ({} elements); '{}' has {}", layer.weight.name,
                                rows, in, rows * in, x->name, x->numel()));
  VarPtr w = param(layer.weight);
  VarPtr y = activation(rows * out, out_dtype, layer.weight.name + ".out", {x, w});
  ctx_.op("linear", [&] { layer.forward(ctx_.dev(), x->value, y->value, rows); });
  if (!y->requires_grad) return y;
  const DType mm = ctx_.matmul_dtype();
  record("linear", [this, x, w, y, rows, in, out, mm, name = layer.weight.name] {
    Var* yv = y.get();
    if (!yv->grad.valid()) return;  // nothing downstream needed this output
    Device& dev = ctx_.dev();
    DeviceBuffer dy = grad_as(*yv, mm, name + ".dy");
    yv->grad.reset();
    if (x->requires_grad) {  // dX [rows, in] = dY [rows, out] . W [out, in]
      DeviceBuffer dx = ctx_.alloc(rows * in, name + ".dx", DType::kF32);
      kernels::gemm(dev, kernels::GemmShape{rows, in, out, 1, false, false}, dy, w->value, dx);
      add_into(x->grad, std::move(dx));
    }
    weight_grad(*w->param, dy, x->value, out, in, rows);  // dW [out, in] += dY^T . X
  });
  return y;
}

VarPtr Graph::add(const VarPtr& a, const VarPtr& b, DType out_dtype) {
  if (a->numel() != b->numel())
    throw UserError(fmt::format("autograd: add of '{}' ({} elements) and '{}' ({})", a->name, a->numel(), b->name,
                                b->numel()));
  VarPtr y = activation(a->numel(), out_dtype, a->name + "+" + b->name, {a, b});
  ctx_.op("residual", [&] { kernels::binary(ctx_.dev(), BinaryOp::kAdd, a->value, b->value, y->value); });
  if (!y->requires_grad) return y;
  record("residual", [this, a, b, y] {
    Var* yv = y.get();
    if (!yv->grad.valid()) return;
    accumulate(*a, yv->grad);
    accumulate(*b, yv->grad);
    yv->grad.reset();
  });
  return y;
}

VarPtr Graph::cast(const VarPtr& x, DType dtype) {
  VarPtr y = activation(x->numel(), dtype, x->name + "." + std::string(dtype_name(dtype)), {x});
  ctx_.op("cast", [&] { kernels::copy(ctx_.dev(), x->value, y->value); });
  if (!y->requires_grad) return y;
  record("cast", [this, x, y] {
    Var* yv = y.get();
    if (!yv->grad.valid()) return;
    accumulate(*x, yv->grad);
    yv->grad.reset();
  });
  return y;
}

VarPtr Graph::embedding(const Embedding& e, const std::vector<int32_t>& tokens) {
  VarPtr table = param(e.table);
  const auto T = static_cast<int64_t>(tokens.size());
  const int64_t vocab = e.table.shape[0], hidden = e.table.shape[1];
  VarPtr x = activation(T * hidden, DType::kF32, "embed", {table});
  ctx_.op("embedding", [&] { kernels::embedding(ctx_.dev(), e.table, x->value, vocab, hidden, tokens); });
  record("embedding", [this, table, x, tokens, vocab, hidden] {
    if (!x->grad.valid()) return;
    DeviceBuffer& slot = param_grads_[table->param];
    if (!slot.valid()) {
      slot = ctx_.alloc(vocab * hidden, table->name + ".grad", DType::kF32);
      kernels::embedding_grad_zero(ctx_.dev(), slot);
    }
    kernels::embedding_backward(ctx_.dev(), x->grad, slot, vocab, hidden, tokens);
    x->grad.reset();
  });
  return x;
}

VarPtr Graph::norm(const VarPtr& x, const Norm& n, int64_t rows, DType out_dtype) {
  const int64_t cols = n.cols();
  if (x->numel() != rows * cols)
    throw UserError(fmt::format("autograd: norm '{}' takes [{}, {}]; '{}' has {} elements", n.weight.name, rows, cols,
                                x->name, x->numel()));
  VarPtr w = param(n.weight);
  VarPtr b = n.bias.held() ? param(n.bias) : nullptr;
  VarPtr y = activation(rows * cols, out_dtype, n.weight.name + ".out", {x, w});
  ctx_.op("norm", [&] { n.forward(ctx_.dev(), x->value, y->value, rows); });
  record("norm", [this, x, w, b, y, rows, cols, eps = n.eps()] {
    if (!y->grad.valid()) return;
    Device& dev = ctx_.dev();
    DeviceBuffer dx = ctx_.alloc(rows * cols, "norm.dx", DType::kF32);
    DeviceBuffer& dw = param_grads_[w->param];
    const bool acc_w = dw.valid();
    if (!acc_w) dw = ctx_.alloc(cols, w->name + ".grad", DType::kF32);
    if (b) {
      DeviceBuffer& db = param_grads_[b->param];
      const bool acc = acc_w && db.valid();
      if (!db.valid()) db = ctx_.alloc(cols, b->name + ".grad", DType::kF32);
      if (acc != acc_w) throw UserError("autograd: a LayerNorm's weight and bias gradients must accumulate together");
      kernels::layer_norm_backward(dev, x->value, w->value, y->grad, dx, dw, db, rows, cols, eps, acc);
    } else {
      kernels::rms_norm_backward(dev, x->value, w->value, y->grad, dx, dw, rows, cols, eps, acc_w);
    }
    y->grad.reset();
    add_into(x->grad, std::move(dx));
  });
  return y;
}

VarPtr Graph::lm_head_cross_entropy(const VarPtr& h, const Parameter& head, int64_t rows,
                                    const std::vector<int32_t>& targets, int64_t chunk_rows) {
  const int64_t vocab = head.shape[0], hidden = head.shape[1];
  if (h->numel() != rows * hidden || static_cast<int64_t>(targets.size()) != rows || chunk_rows < 1)
    throw UserError(fmt::format("autograd: lm_head_cross_entropy takes h [{}, {}] and {} targets in chunks of >= 1 rows; "
                                "got {} elements, {} targets, chunks of {}",
                                rows, hidden, rows, h->numel(), targets.size(), chunk_rows));
  VarPtr w = param(head);
  VarPtr loss = activation(rows, DType::kF32, "loss", {h, w});
  loss->is_loss = true;
  auto lse = std::make_shared<DeviceBuffer>(ctx_.alloc(rows, "loss.lse", DType::kF32));
  const DType mm = ctx_.matmul_dtype();
  // Rows [r0, r0 + n) of each chunk, and its logits computed into `logits` [n, vocab].
  auto chunk_logits = [this, h, w, hidden, vocab](int64_t r0, int64_t n, const Buffer& logits) {
    kernels::gemm(ctx_.dev(), kernels::GemmShape{n, vocab, hidden, 1, false, true}, h->value.view(r0 * hidden, n * hidden),
                  w->value, logits);
  };
  // One chunk (rows <= chunk_rows): its logits are kept for the backward instead of recomputed.
  auto kept = std::make_shared<DeviceBuffer>();
  ctx_.op("lm head", [&] {
    DeviceBuffer logits = ctx_.alloc(std::min(rows, chunk_rows) * vocab, "logits", mm);
    for (int64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
      const int64_t n = std::min(chunk_rows, rows - r0);
      const Buffer lc = logits.view(0, n * vocab);
      chunk_logits(r0, n, lc);
      const std::vector<int32_t> tc(targets.begin() + r0, targets.begin() + r0 + n);
      kernels::cross_entropy(ctx_.dev(), lc, loss->value.view(r0, n), lse->view(r0, n), n, vocab, tc);
    }
    if (rows <= chunk_rows) *kept = std::move(logits);
  });
  int64_t valid = 0;
  for (int32_t t : targets) valid += t >= 0 ? 1 : 0;
  record("lm head", [this, h, w, loss, lse, kept, rows, hidden, vocab, targets, chunk_rows, valid, chunk_logits, mm] {
    if (valid == 0 || loss->loss_scale == 0) return;
    Device& dev = ctx_.dev();
    const auto scale = static_cast<float>(loss->loss_scale / static_cast<double>(valid));
    DeviceBuffer logits = kept->valid() ? std::move(*kept) : ctx_.alloc(std::min(rows, chunk_rows) * vocab, "logits", mm);
    const bool recompute = rows > chunk_rows;
    DeviceBuffer dh = ctx_.alloc(rows * hidden, "lm_head.dh", DType::kF32);
    for (int64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
      const int64_t n = std::min(chunk_rows, rows - r0);
      const Buffer lc = logits.view(0, n * vocab);
      if (recompute) chunk_logits(r0, n, lc);  // several chunks: [rows, vocab] logits are never kept whole
      const std::vector<int32_t> tc(targets.begin() + r0, targets.begin() + r0 + n);
      kernels::cross_entropy_backward(dev, lc, lse->view(r0, n), lc, n, vocab, tc, scale);  // in place
      // dH [n, hidden] = dlogits [n, vocab] . W [vocab, hidden]; dW [vocab, hidden] += dlogits^T . H.
      kernels::gemm(dev, kernels::GemmShape{n, hidden, vocab, 1, false, false}, lc, w->value, dh.view(r0 * hidden, n * hidden));
      weight_grad(*w->param, lc, h->value.view(r0 * hidden, n * hidden), vocab, hidden, n);
    }
    if (h->requires_grad) add_into(h->grad, std::move(dh));
  });
  return loss;
}

VarPtr Graph::swiglu(const VarPtr& g, const VarPtr& u, DType out_dtype) {
  if (g->numel() != u->numel())
    throw UserError(fmt::format("autograd: swiglu of '{}' ({} elements) and '{}' ({})", g->name, g->numel(), u->name,
                                u->numel()));
  VarPtr y = activation(g->numel(), out_dtype, "swiglu", {g, u});
  ctx_.op("mlp activation", [&] {
    DeviceBuffer s = ctx_.alloc(g->numel(), "silu", ctx_.act_dtype());  // rounded as bf16 autocast rounds silu(g)
    kernels::unary(ctx_.dev(), UnaryOp::kSilu, g->value, s);
    kernels::binary(ctx_.dev(), BinaryOp::kMul, s, u->value, y->value);
  });
  if (!y->requires_grad) return y;
  record("mlp activation", [this, g, u, y] {
    if (!y->grad.valid()) return;
    DeviceBuffer dg = ctx_.alloc(g->numel(), "swiglu.dg", DType::kF32), du = ctx_.alloc(u->numel(), "swiglu.du", DType::kF32);
    kernels::swiglu_backward(ctx_.dev(), g->value, u->value, y->grad, dg, du, 1, g->numel());
    y->grad.reset();
    if (g->requires_grad) add_into(g->grad, std::move(dg));
    if (u->requires_grad) add_into(u->grad, std::move(du));
  });
  return y;
}

VarPtr Graph::rope(const VarPtr& x, const kernels::RopeTable& table, int64_t tokens, int64_t heads,
                   const std::vector<int32_t>& positions) {
  VarPtr y = activation(x->numel(), x->value.dtype, x->name + ".rope", {x});
  ctx_.op("qk-norm and rope", [&] { kernels::rope(ctx_.dev(), table, x->value, y->value, tokens, heads, positions); });
  if (!y->requires_grad) return y;
  record("qk-norm and rope", [this, x, y, table, tokens, heads, positions] {
    if (!y->grad.valid()) return;
    DeviceBuffer dx = ctx_.alloc(x->numel(), "rope.dx", DType::kF32);
    kernels::rope_backward(ctx_.dev(), table, y->grad, dx, tokens, heads, positions);
    y->grad.reset();
    add_into(x->grad, std::move(dx));
  });
  return y;
}

VarPtr Graph::attention(const VarPtr& q, const VarPtr& k, const VarPtr& v, int64_t batch, int64_t seq, int64_t heads,
                        int64_t kv_heads, int64_t head_dim, bool causal, const kernels::AttentionWorkspace& ws,
                        kernels::AttentionStyle style) {
  const int64_t qw = heads * head_dim, kvw = kv_heads * head_dim, T = batch * seq;
  if (q->numel() != T * qw || k->numel() != T * kvw || v->numel() != T * kvw)
    throw UserError(fmt::format("autograd: attention of {} sequences of {} tokens takes q [{}, {}] and k, v [{}, {}]; got "
                                "{}, {} and {} elements",
                                batch, seq, T, qw, T, kvw, q->numel(), k->numel(), v->numel()));
  VarPtr o = activation(T * qw, q->value.dtype, "attn", {q, k, v});
  auto lse = std::make_shared<DeviceBuffer>(ctx_.alloc(batch * heads * seq, "attn.lse", DType::kF32));
  ctx_.op("attention", [&] {
    for (int64_t b = 0; b < batch; ++b) {
      kernels::AttentionShape s{seq, heads, kv_heads, head_dim, seq, 0, 0.0f};
      s.causal = causal;
      kernels::AttentionConfig cfg;
      cfg.style = style;
      const Buffer lse_b = lse->view(b * heads * seq, heads * seq);
      kernels::attention(ctx_.dev(), ws, s, q->value.view(b * seq * qw, seq * qw), k->value.view(b * seq * kvw, seq * kvw),
                         v->value.view(b * seq * kvw, seq * kvw), o->value.view(b * seq * qw, seq * qw), nullptr, &cfg,
                         &lse_b);
    }
  });
  if (!o->requires_grad) return o;
  record("attention", [this, q, k, v, o, lse, batch, seq, heads, kv_heads, head_dim, causal, ws, style] {
    if (!o->grad.valid()) return;
    DeviceBuffer d_o = grad_as(*o, q->value.dtype, "attn.do");
    o->grad.reset();
    DeviceBuffer dq = ctx_.alloc(q->numel(), "attn.dq", DType::kF32), dk = ctx_.alloc(k->numel(), "attn.dk", DType::kF32),
                 dv = ctx_.alloc(v->numel(), "attn.dv", DType::kF32);
    kernels::AttentionBackwardShape s;
    s.batch = batch;
    s.seq_q = seq;
    s.seq_k = seq;
    s.q_heads = heads;
    s.kv_heads = kv_heads;
    s.head_dim = head_dim;
    s.causal = causal;
    kernels::AttentionBackwardConfig cfg;
    cfg.style = style;
    cfg = kernels::choose_attention_backward_config(ctx_.dev().chip(), s, q->value.dtype, cfg);
    kernels::attention_backward(ctx_.dev(), ws, s, q->value, k->value, v->value, o->value, d_o, *lse, dq, dk, dv, nullptr,
                                &cfg);
    if (q->requires_grad) add_into(q->grad, std::move(dq));
    if (k->requires_grad) add_into(k->grad, std::move(dk));
    if (v->requires_grad) add_into(v->grad, std::move(dv));
  });
  return o;
}

}  // namespace ppu::nn
