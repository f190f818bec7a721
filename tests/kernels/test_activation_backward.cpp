// Tests of the training backward kernels kernels/ActivationBackward (SwiGLU, GELU + bias gradient,
// bias gradient), kernels/RopeBackward and kernels/GatherBackward (MoE combine) on functional
// devices: (1) every gradient against central finite differences of a double forward on tiny shapes,
// (2) against the analytic double references on larger shapes (column strips, partial tiles, many
// row groups) and fp32/bf16/fp16 including mixed dtypes, (3) RoPE's backward undoing its forward,
// (4) bit-identical results with 1 and 3 host threads, (5) timing-only runs, (6) one test per kind of
// invalid input.
//
// Error metrics, u = 2^-24 (fp32, the vector unit):
//  * Finite differences: L = sum(dy * f(x)) in double, dL/dx_i ~ (L(x_i + h) - L(x_i - h)) / 2h with
//    h = 1e-4: truncation h^2/6 |f'''| |dy| < 1e-8 here (|f'''| < 4 for SiLU and GELU on |x| <= 3.5;
//    RoPE and the combine are linear, so exact up to rounding) and rounding 2^-52 |L| / h < 1e-10.
//    Kernel outputs are fp32 and within ~40 u max(1, |g|) ~ 3e-6 of the exact gradient (analysis
//    below; GELU's bias is added in fp32, moving h by u |h|), so the tolerance is
//    1e-5 max(1, |finite difference|).
//  * Analytic references: a first-order running error bound that follows the kernel's fp32 op
//    sequence (Approx below): every +, -, * rounds once (u relative), a constant held in fp32 adds u,
//    sigmoid is within 4u relative (Highway's exp 1 ulp = 2u, then an add and a divide) and tanh
//    within 8u (4 ulp); the input errors propagate through the exact derivatives. The bound is
//    doubled (margin for second-order terms) and stored_bound adds the rounding to the output dtype.
//  * dbias = column sums of the fp32 dx: sum of the elements' bounds plus rows * u * sum |dx| (any
//    summation order of rows terms), doubled. bias_grad of exact inputs: rows * u * sum |dy|, doubled.
//  * RoPE backward: 3.01 u (|dy1 c| + |dy2 s|) + 2^-148 (as the forward's test: the fp32 table
//    rounds c and s once, two products and a sum round once each). Forward then backward in fp32:
//    |x' - x| <= 11 u (|x1| + |x2|) + 2^-140 (each pass 3.01 u of terms bounded by |x1| + |x2| and
//    sqrt(2) (|x1| + |x2|)).
//  * Combine backward: d_src = fl(w dy), one rounding (u |ref|); d_w a sum of width fp32 products:
//    (width + 1) u sum |src dy|.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "KernelTestUtil.hpp"
#include "kernels/ActivationBackward.hpp"
#include "kernels/GatherBackward.hpp"
#include "kernels/RopeBackward.hpp"

namespace ppu {
namespace {

using test::Shape;

constexpr double kGeluK0 = 0.7978845608028654, kGeluC = 0.044715;
constexpr int kStrip = kernels::kActBwTileElems;

// ---------------------------------------------------------------------------------------------
// A value computed in fp32 and a first-order bound on its error, following the kernel's ops.
struct Approx {
  double v = 0, e = 0;
};
Approx exact(double v) { return {v, 0.0}; }
Approx mul(Approx a, Approx b) {
  const double v = a.v * b.v;
  return {v, std::fabs(a.v) * b.e + std::fabs(b.v) * a.e + a.e * b.e + test::kU32 * std::fabs(v)};
}
Approx add(Approx a, Approx b) {
  const double v = a.v + b.v;
  return {v, a.e + b.e + test::kU32 * std::fabs(v)};
}
Approx sub(Approx a, Approx b) { return add(a, {-b.v, b.e}); }
// The kernel holds constants in fp32: one more rounding unless the constant is exact.
double const_error(double k) { return static_cast<double>(static_cast<float>(k)) == k ? 0.0 : test::kU32; }
Approx scale(Approx a, double k) {
  const double v = a.v * k;
  return {v, std::fabs(k) * a.e + (test::kU32 + const_error(k)) * std::fabs(v)};
}
Approx add_imm(Approx a, double k) {
  const double v = a.v + k;
  return {v, a.e + test::kU32 * std::fabs(v) + const_error(k) * std::fabs(k)};
}
Approx sigmoid(Approx g) {
  const double s = 1.0 / (1.0 + std::exp(-g.v));
  return {s, s * (1.0 - s) * g.e + 4 * test::kU32 * s};
}
Approx tanh_approx(Approx b) {
  const double t = std::tanh(b.v);
  return {t, (1.0 - t * t) * b.e + 8 * test::kU32 * std::fabs(t)};
}

// The SwiGLU backward kernel's op sequence: {dg, du}.
std::pair<Approx, Approx> swiglu_approx(double g, double u, double dy) {
  const Approx s = sigmoid(exact(g)), silu = mul(exact(g), s);
  Approx a = add_imm(sub(exact(g), silu), 1.0);
  a = mul(mul(mul(a, s), exact(dy)), exact(u));
  return {a, mul(exact(dy), silu)};
}

// The GELU backward kernel's op sequence: dx for pre-activation h.
Approx gelu_approx(double h, double dy) {
  const Approx x = exact(h), h2 = mul(x, x);
  const Approx t = tanh_approx(scale(mul(add_imm(scale(h2, kGeluC), 1.0), x), kGeluK0));
  Approx a = mul(add_imm(scale(h2, 1.5 * kGeluC * kGeluK0), 0.5 * kGeluK0), x);
  a = mul(a, add_imm(scale(mul(t, t), -1.0), 1.0));
  const Approx b = add_imm(scale(t, 0.5), 0.5);
  return mul(add(a, b), exact(dy));
}

// ---------------------------------------------------------------------------------------------
// Double forwards for the finite differences.
double silu(double g) { return g / (1.0 + std::exp(-g)); }
double gelu(double h) { return 0.5 * h * (1.0 + std::tanh(kGeluK0 * (h + kGeluC * h * h * h))); }

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// Central difference of `loss` in v[i] (v is restored).
template <class Loss>
double central_difference(std::vector<double>& v, size_t i, const Loss& loss) {
  constexpr double h = 1e-4;
  const double keep = v[i];
  v[i] = keep + h;
  const double up = loss();
  v[i] = keep - h;
  const double down = loss();
  v[i] = keep;
  return (up - down) / (2 * h);
}

// Expects got[i] within 1e-5 max(1, |fd_i|) of the finite differences (the header's tolerance).
void expect_fd(const std::vector<float>& got, const std::vector<double>& fd, const std::string& what) {
  test::expect_within(
      got, fd, [&](size_t i) { return 1e-5 * std::max(1.0, std::fabs(fd[i])); }, what + " vs finite differences");
}

// ---------------------------------------------------------------------------------------------
// (1) Finite differences on tiny shapes, fp32 in and out.

TEST(ActivationBackward, SwigluMatchesFiniteDifferences) {
  Device dev(load_chip("h100"));
  const int64_t rows = 3, cols = 5, n = rows * cols;
  const auto g = test::random_values(n, DType::kF32, 11, -3.0f, 3.0f);
  const auto u = test::random_values(n, DType::kF32, 12, -2.0f, 2.0f);
  const auto dy = test::random_values(n, DType::kF32, 13);
  Buffer gb = test::make_buffer(dev, DType::kF32, g, "g"), ub = test::make_buffer(dev, DType::kF32, u, "u");
  Buffer dyb = test::make_buffer(dev, DType::kF32, dy, "dy");
  Buffer dgb = dev.alloc(DType::kF32, n, "dg"), dub = dev.alloc(DType::kF32, n, "du");
  kernels::swiglu_backward(dev, gb, ub, dyb, dgb, dub, rows, cols);
  std::vector<double> gd = to_double(g), ud = to_double(u);
  auto loss = [&] {
    double l = 0;
    for (int64_t i = 0; i < n; ++i) l += double(dy[size_t(i)]) * silu(gd[size_t(i)]) * ud[size_t(i)];
    return l;
  };
  std::vector<double> fd_g(n), fd_u(n);
  for (size_t i = 0; i < size_t(n); ++i) {
    fd_g[i] = central_difference(gd, i, loss);
    fd_u[i] = central_difference(ud, i, loss);
  }
  expect_fd(dev.download(dgb), fd_g, "swiglu dg");
  expect_fd(dev.download(dub), fd_u, "swiglu du");
}

TEST(ActivationBackward, GeluAndBiasGradMatchFiniteDifferences) {
  Device dev(load_chip("h100"));
  const int64_t rows = 4, cols = 3, n = rows * cols;
  const auto x = test::random_values(n, DType::kF32, 21, -3.0f, 3.0f);
  const auto b = test::random_values(cols, DType::kF32, 22, -0.5f, 0.5f);
  const auto dy = test::random_values(n, DType::kF32, 23);
  Buffer xb = test::make_buffer(dev, DType::kF32, x, "x"), bb = test::make_buffer(dev, DType::kF32, b, "bias");
  Buffer dyb = test::make_buffer(dev, DType::kF32, dy, "dy");
  Buffer dxb = dev.alloc(DType::kF32, n, "dx"), dbb = dev.alloc(DType::kF32, cols, "dbias");
  std::vector<double> xd = to_double(x), bd = to_double(b);
  auto loss = [&] {  // sum(dy * gelu(x + bias))
    double l = 0;
    for (int64_t i = 0; i < n; ++i) l += double(dy[size_t(i)]) * gelu(xd[size_t(i)] + bd[size_t(i % cols)]);
    return l;
  };
  std::vector<double> fd_x(n), fd_b(cols);
  for (size_t i = 0; i < size_t(n); ++i) fd_x[i] = central_difference(xd, i, loss);
  for (size_t c = 0; c < size_t(cols); ++c) fd_b[c] = central_difference(bd, c, loss);
  kernels::gelu_backward(dev, xb, dyb, dxb, rows, cols, &bb, &dbb);
  expect_fd(dev.download(dxb), fd_x, "gelu dx");
  expect_fd(dev.download(dbb), fd_b, "gelu dbias");

  // Without a bias: L = sum(dy * gelu(x)).
  std::fill(bd.begin(), bd.end(), 0.0);
  for (size_t i = 0; i < size_t(n); ++i) fd_x[i] = central_difference(xd, i, loss);
  kernels::gelu_backward(dev, xb, dyb, dxb, rows, cols);
  expect_fd(dev.download(dxb), fd_x, "gelu dx without bias");

  // Bias add alone: L = sum(dy * (x + bias)).
  auto linear = [&] {
    double l = 0;
    for (int64_t i = 0; i < n; ++i) l += double(dy[size_t(i)]) * (xd[size_t(i)] + bd[size_t(i % cols)]);
    return l;
  };
  for (size_t c = 0; c < size_t(cols); ++c) fd_b[c] = central_difference(bd, c, linear);
  kernels::bias_grad(dev, dyb, dbb, rows, cols);
  expect_fd(dev.download(dbb), fd_b, "bias_grad");
}

// Llama 3.1 scaling on a small table: with theta 1e4 and head_dim 8 the wavelengths are 6.3, 63, 628
// and 6283, so original_max_positions 64 keeps the first, blends the second and divides the others.
const kernels::RopeScaling kSmallLlama31{8.0, 1.0, 4.0, 64};

// Double RoPE forward from rope_inv_freq (Rope.hpp's convention).
std::vector<double> rope_forward(const std::vector<double>& x, int64_t tokens, int64_t heads, int64_t d,
                                 const std::vector<int32_t>& pos, double theta, const kernels::RopeScaling* sc) {
  const auto inv = kernels::rope_inv_freq(theta, d, sc);
  std::vector<double> out(x.size());
  const int64_t half = d / 2;
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < half; ++i) {
        const double a = pos[size_t(t)] * inv[size_t(i)], c = std::cos(a), s = std::sin(a);
        const auto base = size_t((t * heads + h) * d);
        const double x1 = x[base + size_t(i)], x2 = x[base + size_t(i + half)];
        out[base + size_t(i)] = x1 * c - x2 * s;
        out[base + size_t(i + half)] = x2 * c + x1 * s;
      }
  return out;
}

TEST(ActivationBackward, RopeMatchesFiniteDifferences) {
  Device dev(load_chip("h100"));
  const int64_t tokens = 4, heads = 2, d = 8, n = tokens * heads * d;
  const std::vector<int32_t> pos = {0, 5, 6, 100};
  for (const kernels::RopeScaling* sc : {static_cast<const kernels::RopeScaling*>(nullptr), &kSmallLlama31}) {
    kernels::RopeTable table = kernels::make_rope_table(dev, 1e4, d, 128, nullptr, sc);
    const auto x = test::random_values(n, DType::kF32, 31);
    const auto dy = test::random_values(n, DType::kF32, 32);
    std::vector<double> xd = to_double(x);
    auto loss = [&] {
      const auto y = rope_forward(xd, tokens, heads, d, pos, 1e4, sc);
      double l = 0;
      for (size_t i = 0; i < y.size(); ++i) l += double(dy[i]) * y[i];
      return l;
    };
    std::vector<double> fd(n);
    for (size_t i = 0; i < size_t(n); ++i) fd[i] = central_difference(xd, i, loss);
    Buffer dyb = test::make_buffer(dev, DType::kF32, dy, "dy"), dxb = dev.alloc(DType::kF32, n, "dx");
    kernels::rope_backward(dev, table, dyb, dxb, tokens, heads, pos);
    expect_fd(dev.download(dxb), fd, sc ? "rope backward (llama3 scaling)" : "rope backward");
    dev.free(dyb);
    dev.free(dxb);
    kernels::free_rope_table(dev, table);
  }
}

TEST(ActivationBackward, CombineMatchesFiniteDifferences) {
  Device dev(load_chip("h100"));
  const int64_t tokens = 3, k = 2, width = 5, n_src = 7;
  const std::vector<int32_t> index = {4, 0, 2, 6, 1, 3};  // row 5 unused
  const auto src = test::random_values(n_src * width, DType::kF32, 41);
  const auto w = test::random_values(tokens * k, DType::kF32, 42, 0.0f, 1.0f);
  const auto dy = test::random_values(tokens * width, DType::kF32, 43);
  std::vector<double> sd = to_double(src), wd = to_double(w);
  auto loss = [&] {  // sum(dy * gather_combine(src, w))
    double l = 0;
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t j = 0; j < k; ++j)
        for (int64_t c = 0; c < width; ++c)
          l += double(dy[size_t(t * width + c)]) * wd[size_t(t * k + j)] *
               sd[size_t(index[size_t(t * k + j)] * width + c)];
    return l;
  };
  std::vector<double> fd_src(sd.size()), fd_w(wd.size());
  for (size_t i = 0; i < sd.size(); ++i) fd_src[i] = central_difference(sd, i, loss);
  for (size_t i = 0; i < wd.size(); ++i) fd_w[i] = central_difference(wd, i, loss);
  Buffer sb = test::make_buffer(dev, DType::kF32, src, "src"), wb = test::make_buffer(dev, DType::kF32, w, "w");
  Buffer dyb = test::make_buffer(dev, DType::kF32, dy, "dy");
  Buffer dsb = test::make_buffer(dev, DType::kF32, std::vector<float>(sd.size(), 0.0f), "d_src");
  Buffer dwb = dev.alloc(DType::kF32, tokens * k, "d_w");
  kernels::gather_combine_backward(dev, sb, width, index, k, wb, dyb, dsb, dwb);
  expect_fd(dev.download(dsb), fd_src, "combine d_src");
  expect_fd(dev.download(dwb), fd_w, "combine d_w");
}

// ---------------------------------------------------------------------------------------------
// (2) Analytic references on larger shapes and every dtype.

// Shapes: one element; odd; exactly one strip; a strip plus one column; three strips with a partial
// one; one-row tiles over many row groups; 64-row tiles; many narrow rows.
const std::vector<Shape> kShapes = {{1, 1},         {7, 13},   {5, kStrip},  {3, kStrip + 1}, {33, 2 * kStrip + 5},
                                    {600, 4099},    {4097, 64}, {20000, 3}};

void check_swiglu(Device& dev, Shape s, DType in_t, DType out_t, uint64_t seed, bool in_place = false) {
  const std::string what = "swiglu_backward " + test::describe(s, in_t, out_t) + (in_place ? " in place" : "");
  const auto n = size_t(s.rows * s.cols);
  const auto g = test::random_values(n, in_t, seed, -4.0f, 4.0f);
  const auto u = test::random_values(n, in_t, seed + 1, -2.0f, 2.0f);
  const auto dy = test::random_values(n, in_t, seed + 2);
  Buffer gb = test::make_buffer(dev, in_t, g, "g"), ub = test::make_buffer(dev, in_t, u, "u");
  Buffer dyb = test::make_buffer(dev, in_t, dy, "dy");
  Buffer dgb = in_place ? gb : dev.alloc(out_t, int64_t(n), "dg"), dub = in_place ? ub : dev.alloc(out_t, int64_t(n), "du");
  kernels::swiglu_backward(dev, gb, ub, dyb, dgb, dub, s.rows, s.cols);
  const auto ref = kernels::swiglu_backward_reference(g, u, dy);
  const DType t = in_place ? in_t : out_t;
  std::vector<double> e_dg(n), e_du(n);
  for (size_t i = 0; i < n; ++i) {
    const auto [dg, du] = swiglu_approx(g[i], u[i], dy[i]);
    e_dg[i] = 2 * dg.e;
    e_du[i] = 2 * du.e;
  }
  test::expect_within(dev.download(dgb), ref.dg, [&](size_t i) { return test::stored_bound(t, ref.dg[i], e_dg[i]); },
                      what + " dg");
  test::expect_within(dev.download(dub), ref.du, [&](size_t i) { return test::stored_bound(t, ref.du[i], e_du[i]); },
                      what + " du");
  for (Buffer* b : {&gb, &ub, &dyb}) dev.free(*b);
  if (!in_place) {
    dev.free(dgb);
    dev.free(dub);
  }
}

TEST(ActivationBackward, SwigluMatchesReference) {
  Device dev(load_chip("h100"));
  uint64_t seed = 100;
  for (DType t : test::kFloatTypes)
    for (Shape s : kShapes) check_swiglu(dev, s, t, t, seed += 3);
  check_swiglu(dev, {7, 13}, DType::kBF16, DType::kF32, seed += 3);
  check_swiglu(dev, {600, 4099}, DType::kF32, DType::kBF16, seed += 3);
  check_swiglu(dev, {33, 2 * kStrip + 5}, DType::kBF16, DType::kBF16, seed += 3, /*in_place=*/true);
}

// GELU backward (with bias and dbias when `with_bias`), dx checked per element and dbias per column.
void check_gelu(Device& dev, Shape s, DType in_t, DType out_t, bool with_bias, uint64_t seed, bool in_place = false) {
  const std::string what = "gelu_backward " + test::describe(s, in_t, out_t) + (with_bias ? " bias" : "") +
                           (in_place ? " in place" : "");
  const auto n = size_t(s.rows * s.cols);
  const auto x = test::random_values(n, in_t, seed, -4.0f, 4.0f);
  const auto b = test::random_values(size_t(s.cols), in_t, seed + 1, -1.0f, 1.0f);
  const auto dy = test::random_values(n, in_t, seed + 2);
  Buffer xb = test::make_buffer(dev, in_t, x, "x"), bb = test::make_buffer(dev, in_t, b, "bias");
  Buffer dyb = test::make_buffer(dev, in_t, dy, "dy");
  Buffer dxb = in_place ? xb : dev.alloc(out_t, int64_t(n), "dx");
  Buffer dbb = dev.alloc(DType::kF32, s.cols, "dbias");
  kernels::gelu_backward(dev, xb, dyb, dxb, s.rows, s.cols, with_bias ? &bb : nullptr, with_bias ? &dbb : nullptr);
  const auto ref = kernels::gelu_backward_reference(x, dy, s.rows, s.cols, with_bias ? &b : nullptr);
  std::vector<double> e(n), dbias_e(size_t(s.cols));
  for (size_t i = 0; i < n; ++i) {
    const auto c = size_t(int64_t(i) % s.cols);
    const float h = with_bias ? x[i] + b[c] : x[i];  // the fp32 pre-activation, as the kernel adds it
    const Approx a = gelu_approx(h, dy[i]);
    e[i] = 2 * a.e;
    dbias_e[c] += 2 * (a.e + double(s.rows) * test::kU32 * std::fabs(ref.dx[i]));
  }
  const DType t = in_place ? in_t : out_t;
  test::expect_within(dev.download(dxb), ref.dx, [&](size_t i) { return test::stored_bound(t, ref.dx[i], e[i]); },
                      what + " dx");
  if (with_bias)
    test::expect_within(dev.download(dbb), ref.dbias,
                        [&](size_t c) { return test::stored_bound(DType::kF32, ref.dbias[c], dbias_e[c]); },
                        what + " dbias");
  for (Buffer* buf : {&bb, &dyb, &dbb}) dev.free(*buf);
  if (!in_place) dev.free(dxb);
  dev.free(xb);
}

TEST(ActivationBackward, GeluAndDbiasMatchReference) {
  Device dev(load_chip("h100"));
  uint64_t seed = 200;
  for (DType t : test::kFloatTypes)
    for (Shape s : kShapes) check_gelu(dev, s, t, t, /*with_bias=*/true, seed += 3);
  for (Shape s : {Shape{7, 13}, Shape{3, kStrip + 1}}) check_gelu(dev, s, DType::kF32, DType::kF32, false, seed += 3);
  check_gelu(dev, {2000, 700}, DType::kBF16, DType::kF32, true, seed += 3);
  check_gelu(dev, {600, 4099}, DType::kF16, DType::kBF16, true, seed += 3);
  check_gelu(dev, {33, 2 * kStrip + 5}, DType::kBF16, DType::kBF16, true, seed += 3, /*in_place=*/true);
}

TEST(ActivationBackward, BiasGradMatchesReferenceAndAccumulates) {
  Device dev(load_chip("zhenwu-810e"));
  uint64_t seed = 300;
  for (DType t : test::kFloatTypes)
    for (Shape s : kShapes) {
      const std::string what = "bias_grad " + test::describe(s, t, DType::kF32);
      const auto dy = test::random_values(size_t(s.rows * s.cols), t, ++seed);
      Buffer dyb = test::make_buffer(dev, t, dy, "dy");
      // accumulate: dbias starts at 0.5 and the sums are added to it.
      Buffer dbb = test::make_buffer(dev, DType::kF32, std::vector<float>(size_t(s.cols), 0.5f), "dbias");
      const auto ref = kernels::bias_grad_reference(dy, s.rows, s.cols);
      std::vector<double> mag(size_t(s.cols));
      for (size_t i = 0; i < dy.size(); ++i) mag[i % size_t(s.cols)] += std::fabs(dy[i]);
      auto bound = [&](size_t c) { return 2 * (double(s.rows) + 1) * test::kU32 * (mag[c] + 0.5) + 1e-30; };
      kernels::bias_grad(dev, dyb, dbb, s.rows, s.cols, /*accumulate=*/true);
      std::vector<double> ref_acc(ref);
      for (double& v : ref_acc) v += 0.5;
      test::expect_within(dev.download(dbb), ref_acc, bound, what + " accumulated");
      kernels::bias_grad(dev, dyb, dbb, s.rows, s.cols);
      test::expect_within(dev.download(dbb), ref, bound, what);
      dev.free(dyb);
      dev.free(dbb);
    }
}

struct RopeCase {
  int64_t tokens, heads, d;
  std::vector<int32_t> positions;
  DType in_t, out_t;
};

std::vector<int32_t> iota_from(int32_t start, int64_t n) {
  std::vector<int32_t> p(size_t(n), 0);
  std::iota(p.begin(), p.end(), start);
  return p;
}

// Two packed sequences restarting at 0, as training batches are.
std::vector<int32_t> packed(int64_t a, int64_t b) {
  std::vector<int32_t> p = iota_from(0, a), q = iota_from(0, b);
  p.insert(p.end(), q.begin(), q.end());
  return p;
}

TEST(ActivationBackward, RopeMatchesReference) {
  Device dev(load_chip("h100"));
  std::mt19937 rng(7);
  std::vector<int32_t> scattered(37);
  for (auto& p : scattered) p = int32_t(rng() % 4096);
  const std::vector<RopeCase> cases = {
      {1, 1, 2, {0}, DType::kF32, DType::kF32},
      {200, 8, 128, packed(130, 70), DType::kBF16, DType::kBF16},
      {70, 3, 64, iota_from(4000, 70), DType::kF32, DType::kF32},
      {37, 4, 128, scattered, DType::kF16, DType::kF32},
      {5, 2, 256, {9, 9, 9, 9, 9}, DType::kF32, DType::kBF16},
      {65, 5, 128, iota_from(0, 65), DType::kF16, DType::kF16},
  };
  uint64_t seed = 400;
  for (const kernels::RopeScaling* sc : {static_cast<const kernels::RopeScaling*>(nullptr), &kSmallLlama31})
    for (const RopeCase& c : cases) {
      kernels::RopeTable table = kernels::make_rope_table(dev, 1e4, c.d, 4096, nullptr, sc);
      const std::string what = fmt::format("rope_backward tokens {} heads {} d {} {}->{}{}", c.tokens, c.heads, c.d,
                                           dtype_name(c.in_t), dtype_name(c.out_t), sc ? " llama3" : "");
      const int64_t n = c.tokens * c.heads * c.d, half = c.d / 2;
      const auto dy = test::random_values(size_t(n), c.in_t, ++seed, -2.0f, 2.0f);
      Buffer dyb = test::make_buffer(dev, c.in_t, dy, "dy"), dxb = dev.alloc(c.out_t, n, "dx");
      kernels::rope_backward(dev, table, dyb, dxb, c.tokens, c.heads, c.positions);
      const auto ref = kernels::rope_backward_reference(dy, c.tokens, c.heads, c.d, c.positions, 1e4, sc);
      const auto inv = kernels::rope_inv_freq(1e4, c.d, sc);
      test::expect_within(
          dev.download(dxb), ref,
          [&](size_t i) {
            const int64_t row = int64_t(i) / c.d, col = int64_t(i) % c.d, f = col % half;
            const double a = c.positions[size_t(row / c.heads)] * inv[size_t(f)];
            const double y1 = std::fabs(dy[size_t(row * c.d + f)]), y2 = std::fabs(dy[size_t(row * c.d + f + half)]);
            const double cs = std::fabs(std::cos(a)), sn = std::fabs(std::sin(a));
            const double terms = col < half ? y1 * cs + y2 * sn : y2 * cs + y1 * sn;
            return test::stored_bound(c.out_t, ref[i], 3.01 * test::kU32 * terms + std::ldexp(1.0, -148));
          },
          what);
      dev.free(dyb);
      dev.free(dxb);
      kernels::free_rope_table(dev, table);
    }
}

void check_combine(Device& dev, int64_t tokens, int64_t k, int64_t width, int64_t spare, DType t, uint64_t seed) {
  const std::string what = fmt::format("combine backward tokens {} k {} width {} {}", tokens, k, width, dtype_name(t));
  const int64_t n_src = tokens * k + spare;
  std::vector<int32_t> rows(static_cast<size_t>(n_src));
  std::iota(rows.begin(), rows.end(), 0);
  std::shuffle(rows.begin(), rows.end(), std::mt19937_64(seed));
  const std::vector<int32_t> index(rows.begin(), rows.begin() + tokens * k);  // `spare` rows unused
  const auto src = test::random_values(size_t(n_src * width), t, seed + 1);
  const auto w = test::random_values(size_t(tokens * k), t, seed + 2, 0.0f, 1.0f);
  const auto dy = test::random_values(size_t(tokens * width), t, seed + 3);
  constexpr float kSentinel = 7.0f;  // rows no index names keep it
  Buffer sb = test::make_buffer(dev, t, src, "src"), wb = test::make_buffer(dev, t, w, "w");
  Buffer dyb = test::make_buffer(dev, t, dy, "dy");
  Buffer dsb = test::make_buffer(dev, t, std::vector<float>(src.size(), kSentinel), "d_src");
  Buffer dwb = dev.alloc(t, tokens * k, "d_w");
  kernels::gather_combine_backward(dev, sb, width, index, k, wb, dyb, dsb, dwb);
  auto ref = kernels::gather_combine_backward_reference(src, width, index, k, w, dy);
  for (size_t r = size_t(tokens * k); r < rows.size(); ++r)
    for (int64_t c = 0; c < width; ++c) ref.d_src[size_t(rows[r] * width + c)] = kSentinel;
  test::expect_within(dev.download(dsb), ref.d_src,
                      [&](size_t i) { return test::stored_bound(t, ref.d_src[i], test::kU32 * std::fabs(ref.d_src[i])); },
                      what + " d_src");
  std::vector<double> mag(size_t(tokens * k));
  for (int64_t tj = 0; tj < tokens * k; ++tj)
    for (int64_t c = 0; c < width; ++c)
      mag[size_t(tj)] += std::fabs(double(src[size_t(index[size_t(tj)] * width + c)]) * dy[size_t(tj / k * width + c)]);
  test::expect_within(
      dev.download(dwb), ref.d_weights,
      [&](size_t i) { return test::stored_bound(t, ref.d_weights[i], double(width + 1) * test::kU32 * mag[i]); },
      what + " d_w");
  for (Buffer* b : {&sb, &wb, &dyb, &dsb, &dwb}) dev.free(*b);
}

TEST(ActivationBackward, CombineMatchesReference) {
  Device dev(load_chip("h100"));
  uint64_t seed = 500;
  for (DType t : test::kFloatTypes) {
    check_combine(dev, 1, 1, 1, 0, t, seed += 5);
    check_combine(dev, 37, 4, 2500, 3, t, seed += 5);  // partial token tile, three column chunks
    check_combine(dev, 16, 8, kernels::kCombineBwChunk, 0, t, seed += 5);
  }
}

// ---------------------------------------------------------------------------------------------
// (3) RoPE: the backward of the forward is the identity (rotations are orthogonal).

TEST(ActivationBackward, RopeBackwardUndoesForward) {
  Device dev(load_chip("h100"));
  const int64_t tokens = 150, heads = 4, d = 128, n = tokens * heads * d, half = d / 2;
  for (const kernels::RopeScaling* sc : {static_cast<const kernels::RopeScaling*>(nullptr), &kSmallLlama31}) {
    kernels::RopeTable table = kernels::make_rope_table(dev, 5e5, d, 8192, nullptr, sc);
    const std::vector<int32_t> pos = packed(100, 50);
    const auto x = test::random_values(size_t(n), DType::kF32, 600, -2.0f, 2.0f);
    Buffer xb = test::make_buffer(dev, DType::kF32, x, "x"), yb = dev.alloc(DType::kF32, n, "y");
    kernels::rope(dev, table, xb, yb, tokens, heads, pos);
    kernels::rope_backward(dev, table, yb, yb, tokens, heads, pos);  // in place
    test::expect_within(
        dev.download(yb), to_double(x),
        [&](size_t i) {
          const size_t f = i / size_t(d) * size_t(d) + i % size_t(half);
          return 11 * test::kU32 * (std::fabs(x[f]) + std::fabs(x[f + size_t(half)])) + std::ldexp(1.0, -140);
        },
        sc ? "rope round trip (llama3)" : "rope round trip");
    dev.free(xb);
    dev.free(yb);
    kernels::free_rope_table(dev, table);
  }
}

// ---------------------------------------------------------------------------------------------
// (4) The same bits with 1 and 3 host threads (each kernel's arguments span more than the 64 KiB
// below which the executor stays on one thread).

std::vector<uint32_t> bits(const std::vector<float>& v) {
  std::vector<uint32_t> b(v.size());
  std::memcpy(b.data(), v.data(), v.size() * sizeof(float));
  return b;
}

// Runs every backward kernel on a device with `threads` host threads; returns every output.
std::vector<std::vector<float>> run_all(int threads) {
  Device dev(load_chip("h100"), ExecMode::kFunctional, threads);
  std::vector<std::vector<float>> out;
  const int64_t rows = 700, cols = 3000, n = rows * cols;
  Buffer x = test::make_buffer(dev, DType::kBF16, test::random_values(n, DType::kBF16, 1, -3.0f, 3.0f), "x");
  Buffer u = test::make_buffer(dev, DType::kBF16, test::random_values(n, DType::kBF16, 2), "u");
  Buffer dy = test::make_buffer(dev, DType::kBF16, test::random_values(n, DType::kBF16, 3), "dy");
  Buffer bias = test::make_buffer(dev, DType::kF32, test::random_values(cols, DType::kF32, 4), "bias");
  Buffer o1 = dev.alloc(DType::kF32, n, "o1"), o2 = dev.alloc(DType::kF32, n, "o2");
  Buffer db = dev.alloc(DType::kF32, cols, "dbias");
  kernels::swiglu_backward(dev, x, u, dy, o1, o2, rows, cols);
  out.push_back(dev.download(o1));
  out.push_back(dev.download(o2));
  kernels::gelu_backward(dev, x, dy, o1, rows, cols, &bias, &db);
  out.push_back(dev.download(o1));
  out.push_back(dev.download(db));
  kernels::bias_grad(dev, dy, db, rows, cols);
  out.push_back(dev.download(db));

  kernels::RopeTable table = kernels::make_rope_table(dev, 1e6, 128, 1024);
  const int64_t tokens = 300, heads = 8, rn = tokens * heads * 128;
  kernels::rope_backward(dev, table, x.view(0, rn), o1.view(0, rn), tokens, heads, packed(200, 100));
  out.push_back(dev.download(o1.view(0, rn)));

  const int64_t ct = 100, k = 4, width = 1500;
  std::vector<int32_t> index(size_t(ct * k));
  std::iota(index.begin(), index.end(), 0);
  std::shuffle(index.begin(), index.end(), std::mt19937_64(5));
  Buffer w = test::make_buffer(dev, DType::kF32, test::random_values(ct * k, DType::kF32, 6), "w");
  Buffer dw = dev.alloc(DType::kF32, ct * k, "dw");
  kernels::gather_combine_backward(dev, x.view(0, ct * k * width), width, index, k, w, dy.view(0, ct * width),
                                   o2.view(0, ct * k * width), dw);
  out.push_back(dev.download(o2.view(0, ct * k * width)));
  out.push_back(dev.download(dw));
  return out;
}

TEST(ActivationBackward, BitIdenticalWithOneAndThreeThreads) {
  const auto one = run_all(1), three = run_all(3);
  ASSERT_EQ(one.size(), three.size());
  for (size_t i = 0; i < one.size(); ++i) EXPECT_EQ(bits(one[i]), bits(three[i])) << "output " << i;
}

// ---------------------------------------------------------------------------------------------
// (5) Timing-only devices: every kernel takes positive simulated time; the bias gradient's adds go
// through the atomic path.

TEST(ActivationBackward, TimingOnlyRunsTakeTime) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  const int64_t rows = 4096, cols = 11008, n = rows * cols;
  Buffer x = dev.alloc(DType::kBF16, n, "x"), u = dev.alloc(DType::kBF16, n, "u"), dy = dev.alloc(DType::kBF16, n, "dy");
  Buffer dx = dev.alloc(DType::kBF16, n, "dx"), du = dev.alloc(DType::kBF16, n, "du");
  Buffer bias = dev.alloc(DType::kBF16, cols, "bias"), db = dev.alloc(DType::kF32, cols, "dbias");
  EXPECT_GT(kernels::swiglu_backward(dev, x, u, dy, dx, du, rows, cols).time_s, 0.0);
  const KernelTiming g = kernels::gelu_backward(dev, x, dy, dx, rows, cols, &bias, &db);
  EXPECT_GT(g.time_s, 0.0);
  EXPECT_GT(g.atomic_bytes, 0.0);
  EXPECT_GT(kernels::bias_grad(dev, dy, db, rows, cols).time_s, 0.0);
  kernels::RopeTable table = kernels::make_rope_table(dev, 1e6, 128, 8192);
  EXPECT_GT(kernels::rope_backward(dev, table, x.view(0, 4096 * 32 * 128), dx.view(0, 4096 * 32 * 128), 4096, 32,
                                   iota_from(0, 4096))
                .time_s,
            0.0);
  std::vector<int32_t> index(512 * 8);
  std::iota(index.begin(), index.end(), 0);
  Buffer w = dev.alloc(DType::kF32, 512 * 8, "w"), dw = dev.alloc(DType::kF32, 512 * 8, "dw");
  EXPECT_GT(kernels::gather_combine_backward(dev, x.view(0, 4096 * 4096), 4096, index, 8, w, u.view(0, 512 * 4096),
                                             du.view(0, 4096 * 4096), dw)
                .time_s,
            0.0);
}

// ---------------------------------------------------------------------------------------------
// (6) Invalid inputs: one test per kind, each asserting the message names the kernel and the buffer.

TEST(ActivationBackward, RejectsWrongSizes) {
  Device dev(load_chip("h100"));
  Buffer a = dev.alloc(DType::kBF16, 91, "gate"), b = dev.alloc(DType::kBF16, 91, "up");
  Buffer c = dev.alloc(DType::kBF16, 91, "d_act"), d = dev.alloc(DType::kBF16, 92, "d_gate");
  Buffer e = dev.alloc(DType::kBF16, 91, "d_up"), bias12 = dev.alloc(DType::kBF16, 12, "fc1.bias");
  Buffer db = dev.alloc(DType::kF32, 13, "dbias");
  test::expect_error([&] { kernels::swiglu_backward(dev, a, b, c, d, e, 7, 13); },
                     {"swiglu_backward", "output dg 'd_gate'", "92 elements", "[7, 13] (rows, cols)", "needs 91"});
  test::expect_error([&] { kernels::gelu_backward(dev, a, c, e, 7, 13, &bias12, &db); },
                     {"gelu_backward", "bias 'fc1.bias'", "12 elements", "[13] (cols)"});
  test::expect_error([&] { kernels::bias_grad(dev, c, db, 13, 7); }, {"bias_grad", "dbias 'dbias'", "[7] (cols)"});
  test::expect_error([&] { kernels::make_swiglu_backward(a, b, c, e, e, 0, 13); }, {"swiglu_backward", "rows = 0", "positive"});
}

TEST(ActivationBackward, RejectsWrongDtypes) {
  Device dev(load_chip("h100"));
  Buffer a = dev.alloc(DType::kBF16, 91, "gate"), b = dev.alloc(DType::kF8E4M3, 91, "up8");
  Buffer c = dev.alloc(DType::kBF16, 91, "d_act"), e = dev.alloc(DType::kBF16, 91, "d_up");
  Buffer db16 = dev.alloc(DType::kBF16, 13, "dbias16");
  test::expect_error([&] { kernels::make_swiglu_backward(a, b, c, e, c, 7, 13); },
                     {"swiglu_backward", "up u 'up8'", "fp8e4m3", "valid: fp32, bf16, fp16"});
  test::expect_error([&] { kernels::make_gelu_backward(a, c, e, 7, 13, nullptr, &db16); },
                     {"gelu_backward", "dbias 'dbias16'", "bf16", "valid: fp32"});
}

TEST(ActivationBackward, RejectsOverlappingOutputs) {
  Device dev(load_chip("h100"));
  Buffer a = dev.alloc(DType::kF32, 100, "gate"), b = dev.alloc(DType::kF32, 91, "up");
  Buffer c = dev.alloc(DType::kF32, 91, "d_act"), e = dev.alloc(DType::kF32, 91, "d_up");
  Buffer db = dev.alloc(DType::kF32, 13, "dbias");
  const Buffer g = a.view(0, 91), shifted = a.view(1, 91);
  test::expect_error([&] { kernels::make_swiglu_backward(g, b, c, e, e, 7, 13); },
                     {"swiglu_backward", "output dg 'd_up' overlaps output du 'd_up'"});
  test::expect_error([&] { kernels::make_swiglu_backward(g, b, c, shifted, e, 7, 13); },
                     {"swiglu_backward", "overlaps gate g", "without being the same elements"});
  EXPECT_NO_THROW(kernels::make_gelu_backward(b, c, e, 7, 13, nullptr, &db));  // disjoint: valid
  const Buffer db_in_dx = e.view(0, 13);
  test::expect_error([&] { kernels::make_gelu_backward(b, c, e, 7, 13, nullptr, &db_in_dx); },
                     {"gelu_backward", "dbias", "overlaps output dx", "disjoint"});
}

TEST(ActivationBackward, RopeBackwardRejectsBadInputs) {
  Device dev(load_chip("h100"));
  kernels::RopeTable table = kernels::make_rope_table(dev, 1e4, 8, 16);
  Buffer dy = dev.alloc(DType::kF32, 3 * 2 * 8, "dq"), dx = dev.alloc(DType::kF32, 3 * 2 * 8, "dq_out");
  Buffer dy8 = dev.alloc(DType::kF8E5M2, 3 * 2 * 8, "dq8");
  test::expect_error([&] { kernels::make_rope_backward(table, dy, dx, 3, 2, {0, 1, 16}); },
                     {"rope_backward", "token 2 is at position 16", "16 positions", "valid: 0 to 15"});
  test::expect_error([&] { kernels::make_rope_backward(table, dy, dx, 3, 2, {0, 1}); },
                     {"rope_backward", "2 positions given for 3 tokens"});
  test::expect_error([&] { kernels::make_rope_backward(table, dy, dx, 3, 3, {0, 1, 2}); },
                     {"rope_backward", "gradient dy 'dq'", "[3, 3, 8] (tokens, heads, head_dim)"});
  test::expect_error([&] { kernels::make_rope_backward(table, dy8, dx, 3, 2, {0, 1, 2}); },
                     {"rope_backward", "gradient dy 'dq8'", "fp8e5m2", "valid: fp32, bf16, fp16"});
  test::expect_error([&] { kernels::make_rope_backward(kernels::RopeTable{}, dy, dx, 3, 2, {0, 1, 2}); },
                     {"rope_backward", "build it with make_rope_table"});
  test::expect_error([&] { kernels::make_rope_backward(table, dy.view(0, 16), dy.view(1, 16), 1, 2, {0}); },
                     {"rope_backward", "overlaps"});
  test::expect_error([&] { kernels::make_rope_backward(table, dy, dx, 0, 2, {}); }, {"rope_backward", "tokens = 0"});
}

TEST(ActivationBackward, CombineBackwardRejectsBadInputs) {
  Device dev(load_chip("h100"));
  Buffer src = dev.alloc(DType::kF32, 6 * 4, "expert_out"), w = dev.alloc(DType::kF32, 4, "w");
  Buffer dy = dev.alloc(DType::kF32, 2 * 4, "d_y"), ds = dev.alloc(DType::kF32, 6 * 4, "d_expert_out");
  Buffer dw = dev.alloc(DType::kF32, 4, "d_w"), w8 = dev.alloc(DType::kF8E4M3, 4, "w8");
  const std::vector<int32_t> idx = {0, 1, 2, 3};
  auto run = [&](const std::vector<int32_t>& i, const Buffer& wb, const Buffer& d_src, const Buffer& d_w) {
    kernels::make_gather_combine_backward(src, 4, i, 2, wb, dy, d_src, d_w);
  };
  test::expect_error([&] { run({0, 1, 2, 1}, w, ds, dw); },
                     {"gather_combine_backward", "source row 1 is named at positions 1 and 3"});
  test::expect_error([&] { run({0, 1, 2, 6}, w, ds, dw); },
                     {"gather_combine_backward", "index 6 at position 3", "rows [0, 6)"});
  test::expect_error([&] { run({0, 1, 2}, w, ds, dw); }, {"gather_combine_backward", "3 indices", "multiple of k = 2"});
  test::expect_error([&] { run(idx, w, dw, dw); },
                     {"gather_combine_backward", "output d_src 'd_w'", "[6, 4] (n_src, width)"});
  test::expect_error([&] { run(idx, dy, ds, dw); }, {"gather_combine_backward", "weights 'd_y'", "[2, 2] (tokens, k)"});
  test::expect_error([&] { run(idx, w8, ds, dw); }, {"gather_combine_backward", "weights 'w8'", "valid: fp32"});
  test::expect_error([&] { kernels::make_gather_combine_backward(src, 4, idx, 2, w, dy, src, dw); },
                     {"gather_combine_backward", "output d_src 'expert_out' overlaps source 'expert_out'"});
  test::expect_error([&] { kernels::make_gather_combine_backward(src, 5, idx, 2, w, dy, ds, dw); },
                     {"gather_combine_backward", "not a whole number of rows of width 5"});
}

}  // namespace
}  // namespace ppu
