// Tests of nn/Graph (autograd): the gradients of linear layers, adds and casts against double
// references, accumulation over micro-batches, a chain of ops (the gradient flows through every
// op in reverse), the freeing of the tape, the mixture-of-experts ops (gather, grouped linear with
// an empty group, combine, routing) against double references, and the errors.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "TestUtil.hpp"
#include "kernels/AttentionBackward.hpp"
#include "kernels/RouterBackward.hpp"
#include "nn/Graph.hpp"

namespace ppu::nn {
namespace {

const ChipSpec& chip() {
  static const ChipSpec c = load_chip("zhenwu-810e");
  return c;
}

using test::rel_max;

struct Rig {
  Device dev{chip(), ExecMode::kFunctional, 1};
  Context ctx{dev, ParallelGroups{}, DType::kBF16, DType::kBF16};
  DeviceBuffer upload(const std::vector<float>& v, DType t, const char* name) {
    DeviceBuffer b = dev.alloc_owned(t, static_cast<int64_t>(v.size()), name);
    dev.upload(b, v);
    return b;
  }
};

// Tolerance: products of bf16 values accumulated in fp32, and the upstream gradient rounded to bf16
// (2^-8 relative) before each matrix product.
constexpr double kTol = 8e-3;

TEST(NnGraph, LinearGradientsMatchTheReferenceAndAccumulateOverMicroBatches) {
  Rig r;
  const int64_t rows = 6, in = 32, out = 16;
  Linear layer(r.dev, "l", out, in, DType::kBF16, false, TpSplit::kReplicated);
  const std::vector<float> w = test::random_values(static_cast<size_t>(out * in), DType::kBF16, 1);
  r.dev.upload(layer.weight, w);
  Graph g(r.ctx);
  std::vector<double> dw_want(static_cast<size_t>(out * in), 0.0);
  for (int mb = 0; mb < 2; ++mb) {
    const std::vector<float> x = test::random_values(static_cast<size_t>(rows * in), DType::kBF16, 10 + mb);
    const std::vector<float> seed = test::random_values(static_cast<size_t>(rows * out), DType::kBF16, 20 + mb);
    DeviceBuffer xb = r.upload(x, DType::kBF16, "x"), sb = r.upload(seed, DType::kF32, "seed");
    VarPtr xv = g.input(xb, "x");
    xv->requires_grad = true;
    VarPtr y = g.linear(xv, layer, rows, DType::kF32);
    g.backward(y, sb);
    // dX = seed . W; dW += seed^T . X.
    std::vector<double> dx_want(static_cast<size_t>(rows * in), 0.0);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t o = 0; o < out; ++o)
        for (int64_t k = 0; k < in; ++k) {
          const double s = seed[static_cast<size_t>(i * out + o)];
          dx_want[static_cast<size_t>(i * in + k)] += s * w[static_cast<size_t>(o * in + k)];
          dw_want[static_cast<size_t>(o * in + k)] += s * x[static_cast<size_t>(i * in + k)];
        }
    EXPECT_LT(rel_max(r.dev.download(xv->grad), dx_want), kTol) << "micro-batch " << mb;
  }
  EXPECT_LT(rel_max(r.dev.download(g.param_grad(layer.weight)), dw_want), kTol) << "the sum over both micro-batches";
  g.reset_param_grads();
  EXPECT_FALSE(g.has_param_grad(layer.weight));
}

TEST(NnGraph, GradientFlowsThroughAChainAndTheTapeFreesItsTensors) {
  Rig r;
  const int64_t rows = 4, h = 16;
  Linear a(r.dev, "a", h, h, DType::kBF16, false, TpSplit::kReplicated);
  Linear b(r.dev, "b", h, h, DType::kBF16, false, TpSplit::kReplicated);
  const std::vector<float> wa = test::random_values(static_cast<size_t>(h * h), DType::kBF16, 3);
  const std::vector<float> wb = test::random_values(static_cast<size_t>(h * h), DType::kBF16, 4);
  r.dev.upload(a.weight, wa);
  r.dev.upload(b.weight, wb);
  const std::vector<float> x = test::random_values(static_cast<size_t>(rows * h), DType::kBF16, 5);
  const std::vector<float> seed = test::random_values(static_cast<size_t>(rows * h), DType::kBF16, 6);
  DeviceBuffer xb = r.upload(x, DType::kF32, "x"), sb = r.upload(seed, DType::kF32, "seed");
  const int64_t before = r.dev.bytes_in_use();
  Graph g(r.ctx);
  {
    // z = x + b(cast(a(cast(x)))): a residual block of two linear layers.
    VarPtr xv = g.input(xb, "x");
    xv->requires_grad = true;
    VarPtr h1 = g.linear(g.cast(xv, DType::kBF16), a, rows, DType::kBF16);
    VarPtr h2 = g.linear(h1, b, rows, DType::kF32);
    VarPtr z = g.add(xv, h2, DType::kF32);
    g.backward(z, sb);
    // dx = seed + (seed . Wb) . Wa; dWb = seed^T h1; dWa = (seed . Wb)^T x.
    std::vector<double> d1(static_cast<size_t>(rows * h), 0.0), dx(seed.begin(), seed.end());
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t o = 0; o < h; ++o)
        for (int64_t k = 0; k < h; ++k)
          d1[static_cast<size_t>(i * h + k)] += double(seed[static_cast<size_t>(i * h + o)]) * wb[static_cast<size_t>(o * h + k)];
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t o = 0; o < h; ++o)
        for (int64_t k = 0; k < h; ++k)
          dx[static_cast<size_t>(i * h + k)] += d1[static_cast<size_t>(i * h + o)] * wa[static_cast<size_t>(o * h + k)];
    EXPECT_LT(rel_max(r.dev.download(xv->grad), dx), 2 * kTol);
    std::vector<double> dwa(static_cast<size_t>(h * h), 0.0);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t o = 0; o < h; ++o)
        for (int64_t k = 0; k < h; ++k)
          dwa[static_cast<size_t>(o * h + k)] += d1[static_cast<size_t>(i * h + o)] * x[static_cast<size_t>(i * h + k)];
    EXPECT_LT(rel_max(r.dev.download(g.param_grad(a.weight)), dwa), 2 * kTol);
    EXPECT_TRUE(g.has_param_grad(b.weight));
    EXPECT_FALSE(h1->grad.valid()) << "an activation's gradient is freed once its producer has run";
  }
  g.reset_param_grads();
  EXPECT_EQ(r.dev.bytes_in_use(), before) << "activations, saved tensors and gradients are all freed";
  EXPECT_GT(r.ctx.op_times().at("linear backward"), 0.0);
}

TEST(NnGraph, AttentionGradientsMatchTheDoubleReference) {
  Rig r;
  const int64_t B = 2, S = 24, nh = 4, nkv = 2, d = 32;
  kernels::AttentionWorkspace ws = kernels::make_attention_workspace(r.dev);
  const auto q = test::random_values(static_cast<size_t>(B * S * nh * d), DType::kBF16, 7);
  const auto k = test::random_values(static_cast<size_t>(B * S * nkv * d), DType::kBF16, 8);
  const auto v = test::random_values(static_cast<size_t>(B * S * nkv * d), DType::kBF16, 9);
  const auto seed = test::random_values(static_cast<size_t>(B * S * nh * d), DType::kBF16, 10);
  DeviceBuffer qb = r.upload(q, DType::kBF16, "q"), kb = r.upload(k, DType::kBF16, "k"), vb = r.upload(v, DType::kBF16, "v"),
               sb = r.upload(seed, DType::kF32, "seed");
  {
    Graph g(r.ctx);
    VarPtr qv = g.input(qb, "q"), kv = g.input(kb, "k"), vv = g.input(vb, "v");
    for (const VarPtr& x : {qv, kv, vv}) x->requires_grad = true;
    VarPtr o = g.attention(qv, kv, vv, B, S, nh, nkv, d, true, ws);
    kernels::AttentionBackwardShape s;
    s.batch = B, s.seq_q = S, s.seq_k = S, s.q_heads = nh, s.kv_heads = nkv, s.head_dim = d, s.causal = true;
    const kernels::AttentionBackwardReference want = kernels::attention_backward_reference(s, q, k, v, seed);
    // Forward: o rounded to bf16 on store.
    EXPECT_LT(rel_max(r.dev.download(o->value), want.o), 1e-2);
    g.backward(o, sb);
    // P and dS are rounded to bf16 before their products (kernels/AttentionBackward), and dO is
    // rounded to bf16: a few bf16 roundoffs relative to the largest gradient.
    EXPECT_LT(rel_max(r.dev.download(qv->grad), want.dq), 3e-2);
    EXPECT_LT(rel_max(r.dev.download(kv->grad), want.dk), 3e-2);
    EXPECT_LT(rel_max(r.dev.download(vv->grad), want.dv), 3e-2);
  }
  kernels::free_attention_workspace(r.dev, ws);
}

// The LM head's cross-entropy in one chunk (logits kept for the backward) and in chunks of 4 rows
// (logits recomputed per chunk) agree: the losses exactly, the gradients within fp32 summation order.
TEST(NnGraph, LmHeadCrossEntropyChunksAgree) {
  Rig r;
  const int64_t rows = 10, hidden = 32, vocab = 96;
  Parameter head = Parameter::make(r.dev, "lm_head.weight", {vocab, hidden}, DType::kBF16, Init::kRandom);
  r.dev.upload(head, test::random_values(static_cast<size_t>(vocab * hidden), DType::kBF16, 31));
  const std::vector<float> h = test::random_values(static_cast<size_t>(rows * hidden), DType::kBF16, 32);
  std::vector<int32_t> targets;
  for (int64_t i = 0; i < rows; ++i) targets.push_back(i == 3 ? -1 : static_cast<int32_t>((i * 37) % vocab));
  DeviceBuffer hb = r.upload(h, DType::kBF16, "h");
  std::vector<float> loss[2], dh[2], dw[2];
  for (int c = 0; c < 2; ++c) {
    Graph g(r.ctx);
    VarPtr hv = g.input(hb, "h");
    hv->requires_grad = true;
    VarPtr l = g.lm_head_cross_entropy(hv, head, rows, targets, c == 0 ? 1024 : 4);
    loss[c] = r.dev.download(l->value);
    g.backward(l, 1.0);
    dh[c] = r.dev.download(hv->grad);
    dw[c] = r.dev.download(g.param_grad(head));
  }
  EXPECT_EQ(loss[0], loss[1]);
  EXPECT_EQ(loss[0][3], 0.0f) << "an ignored row has no loss";
  std::vector<double> ref_dh(dh[0].begin(), dh[0].end()), ref_dw(dw[0].begin(), dw[0].end());
  EXPECT_LT(rel_max(dh[1], ref_dh), 1e-5);
  EXPECT_LT(rel_max(dw[1], ref_dw), 1e-5);
}

// MoE ops: gather_rows with a repeated and an unused row; grouped_linear with an empty group (its
// weight gets exactly zero); combine with source rows no slot names; moe_route's top-k choice and
// its backward. Tolerance kTol (bf16 inputs, fp32 sums, the upstream gradient rounded to bf16
// before each matrix product); the router's backward is fp32 throughout (1e-5).
TEST(NnGraph, MoeOpsMatchTheReference) {
  Rig r;
  const int64_t n = 4, H = 8, F = 4;
  const std::vector<float> x = test::random_values(size_t(n * H), DType::kBF16, 1);
  DeviceBuffer xb = r.upload(x, DType::kBF16, "x");
  Graph g(r.ctx);
  VarPtr xv = g.input(xb, "x");
  xv->requires_grad = true;
  const std::vector<int32_t> rows = {2, 0, 2, 3, 2};  // row 1 unused, row 2 three times
  const int64_t R = static_cast<int64_t>(rows.size());
  VarPtr xg = g.gather_rows(xv, H, rows, DType::kBF16);
  std::vector<Parameter> w;
  for (int e = 0; e < 3; ++e)
    w.push_back(Parameter::make(r.dev, std::string("w").append(std::to_string(e)), {F, H}, DType::kBF16, Init::kRandom));
  const std::vector<int64_t> counts = {2, 0, 3};
  VarPtr y = g.grouped_linear(xg, {&w[0], &w[1], &w[2]}, counts, DType::kF32);
  const std::vector<float> seed = test::random_values(size_t(R * F), DType::kBF16, 2);
  DeviceBuffer sb = r.upload(seed, DType::kF32, "seed");
  g.backward(y, sb);
  // Row i of the gathered x goes through w[group of i]: groups 0 (rows 0-1) and 2 (rows 2-4).
  std::vector<double> dx(size_t(n * H)), dw0(size_t(F * H)), dw2(size_t(F * H));
  for (int64_t i = 0; i < R; ++i) {
    const size_t e = i < 2 ? 0 : 2;
    const std::vector<float> we = r.dev.download(w[e].value);
    for (int64_t o = 0; o < F; ++o)
      for (int64_t k = 0; k < H; ++k) {
        const double s = seed[size_t(i * F + o)];
        dx[size_t(rows[size_t(i)] * H + k)] += s * we[size_t(o * H + k)];
        (e == 0 ? dw0 : dw2)[size_t(o * H + k)] += s * x[size_t(rows[size_t(i)] * H + k)];
      }
  }
  EXPECT_LT(rel_max(r.dev.download(xv->grad), dx), kTol);
  EXPECT_LT(rel_max(r.dev.download(g.param_grad(w[0])), dw0), kTol);
  EXPECT_LT(rel_max(r.dev.download(g.param_grad(w[2])), dw2), kTol);
  for (float v : r.dev.download(g.param_grad(w[1]))) ASSERT_EQ(v, 0.0f) << "the empty group's weight";

  // combine: T = 2 tokens, k = 2, src [6, H] with rows 2 and 4 unnamed.
  const std::vector<float> src = test::random_values(size_t(6 * H), DType::kBF16, 3), wt = {0.25f, 0.75f, 0.5f, 0.5f};
  DeviceBuffer srcb = r.upload(src, DType::kBF16, "src"), wb = r.upload(wt, DType::kF32, "wt");
  Graph g2(r.ctx);
  VarPtr sv = g2.input(srcb, "src"), wv = g2.input(wb, "wt");
  sv->requires_grad = wv->requires_grad = true;
  const std::vector<int32_t> slot = {3, 0, 5, 1};
  VarPtr c = g2.combine(sv, H, slot, 2, wv, DType::kF32);
  const std::vector<float> dy = test::random_values(size_t(2 * H), DType::kF32, 4);
  DeviceBuffer dyb = r.upload(dy, DType::kF32, "dy");
  g2.backward(c, dyb);
  std::vector<double> dsrc(src.size()), dwt(4);
  for (int64_t t = 0; t < 2; ++t)
    for (int64_t j = 0; j < 2; ++j)
      for (int64_t k = 0; k < H; ++k) {
        const size_t sr = size_t(slot[size_t(t * 2 + j)] * H + k);
        dsrc[sr] = wt[size_t(t * 2 + j)] * double(dy[size_t(t * H + k)]);
        dwt[size_t(t * 2 + j)] += src[sr] * double(dy[size_t(t * H + k)]);
      }
  EXPECT_LT(rel_max(r.dev.download(sv->grad), dsrc), 1e-6);
  EXPECT_LT(rel_max(r.dev.download(wv->grad), dwt), 1e-6);

  // moe_route: 3 tokens, 4 experts, top-2 renormalised; the choice is the two largest probabilities.
  const std::vector<float> logits = {0.1f, 2.0f, -1.0f, 1.0f, 3.0f, 0.0f, 2.5f, -2.0f, 0.0f, 0.0f, 1.0f, 0.5f};
  DeviceBuffer lb = r.upload(logits, DType::kF32, "logits");
  Graph g3(r.ctx);
  VarPtr lv = g3.input(lb, "logits");
  lv->requires_grad = true;
  const MoeRoute route = g3.moe_route(lv, 3, 4, 2, true);
  EXPECT_EQ(route.choice, (std::vector<int32_t>{1, 3, 0, 2, 2, 3}));  // ties to the lower index: none here
  const std::vector<float> p = r.dev.download(route.probs->value), wr = r.dev.download(route.weights->value);
  for (int64_t t = 0; t < 3; ++t) {
    const double a = p[size_t(t * 4 + route.choice[size_t(t * 2)])], b = p[size_t(t * 4 + route.choice[size_t(t * 2 + 1)])];
    EXPECT_NEAR(wr[size_t(t * 2)], a / (a + b), 1e-6);
  }
  const std::vector<float> dw = test::random_values(6, DType::kF32, 5);
  DeviceBuffer dwb = r.upload(dw, DType::kF32, "dw");
  g3.backward(route.weights, dwb);
  const std::vector<double> want = kernels::moe_router_backward_reference(p, route.choice, dw, {}, 3, 4, 2, true);
  EXPECT_LT(rel_max(r.dev.download(lv->grad), want), 1e-5);
}

TEST(NnGraph, Errors) {
  Rig r;
  Graph g(r.ctx);
  DeviceBuffer xb = r.dev.alloc_owned(DType::kBF16, 12, "x");
  VarPtr x = g.input(xb, "x");
  test::expect_error([&] { g.backward(x, xb); }, {"'x' does not depend on anything with a gradient"});
  Linear l(r.dev, "l", 4, 4, DType::kBF16, false, TpSplit::kReplicated);
  test::expect_error([&] { g.linear(x, l, 2, DType::kF32); }, {"linear 'l.weight' takes [2, 4] (8 elements)", "has 12"});
  Linear biased(r.dev, "lb", 4, 4, DType::kBF16, true, TpSplit::kReplicated);
  test::expect_error([&] { g.linear(x, biased, 3, DType::kF32); }, {"has a bias"});
  VarPtr y = g.linear(x, l, 3, DType::kF32);
  DeviceBuffer small = r.dev.alloc_owned(DType::kF32, 5, "small");
  test::expect_error([&] { g.backward(y, small); }, {"seed 'small' has 5 elements", "the loss 'l.weight.out' has 12"});
  test::expect_error([&] { (void)g.param_grad(biased.weight); }, {"parameter 'lb.weight' has no gradient"});
  Parameter away = Parameter::elsewhere("e", {4, 4});
  test::expect_error([&] { g.param(away); }, {"'e' is held by another rank"});
  DeviceBuffer lg = r.dev.alloc_owned(DType::kF32, 12, "lg");
  VarPtr lv = g.input(lg, "lg");
  test::expect_error([&] { g.moe_route(lv, 3, 4, 5, true); }, {"moe_route takes fp32 logits [3, 4] and 1 <= k <= 4", "k = 5"});
  test::expect_error([&] { g.grouped_linear(x, {&l.weight}, {1, 2}, DType::kF32); },
                     {"grouped_linear of 'x' needs one row count per weight; got 1 weights and 2 counts"});
  test::expect_error([&] { g.grouped_linear(x, {&l.weight}, {2}, DType::kF32); }, {"grouped_linear takes [2, 4]", "has 12"});
  test::expect_error([&] { g.combine(x, 4, {0, 1, 2}, 2, lv, DType::kF32); }, {"combine takes 3 slots in tokens of k = 2"});
}

}  // namespace
}  // namespace ppu::nn
