// Loads into and stores from a row offset of an SRAM buffer: a tile assembled from gathered rows,
// the dependency that the partial write still carries, and the extent errors.
#include <gtest/gtest.h>

#include "SimTestUtil.hpp"
#include "TestUtil.hpp"
#include "sim/FunctionalExecutor.hpp"

namespace ppu {
namespace {

TEST(RowOffsets, GatherRowsIntoOneTileThenStoreAPart) {
  // src [6, 5] fp32 holds 100*r + c; gather rows 4, 0, 3 into a [3, 5] bf16 tile, then store the
  // tile's rows 1..2 to dst rows 0..1.
  std::vector<float> sv;
  for (int r = 0; r < 6; ++r)
    for (int c = 0; c < 5; ++c) sv.push_back(100.0f * r + c);
  test::HostTensor src(DType::kF32, sv), dst(DType::kF32, 10, -1.0f);
  const int gather[3] = {4, 0, 3};
  Kernel k = test::one_block_kernel("gather", {src.arg("src"), dst.arg("dst", 0x90000)}, [&](int64_t, TileProgram& p) {
    const auto t = p.alloc(DType::kBF16, 3, 5, "t");
    for (int i = 0; i < 3; ++i) p.load(t, TileRegion{0, int64_t{gather[i]} * 5, 5, 1, 5}, i);
    p.store(TileRegion{1, 0, 5, 2, 5}, t, 1);
  });
  FunctionalExecutor ex(1);
  ex.run(k, 1 << 20);
  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 5; ++c)
      EXPECT_EQ(dst.get(r * 5 + c), round_to(DType::kBF16, 100.0f * gather[r + 1] + c)) << r << "," << c;
}

TEST(RowOffsets, PartialLoadStillWaitsForEarlierReaders) {
  TileProgram p;
  const auto t = p.alloc(DType::kF32, 4, 8, "t");
  const auto u = p.alloc(DType::kF32, 4, 8, "u");
  p.load(t, TileRegion{0, 0, 8, 2, 8});                // 0: rows 0-1
  p.unary(UnaryOp::kCopy, u, t, 4, 8);                 // 1: reads t
  p.load(t, TileRegion{0, 16, 8, 2, 8}, 2);            // 2: rows 2-3 of t, after 1 read t
  std::vector<uint32_t> deps(p.deps_begin(2), p.deps_end(2));
  EXPECT_NE(std::find(deps.begin(), deps.end(), 1u), deps.end());
}

TEST(RowOffsets, ExtentsPastTheBufferAreErrors) {
  TileProgram p;
  const auto t = p.alloc(DType::kF32, 4, 8, "t");
  test::expect_error([&] { p.load(t, TileRegion{0, 0, 8, 2, 8}, 3); }, {"load destination", "[5, 8]", "'t' [4, 8]"});
  test::expect_error([&] { p.store(TileRegion{0, 0, 8, 1, 8}, t, 4); }, {"store source", "[5, 8]"});
  test::expect_error([&] { p.load(t, TileRegion{0, 0, 8, 1, 8}, -1); }, {"row -1 is negative"});
}

}  // namespace
}  // namespace ppu
