// Tests of kernels/Rope against rope_reference (angles, cos and sin in double) on a functional
// device: prefill runs (consecutive positions, one head-major run per 64 tokens), decode (one token,
// heads as rows), scattered and repeated positions, positions up to 40959 with theta 1e6 and 1e4,
// head_dim 64 and 128 (and 256, and a tiny 2), fp32/bf16/fp16 and mixed dtypes, in-place use, a
// write into a cache at a token offset, and each kind of invalid input.
//
// Error metric, per element: |out - ref| <= stored_bound(out, ref, e) with
// e = 3.01 u (|x1 c| + |x2 s|) + 2^-148 (|x2 c| + |x1 s| for the second half): the table holds c and s rounded once to
// fp32 (u = 2^-24 relative each), each product rounds once and the difference (sum) once, so the fp32 result is within
// (1 + u)^3 - 1 < 3.01 u of the exact value relative to |x1 c| + |x2 s| (the exact angles: the reference and the table
// compute them the same way in double); the absolute term covers products in the fp32 subnormal range.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "kernels/KernelTestUtil.hpp"
#include "kernels/Rope.hpp"

namespace ppu {
namespace {

struct RopeCase {
  int64_t tokens, heads;
  std::vector<int32_t> positions;
  DType in_t, out_t;
};

std::vector<int32_t> run_from(int32_t start, int64_t n) {
  std::vector<int32_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), start);
  return p;
}

// Runs RoPE of random x into out (or in place) and checks it against the reference.
void check_rope(Device& dev, const kernels::RopeTable& table, const RopeCase& c, uint64_t seed, bool in_place = false) {
  const int64_t d = table.head_dim, half = d / 2;
  const std::string what =
      fmt::format("rope tokens {} heads {} d {} theta {} {}->{}{}", c.tokens, c.heads, d, table.theta,
                  dtype_name(c.in_t), dtype_name(c.out_t), in_place ? " in place" : "");
  const auto x = test::random_values(static_cast<size_t>(c.tokens * c.heads * d), c.in_t, seed, -2.0f, 2.0f);
  Buffer xb = test::make_buffer(dev, c.in_t, x, "x");
  Buffer ob = in_place ? xb : dev.alloc(c.out_t, c.tokens * c.heads * d, "out");
  kernels::rope(dev, table, xb, ob, c.tokens, c.heads, c.positions);
  const std::vector<float> got = dev.download(ob);
  const std::vector<double> ref = kernels::rope_reference(x, c.tokens, c.heads, d, c.positions, table.theta);
  const DType out_t = in_place ? c.in_t : c.out_t;
  test::expect_within(
      got, ref,
      [&](size_t i) {
        const auto row = static_cast<int64_t>(i) / d, col = static_cast<int64_t>(i) % d, t = row / c.heads;
        const int64_t f = col % half;
        const double a =
            double(c.positions[static_cast<size_t>(t)]) * std::pow(table.theta, -2.0 * double(f) / double(d));
        const double x1 = x[static_cast<size_t>(row * d + f)], x2 = x[static_cast<size_t>(row * d + f + half)];
        const double c1 = std::fabs(std::cos(a)), s1 = std::fabs(std::sin(a));
        const double terms =
            col < half ? std::fabs(x1) * c1 + std::fabs(x2) * s1 : std::fabs(x2) * c1 + std::fabs(x1) * s1;
        const double e = 3.01 * test::kU32 * terms + std::ldexp(1.0, -148);
        return test::stored_bound(out_t, ref[i], e);
      },
      what);
  if (!in_place) dev.free(ob);
  dev.free(xb);
}

TEST(Rope, MatchesReference) {
  Device dev(load_chip("h100"));
  uint64_t seed = 100;
  for (double theta : {1e6, 1e4})
    for (int64_t d : {64, 128}) {
      auto table = kernels::make_rope_table(dev, theta, d, 40960);
      const RopeCase cases[] = {
          {1, 32, {0}, DType::kBF16, DType::kBF16},                        // decode at 0
          {1, 8, {40000}, DType::kF32, DType::kF32},                       // decode far out
          {1, 130, {40959}, DType::kBF16, DType::kBF16},                   // heads beyond one tile
          {130, 4, run_from(0, 130), DType::kF32, DType::kF32},            // prefill: three runs
          {17, 8, run_from(39990, 17), DType::kF16, DType::kF32},          // chunked prefill near the end
          {7, 3, {40959, 5, 17, 29, 3, 3, 3}, DType::kBF16, DType::kF32},  // steps 12, 0, and descents
          {300, 2, run_from(12345, 300), DType::kBF16, DType::kBF16},
      };
      for (const RopeCase& c : cases) check_rope(dev, table, c, ++seed);
      kernels::free_rope_table(dev, table);
    }
}

TEST(Rope, OtherHeadDims) {
  Device dev(load_chip("a100-80g"));
  uint64_t seed = 200;
  for (int64_t d : {2, 256}) {
    auto table = kernels::make_rope_table(dev, 1e6, d, 50000);
    check_rope(dev, table, {65, 3, run_from(100, 65), DType::kF32, DType::kF32}, ++seed);
    check_rope(dev, table, {1, 40, {49999}, DType::kF16, DType::kF16}, ++seed);
    kernels::free_rope_table(dev, table);
  }
}

TEST(Rope, InPlace) {
  Device dev(load_chip("h100"));
  auto table = kernels::make_rope_table(dev, 1e6, 128, 4096);
  check_rope(dev, table, {130, 4, run_from(7, 130), DType::kBF16, DType::kBF16}, 300, true);
  check_rope(dev, table, {1, 32, {4000}, DType::kF32, DType::kF32}, 301, true);
  check_rope(dev, table, {5, 2, {9, 1, 4, 4, 0}, DType::kF16, DType::kF16}, 302, true);
}

// Keys rotated straight into a cache: out = k_cache at token past_len; other rows untouched.
TEST(Rope, WritesIntoCacheAtTokenOffset) {
  Device dev(load_chip("h100"));
  auto table = kernels::make_rope_table(dev, 1e6, 64, 1024);
  const int64_t tokens = 5, heads = 2, d = 64, capacity = 20, past = 9;
  const auto x = test::random_values(static_cast<size_t>(tokens * heads * d), DType::kBF16, 400);
  std::vector<float> cache(static_cast<size_t>(capacity * heads * d), 7.0f);
  Buffer xb = test::make_buffer(dev, DType::kBF16, x, "k");
  Buffer cb = test::make_buffer(dev, DType::kBF16, cache, "k_cache");
  const auto pos = run_from(static_cast<int32_t>(past), tokens);
  kernels::rope(dev, table, xb, cb, tokens, heads, pos, past);
  const std::vector<float> got = dev.download(cb);
  const std::vector<double> ref = kernels::rope_reference(x, tokens, heads, d, pos, 1e6);
  for (int64_t i = 0; i < capacity * heads * d; ++i) {
    const int64_t t = i / (heads * d);
    if (t < past || t >= past + tokens) {
      ASSERT_EQ(got[static_cast<size_t>(i)], 7.0f) << "element " << i << " outside the written tokens";
    } else {
      const double r = ref[static_cast<size_t>(i - past * heads * d)];
      ASSERT_NEAR(got[static_cast<size_t>(i)], r, test::stored_bound(DType::kBF16, r, 1e-6)) << "element " << i;
    }
  }
}

TEST(Rope, TableValues) {
  const auto c = kernels::rope_table_values(1e6, 128, 3, false);
  const auto s = kernels::rope_table_values(1e6, 128, 3, true);
  ASSERT_EQ(c.size(), 3u * 64u);
  EXPECT_EQ(c[0], 1.0f);
  EXPECT_EQ(s[0], 0.0f);
  EXPECT_EQ(c[64], static_cast<float>(std::cos(1.0)));  // p = 1, i = 0
  EXPECT_EQ(s[2 * 64 + 10], static_cast<float>(std::sin(2.0 * std::pow(1e6, -20.0 / 128))));
}

// Llama 3.1 scaling, recomputed here from the published rule (Hugging Face transformers'
// llama3 rope init): keep short wavelengths, divide long ones by the factor, blend in between.
TEST(Rope, Llama3ScaledFrequencies) {
  const kernels::RopeScaling sc{8.0, 1.0, 4.0, 8192};
  const auto f = kernels::rope_inv_freq(500000.0, 128, &sc);
  const auto plain = kernels::rope_inv_freq(500000.0, 128);
  ASSERT_EQ(f.size(), 64u);
  int kept = 0, divided = 0, blended = 0;
  for (size_t i = 0; i < 64; ++i) {
    const double base = std::pow(500000.0, -2.0 * double(i) / 128), wavelen = 2 * M_PI / base;
    EXPECT_DOUBLE_EQ(plain[i], base);
    double want = base;
    if (wavelen > 8192.0) {
      want = base / 8, ++divided;
    } else if (wavelen >= 8192.0 / 4) {
      const double s = (8192.0 / wavelen - 1.0) / (4.0 - 1.0);
      want = (1 - s) * base / 8 + s * base, ++blended;
    } else {
      ++kept;
    }
    EXPECT_NEAR(f[i], want, 1e-15 * base) << "frequency " << i;
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(blended, 0);
  // The table uses the scaled frequencies.
  const auto c = kernels::rope_table_values(500000.0, 128, 101, false, &sc);
  EXPECT_EQ(c[100 * 64 + 63], static_cast<float>(std::cos(100 * f[63])));
  for (const kernels::RopeScaling bad : {kernels::RopeScaling{0.5, 1, 4, 8192}, kernels::RopeScaling{8, 4, 4, 8192},
                                         kernels::RopeScaling{8, 1, 4, 0}})
    test::expect_error([&] { kernels::rope_inv_freq(500000.0, 128, &bad); }, {"rope scaling"});
}

TEST(Rope, RejectsPositionOutsideTable) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  auto table = kernels::make_rope_table(dev, 1e6, 64, 4096);
  Buffer x = dev.alloc(DType::kBF16, 3 * 2 * 64, "q");
  test::expect_error(
      [&] {
        kernels::rope(dev, table, x, x, 3, 2, {4094, 4095, 4096});
      },
      {"rope", "token 2", "position 4096", "4096 positions", "0 to 4095"});
  test::expect_error([&] { kernels::rope(dev, table, x, x, 3, 2, {0, -1, 2}); }, {"rope", "token 1", "position -1"});
}

TEST(Rope, RejectsMismatchedSizes) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  auto table = kernels::make_rope_table(dev, 1e6, 64, 4096);
  Buffer x = dev.alloc(DType::kBF16, 3 * 2 * 64, "q");
  Buffer y = dev.alloc(DType::kBF16, 3 * 2 * 64 + 1, "q_out");
  test::expect_error(
      [&] {
        kernels::rope(dev, table, x, x, 3, 2, {0, 1});
      },
      {"rope", "2 positions given for 3 tokens"});
  test::expect_error(
      [&] {
        kernels::rope(dev, table, y, x, 3, 2, {0, 1, 2});
      },
      {"rope", "input x 'q_out'", "385 elements", "[3, 2, 64] (tokens, heads, head_dim)", "needs 384"});
  test::expect_error(
      [&] {
        kernels::rope(dev, table, x, y, 3, 2, {0, 1, 2});
      },
      {"rope", "output 'q_out'", "385 elements", "out_tokens >= out_token0 + tokens = 0 + 3"});
  test::expect_error(
      [&] {
        kernels::rope(dev, table, x, y, 3, 2, {0, 1, 2}, 1);
      },
      {"rope", "out_tokens >= out_token0 + tokens = 1 + 3"});
  Buffer big = dev.alloc(DType::kBF16, 5 * 2 * 64, "k_cache");
  Buffer part = dev.alloc(DType::kBF16, 3 * 2 * 64, "k");
  test::expect_error(
      [&] {
        kernels::rope(dev, table, big, big, 3, 2, {0, 1, 2}, 2);
      },
      {"rope", "input x 'k_cache'", "needs 384"});
  EXPECT_NO_THROW(kernels::make_rope(table, part, big, 3, 2, {0, 1, 2}, 2));

  test::expect_error([&] { kernels::rope(dev, table, x, x, 0, 2, {}); }, {"rope", "tokens = 0", "must be positive"});
}

TEST(Rope, RejectsBadTableParameters) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  test::expect_error([&] { kernels::make_rope_table(dev, 1e6, 63, 16); }, {"rope table", "head_dim = 63", "even"});
  test::expect_error([&] { kernels::make_rope_table(dev, 0.0, 64, 16); }, {"rope table", "theta = 0"});
  test::expect_error([&] { kernels::make_rope_table(dev, 1e6, 64, 0); }, {"rope table", "max_positions = 0"});
}

}  // namespace
}  // namespace ppu
