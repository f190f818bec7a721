// int8 GEMM and W8A8 GEMM (kernels/Gemm, kernels/Quantize) against integer references.
//
// Metrics and tolerances:
// - int8 GEMM with int32 C: bit-identical to int64 sums of the same int8 values (integer addition
//   is exact; K stays below the int32 overflow bound).
// - W8A8 into bf16/fp32: bit-identical to gemm_w8a8_reference (int64 sums, then the kernel's fp32
//   epilogue fp32(sum) * s_x * s_w in the same order), rounded into C the same way - with and
//   without split-K, including K > 1040, past which an fp32 accumulator of such products rounds.
// - W8A8 against the bf16 GEMM of the unquantised values: per-token and per-channel symmetric
//   quantisation errs by at most s/2 per element, so |y_q - y| <= sum_p (|x_p| e_w + |w_p| e_x +
//   e_x e_w) with e_x = s_x / 2 and e_w = s_w / 2, plus the bf16 rounding of both results; the test
//   asserts that bound per element and a relative RMS error below 2% (it is about 0.5% here).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "TestUtil.hpp"
#include "kernels/Gemm.hpp"
#include "kernels/Quantize.hpp"

namespace ppu {
namespace {

using kernels::GemmConfig;
using kernels::GemmShape;

std::vector<int8_t> random_i8(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> d(-128, 127);
  std::vector<int8_t> v(n);
  for (auto& x : v) x = static_cast<int8_t>(d(rng));
  return v;
}

std::vector<float> as_float(const std::vector<int8_t>& v) { return {v.begin(), v.end()}; }

struct Case {
  int64_t m, n, k, batch;
  bool ta, tb;
};

// int8 x int8 -> int32 C: exact.
TEST(GemmInt8, Int32OutputIsExactOnRaggedShapesAndLongK) {
  const Case cases[] = {{1, 1, 1, 1, false, false},     {7, 13, 5, 1, false, true},    {33, 17, 1100, 1, false, true},
                        {65, 129, 257, 1, true, false},  {5, 3, 3001, 2, false, false}, {130, 70, 1041, 1, true, true}};
  for (const Case& c : cases) {
    GemmShape s{c.m, c.n, c.k, c.batch, c.ta, c.tb};
    Device dev(load_chip("h100"));
    const auto av = random_i8(static_cast<size_t>(s.batch * s.m * s.k), 1);
    const auto bv = random_i8(static_cast<size_t>(s.batch * s.k * s.n), 2);
    Buffer a = dev.alloc(DType::kI8, s.batch * s.m * s.k, "A");
    Buffer b = dev.alloc(DType::kI8, s.batch * s.k * s.n, "B");
    Buffer out = dev.alloc(DType::kI32, s.batch * s.m * s.n, "C");
    dev.upload(a, as_float(av));
    dev.upload(b, as_float(bv));
    kernels::gemm(dev, s, a, b, out);
    const auto* got = static_cast<const int32_t*>(out.data);
    const std::vector<float> ones(static_cast<size_t>(s.batch * std::max(s.m, s.n)), 1.0f);
    int64_t bad = 0;
    for (int64_t bt = 0; bt < s.batch; ++bt)
      for (int64_t i = 0; i < s.m; ++i)
        for (int64_t j = 0; j < s.n; ++j) {
          int64_t ref = 0;
          for (int64_t p = 0; p < s.k; ++p)
            ref += int64_t{av[kernels::gemm_a_index(s, bt, i, p)]} * int64_t{bv[kernels::gemm_b_index(s, bt, p, j)]};
          bad += got[bt * s.m * s.n + i * s.n + j] != ref;
        }
    EXPECT_EQ(bad, 0) << c.m << "x" << c.n << "x" << c.k << " batch " << c.batch << " ta " << c.ta << " tb " << c.tb;
  }
}

// W8A8 on the device vs the integer reference, bit for bit. `cfg` forces a tile shape (split-K).
void expect_w8a8_exact(const GemmShape& s, DType out_t, const GemmConfig* cfg, uint64_t seed) {
  Device dev(load_chip("h100"));
  const auto av = random_i8(static_cast<size_t>(s.batch * s.m * s.k), seed);
  const auto bv = random_i8(static_cast<size_t>(s.batch * s.k * s.n), seed + 1);
  const auto sx = test::random_values(static_cast<size_t>(s.batch * s.m), DType::kF32, seed + 2, 1e-4f, 1e-2f);
  const auto sw = test::random_values(static_cast<size_t>(s.batch * s.n), DType::kF32, seed + 3, 1e-4f, 1e-2f);
  Buffer a = dev.alloc(DType::kI8, s.batch * s.m * s.k, "A");
  Buffer b = dev.alloc(DType::kI8, s.batch * s.k * s.n, "B");
  Buffer bx = dev.alloc(DType::kF32, s.batch * s.m, "s_x");
  Buffer bw = dev.alloc(DType::kF32, s.batch * s.n, "s_w");
  Buffer c = dev.alloc(out_t, s.batch * s.m * s.n, "C");
  dev.upload(a, as_float(av));
  dev.upload(b, as_float(bv));
  dev.upload(bx, sx);
  dev.upload(bw, sw);
  kernels::gemm_w8a8(dev, s, a, bx, b, bw, c, nullptr, cfg);
  const auto got = dev.download(c);
  std::vector<float> ref;
  kernels::gemm_w8a8_reference(s, av, sx, bv, sw, ref);
  int64_t bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) bad += f32_bits(got[i]) != f32_bits(round_to(out_t, ref[i]));
  EXPECT_EQ(bad, 0) << s.m << "x" << s.n << "x" << s.k << " batch " << s.batch << " -> " << dtype_name(out_t)
                    << (cfg ? " config " + cfg->describe() : std::string());
}

TEST(GemmW8A8, BitIdenticalToTheIntegerReference) {
  const Case cases[] = {{1, 1, 1, 1, false, true},       {3, 37, 100, 1, false, true}, {17, 31, 1100, 1, false, true},
                        {129, 67, 1041, 1, false, false}, {64, 256, 2048, 1, false, true}, {5, 9, 300, 2, true, true}};
  uint64_t seed = 10;
  for (const Case& c : cases)
    for (DType out_t : {DType::kBF16, DType::kF32})
      expect_w8a8_exact(GemmShape{c.m, c.n, c.k, c.batch, c.ta, c.tb}, out_t, nullptr, seed++);
}

TEST(GemmW8A8, SplitKPartsAddExactly) {
  // A decode-shaped problem with K split over 3 and 5 parts (int32 workspace, int32 adds, then the
  // epilogue), and an alpha.
  for (int split : {3, 5}) {
    GemmConfig cfg{16, 64, 128, 2, 8, split};
    expect_w8a8_exact(GemmShape{4, 130, 1700, 1, false, true}, DType::kBF16, &cfg, 40 + split);
    GemmShape scaled{2, 70, 1300, 1, false, true};
    scaled.alpha = 0.5f;
    expect_w8a8_exact(scaled, DType::kF32, &cfg, 50 + split);
  }
}

// The whole W8A8 path from bf16 values: quantise x per token and W per output channel on the
// device, multiply, and compare with the bf16 GEMM of the same values.
TEST(GemmW8A8, CloseToTheBf16GemmWithinTheQuantisationBound) {
  const int64_t M = 9, N = 50, K = 1200;
  Device dev(load_chip("zhenwu-810e"));
  const auto xv = test::random_values(static_cast<size_t>(M * K), DType::kBF16, 7);
  const auto wv = test::random_values(static_cast<size_t>(N * K), DType::kBF16, 8, -0.05f, 0.05f);
  Buffer x = dev.alloc(DType::kBF16, M * K, "x"), w = dev.alloc(DType::kBF16, N * K, "W");
  dev.upload(x, xv);
  dev.upload(w, wv);
  Buffer xq = dev.alloc(DType::kI8, M * K, "xq"), wq = dev.alloc(DType::kI8, N * K, "Wq");
  Buffer sx = dev.alloc(DType::kF32, M, "s_x"), sw = dev.alloc(DType::kF32, N, "s_w");
  kernels::quantize_rows_int8(dev, x, xq, sx, M, K);
  kernels::quantize_rows_int8(dev, w, wq, sw, N, K);
  const GemmShape s{M, N, K, 1, false, true};
  Buffer yq = dev.alloc(DType::kBF16, M * N, "y_w8a8"), y = dev.alloc(DType::kBF16, M * N, "y_bf16");
  kernels::gemm_w8a8(dev, s, xq, sx, wq, sw, yq);
  kernels::gemm(dev, s, x, w, y);
  const auto got = dev.download(yq), want = dev.download(y), sxv = dev.download(sx), swv = dev.download(sw);
  std::vector<double> exact(static_cast<size_t>(M * N));
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double ref = 0, bound = 0;
      const double ex = sxv[static_cast<size_t>(i)] / 2, ew = swv[static_cast<size_t>(j)] / 2;
      for (int64_t p = 0; p < K; ++p) {
        const double a = xv[static_cast<size_t>(i * K + p)], b = wv[static_cast<size_t>(j * K + p)];
        ref += a * b;
        bound += std::fabs(a) * ew + std::fabs(b) * ex + ex * ew;
      }
      const size_t at = static_cast<size_t>(i * N + j);
      exact[at] = ref;
      // Both results are rounded to bf16 once (2^-8 each); the bf16 GEMM also accumulates in fp32.
      const double tol = bound + 2 * std::ldexp(1.0, -8) * (std::fabs(ref) + bound) + 1e-6;
      EXPECT_LE(std::fabs(got[at] - ref), tol) << "[" << i << "," << j << "]";
    }
  const double rms_q = test::rel_rms(got, exact), rms_bf16 = test::rel_rms(want, exact);
  EXPECT_LT(rms_q, 0.02);
  EXPECT_LT(rms_bf16, rms_q) << "bf16 keeps more bits than int8";
}

TEST(GemmInt8, TimedAtTheInt8Rate) {
  // A large compute-bound GEMM: int8 time ~ bf16 time x (bf16 rate / int8 rate), each at its own
  // efficiency; the PPU's assumed INT8 peak is twice its 16-bit one.
  for (const char* name : {"h100", "a800", "zhenwu-810e"}) {
    const ChipSpec chip = load_chip(name);
    ASSERT_TRUE(chip.supports(DType::kI8)) << name;
    Device dev(chip, ExecMode::kTimingOnly);
    const GemmShape s{4096, 4096, 4096};
    Buffer a8 = dev.alloc(DType::kI8, s.m * s.k, "A"), b8 = dev.alloc(DType::kI8, s.k * s.n, "B");
    Buffer a16 = dev.alloc(DType::kBF16, s.m * s.k, "A"), b16 = dev.alloc(DType::kBF16, s.k * s.n, "B");
    Buffer c = dev.alloc(DType::kBF16, s.m * s.n, "C");
    const KernelTiming t8 = kernels::gemm(dev, s, a8, b8, c);
    const KernelTiming t16 = kernels::gemm(dev, s, a16, b16, c);
    const double rate8 = chip.matrix_flops_per_s(DType::kI8) * chip.mma_efficiency_for(DType::kI8);
    EXPECT_GE(t8.time_s, t8.useful_flops / rate8) << name << ": never faster than the sustained INT8 rate";
    EXPECT_GT(t8.useful_flops / rate8 / t8.time_s, 0.5) << name << ": a large GEMM reaches most of it";
    EXPECT_LT(t8.time_s, t16.time_s) << name;
  }
  EXPECT_DOUBLE_EQ(load_chip("zhenwu-810e").matrix_flops_per_s(DType::kI8),
                   2 * load_chip("zhenwu-810e").matrix_flops_per_s(DType::kBF16));
}

TEST(GemmInt8, BadInput) {
  ChipSpec no_int8 = load_chip("h100");
  no_int8.name = "h100-without-int8";
  no_int8.matrix_int8 = Quantity{};
  no_int8.mma_efficiency_int8 = Quantity{};
  Device dev(no_int8);
  const GemmShape s{4, 4, 4, 1, false, true};
  Buffer a = dev.alloc(DType::kI8, 16, "A"), b = dev.alloc(DType::kI8, 16, "B");
  Buffer c = dev.alloc(DType::kBF16, 16, "C"), sx = dev.alloc(DType::kF32, 4, "s_x"), sw = dev.alloc(DType::kF32, 4, "s_w");
  test::expect_error([&] { kernels::gemm(dev, s, a, b, c); },
                     {"gemm", "h100-without-int8 has no int8 matrix unit", "a100-80g", "zhenwu-810e"});
  Device h100(load_chip("h100"));
  Buffer a2 = h100.alloc(DType::kI8, 16, "A"), b2 = h100.alloc(DType::kI8, 16, "B");
  Buffer c2 = h100.alloc(DType::kBF16, 16, "C"), sx2 = h100.alloc(DType::kF32, 4, "s_x");
  Buffer sw_short = h100.alloc(DType::kF32, 3, "s_w"), sx_bf16 = h100.alloc(DType::kBF16, 4, "s_x");
  Buffer bf = h100.alloc(DType::kBF16, 16, "B"), c32 = h100.alloc(DType::kI32, 16, "C");
  test::expect_error([&] { kernels::gemm_w8a8(h100, s, a2, sx2, b2, sw_short, c2); }, {"gemm_w8a8", "s_w", "[1, 4] (batch, N)"});
  test::expect_error([&] { kernels::gemm_w8a8(h100, s, a2, sx_bf16, b2, sx2, c2); }, {"gemm_w8a8", "s_x", "bf16"});
  test::expect_error([&] { kernels::gemm(h100, s, a2, bf, c2); }, {"A is int8 but B is bf16"});
  test::expect_error([&] { kernels::gemm_w8a8(h100, s, a2, sx2, b2, sx2, c32); }, {"gemm_w8a8", "C", "int32"});
  Buffer a16 = h100.alloc(DType::kBF16, 16, "A");
  test::expect_error([&] { kernels::gemm(h100, s, a16, bf, c32); }, {"gemm", "C", "int32"});
  const GemmShape long_k{1, 1, kMmaInt8MaxK + 1, 1, false, true};
  Buffer al = h100.alloc(DType::kI8, long_k.k, "A"), bl = h100.alloc(DType::kI8, long_k.k, "B");
  test::expect_error([&] { kernels::gemm(h100, long_k, al, bl, c2.view(0, 1)); }, {"gemm", "K = 131072", "int32"});
}

}  // namespace
}  // namespace ppu
