// Tests of the nn modules against simple references: Linear (replicated, column- and row-parallel
// shards summing to the whole), Norm (RMS and Layer) against double-precision formulas, Parameter
// sharding and its errors; and ownership: a model whose forward runs out of simulated memory halfway
// leaves the device's accounting exactly as it was, and a destroyed model leaves nothing allocated.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "TestUtil.hpp"
#include "models/Qwen3.hpp"
#include "nn/Linear.hpp"
#include "nn/Norm.hpp"

namespace ppu::nn {
namespace {

const ChipSpec& chip() {
  static const ChipSpec c = load_chip("zhenwu-810e");
  return c;
}

// y [rows, out] = x [rows, in] . W^T in double, W [out, in].
std::vector<double> linear_ref(const std::vector<float>& x, const std::vector<float>& w, int64_t rows, int64_t out,
                               int64_t in) {
  std::vector<double> y(static_cast<size_t>(rows * out));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double acc = 0;
      for (int64_t i = 0; i < in; ++i) acc += double(x[static_cast<size_t>(r * in + i)]) * w[static_cast<size_t>(o * in + i)];
      y[static_cast<size_t>(r * out + o)] = acc;
    }
  return y;
}

using test::rel_max;

TEST(NnLinear, ColumnAndRowShardsComputeTheWholeLayer) {
  Device dev(chip(), ExecMode::kFunctional, 1);
  const int64_t rows = 5, out = 24, in = 40, tp = 2;
  const std::vector<float> x = test::random_values(static_cast<size_t>(rows * in), DType::kBF16, 1);
  const std::vector<float> w = test::random_values(static_cast<size_t>(out * in), DType::kBF16, 2);
  const std::vector<double> want = linear_ref(x, w, rows, out, in);
  // Tolerance: fp32 accumulation of `in` bf16 products, output rounded to fp32 (2^-24 relative each).
  const double tol = 1e-5;
  DeviceBuffer xd = dev.alloc_owned(DType::kBF16, rows * in, "x");
  dev.upload(xd, x);
  {  // replicated
    Linear full(dev, "p", out, in, DType::kBF16, false, TpSplit::kReplicated);
    dev.upload(full.weight, full.weight.shard_of(w));
    DeviceBuffer y = dev.alloc_owned(DType::kF32, rows * out, "y");
    full.forward(dev, xd, y, rows);
    EXPECT_LT(rel_max(dev.download(y), want), tol);
  }
  // Column-parallel: shard r computes columns [r * out/tp, (r+1) * out/tp).
  std::vector<float> cols(static_cast<size_t>(rows * out));
  for (int r = 0; r < tp; ++r) {
    Linear c(dev, "p", out, in, DType::kBF16, false, TpSplit::kColumn, r, static_cast<int>(tp));
    EXPECT_EQ(c.out_local(), out / tp);
    dev.upload(c.weight, c.weight.shard_of(w));
    DeviceBuffer y = dev.alloc_owned(DType::kF32, rows * c.out_local(), "y");
    c.forward(dev, xd, y, rows);
    const std::vector<float> part = dev.download(y);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < c.out_local(); ++j)
        cols[static_cast<size_t>(i * out + r * c.out_local() + j)] = part[static_cast<size_t>(i * c.out_local() + j)];
  }
  EXPECT_LT(rel_max(cols, want), tol);
  // Row-parallel: shard r reads columns [r * in/tp, ...) of x; the partial sums add up to y.
  std::vector<float> sum(static_cast<size_t>(rows * out), 0.0f);
  for (int r = 0; r < tp; ++r) {
    Linear rp(dev, "p", out, in, DType::kBF16, true, TpSplit::kRow, r, static_cast<int>(tp));
    EXPECT_EQ(rp.in_local(), in / tp);
    EXPECT_EQ(rp.bias.shape, (std::vector<int64_t>{out})) << "a row-parallel bias is whole (added after the reduction)";
    dev.upload(rp.weight, rp.weight.shard_of(w));
    std::vector<float> xs;
    for (int64_t i = 0; i < rows; ++i)
      xs.insert(xs.end(), x.begin() + i * in + r * rp.in_local(), x.begin() + i * in + (r + 1) * rp.in_local());
    DeviceBuffer xr = dev.alloc_owned(DType::kBF16, rows * rp.in_local(), "xr"), y = dev.alloc_owned(DType::kF32, rows * out, "y");
    dev.upload(xr, xs);
    rp.forward(dev, xr, y, rows);
    const std::vector<float> part = dev.download(y);
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += part[i];
  }
  EXPECT_LT(rel_max(sum, want), tol);
  test::expect_error([&] { Linear(dev, "bad", 25, in, DType::kBF16, false, TpSplit::kColumn, 0, 2); },
                     {"parameter 'bad.weight'", "split along dimension 0 into 2 parts"});
}

TEST(NnNorm, RmsAndLayerNormMatchTheFormulas) {
  Device dev(chip(), ExecMode::kFunctional, 1);
  const int64_t rows = 3, cols = 64;
  const float eps = 1e-6f;
  const std::vector<float> x = test::random_values(static_cast<size_t>(rows * cols), DType::kF32, 3);
  DeviceBuffer xd = dev.alloc_owned(DType::kF32, rows * cols, "x"), y = dev.alloc_owned(DType::kF32, rows * cols, "y");
  dev.upload(xd, x);
  for (bool layer : {false, true}) {
    Norm n(dev, "n", cols, layer, eps);
    const std::vector<float> w = test::random_values(static_cast<size_t>(cols), DType::kBF16, 4);
    const std::vector<float> b = test::random_values(static_cast<size_t>(cols), DType::kBF16, 5);
    dev.upload(n.weight, w);
    if (layer) dev.upload(n.bias, b);
    EXPECT_EQ(n.bias.held(), layer);
    n.forward(dev, xd, y, rows);
    std::vector<double> want(static_cast<size_t>(rows * cols));
    for (int64_t r = 0; r < rows; ++r) {
      double mean = 0, sq = 0;
      for (int64_t c = 0; c < cols; ++c) mean += x[static_cast<size_t>(r * cols + c)];
      mean = layer ? mean / cols : 0.0;
      for (int64_t c = 0; c < cols; ++c) sq += std::pow(x[static_cast<size_t>(r * cols + c)] - mean, 2);
      const double inv = 1.0 / std::sqrt(sq / cols + eps);
      for (int64_t c = 0; c < cols; ++c)
        want[static_cast<size_t>(r * cols + c)] =
            (x[static_cast<size_t>(r * cols + c)] - mean) * inv * w[static_cast<size_t>(c)] + (layer ? b[static_cast<size_t>(c)] : 0.0);
    }
    EXPECT_LT(rel_max(dev.download(y), want), 1e-5) << (layer ? "layer_norm" : "rms_norm");
  }
}

TEST(NnParameter, ShardsAndRefusesSplitsThatDoNotDivide) {
  Device dev(chip(), ExecMode::kTimingOnly);
  const std::vector<float> whole = {0, 1, 2, 3, 4, 5, 6, 7};  // [2, 4]
  Parameter rows = Parameter::make(dev, "r", {2, 4}, DType::kBF16, Init::kRandom, Split{0, 1, 2});
  EXPECT_EQ(rows.shard_of(whole), (std::vector<float>{4, 5, 6, 7}));
  EXPECT_EQ(rows.value->numel, 4);
  Parameter cols = Parameter::make(dev, "c", {2, 4}, DType::kBF16, Init::kRandom, Split{1, 1, 2});
  EXPECT_EQ(cols.shard_of(whole), (std::vector<float>{2, 3, 6, 7}));
  Parameter away = Parameter::elsewhere("e", {2, 4});
  EXPECT_FALSE(away.held());
  EXPECT_EQ(away.bytes(), 0);
  EXPECT_EQ(away.numel(), 8);
  test::expect_error([&] { Parameter::make(dev, "x", {3, 4}, DType::kBF16, Init::kRandom, Split{0, 0, 2}); },
                     {"parameter 'x'", "dimension 0 into 2 parts"});
  test::expect_error([&] { Parameter::make(dev, "v", {4}, DType::kBF16, Init::kRandom, Split{1, 0, 2}); },
                     {"parameter 'v'", "dimension 1"});
  test::expect_error([&] { Parameter::make(dev, "p", {4, 4}, DType::kBF16, Init::kRandom, Split{0, 2, 2}); },
                     {"(part 2)"});
  const int64_t used = dev.bytes_in_use();
  { Parameter tmp = Parameter::make(dev, "t", {16}, DType::kF32, Init::kOnes); }
  EXPECT_EQ(dev.bytes_in_use(), used) << "a parameter frees its buffer";
}

TEST(NnOwnership, OutOfMemoryMidForwardLeavesTheAccountingExact) {
  const ModelConfig cfg = load_model_config("tiny");
  Qwen3Options o;
  o.max_context = 2048;
  int64_t model_bytes = 0;
  {
    Device big(chip(), ExecMode::kTimingOnly);
    Qwen3Model m(big, cfg, Qwen3Weights::random(1), o);
    model_bytes = big.bytes_in_use();
    ASSERT_GT(model_bytes, m.weight_bytes());
  }
  // A chip with room for the model and a little more: a long prompt's activations do not fit.
  ChipSpec small = chip();
  small.hbm_size.value = static_cast<double>(model_bytes + (int64_t{1} << 20));  // 1 MiB: one row of logits fits
  Device dev(small, ExecMode::kTimingOnly);
  {
    Qwen3Model m(dev, cfg, Qwen3Weights::random(1), o);
    const int64_t before = dev.bytes_in_use();
    EXPECT_THROW(m.forward(std::vector<int32_t>(2048, 7)), DeviceOutOfMemory);
    EXPECT_EQ(dev.bytes_in_use(), before) << "every activation allocated before the failure is freed";
    EXPECT_NO_THROW(m.forward({1, 2, 3})) << "the model still runs what fits";
  }
  EXPECT_EQ(dev.bytes_in_use(), 0) << "a destroyed model frees its weights, caches and tables";
}

}  // namespace
}  // namespace ppu::nn
