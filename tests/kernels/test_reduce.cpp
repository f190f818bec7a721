// Tests of kernels/Reduce (row sum, max, mean over the last dim) against row_reduce_reference, on a
// functional h100 device: shapes from one element to vocabulary-long rows and many short rows,
// every 16-bit and 32-bit float dtype, mixed input/output dtypes, and each kind of invalid input.
//
// Error metric: per output row, |y - ref| <= stored_bound(out, ref, e) with e the bound on the fp32
// value the kernel computes:
//  * max: e = 0 (the maximum of values is one of them, exact in fp32).
//  * sum: recursive fp32 summation over at most n = cols + chunks additions per element (its chunk's,
//    then one per later chunk): e = gamma_n * sum|x|, gamma_n = n u / (1 - n u) <= 1.01 n u here.
//  * mean: that, divided by cols, plus the two roundings of multiplying by fl(1 / cols).
//  * integer-valued inputs in [-8, 8]: every fp32 partial sum is an integer below 2^24, so the sum is
//    exact (e = 0) and the mean carries only the two roundings.
#include <gtest/gtest.h>

#include <random>

#include "KernelTestUtil.hpp"
#include "kernels/KernelUtil.hpp"
#include "kernels/Reduce.hpp"

namespace ppu {
namespace {

using kernels::RowReduceOp;
using test::Shape;

constexpr RowReduceOp kOps[] = {RowReduceOp::kSum, RowReduceOp::kMax, RowReduceOp::kMean};

// 1 row, 1 col, primes, cols at and around the chunk size, a vocabulary, rows enough that a block
// holds several row tiles (140009 x 3: 2 tiles of 256 rows, the last block partial), and tiles of
// several rows of an odd width (600 x 4099: 2 rows per tile).
const std::vector<Shape> kShapes = {{1, 1},
                                    {1, 13},
                                    {5, 1},
                                    {7, 13},
                                    {3, 257},
                                    {2, kernels::kReduceTileElems},
                                    {2, kernels::kReduceTileElems + 1},
                                    {3, 2 * kernels::kReduceTileElems + 7},
                                    {2, 151936},
                                    {140009, 3},
                                    {600, 4099}};

std::vector<float> integer_values(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> dist(-8, 8);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(dist(rng));
  return v;
}

// Bound on |v - ref| for the fp32 value v the kernel computes for one row (see the file comment).
double fp32_error_bound(RowReduceOp op, const float* xr, int64_t cols, double ref, bool integers) {
  if (op == RowReduceOp::kMax) return 0.0;
  const double mean_rounding = 2.01 * test::kU32 * std::fabs(ref);
  if (integers) return op == RowReduceOp::kMean ? mean_rounding : 0.0;
  double abs_sum = 0;
  for (int64_t c = 0; c < cols; ++c) abs_sum += std::fabs(double(xr[c]));
  const double n = double(cols + test::chunks_of(cols, kernels::kReduceTileElems));
  const double e_sum = 1.01 * n * test::kU32 * abs_sum;
  return op == RowReduceOp::kMean ? e_sum / double(cols) * (1.0 + 3.0 * test::kU32) + mean_rounding : e_sum;
}

// Runs every op on one input and checks each against the reference.
void check_all_ops(Device& dev, Shape s, DType in, DType out, uint64_t seed, bool integers) {
  const auto n = static_cast<size_t>(s.rows * s.cols);
  const std::vector<float> x = integers ? integer_values(n, seed) : test::random_values(n, in, seed);
  Buffer xb = test::make_buffer(dev, in, x, "x");
  for (RowReduceOp op : kOps) {
    Buffer yb = dev.alloc(out, s.rows, "y");
    kernels::row_reduce(dev, op, xb, yb, s.rows, s.cols);
    const std::vector<float> got = dev.download(yb);
    const std::vector<double> ref = kernels::row_reduce_reference(op, x, s.rows, s.cols);
    test::expect_within(
        got, ref,
        [&](size_t r) {
          const double e = fp32_error_bound(op, x.data() + r * s.cols, s.cols, ref[r], integers);
          return test::stored_bound(out, ref[r], e);
        },
        fmt::format("row_{} {}{}", kernels::kRowReduceOpNames[static_cast<size_t>(op)], test::describe(s, in, out),
                    integers ? " (integers)" : ""));
    dev.free(yb);
  }
  dev.free(xb);
}

TEST(RowReduce, MatchesReferenceEveryShapeAndDtype) {
  Device dev(load_chip("h100"));
  uint64_t seed = 100;
  for (DType t : test::kFloatTypes)
    for (Shape s : kShapes) check_all_ops(dev, s, t, t, ++seed, /*integers=*/false);
}

TEST(RowReduce, IntegerInputsSumExactly) {
  Device dev(load_chip("h100"));
  uint64_t seed = 200;
  for (DType t : test::kFloatTypes)
    for (Shape s : kShapes) check_all_ops(dev, s, t, t, ++seed, /*integers=*/true);
}

TEST(RowReduce, MixedInputAndOutputDtypes) {
  Device dev(load_chip("zhenwu-810e"));
  const std::pair<DType, DType> pairs[] = {{DType::kBF16, DType::kF32},
                                           {DType::kF32, DType::kBF16},
                                           {DType::kF16, DType::kBF16},
                                           {DType::kF8E4M3, DType::kF32},
                                           {DType::kF32, DType::kF8E5M2}};
  uint64_t seed = 300;
  for (auto [in, out] : pairs)
    for (Shape s : {Shape{7, 13}, Shape{3, 2 * kernels::kReduceTileElems + 7}})
      check_all_ops(dev, s, in, out, ++seed, /*integers=*/false);
}

TEST(RowReduce, MaxIsExactInEveryDtype) {
  Device dev(load_chip("h100"));
  uint64_t seed = 400;
  for (DType t : {DType::kF32, DType::kBF16, DType::kF16, DType::kF8E4M3, DType::kF8E5M2}) {
    const Shape s{3, 2 * kernels::kReduceTileElems + 7};
    // Values far below zero, so that a maximum started from 0 instead of the data would show.
    const std::vector<float> x = test::random_values(static_cast<size_t>(s.rows * s.cols), t, ++seed, -9.0f, -1.0f);
    Buffer xb = test::make_buffer(dev, t, x, "x");
    Buffer yb = dev.alloc(t, s.rows, "y");
    kernels::row_reduce(dev, RowReduceOp::kMax, xb, yb, s.rows, s.cols);
    const std::vector<float> got = dev.download(yb);
    const std::vector<double> ref = kernels::row_reduce_reference(RowReduceOp::kMax, x, s.rows, s.cols);
    for (int64_t r = 0; r < s.rows; ++r) EXPECT_EQ(double(got[r]), ref[r]) << dtype_name(t) << " row " << r;
    dev.free(xb);
    dev.free(yb);
  }
}

TEST(RowReduce, RejectsMismatchedInputNumel) {
  Device dev(load_chip("h100"));
  Buffer x = dev.alloc(DType::kF32, 90, "x"), y = dev.alloc(DType::kF32, 7, "y");
  test::expect_error([&] { kernels::row_reduce(dev, RowReduceOp::kSum, x, y, 7, 13); },
                     {"row_sum", "input x 'x'", "90 elements", "[7, 13] (rows, cols)", "needs 91"});
}

TEST(RowReduce, RejectsMismatchedOutputNumel) {
  Device dev(load_chip("h100"));
  Buffer x = dev.alloc(DType::kBF16, 91, "x"), y = dev.alloc(DType::kF32, 13, "y");
  test::expect_error([&] { kernels::row_reduce(dev, RowReduceOp::kMean, x, y, 7, 13); },
                     {"row_mean", "output y 'y'", "13 elements", "[7] (rows)", "needs 7"});
}

TEST(RowReduce, RejectsZeroRows) {
  Device dev(load_chip("h100"));
  Buffer x = dev.alloc(DType::kF32, 13, "x"), y = dev.alloc(DType::kF32, 1, "y");
  test::expect_error([&] { kernels::make_row_reduce(RowReduceOp::kMax, x, y, 0, 13); },
                     {"row_max", "rows = 0", "must be positive"});
}

TEST(RowReduce, RejectsNegativeCols) {
  Device dev(load_chip("h100"));
  Buffer x = dev.alloc(DType::kF32, 13, "x"), y = dev.alloc(DType::kF32, 1, "y");
  test::expect_error([&] { kernels::make_row_reduce(RowReduceOp::kSum, x, y, 1, -13); },
                     {"row_sum", "cols = -13", "must be positive"});
}

TEST(RowReduce, RejectsInvalidOp) {
  Device dev(load_chip("h100"));
  Buffer x = dev.alloc(DType::kF32, 13, "x"), y = dev.alloc(DType::kF32, 1, "y");
  test::expect_error([&] { kernels::make_row_reduce(static_cast<RowReduceOp>(7), x, y, 1, 13); },
                     {"row_reduce", "invalid op 7", "valid: sum, max, mean"});
}

}  // namespace
}  // namespace ppu
