// Tests of kernels/NormBackward (RMSNorm and LayerNorm backward): against central finite differences
// of the double forward references (rms_norm_reference, layer_norm_reference) for the loss
// L = sum(dy * y) on tiny shapes and one long row; against the double backward references on
// shapes from one element to long chunked rows and many short rows (QK-norm), every dtype and
// mixed ones, rows with a large mean; bit-identical results for 1 and 3 host threads; timing-only
// runs; in-place and accumulating use; one test per kind of invalid input.
//
// Error bound, per element, from the double values of the row (u = 2^-24, n = cols + chunks,
// rho = u (0.5 n + 8): the relative error of r, as the forward's tests derive it):
//  * LayerNorm's mean is off by em <= u (n + 4) mean|x| (0 for RMSNorm), so xhat = (x - mean) r
//    by ex = |xhat| (rho + 2u) + em r;
//  * g = w dy rounds once; mean(g xhat) sums n products (with Chan's merges for long rows):
//    E_gx = mean(|g| ex) + u (n + 8) r mean(|g| (|x - mean| + mean|x|)); mean(g): u (n + 4) mean|g|;
//  * dx = r (g - xhat mean(g xhat) - mean(g)): three roundings on the terms and r's error:
//    e = r ((|g| + |t| + |mean g|) (rho + 4u) + |mean(g xhat)| ex + |xhat| E_gx + E_mg), t = xhat gx;
//    then stored_bound adds the rounding to dx's dtype.
//  * dweight = sum over rows of dy xhat: sum(|dy| ex) + u (rows + 2) sum|dy xhat| (every term passes
//    through at most rows + 1 fp32 additions: the block's accumulator, then the ordered store_adds);
//    dbias = sum dy: u (rows + 1) sum|dy|.
// The bounds get a 1% margin. Finite differences (exact perturbations of bf16-valued inputs by
// h = 2^-10 and 2^-11, Richardson-extrapolated) add their own error: the truncation estimate
// |D(h) - D(h/2)| and L's rounding in double over h (see central_difference); the double backward
// reference must match them within that error alone.
#include <gtest/gtest.h>

#include <cstring>

#include "KernelTestUtil.hpp"
#include "kernels/LayerNorm.hpp"
#include "kernels/NormBackward.hpp"
#include "kernels/RmsNorm.hpp"

namespace ppu {
namespace {

using test::Shape;

constexpr float kEps = 1e-5f;
constexpr int kTile = kernels::kNormBwTileElems;

enum class Norm { kRms, kLayer };
const char* norm_name(Norm n) { return n == Norm::kRms ? "rms_norm_backward" : "layer_norm_backward"; }

struct Dtypes {
  DType x, w, dy, dx;
};
constexpr Dtypes kAllF32{DType::kF32, DType::kF32, DType::kF32, DType::kF32};
constexpr Dtypes kAllBF16{DType::kBF16, DType::kBF16, DType::kBF16, DType::kBF16};

struct Inputs {
  std::vector<float> x, w, dy;
};

// x in [offset - 2, offset + 2), w in [0.5, 1.5), dy in [-1, 1), each rounded to its dtype.
Inputs make_inputs(Shape s, Dtypes t, uint64_t seed, float offset = 0.0f) {
  const auto n = static_cast<size_t>(s.rows * s.cols);
  return {test::random_values(n, t.x, seed, offset - 2.0f, offset + 2.0f),
          test::random_values(static_cast<size_t>(s.cols), t.w, seed + 1, 0.5f, 1.5f),
          test::random_values(n, t.dy, seed + 2)};
}

struct Grads {
  std::vector<float> dx, dw, db;
};

// Runs the backward on `dev` (dw and db first filled with 7s, which it must overwrite), downloads.
Grads run(Device& dev, Norm norm, Shape s, Dtypes t, const Inputs& in) {
  DeviceBuffer x = dev.alloc_owned(t.x, s.rows * s.cols, "x");
  DeviceBuffer w = dev.alloc_owned(t.w, s.cols, "w");
  DeviceBuffer dy = dev.alloc_owned(t.dy, s.rows * s.cols, "dy");
  DeviceBuffer dx = dev.alloc_owned(t.dx, s.rows * s.cols, "dx");
  DeviceBuffer dw = dev.alloc_owned(DType::kF32, s.cols, "dw");
  DeviceBuffer db = dev.alloc_owned(DType::kF32, s.cols, "db");
  dev.upload(x, in.x);
  dev.upload(w, in.w);
  dev.upload(dy, in.dy);
  const std::vector<float> sevens(static_cast<size_t>(s.cols), 7.0f);
  dev.upload(dw, sevens);
  dev.upload(db, sevens);
  if (norm == Norm::kRms)
    kernels::rms_norm_backward(dev, x, w, dy, dx, dw, s.rows, s.cols, kEps);
  else
    kernels::layer_norm_backward(dev, x, w, dy, dx, dw, db, s.rows, s.cols, kEps);
  return {dev.download(dx), dev.download(dw), norm == Norm::kLayer ? dev.download(db) : std::vector<float>{}};
}

kernels::NormBackwardReference reference(Norm norm, Shape s, const Inputs& in) {
  return norm == Norm::kRms ? kernels::rms_norm_backward_reference(in.x, in.w, in.dy, s.rows, s.cols, kEps)
                            : kernels::layer_norm_backward_reference(in.x, in.w, in.dy, s.rows, s.cols, kEps);
}

// The error bounds of the header, per element of dx, dw, db (before the rounding of dx's store).
struct Bounds {
  std::vector<double> dx, dw, db;
};

Bounds error_bounds(Norm norm, Shape s, const Inputs& in) {
  const bool layer = norm == Norm::kLayer;
  const double u = test::kU32, n = double(s.cols + test::chunks_of(s.cols, kTile)), rho = u * (0.5 * n + 8);
  const auto cols = static_cast<size_t>(s.cols);
  Bounds b;
  b.dx.resize(in.x.size());
  b.dw.assign(cols, 0.0);
  b.db.assign(cols, 0.0);
  std::vector<double> xc(cols), xhat(cols), g(cols), ex(cols);
  for (size_t r = 0; r < static_cast<size_t>(s.rows); ++r) {
    const float* x = in.x.data() + r * cols;
    const float* dy = in.dy.data() + r * cols;
    double mean = 0, mean_abs = 0, m2 = 0;
    for (size_t c = 0; c < cols; ++c) {
      mean += x[c];
      mean_abs += std::fabs(x[c]);
    }
    mean = layer ? mean / double(cols) : 0.0;
    mean_abs /= double(cols);
    for (size_t c = 0; c < cols; ++c) m2 += (x[c] - mean) * (x[c] - mean);
    const double rstd = 1.0 / std::sqrt(m2 / double(cols) + double(kEps));
    const double em = layer ? u * (n + 4) * mean_abs : 0.0;
    double gx = 0, mg = 0, mean_g_abs = 0, mean_g_ex = 0, mean_g_scale = 0;
    for (size_t c = 0; c < cols; ++c) {
      xc[c] = x[c] - mean;
      xhat[c] = xc[c] * rstd;
      g[c] = double(in.w[c]) * dy[c];
      ex[c] = std::fabs(xhat[c]) * (rho + 2 * u) + em * rstd;
      gx += g[c] * xhat[c];
      mg += g[c];
      mean_g_abs += std::fabs(g[c]);
      mean_g_ex += std::fabs(g[c]) * ex[c];
      mean_g_scale += std::fabs(g[c]) * (std::fabs(xc[c]) + mean_abs);
    }
    gx /= double(cols);
    mg = layer ? mg / double(cols) : 0.0;
    const double e_gx = mean_g_ex / double(cols) + u * (n + 8) * rstd * mean_g_scale / double(cols);
    const double e_mg = layer ? u * (n + 4) * mean_g_abs / double(cols) : 0.0;
    for (size_t c = 0; c < cols; ++c) {
      const double t = std::fabs(xhat[c] * gx);
      b.dx[r * cols + c] = 1.01 * rstd *
                           ((std::fabs(g[c]) + t + std::fabs(mg)) * (rho + 4 * u) + std::fabs(gx) * ex[c] +
                            std::fabs(xhat[c]) * e_gx + e_mg);
      b.dw[c] += std::fabs(dy[c]) * ex[c] + u * double(s.rows + 2) * std::fabs(dy[c] * xhat[c]);
      b.db[c] += u * double(s.rows + 1) * std::fabs(dy[c]);
    }
  }
  for (double& v : b.dw) v *= 1.01;
  for (double& v : b.db) v *= 1.01;
  return b;
}

std::string describe(Norm norm, Shape s, Dtypes t) {
  return fmt::format("{} [{}, {}] x {} w {} dy {} dx {}", norm_name(norm), s.rows, s.cols, dtype_name(t.x),
                     dtype_name(t.w), dtype_name(t.dy), dtype_name(t.dx));
}

// (2) The kernels on `in` (values rounded to the dtypes of t) against the double backward reference.
void check_inputs(Device& dev, Norm norm, Shape s, Dtypes t, const Inputs& in, const std::string& label = "") {
  const Grads got = run(dev, norm, s, t, in);
  const kernels::NormBackwardReference ref = reference(norm, s, in);
  const Bounds b = error_bounds(norm, s, in);
  const std::string what = describe(norm, s, t) + label;
  test::expect_within(got.dx, ref.dx, [&](size_t i) { return test::stored_bound(t.dx, ref.dx[i], b.dx[i]); },
                      what + " dx");
  test::expect_within(got.dw, ref.dweight, [&](size_t i) { return b.dw[i]; }, what + " dweight");
  if (norm == Norm::kLayer)
    test::expect_within(got.db, ref.dbias, [&](size_t i) { return b.db[i]; }, what + " dbias");
}

void check_against_reference(Device& dev, Norm norm, Shape s, Dtypes t, uint64_t seed, float offset = 0.0f) {
  check_inputs(dev, norm, s, t, make_inputs(s, t, seed, offset));
}

// --- (1) finite differences -----------------------------------------------------------------------

// L = sum(dy * y) over `rows` rows, y by the double forward reference (LayerNorm's with `beta`),
// and sum |dy * y| (for L's rounding error).
struct Loss {
  double value, abs;
};
Loss loss(Norm norm, const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>& beta,
          const float* dy, int64_t rows, int64_t cols) {
  const std::vector<double> y = norm == Norm::kRms ? kernels::rms_norm_reference(x, w, rows, cols, kEps)
                                                   : kernels::layer_norm_reference(x, w, beta, rows, cols, kEps);
  Loss l{0, 0};
  for (size_t i = 0; i < y.size(); ++i) {
    l.value += double(dy[i]) * y[i];
    l.abs += std::fabs(double(dy[i]) * y[i]);
  }
  return l;
}

struct Fd {
  double value, err;
};

// dL/dv by central differences, v perturbed in place by +-h (exactly: v is bf16-valued and small),
// Richardson-extrapolated from h = 2^-10 and 2^-11. err: the truncation estimate |D(h) - D(h/2)|
// plus the rounding of L in double (terms: n, each y off by <= (cols + 8) 2^-53 relative through
// the row statistic, then n additions: (n + cols + 8) 2^-53 sum|dy y|), three times over h.
Fd central_difference(float& v, int64_t terms, int64_t cols, const std::function<Loss()>& f) {
  const float v0 = v;
  double abs_max = 0;
  auto diff = [&](float h) {
    EXPECT_EQ(double(v0 + h) - double(v0), double(h)) << "perturbation not exact at " << v0;
    v = v0 + h;
    const Loss lp = f();
    v = v0 - h;
    const Loss lm = f();
    v = v0;
    abs_max = std::max({abs_max, lp.abs, lm.abs});
    return (lp.value - lm.value) / (2.0 * h);
  };
  const float h = std::ldexp(1.0f, -10);
  const double d1 = diff(h), d2 = diff(h / 2);
  const double rounding = std::ldexp(double(terms + cols + 8) * abs_max, -53);
  return {(4 * d2 - d1) / 3, std::fabs(d1 - d2) + 3 * rounding / h};
}

// Every `stride`-th column (and the last) of every row: dx, dweight (and dbias) against finite
// differences of the forward reference.
void check_finite_differences(Norm norm, Shape s, Dtypes t, uint64_t seed, int64_t stride = 1) {
  Device dev(load_chip("h100"));
  // bf16-valued inputs whatever their dtype, so that +-h is exact in fp32.
  Inputs in = make_inputs(s, {DType::kBF16, DType::kBF16, t.dy, t.dx}, seed);
  const Grads got = run(dev, norm, s, t, in);
  const kernels::NormBackwardReference ref = reference(norm, s, in);
  const Bounds b = error_bounds(norm, s, in);
  const std::string what = describe(norm, s, t) + " vs finite differences";
  const auto cols = static_cast<size_t>(s.cols);
  std::vector<float> beta(cols, 0.0f);
  int failures = 0, checked = 0;
  // The kernel within its bound plus the difference's error; the double reference within the latter.
  auto expect_near = [&](const char* name, size_t i, double got_v, double ref_v, const Fd& fd, double bound) {
    ++checked;
    const bool ok = std::fabs(got_v - fd.value) <= bound + fd.err &&
                    std::fabs(ref_v - fd.value) <= fd.err + std::ldexp(1.0 + std::fabs(fd.value), -40);
    if (!ok && ++failures <= 5)
      ADD_FAILURE() << what << ": " << name << "[" << i << "] = " << got_v << " (reference " << ref_v
                    << "), finite difference " << fd.value << " (+-" << fd.err << "), bound " << bound;
  };
  for (size_t c = 0; c < cols; ++c) {
    if (c % static_cast<size_t>(stride) != 0 && c + 1 != cols) continue;
    for (size_t r = 0; r < static_cast<size_t>(s.rows); ++r) {
      std::vector<float> row(in.x.begin() + static_cast<std::ptrdiff_t>(r * cols),
                             in.x.begin() + static_cast<std::ptrdiff_t>((r + 1) * cols));
      const Fd fd = central_difference(row[c], s.cols, s.cols,
                                       [&] { return loss(norm, row, in.w, beta, &in.dy[r * cols], 1, s.cols); });
      const size_t i = r * cols + c;
      expect_near("dx", i, got.dx[i], ref.dx[i], fd, test::stored_bound(t.dx, ref.dx[i], b.dx[i]));
    }
    auto full_loss = [&] { return loss(norm, in.x, in.w, beta, in.dy.data(), s.rows, s.cols); };
    const int64_t terms = s.rows * s.cols;
    expect_near("dweight", c, got.dw[c], ref.dweight[c], central_difference(in.w[c], terms, s.cols, full_loss),
                b.dw[c]);
    if (norm == Norm::kLayer)
      expect_near("dbias", c, got.db[c], ref.dbias[c], central_difference(beta[c], terms, s.cols, full_loss),
                  b.db[c]);
  }
  EXPECT_EQ(failures, 0) << what << ": " << failures << " of " << checked << " values outside the bound";
}

TEST(NormBackward, RmsNormMatchesFiniteDifferences) {
  uint64_t seed = 7100;
  for (int64_t cols : {5, 64, 130}) check_finite_differences(Norm::kRms, {3, cols}, kAllF32, ++seed);
  check_finite_differences(Norm::kRms, {3, 130}, kAllBF16, ++seed);
  check_finite_differences(Norm::kRms, {2, 2 * kTile + 7}, kAllF32, ++seed, /*stride=*/61);
}

TEST(NormBackward, LayerNormMatchesFiniteDifferences) {
  uint64_t seed = 7200;
  for (int64_t cols : {5, 64, 130}) check_finite_differences(Norm::kLayer, {3, cols}, kAllF32, ++seed);
  check_finite_differences(Norm::kLayer, {3, 130}, kAllBF16, ++seed);
  check_finite_differences(Norm::kLayer, {2, 2 * kTile + 7}, kAllF32, ++seed, /*stride=*/61);
}

// --- (2) the double reference ---------------------------------------------------------------------

// One element; a prime width; QK-norm rows of head_dim 128 (64 rows a tile, the last one partial);
// eight rows a tile in several groups (the last with one tile); one row a tile; exactly one tile;
// long rows in 2 and 3 chunks, one group or many (the last stats block and group partial); three
// columns over many rows.
const std::vector<Shape> kShapes = {{1, 1},     {7, 13},        {2000, 128},        {999, 1000}, {600, 4099},
                                    {2, kTile}, {3, kTile + 1}, {2, 2 * kTile + 7}, {517, 8200}, {140009, 3}};

void check_every_shape_and_dtype(Norm norm, uint64_t seed) {
  Device dev(load_chip("h100"));
  for (DType t : test::kFloatTypes)
    for (Shape s : kShapes) check_against_reference(dev, norm, s, {t, t, t, t}, ++seed);
}

TEST(NormBackward, RmsNormMatchesReferenceEveryShapeAndDtype) { check_every_shape_and_dtype(Norm::kRms, 7300); }
TEST(NormBackward, LayerNormMatchesReferenceEveryShapeAndDtype) { check_every_shape_and_dtype(Norm::kLayer, 7350); }

TEST(NormBackward, MixedDtypes) {
  Device dev(load_chip("zhenwu-810e"));
  const Dtypes combos[] = {{DType::kBF16, DType::kF32, DType::kBF16, DType::kF32},
                           {DType::kF32, DType::kBF16, DType::kF16, DType::kBF16},
                           {DType::kF16, DType::kF16, DType::kBF16, DType::kF32}};
  uint64_t seed = 7400;
  for (Norm norm : {Norm::kRms, Norm::kLayer})
    for (const Dtypes& t : combos)
      for (Shape s : {Shape{7, 13}, Shape{600, 4099}, Shape{3, 2 * kTile + 7}})
        check_against_reference(dev, norm, s, t, ++seed);
}

// Rows whose mean (3) exceeds their spread: LayerNorm must centre before it squares, in the tile and
// across chunks (Chan's merge).
TEST(NormBackward, LayerNormRowsWithLargeMean) {
  Device dev(load_chip("h100"));
  uint64_t seed = 7500;
  for (Shape s : {Shape{7, 257}, Shape{600, 4099}, Shape{3, 2 * kTile + 7}})
    check_against_reference(dev, Norm::kLayer, s, kAllF32, ++seed, /*offset=*/3.0f);
}

// Long rows whose chunks have very different means (a step from 0 to 8 mid-row) and a dy of one
// sign (so sum g is large): every term of Chan's merge of mean(g * xhat) across chunks matters.
TEST(NormBackward, LayerNormChunksWithDifferentMeans) {
  Device dev(load_chip("h100"));
  const Shape s{3, 2 * kTile + 7};
  Inputs in = make_inputs(s, kAllF32, 7550);
  for (size_t i = 0; i < in.x.size(); ++i)
    if (i % static_cast<size_t>(s.cols) >= static_cast<size_t>(s.cols / 2)) in.x[i] += 8.0f;
  in.dy = test::random_values(in.x.size(), DType::kF32, 7551, 0.0f, 1.0f);
  check_inputs(dev, Norm::kLayer, s, kAllF32, in, " with a step in the mean");
}

// Rows where eps (1e-5) dominates the mean square or variance (values ~1e-4, against ~3e-9), a zero
// row (RMSNorm: dx = g / sqrt(eps)) and a constant row (LayerNorm: xhat = 0, dx = (g - mean g) /
// sqrt(eps)): a kernel that dropped or misplaced eps would show.
TEST(NormBackward, EpsDominatesSmallRows) {
  Device dev(load_chip("h100"));
  uint64_t seed = 7560;
  for (Norm norm : {Norm::kRms, Norm::kLayer})
    for (Shape s : {Shape{3, 257}, Shape{2, 2 * kTile + 7}}) {
      Inputs in = make_inputs(s, kAllF32, ++seed);
      in.x = test::random_values(in.x.size(), DType::kF32, ++seed, -1e-4f, 1e-4f);
      std::fill(in.x.begin(), in.x.begin() + s.cols, norm == Norm::kRms ? 0.0f : 0.5f);
      check_inputs(dev, norm, s, kAllF32, in, " tiny rows");
    }
}

// dx written over dy (or x), and accumulate = true adding into what dweight and dbias hold; in fp32
// the functional executor reads unconverted inputs in place, so this also checks that nothing reads
// dy or x after its dx is stored.
TEST(NormBackward, InPlaceAndAccumulate) {
  Device dev(load_chip("h100"));
  uint64_t seed = 7600;
  for (DType t : {DType::kBF16, DType::kF32})
    for (Shape s : {Shape{600, 4099}, Shape{3, 2 * kTile + 7}})
      for (bool over_x : {false, true}) {
        const Inputs in = make_inputs(s, {t, t, t, t}, ++seed);
        DeviceBuffer x = dev.alloc_owned(t, s.rows * s.cols, "x");
        DeviceBuffer w = dev.alloc_owned(t, s.cols, "w");
        DeviceBuffer dy = dev.alloc_owned(t, s.rows * s.cols, "dy");
        DeviceBuffer dg = dev.alloc_owned(DType::kF32, s.cols, "dgamma");
        DeviceBuffer db = dev.alloc_owned(DType::kF32, s.cols, "dbeta");
        dev.upload(x, in.x);
        dev.upload(w, in.w);
        dev.upload(dy, in.dy);
        const std::vector<float> prior = test::random_values(static_cast<size_t>(s.cols), DType::kF32, seed + 9);
        dev.upload(dg, prior);
        dev.upload(db, prior);
        const Buffer& dx = over_x ? x.get() : dy.get();
        kernels::layer_norm_backward(dev, x, w, dy, dx, dg, db, s.rows, s.cols, kEps, /*accumulate=*/true);
        const kernels::NormBackwardReference ref = reference(Norm::kLayer, s, in);
        const Bounds b = error_bounds(Norm::kLayer, s, in);
        const std::string what = fmt::format("layer_norm_backward [{}, {}] {} in place over {}, accumulating",
                                             s.rows, s.cols, dtype_name(t), over_x ? "x" : "dy");
        const std::vector<float> got_dx = dev.download(dx), got_dg = dev.download(dg), got_db = dev.download(db);
        test::expect_within(
            got_dx, ref.dx, [&](size_t i) { return test::stored_bound(t, ref.dx[i], b.dx[i]); }, what + " dx");
        std::vector<double> want_dg(ref.dweight), want_db(ref.dbias);
        for (size_t c = 0; c < prior.size(); ++c) {
          want_dg[c] += prior[c];
          want_db[c] += prior[c];
        }
        // The prior value is one more term of the sum, in every partial sum of its rows + 1 additions.
        auto bound = [&](const std::vector<double>& e, size_t c) {
          return e[c] + 1.01 * test::kU32 * double(s.rows + 2) * std::fabs(prior[c]);
        };
        test::expect_within(got_dg, want_dg, [&](size_t c) { return bound(b.dw, c); }, what + " dgamma");
        test::expect_within(got_db, want_db, [&](size_t c) { return bound(b.db, c); }, what + " dbeta");
      }
}

// --- (3) determinism ------------------------------------------------------------------------------

TEST(NormBackward, BitIdenticalForAnyHostThreadCount) {
  uint64_t seed = 7700;
  for (Norm norm : {Norm::kRms, Norm::kLayer})
    for (Shape s : {Shape{600, 4099}, Shape{4096, 128}, Shape{64, 2 * kTile + 7}}) {
      const Inputs in = make_inputs(s, kAllBF16, ++seed);
      Device one(load_chip("h100"), ExecMode::kFunctional, 1), three(load_chip("h100"), ExecMode::kFunctional, 3);
      const Grads a = run(one, norm, s, kAllBF16, in), b = run(three, norm, s, kAllBF16, in);
      const std::string what = describe(norm, s, kAllBF16);
      auto same_bits = [&](const std::vector<float>& p, const std::vector<float>& q, const char* name) {
        ASSERT_EQ(p.size(), q.size());
        if (p.empty()) return;  // RMSNorm has no dbias (memcmp on a null pointer is undefined even for 0 bytes)
        EXPECT_EQ(std::memcmp(p.data(), q.data(), p.size() * sizeof(float)), 0) << what << ": " << name;
      };
      same_bits(a.dx, b.dx, "dx");
      same_bits(a.dw, b.dw, "dweight");
      same_bits(a.db, b.db, "dbias");
    }
}

// --- (4) timing-only ------------------------------------------------------------------------------

double timed_seconds(Device& dev, Norm norm, Shape s, size_t* kernels_launched = nullptr) {
  DeviceBuffer x = dev.alloc_owned(DType::kBF16, s.rows * s.cols, "x");
  DeviceBuffer w = dev.alloc_owned(DType::kBF16, s.cols, "w");
  DeviceBuffer dy = dev.alloc_owned(DType::kBF16, s.rows * s.cols, "dy");
  DeviceBuffer dx = dev.alloc_owned(DType::kBF16, s.rows * s.cols, "dx");
  DeviceBuffer dw = dev.alloc_owned(DType::kF32, s.cols, "dw");
  DeviceBuffer db = dev.alloc_owned(DType::kF32, s.cols, "db");
  const kernels::NormBackwardTiming t =
      norm == Norm::kRms ? kernels::rms_norm_backward(dev, x, w, dy, dx, dw, s.rows, s.cols, kEps)
                         : kernels::layer_norm_backward(dev, x, w, dy, dx, dw, db, s.rows, s.cols, kEps);
  if (kernels_launched) *kernels_launched = t.kernels.size();
  for (const KernelTiming& k : t.kernels) EXPECT_GT(k.time_s, 0.0) << k.name;
  return t.time_s();
}

TEST(NormBackward, TimingOnlyGrowsWithRows) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  for (Norm norm : {Norm::kRms, Norm::kLayer})
    for (int64_t cols : {int64_t{128}, int64_t{4096}, int64_t{16384}}) {
      size_t launched = 0;
      const double small = timed_seconds(dev, norm, {1024, cols}, &launched);
      const double large = timed_seconds(dev, norm, {16384, cols});
      EXPECT_GT(small, 0.0) << norm_name(norm) << " cols " << cols;
      EXPECT_GT(large, small) << norm_name(norm) << " cols " << cols;
      EXPECT_EQ(launched, cols > kTile ? 3u : 2u) << "stats (long rows), zero, grad";
    }
}

// --- (5) invalid input ----------------------------------------------------------------------------

struct Bufs {
  Buffer x, w, dy, dx, dw, db;
};
Bufs alloc_bufs(Device& dev, int64_t rows, int64_t cols, DType t = DType::kF32) {
  return {dev.alloc(t, rows * cols, "x"),  dev.alloc(t, cols, "norm.weight"),     dev.alloc(t, rows * cols, "dy"),
          dev.alloc(t, rows * cols, "dx"), dev.alloc(DType::kF32, cols, "dw"), dev.alloc(DType::kF32, cols, "db")};
}

TEST(NormBackward, RejectsNonPositiveSizes) {
  Device dev(load_chip("h100"));
  Bufs b = alloc_bufs(dev, 7, 13);
  test::expect_error([&] { kernels::rms_norm_backward(dev, b.x, b.w, b.dy, b.dx, b.dw, 0, 13, kEps); },
                     {"rms_norm_backward", "rows = 0", "must be positive"});
  test::expect_error([&] { kernels::layer_norm_backward(dev, b.x, b.w, b.dy, b.dx, b.dw, b.db, 7, -1, kEps); },
                     {"layer_norm_backward", "cols = -1", "must be positive"});
}

TEST(NormBackward, RejectsWeightSizeMismatch) {
  Device dev(load_chip("h100"));
  Bufs b = alloc_bufs(dev, 7, 13);
  Buffer w12 = dev.alloc(DType::kF32, 12, "norm.weight");
  test::expect_error([&] { kernels::rms_norm_backward(dev, b.x, w12, b.dy, b.dx, b.dw, 7, 13, kEps); },
                     {"rms_norm_backward", "weight 'norm.weight'", "12 elements", "[13] (cols)", "needs 13"});
  test::expect_error([&] { kernels::layer_norm_backward(dev, b.x, w12, b.dy, b.dx, b.dw, b.db, 7, 13, kEps); },
                     {"layer_norm_backward", "gamma 'norm.weight'", "12 elements", "[13] (cols)"});
}

TEST(NormBackward, RejectsMatrixSizeMismatch) {
  Device dev(load_chip("h100"));
  Bufs b = alloc_bufs(dev, 7, 13);
  Buffer small = dev.alloc(DType::kF32, 90, "short");
  test::expect_error([&] { kernels::rms_norm_backward(dev, small, b.w, b.dy, b.dx, b.dw, 7, 13, kEps); },
                     {"rms_norm_backward", "input x 'short'", "90 elements", "[7, 13] (rows, cols)", "needs 91"});
  test::expect_error([&] { kernels::rms_norm_backward(dev, b.x, b.w, small, b.dx, b.dw, 7, 13, kEps); },
                     {"rms_norm_backward", "output gradient dy 'short'", "[7, 13] (rows, cols)"});
  test::expect_error([&] { kernels::layer_norm_backward(dev, b.x, b.w, b.dy, small, b.dw, b.db, 7, 13, kEps); },
                     {"layer_norm_backward", "input gradient dx 'short'", "[7, 13] (rows, cols)"});
}

TEST(NormBackward, RejectsGradientSizeMismatch) {
  Device dev(load_chip("h100"));
  Bufs b = alloc_bufs(dev, 7, 13);
  Buffer v14 = dev.alloc(DType::kF32, 14, "v14");
  test::expect_error([&] { kernels::rms_norm_backward(dev, b.x, b.w, b.dy, b.dx, v14, 7, 13, kEps); },
                     {"rms_norm_backward", "gradient dweight 'v14'", "14 elements", "[13] (cols)"});
  test::expect_error([&] { kernels::layer_norm_backward(dev, b.x, b.w, b.dy, b.dx, b.dw, v14, 7, 13, kEps); },
                     {"layer_norm_backward", "gradient dbeta 'v14'", "14 elements", "[13] (cols)"});
}

TEST(NormBackward, RejectsNonFp32Sums) {
  Device dev(load_chip("h100"));
  Bufs b = alloc_bufs(dev, 7, 13);
  Buffer bf = dev.alloc(DType::kBF16, 13, "dw_bf16");
  test::expect_error([&] { kernels::rms_norm_backward(dev, b.x, b.w, b.dy, b.dx, bf, 7, 13, kEps); },
                     {"rms_norm_backward", "gradient dweight 'dw_bf16' is bf16", "valid: fp32"});
  test::expect_error([&] { kernels::layer_norm_backward(dev, b.x, b.w, b.dy, b.dx, b.dw, bf, 7, 13, kEps); },
                     {"layer_norm_backward", "gradient dbeta 'dw_bf16' is bf16", "valid: fp32"});
}

TEST(NormBackward, RejectsFp8Tensors) {
  Device dev(load_chip("h100"));
  Bufs b = alloc_bufs(dev, 7, 13);
  Buffer x8 = dev.alloc(DType::kF8E4M3, 91, "x8");
  test::expect_error([&] { kernels::rms_norm_backward(dev, x8, b.w, b.dy, b.dx, b.dw, 7, 13, kEps); },
                     {"rms_norm_backward", "input x 'x8' is fp8e4m3", "valid: fp32, bf16, fp16"});
  test::expect_error([&] { kernels::layer_norm_backward(dev, b.x, b.w, b.dy, x8, b.dw, b.db, 7, 13, kEps); },
                     {"layer_norm_backward", "input gradient dx 'x8' is fp8e4m3", "valid: fp32, bf16, fp16"});
}

TEST(NormBackward, RejectsNegativeOrNonFiniteEps) {
  Device dev(load_chip("h100"));
  Bufs b = alloc_bufs(dev, 7, 13);
  test::expect_error([&] { kernels::rms_norm_backward(dev, b.x, b.w, b.dy, b.dx, b.dw, 7, 13, -1e-6f); },
                     {"rms_norm_backward", "eps = -1e-06", "finite and >= 0"});
  test::expect_error([&] { kernels::layer_norm_backward(dev, b.x, b.w, b.dy, b.dx, b.dw, b.db, 7, 13, std::nanf("")); },
                     {"layer_norm_backward", "eps = nan", "finite and >= 0"});
}

TEST(NormBackward, RejectsOverlaps) {
  Device dev(load_chip("h100"));
  Bufs b = alloc_bufs(dev, 7, 13);
  // dx shifted by one element against x: neither x itself nor apart from it.
  Buffer big = dev.alloc(DType::kF32, 92, "big");
  Buffer x0 = big.view(0, 91), x1 = big.view(1, 91);
  test::expect_error([&] { kernels::rms_norm_backward(dev, x0, b.w, b.dy, x1, b.dw, 7, 13, kEps); },
                     {"rms_norm_backward", "input gradient dx", "overlaps input x", "only dx may share memory"});
  test::expect_error([&] { kernels::rms_norm_backward(dev, b.x, b.w, b.dy, b.dx, b.w, 7, 13, kEps); },
                     {"rms_norm_backward", "gradient dweight 'norm.weight' overlaps weight 'norm.weight'"});
  test::expect_error([&] { kernels::layer_norm_backward(dev, b.x, b.w, b.dy, b.dx, b.dw, b.dw, 7, 13, kEps); },
                     {"layer_norm_backward", "gradient dbeta 'dw' overlaps gradient dgamma 'dw'"});
}

TEST(NormBackward, RejectsMissingOrSmallScratch) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  const int64_t rows = 3, cols = kTile + 1;
  Bufs b = alloc_bufs(dev, rows, cols);
  EXPECT_EQ(kernels::rms_norm_backward_scratch_numel(rows, cols), 2 * rows);
  EXPECT_EQ(kernels::layer_norm_backward_scratch_numel(rows, cols), 4 * rows);
  EXPECT_EQ(kernels::rms_norm_backward_scratch_numel(rows, kTile), 0);
  test::expect_error(
      [&] { kernels::make_rms_norm_backward(b.x, b.w, b.dy, b.dx, b.dw, Buffer{}, rows, cols, kEps); },
      {"rms_norm_backward", "need an fp32 scratch of 6 elements", "none was given"});
  Buffer small = dev.alloc(DType::kF32, 11, "scratch");
  test::expect_error(
      [&] { kernels::make_layer_norm_backward(b.x, b.w, b.dy, b.dx, b.dw, b.db, small, rows, cols, kEps); },
      {"layer_norm_backward", "scratch 'scratch' has 11 elements", "needs at least 12"});
}

}  // namespace
}  // namespace ppu
