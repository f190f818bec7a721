// Tests of the integer matrix unit (sim/Mma mma_tile_i8, and int8 MMA through a tile program):
// int8 x int8 -> int32 against an int64 reference. Tolerance: none - integer sums are exact, so the
// results must be bit-identical, including where an fp32 accumulator would already round (sums
// past 2^24: k > 1024 products of +-128).
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "TestUtil.hpp"
#include "isa/Kernel.hpp"
#include "runtime/Device.hpp"
#include "sim/Mma.hpp"

namespace ppu {
namespace {

// Random int8 values in [lo, hi] as a [rows, ld] array (pad columns too: reading past the extent
// picks them up and fails the check).
std::vector<int8_t> random_i8(size_t n, uint64_t seed, int lo = -128, int hi = 127) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> d(lo, hi);
  std::vector<int8_t> v(n);
  for (auto& x : v) x = static_cast<int8_t>(d(rng));
  return v;
}

void check_mma_i8(int m, int n, int k, bool ta, bool tb, bool acc, uint64_t seed, int lo = -128, int hi = 127) {
  const int lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;
  const auto a = random_i8(static_cast<size_t>(ta ? k : m) * lda, seed, lo, hi);
  const auto b = random_i8(static_cast<size_t>(tb ? n : k) * ldb, seed + 1, lo, hi);
  std::vector<int32_t> c0(static_cast<size_t>(m) * ldc);
  std::mt19937_64 rng(seed + 2);
  for (auto& x : c0) x = static_cast<int32_t>(rng() % 2000001) - 1000000;
  std::vector<int32_t> c = c0;
  MmaScratch scratch;
  mma_tile_i8(a.data(), lda, ta, b.data(), ldb, tb, c.data(), ldc, m, n, k, acc, scratch);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < ldc; ++j) {
      const size_t ci = static_cast<size_t>(i) * ldc + j;
      if (j >= n) {
        ASSERT_EQ(c[ci], c0[ci]) << "c[" << i << "," << j << "] lies outside n and must not change";
        continue;
      }
      int64_t ref = acc ? c0[ci] : 0;
      for (int p = 0; p < k; ++p) {
        const int64_t av = ta ? a[static_cast<size_t>(p) * lda + i] : a[static_cast<size_t>(i) * lda + p];
        const int64_t bv = tb ? b[static_cast<size_t>(j) * ldb + p] : b[static_cast<size_t>(p) * ldb + j];
        ref += av * bv;
      }
      ASSERT_EQ(int64_t{c[ci]}, ref) << "m=" << m << " n=" << n << " k=" << k << " ta=" << ta << " tb=" << tb
                                     << " acc=" << acc << " at [" << i << "," << j << "]";
    }
}

TEST(MmaInt8, ExactOnOddShapesAndEveryTranspose) {
  const int shapes[][3] = {{1, 1, 1}, {1, 7, 13}, {5, 3, 2}, {17, 31, 65}, {16, 16, 32}, {33, 64, 100}, {4, 65, 31}};
  uint64_t seed = 1;
  for (const auto& sh : shapes)
    for (int t = 0; t < 8; ++t) check_mma_i8(sh[0], sh[1], sh[2], t & 1, t & 2, t & 4, seed++);
}

TEST(MmaInt8, ExactWhereFp32AccumulationWouldRound) {
  // All products +16384 (-128 x -128): a sum over k = 1100 is 18,022,400 > 2^24, where consecutive
  // fp32 values are 2 apart; an odd extra product (+1) must survive.
  const int k = 1101;
  std::vector<int8_t> a(static_cast<size_t>(k), -128), b(static_cast<size_t>(k), -128);
  a.back() = 1;
  b.back() = 1;
  int32_t c = 0;
  MmaScratch scratch;
  mma_tile_i8(a.data(), k, false, b.data(), 1, false, &c, 1, 1, 1, k, false, scratch);
  EXPECT_EQ(c, 1100 * 16384 + 1);
  EXPECT_NE(static_cast<double>(static_cast<float>(c)), static_cast<double>(c)) << "fp32 would have rounded it";
  // And random values over long k.
  check_mma_i8(3, 5, 3000, false, true, true, 77);
  check_mma_i8(2, 3, 2500, true, false, false, 78, -128, -120);
}

TEST(MmaInt8, AccumulatorWrapsModulo2To32LikeTheHardware) {
  std::vector<int8_t> a = {127}, b = {127};
  int32_t c = INT32_MAX;
  MmaScratch scratch;
  mma_tile_i8(a.data(), 1, false, b.data(), 1, false, &c, 1, 1, 1, 1, true, scratch);
  EXPECT_EQ(c, static_cast<int32_t>(static_cast<uint32_t>(INT32_MAX) + 16129u));
}

// The same product through a tile program on the functional executor: int8 loads, int32
// accumulation over several k-steps, int32 store.
TEST(MmaInt8, TileProgramAccumulatesAcrossInstructionsExactly) {
  const int m = 5, n = 7, k = 1500, tk = 256;
  Device dev(load_chip("h100"));
  const auto av = random_i8(static_cast<size_t>(m) * k, 5);
  const auto bv = random_i8(static_cast<size_t>(k) * n, 6);
  std::vector<float> af(av.begin(), av.end()), bf(bv.begin(), bv.end());
  Buffer a = dev.alloc(DType::kI8, m * k, "A");
  Buffer b = dev.alloc(DType::kI8, k * n, "B");
  Buffer c = dev.alloc(DType::kI32, m * n, "C");
  dev.upload(a, af);
  dev.upload(b, bf);
  Kernel kern;
  kern.name = "int8 mma test";
  kern.grid = 1;
  kern.args = {a.arg(), b.arg(), c.arg()};
  kern.build = [&](int64_t, TileProgram& p) {
    const BufferId ab = p.alloc(DType::kI8, m, tk, "a"), bb = p.alloc(DType::kI8, tk, n, "b");
    const BufferId acc = p.alloc(DType::kI32, m, n, "acc");
    for (int k0 = 0, step = 0; k0 < k; k0 += tk, ++step) {
      const int kk = std::min(tk, k - k0);
      p.load(ab, TileRegion{0, k0, k, m, kk});
      p.load(bb, TileRegion{1, int64_t{k0} * n, n, kk, n});
      p.mma(acc, ab, bb, m, n, kk, false, false, step > 0);
    }
    p.store(TileRegion{2, 0, n, m, n}, acc);
  };
  dev.launch(kern);
  const auto* got = static_cast<const int32_t*>(c.data);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      int64_t ref = 0;
      for (int p = 0; p < k; ++p) ref += int64_t{av[static_cast<size_t>(i) * k + p]} * bv[static_cast<size_t>(p) * n + j];
      ASSERT_EQ(int64_t{got[i * n + j]}, ref) << "[" << i << "," << j << "]";
    }
}

}  // namespace
}  // namespace ppu
