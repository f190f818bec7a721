#include "nn/Graph.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "arch/Error.hpp"
#include "ccl/Communicator.hpp"
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
#include "kernels/Gather.hpp"
#include "kernels/GatherBackward.hpp"
#include "kernels/Optimizer.hpp"
#include "kernels/RouterBackward.hpp"
#include "kernels/Softmax.hpp"
#include "nn/Moe.hpp"

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

Recompute parse_recompute(const std::string& s, const std::string& what) {
  for (int i = 0; i < static_cast<int>(std::size(kRecomputeNames)); ++i)
    if (s == kRecomputeNames[i]) return static_cast<Recompute>(i);
  throw UserError(fmt::format("{} '{}' is not a recomputation mode; use none, selective (the attention core) or full "
                              "(every layer)",
                              what, s));
}

void Graph::record(const std::string& kind, std::function<void()> backward) {
  if (!recording_) return;  // a checkpointed region's first forward: its backward comes from the recompute
  tape_.push_back(Entry{kind, std::move(backward)});
}

std::vector<VarPtr> Graph::checkpoint(const std::vector<VarPtr>& inputs, RegionFn fn) {
  bool wants = false;
  for (const VarPtr& v : inputs) wants = wants || v->requires_grad;
  if (!wants || !recording_) return fn(inputs);  // nothing to differentiate, or already inside a region
  std::vector<VarPtr> outs;
  {
    recording_ = false;
    struct Restore {
      bool& r;
      ~Restore() { r = true; }
    } restore{recording_};
    outs = fn(inputs);  // the region's intermediates die with fn's locals
  }
  if (outs.empty()) throw UserError("autograd: a checkpointed region returned no output");
  for (const VarPtr& o : outs)
    if (!o->requires_grad)
      throw UserError(fmt::format("autograd: checkpointed region output '{}' does not depend on anything with a gradient",
                                  o->name));
  tape_.push_back(Entry{"recompute", [this, inputs, outs, fn = std::move(fn)] {
                          bool any = false;
                          for (const VarPtr& o : outs) any = any || o->grad.valid();
                          if (!any) return;
                          // The recomputed forward on a sub-tape of its own (the outer tape keeps the
                          // entries before this region).
                          std::vector<Entry> outer;
                          std::swap(outer, tape_);
                          struct Restore {
                            Graph& g;
                            std::vector<Entry>& outer;
                            ~Restore() {
                              g.ctx_.set_kind_suffix("");
                              g.tape_ = std::move(outer);
                            }
                          } restore{*this, outer};
                          ctx_.set_kind_suffix(" recompute");
                          std::vector<VarPtr> again = fn(inputs);
                          ctx_.set_kind_suffix("");
                          if (again.size() != outs.size())
                            throw UserError("autograd: a checkpointed region's recompute returned another number of "
                                            "outputs");
                          for (size_t i = 0; i < outs.size(); ++i) {
                            if (again[i]->numel() != outs[i]->numel())
                              throw UserError(fmt::format("autograd: recomputed '{}' has {} elements; the forward's had {}",
                                                          again[i]->name, again[i]->numel(), outs[i]->numel()));
                            if (outs[i]->grad.valid()) again[i]->grad = std::move(outs[i]->grad);
                          }
                          again.clear();  // the sub-tape's closures hold what they need
                          run_tape();
                        },
                        /*times_itself=*/true});
  return outs;
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
    if (e.times_itself)
      e.backward();
    else
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

VarPtr Graph::tp_copy(const VarPtr& x) {
  const ParallelGroups& gr = ctx_.groups();
  if (gr.degrees.tp == 1) return x;
  auto y = std::make_shared<Var>();
  y->value = x->value;
  y->base = x;
  y->requires_grad = x->requires_grad;
  y->name = x->name + ".tp_copy";
  if (!y->requires_grad) return y;
  record("tp all-reduce", [this, x, y] {
    if (!y->grad.valid()) return;
    const ParallelGroups& g = ctx_.groups();
    if (!ctx_.log_collective("tp all-reduce", "tp", ccl::Collective::kAllReduce, static_cast<double>(y->grad->bytes)))
      g.tp_comm->all_reduce(g.tp_rank, y->grad, y->grad);  // timed under this entry's kind (run_tape)
    accumulate(*x, y->grad);
    y->grad.reset();
  });
  return y;
}

VarPtr Graph::tp_sum(const VarPtr& x) {
  if (ctx_.groups().degrees.tp == 1) return x;
  auto y = std::make_shared<Var>();
  y->value = x->value;
  y->base = x;
  y->requires_grad = x->requires_grad;
  y->name = x->name + ".tp_sum";
  ctx_.tp_all_reduce(y->value);
  if (!y->requires_grad) return y;
  record("tp sum", [this, x, y] {
    if (!y->grad.valid()) return;
    accumulate(*x, y->grad);
    y->grad.reset();
  });
  return y;
}

void Graph::sum_grad_over_tp(const Parameter& p) {
  if (ctx_.groups().degrees.tp == 1) return;
  if (std::find(tp_partial_.begin(), tp_partial_.end(), &p) == tp_partial_.end()) tp_partial_.push_back(&p);
}

void Graph::reduce_tp_partial_grads() {
  for (const Parameter* p : tp_partial_) {
    auto it = param_grads_.find(p);
    if (it == param_grads_.end())
      throw UserError(fmt::format("autograd: '{}' is marked for a TP sum but has no gradient", p->name));
    ctx_.tp_all_reduce(it->second);
  }
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
  const DType mm = head.value->dtype;  // the head's (bf16, also when the other matrices are fp16)
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

MoeRoute Graph::moe_route(const VarPtr& logits, int64_t rows, int64_t experts, int64_t k, bool norm_topk_prob) {
  if (rows < 1 || experts < 1 || k < 1 || k > experts || logits->numel() != rows * experts ||
      logits->value.dtype != DType::kF32)
    throw UserError(fmt::format("autograd: moe_route takes fp32 logits [{}, {}] and 1 <= k <= {}; got '{}' ({} elements, "
                                "{}), k = {}",
                                rows, experts, experts, logits->name, logits->numel(), dtype_name(logits->value.dtype), k));
  Device& dev = ctx_.dev();
  MoeRoute r;
  r.rows = rows;
  r.experts = experts;
  r.k = k;
  r.probs = activation(rows * experts, DType::kF32, "router_probs", {logits});
  r.weights = activation(rows * k, DType::kF32, "router_weights", {logits});
  ctx_.op("moe router", [&] { kernels::softmax(dev, logits->value, r.probs->value, rows, experts); });
  std::vector<float> weight(static_cast<size_t>(rows * k), 1.0f / static_cast<float>(k));
  r.choice.resize(static_cast<size_t>(rows * k));
  if (dev.functional()) {
    route_top_k(dev.download(r.probs->value), rows, experts, k, norm_topk_prob, r.choice, weight);
  } else {  // timing only: balanced routes, as nn::Moe::forward assumes
    for (int64_t i = 0; i < rows * k; ++i) r.choice[static_cast<size_t>(i)] = static_cast<int32_t>(i % experts);
  }
  dev.upload(r.weights->value, weight);
  r.ids = std::make_shared<DeviceBuffer>(ctx_.alloc(rows * k, "router_ids", DType::kF32));
  dev.upload(*r.ids, std::vector<float>(r.choice.begin(), r.choice.end()));
  if (!logits->requires_grad) return r;
  record("moe router", [this, logits, probs = r.probs, weights = r.weights, ids = r.ids, rows, experts, k,
                        norm_topk_prob] {
    if (!weights->grad.valid() && !probs->grad.valid()) return;
    Device& d = ctx_.dev();
    if (!weights->grad.valid()) {  // only the load-balancing loss reached the router
      weights->grad = ctx_.alloc(rows * k, "router_weights.grad", DType::kF32);
      kernels::fill(d, weights->grad, 0.0f);
    }
    DeviceBuffer dl = ctx_.alloc(rows * experts, "router_logits.grad", DType::kF32);
    kernels::moe_router_backward(d, probs->value, *ids, weights->grad, probs->grad.valid() ? probs->grad.get() : Buffer{},
                                 dl, rows, experts, k, norm_topk_prob);
    weights->grad.reset();
    probs->grad.reset();
    add_into(logits->grad, std::move(dl));
  });
  return r;
}

VarPtr Graph::gather_rows(const VarPtr& x, int64_t cols, const std::vector<int32_t>& rows, DType out_dtype) {
  if (cols < 1 || x->numel() % cols != 0 || rows.empty())
    throw UserError(fmt::format("autograd: gather_rows of '{}' ({} elements) in rows of {} columns, {} rows wanted",
                                x->name, x->numel(), cols, rows.size()));
  const int64_t n = x->numel() / cols, R = static_cast<int64_t>(rows.size());
  VarPtr y = activation(R * cols, out_dtype, x->name + ".gathered", {x});
  ctx_.op("moe dispatch", [&] { kernels::gather_rows(ctx_.dev(), x->value, cols, rows, y->value); });
  if (!y->requires_grad) return y;
  record("moe dispatch", [this, x, y, cols, n, rows] {
    if (!y->grad.valid()) return;
    DeviceBuffer dx = ctx_.alloc(n * cols, x->name + ".dx", DType::kF32);
    kernels::embedding_grad_zero(ctx_.dev(), dx);  // rows nothing was gathered from get 0
    kernels::embedding_backward(ctx_.dev(), y->grad, dx, n, cols, rows);
    y->grad.reset();
    add_into(x->grad, std::move(dx));
  });
  return y;
}

VarPtr Graph::grouped_linear(const VarPtr& x, const std::vector<const Parameter*>& weights,
                             const std::vector<int64_t>& counts, DType out_dtype) {
  if (weights.empty() || weights.size() != counts.size())
    throw UserError(fmt::format("autograd: grouped_linear of '{}' needs one row count per weight; got {} weights and {} "
                                "counts",
                                x->name, weights.size(), counts.size()));
  const int64_t out = weights[0]->shape[0], in = weights[0]->shape[1];
  int64_t R = 0;
  for (size_t e = 0; e < weights.size(); ++e) {
    const Parameter& w = *weights[e];
    if (w.shape.size() != 2 || w.shape[0] != out || w.shape[1] != in || counts[e] < 0)
      throw UserError(fmt::format("autograd: grouped_linear: weight '{}' is not [{}, {}] like the first, or its count {} "
                                  "is negative",
                                  w.name, out, in, counts[e]));
    R += counts[e];
  }
  if (x->numel() != R * in)
    throw UserError(fmt::format("autograd: grouped_linear takes [{}, {}] ({} rows in {} groups); '{}' has {} elements", R,
                                in, R, weights.size(), x->name, x->numel()));
  std::vector<VarPtr> w;
  for (const Parameter* p : weights) w.push_back(param(*p));
  VarPtr y = activation(R * out, out_dtype, weights[0]->name + ".grouped_out", {x, w[0]});
  const std::string name = fmt::format("grouped gemm {} groups {}x{}", weights.size(), out, in);
  ctx_.op("moe expert gemm", [&] {
    std::vector<Kernel> parts;
    int64_t r0 = 0;
    for (size_t e = 0; e < weights.size(); ++e) {
      const int64_t n = counts[e];
      if (n > 0)
        parts.push_back(kernels::make_gemm(ctx_.dev().chip(), kernels::GemmShape{n, out, in, 1, false, true},
                                           x->value.view(r0 * in, n * in), w[e]->value, y->value.view(r0 * out, n * out)));
      r0 += n;
    }
    if (!parts.empty()) kernels::launch_grouped(ctx_.dev(), name, std::move(parts));
  });
  if (!y->requires_grad) return y;
  const DType mm = ctx_.matmul_dtype();
  record("moe expert gemm", [this, x, w, y, counts, out, in, R, mm] {
    if (!y->grad.valid()) return;
    Device& dev = ctx_.dev();
    DeviceBuffer dy = grad_as(*y, mm, y->name + ".dy");
    y->grad.reset();
    DeviceBuffer dx = x->requires_grad ? ctx_.alloc(R * in, x->name + ".dx", DType::kF32) : DeviceBuffer{};
    int64_t r0 = 0;
    for (size_t e = 0; e < w.size(); ++e) {
      const int64_t n = counts[e];
      const Parameter& p = *w[e]->param;
      if (n == 0) {  // no rows: a zero gradient, unless an earlier contribution exists
        DeviceBuffer& slot = param_grads_[&p];
        if (!slot.valid()) {
          slot = ctx_.alloc(out * in, p.name + ".grad", DType::kF32);
          kernels::fill(dev, slot, 0.0f);
        }
        continue;
      }
      const Buffer dy_e = dy.view(r0 * out, n * out);
      if (dx.valid())  // dX_e [n, in] = dY_e [n, out] . W_e [out, in]
        kernels::gemm(dev, kernels::GemmShape{n, in, out, 1, false, false}, dy_e, w[e]->value, dx.view(r0 * in, n * in));
      weight_grad(p, dy_e, x->value.view(r0 * in, n * in), out, in, n);  // dW_e += dY_e^T . X_e
      r0 += n;
    }
    if (dx.valid()) add_into(x->grad, std::move(dx));
  });
  return y;
}

VarPtr Graph::combine(const VarPtr& src, int64_t cols, const std::vector<int32_t>& slot, int64_t k, const VarPtr& w,
                      DType out_dtype) {
  const auto S = static_cast<int64_t>(slot.size());
  if (cols < 1 || k < 1 || S == 0 || S % k != 0 || w->numel() != S || src->numel() % cols != 0)
    throw UserError(fmt::format("autograd: combine takes {} slots in tokens of k = {}, weights [tokens, k] and a source of "
                                "rows of {}; got weights '{}' of {} elements and source '{}' of {}",
                                S, k, cols, w->name, w->numel(), src->name, src->numel()));
  const int64_t T = S / k;
  VarPtr y = activation(T * cols, out_dtype, "moe_out", {src, w});
  ctx_.op("moe combine", [&] { kernels::gather_combine(ctx_.dev(), src->value, cols, slot, k, w->value, y->value); });
  if (!y->requires_grad) return y;
  record("moe combine", [this, src, w, y, cols, slot, k, T] {
    if (!y->grad.valid()) return;
    DeviceBuffer ds = ctx_.alloc(src->numel(), "moe_combine.dsrc", DType::kF32),
                 dw = ctx_.alloc(T * k, "moe_combine.dw", DType::kF32);
    if (static_cast<int64_t>(slot.size()) < src->numel() / cols)  // rows no slot names get 0
      kernels::fill(ctx_.dev(), ds, 0.0f);
    kernels::gather_combine_backward(ctx_.dev(), src->value, cols, slot, k, w->value, y->grad, ds, dw);
    y->grad.reset();
    if (src->requires_grad) add_into(src->grad, std::move(ds));
    if (w->requires_grad) add_into(w->grad, std::move(dw));
  });
  return y;
}

void Graph::add_load_balancing_loss(const VarPtr& loss, const std::vector<int32_t>& targets,
                                    const std::vector<MoeRoute>& routes, double coef) {
  if (!loss->is_loss || loss->numel() != static_cast<int64_t>(targets.size()))
    throw UserError(fmt::format("autograd: add_load_balancing_loss needs the per-row loss of lm_head_cross_entropy for {} "
                                "targets; '{}' has {} elements{}",
                                targets.size(), loss->name, loss->numel(), loss->is_loss ? "" : " and is not a loss"));
  if (!std::isfinite(coef) || coef < 0)
    throw UserError(fmt::format("autograd: load-balancing coefficient {} must be a non-negative number", coef));
  if (routes.empty() || coef == 0) return;
  const int64_t E = routes[0].experts, K = routes[0].k;
  int64_t N = 0;
  for (const MoeRoute& r : routes) {
    if (r.experts != E || r.k != K)
      throw UserError(fmt::format("autograd: add_load_balancing_loss: routes of {} experts top-{} and {} top-{} mixed",
                                  E, K, r.experts, r.k));
    N += r.rows;
  }
  Device& dev = ctx_.dev();
  // aux = coef E / N^2 sum_e count_e psum_e; d aux / d p[row, e] = coef E count_e / N^2.
  const double scale = coef * static_cast<double>(E) / (static_cast<double>(N) * static_cast<double>(N));
  auto stats = std::make_shared<DeviceBuffer>(ctx_.alloc(2 * E, "moe_routing_stats", DType::kF32));
  std::vector<float> mask(targets.size());
  int64_t valid = 0;
  for (size_t i = 0; i < targets.size(); ++i) {
    mask[i] = targets[i] >= 0 ? 1.0f : 0.0f;
    valid += targets[i] >= 0 ? 1 : 0;
  }
  ctx_.op("moe load balancing", [&] {
    kernels::fill(dev, *stats, 0.0f);
    for (const MoeRoute& r : routes) kernels::moe_routing_stats(dev, r.probs->value, *r.ids, *stats, r.rows, E, K);
    DeviceBuffer m = ctx_.alloc(loss->numel(), "loss_mask", DType::kF32), aux = ctx_.alloc(1, "aux_loss", DType::kF32);
    dev.upload(m, mask);
    kernels::moe_load_balancing_loss(dev, *stats, m, loss->value, aux, E, static_cast<float>(scale));
  });
  std::vector<VarPtr> probs;
  for (const MoeRoute& r : routes) probs.push_back(r.probs);
  record("moe load balancing", [this, loss, probs, stats, scale, valid, E] {
    if (valid == 0 || loss->loss_scale == 0) return;  // d(loss_scale x mean over the rows with a target) / d aux
    const auto s = static_cast<float>(scale * loss->loss_scale);
    for (const VarPtr& p : probs) {
      const int64_t rows = p->numel() / E;
      DeviceBuffer dp = ctx_.alloc(rows * E, "router_probs.grad", DType::kF32);
      kernels::moe_load_balancing_backward(ctx_.dev(), *stats, dp, rows, E, s);
      add_into(p->grad, std::move(dp));
    }
  });
}

}  // namespace ppu::nn
