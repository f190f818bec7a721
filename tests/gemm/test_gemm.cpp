// GEMM kernel vs a double-precision scalar reference, across dtypes, output dtypes, transposes,
// batches, odd shapes and forced tile configurations; plus every kind of bad input.
//
// Tolerance per output element: the fp32-accumulation bound (k+2) * 2^-24 * sum_p |a_ip * b_pj|,
// plus one rounding into the output dtype (unit roundoff u_out times |reference|). Inputs are
// rounded to their dtype on the host first, so the reference sees exactly what the device holds.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <string>

#include "TestUtil.hpp"
#include "kernels/Gemm.hpp"

namespace ppu {
namespace {

using kernels::GemmConfig;
using kernels::GemmShape;

struct Result {
  double max_ratio = 0;  // max over outputs of error / tolerance
  int64_t outputs = 0;
};

Result run_and_compare(const char* chip, const GemmShape& s, DType in_t, DType out_t, const GemmConfig* cfg = nullptr,
                       uint64_t seed = 1) {
  Device dev(load_chip(chip));
  const auto av = test::random_values(static_cast<size_t>(s.batch * s.m * s.k), in_t, seed);
  const auto bv = test::random_values(static_cast<size_t>(s.batch * s.k * s.n), in_t, seed + 100);
  Buffer a = dev.alloc(in_t, s.batch * s.m * s.k, "A");
  Buffer b = dev.alloc(in_t, s.batch * s.k * s.n, "B");
  Buffer c = dev.alloc(out_t, s.batch * s.m * s.n, "C");
  dev.upload(a, av);
  dev.upload(b, bv);
  kernels::gemm(dev, s, a, b, c, nullptr, cfg);
  const auto got = dev.download(c);
  std::vector<float> ref;
  kernels::gemm_reference(s, av, bv, ref);
  // |a|.|b| products for the bound, with the same indexing as the reference.
  GemmShape abs_s = s;
  std::vector<float> aa(av.size()), ba(bv.size()), mag;
  for (size_t i = 0; i < av.size(); ++i) aa[i] = std::fabs(av[i]);
  for (size_t i = 0; i < bv.size(); ++i) ba[i] = std::fabs(bv[i]);
  abs_s.alpha = std::fabs(s.alpha);
  kernels::gemm_reference(abs_s, aa, ba, mag);
  const double u_acc = std::ldexp(1.0, -24) * (static_cast<double>(s.k) + 2);
  const double u_out = test::unit_roundoff(out_t);
  Result r;
  r.outputs = static_cast<int64_t>(got.size());
  for (size_t i = 0; i < got.size(); ++i) {
    const double tol = u_acc * mag[i] * (1 + u_out) + u_out * std::fabs(ref[i]) + 1e-30;
    r.max_ratio = std::max(r.max_ratio, std::fabs(double(got[i]) - ref[i]) / tol);
  }
  return r;
}

struct Case {
  int64_t m, n, k, batch;
  bool ta, tb;
};

int64_t ceil_div_for_test(int64_t a, int64_t b) { return (a + b - 1) / b; }

TEST(Gemm, OddShapesAllTransposesBf16) {
  const Case cases[] = {{1, 1, 1, 1, false, false},   {1, 7, 13, 1, false, false}, {13, 1, 5, 1, false, false},
                        {17, 31, 65, 1, false, false}, {127, 129, 67, 1, false, false},
                        {128, 256, 64, 1, false, false}, {257, 131, 300, 1, false, false}, {5, 3, 2, 3, false, false},
                        // decode-shaped (few rows, B transposed: the dot-product path), k across chunk edges
                        {1, 37, 100, 1, false, true}, {3, 33, 64, 1, false, true}, {4, 65, 31, 2, false, true}};
  for (const Case& c : cases)
    for (int t = 0; t < 4; ++t) {
      GemmShape s{c.m, c.n, c.k, c.batch, (t & 1) != 0, (t & 2) != 0};
      const Result r = run_and_compare("h100", s, DType::kBF16, DType::kF32);
      EXPECT_LE(r.max_ratio, 1.0) << c.m << "x" << c.n << "x" << c.k << " batch " << c.batch << " ta " << s.trans_a
                                  << " tb " << s.trans_b;
    }
}

TEST(Gemm, EveryInputAndOutputDtype) {
  for (DType in_t : {DType::kBF16, DType::kF16, DType::kF8E4M3, DType::kF8E5M2})
    for (DType out_t : {DType::kF32, DType::kBF16, DType::kF16}) {
      GemmShape s{37, 53, 97, 2};
      const Result r = run_and_compare("h100", s, in_t, out_t);
      EXPECT_LE(r.max_ratio, 1.0) << dtype_name(in_t) << " -> " << dtype_name(out_t);
    }
}

TEST(Gemm, LargerProblemOnThePpu) {
  GemmShape s{512, 384, 1000};
  EXPECT_LE(run_and_compare("zhenwu-810e", s, DType::kBF16, DType::kBF16).max_ratio, 1.0);
}

TEST(Gemm, ForcedTileConfigurationsAndKTails) {
  const GemmConfig cfgs[] = {{64, 64, 64, 2, 8}, {64, 64, 64, 1, 1}, {192, 128, 64, 3, 2}, {128, 64, 128, 4, 8},
                             {256, 128, 64, 2, 8}};
  for (const auto& cfg : cfgs)
    for (bool tb : {false, true}) {
      GemmShape s{201, 150, 333, 1, false, tb};
      EXPECT_LE(run_and_compare("h100", s, DType::kBF16, DType::kF32, &cfg).max_ratio, 1.0) << cfg.describe();
    }
}

TEST(Gemm, DecodeShapedManyKStepsRunAsOneDotProductOnTheHost) {
  // A few rows times B^T over many k-steps: the executor runs a block's k-steps as one dot product
  // over whole weight rows (mma_streams_long_k), a different summation order, still within the bound.
  const GemmConfig cfg{16, 64, 64, 4, 8};
  for (int64_t m : {1, 2, 3, 4})
    for (int64_t k : {64, 1000, 1031}) {
      GemmShape s{m, 131, k, 1, false, true};
      EXPECT_LE(run_and_compare("zhenwu-810e", s, DType::kBF16, DType::kF32, &cfg).max_ratio, 1.0) << m << "x131x" << k;
    }
}

TEST(Gemm, AlphaScalesTheProduct) {
  GemmShape s{33, 65, 40};
  s.alpha = -0.375f;
  EXPECT_LE(run_and_compare("h100", s, DType::kF16, DType::kF32).max_ratio, 1.0);
}

// C of the GEMM computed on `threads` host threads from seeded bf16 inputs (`cfg`: null for the
// chosen configuration).
std::vector<float> gemm_on_threads(const GemmShape& s, const GemmConfig* cfg, DType out_t, int threads, uint64_t seed) {
  Device dev(load_chip("h100"), ExecMode::kFunctional, threads);
  Buffer a = dev.alloc(DType::kBF16, s.m * s.k, "A"), b = dev.alloc(DType::kBF16, s.k * s.n, "B"),
         c = dev.alloc(out_t, s.m * s.n, "C");
  dev.upload(a, test::random_values(static_cast<size_t>(s.m * s.k), DType::kBF16, seed));
  dev.upload(b, test::random_values(static_cast<size_t>(s.k * s.n), DType::kBF16, seed + 1));
  kernels::gemm(dev, s, a, b, c, nullptr, cfg);
  return dev.download(c);
}

TEST(Gemm, ResultsAreBitIdenticalAcrossRunsAndThreads) {
  const GemmShape s{150, 170, 190};
  const auto first = gemm_on_threads(s, nullptr, DType::kF32, 1, 5);
  for (int threads : {1, 2, 3})
    EXPECT_EQ(gemm_on_threads(s, nullptr, DType::kF32, threads, 5), first) << threads << " threads";
}

TEST(Gemm, TimingOnlyRunsWithoutDataAndScales) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  auto time_of = [&](int64_t n) {
    Buffer a = dev.alloc(DType::kBF16, n * n, "A"), b = dev.alloc(DType::kBF16, n * n, "B"),
           c = dev.alloc(DType::kBF16, n * n, "C");
    EXPECT_EQ(a.data, nullptr);
    const double t = kernels::gemm(dev, GemmShape{n, n, n}, a, b, c).time_s;
    dev.free(a);
    dev.free(b);
    dev.free(c);
    return t;
  };
  const double t1 = time_of(2048), t2 = time_of(4096);
  const ChipSpec chip = load_chip("h100");
  EXPECT_GT(t1, 2.0 * 2048.0 * 2048 * 2048 / chip.matrix_bf16.value);  // never beats the peak
  EXPECT_GT(t2, 4.0 * t1);  // 8x the work; at least half of it shows (fixed costs amortise)
  EXPECT_LT(t2, 12.0 * t1);
}

TEST(Gemm, ConfigChoiceFitsSramOnEveryChip) {
  for (const auto& name : chip_preset_names()) {
    const ChipSpec chip = load_chip(name);
    for (int64_t n : {1, 100, 4096}) {
      const auto cfg = kernels::choose_gemm_config(chip, GemmShape{n, n, n}, DType::kBF16);
      const double need = cfg.stages * (double(cfg.tile_m) + cfg.tile_n) * cfg.tile_k * 2 + cfg.tile_m * cfg.tile_n * 4.0;
      EXPECT_LE(need, chip.sram_bytes()) << name << " " << cfg.describe();
    }
  }
}

// --- split-K: K shared by several blocks per C tile, fp32 partials added in split order.
// The bound above still holds: along one output the fp32 additions are a part's k-steps and then
// the parts in order, at most k of them however K is cut.

TEST(GemmSplitK, EveryInputDtypeOddKAndKNotAMultipleOfTheSplit) {
  struct SplitCase {
    int64_t m, n, k, batch;
    int tile_k, split;
  };
  // 1001 = 15 k-steps of 64 and a tail of 41 in 4 parts (4, 4, 4, 4 steps); 333 in 6 steps over 5
  // parts; 130 in 5 steps of 32 over 2 parts (2 and 3); one part per k-step.
  const SplitCase cases[] = {{1, 37, 1001, 1, 64, 4}, {5, 70, 333, 2, 64, 5}, {3, 129, 130, 1, 32, 2},
                             {17, 33, 256, 1, 64, 4}};
  for (const SplitCase& c : cases)
    for (DType in_t : {DType::kBF16, DType::kF16, DType::kF8E4M3, DType::kF8E5M2})
      for (bool tb : {false, true}) {
        const GemmConfig cfg{16, 64, c.tile_k, 3, 8, c.split};
        GemmShape s{c.m, c.n, c.k, c.batch, false, tb};
        const Result r = run_and_compare("h100", s, in_t, DType::kF32, &cfg);
        EXPECT_LE(r.max_ratio, 1.0) << dtype_name(in_t) << " " << c.m << "x" << c.n << "x" << c.k << " "
                                    << cfg.describe();
      }
}

TEST(GemmSplitK, OutputDtypesTransposedAAndAlpha) {
  for (DType out_t : {DType::kF32, DType::kBF16, DType::kF16})
    for (bool ta : {false, true}) {
      const GemmConfig cfg{32, 64, 64, 2, 8, 3};
      GemmShape s{20, 50, 700, 1, ta, true};
      s.alpha = -0.75f;
      EXPECT_LE(run_and_compare("zhenwu-810e", s, DType::kBF16, out_t, &cfg).max_ratio, 1.0)
          << dtype_name(out_t) << " ta " << ta;
    }
}

TEST(GemmSplitK, BitIdenticalForAnyHostThreadCountAndWorkspaceFreed) {
  const GemmShape s{7, 300, 2000, 1, false, true};
  const GemmConfig cfg{16, 64, 64, 4, 8, 8};
  const auto first = gemm_on_threads(s, &cfg, DType::kBF16, 1, 15);
  for (int threads : {2, 3})
    EXPECT_EQ(gemm_on_threads(s, &cfg, DType::kBF16, threads, 15), first) << threads << " threads";
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  Buffer a = dev.alloc(DType::kBF16, s.m * s.k, "A"), b = dev.alloc(DType::kBF16, s.k * s.n, "B"),
         c = dev.alloc(DType::kBF16, s.m * s.n, "C");
  const int64_t before = dev.bytes_in_use();
  kernels::gemm(dev, s, a, b, c, nullptr, &cfg);
  EXPECT_EQ(dev.bytes_in_use(), before) << "the workspace is freed after the call";
  EXPECT_EQ(dev.peak_bytes_in_use(), before + kernels::gemm_workspace_numel(s, cfg) * 4);
}

TEST(GemmSplitK, TwoKernelsOneTimingAndTheirRecords) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  const GemmShape s{4, 256, 4096, 1, false, true};
  const GemmConfig cfg{16, 64, 128, 4, 8, 6};
  Buffer a = dev.alloc(DType::kBF16, s.m * s.k, "A"), b = dev.alloc(DType::kBF16, s.k * s.n, "B"),
         c = dev.alloc(DType::kBF16, s.m * s.n, "C");
  const KernelTiming t = kernels::gemm(dev, s, a, b, c, nullptr, &cfg);
  ASSERT_EQ(dev.records().size(), 2u);
  const OpRecord &tiles = dev.records()[0], &reduce = dev.records()[1];
  EXPECT_NE(tiles.name.find("split-K 6"), std::string::npos) << tiles.name;
  EXPECT_NE(reduce.name.find("reduce"), std::string::npos) << reduce.name;
  EXPECT_EQ(tiles.timing->blocks, 4 * 6);  // 256 / 64 tiles, 6 parts each
  EXPECT_DOUBLE_EQ(t.time_s, (tiles.end_s - tiles.start_s) + (reduce.end_s - reduce.start_s));
  EXPECT_GE(reduce.start_s, tiles.end_s);
  EXPECT_DOUBLE_EQ(t.useful_flops, 2.0 * 4 * 256 * 4096);
}

TEST(GemmSplitK, ChosenWhenTilesLeaveCoresIdleAndOnlyIfFaster) {
  // H20's batch-64 down projection of Qwen3-32B: 40 tiles of 128 columns for 78 cores.
  const ChipSpec h20 = load_chip("h20");
  const GemmShape down{64, 5120, 25600, 1, false, true};
  const GemmConfig split = kernels::choose_gemm_config(h20, down, DType::kBF16);
  const GemmConfig none = kernels::choose_gemm_config(h20, down, DType::kBF16, /*allow_split_k=*/false);
  EXPECT_GT(split.split_k, 1) << split.describe();
  EXPECT_EQ(none.split_k, 1);
  Device dev(h20, ExecMode::kTimingOnly);
  Buffer a = dev.alloc(DType::kBF16, down.m * down.k, "A"), b = dev.alloc(DType::kBF16, down.k * down.n, "B"),
         c = dev.alloc(DType::kBF16, down.m * down.n, "C");
  const double t_split = kernels::gemm(dev, down, a, b, c, nullptr, &split).time_s;
  const double t_none = kernels::gemm(dev, down, a, b, c, nullptr, &none).time_s;
  EXPECT_LT(t_split, t_none);
  // Enough tiles to fill the chip: never split. One kernel through make_gemm: never split.
  for (GemmShape sq : {GemmShape{4096, 4096, 4096}, GemmShape{2048, 8192, 1024, 2}})
    EXPECT_EQ(kernels::choose_gemm_config(h20, sq, DType::kBF16).split_k, 1);
  EXPECT_EQ(kernels::make_gemm(h20, down, a, b, c).grid,
            ceil_div_for_test(5120, none.tile_n) * ceil_div_for_test(64, none.tile_m));
}

// --- bad input: each kind gets a clear error naming the problem.
class GemmErrors : public ::testing::Test {
 protected:
  Device dev{load_chip("zhenwu-810e")};
  Buffer a = dev.alloc(DType::kBF16, 6, "A"), b = dev.alloc(DType::kBF16, 12, "B"), c = dev.alloc(DType::kF32, 8, "C");
};

TEST_F(GemmErrors, ZeroOrNegativeSizes) {
  test::expect_error([&] { kernels::gemm(dev, GemmShape{0, 4, 3}, a, b, c); }, {"gemm", "M = 0", "positive"});
  test::expect_error([&] { kernels::gemm(dev, GemmShape{2, -4, 3}, a, b, c); }, {"N = -4"});
  test::expect_error([&] { kernels::gemm(dev, GemmShape{2, 4, 3, 0}, a, b, c); }, {"batch = 0"});
}

TEST_F(GemmErrors, ShapesThatDoNotMatch) {
  test::expect_error([&] { kernels::gemm(dev, GemmShape{2, 4, 4}, a, b, c); }, {"A 'A' has 6 elements", "needs 8"});
  test::expect_error([&] { kernels::gemm(dev, GemmShape{3, 4, 2}, a, b, c); }, {"B 'B'", "needs 8"});
}

TEST_F(GemmErrors, DtypesThatDoNotWork) {
  Buffer f = dev.alloc(DType::kF32, 6, "F");
  test::expect_error([&] { kernels::gemm(dev, GemmShape{2, 4, 3}, f, b, c); }, {"'F' is fp32", "valid: bf16, fp16"});
  Buffer h = dev.alloc(DType::kF16, 12, "H");
  test::expect_error([&] { kernels::gemm(dev, GemmShape{2, 4, 3}, a, h, c); }, {"A is bf16 but B is fp16"});
  Buffer e = dev.alloc(DType::kF8E4M3, 6, "E"), e2 = dev.alloc(DType::kF8E4M3, 12, "E2");
  test::expect_error([&] { kernels::gemm(dev, GemmShape{2, 4, 3}, e, e2, c); },
                     {"zhenwu-810e has no fp8e4m3 matrix unit", "bf16, fp16"});
  Buffer o = dev.alloc(DType::kF8E5M2, 8, "O");
  test::expect_error([&] { kernels::gemm(dev, GemmShape{2, 4, 3}, a, b, o); }, {"C 'O' is fp8e5m2", "fp32, bf16, fp16"});
}

TEST_F(GemmErrors, SplitKConfigurationsAndWorkspaces) {
  Device d{load_chip("h100")};
  Buffer a2 = d.alloc(DType::kBF16, 2 * 300, "A"), b2 = d.alloc(DType::kBF16, 300 * 4, "B"),
         c2 = d.alloc(DType::kF32, 2 * 4, "C");
  const GemmShape s{2, 4, 300};  // 5 k-steps of 64
  const GemmConfig split{16, 64, 64, 2, 8, 3};
  test::expect_error([&] { (void)kernels::make_gemm(d.chip(), s, a2, b2, c2, &split); },
                     {"gemm", "split-K 3", "two kernels and a workspace", "make_gemm_kernels"});
  test::expect_error([&] { (void)kernels::make_gemm_kernels(d.chip(), s, a2, b2, c2, split, nullptr); },
                     {"gemm", "needs a workspace of 24 fp32 elements"});
  Buffer small = d.alloc(DType::kF32, 23, "W"), bf = d.alloc(DType::kBF16, 24, "Wb");
  test::expect_error([&] { (void)kernels::make_gemm_kernels(d.chip(), s, a2, b2, c2, split, &small); },
                     {"workspace 'W' has 23 elements", "[3, 1, 2, 4] (split, batch, M, N) needs 24"});
  test::expect_error([&] { (void)kernels::make_gemm_kernels(d.chip(), s, a2, b2, c2, split, &bf); },
                     {"workspace 'Wb' is bf16", "valid: fp32"});
  for (int bad : {0, 6}) {
    GemmConfig cfg = split;
    cfg.split_k = bad;
    test::expect_error([&] { kernels::gemm(d, s, a2, b2, c2, nullptr, &cfg); },
                       {"split_k " + std::to_string(bad) + " for K = 300 in k-steps of 64", "valid: 1 to 5"});
  }
}

TEST_F(GemmErrors, KernelThatDoesNotFitSram) {
  const GemmConfig huge{256, 256, 512, 1, 8};  // 768 KiB of tiles; the PPU core has 512 KiB
  test::expect_error([&] { kernels::gemm(dev, GemmShape{2, 4, 3}, a, b, c, nullptr, &huge); },
                     {"needs", "of SRAM but a core has", "smaller tiles"});
}

}  // namespace
}  // namespace ppu

namespace ppu {
namespace {

TEST(TimingCache, IdenticalKernelsReuseTheExactResult) {
  const ChipSpec chip = load_chip("h100");
  Device dev(chip, ExecMode::kTimingOnly);
  auto bufs = [&](int64_t m, int64_t n, int64_t k) {
    return std::array<Buffer, 3>{dev.alloc(DType::kBF16, m * k, "A"), dev.alloc(DType::kBF16, k * n, "B"),
                                 dev.alloc(DType::kBF16, m * n, "C")};
  };
  const auto x = bufs(300, 500, 700), y = bufs(300, 500, 700), z = bufs(900, 500, 700);
  const kernels::GemmShape s{300, 500, 700}, s2{900, 500, 700};
  const KernelTiming first = kernels::gemm(dev, s, x[0], x[1], x[2]);
  const KernelTiming again = kernels::gemm(dev, s, y[0], y[1], y[2]);  // other buffers, same shapes
  const KernelTiming other = kernels::gemm(dev, s2, z[0], z[1], z[2]);
  // The cached result equals a fresh simulation by an engine with an empty cache.
  const KernelTiming fresh = TimingEngine(chip).run(kernels::make_gemm(chip, s, y[0], y[1], y[2]));
  EXPECT_EQ(again.time_s, first.time_s);
  EXPECT_EQ(fresh.time_s, first.time_s);
  EXPECT_EQ(fresh.instructions, again.instructions);
  EXPECT_EQ(fresh.l2_hit_bytes, again.l2_hit_bytes);
  EXPECT_NE(other.time_s, first.time_s);
  // Hits are counted; a trace request always simulates.
  TimingEngine eng(chip);
  eng.run(kernels::make_gemm(chip, s, x[0], x[1], x[2]));
  eng.run(kernels::make_gemm(chip, s, y[0], y[1], y[2]));
  EXPECT_EQ(eng.cache_hits(), 1);
  EXPECT_FALSE(eng.run(kernels::make_gemm(chip, s, y[0], y[1], y[2]), 100).trace.empty());
  EXPECT_EQ(eng.cache_hits(), 1);
}

}  // namespace
}  // namespace ppu
