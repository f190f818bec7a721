// Tests of the typed op records (isa/Kernel.hpp KernelOp): every kernel family says what it computes
// in its own class and dimensions, concatenations join the lists, a record refuses to answer for
// another class; and of nn/OpBackward: each class's backward is the documented one, timed against
// the kernels nn::Graph launches for that op in training (or, for the classes Graph has no op for,
// against the backward kernels launched by hand), and nothing is assumed.
#include <gtest/gtest.h>

#include <functional>
#include <vector>

#include "TestUtil.hpp"
#include "kernels/Attention.hpp"
#include "kernels/AttentionBackward.hpp"
#include "kernels/Elementwise.hpp"
#include "kernels/Embedding.hpp"
#include "kernels/Gather.hpp"
#include "kernels/Gemm.hpp"
#include "kernels/LayerNorm.hpp"
#include "kernels/RmsNorm.hpp"
#include "kernels/Rope.hpp"
#include "kernels/ActivationBackward.hpp"
#include "kernels/BiasActivation.hpp"
#include "kernels/RouterBackward.hpp"
#include "kernels/Softmax.hpp"
#include "nn/Graph.hpp"
#include "nn/OpBackward.hpp"

namespace ppu::nn {
namespace {

const ChipSpec& h100() {
  static const ChipSpec c = load_chip("h100");
  return c;
}

// The kernels `f` launches on `dev`.
std::vector<Kernel> launched(Device& dev, const std::function<void()>& f) {
  std::vector<Kernel> ks;
  dev.set_launch_observer([&](const Kernel& k, const KernelTiming&) { ks.push_back(k); });
  f();
  dev.set_launch_observer({});
  return ks;
}

// The one record of the one kernel `f` launches.
KernelOp only_op(Device& dev, const std::function<void()>& f) {
  const std::vector<Kernel> ks = launched(dev, f);
  EXPECT_EQ(ks.size(), 1u);
  EXPECT_EQ(ks.at(0).ops.size(), 1u) << ks.at(0).name;
  return ks.at(0).ops.at(0);
}

TEST(OpRecords, EveryKernelFamilySaysWhatItComputes) {
  Device dev(h100(), ExecMode::kTimingOnly);
  auto buf = [&](DType t, int64_t n) { return dev.alloc_owned(t, n, "b"); };
  const DeviceBuffer a = buf(DType::kBF16, 2 * 64 * 32), b = buf(DType::kBF16, 2 * 128 * 32), c = buf(DType::kBF16, 2 * 64 * 128);
  KernelOp op = only_op(dev, [&] { kernels::gemm(dev, kernels::GemmShape{64, 128, 32, 2, false, true}, a, b, c); });
  EXPECT_EQ(op.op, OpClass::kGemm);
  EXPECT_EQ(op.gemm_dims(), (GemmDims{64, 128, 32, 2, false, true}));

  const DeviceBuffer x = buf(DType::kF32, 8 * 64), w = buf(DType::kBF16, 64), y = buf(DType::kBF16, 8 * 64);
  op = only_op(dev, [&] { kernels::rms_norm(dev, x, w, y, 8, 64, 1e-6f); });
  EXPECT_EQ(op.op, OpClass::kRmsNorm);
  EXPECT_EQ(op.row_dims(), (RowDims{8, 64}));
  op = only_op(dev, [&] { kernels::layer_norm(dev, x, w, w, y, 8, 64, 1e-5f); });
  EXPECT_EQ(op.op, OpClass::kLayerNorm);
  EXPECT_EQ(op.row_dims(), (RowDims{8, 64}));
  const DeviceBuffer p = buf(DType::kF32, 8 * 64);
  op = only_op(dev, [&] { kernels::softmax(dev, x, p, 8, 64); });
  EXPECT_EQ(op.op, OpClass::kSoftmax);
  EXPECT_EQ(op.row_dims(), (RowDims{8, 64}));
  op = only_op(dev, [&] { kernels::binary(dev, BinaryOp::kAdd, x, p, p); });
  EXPECT_EQ(op.op, OpClass::kElementwise);
  EXPECT_EQ(op.elementwise_dims(), (ElementwiseDims{512, 2, ElementwiseFn::kAdd}));
  op = only_op(dev, [&] { kernels::unary(dev, UnaryOp::kSilu, x, p); });
  EXPECT_EQ(op.elementwise_dims(), (ElementwiseDims{512, 1, ElementwiseFn::kUnary}));

  const DeviceBuffer table = buf(DType::kBF16, 100 * 64), rows = buf(DType::kF32, 5 * 64);
  op = only_op(dev, [&] { kernels::embedding(dev, table, rows, 100, 64, {1, 2, 3, 4, 99}); });
  EXPECT_EQ(op.op, OpClass::kEmbedding);
  EXPECT_EQ(op.row_dims(), (RowDims{5, 64, 100}));
  op = only_op(dev, [&] { kernels::gather_rows(dev, table, 64, {7, 8, 9, 0, 1}, rows); });
  EXPECT_EQ(op.op, OpClass::kGather);
  EXPECT_EQ(op.row_dims(), (RowDims{5, 64, 100}));

  kernels::RopeTable rt = kernels::make_rope_table(dev, 1e6, 64, 32);
  const DeviceBuffer q = buf(DType::kBF16, 4 * 2 * 64);
  op = only_op(dev, [&] { kernels::rope(dev, rt, q, q, 4, 2, {0, 1, 2, 3}); });
  EXPECT_EQ(op.op, OpClass::kRope);
  EXPECT_EQ(op.rope_dims(), (RopeDims{4, 2, 64}));
  kernels::free_rope_table(dev, rt);

  kernels::AttentionWorkspace ws = kernels::make_attention_workspace(dev);
  const kernels::AttentionShape s{16, 4, 2, 64, 64, 8, 0.0f};
  const DeviceBuffer aq = buf(DType::kBF16, 16 * 4 * 64), kc = buf(DType::kBF16, 64 * 2 * 64), vc = buf(DType::kBF16, 64 * 2 * 64),
                     ao = buf(DType::kBF16, 16 * 4 * 64);
  const std::vector<Kernel> ks = launched(dev, [&] { kernels::attention(dev, ws, s, aq, kc, vc, ao); });
  ASSERT_FALSE(ks.empty());
  ASSERT_EQ(ks.front().ops.size(), 1u);
  EXPECT_EQ(ks.front().ops[0].op, OpClass::kAttention);
  EXPECT_EQ(ks.front().ops[0].attention_dims(), (AttentionDims{1, 16, 24, 4, 2, 64, true, 8}));
  kernels::free_attention_workspace(dev, ws);
}

TEST(OpRecords, ConcatenationJoinsAndMismatchesAreRefused) {
  Device dev(h100(), ExecMode::kTimingOnly);
  const DeviceBuffer a = dev.alloc_owned(DType::kBF16, 64 * 64, "a"), c = dev.alloc_owned(DType::kBF16, 64 * 64, "c");
  const Kernel g = kernels::make_gemm(dev.chip(), kernels::GemmShape{64, 64, 64, 1, false, false}, a, a, c);
  const Kernel e = kernels::make_copy(dev.chip(), a, c);
  const Kernel both = concat_kernels("both", {g, e});
  ASSERT_EQ(both.ops.size(), 2u);
  EXPECT_EQ(both.ops[0].op, OpClass::kGemm);
  EXPECT_EQ(both.ops[1].op, OpClass::kElementwise);
  test::expect_error([&] { (void)both.ops[0].row_dims(); }, {"asked for row dimensions of a 'gemm' op"});
  test::expect_error([&] { (void)both.ops[1].gemm_dims(); }, {"gemm dimensions of a 'elementwise' op"});
  test::expect_error([] { KernelOp::rows(OpClass::kGemm, RowDims{1, 2}); }, {"'gemm' does not take row dimensions",
                                                                             "valid: rms_norm, layer_norm"});
  EXPECT_EQ(op_class_name(OpClass::kRope), "rope");
  EXPECT_EQ(kOpClassNames.size(), static_cast<size_t>(OpClass::kCount));
}

TEST(OpBackward, MethodPerClassAndNoneAssumed) {
  EXPECT_EQ(backward_method(KernelOp::gemm({})), BackwardMethod::kGemmDgradWgrad);
  EXPECT_EQ(backward_method(KernelOp::attention({})), BackwardMethod::kAttentionKernel);
  EXPECT_EQ(backward_method(KernelOp::rows(OpClass::kRmsNorm, {})), BackwardMethod::kNormKernel);
  EXPECT_EQ(backward_method(KernelOp::rows(OpClass::kSoftmax, {})), BackwardMethod::kRouterKernel);
  EXPECT_EQ(backward_method(KernelOp::rows(OpClass::kGather, RowDims{4, 8, 8, 2})), BackwardMethod::kCombineKernel);
  EXPECT_EQ(backward_method(KernelOp::rows(OpClass::kGather, RowDims{4, 8, 8})), BackwardMethod::kEmbeddingScatter);
  EXPECT_EQ(backward_method(KernelOp::rope({})), BackwardMethod::kRopeKernel);
  auto ew = [](ElementwiseFn f) { return backward_method(KernelOp::elementwise(ElementwiseDims{8, 1, f})); };
  EXPECT_EQ(ew(ElementwiseFn::kAdd), BackwardMethod::kGradientPassedOn);
  EXPECT_EQ(ew(ElementwiseFn::kSwiglu), BackwardMethod::kActivationKernel);
  EXPECT_EQ(ew(ElementwiseFn::kKvCacheWrite), BackwardMethod::kNone);
  // Every class and every elementwise function has a name; none falls back to an assumption: what
  // has no backward defined is refused.
  for (size_t i = 0; i < kElementwiseFnNames.size(); ++i) EXPECT_FALSE(kElementwiseFnNames[i].empty()) << i;
  for (size_t i = 0; i < kBackwardMethods.size(); ++i) {
    EXPECT_FALSE(kBackwardMethods[i].empty()) << i;
    EXPECT_EQ(kBackwardMethods[i].find("assum"), std::string_view::npos) << kBackwardMethods[i];
  }
  test::expect_error([&] { (void)ew(ElementwiseFn::kUnspecified); }, {"'unspecified' has no training backward"});
  test::expect_error([&] { (void)ew(ElementwiseFn::kTriad); }, {"'triad' has no training backward"});
  Device dev(h100(), ExecMode::kTimingOnly);
  Kernel none;
  none.name = "undescribed";
  test::expect_error([&] { (void)backward_seconds(dev, none, kernels::AttentionStyle::kPipelined); },
                     {"kernel 'undescribed' has no op record"});
  Kernel gather;
  gather.ops = {KernelOp::rows(OpClass::kGather, RowDims{4, 8})};
  test::expect_error([&] { (void)backward_seconds(dev, gather, kernels::AttentionStyle::kPipelined); },
                     {"does not say its source rows"});
  EXPECT_EQ(dev.bytes_in_use(), 0);
}

TEST(OpBackward, GemmBackwardIsDgradPlusWgradOfTheForwardsSize) {
  Device dev(h100(), ExecMode::kTimingOnly);
  const kernels::GemmShape fs{256, 512, 384, 1, false, true};  // a linear layer: x . W^T
  const DeviceBuffer a = dev.alloc_owned(DType::kBF16, 256 * 384, "x"), b = dev.alloc_owned(DType::kBF16, 512 * 384, "w"),
                     c = dev.alloc_owned(DType::kBF16, 256 * 512, "y");
  const Kernel fwd = kernels::make_gemm(dev.chip(), fs, a, b, c);
  const double got = backward_seconds(dev, fwd, kernels::AttentionStyle::kPipelined);
  // Reference: dX [256, 384] = dY [256, 512] . W [512, 384]; d(W^T) [384, 512] = X^T . dY, fp32.
  Device ref(h100(), ExecMode::kTimingOnly);
  const DeviceBuffer dy = ref.alloc_owned(DType::kBF16, 256 * 512, "dy"), w = ref.alloc_owned(DType::kBF16, 512 * 384, "w"),
                     x = ref.alloc_owned(DType::kBF16, 256 * 384, "x"), dx = ref.alloc_owned(DType::kBF16, 256 * 384, "dx"),
                     dw = ref.alloc_owned(DType::kF32, 512 * 384, "dw");
  const double want = kernels::gemm(ref, kernels::GemmShape{256, 384, 512, 1, false, false}, dy, w, dx).time_s +
                      kernels::gemm(ref, kernels::GemmShape{384, 512, 256, 1, true, false}, x, dy, dw).time_s;
  EXPECT_NEAR(got, want, 1e-12 + 1e-9 * want);
  EXPECT_GT(got, 0.0);
  EXPECT_EQ(dev.bytes_in_use(), a->bytes + b->bytes + c->bytes) << "gradient buffers are freed";
}

TEST(OpBackward, AttentionBackwardIsTheBackwardKernel) {
  Device dev(h100(), ExecMode::kTimingOnly);
  Kernel fwd;
  fwd.name = "attention";
  fwd.args = {TensorArg{DType::kBF16, 1, nullptr, 0, "q"}};
  fwd.ops = {KernelOp::attention(AttentionDims{1, 128, 128, 4, 2, 64, true, 0}),
             KernelOp::attention(AttentionDims{1, 128, 128, 4, 2, 64, true, 0})};
  const double got = backward_seconds(dev, fwd, kernels::AttentionStyle::kPipelined);
  // Reference: one backward call for the two identical sequences (batch 2).
  Device ref(h100(), ExecMode::kTimingOnly);
  kernels::AttentionBackwardShape s;
  s.batch = 2, s.seq_q = 128, s.seq_k = 128, s.q_heads = 4, s.kv_heads = 2, s.head_dim = 64, s.causal = true;
  const int64_t qn = 2 * 128 * 4 * 64, kn = 2 * 128 * 2 * 64;
  std::vector<DeviceBuffer> bb;
  for (auto [n, t] : {std::pair{qn, DType::kBF16}, {kn, DType::kBF16}, {kn, DType::kBF16}, {qn, DType::kBF16},
                      {qn, DType::kBF16}, {int64_t{2 * 4 * 128}, DType::kF32}, {qn, DType::kBF16}, {kn, DType::kBF16},
                      {kn, DType::kBF16}})
    bb.push_back(ref.alloc_owned(t, n, "t"));
  kernels::AttentionWorkspace ws = kernels::make_attention_workspace(ref);
  kernels::AttentionBackwardConfig cfg;
  cfg = kernels::choose_attention_backward_config(ref.chip(), s, DType::kBF16, cfg);
  const double want =
      kernels::attention_backward(ref, ws, s, bb[0], bb[1], bb[2], bb[3], bb[4], bb[5], bb[6], bb[7], bb[8], nullptr, &cfg).time_s();
  kernels::free_attention_workspace(ref, ws);
  EXPECT_NEAR(got, want, 1e-12 + 1e-9 * want);
  EXPECT_EQ(dev.bytes_in_use(), 0) << "buffers and workspace are freed";

}

// The reference for every class but GEMM and attention (tested above): the kernels nn::Graph
// launches for the op's backward in training, on the same shape, on a timing-only device. Each
// case builds the forward record as the models' forward (nn modules) builds it, times
// backward_seconds on it, and times Graph's backward of the same op (less the seed's copy into the
// output's gradient, which belongs to no op). The times must agree to rounding.
struct GraphRig {
  Device dev{h100(), ExecMode::kTimingOnly};
  Context ctx{dev, ParallelGroups{}, DType::kBF16, DType::kBF16};
  Graph g{ctx};
  std::vector<DeviceBuffer> held;
  VarPtr var(DType t, int64_t n, const char* name) {
    held.push_back(dev.alloc_owned(t, n, name));
    VarPtr v = g.input(held.back(), name);
    v->requires_grad = true;
    return v;
  }
  // Simulated seconds of the kernels f launches (copies to and from the host excluded).
  double kernel_seconds(const std::function<void()>& f) {
    const size_t first = dev.records().size();
    f();
    double t = 0;
    for (size_t i = first; i < dev.records().size(); ++i)
      if (dev.records()[i].kind == OpKind::kKernel) t += dev.records()[i].end_s - dev.records()[i].start_s;
    return t;
  }
  // Graph's backward of everything recorded since the tape was empty, seeded at y.
  double backward(const VarPtr& y) {
    const DeviceBuffer seed = dev.alloc_owned(DType::kF32, y->numel(), "seed"),
                       copy = dev.alloc_owned(DType::kF32, y->numel(), "seed_copy");
    const double seed_s = kernel_seconds([&] { kernels::copy(dev, seed, copy); });
    return kernel_seconds([&] { g.backward(y, seed); }) - seed_s;
  }
  double record_backward(const Kernel& k) { return backward_seconds(dev, k, kernels::AttentionStyle::kPipelined); }
  double record_backward(const std::function<void()>& forward) {
    double t = 0;
    for (const Kernel& k : launched(dev, forward)) t += record_backward(k);
    return t;
  }
};

std::vector<int32_t> iota_mod(int64_t n, int64_t m) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<int32_t>(i % m);
  return v;
}

void expect_same_time(double got, double want, const char* what) {
  EXPECT_GT(want, 0.0) << what;
  EXPECT_NEAR(got, want, 1e-12 + 1e-9 * want) << what;
}

TEST(OpBackward, EveryClassTimesTheKernelsGraphLaunches) {
  const int64_t R = 96, C = 512;
  for (bool layer_norm : {false, true}) {  // a residual block: y = x + norm(x)
    GraphRig r;
    const Norm n(r.dev, "n", C, layer_norm, 1e-6f);
    VarPtr x = r.var(DType::kF32, R * C, "x");
    VarPtr h = r.g.norm(x, n, R, DType::kF32);
    VarPtr y = r.g.add(x, h, DType::kF32);
    const double want = r.backward(y);
    const DeviceBuffer hb = r.dev.alloc_owned(DType::kF32, R * C, "h");
    const double got = r.record_backward([&] { n.forward(r.dev, x->value, hb, R); }) +
                       r.record_backward([&] { kernels::binary(r.dev, BinaryOp::kAdd, x->value, hb, hb); });
    expect_same_time(got, want, layer_norm ? "layer norm + residual add" : "rms norm + residual add");
  }
  {  // SwiGLU, built as nn::Mlp builds it (the gate's silu, then the product)
    GraphRig r;
    VarPtr gv = r.var(DType::kBF16, R * C, "g"), uv = r.var(DType::kBF16, R * C, "u");
    VarPtr y = r.g.swiglu(gv, uv, DType::kBF16);
    const double want = r.backward(y);
    Kernel gate = kernels::make_unary(r.dev.chip(), UnaryOp::kSilu, gv->value, gv->value);
    Kernel prod = kernels::make_binary(r.dev.chip(), BinaryOp::kMul, gv->value, uv->value, y->value);
    set_elementwise_fn(gate, ElementwiseFn::kSwigluGate);
    set_elementwise_fn(prod, ElementwiseFn::kSwiglu);
    EXPECT_EQ(r.record_backward(gate), 0.0);
    expect_same_time(r.record_backward(prod), want, "swiglu");
  }
  {  // RoPE on [tokens, heads, head_dim]
    GraphRig r;
    const int64_t T = 64, H = 4, D = 128;
    kernels::RopeTable table = kernels::make_rope_table(r.dev, 1e6, D, T);
    VarPtr x = r.var(DType::kBF16, T * H * D, "q");
    VarPtr y = r.g.rope(x, table, T, H, iota_mod(T, T));
    const double want = r.backward(y);
    const double got = r.record_backward([&] { kernels::rope(r.dev, table, x->value, y->value, T, H, iota_mod(T, T)); });
    expect_same_time(got, want, "rope");
    kernels::free_rope_table(r.dev, table);
  }
  {  // the token embedding
    GraphRig r;
    const int64_t vocab = 1000, T = 256;
    const Embedding e(r.dev, vocab, C, 0);
    VarPtr x = r.g.embedding(e, iota_mod(T, vocab));
    const double want = r.backward(x);
    const DeviceBuffer out = r.dev.alloc_owned(DType::kF32, T * C, "out");
    const double got = r.record_backward([&] { kernels::embedding(r.dev, e.table, out, vocab, C, iota_mod(T, vocab)); });
    expect_same_time(got, want, "embedding");
  }
  {  // an MoE dispatch (a row gather), its combine and its router
    GraphRig r;
    const int64_t T = 64, K = 2, E = 8, S = T * K;
    VarPtr x = r.var(DType::kF32, T * C, "x");
    VarPtr d = r.g.gather_rows(x, C, iota_mod(S, T), DType::kF32);
    const double want_gather = r.backward(d);
    const double got_gather = r.record_backward([&] { kernels::gather_rows(r.dev, x->value, C, iota_mod(S, T), d->value); });
    expect_same_time(got_gather, want_gather, "gather rows");

    VarPtr src = r.var(DType::kBF16, S * C, "expert_out"), w = r.var(DType::kF32, T * K, "weights");
    VarPtr y = r.g.combine(src, C, iota_mod(S, S), K, w, DType::kF32);
    const double want_combine = r.backward(y);
    const double got_combine =
        r.record_backward([&] { kernels::gather_combine(r.dev, src->value, C, iota_mod(S, S), K, w->value, y->value); });
    expect_same_time(got_combine, want_combine, "combine");

    VarPtr logits = r.var(DType::kF32, T * E, "router_logits");
    MoeRoute route = r.g.moe_route(logits, T, E, K, true);
    const double want_router = r.backward(route.weights);
    Kernel sm = kernels::make_softmax(logits->value, route.probs->value, T, E);
    sm.ops = {KernelOp::rows(OpClass::kSoftmax, RowDims{T, E, 0, K, true})};  // as nn::Moe records it
    expect_same_time(r.record_backward(sm), want_router, "router");
  }
  {  // a cast
    GraphRig r;
    VarPtr x = r.var(DType::kBF16, R * C, "x");
    VarPtr y = r.g.cast(x, DType::kF32);
    const double want = r.backward(y);
    expect_same_time(r.record_backward([&] { kernels::copy(r.dev, x->value, y->value); }), want, "cast");
  }
}

// The classes nn::Graph has no op for: against their backward kernels launched by hand.
TEST(OpBackward, GeluBiasSoftmaxAndTheOpsWithoutABackward) {
  Device dev(h100(), ExecMode::kTimingOnly), ref(h100(), ExecMode::kTimingOnly);
  const int64_t R = 64, C = 1024;
  auto b = [&](DType t, int64_t n) { return ref.alloc_owned(t, n, "b"); };
  const DeviceBuffer x = dev.alloc_owned(DType::kBF16, R * C, "x"), bias = dev.alloc_owned(DType::kBF16, C, "bias"),
                     y = dev.alloc_owned(DType::kBF16, R * C, "y");
  const DeviceBuffer rx = b(DType::kBF16, R * C), rdy = b(DType::kF32, R * C), rdx = b(DType::kF32, R * C),
                     rbias = b(DType::kBF16, C), rdb = b(DType::kF32, C);
  const auto style = kernels::AttentionStyle::kPipelined;
  const Kernel gelu_bias = kernels::make_bias_activation(x, bias, y, R, C, UnaryOp::kGelu);
  EXPECT_EQ(gelu_bias.ops.at(0).elementwise_dims(), (ElementwiseDims{R * C, 2, ElementwiseFn::kBiasGelu, C}));
  auto kernels_of = [&](const std::function<void()>& f) {
    const size_t first = ref.records().size();
    f();
    double t = 0;
    for (size_t i = first; i < ref.records().size(); ++i) t += ref.records()[i].end_s - ref.records()[i].start_s;
    return t;
  };
  expect_same_time(backward_seconds(dev, gelu_bias, style),
                   kernels_of([&] { kernels::gelu_backward(ref, rx, rdy, rdx, R, C, &rbias.get(), &rdb.get()); }),
                   "bias + gelu: the GELU backward with the bias gradient (and its zeroing)");
  expect_same_time(backward_seconds(dev, kernels::make_unary(dev.chip(), UnaryOp::kGelu, x, y), style),
                   kernels_of([&] { kernels::gelu_backward(ref, rx, rdy, rdx, 1, R * C); }), "gelu");
  expect_same_time(backward_seconds(dev, kernels::make_bias_activation(x, bias, y, R, C), style),
                   kernels_of([&] { kernels::bias_grad(ref, rdy, rdb, R, C); }), "bias add");
  // A plain softmax: the router backward's Jacobian product with the output gradient as d_probs.
  const DeviceBuffer p = dev.alloc_owned(DType::kF32, R * C, "p");
  const DeviceBuffer rp = b(DType::kF32, R * C), rids = b(DType::kF32, R), rdw = b(DType::kF32, R), rdp = b(DType::kF32, R * C),
                     rdl = b(DType::kF32, R * C);
  expect_same_time(backward_seconds(dev, kernels::make_softmax(p, p, R, C), style),
                   kernels_of([&] { kernels::moe_router_backward(ref, rp, rids, rdw, rdp, rdl, R, C, 1, false); }),
                   "softmax");
  // No backward in training: a KV-cache write, a split-K reduce, an optimizer update.
  for (ElementwiseFn f : {ElementwiseFn::kKvCacheWrite, ElementwiseFn::kSplitKReduce, ElementwiseFn::kOptimizer}) {
    Kernel k = kernels::make_copy(dev.chip(), x, y);
    set_elementwise_fn(k, f);
    EXPECT_EQ(backward_seconds(dev, k, style), 0.0) << elementwise_fn_name(f);
  }
  EXPECT_EQ(dev.bytes_in_use(), x->bytes + bias->bytes + y->bytes + p->bytes) << "gradient buffers are freed";
}

}  // namespace
}  // namespace ppu::nn
