// Tests of kernels/RmsNorm against rms_norm_reference, on a functional device: shapes from one
// element to vocabulary-long rows (the chunked two-pass path) and many short rows, fp32/bf16/fp16
// and mixed dtypes for x, weight and y, rows where eps dominates, in-place use, and each kind of
// invalid input.
//
// Error metric: per element, |y - ref| <= stored_bound(out, ref, rel * |ref|), where rel bounds the
// fp32 computation (u = 2^-24, k = column chunks, n = cols + k):
//  * sum of squares: each square rounds once, then recursive summation over at most n additions
//    per term: relative gamma_(n+1), the terms being non-negative;
//  * mean (times fl(1 / cols): two roundings) and + eps (one): relative gamma_(n+4);
//  * rsqrt halves that relative error and adds two roundings (sqrt, then 1 / .);
//  * x * rsqrt and * w: two roundings.
// Together rel <= u ((n + 4) / 2 + 4); the tests take u (0.5 n + 8) with a 1% margin.
#include <gtest/gtest.h>

#include "KernelTestUtil.hpp"
#include "kernels/RmsNorm.hpp"

namespace ppu {
namespace {

using test::Shape;

constexpr float kEps = 1e-5f;

const std::vector<Shape> kShapes = {{1, 1},
                                    {1, 13},
                                    {5, 1},
                                    {7, 13},
                                    {3, 257},
                                    {2, kernels::kRmsNormTileElems},
                                    {2, kernels::kRmsNormTileElems + 1},
                                    {3, 2 * kernels::kRmsNormTileElems + 7},
                                    {2, 151936},
                                    {140009, 3},
                                    {600, 4099}};

// Runs RMSNorm of x (rounded to x_t) with weight w (rounded to w_t) into a y_t buffer (or in place)
// and checks it.
void check_rms_norm(Device& dev, Shape s, DType x_t, DType w_t, DType y_t, const std::vector<float>& x,
                    const std::vector<float>& w, float eps, bool in_place = false) {
  const std::string what = fmt::format("rms_norm {} weight {}{}", test::describe(s, x_t, y_t), dtype_name(w_t),
                                       in_place ? " in place" : "");
  Buffer xb = test::make_buffer(dev, x_t, x, "x");
  Buffer wb = test::make_buffer(dev, w_t, w, "w");
  Buffer yb = in_place ? xb : dev.alloc(y_t, s.rows * s.cols, "y");
  kernels::rms_norm(dev, xb, wb, yb, s.rows, s.cols, eps);
  const std::vector<float> got = dev.download(yb);
  const std::vector<double> ref = kernels::rms_norm_reference(x, w, s.rows, s.cols, eps);
  const double n = double(s.cols + test::chunks_of(s.cols, kernels::kRmsNormTileElems));
  const double rel = 1.01 * test::kU32 * (0.5 * n + 8);
  test::expect_within(
      got, ref, [&](size_t i) { return test::stored_bound(y_t, ref[i], rel * std::fabs(ref[i])); }, what);
  if (!in_place) dev.free(yb);
  dev.free(wb);
  dev.free(xb);
}

void check_random(Device& dev, Shape s, DType x_t, DType w_t, DType y_t, uint64_t seed, bool in_place = false) {
  const std::vector<float> x = test::random_values(static_cast<size_t>(s.rows * s.cols), x_t, seed, -2.0f, 2.0f);
  const std::vector<float> w = test::random_values(static_cast<size_t>(s.cols), w_t, seed + 7777, 0.5f, 1.5f);
  check_rms_norm(dev, s, x_t, w_t, y_t, x, w, kEps, in_place);
}

TEST(RmsNorm, MatchesReferenceEveryShapeAndDtype) {
  Device dev(load_chip("h100"));
  uint64_t seed = 2000;
  for (DType t : test::kFloatTypes)
    for (Shape s : kShapes) check_random(dev, s, t, t, t, ++seed);
}

TEST(RmsNorm, MixedDtypes) {
  Device dev(load_chip("zhenwu-810e"));
  const DType combos[][3] = {{DType::kBF16, DType::kF32, DType::kBF16},
                             {DType::kF32, DType::kBF16, DType::kF16},
                             {DType::kF16, DType::kF16, DType::kF32},
                             {DType::kBF16, DType::kBF16, DType::kF8E4M3}};
  uint64_t seed = 2100;
  for (const auto& c : combos)
    for (Shape s : {Shape{7, 13}, Shape{3, 2 * kernels::kRmsNormTileElems + 7}})
      check_random(dev, s, c[0], c[1], c[2], ++seed);
}

// A zero row gives zeros (0 * 1 / sqrt(eps)); in a row of values ~1e-4 eps (1e-5, against a mean
// square ~3e-9) dominates the denominator, so a kernel that dropped or misplaced eps would show.
TEST(RmsNorm, EpsDominatesSmallRows) {
  Device dev(load_chip("h100"));
  for (Shape s : {Shape{3, 257}, Shape{2, 2 * kernels::kRmsNormTileElems + 7}}) {
    std::vector<float> x = test::random_values(static_cast<size_t>(s.rows * s.cols), DType::kF32, 2200, -1e-4f, 1e-4f);
    std::fill(x.begin(), x.begin() + s.cols, 0.0f);
    const std::vector<float> w = test::random_values(static_cast<size_t>(s.cols), DType::kF32, 2201, 0.5f, 1.5f);
    check_rms_norm(dev, s, DType::kF32, DType::kF32, DType::kF32, x, w, kEps);
  }
}

TEST(RmsNorm, InPlace) {
  Device dev(load_chip("h100"));
  uint64_t seed = 2300;
  for (DType t : {DType::kF32, DType::kBF16})
    for (Shape s : {Shape{7, 13}, Shape{600, 4099}, Shape{3, 2 * kernels::kRmsNormTileElems + 7}})
      check_random(dev, s, t, t, t, ++seed, /*in_place=*/true);
}

TEST(RmsNorm, RejectsWeightSizeMismatch) {
  Device dev(load_chip("h100"));
  Buffer x = dev.alloc(DType::kBF16, 91, "x"), w = dev.alloc(DType::kBF16, 12, "norm.weight");
  Buffer y = dev.alloc(DType::kBF16, 91, "y");
  test::expect_error([&] { kernels::rms_norm(dev, x, w, y, 7, 13, kEps); },
                     {"rms_norm", "weight 'norm.weight'", "12 elements", "[13] (cols)", "needs 13"});
}

TEST(RmsNorm, RejectsMismatchedInputNumel) {
  Device dev(load_chip("h100"));
  Buffer x = dev.alloc(DType::kF32, 92, "x"), w = dev.alloc(DType::kF32, 13, "w");
  Buffer y = dev.alloc(DType::kF32, 91, "y");
  test::expect_error([&] { kernels::rms_norm(dev, x, w, y, 7, 13, kEps); },
                     {"rms_norm", "input x 'x'", "92 elements", "[7, 13] (rows, cols)", "needs 91"});
}

TEST(RmsNorm, RejectsMismatchedOutputNumel) {
  Device dev(load_chip("h100"));
  Buffer x = dev.alloc(DType::kF32, 91, "x"), w = dev.alloc(DType::kF32, 13, "w");
  Buffer y = dev.alloc(DType::kF32, 13, "y");
  test::expect_error([&] { kernels::rms_norm(dev, x, w, y, 7, 13, kEps); },
                     {"rms_norm", "output y 'y'", "13 elements", "[7, 13] (rows, cols)", "needs 91"});
}

TEST(RmsNorm, RejectsZeroRows) {
  Device dev(load_chip("h100"));
  Buffer x = dev.alloc(DType::kF32, 13, "x");
  test::expect_error([&] { kernels::make_rms_norm(x, x, x, 0, 13, kEps); }, {"rms_norm", "rows = 0", "must be positive"});
}

TEST(RmsNorm, RejectsNegativeOrNonFiniteEps) {
  Device dev(load_chip("h100"));
  Buffer x = dev.alloc(DType::kF32, 91, "x"), w = dev.alloc(DType::kF32, 13, "w");
  test::expect_error([&] { kernels::make_rms_norm(x, w, x, 7, 13, -1e-6f); },
                     {"rms_norm", "eps = -1e-06", "finite and >= 0"});
  test::expect_error([&] { kernels::make_rms_norm(x, w, x, 7, 13, std::nanf("")); },
                     {"rms_norm", "eps = nan", "finite and >= 0"});
}

}  // namespace
}  // namespace ppu
