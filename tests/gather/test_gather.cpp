// Row gathers and weighted gather-combine (MoE dispatch/combine) against scalar references.
// Tolerances: gather_rows moves values, so the result equals the source rounded to the destination
// dtype exactly; gather_combine sums k products in fp32 (bound (k+1) * 2^-24 * sum |w * x|) and
// rounds once into the destination dtype.
#include <gtest/gtest.h>

#include <cmath>

#include "TestUtil.hpp"
#include "kernels/Gather.hpp"
#include "kernels/KernelUtil.hpp"
#include "sim/TimingEngine.hpp"

namespace ppu {
namespace {

TEST(Gather, RowsAcrossTilesAndDtypes) {
  Device dev(load_chip("zhenwu-810e"));
  for (DType st : {DType::kF32, DType::kBF16})
    for (DType dt : {DType::kF32, DType::kBF16, DType::kF16})
      for (int64_t width : {1, 7, 2048, 2500}) {
        const int64_t n_src = 37;
        const auto sv = test::random_values(static_cast<size_t>(n_src * width), st, 3);
        std::vector<int32_t> rows;
        for (int i = 0; i < 35; ++i) rows.push_back((i * 11 + 5) % 37);  // repeats and any order
        Buffer src = dev.alloc(st, n_src * width, "src");
        Buffer dst = dev.alloc(dt, static_cast<int64_t>(rows.size()) * width, "dst");
        dev.upload(src, sv);
        kernels::gather_rows(dev, src, width, rows, dst);
        const auto got = dev.download(dst);
        const auto want = kernels::gather_rows_reference(sv, width, rows);
        for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], round_to(dt, want[i])) << i << " width " << width;
        dev.free(src);
        dev.free(dst);
      }
}

TEST(Gather, CombineWeightedRowsWithAndWithoutAccumulate) {
  Device dev(load_chip("h100"));
  for (bool accumulate : {false, true})
    for (int64_t k : {1, 2, 8}) {
      const int64_t tokens = 19, width = 2100, n_src = tokens * k;
      const auto sv = test::random_values(static_cast<size_t>(n_src * width), DType::kBF16, 7);
      const auto wv = test::random_values(static_cast<size_t>(tokens * k), DType::kF32, 8, 0.0f, 1.0f);
      const auto dv = test::random_values(static_cast<size_t>(tokens * width), DType::kF32, 9);
      std::vector<int32_t> index;
      for (int64_t i = 0; i < tokens * k; ++i) index.push_back(static_cast<int32_t>((i * 13) % n_src));
      Buffer src = dev.alloc(DType::kBF16, n_src * width, "src"), w = dev.alloc(DType::kF32, tokens * k, "w"),
             dst = dev.alloc(DType::kF32, tokens * width, "dst");
      dev.upload(src, sv);
      dev.upload(w, wv);
      dev.upload(dst, dv);
      kernels::gather_combine(dev, src, width, index, k, w, dst, accumulate);
      const auto got = dev.download(dst);
      const auto want = kernels::gather_combine_reference(sv, width, index, k, wv, dv, accumulate);
      for (int64_t t = 0; t < tokens; ++t)
        for (int64_t c = 0; c < width; ++c) {
          double mag = accumulate ? std::fabs(dv[static_cast<size_t>(t * width + c)]) : 0.0;
          for (int64_t j = 0; j < k; ++j)
            mag += std::fabs(double(wv[static_cast<size_t>(t * k + j)]) *
                             sv[static_cast<size_t>(index[static_cast<size_t>(t * k + j)] * width + c)]);
          const size_t i = static_cast<size_t>(t * width + c);
          ASSERT_LE(std::fabs(double(got[i]) - want[i]), (k + 2) * std::ldexp(1.0, -24) * mag + 1e-30)
              << "k " << k << " accumulate " << accumulate << " at " << t << "," << c;
        }
    }
}

TEST(Gather, BadInput) {
  Device dev(load_chip("h100"));
  Buffer src = dev.alloc(DType::kF32, 12, "src"), dst = dev.alloc(DType::kF32, 8, "dst"), w = dev.alloc(DType::kF32, 2, "w");
  test::expect_error([&] { kernels::gather_rows(dev, src, 4, {0, 3}, dst); }, {"index 3 at position 1", "[0, 3)"});
  test::expect_error([&] { kernels::gather_rows(dev, src, 5, {0}, dst); }, {"not a whole number of rows of width 5"});
  test::expect_error([&] { kernels::gather_rows(dev, src, 4, {}, dst); }, {"no rows"});
  test::expect_error([&] { kernels::gather_rows(dev, src, 4, {0}, dst); }, {"destination 'dst' has 8 elements", "needs 4"});
  test::expect_error([&] { kernels::gather_combine(dev, src, 4, {0, 1, 2}, 2, w, dst); }, {"not a positive multiple of k = 2"});
  test::expect_error([&] { kernels::gather_combine(dev, src, 4, {0}, 1, w, dst); }, {"weights 'w' has 2 elements", "needs 1"});
  test::expect_error([&] { kernels::gather_combine(dev, src, 4, {0, 1}, 1, w, w); }, {"destination 'w' has 2 elements", "needs 8"});
}

TEST(Gather, TimingOnlyCountsEveryRow) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  Buffer src = dev.alloc(DType::kBF16, 1000 * 4096, "src"), dst = dev.alloc(DType::kBF16, 64 * 4096, "dst");
  std::vector<int32_t> rows(64);
  for (int i = 0; i < 64; ++i) rows[static_cast<size_t>(i)] = i * 15;
  const KernelTiming t = kernels::gather_rows(dev, src, 4096, rows, dst);
  EXPECT_EQ(t.hbm_read_bytes + t.l2_hit_bytes, 64.0 * 4096 * 2);
  EXPECT_GT(t.time_s, 0);
}

// The data-dependent timing key writes the indices exactly (first value, then runs of equal
// steps), so two launches share a timing only when their indices are equal.
TEST(Gather, DataTimingKeyIsExactAndBounded) {
  using kernels::data_timing_key;
  EXPECT_EQ(data_timing_key("g", {}), "g|ids 0");
  EXPECT_EQ(data_timing_key("g", {5}), "g|ids 1 5");
  EXPECT_EQ(data_timing_key("g", {7, 8, 9, 10, 7, 4}), "g|ids 6 7 +1x3 -3x2");
  EXPECT_EQ(data_timing_key("g", {0, 0, 0}), "g|ids 3 0 +0x2");
  EXPECT_NE(data_timing_key("g", {1, 2, 3}), data_timing_key("g", {1, 2, 4}));
  EXPECT_NE(data_timing_key("g", {1, 2}), data_timing_key("g", {1, 2, 3}));
  EXPECT_NE(data_timing_key("g", {1}), data_timing_key("h", {1}));
  // Extremes of int32 steps do not overflow.
  EXPECT_EQ(data_timing_key("g", {INT32_MIN, INT32_MAX}), "g|ids 2 -2147483648 +4294967295x1");
  // No regular structure: no key once the runs pass the bound.
  std::vector<int32_t> irregular;
  for (int64_t i = 0; i < 50000; ++i) irregular.push_back(static_cast<int32_t>(i * i * 7919 % 10007));
  EXPECT_EQ(data_timing_key("g", irregular), "");
}

// Launches with equal indices reuse the first one's timing (bit-identical); different indices are
// timed on their own.
TEST(Gather, TimingOnlyReusesTimingForEqualIndices) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  Buffer src = dev.alloc(DType::kBF16, 1000 * 4096, "src"), dst = dev.alloc(DType::kBF16, 64 * 4096, "dst");
  std::vector<int32_t> rows(64), other(64);
  for (int i = 0; i < 64; ++i) {
    rows[static_cast<size_t>(i)] = i * 15;
    other[static_cast<size_t>(i)] = (i * 37) % 1000;
  }
  const Kernel k = kernels::make_gather_rows(src, 4096, rows, dst);
  EXPECT_FALSE(k.timing_key.empty());
  EXPECT_NE(k.timing_key, kernels::make_gather_rows(src, 4096, other, dst).timing_key);
  TimingEngine eng(dev.chip());
  const KernelTiming a = eng.run(k);
  const KernelTiming b = eng.run(kernels::make_gather_rows(src, 4096, rows, dst));
  EXPECT_EQ(eng.cache_hits(), 1);
  EXPECT_EQ(a.time_s, b.time_s);
  TimingEngine fresh(dev.chip());
  const KernelTiming c = fresh.run(k, /*trace_limit=*/1);  // a trace is never served from a cache
  EXPECT_EQ(a.time_s, c.time_s);
  eng.run(kernels::make_gather_rows(src, 4096, other, dst));
  EXPECT_EQ(eng.cache_hits(), 1);
}

}  // namespace
}  // namespace ppu
