// Tests of kernels/Optimizer: AdamW against adamw_reference (double) over steps t = 1..5 with fp32
// master weights and bf16 / fp16 copies; the global gradient norm against a double sum over buffers
// of mixed sizes and dtypes, with NaN / inf named per buffer; the fill kernel; bit-identical results
// for 1 and 3 host threads; timing-only runs against the HBM bound; the learning-rate schedule, the
// clipping coefficient and the loss scaler's edge cases; one test per kind of invalid input.
//
// AdamW error bound, per element, for one step from the device's own fp32 state (p, m, v: what the
// previous step stored) against the double reference from the same state. u = 2^-24; gamma_k ~ k u.
// With g = grad * grad_scale, M = beta1 |m| + (1 - beta1) |g|, m', v', p' the reference's results,
// p_d = p (1 - lr wd), c = lr / (1 - beta1^t) and d = sqrt(v' / (1 - beta2^t)) + eps:
//  * every constant is rounded to fp32 once (u) and every operation rounds once (u);
//  * g: 2 roundings; m' = fl(fl(m beta1) + fl(g (1 - beta1))): |m^ - m'| <= 3u beta1|m| + 5u (1 - beta1)|g|;
//  * v' sums two non-negative terms, the second g^2 (1 - beta2) with 8 roundings: |v^ - v'| <= 8u v';
//  * the denominator: sqrt halves v^'s relative error, then constant, product, eps and sum: d(1 + 8u);
//  * the quotient m^ / d^ and its product with c (two more roundings on top of m^'s 5u M and d's 8u):
//    |step^ - c m'/d| <= 19u c M / d;
//  * p^ = fl(fl(p (1 - lr wd)) - step^): 2u |p_d| + 19u c M / d + u |p'|.
// Each bound gets a 1% margin (second-order terms) plus fp32's subnormal slack. The copy must equal
// the stored fp32 master rounded (RNE) to its dtype exactly, since the DMA rounds the same SRAM value.
//
// Global norm bound: each square rounds once and each term then passes through at most D fp32
// additions in any order - within a tile (at most kNormTileElems - 1), the block's running sum (its
// tiles), then the ordered store_adds (the blocks of its buffer, or all blocks for the total) - so
// |sum^ - sum| <= (D + 1) u sum x^2 with D = kNormTileElems + 2 * tiles + buffers, plus 1%.
// That worst case cannot see one element missed among thousands, so all-ones buffers (every partial
// sum an exact integer) must give their element counts exactly.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>

#include "KernelTestUtil.hpp"
#include "kernels/Optimizer.hpp"

namespace ppu {
namespace {

using kernels::AdamWParams;
using kernels::AdamWState;

const float kInf = std::numeric_limits<float>::infinity();
const float kNaN = std::numeric_limits<float>::quiet_NaN();

// One parameter tensor's AdamW buffers on a device, and their host copies.
struct AdamWBuffers {
  DeviceBuffer grad, param, exp_avg, exp_avg_sq, copy;
  AdamWBuffers(Device& dev, int64_t n, DType copy_type, const std::vector<float>& p0)
      : grad(dev.alloc_owned(DType::kF32, n, "grad")),
        param(dev.alloc_owned(DType::kF32, n, "param")),
        exp_avg(dev.alloc_owned(DType::kF32, n, "exp_avg")),
        exp_avg_sq(dev.alloc_owned(DType::kF32, n, "exp_avg_sq")),
        copy(dev.alloc_owned(copy_type, n, "param_copy")) {
    dev.upload(param, p0);
    kernels::fill(dev, exp_avg, 0.0f);  // torch initialises both moments to zeros
    kernels::fill(dev, exp_avg_sq, 0.0f);
  }
  void step(Device& dev, const AdamWParams& hp) { kernels::adamw(dev, hp, grad, param, exp_avg, exp_avg_sq, copy); }
};

// Gradients of step t: uniform in [-4, 4), every 97th exactly zero (the denominator is then eps alone
// at t = 1).
std::vector<float> step_grads(size_t n, uint64_t seed) {
  std::vector<float> g = test::random_values(n, DType::kF32, seed, -4.0f, 4.0f);
  for (size_t i = 0; i < n; i += 97) g[i] = 0.0f;
  return g;
}

// Hyper-parameters of step t: lr from a short warmup + cosine schedule, GPT-3's betas and decay, and
// a grad scale that unscales a loss scale of 8 with a clipping factor of 0.75 folded in.
AdamWParams step_params(int64_t t) {
  const kernels::WarmupCosineSchedule sched{.peak_lr = 1e-2, .min_lr = 1e-3, .warmup_steps = 2, .total_steps = 5};
  return AdamWParams{.lr = sched.lr(t), .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1, .step = t,
                     .grad_scale = 0.75 / 8.0};
}

void check_adamw_step(const AdamWParams& hp, const std::vector<float>& grad, const std::vector<float>& p0,
                      const std::vector<float>& m0, const std::vector<float>& v0, const std::vector<float>& p1,
                      const std::vector<float>& m1, const std::vector<float>& v1, const std::vector<float>& copy,
                      DType copy_type, const std::string& what) {
  const size_t n = grad.size();
  std::vector<double> ref_p(n), ref_m(n), ref_v(n), bound_p(n), bound_m(n), bound_v(n);
  const double u = test::kU32, slack = test::subnormal_slack(DType::kF32);
  const double t = static_cast<double>(hp.step);
  const double c = hp.lr / (1.0 - std::pow(hp.beta1, t)), bc2 = 1.0 - std::pow(hp.beta2, t);
  for (size_t i = 0; i < n; ++i) {
    const AdamWState r = kernels::adamw_reference(hp, grad[i], AdamWState{p0[i], m0[i], v0[i]});
    ref_p[i] = r.param;
    ref_m[i] = r.exp_avg;
    ref_v[i] = r.exp_avg_sq;
    const double g = double(grad[i]) * hp.grad_scale;
    const double big_m = hp.beta1 * std::fabs(m0[i]) + (1.0 - hp.beta1) * std::fabs(g);
    const double d = std::sqrt(r.exp_avg_sq / bc2) + hp.eps;
    const double p_d = double(p0[i]) * (1.0 - hp.lr * hp.weight_decay);
    bound_m[i] = 1.01 * u * (3 * hp.beta1 * std::fabs(m0[i]) + 5 * (1.0 - hp.beta1) * std::fabs(g)) + slack;
    bound_v[i] = 1.01 * u * 8 * r.exp_avg_sq + slack;
    bound_p[i] = 1.01 * u * (2 * std::fabs(p_d) + 19 * c * big_m / d + std::fabs(r.param)) + slack;
  }
  test::expect_within(m1, ref_m, [&](size_t i) { return bound_m[i]; }, what + " exp_avg");
  test::expect_within(v1, ref_v, [&](size_t i) { return bound_v[i]; }, what + " exp_avg_sq");
  test::expect_within(p1, ref_p, [&](size_t i) { return bound_p[i]; }, what + " param");
  int bad = 0;
  for (size_t i = 0; i < n; ++i)
    if (copy[i] != round_to(copy_type, p1[i]) && ++bad <= 3)
      ADD_FAILURE() << what << " copy element " << i << ": " << copy[i] << " != " << round_to(copy_type, p1[i]);
}

// --- AdamW ------------------------------------------------------------------------------------------

TEST(Optimizer, AdamWMatchesDoubleReferenceOverFiveSteps) {
  Device dev(load_chip("h100"));
  // One element, odd, a tile plus one, and more tiles than the persistent grid has blocks (264 on
  // h100) ending in a partial tile.
  struct Case {
    int64_t n;
    DType copy;
  };
  const Case cases[] = {{1, DType::kBF16},
                        {7, DType::kF16},
                        {kernels::kAdamWTileElems + 1, DType::kBF16},
                        {int64_t{kernels::kAdamWTileElems} * 301 + 123, DType::kBF16},
                        {int64_t{kernels::kAdamWTileElems} * 3 + 5, DType::kF16}};
  uint64_t seed = 9100;
  for (const Case& cs : cases) {
    const auto n = static_cast<size_t>(cs.n);
    std::vector<float> p = test::random_values(n, DType::kF32, ++seed, -1.0f, 1.0f);
    std::vector<float> m(n, 0.0f), v(n, 0.0f);
    AdamWBuffers b(dev, cs.n, cs.copy, p);
    for (int64_t t = 1; t <= 5; ++t) {
      const std::vector<float> g = step_grads(n, ++seed);
      dev.upload(b.grad, g);
      const AdamWParams hp = step_params(t);
      b.step(dev, hp);
      const std::vector<float> p1 = dev.download(b.param), m1 = dev.download(b.exp_avg),
                               v1 = dev.download(b.exp_avg_sq), copy = dev.download(b.copy);
      check_adamw_step(hp, g, p, m, v, p1, m1, v1, copy, cs.copy,
                       fmt::format("[{}] fp32->{} t = {}", cs.n, dtype_name(cs.copy), t));
      p = p1;
      m = m1;
      v = v1;
    }
  }
}

TEST(Optimizer, AdamWReferenceFollowsTorchAtStepOne) {
  // At t = 1 from zero moments, m_hat = g and v_hat = g^2, so the update is lr * g / (|g| + eps):
  // torch.optim.AdamW's first step moves every weight by about lr against its gradient's sign,
  // after the decoupled decay.
  const AdamWParams hp{.lr = 0.1, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.5, .step = 1};
  const AdamWState s = kernels::adamw_reference(hp, 2.0, AdamWState{1.0, 0.0, 0.0});
  EXPECT_NEAR(s.exp_avg, 0.2, 1e-15);
  EXPECT_NEAR(s.exp_avg_sq, 0.004, 1e-15);
  EXPECT_NEAR(s.param, 1.0 * (1 - 0.05) - 0.1 * 2.0 / (2.0 + 1e-8), 1e-15);
  // grad_scale multiplies the gradient before anything else.
  const AdamWState h = kernels::adamw_reference(AdamWParams{.step = 3, .grad_scale = 0.5}, 4.0, AdamWState{1, 0.1, 0.2});
  const AdamWState w = kernels::adamw_reference(AdamWParams{.step = 3}, 2.0, AdamWState{1, 0.1, 0.2});
  EXPECT_EQ(h.param, w.param);
  EXPECT_EQ(h.exp_avg_sq, w.exp_avg_sq);
}

// --- global norm and fill ----------------------------------------------------------------------------

TEST(Optimizer, GradNormMatchesDoubleSumOverMixedBuffers) {
  Device dev(load_chip("h100"));
  // A single element, sizes around the tile, a bf16 and an fp16 gradient, and one large enough to
  // get several blocks of the persistent grid.
  struct Grad {
    int64_t n;
    DType t;
  };
  const Grad specs[] = {{1, DType::kF32},     {7, DType::kF32},     {8191, DType::kF32},
                        {8192, DType::kBF16}, {8193, DType::kF32},  {3 * 8192 + 5, DType::kF16},
                        {1000003, DType::kF32}};
  std::vector<DeviceBuffer> owned;
  std::vector<Buffer> grads;
  std::vector<double> ref;
  double total = 0;
  int64_t tiles = 0;
  uint64_t seed = 9200;
  for (const Grad& s : specs) {
    const std::vector<float> x = test::random_values(static_cast<size_t>(s.n), s.t, ++seed, -3.0f, 3.0f);
    owned.push_back(dev.alloc_owned(s.t, s.n, fmt::format("g{}", owned.size())));
    dev.upload(owned.back(), x);
    grads.push_back(owned.back());
    double sum = 0;
    for (float v : x) sum += double(v) * double(v);
    ref.push_back(sum);
    total += sum;
    tiles += (s.n + kernels::kNormTileElems - 1) / kernels::kNormTileElems;
  }
  const kernels::GradNorm gn = kernels::grad_norm(dev, grads);
  ASSERT_TRUE(gn.has_values);
  const double rel = 1.01 * test::kU32 * double(kernels::kNormTileElems + 2 * tiles + int64_t(grads.size()) + 1);
  ASSERT_EQ(gn.buffer_sum_squares.size(), grads.size());
  for (size_t i = 0; i < grads.size(); ++i)
    EXPECT_NEAR(gn.buffer_sum_squares[i], ref[i], rel * ref[i]) << "buffer " << i << " [" << specs[i].n << "]";
  EXPECT_NEAR(gn.sum_squares, total, rel * total);
  EXPECT_EQ(gn.norm, std::sqrt(gn.sum_squares));
  EXPECT_TRUE(gn.finite());
  EXPECT_EQ(gn.first_nonfinite(), -1);
  EXPECT_EQ(gn.buffer_nonfinite, std::vector<int64_t>(grads.size(), 0));
  EXPECT_GT(gn.time_s, 0.0);
  // Exact: with every element 1 (every partial sum an integer below 2^24), each buffer's sum of
  // squares is its element count, so a missed or doubled element or tile shows.
  int64_t elements = 0;
  for (const Buffer& g : grads) {
    kernels::fill(dev, g, 1.0f);
    elements += g.numel;
  }
  const kernels::GradNorm ones = kernels::grad_norm(dev, grads);
  for (size_t i = 0; i < grads.size(); ++i) EXPECT_EQ(ones.buffer_sum_squares[i], float(specs[i].n)) << "buffer " << i;
  EXPECT_EQ(ones.sum_squares, float(elements));
}

TEST(Optimizer, GradNormNamesNonFiniteBuffers) {
  Device dev(load_chip("h100"));
  const int64_t sizes[] = {5, 8193, 100, 20000, 1};
  std::vector<DeviceBuffer> owned;
  std::vector<Buffer> grads;
  std::vector<std::vector<float>> x;
  for (int64_t n : sizes) {
    x.push_back(test::random_values(static_cast<size_t>(n), DType::kF32, 9300 + owned.size()));
    owned.push_back(dev.alloc_owned(DType::kF32, n, fmt::format("g{}", owned.size())));
    grads.push_back(owned.back());
  }
  auto run = [&] {
    for (size_t i = 0; i < grads.size(); ++i) dev.upload(grads[i], x[i]);
    return kernels::grad_norm(dev, grads);
  };
  // NaN in the partial tile of buffer 1; +inf and -inf in buffer 3's second tile.
  x[1][8192] = kNaN;
  x[3][8200] = kInf;
  x[3][8201] = -kInf;
  kernels::GradNorm gn = run();
  EXPECT_EQ(gn.buffer_nonfinite, (std::vector<int64_t>{0, 1, 0, 2, 0}));
  EXPECT_EQ(gn.nonfinite, 3);
  EXPECT_FALSE(gn.finite());
  EXPECT_EQ(gn.first_nonfinite(), 1);
  EXPECT_TRUE(std::isnan(gn.sum_squares));  // NaN propagates through the sum
  EXPECT_TRUE(std::isnan(gn.buffer_sum_squares[1]));
  EXPECT_EQ(gn.buffer_sum_squares[3], kInf);
  EXPECT_TRUE(std::isfinite(gn.buffer_sum_squares[0]));
  // Only an inf, in the one-element buffer: named, and the total is inf.
  x[1][8192] = 0.5f;
  x[3][8200] = x[3][8201] = 0.25f;
  x[4][0] = -kInf;
  gn = run();
  EXPECT_EQ(gn.first_nonfinite(), 4);
  EXPECT_EQ(gn.nonfinite, 1);
  EXPECT_EQ(gn.sum_squares, kInf);
  // Finite values whose squares overflow fp32: the sum is inf but nothing is non-finite.
  x[4][0] = 0.0f;
  x[2][3] = 1e30f;
  gn = run();
  EXPECT_TRUE(gn.finite());
  EXPECT_EQ(gn.buffer_sum_squares[2], kInf);
  EXPECT_EQ(gn.sum_squares, kInf);
}

TEST(Optimizer, FillWritesEveryElement) {
  Device dev(load_chip("a100-80g"));
  for (DType t : test::kFloatTypes)
    for (int64_t n : {int64_t{1}, int64_t{kernels::kNormTileElems} + 1, int64_t{kernels::kNormTileElems} * 250 + 3}) {
      DeviceBuffer b = dev.alloc_owned(t, n, "g");
      dev.upload(b, test::random_values(static_cast<size_t>(n), t, 9400));
      kernels::fill(dev, b, 0.0f);
      std::vector<float> got = dev.download(b);
      for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], 0.0f) << dtype_name(t) << " [" << n << "] " << i;
      kernels::fill(dev, b, 1.0f / 3.0f);
      got = dev.download(b);
      for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], round_to(t, 1.0f / 3.0f)) << dtype_name(t) << " " << i;
    }
}

// --- determinism and timing --------------------------------------------------------------------------

TEST(Optimizer, BitIdenticalForAnyHostThreadCount) {
  const int64_t n = int64_t{kernels::kAdamWTileElems} * 700 + 77;
  const int64_t sizes[] = {1, 8193, 300007, 1234567};
  auto run = [&](int threads) {
    Device dev(load_chip("h100"), ExecMode::kFunctional, threads);
    AdamWBuffers b(dev, n, DType::kBF16, test::random_values(static_cast<size_t>(n), DType::kF32, 9500));
    for (int64_t t = 1; t <= 3; ++t) {
      dev.upload(b.grad, step_grads(static_cast<size_t>(n), 9500 + static_cast<uint64_t>(t)));
      b.step(dev, step_params(t));
    }
    std::vector<DeviceBuffer> owned;
    std::vector<Buffer> grads;
    for (int64_t s : sizes) {
      owned.push_back(dev.alloc_owned(DType::kF32, s, "g"));
      dev.upload(owned.back(), test::random_values(static_cast<size_t>(s), DType::kF32, 9600 + owned.size()));
      grads.push_back(owned.back());
    }
    const kernels::GradNorm gn = kernels::grad_norm(dev, grads);
    std::vector<float> all = gn.buffer_sum_squares;
    all.push_back(gn.sum_squares);
    for (const Buffer* x : {&b.param.get(), &b.exp_avg.get(), &b.exp_avg_sq.get(), &b.copy.get()}) {
      const std::vector<float> v = dev.download(*x);
      all.insert(all.end(), v.begin(), v.end());
    }
    return all;
  };
  const std::vector<float> one = run(1), three = run(3);
  ASSERT_EQ(one.size(), three.size());
  EXPECT_EQ(std::memcmp(one.data(), three.data(), one.size() * sizeof(float)), 0);
}

TEST(Optimizer, TimingOnlyAdamWIsHbmBound) {
  const ChipSpec chip = load_chip("h100");
  Device dev(chip, ExecMode::kTimingOnly);
  auto time_for = [&](int64_t n) {
    DeviceBuffer g = dev.alloc_owned(DType::kF32, n, "grad"), p = dev.alloc_owned(DType::kF32, n, "param"),
                 m = dev.alloc_owned(DType::kF32, n, "exp_avg"), v = dev.alloc_owned(DType::kF32, n, "exp_avg_sq"),
                 c = dev.alloc_owned(DType::kBF16, n, "copy");
    const KernelTiming t = kernels::adamw(dev, AdamWParams{}, g, p, m, v, c);
    EXPECT_GT(t.time_s, 0.0);
    return t.time_s;
  };
  const int64_t n = int64_t{1} << 26;
  const double small = time_for(n / 4), large = time_for(n);
  // Bytes per parameter: grad, param, exp_avg, exp_avg_sq read (4 x 4); param, moments (3 x 4) and
  // the bf16 copy (2) written.
  const double bound_s = double(n) * (16 + 14) / chip.hbm_bandwidth.value;
  EXPECT_GE(large, bound_s) << "faster than HBM allows";
  EXPECT_LE(large, 2 * bound_s);
  EXPECT_GT(large / small, 3.0);
  EXPECT_LT(large / small, 5.0);
}

TEST(Optimizer, TimingOnlyNormAndFillRun) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  DeviceBuffer a = dev.alloc_owned(DType::kF32, int64_t{1} << 26, "a"), b = dev.alloc_owned(DType::kBF16, 4099, "b");
  const kernels::GradNorm gn = kernels::grad_norm(dev, {a, b});
  EXPECT_FALSE(gn.has_values);
  EXPECT_GT(gn.time_s, 0.0);
  EXPECT_GT(kernels::fill(dev, a, 0.0f).time_s, 0.0);
}

// --- host-side helpers -------------------------------------------------------------------------------

TEST(Optimizer, WarmupCosineScheduleEdges) {
  const kernels::WarmupCosineSchedule s{.peak_lr = 1e-3, .min_lr = 1e-4, .warmup_steps = 10, .total_steps = 110};
  EXPECT_DOUBLE_EQ(s.lr(1), 1e-4);  // 1/10 of the way up from 0
  EXPECT_DOUBLE_EQ(s.lr(5), 5e-4);
  EXPECT_EQ(s.lr(10), 1e-3);        // the peak at the end of the warmup
  EXPECT_NEAR(s.lr(60), 5.5e-4, 1e-15);  // halfway through the decay: the mean of peak and min
  EXPECT_EQ(s.lr(110), 1e-4);       // r = 1: exactly min_lr
  EXPECT_EQ(s.lr(111), 1e-4);
  EXPECT_EQ(s.lr(1000000), 1e-4);
  for (int64_t t = 10; t < 110; ++t) EXPECT_GE(s.lr(t), s.lr(t + 1)) << t;
  // No warmup: the cosine starts at t = 1, just below the peak.
  const kernels::WarmupCosineSchedule cold{.peak_lr = 1.0, .min_lr = 0.0, .warmup_steps = 0, .total_steps = 100};
  EXPECT_NEAR(cold.lr(1), 0.5 * (1 + std::cos(std::numbers::pi / 100)), 1e-15);
  EXPECT_EQ(cold.lr(100), 0.0);
  // Warmup over the whole run: no decay, then min_lr.
  const kernels::WarmupCosineSchedule flat{.peak_lr = 2.0, .min_lr = 0.5, .warmup_steps = 4, .total_steps = 4};
  EXPECT_EQ(flat.lr(4), 2.0);
  EXPECT_EQ(flat.lr(5), 0.5);
  // A one-step run without warmup is at min_lr at once.
  EXPECT_EQ((kernels::WarmupCosineSchedule{.peak_lr = 1.0, .min_lr = 0.25, .total_steps = 1}.lr(1)), 0.25);
}

TEST(Optimizer, WarmupCosineScheduleRejectsInvalidSettings) {
  const kernels::WarmupCosineSchedule ok{.peak_lr = 1.0, .min_lr = 0.1, .warmup_steps = 5, .total_steps = 10};
  test::expect_error([&] { ok.lr(0); }, {"lr schedule", "step t = 0", ">= 1"});
  auto bad = ok;
  bad.warmup_steps = 11;
  test::expect_error([&] { bad.lr(1); }, {"warmup_steps = 11", "[0, total_steps = 10]"});
  bad = ok;
  bad.min_lr = 2.0;
  test::expect_error([&] { bad.lr(1); }, {"min_lr = 2", "[0, peak_lr = 1]"});
  bad = ok;
  bad.total_steps = 0;
  bad.warmup_steps = 0;
  test::expect_error([&] { bad.lr(1); }, {"total_steps = 0", ">= 1"});
  bad = ok;
  bad.peak_lr = -1.0;
  test::expect_error([&] { bad.lr(1); }, {"peak_lr = -1", ">= 0"});
}

TEST(Optimizer, ClipCoefficientAsTorch) {
  EXPECT_DOUBLE_EQ(kernels::clip_coefficient(2.0, 1.0), 1.0 / (2.0 + 1e-6));
  EXPECT_EQ(kernels::clip_coefficient(0.5, 1.0), 1.0);  // below max_norm: unchanged
  EXPECT_EQ(kernels::clip_coefficient(0.0, 1.0), 1.0);
  EXPECT_EQ(kernels::clip_coefficient(5.0, 0.0), 1.0);  // clipping off
  EXPECT_EQ(kernels::clip_coefficient(kInf, 1.0), 0.0);
  test::expect_error([] { kernels::clip_coefficient(kNaN, 1.0); }, {"clip_coefficient", "total_norm = nan"});
  test::expect_error([] { kernels::clip_coefficient(-1.0, 1.0); }, {"total_norm = -1"});
}

TEST(Optimizer, LossScalerBacksOffAndGrows) {
  kernels::LossScaler d;  // torch.amp.GradScaler's defaults
  EXPECT_EQ(d.scale(), 65536.0f);
  kernels::LossScaler s(kernels::LossScalerConfig{.init_scale = 1024, .growth_interval = 3});
  EXPECT_FALSE(s.update(true));  // overflow: skip, halve
  EXPECT_EQ(s.scale(), 512.0f);
  EXPECT_EQ(s.skipped_steps(), 1);
  EXPECT_TRUE(s.update(false));
  EXPECT_TRUE(s.update(false));
  EXPECT_EQ(s.growth_tracker(), 2);
  EXPECT_FALSE(s.update(true));  // an overflow resets the count of finite steps
  EXPECT_EQ(s.scale(), 256.0f);
  EXPECT_EQ(s.growth_tracker(), 0);
  for (int i = 0; i < 2; ++i) EXPECT_TRUE(s.update(false));
  EXPECT_EQ(s.scale(), 256.0f);
  EXPECT_TRUE(s.update(false));  // the third finite step in a row: grows
  EXPECT_EQ(s.scale(), 512.0f);
  EXPECT_EQ(s.growth_tracker(), 0);
  EXPECT_EQ(s.skipped_steps(), 2);
  // Growth past fp32's range is refused (the scale stays), and the count restarts.
  kernels::LossScaler top(kernels::LossScalerConfig{.init_scale = std::ldexp(1.0, 127), .growth_interval = 1});
  EXPECT_TRUE(top.update(false));
  EXPECT_EQ(top.scale(), std::ldexp(1.0f, 127));
  EXPECT_EQ(top.growth_tracker(), 0);
  // Backoff below fp32's smallest subnormal reaches 0 (as in PyTorch, nothing stops it).
  kernels::LossScaler bottom(kernels::LossScalerConfig{.init_scale = std::ldexp(1.0, -149)});
  bottom.update(true);
  EXPECT_EQ(bottom.scale(), 0.0f);
}

TEST(Optimizer, LossScalerSkipsStepOnFp16Overflow) {
  // An fp16 gradient that overflowed to inf is counted, and the scaler skips that step.
  Device dev(load_chip("h100"));
  std::vector<float> x = test::random_values(3000, DType::kF16, 9700);
  x[2999] = kInf;
  DeviceBuffer g = dev.alloc_owned(DType::kF16, 3000, "g16");
  dev.upload(g, x);
  kernels::LossScaler s;
  const kernels::GradNorm gn = kernels::grad_norm(dev, {g});
  EXPECT_FALSE(s.update(!gn.finite()));
  EXPECT_EQ(s.scale(), 32768.0f);
}

TEST(Optimizer, LossScalerRejectsInvalidSettings) {
  using C = kernels::LossScalerConfig;
  test::expect_error([] { kernels::LossScaler(C{.init_scale = 0}); }, {"loss scaler", "init_scale = 0"});
  test::expect_error([] { kernels::LossScaler(C{.init_scale = 1e39}); }, {"init_scale", "finite in fp32"});
  test::expect_error([] { kernels::LossScaler(C{.growth_factor = 1.0}); }, {"growth_factor = 1", "> 1"});
  test::expect_error([] { kernels::LossScaler(C{.backoff_factor = 1.0}); }, {"backoff_factor = 1", "(0, 1)"});
  test::expect_error([] { kernels::LossScaler(C{.backoff_factor = 0.0}); }, {"backoff_factor = 0"});
  test::expect_error([] { kernels::LossScaler(C{.growth_interval = 0}); }, {"growth_interval = 0", ">= 1"});
}

// --- invalid inputs ----------------------------------------------------------------------------------

struct OptimizerBadInputs : ::testing::Test {
  Device dev{load_chip("h100")};
  DeviceBuffer g = dev.alloc_owned(DType::kF32, 100, "g"), p = dev.alloc_owned(DType::kF32, 100, "p"),
               m = dev.alloc_owned(DType::kF32, 100, "m"), v = dev.alloc_owned(DType::kF32, 100, "v"),
               c = dev.alloc_owned(DType::kBF16, 100, "c");
  void run(const AdamWParams& hp) { kernels::adamw(dev, hp, g, p, m, v, c); }
};

TEST_F(OptimizerBadInputs, AdamWRejectsMismatchedSizes) {
  DeviceBuffer m2 = dev.alloc_owned(DType::kF32, 101, "m2");
  test::expect_error([&] { kernels::adamw(dev, AdamWParams{}, g, p, m2, v, c); },
                     {"adamw", "exp_avg 'm2'", "101 elements", "[100] of param 'p'", "needs 100"});
  DeviceBuffer c2 = dev.alloc_owned(DType::kBF16, 99, "c2");
  test::expect_error([&] { kernels::adamw(dev, AdamWParams{}, g, p, m, v, c2); }, {"param_copy 'c2'", "99 elements"});
}

TEST_F(OptimizerBadInputs, AdamWRejectsWrongDtypes) {
  DeviceBuffer g16 = dev.alloc_owned(DType::kBF16, 100, "g16");
  test::expect_error([&] { kernels::adamw(dev, AdamWParams{}, g16, p, m, v, c); }, {"adamw", "grad 'g16' is bf16", "valid: fp32"});
  DeviceBuffer c32 = dev.alloc_owned(DType::kF32, 100, "c32");
  test::expect_error([&] { kernels::adamw(dev, AdamWParams{}, g, p, m, v, c32); },
                     {"param_copy 'c32' is fp32", "valid: bf16, fp16"});
  test::expect_error([&] { kernels::adamw(dev, AdamWParams{}, g, c, m, v, c); }, {"param 'c' is bf16", "valid: fp32"});
}

TEST_F(OptimizerBadInputs, AdamWRejectsNegativeLr) {
  test::expect_error([&] { run(AdamWParams{.lr = -1e-3}); }, {"adamw", "lr = -0.001", ">= 0"});
}

TEST_F(OptimizerBadInputs, AdamWRejectsBetaOutsideZeroOne) {
  test::expect_error([&] { run(AdamWParams{.beta1 = 1.0}); }, {"adamw", "beta1 = 1", "[0, 1)"});
  test::expect_error([&] { run(AdamWParams{.beta2 = -0.5}); }, {"beta2 = -0.5", "[0, 1)"});
}

TEST_F(OptimizerBadInputs, AdamWRejectsNonPositiveEps) {
  test::expect_error([&] { run(AdamWParams{.eps = 0.0}); }, {"adamw", "eps = 0", "> 0"});
  test::expect_error([&] { run(AdamWParams{.eps = -1e-8}); }, {"eps = -1e-08"});
}

TEST_F(OptimizerBadInputs, AdamWRejectsStepBelowOne) {
  test::expect_error([&] { run(AdamWParams{.step = 0}); }, {"adamw", "step t = 0", ">= 1"});
}

TEST_F(OptimizerBadInputs, AdamWRejectsNegativeDecayAndBadGradScale) {
  test::expect_error([&] { run(AdamWParams{.weight_decay = -0.1}); }, {"weight_decay = -0.1", ">= 0"});
  test::expect_error([&] { run(AdamWParams{.grad_scale = 0.0}); }, {"grad_scale = 0", "> 0 and finite"});
  test::expect_error([&] { run(AdamWParams{.grad_scale = kInf}); }, {"grad_scale = inf"});
  test::expect_error([&] { run(AdamWParams{.grad_scale = 1e300}); }, {"grad_scale = 1e+300", "does not fit fp32"});
}

TEST_F(OptimizerBadInputs, GradNormRejectsEmptyListWrongDtypesAndStats) {
  test::expect_error([&] { kernels::grad_norm(dev, {}); }, {"grad_sum_squares", "empty"});
  DeviceBuffer g8 = dev.alloc_owned(DType::kF8E4M3, 100, "g8");
  test::expect_error([&] { kernels::grad_norm(dev, {g, g8}); },
                     {"grad_sum_squares", "gradient 'g8' is fp8e4m3", "valid: fp32, bf16, fp16"});
  DeviceBuffer stats = dev.alloc_owned(DType::kF32, 5, "stats");
  test::expect_error([&] { kernels::make_grad_sum_squares(dev.chip(), {g, p}, stats); },
                     {"stats 'stats'", "5 elements", "needs 6"});
  test::expect_error([&] { kernels::make_grad_sum_squares(dev.chip(), {g}, c); }, {"stats 'c' is bf16"});
}

}  // namespace
}  // namespace ppu
