// Tests of kernels/LayerNorm against layer_norm_reference, on a functional device: shapes from one
// element to vocabulary-long rows (the chunked two-pass path with Chan's merge) and many short
// rows, every dtype and mixed dtypes, rows with a large mean (where E[x^2] - mean^2 would cancel),
// constant rows (variance 0: eps alone), in-place use, and each kind of invalid input.
//
// Error metric: per element, |y - ref| <= stored_bound(out, ref, e) with, for z = (x - mean) * rstd
// (from the reference), u = 2^-24, n = cols + chunks:
//  * mean: recursive summation, a scale, and (chunked) Chan's update with a few roundings per
//    chunk: |mean error| <= u (n + 4) mean_r|x| =: em;
//  * variance of the centred values: relative gamma_(n+4) plus the centring error's second-order
//    term; rsqrt halves the relative error and adds two roundings: rstd relative u (0.5 n + 8)
//    (as for RmsNorm);
//  * z: |z| u (0.5 n + 8) + em * rstd, then * gamma and + beta: two roundings on |z gamma| + |beta|.
// So e = |gamma| (|z| u (0.5 n + 8) + em rstd) + 2 u (|z gamma| + |beta|), with a 1% margin.
#include <gtest/gtest.h>

#include "KernelTestUtil.hpp"
#include "kernels/LayerNorm.hpp"

namespace ppu {
namespace {

using test::Shape;

constexpr float kEps = 1e-5f;
constexpr int kTile = kernels::kLayerNormTileElems;

const std::vector<Shape> kShapes = {{1, 1},        {1, 13},           {5, 1},  {7, 13},         {3, 257},
                                    {2, kTile},    {2, kTile + 1},    {3, 2 * kTile + 7}, {2, 151936},
                                    {140009, 3},   {600, 4099}};

void check_layer_norm(Device& dev, Shape s, DType x_t, DType p_t, DType y_t, const std::vector<float>& x,
                      const std::vector<float>& g, const std::vector<float>& b, float eps, bool in_place = false) {
  const std::string what = fmt::format("layer_norm {} params {}{}", test::describe(s, x_t, y_t), dtype_name(p_t),
                                       in_place ? " in place" : "");
  Buffer xb = test::make_buffer(dev, x_t, x, "x");
  Buffer gb = test::make_buffer(dev, p_t, g, "gamma");
  Buffer bb = test::make_buffer(dev, p_t, b, "beta");
  Buffer yb = in_place ? xb : dev.alloc(y_t, s.rows * s.cols, "y");
  kernels::layer_norm(dev, xb, gb, bb, yb, s.rows, s.cols, eps);
  const std::vector<float> got = dev.download(yb);
  const std::vector<double> ref = kernels::layer_norm_reference(x, g, b, s.rows, s.cols, eps);
  const double n = double(s.cols + test::chunks_of(s.cols, kTile));
  const double u = test::kU32;
  // Per row: mean |x| and rstd, for the bound.
  std::vector<double> mean_abs(static_cast<size_t>(s.rows)), rstd(static_cast<size_t>(s.rows)),
      mean(static_cast<size_t>(s.rows));
  for (int64_t r = 0; r < s.rows; ++r) {
    double sa = 0, sm = 0, var = 0;
    for (int64_t c = 0; c < s.cols; ++c) {
      sa += std::fabs(x[static_cast<size_t>(r * s.cols + c)]);
      sm += x[static_cast<size_t>(r * s.cols + c)];
    }
    sm /= double(s.cols);
    for (int64_t c = 0; c < s.cols; ++c) var += std::pow(x[static_cast<size_t>(r * s.cols + c)] - sm, 2);
    mean_abs[static_cast<size_t>(r)] = sa / double(s.cols);
    mean[static_cast<size_t>(r)] = sm;
    rstd[static_cast<size_t>(r)] = 1.0 / std::sqrt(var / double(s.cols) + double(eps));
  }
  test::expect_within(
      got, ref,
      [&](size_t i) {
        const auto r = static_cast<size_t>(static_cast<int64_t>(i) / s.cols);
        const auto c = static_cast<size_t>(static_cast<int64_t>(i) % s.cols);
        const double z = std::fabs((x[i] - mean[r]) * rstd[r]);
        const double em = u * (n + 4) * mean_abs[r];
        const double e = std::fabs(g[c]) * (z * u * (0.5 * n + 8) + em * rstd[r]) +
                         2 * u * (z * std::fabs(g[c]) + std::fabs(b[c]));
        return test::stored_bound(y_t, ref[i], 1.01 * e);
      },
      what);
  if (!in_place) dev.free(yb);
  dev.free(bb);
  dev.free(gb);
  dev.free(xb);
}

void check_random(Device& dev, Shape s, DType x_t, DType p_t, DType y_t, uint64_t seed, float lo = -2.0f,
                  float hi = 2.0f, bool in_place = false) {
  const auto n = static_cast<size_t>(s.rows * s.cols), nc = static_cast<size_t>(s.cols);
  const std::vector<float> x = test::random_values(n, x_t, seed, lo, hi);
  const std::vector<float> g = test::random_values(nc, p_t, seed + 7777, 0.5f, 1.5f);
  const std::vector<float> b = test::random_values(nc, p_t, seed + 8888, -0.5f, 0.5f);
  check_layer_norm(dev, s, x_t, p_t, y_t, x, g, b, kEps, in_place);
}

TEST(LayerNorm, MatchesReferenceEveryShapeAndDtype) {
  Device dev(load_chip("h100"));
  uint64_t seed = 8000;
  for (DType t : test::kFloatTypes)
    for (Shape s : kShapes) check_random(dev, s, t, t, t, ++seed);
}

TEST(LayerNorm, MixedDtypes) {
  Device dev(load_chip("zhenwu-810e"));
  const DType combos[][3] = {{DType::kBF16, DType::kF32, DType::kBF16},
                             {DType::kF32, DType::kBF16, DType::kF16},
                             {DType::kF16, DType::kF16, DType::kF32}};
  uint64_t seed = 8100;
  for (const auto& c : combos)
    for (Shape s : {Shape{7, 13}, Shape{3, 2 * kTile + 7}}) check_random(dev, s, c[0], c[1], c[2], ++seed);
}

// Values in [1000, 1001): the mean is 1000 times the standard deviation, so a one-pass
// E[x^2] - mean^2 in fp32 would lose every digit; the centred two-pass form and Chan's merge keep
// them (the bound above does not grow with the mean beyond the em term).
TEST(LayerNorm, LargeMeanSmallSpread) {
  Device dev(load_chip("h100"));
  for (Shape s : {Shape{5, 300}, Shape{2, 3 * kTile + 11}}) check_random(dev, s, DType::kF32, DType::kF32, DType::kF32, 8200, 1000.0f, 1001.0f);
}

// Constant rows have variance 0: y = beta exactly-ish (x - mean = 0), eps keeps rstd finite.
TEST(LayerNorm, ConstantRowsGiveBeta) {
  Device dev(load_chip("h100"));
  for (Shape s : {Shape{3, 257}, Shape{2, 2 * kTile + 7}}) {
    const std::vector<float> x(static_cast<size_t>(s.rows * s.cols), 0.75f);
    const std::vector<float> g = test::random_values(static_cast<size_t>(s.cols), DType::kF32, 8300, 0.5f, 1.5f);
    const std::vector<float> b = test::random_values(static_cast<size_t>(s.cols), DType::kF32, 8301, -0.5f, 0.5f);
    check_layer_norm(dev, s, DType::kF32, DType::kF32, DType::kF32, x, g, b, kEps);
  }
}

TEST(LayerNorm, InPlace) {
  Device dev(load_chip("h100"));
  uint64_t seed = 8400;
  for (DType t : {DType::kF32, DType::kBF16})
    for (Shape s : {Shape{7, 13}, Shape{600, 4099}, Shape{3, 2 * kTile + 7}})
      check_random(dev, s, t, t, t, ++seed, -2.0f, 2.0f, /*in_place=*/true);
}

TEST(LayerNorm, TimingOnlyDeviceRunsIt) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  Buffer x = dev.alloc(DType::kBF16, 4096 * 12288, "x"), g = dev.alloc(DType::kBF16, 12288, "g");
  const KernelTiming t = kernels::layer_norm(dev, x, g, g, x, 4096, 12288, kEps);
  EXPECT_GT(t.time_s, 0.0);
}

TEST(LayerNorm, RejectsBadInputs) {
  Device dev(load_chip("h100"));
  Buffer x = dev.alloc(DType::kBF16, 91, "x"), g = dev.alloc(DType::kBF16, 13, "ln.weight");
  Buffer b12 = dev.alloc(DType::kBF16, 12, "ln.bias"), y = dev.alloc(DType::kBF16, 90, "y");
  test::expect_error([&] { kernels::layer_norm(dev, x, g, b12, x, 7, 13, kEps); },
                     {"layer_norm", "beta 'ln.bias'", "12 elements", "[13] (cols)"});
  test::expect_error([&] { kernels::layer_norm(dev, x, b12, g, x, 7, 13, kEps); }, {"layer_norm", "gamma 'ln.bias'"});
  test::expect_error([&] { kernels::layer_norm(dev, x, g, g, y, 7, 13, kEps); },
                     {"layer_norm", "output y 'y'", "90 elements", "[7, 13] (rows, cols)", "needs 91"});
  test::expect_error([&] { kernels::layer_norm(dev, y, g, g, x, 7, 13, kEps); }, {"layer_norm", "input x 'y'"});
  test::expect_error([&] { kernels::make_layer_norm(x, g, g, x, 7, 0, kEps); }, {"layer_norm", "cols = 0", "positive"});
  test::expect_error([&] { kernels::make_layer_norm(x, g, g, x, 7, 13, -1.0f); }, {"layer_norm", "eps = -1", ">= 0"});
  test::expect_error([&] { kernels::make_layer_norm(x, g, g, x, 7, 13, INFINITY); }, {"layer_norm", "eps = inf"});
}

}  // namespace
}  // namespace ppu
