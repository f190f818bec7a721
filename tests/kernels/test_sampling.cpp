// Tests of kernels/Sampling on functional devices: arg-max and top-k against scalar references
// (exact: they select and copy values, nothing is rounded), every logits dtype, shapes from one
// element to Qwen3's vocabulary (split rows, chunked segments, many short rows), ties (bf16 data
// has many; rows of equal values; the maximum on both sides of a split), -inf and NaN logits; the
// device sampler against models/Sampler with the same seed (same tokens); timing-only runs; and
// each kind of invalid input.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "KernelTestUtil.hpp"
#include "kernels/Sampling.hpp"
#include "models/Sampler.hpp"

namespace ppu {
namespace {

using test::Shape;

constexpr int64_t kQwenVocab = 151936;

const std::vector<Shape> kShapes = {{1, 1},    {1, 13},    {5, 1},          {7, 13},          {3, 257},
                                    {2, 8192}, {2, 8193},  {3, 2 * 8192 + 7}, {1, kQwenVocab}, {20, kQwenVocab},
                                    {300, 4099}, {1000, 3}};

std::vector<float> logits_for(Shape s, DType t, uint64_t seed) {
  return test::random_values(static_cast<size_t>(s.rows * s.cols), t, seed, -8.0f, 8.0f);
}

std::vector<int32_t> run_argmax(Device& dev, Shape s, DType t, const std::vector<float>& x) {
  Buffer xb = test::make_buffer(dev, t, x, "logits");
  Buffer ids = dev.alloc(DType::kF32, s.rows, "ids");
  kernels::argmax(dev, xb, ids, s.rows, s.cols);
  std::vector<int32_t> got = kernels::download_ids(dev, ids);
  dev.free(ids);
  dev.free(xb);
  return got;
}

struct TopK {
  std::vector<float> values;
  std::vector<int32_t> ids;
};

TopK run_top_k(Device& dev, Shape s, DType t, const std::vector<float>& x, int64_t k) {
  Buffer xb = test::make_buffer(dev, t, x, "logits");
  Buffer vb = dev.alloc(DType::kF32, s.rows * k, "values"), ib = dev.alloc(DType::kF32, s.rows * k, "ids");
  kernels::top_k(dev, xb, vb, ib, s.rows, s.cols, k);
  TopK r{dev.download(vb), kernels::download_ids(dev, ib)};
  dev.free(ib);
  dev.free(vb);
  dev.free(xb);
  return r;
}

void check_top_k(Device& dev, Shape s, DType t, const std::vector<float>& x, int64_t k, const std::string& what) {
  const TopK got = run_top_k(dev, s, t, x, k);
  const std::vector<int32_t> want = kernels::top_k_reference(x, s.rows, s.cols, k);
  ASSERT_EQ(got.ids.size(), want.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const int64_t row = static_cast<int64_t>(i) / k;
    const float want_v = x[static_cast<size_t>(row * s.cols + want[i])];
    if ((got.ids[i] != want[i] || f32_bits(got.values[i]) != f32_bits(want_v)) && ++bad <= 5)
      ADD_FAILURE() << what << ": row " << row << " rank " << i % k << ": id " << got.ids[i] << " value "
                    << got.values[i] << ", want id " << want[i] << " value " << want_v;
  }
  EXPECT_EQ(bad, 0) << what;
}

// ---------------------------------------------------------------------------------------------
// Greedy

TEST(SamplingArgMax, MatchesReferenceEveryShapeAndDtype) {
  Device dev(load_chip("h100"));
  uint64_t seed = 7000;
  for (DType t : test::kFloatTypes)
    for (Shape s : kShapes) {
      const std::vector<float> x = logits_for(s, t, ++seed);
      EXPECT_EQ(run_argmax(dev, s, t, x), kernels::argmax_reference(x, s.rows, s.cols)) << test::describe(s, t, t);
    }
}

TEST(SamplingArgMax, PlansSplitRowsWhenRowsAreFew) {
  const ChipSpec chip = load_chip("h100");
  const kernels::SamplingSplit one = kernels::plan_argmax(chip, 1, kQwenVocab);
  EXPECT_GT(one.splits, 1);
  EXPECT_GE(one.split_cols, kernels::kArgMaxMinSplitCols);
  EXPECT_LE(one.splits, chip.num_cores());
  EXPECT_GE(one.splits * one.split_cols, kQwenVocab);
  EXPECT_LT((one.splits - 1) * one.split_cols, kQwenVocab) << "no empty segment";
  const kernels::SamplingSplit twenty = kernels::plan_argmax(chip, 20, kQwenVocab);
  EXPECT_GT(twenty.split_cols, kernels::kSamplingTileElems) << "segments walked in several chunks";
  EXPECT_EQ(kernels::plan_argmax(chip, 1000, kQwenVocab).splits, 1) << "enough rows to fill the chip";
  EXPECT_EQ(kernels::plan_argmax(chip, 1, 13).splits, 1);
}

// Ties go to the lowest index wherever they fall: inside a chunk, across chunks of one block,
// across the blocks of a split row; rows of equal values, of -inf, with NaNs (skipped).
TEST(SamplingArgMax, TiesNaNAndInfinities) {
  Device dev(load_chip("h100"));
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (Shape s : {Shape{1, kQwenVocab}, Shape{20, kQwenVocab}, Shape{3, 2 * 8192 + 7}, Shape{4, 37}}) {
    const ChipSpec& chip = dev.chip();
    const kernels::SamplingSplit plan = kernels::plan_argmax(chip, s.rows, s.cols);
    std::vector<float> x = logits_for(s, DType::kF32, 7100);
    auto at = [&](int64_t r, int64_t c) -> float& { return x[static_cast<size_t>(r * s.cols + c)]; };
    // Row 0: the maximum at the last column of the first segment/chunk and again right after it.
    const int64_t edge = std::min<int64_t>(s.cols - 2, plan.splits > 1 ? plan.split_cols - 1 : 8191);
    at(0, edge) = 100.0f;
    at(0, edge + 1) = 100.0f;
    at(0, s.cols - 1) = 100.0f;
    if (s.rows > 1) std::fill(&at(1, 0), &at(1, 0) + s.cols, 0.5f);        // all equal: 0
    if (s.rows > 2) {
      std::fill(&at(2, 0), &at(2, 0) + s.cols, -inf);                       // all -inf: 0
      at(2, s.cols - 1) = nan;
    }
    if (s.rows > 3) {
      for (int64_t c = 0; c < s.cols; c += 2) at(3, c) = nan;               // NaNs skipped
      at(3, s.cols - 1) = 1000.0f;
    }
    const std::vector<int32_t> got = run_argmax(dev, s, DType::kF32, x);
    EXPECT_EQ(got, kernels::argmax_reference(x, s.rows, s.cols)) << s.rows << "x" << s.cols;
    EXPECT_EQ(got[0], edge);
    if (s.rows > 1) {
      EXPECT_EQ(got[1], 0);
    }
    if (s.rows > 2) {
      EXPECT_EQ(got[2], 0);
    }
    if (s.rows > 3) {
      EXPECT_EQ(got[3], s.cols - 1);
    }
  }
}

TEST(SamplingArgMax, SameIdsOnEveryChip) {
  // Different core counts split the row differently; the ids must not change.
  const Shape s{3, kQwenVocab};
  const std::vector<float> x = logits_for(s, DType::kBF16, 7200);
  const std::vector<int32_t> want = kernels::argmax_reference(x, s.rows, s.cols);
  for (const char* chip : {"zhenwu-810e", "a800", "b200"}) {
    Device dev(load_chip(chip));
    EXPECT_EQ(run_argmax(dev, s, DType::kBF16, x), want) << chip;
  }
}

// ---------------------------------------------------------------------------------------------
// Top-k

struct TopKCase {
  Shape s;
  int64_t k;
};

TEST(SamplingTopK, MatchesReferenceEveryShapeAndDtype) {
  Device dev(load_chip("h100"));
  const TopKCase cases[] = {{{1, 1}, 1},     {{1, 13}, 5},     {{7, 13}, 13},         {{3, 257}, 64},
                            {{2, 8192}, 64}, {{2, 8193}, 7},   {{3, 20011}, 1},       {{1, kQwenVocab}, 64},
                            {{2, kQwenVocab}, 20}, {{1, kQwenVocab}, 256}, {{5, 40000}, 3}};
  uint64_t seed = 7300;
  for (DType t : test::kFloatTypes)
    for (const TopKCase& c : cases) {
      if (t != DType::kBF16 && c.k == 256) continue;  // the longest case once
      check_top_k(dev, c.s, t, logits_for(c.s, t, ++seed), c.k,
                  fmt::format("top_k {} k={}", test::describe(c.s, t, t), c.k));
    }
}

TEST(SamplingTopK, PlanBalancesThePassesAndFitsTiles) {
  const kernels::SamplingSplit p = kernels::plan_top_k(1, kQwenVocab, 64);
  EXPECT_GT(p.splits, 1);
  EXPECT_LE(p.split_cols, kernels::kSamplingTileElems);
  EXPECT_LE(p.splits * p.k, kernels::kSamplingTileElems);
  EXPECT_EQ(kernels::plan_top_k(4, 8192, 64).splits, 1) << "a row that fits one tile is one pass";
}

// Equal values (ties by id across segments), -inf logits (k beyond the finite ones), rows of one
// repeated value, and segments shorter than k.
TEST(SamplingTopK, TiesAndInfinities) {
  Device dev(load_chip("h100"));
  const float inf = std::numeric_limits<float>::infinity();
  const Shape s{4, kQwenVocab};
  const int64_t k = 64;
  std::vector<float> x = logits_for(s, DType::kF32, 7400);
  auto at = [&](int64_t r, int64_t c) -> float& { return x[static_cast<size_t>(r * s.cols + c)]; };
  for (int64_t c = 0; c < s.cols; c += 997) at(0, c) = 50.0f;  // 153 ties spread over every segment
  std::fill(&at(1, 0), &at(1, 0) + s.cols, 0.0f);             // ids 0 .. k-1
  std::fill(&at(2, 0), &at(2, 0) + s.cols, -inf);             // 10 finite values, then -inf by id
  for (int64_t c = 5; c < s.cols; c += s.cols / 10) at(2, c) = static_cast<float>(c % 7);
  for (int64_t c = 0; c < s.cols; ++c) at(3, c) = static_cast<float>(c % 3);  // three values, many ties
  check_top_k(dev, s, DType::kF32, x, k, "ties");
  check_top_k(dev, Shape{3, 70}, DType::kF32, std::vector<float>(210, 1.0f), 70, "k = cols, all equal");
}

// ---------------------------------------------------------------------------------------------
// The device sampler against the host's

// Sampler's generator (splitmix64, 53-bit uniform), stepped exactly as Sampler::sample does: one
// draw per call when temperature > 0.
struct HostUniforms {
  uint64_t state;
  double next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return static_cast<double>(z >> 11) * 0x1.0p-53;
  }
};

TEST(SamplingDevice, ReproducesTheHostSamplerForTheSameSeed) {
  Device dev(load_chip("h100"));
  const SamplerOptions options[] = {{0.0, 0, 1.0, 1},  {0.7, 20, 0.8, 42}, {0.6, 20, 0.95, 7},
                                    {1.0, 64, 1.0, 3}, {0.3, 1, 1.0, 5},   {1.5, 256, 0.95, 11}};
  for (int64_t vocab : {int64_t{1000}, kQwenVocab}) {
    for (const SamplerOptions& o : options) {
      SCOPED_TRACE(fmt::format("vocab {} temperature {} top_k {} top_p {} seed {}", vocab, o.temperature, o.top_k,
                               o.top_p, o.seed));
      Sampler host(o);
      HostUniforms u{o.seed};
      const int64_t rows = 3;
      int differ_from_greedy = 0;
      for (int step = 0; step < 4; ++step) {
        // Logits ~ a model's: a few large, many small; bf16 as a model produces them (ties too).
        std::vector<float> x = test::random_values(static_cast<size_t>(rows * vocab), DType::kBF16,
                                                   7500 + static_cast<uint64_t>(step), -4.0f, 4.0f);
        for (size_t i = 0; i < x.size(); i += 37) x[i] = round_to(DType::kBF16, x[i] + 6.0f);
        std::vector<int32_t> want;
        std::vector<double> uniforms;
        for (int64_t r = 0; r < rows; ++r) {
          want.push_back(host.sample(std::span<const float>(x).subspan(static_cast<size_t>(r * vocab),
                                                                       static_cast<size_t>(vocab))));
          if (o.temperature > 0) uniforms.push_back(u.next());
        }
        Buffer xb = test::make_buffer(dev, DType::kBF16, x, "logits");
        const std::vector<int32_t> got =
            kernels::sample_tokens(dev, xb, rows, vocab, {o.temperature, o.top_k, o.top_p},
                                   o.temperature > 0 ? std::span<const double>(uniforms) : std::span<const double>());
        dev.free(xb);
        EXPECT_EQ(got, want) << "step " << step;
        const std::vector<int32_t> greedy = kernels::argmax_reference(x, rows, vocab);
        for (int64_t r = 0; r < rows; ++r) differ_from_greedy += got[static_cast<size_t>(r)] != greedy[static_cast<size_t>(r)];
      }
      if (o.temperature >= 0.6 && o.top_k > 1) {
        EXPECT_GT(differ_from_greedy, 0) << "sampling actually samples";
      }
    }
  }
}

TEST(SamplingDevice, CandidateDrawEdges) {
  const std::vector<float> v = {3.0f, 2.0f, 2.0f, -1.0f};
  const std::vector<int32_t> id = {40, 7, 9, 1};
  EXPECT_EQ(kernels::sample_from_candidates(v, id, 1.0, 1.0, 0.0), 40) << "u = 0 takes the first";
  EXPECT_EQ(kernels::sample_from_candidates(v, id, 1.0, 1.0, std::nextafter(1.0, 0.0)), 1) << "u -> 1 the last";
  EXPECT_EQ(kernels::sample_from_candidates(v, id, 1.0, 1e-9, 0.999), 40) << "tiny top_p keeps one";
  EXPECT_EQ(kernels::sample_from_candidates(v, id, 1e-3, 1.0, 0.999), 40) << "cold: all mass on the first";
}

// ---------------------------------------------------------------------------------------------
// Timing

TEST(SamplingTiming, TimingOnlyRunsBothKernelsDeterministically) {
  Device a(load_chip("h100"), ExecMode::kTimingOnly), b(load_chip("h100"), ExecMode::kTimingOnly);
  for (Device* dev : {&a, &b}) {
    Buffer x = dev->alloc(DType::kBF16, 4 * kQwenVocab, "logits");
    Buffer ids = dev->alloc(DType::kF32, 4, "ids");
    Buffer vals = dev->alloc(DType::kF32, 4 * 20, "values"), cids = dev->alloc(DType::kF32, 4 * 20, "cand_ids");
    const auto g = kernels::argmax(*dev, x, ids, 4, kQwenVocab);
    ASSERT_EQ(g.size(), 2u) << "split rows: partials, then the combine";
    EXPECT_GT(g[0].blocks, 4);
    const auto t = kernels::top_k(*dev, x, vals, cids, 4, kQwenVocab, 20);
    ASSERT_EQ(t.size(), 2u);
    for (const auto& kt : g) EXPECT_GT(kt.time_s, 0.0);
    for (const auto& kt : t) EXPECT_GT(kt.time_s, 0.0);
  }
  EXPECT_EQ(a.synchronize(), b.synchronize());
}

// ---------------------------------------------------------------------------------------------
// Errors

TEST(SamplingErrors, ArgMaxBadInputs) {
  Device dev(load_chip("h100"));
  Buffer x = dev.alloc(DType::kF32, 91, "logits"), ids = dev.alloc(DType::kF32, 7, "ids");
  Buffer ids16 = dev.alloc(DType::kBF16, 7, "ids16"), x8 = dev.alloc(DType::kF8E4M3, 91, "x8");
  test::expect_error([&] { kernels::argmax(dev, x, ids, 0, 13); }, {"argmax", "rows = 0", "positive"});
  test::expect_error([&] { kernels::argmax(dev, x, ids, 7, 14); }, {"argmax", "logits 'logits'", "91 elements", "needs 98"});
  test::expect_error([&] { kernels::argmax(dev, x, ids16, 7, 13); }, {"argmax", "ids 'ids16'", "bf16", "valid: fp32"});
  test::expect_error([&] { kernels::argmax(dev, x8, ids, 7, 13); }, {"argmax", "logits 'x8'", "fp8e4m3"});
  test::expect_error([&] { kernels::argmax(dev, x, ids, 1, int64_t{1} << 24); }, {"argmax", "2^24"});
  Buffer big = dev.alloc(DType::kF32, kQwenVocab, "big"), one = dev.alloc(DType::kF32, 1, "one");
  test::expect_error([&] { kernels::make_argmax(dev.chip(), big, one, 1, kQwenVocab); },
                     {"argmax", "split over", "fp32 scratch", "got none"});
  Buffer small = dev.alloc(DType::kF32, 3, "small");
  test::expect_error([&] { kernels::make_argmax(dev.chip(), big, one, 1, kQwenVocab, small); },
                     {"argmax", "'small' (fp32, 3 elements)"});
}

TEST(SamplingErrors, TopKBadInputs) {
  Device dev(load_chip("h100"));
  Buffer x = dev.alloc(DType::kF32, 91, "logits"), v = dev.alloc(DType::kF32, 35, "v"), i = dev.alloc(DType::kF32, 35, "i");
  test::expect_error([&] { kernels::top_k(dev, x, v, i, 7, 13, 0); }, {"top_k", "k = 0", "positive"});
  test::expect_error([&] { kernels::top_k(dev, x, v, i, 7, 13, 14); }, {"top_k", "k = 14", "row length (13)"});
  test::expect_error([&] { kernels::plan_top_k(1, 100000, 300); }, {"top_k", "k = 300", "kTopKMax (256)"});
  test::expect_error([&] { kernels::plan_top_k(1, 600000, 256); }, {"top_k", "candidates", "smaller k"});
  test::expect_error([&] { kernels::top_k(dev, x, v, i, 7, 13, 4); }, {"top_k", "values 'v'", "35 elements", "[7, 4]"});
}

TEST(SamplingErrors, SamplerAndDownloadBadInputs) {
  Device dev(load_chip("h100"));
  Buffer x = dev.alloc(DType::kF32, 91, "logits");
  const std::vector<double> u = {0.5};
  test::expect_error([&] { kernels::sample_tokens(dev, x, 7, 13, {0.7, 0, 1.0}, u); },
                     {"top_k = 0", "[1, 256]", "host"});
  test::expect_error([&] { kernels::sample_tokens(dev, x, 7, 13, {0.7, 5, 1.0}, u); }, {"1 uniforms for 7 rows"});
  const std::vector<float> v = {1.0f};
  const std::vector<int32_t> id = {3}, two = {3, 4};
  test::expect_error([&] { kernels::sample_from_candidates(v, two, 1.0, 1.0, 0.5); }, {"1 candidate values and 2 ids"});
  test::expect_error([&] { kernels::sample_from_candidates(v, id, 0.0, 1.0, 0.5); }, {"temperature 0"});
  test::expect_error([&] { kernels::sample_from_candidates(v, id, 1.0, 1.5, 0.5); }, {"top_p 1.5"});
  test::expect_error([&] { kernels::sample_from_candidates(v, id, 1.0, 1.0, 1.0); }, {"uniform 1"});
  Buffer f = test::make_buffer(dev, DType::kF32, {2.0f, 2.5f}, "frac");
  test::expect_error([&] { kernels::download_ids(dev, f); }, {"download_ids", "element 1", "'frac'", "2.5"});
}

}  // namespace
}  // namespace ppu
