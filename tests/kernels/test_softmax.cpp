// Tests of kernels/Softmax against softmax_reference, on a functional device: shapes from one
// element to vocabulary-long rows (the chunked two-pass path) and many short rows, fp32/bf16/fp16
// and mixed dtypes, inputs around +-1e4 (stability), in-place use, and each kind of invalid input.
//
// Error metric: per element, |y - ref| <= stored_bound(out, ref, e) with e = rel * ref + 2^-126.
// rel bounds the fp32 computation (u = 2^-24, R = row max - row min, k = column chunks):
//  * each exp(x - m) is off by (R + 2) u at most: x - m rounds once (relative u, so R u absolutely
//    in the exponent) and exp adds about an ulp; pass 2 recomputes it the same way;
//  * the running sum: recursive summation over at most cols + k additions per term, and k - 1
//    rescales by exp(m_old - m_new) (each off by (R + 3) u, the exponent again at most R);
//  * 1 / s and the final product: 2 u.
// Together rel <= u (cols + 6 k + 10 + R (k + 2)), taken with a 1% margin. The absolute 2^-126
// covers terms below the fp32 normal range, which carry an absolute rather than relative error.
// Inputs are a uniform noise plus a ramp that rises along even rows and falls along odd ones, so
// that in chunked rows the running maximum both grows chunk after chunk (every rescale matters)
// and stays at the first chunk's.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "KernelTestUtil.hpp"
#include "kernels/Softmax.hpp"

namespace ppu {
namespace {

using test::Shape;

const std::vector<Shape> kShapes = {{1, 1},
                                    {1, 13},
                                    {5, 1},
                                    {7, 13},
                                    {3, 257},
                                    {2, kernels::kSoftmaxTileElems},
                                    {2, kernels::kSoftmaxTileElems + 1},
                                    {3, 2 * kernels::kSoftmaxTileElems + 7},
                                    {2, 151936},
                                    {140009, 3},
                                    {600, 4099}};

// center + uniform(-noise, noise) + a ramp of height `ramp` along the row (rising on even rows,
// falling on odd rows), rounded to `t`.
std::vector<float> softmax_input(Shape s, DType t, uint64_t seed, float center, float noise, float ramp) {
  std::vector<float> x = test::random_values(static_cast<size_t>(s.rows * s.cols), DType::kF32, seed, -noise, noise);
  for (int64_t r = 0; r < s.rows; ++r)
    for (int64_t c = 0; c < s.cols; ++c) {
      const float slope = (r % 2 == 0 ? ramp : -ramp) * static_cast<float>(c) / static_cast<float>(s.cols);
      float& v = x[static_cast<size_t>(r * s.cols + c)];
      v = round_to(t, center + v + slope);
    }
  return x;
}

// Runs softmax of x (already rounded to `in`) into an `out` buffer (or in place) and checks it.
void check_softmax(Device& dev, Shape s, DType in, DType out, const std::vector<float>& x, bool in_place = false) {
  const std::string what = fmt::format("softmax {}{}", test::describe(s, in, out), in_place ? " in place" : "");
  Buffer xb = test::make_buffer(dev, in, x, "x");
  Buffer yb = in_place ? xb : dev.alloc(out, s.rows * s.cols, "y");
  kernels::softmax(dev, xb, yb, s.rows, s.cols);
  const std::vector<float> got = dev.download(yb);
  const std::vector<double> ref = kernels::softmax_reference(x, s.rows, s.cols);
  std::vector<double> rel(static_cast<size_t>(s.rows));
  const auto k = static_cast<double>(test::chunks_of(s.cols, kernels::kSoftmaxTileElems));
  for (int64_t r = 0; r < s.rows; ++r) {
    double lo = INFINITY, hi = -INFINITY;  // over the finite elements (-inf ones give exactly 0)
    for (int64_t c = 0; c < s.cols; ++c) {
      const double v = x[static_cast<size_t>(r * s.cols + c)];
      if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
    }
    const double span = hi - lo;
    rel[static_cast<size_t>(r)] = 1.01 * test::kU32 * (double(s.cols) + 6 * k + 10 + span * (k + 2));
  }
  test::expect_within(
      got, ref,
      [&](size_t i) {
        const double e = rel[i / static_cast<size_t>(s.cols)] * ref[i] + std::ldexp(1.0, -126);
        return test::stored_bound(out, ref[i], e);
      },
      what);
  if (!in_place) dev.free(yb);
  dev.free(xb);
}

TEST(Softmax, MatchesReferenceEveryShapeAndDtype) {
  Device dev(load_chip("h100"));
  uint64_t seed = 1000;
  for (DType t : test::kFloatTypes)
    for (Shape s : kShapes) check_softmax(dev, s, t, t, softmax_input(s, t, ++seed, 0.0f, 4.0f, 8.0f));
}

TEST(Softmax, MixedInputAndOutputDtypes) {
  Device dev(load_chip("zhenwu-810e"));
  const std::pair<DType, DType> pairs[] = {{DType::kBF16, DType::kF32},
                                           {DType::kF32, DType::kBF16},
                                           {DType::kF16, DType::kF32},
                                           {DType::kF32, DType::kF8E4M3}};
  uint64_t seed = 1100;
  for (auto [in, out] : pairs)
    for (Shape s : {Shape{7, 13}, Shape{3, 2 * kernels::kSoftmaxTileElems + 7}})
      check_softmax(dev, s, in, out, softmax_input(s, in, ++seed, 0.0f, 4.0f, 8.0f));
}

// exp(1e4) overflows fp32 (and anything near 1e4 in fp16, bf16): only a max-subtracted kernel
// gets these right. In bf16 and fp16 the inputs round to a few distinct values (steps of 64 / 8).
TEST(Softmax, StableForLargeInputs) {
  Device dev(load_chip("h100"));
  uint64_t seed = 1200;
  for (DType t : test::kFloatTypes)
    for (float center : {1e4f, -1e4f})
      for (Shape s : {Shape{7, 13}, Shape{2, 151936}})
        check_softmax(dev, s, t, t, softmax_input(s, t, ++seed, center, 20.0f, 40.0f));
  // Values spread over [-1e4, 1e4]: almost every exp underflows; the largest ones remain.
  const Shape s{3, 2 * kernels::kSoftmaxTileElems + 7};
  check_softmax(dev, s, DType::kF32, DType::kF32, softmax_input(s, DType::kF32, ++seed, 0.0f, 1e4f, 0.0f));
}

TEST(Softmax, ConstantRowsGiveUniformProbabilities) {
  Device dev(load_chip("h100"));
  for (Shape s : {Shape{3, 257}, Shape{2, 151936}}) {
    const std::vector<float> x(static_cast<size_t>(s.rows * s.cols), 3.5f);
    check_softmax(dev, s, DType::kF32, DType::kF32, x);
  }
}

// -inf marks masked elements (left padding, causal masks): they get exactly 0 and the others the
// softmax among themselves, also when a long row's first chunk, or its last, is all -inf.
TEST(Softmax, NegativeInfinityGivesZero) {
  Device dev(load_chip("h100"));
  uint64_t seed = 1400;
  for (Shape s : {Shape{7, 13}, Shape{3, 2 * kernels::kSoftmaxTileElems + 7}}) {
    std::vector<float> x = softmax_input(s, DType::kBF16, ++seed, 0.0f, 4.0f, 8.0f);
    for (size_t i = 0; i < x.size(); i += 5) x[i] = -INFINITY;
    if (s.cols > kernels::kSoftmaxTileElems) {
      auto row = [&](int64_t r) { return x.begin() + r * s.cols; };
      std::fill(row(0), row(0) + kernels::kSoftmaxTileElems, -INFINITY);  // row 0: first chunk masked
      std::fill(row(1) + 2 * kernels::kSoftmaxTileElems, row(2), -INFINITY);  // row 1: last chunk
    }
    check_softmax(dev, s, DType::kBF16, DType::kBF16, x);
  }
}

TEST(Softmax, InPlace) {
  Device dev(load_chip("h100"));
  uint64_t seed = 1300;
  for (DType t : {DType::kF32, DType::kBF16})
    for (Shape s : {Shape{7, 13}, Shape{600, 4099}, Shape{3, 2 * kernels::kSoftmaxTileElems + 7}})
      check_softmax(dev, s, t, t, softmax_input(s, t, ++seed, 0.0f, 4.0f, 8.0f), /*in_place=*/true);
}

TEST(Softmax, RejectsMismatchedInputNumel) {
  Device dev(load_chip("h100"));
  Buffer x = dev.alloc(DType::kBF16, 90, "logits"), y = dev.alloc(DType::kBF16, 91, "probs");
  test::expect_error([&] { kernels::softmax(dev, x, y, 7, 13); },
                     {"softmax", "input x 'logits'", "90 elements", "[7, 13] (rows, cols)", "needs 91"});
}

TEST(Softmax, RejectsMismatchedOutputNumel) {
  Device dev(load_chip("h100"));
  Buffer x = dev.alloc(DType::kF32, 91, "logits"), y = dev.alloc(DType::kF32, 7, "probs");
  test::expect_error([&] { kernels::softmax(dev, x, y, 7, 13); },
                     {"softmax", "output y 'probs'", "7 elements", "[7, 13] (rows, cols)", "needs 91"});
}

TEST(Softmax, RejectsZeroRows) {
  Device dev(load_chip("h100"));
  Buffer x = dev.alloc(DType::kF32, 13, "x");
  test::expect_error([&] { kernels::make_softmax(x, x, 0, 13); }, {"softmax", "rows = 0", "must be positive"});
}

TEST(Softmax, RejectsZeroCols) {
  Device dev(load_chip("h100"));
  Buffer x = dev.alloc(DType::kF32, 13, "x");
  test::expect_error([&] { kernels::make_softmax(x, x, 13, 0); }, {"softmax", "cols = 0", "must be positive"});
}

}  // namespace
}  // namespace ppu
