// Tests of kernels/BiasActivation against bias_activation_reference on a functional device: bias
// add alone and with GELU (the GPT MLP), SiLU and ReLU; shapes from one element to rows longer
// than a tile (chunked, a bias slice per chunk) and many short rows; every dtype and mixed
// dtypes; in-place use; each kind of invalid input.
//
// Error metric, u = 2^-24: the reference applies the activation in double to the fp32 sum
// h = fl(x + b), so the add's rounding is shared and the remaining error is the activation's:
//  * bias add, ReLU: exact (|y - ref| = 0 before the store);
//  * GELU: 0.5 h (1 + tanh(t)): Highway's tanh has a relative error of a few ulp (taken as 4u) on
//    a value of magnitude <= 1, the cubic inner term and the products add about 8 roundings:
//    e <= u (4 |h| + 8 |ref|) - the 0.5 |h| factor times the tanh error, doubled for margin;
//  * SiLU: h / (1 + exp(-h)): exp a few ulp, then an add and a divide: e <= 8 u |ref|.
// Then stored_bound adds the rounding to the output dtype.
#include <gtest/gtest.h>

#include "KernelTestUtil.hpp"
#include "kernels/BiasActivation.hpp"

namespace ppu {
namespace {

using test::Shape;

constexpr int kTile = kernels::kBiasTileElems;

const std::vector<Shape> kShapes = {{1, 1},     {1, 13},          {5, 1},        {7, 13},     {3, 257},
                                    {2, kTile}, {2, kTile + 1},   {3, 2 * kTile + 7}, {31, 16384},
                                    {140009, 3}, {600, 4099}};

double act_error(UnaryOp act, double h, double ref) {
  const double u = test::kU32;
  switch (act) {
    case UnaryOp::kGelu: return u * (4 * std::fabs(h) + 8 * std::fabs(ref));
    case UnaryOp::kSilu: return 8 * u * std::fabs(ref);
    default: return 0.0;
  }
}

void check(Device& dev, Shape s, DType x_t, DType b_t, DType y_t, UnaryOp act, uint64_t seed, bool in_place = false) {
  const std::string what = fmt::format("bias {} {} bias {}{}", kUnaryOpNames[static_cast<size_t>(act)],
                                       test::describe(s, x_t, y_t), dtype_name(b_t), in_place ? " in place" : "");
  const std::vector<float> x = test::random_values(static_cast<size_t>(s.rows * s.cols), x_t, seed, -4.0f, 4.0f);
  const std::vector<float> b = test::random_values(static_cast<size_t>(s.cols), b_t, seed + 99, -1.0f, 1.0f);
  Buffer xb = test::make_buffer(dev, x_t, x, "x"), bb = test::make_buffer(dev, b_t, b, "bias");
  Buffer yb = in_place ? xb : dev.alloc(y_t, s.rows * s.cols, "y");
  kernels::bias_activation(dev, xb, bb, yb, s.rows, s.cols, act);
  const std::vector<float> got = dev.download(yb);
  const std::vector<double> ref = kernels::bias_activation_reference(x, b, s.rows, s.cols, act);
  test::expect_within(
      got, ref,
      [&](size_t i) {
        const double h = x[i] + b[static_cast<size_t>(static_cast<int64_t>(i) % s.cols)];
        return test::stored_bound(y_t, ref[i], act_error(act, h, ref[i]));
      },
      what);
  if (!in_place) dev.free(yb);
  dev.free(bb);
  dev.free(xb);
}

TEST(BiasActivation, BiasAddAndGeluEveryShapeAndDtype) {
  Device dev(load_chip("h100"));
  uint64_t seed = 9000;
  for (UnaryOp act : {UnaryOp::kCopy, UnaryOp::kGelu})
    for (DType t : test::kFloatTypes)
      for (Shape s : kShapes) check(dev, s, t, t, t, act, ++seed);
}

TEST(BiasActivation, OtherActivationsAndMixedDtypes) {
  Device dev(load_chip("zhenwu-810e"));
  uint64_t seed = 9100;
  for (UnaryOp act : {UnaryOp::kSilu, UnaryOp::kRelu})
    for (Shape s : {Shape{7, 13}, Shape{3, 2 * kTile + 7}}) check(dev, s, DType::kF32, DType::kF32, DType::kF32, act, ++seed);
  check(dev, {7, 13}, DType::kBF16, DType::kF32, DType::kF16, UnaryOp::kGelu, ++seed);
  check(dev, {3, 2 * kTile + 7}, DType::kF16, DType::kBF16, DType::kF32, UnaryOp::kGelu, ++seed);
}

TEST(BiasActivation, InPlace) {
  Device dev(load_chip("h100"));
  for (Shape s : {Shape{7, 13}, Shape{600, 4099}, Shape{3, 2 * kTile + 7}})
    check(dev, s, DType::kBF16, DType::kBF16, DType::kBF16, UnaryOp::kGelu, 9200, /*in_place=*/true);
}

TEST(BiasActivation, RejectsBadInputs) {
  Device dev(load_chip("h100"));
  Buffer x = dev.alloc(DType::kBF16, 91, "fc1.out"), b = dev.alloc(DType::kBF16, 12, "fc1.bias");
  Buffer b13 = dev.alloc(DType::kBF16, 13, "b13"), y = dev.alloc(DType::kBF16, 92, "y");
  test::expect_error([&] { kernels::bias_activation(dev, x, b, x, 7, 13, UnaryOp::kGelu); },
                     {"bias_gelu", "bias 'fc1.bias'", "12 elements", "[13] (cols)"});
  test::expect_error([&] { kernels::bias_activation(dev, x, b13, y, 7, 13); },
                     {"bias_add", "output y 'y'", "92 elements", "needs 91"});
  test::expect_error([&] { kernels::bias_activation(dev, y, b13, x, 7, 13); }, {"bias_add", "input x 'y'"});
  test::expect_error([&] { kernels::make_bias_activation(x, b13, x, -7, 13); }, {"bias_add", "rows = -7", "positive"});
  test::expect_error([&] { kernels::make_bias_activation(x, b13, x, 7, 13, UnaryOp::kCount); },
                     {"bias_activation", "invalid activation"});
}

}  // namespace
}  // namespace ppu
