// Tests of the typed op records (isa/Kernel.hpp KernelOp): every kernel family says what it computes
// in its own class and dimensions, concatenations join the lists, a record refuses to answer for
// another class; and of nn/OpBackward: each class's backward is the documented one, timed against
// the kernels launched by hand (the simple reference).
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
#include "kernels/Softmax.hpp"
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
  EXPECT_EQ(op.elementwise_dims(), (ElementwiseDims{512, 2}));
  op = only_op(dev, [&] { kernels::unary(dev, UnaryOp::kSilu, x, p); });
  EXPECT_EQ(op.elementwise_dims(), (ElementwiseDims{512, 1}));

  const DeviceBuffer table = buf(DType::kBF16, 100 * 64), rows = buf(DType::kF32, 5 * 64);
  op = only_op(dev, [&] { kernels::embedding(dev, table, rows, 100, 64, {1, 2, 3, 4, 99}); });
  EXPECT_EQ(op.op, OpClass::kEmbedding);
  EXPECT_EQ(op.row_dims(), (RowDims{5, 64}));
  op = only_op(dev, [&] { kernels::gather_rows(dev, table, 64, {7, 8, 9, 0, 1}, rows); });
  EXPECT_EQ(op.op, OpClass::kGather);
  EXPECT_EQ(op.row_dims(), (RowDims{5, 64}));

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

TEST(OpBackward, MethodPerClass) {
  EXPECT_EQ(backward_method({KernelOp::gemm({}), KernelOp::gemm({})}), BackwardMethod::kGemmDgradWgrad);
  EXPECT_EQ(backward_method({KernelOp::attention({})}), BackwardMethod::kAttentionKernel);
  EXPECT_EQ(backward_method({KernelOp::rows(OpClass::kRmsNorm, {})}), BackwardMethod::kTwiceForward);
  EXPECT_EQ(backward_method({KernelOp::gemm({}), KernelOp::elementwise({})}), BackwardMethod::kTwiceForward);
  EXPECT_EQ(backward_method({}), BackwardMethod::kTwiceForward);
}

TEST(OpBackward, GemmBackwardIsDgradPlusWgradOfTheForwardsSize) {
  Device dev(h100(), ExecMode::kTimingOnly);
  const kernels::GemmShape fs{256, 512, 384, 1, false, true};  // a linear layer: x . W^T
  const DeviceBuffer a = dev.alloc_owned(DType::kBF16, 256 * 384, "x"), b = dev.alloc_owned(DType::kBF16, 512 * 384, "w"),
                     c = dev.alloc_owned(DType::kBF16, 256 * 512, "y");
  const Kernel fwd = kernels::make_gemm(dev.chip(), fs, a, b, c);
  const double got = backward_seconds(dev, fwd, 1.0, kernels::AttentionStyle::kPipelined);
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

TEST(OpBackward, AttentionBackwardIsTheBackwardKernelAndOthersTwiceTheForward) {
  Device dev(h100(), ExecMode::kTimingOnly);
  Kernel fwd;
  fwd.name = "attention";
  fwd.args = {TensorArg{DType::kBF16, 1, nullptr, 0, "q"}};
  fwd.ops = {KernelOp::attention(AttentionDims{1, 128, 128, 4, 2, 64, true, 0}),
             KernelOp::attention(AttentionDims{1, 128, 128, 4, 2, 64, true, 0})};
  const double got = backward_seconds(dev, fwd, 1.0, kernels::AttentionStyle::kPipelined);
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

  Kernel norm;
  norm.ops = {KernelOp::rows(OpClass::kRmsNorm, RowDims{8, 64})};
  EXPECT_DOUBLE_EQ(backward_seconds(dev, norm, 3.5e-6, kernels::AttentionStyle::kPipelined), 7e-6);
}

}  // namespace
}  // namespace ppu::nn
