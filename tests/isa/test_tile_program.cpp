// Tests of isa/TileProgram and isa/Kernel: dependency derivation (named cases, and random programs
// against a brute-force conflict reference), build-time extent/dtype errors, SRAM accounting, and
// validate_program's bounds and SRAM errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "TestUtil.hpp"
#include "arch/Units.hpp"
#include "isa/Kernel.hpp"
#include "isa/TileProgram.hpp"

namespace ppu {
namespace {

std::set<uint32_t> deps_of(const TileProgram& p, size_t i) { return {p.deps_begin(i), p.deps_end(i)}; }

TileRegion region(uint16_t arg, int64_t offset, int64_t stride, int rows, int cols) {
  return TileRegion{arg, offset, stride, rows, cols};
}

// ---------------------------------------------------------------------------------------------
// Dependencies: named cases

TEST(TileProgramDeps, ReadAfterWrite) {
  TileProgram p;
  const auto a = p.alloc(DType::kBF16, 16, 16, "a");
  const auto b = p.alloc(DType::kBF16, 16, 16, "b");
  const auto c = p.alloc(DType::kF32, 16, 16, "c");
  p.load(a, region(0, 0, 16, 16, 16));  // 0
  p.load(b, region(1, 0, 16, 16, 16));  // 1
  p.fill(c, 16, 16, 0.0f);              // 2
  p.mma(c, a, b, 16, 16, 16);           // 3
  p.store(region(2, 0, 16, 16, 16), c);  // 4
  EXPECT_TRUE(deps_of(p, 0).empty());
  EXPECT_TRUE(deps_of(p, 1).empty()) << "loads into different buffers are independent";
  EXPECT_TRUE(deps_of(p, 2).empty());
  EXPECT_EQ(deps_of(p, 3), (std::set<uint32_t>{0, 1, 2}));
  EXPECT_EQ(deps_of(p, 4), (std::set<uint32_t>{3}));
}

TEST(TileProgramDeps, WriteAfterReadLoadAfterMma) {
  // Double buffering: reloading buffer a must wait for the mma that reads it.
  TileProgram p;
  const auto a = p.alloc(DType::kBF16, 16, 16, "a");
  const auto b = p.alloc(DType::kBF16, 16, 16, "b");
  const auto c = p.alloc(DType::kF32, 16, 16, "c");
  p.load(a, region(0, 0, 16, 16, 16));    // 0
  p.load(b, region(1, 0, 16, 16, 16));    // 1
  p.mma(c, a, b, 16, 16, 16, false, false, false);  // 2 (overwrite: reads a, b only)
  p.load(a, region(0, 256, 16, 16, 16));  // 3: WAW on a (0) and WAR on a (2)
  p.mma(c, a, b, 16, 16, 16);             // 4: RAW on a (3), RAW/WAW on c (2)
  EXPECT_EQ(deps_of(p, 2), (std::set<uint32_t>{0, 1}));
  EXPECT_TRUE(deps_of(p, 3).count(2)) << "load into a after an mma read a must depend on that mma";
  EXPECT_FALSE(deps_of(p, 3).count(1)) << "no dependency on the unrelated load of b";
  EXPECT_TRUE(deps_of(p, 4).count(3));
  EXPECT_TRUE(deps_of(p, 4).count(2));
}

TEST(TileProgramDeps, WriteAfterWriteAndMultipleReaders) {
  TileProgram p;
  const auto x = p.alloc(DType::kF32, 8, 8, "x");
  const auto y = p.alloc(DType::kF32, 8, 8, "y");
  p.fill(x, 8, 8, 1.0f);                 // 0
  p.fill(x, 8, 8, 2.0f);                 // 1: WAW on x
  p.store(region(0, 0, 8, 8, 8), x);     // 2: reads x
  p.unary(UnaryOp::kExp, y, x, 8, 8);    // 3: reads x, writes y
  p.fill(x, 8, 8, 3.0f);                 // 4: WAR on both readers of x, WAW on 1
  EXPECT_EQ(deps_of(p, 1), (std::set<uint32_t>{0}));
  EXPECT_EQ(deps_of(p, 2), (std::set<uint32_t>{1}));
  EXPECT_EQ(deps_of(p, 3), (std::set<uint32_t>{1}));
  EXPECT_EQ(deps_of(p, 4), (std::set<uint32_t>{1, 2, 3}));
}

TEST(TileProgramDeps, AccumulateReadsTheDestination) {
  TileProgram p;
  const auto s = p.alloc(DType::kF32, 8, 8, "s");
  const auto r = p.alloc(DType::kF32, 8, 1, "r");
  p.fill(r, 8, 1, 0.0f);                                   // 0
  p.fill(s, 8, 8, 1.0f);                                   // 1
  p.reduce(ReduceOp::kSum, r, s, 8, 8, /*accumulate=*/true);  // 2: reads r
  p.reduce(ReduceOp::kMax, r, s, 8, 8, /*accumulate=*/false);  // 3: overwrites r (WAW on 2)
  EXPECT_EQ(deps_of(p, 2), (std::set<uint32_t>{0, 1}));
  EXPECT_EQ(deps_of(p, 3), (std::set<uint32_t>{1, 2}));
}

TEST(TileProgramDeps, SyncIsAFullFence) {
  TileProgram p;
  const auto x = p.alloc(DType::kF32, 4, 4, "x");
  const auto y = p.alloc(DType::kF32, 4, 4, "y");
  p.fill(x, 4, 4, 1.0f);  // 0
  p.fill(y, 4, 4, 1.0f);  // 1
  p.sync();               // 2
  p.fill(x, 4, 4, 2.0f);  // 3
  p.sync();               // 4
  p.fill(y, 4, 4, 2.0f);  // 5
  EXPECT_EQ(deps_of(p, 2), (std::set<uint32_t>{0, 1}));
  EXPECT_TRUE(deps_of(p, 3).count(2));
  EXPECT_TRUE(deps_of(p, 4).count(3));
  EXPECT_TRUE(deps_of(p, 5).count(4));
  EXPECT_EQ(p.instrs()[2].op, OpCode::kSync);
}

TEST(TileProgramDeps, ClearStartsOver) {
  TileProgram p;
  auto x = p.alloc(DType::kF32, 4, 4, "x");
  p.fill(x, 4, 4, 1.0f);
  p.sync();
  p.store(region(0, 0, 4, 4, 4), x);
  p.clear();
  EXPECT_TRUE(p.instrs().empty());
  EXPECT_TRUE(p.buffers().empty());
  EXPECT_EQ(p.sram_bytes(), 0);
  x = p.alloc(DType::kF32, 4, 4, "x");
  p.store(region(0, 0, 4, 4, 4), x);  // 0
  p.fill(x, 4, 4, 1.0f);              // 1
  EXPECT_TRUE(deps_of(p, 0).empty()) << "no dependency may survive clear()";
  EXPECT_EQ(deps_of(p, 1), (std::set<uint32_t>{0}));
}

// ---------------------------------------------------------------------------------------------
// Dependencies: random programs against a brute-force reference.
//
// Reference: instruction j must come after i (i < j) if they conflict - i writes a buffer j reads
// or writes, or i reads a buffer j writes - or if a sync lies in [i, j]. The derived graph must
// order every such pair (j reaches i through deps), and every direct dependency must be one of
// those pairs (no spurious waits).

struct Access {
  std::set<BufferId> reads, writes;
  bool sync = false;
};

TEST(TileProgramDeps, RandomProgramsMatchConflictReference) {
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 200; ++trial) {
    TileProgram p;
    const int nbuf = 2 + static_cast<int>(rng() % 4);
    std::vector<BufferId> bufs;
    for (int b = 0; b < nbuf; ++b) bufs.push_back(p.alloc(DType::kF32, 4, 4, std::string("b").append(std::to_string(b))));
    const auto pick = [&] { return bufs[rng() % bufs.size()]; };
    std::vector<Access> acc;
    const int n = 5 + static_cast<int>(rng() % 40);
    for (int i = 0; i < n; ++i) {
      Access a;
      switch (rng() % 7) {
        case 0: {
          const auto d = pick();
          p.fill(d, 4, 4, 0.0f);
          a.writes = {d};
          break;
        }
        case 1: {
          const auto d = pick(), s = pick();
          p.unary(UnaryOp::kNeg, d, s, 4, 4);
          a.reads = {s};
          a.writes = {d};
          break;
        }
        case 2: {
          const auto d = pick(), x = pick(), y = pick();
          p.binary(BinaryOp::kAdd, d, x, y, 4, 4);
          a.reads = {x, y};
          a.writes = {d};
          break;
        }
        case 3: {
          const auto d = pick();
          auto s = pick();
          if (s == d) s = bufs[(d + 1) % bufs.size()];
          const bool accumulate = rng() % 2;
          p.reduce(ReduceOp::kSum, d, s, 4, 4, accumulate);
          a.reads = {s};
          if (accumulate) a.reads.insert(d);
          a.writes = {d};
          break;
        }
        case 4: {
          const auto d = pick();
          p.load(d, region(0, 0, 4, 4, 4));
          a.writes = {d};
          break;
        }
        case 5: {
          const auto s = pick();
          p.store(region(0, 0, 4, 4, 4), s);
          a.reads = {s};
          break;
        }
        default:
          if (rng() % 3 == 0) {
            p.sync();
            a.sync = true;
          } else {
            const auto d = pick();
            auto s = pick();
            if (s == d) s = bufs[(d + 1) % bufs.size()];
            p.cast(d, s, 4, 4);
            a.reads = {s};
            a.writes = {d};
          }
      }
      acc.push_back(a);
    }
    ASSERT_EQ(p.instrs().size(), acc.size());
    auto conflict = [&](size_t i, size_t j) {
      for (auto w : acc[i].writes)
        if (acc[j].reads.count(w) || acc[j].writes.count(w)) return true;
      for (auto r : acc[i].reads)
        if (acc[j].writes.count(r)) return true;
      return false;
    };
    auto fenced = [&](size_t i, size_t j) {
      for (size_t s = i; s <= j; ++s)
        if (acc[s].sync) return true;
      return false;
    };
    // reach[j][i]: j transitively depends on i.
    std::vector<std::vector<bool>> reach(acc.size(), std::vector<bool>(acc.size(), false));
    for (size_t j = 0; j < acc.size(); ++j) {
      for (const uint32_t* d = p.deps_begin(j); d != p.deps_end(j); ++d) {
        ASSERT_LT(*d, j) << "trial " << trial << ": a dependency must point backwards";
        EXPECT_TRUE(conflict(*d, j) || fenced(*d, j))
            << "trial " << trial << ": spurious dependency " << j << " -> " << *d;
        reach[j][*d] = true;
        for (size_t i = 0; i < *d; ++i)
          if (reach[*d][i]) reach[j][i] = true;
      }
      for (size_t i = 0; i < j; ++i)
        if (conflict(i, j) || fenced(i, j)) {
          EXPECT_TRUE(reach[j][i]) << "trial " << trial << ": instruction " << j << " is not ordered after " << i;
        }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Build-time errors

TEST(TileProgramErrors, ZeroOrNegativeAlloc) {
  TileProgram p;
  test::expect_error([&] { p.alloc(DType::kF32, 0, 4, "tile"); }, {"'tile'", "[0, 4]", "positive"});
  test::expect_error([&] { p.alloc(DType::kBF16, 4, -1, "w"); }, {"'w'", "[4, -1]", "positive"});
}

TEST(TileProgramErrors, MmaWithFp32Operands) {
  TileProgram p;
  const auto a = p.alloc(DType::kF32, 16, 16, "a");
  const auto b = p.alloc(DType::kF32, 16, 16, "b");
  const auto c = p.alloc(DType::kF32, 16, 16, "c");
  test::expect_error([&] { p.mma(c, a, b, 16, 16, 16); }, {"mma", "fp32", "bf16", "fp16", "fp8e4m3", "cast first"});
  EXPECT_TRUE(p.instrs().empty()) << "a rejected instruction must not be added";
}

TEST(TileProgramErrors, MmaOperandDtypesDiffer) {
  TileProgram p;
  const auto a = p.alloc(DType::kBF16, 16, 16, "a");
  const auto b = p.alloc(DType::kF16, 16, 16, "b");
  const auto c = p.alloc(DType::kF32, 16, 16, "c");
  test::expect_error([&] { p.mma(c, a, b, 16, 16, 16); }, {"differ in dtype", "bf16", "fp16"});
  const auto e4 = p.alloc(DType::kF8E4M3, 16, 16, "e4");
  const auto e5 = p.alloc(DType::kF8E5M2, 16, 16, "e5");
  test::expect_error([&] { p.mma(c, e4, e5, 16, 16, 16); }, {"differ in dtype", "fp8e4m3", "fp8e5m2"});
}

TEST(TileProgramErrors, MmaAccumulatorMustBeFp32) {
  TileProgram p;
  const auto a = p.alloc(DType::kBF16, 16, 16, "a");
  const auto b = p.alloc(DType::kBF16, 16, 16, "b");
  const auto c = p.alloc(DType::kBF16, 16, 16, "acc");
  test::expect_error([&] { p.mma(c, a, b, 16, 16, 16); }, {"mma accumulator", "'acc'", "bf16", "fp32"});
}

// int8 operands accumulate into int32, and only they do; one int8 instruction's k is bounded so that
// its own int32 sum cannot overflow; the vector unit's one integer op is the int32 add.
TEST(TileProgramErrors, Int8MmaAccumulatesIntoInt32) {
  TileProgram p;
  const auto a = p.alloc(DType::kI8, 16, 32, "a");
  const auto b = p.alloc(DType::kI8, 32, 16, "b");
  const auto f = p.alloc(DType::kF32, 16, 16, "acc_f32");
  const auto i = p.alloc(DType::kI32, 16, 16, "acc_i32");
  const auto i2 = p.alloc(DType::kI32, 16, 16, "other_i32");
  p.mma(i, a, b, 16, 16, 32, false, false, false);
  test::expect_error([&] { p.mma(f, a, b, 16, 16, 32); }, {"mma accumulator 'acc_f32' is fp32", "int8", "int32"});
  const auto h = p.alloc(DType::kBF16, 16, 16, "h");
  test::expect_error([&] { p.mma(i, h, h, 16, 16, 16); }, {"mma accumulator 'acc_i32' is int32", "bf16", "fp32"});
  test::expect_error([&] { p.mma(f, i, i2, 16, 16, 16); }, {"mma operands are int32", "int8", "cast first"});
  const auto wide_a = p.alloc(DType::kI8, 1, kMmaInt8MaxK + 1, "wide_a");
  const auto wide_b = p.alloc(DType::kI8, 1, kMmaInt8MaxK + 1, "wide_b");
  const auto one = p.alloc(DType::kI32, 1, 1, "one");
  test::expect_error([&] { p.mma(one, wide_a, wide_b, 1, 1, kMmaInt8MaxK + 1, false, true); },
                     {"int8 mma k = 131072 exceeds 131071", "overflow"});
  p.binary(BinaryOp::kAdd, i, i, i2, 16, 16);  // exact partial-sum adds
  test::expect_error([&] { p.binary(BinaryOp::kMul, i, i, i2, 16, 16); }, {"binary destination", "int32", "fp32"});
  test::expect_error([&] { p.binary(BinaryOp::kAdd, i, i, f, 16, 16); }, {"binary destination", "int32", "fp32"});
  test::expect_error([&] { p.binary(BinaryOp::kAdd, i, i, one, 16, 16, Broadcast::kRow); }, {"int32", "fp32"});
  p.cast(f, i, 16, 16);  // the epilogue's way to the vector unit
}

TEST(TileProgramErrors, MmaExtentsChecksAgainstTransposedShapes) {
  TileProgram p;
  const auto a = p.alloc(DType::kBF16, 32, 16, "a");  // A [m=32, k=16], or A^T [k=32, m=16]
  const auto b = p.alloc(DType::kBF16, 16, 8, "b");   // B [k=16, n=8]
  const auto c = p.alloc(DType::kF32, 32, 8, "c");
  p.mma(c, a, b, 32, 8, 16);  // fits
  test::expect_error([&] { p.mma(c, a, b, 32, 8, 17); }, {"mma operand a", "'a'", "[32, 17]", "[32, 16]"});
  test::expect_error([&] { p.mma(c, a, b, 32, 8, 16, /*trans_a=*/true); }, {"transposed", "'a'"});
  test::expect_error([&] { p.mma(c, a, b, 33, 8, 16); }, {"mma accumulator", "'c'"});
  test::expect_error([&] { p.mma(c, a, b, 32, 8, 16, false, /*trans_b=*/true); }, {"mma operand b", "'b'"});
  test::expect_error([&] { p.mma(c, a, b, 0, 8, 16); }, {"positive"});
}

TEST(TileProgramErrors, ExtentLargerThanBuffer) {
  TileProgram p;
  const auto x = p.alloc(DType::kF32, 8, 16, "x");
  const auto y = p.alloc(DType::kF32, 8, 16, "y");
  test::expect_error([&] { p.load(x, region(0, 0, 32, 9, 16)); }, {"load destination", "[9, 16]", "'x'", "[8, 16]"});
  test::expect_error([&] { p.store(region(0, 0, 32, 8, 17), x); }, {"store source", "'x'"});
  test::expect_error([&] { p.fill(x, 8, 17, 0.0f); }, {"fill destination", "'x'"});
  test::expect_error([&] { p.unary(UnaryOp::kExp, y, x, 9, 1); }, {"unary", "[9, 1]"});
  test::expect_error([&] { p.binary(BinaryOp::kAdd, y, x, x, 8, 0); }, {"binary", "positive"});
  test::expect_error([&] { p.cast(y, x, -1, 4); }, {"cast", "positive"});
  test::expect_error([&] { p.reduce(ReduceOp::kSum, y, x, 8, 20); }, {"reduce source", "[8, 20]"});
}

TEST(TileProgramErrors, BroadcastOperandShapes) {
  TileProgram p;
  const auto x = p.alloc(DType::kF32, 8, 16, "x");
  const auto row = p.alloc(DType::kF32, 8, 1, "row");
  const auto col = p.alloc(DType::kF32, 1, 16, "col");
  const auto small = p.alloc(DType::kF32, 4, 1, "small");
  p.binary(BinaryOp::kMul, x, x, row, 8, 16, Broadcast::kRow);
  p.binary(BinaryOp::kMul, x, x, col, 8, 16, Broadcast::kCol);
  test::expect_error([&] { p.binary(BinaryOp::kMul, x, x, small, 8, 16, Broadcast::kRow); }, {"one value per row", "'small'"});
  test::expect_error([&] { p.binary(BinaryOp::kMul, x, x, row, 8, 16, Broadcast::kCol); }, {"one value per column", "'row'"});
  test::expect_error([&] { p.binary(BinaryOp::kMul, x, x, row, 8, 16, Broadcast::kNone); }, {"binary operand b", "'row'"});
}

TEST(TileProgramErrors, VectorOpsNeedFp32Buffers) {
  TileProgram p;
  const auto h = p.alloc(DType::kBF16, 8, 8, "h");
  const auto f = p.alloc(DType::kF32, 8, 8, "f");
  test::expect_error([&] { p.unary(UnaryOp::kExp, h, f, 8, 8); }, {"'h'", "bf16", "vector unit", "fp32"});
  test::expect_error([&] { p.unary(UnaryOp::kExp, f, h, 8, 8); }, {"unary source", "'h'", "bf16"});
  test::expect_error([&] { p.binary(BinaryOp::kAdd, f, f, h, 8, 8); }, {"binary operand b", "'h'"});
  test::expect_error([&] { p.fill(h, 8, 8, 0.0f); }, {"fill destination", "'h'"});
  test::expect_error([&] { p.reduce(ReduceOp::kMax, f, h, 8, 8); }, {"reduce source", "'h'"});
  // Cast is the one vector instruction that converts, so it takes any dtypes.
  p.cast(f, h, 8, 8);
  p.cast(h, f, 8, 8);
  EXPECT_EQ(p.instrs().size(), 2u);
}

TEST(TileProgramErrors, SameBufferWhereDistinctAreRequired) {
  TileProgram p;
  const auto f = p.alloc(DType::kF32, 8, 8, "f");
  test::expect_error([&] { p.reduce(ReduceOp::kSum, f, f, 8, 8); }, {"reduce destination must differ"});
  test::expect_error([&] { p.cast(f, f, 8, 8); }, {"cast destination must differ"});
}

TEST(TileProgramErrors, ArgMaxAndIotaIndexRules) {
  TileProgram p;
  const auto x = p.alloc(DType::kF32, 4, 64, "x");
  const auto d = p.alloc(DType::kF32, 4, 1, "d");
  const auto h = p.alloc(DType::kBF16, 4, 64, "h");
  p.reduce(ReduceOp::kArgMax, d, x, 4, 64, false, static_cast<int32_t>(kMaxExactIndex - 64));  // last exact index
  p.iota(x, 4, 64, static_cast<int32_t>(-kMaxExactIndex));
  test::expect_error([&] { p.reduce(ReduceOp::kArgMax, d, x, 4, 64, /*accumulate=*/true); },
                     {"argmax cannot accumulate", "cmp_gt", "select"});
  test::expect_error([&] { p.reduce(ReduceOp::kArgMax, d, x, 4, 64, false, static_cast<int32_t>(kMaxExactIndex - 63)); },
                     {"argmax indices", "16777153 .. 16777216", "2^24", "exactly"});
  test::expect_error([&] { p.reduce(ReduceOp::kSum, d, x, 4, 64, false, 5); }, {"reduce sum takes no index base", "5"});
  test::expect_error([&] { p.iota(x, 4, 64, static_cast<int32_t>(-kMaxExactIndex - 1)); }, {"iota indices", "-16777217"});
  test::expect_error([&] { p.iota(h, 4, 64, 0); }, {"iota destination", "'h'", "bf16"});
  test::expect_error([&] { p.iota(x, 4, 65, 0); }, {"iota destination", "[4, 65]"});
  test::expect_error([&] { p.reduce(ReduceOp::kArgMax, d, x, 5, 64); }, {"reduce source", "[5, 64]"});
  test::expect_error([&] { p.reduce(static_cast<ReduceOp>(9), d, x, 4, 64); }, {"invalid reduce op 9"});
  test::expect_error([&] { p.binary(static_cast<BinaryOp>(42), x, x, x, 4, 64); }, {"invalid binary op 42"});
  EXPECT_EQ(p.instrs()[0].k, kMaxExactIndex - 64) << "the index base travels in Instr::k";
  EXPECT_EQ(static_cast<FillOp>(p.instrs()[1].sub), FillOp::kIota);
}

TEST(TileProgramDeps, SelectAlsoReadsItsDestination) {
  TileProgram p;
  const auto m = p.alloc(DType::kF32, 1, 8, "mask");
  const auto v = p.alloc(DType::kF32, 1, 1, "value");
  const auto d = p.alloc(DType::kF32, 1, 8, "dst");
  p.fill(d, 1, 8, 0.0f);                                       // 0
  p.iota(m, 1, 8, 0);                                          // 1
  p.fill(v, 1, 1, 3.0f);                                       // 2
  p.binary(BinaryOp::kCmpEq, m, m, v, 1, 8, Broadcast::kRow);  // 3
  p.binary(BinaryOp::kSelect, d, m, v, 1, 8, Broadcast::kRow);  // 4: RAW on d (0), m (3), v (2)
  p.binary(BinaryOp::kAdd, d, m, m, 1, 8);                      // 5: a plain op overwrites d: WAW only
  EXPECT_EQ(deps_of(p, 4), (std::set<uint32_t>{0, 2, 3}));
  EXPECT_EQ(deps_of(p, 5), (std::set<uint32_t>{3, 4}));
}

TEST(TileProgramErrors, UnknownBufferId) {
  TileProgram p;
  const auto f = p.alloc(DType::kF32, 8, 8, "f");
  test::expect_error([&] { p.fill(static_cast<BufferId>(5), 8, 8, 0.0f); }, {"buffer 5", "only 1"});
  test::expect_error([&] { p.unary(UnaryOp::kCopy, f, static_cast<BufferId>(9), 8, 8); }, {"buffer 9"});
}

TEST(TileProgramErrors, MessageNamesTheInstructionIndex) {
  TileProgram p;
  const auto f = p.alloc(DType::kF32, 8, 8, "f");
  p.fill(f, 8, 8, 0.0f);
  p.fill(f, 8, 8, 0.0f);
  test::expect_error([&] { p.fill(f, 9, 8, 0.0f); }, {"instruction 2"});
}

// ---------------------------------------------------------------------------------------------
// SRAM layout

TEST(TileProgramSram, BuffersAre64ByteAlignedAndDisjoint) {
  TileProgram p;
  struct Want {
    DType t;
    int r, c;
  };
  const Want w[] = {{DType::kBF16, 3, 5}, {DType::kF32, 1, 1}, {DType::kF8E4M3, 7, 9}, {DType::kF32, 64, 64},
                    {DType::kF16, 1, 32}};
  int64_t expect_total = 0;
  for (const auto& x : w) {
    const auto id = p.alloc(x.t, x.r, x.c, "buf");
    const SramBuffer& b = p.buffers()[id];
    const int64_t bytes = int64_t{x.r} * x.c * dtype_size_bytes(x.t);
    EXPECT_EQ(b.bytes, bytes);
    EXPECT_EQ(b.offset_bytes % 64, 0);
    EXPECT_GE(b.offset_bytes, expect_total) << "buffers overlap";
    expect_total = b.offset_bytes + (bytes + 63) / 64 * 64;
  }
  EXPECT_EQ(p.sram_bytes(), expect_total);
}

// ---------------------------------------------------------------------------------------------
// validate_program

Kernel kernel_with_args(std::vector<int64_t> numels) {
  Kernel k;
  k.name = "probe";
  k.grid = 1;
  for (size_t i = 0; i < numels.size(); ++i)
    k.args.push_back(TensorArg{DType::kF32, numels[i], nullptr, 0x1000 * (i + 1), std::string("t").append(std::to_string(i))});
  return k;
}

TEST(ValidateProgram, RegionsInsideTheTensorPass) {
  const Kernel k = kernel_with_args({100});
  TileProgram p;
  const auto x = p.alloc(DType::kF32, 4, 10, "x");
  p.load(x, region(0, 0, 10, 4, 10));     // [0, 40)
  p.load(x, region(0, 60, 10, 4, 10));    // last element 99: exactly fits
  p.load(x, region(0, 90, 0, 4, 10));     // row_stride 0 broadcasts one row (allowed for loads)
  p.store(region(0, 0, 25, 4, 10), x);    // strided rows, gaps allowed
  p.store(region(0, 90, 0, 1, 10), x);    // one row: stride irrelevant
  EXPECT_NO_THROW(validate_program(k, 0, p, 1e6));
}

TEST(ValidateProgram, RegionOutsideTensor) {
  const Kernel k = kernel_with_args({100});
  auto check = [&](const TileRegion& r, bool is_load) {
    TileProgram p;
    const auto x = p.alloc(DType::kF32, 8, 16, "x");
    if (is_load) p.load(x, r);
    else p.store(r, x);
    test::expect_error([&] { validate_program(k, 7, p, 1e6); },
                       {"kernel 'probe'", "block 7", "instruction 0", is_load ? "(load)" : "(store)", "tensor 't0'",
                        "100 elements"});
  };
  check(region(0, 61, 10, 4, 10), true);    // last element 100: one past the end
  check(region(0, 0, 100, 2, 1), true);     // second row starts at 100
  check(region(0, -1, 10, 1, 10), true);    // negative offset
  check(region(0, 10, -5, 2, 5), true);     // negative stride
  check(region(0, 95, 0, 1, 6), false);
}

TEST(ValidateProgram, ArgumentIndexOutOfRange) {
  const Kernel k = kernel_with_args({100, 100});
  TileProgram p;
  const auto x = p.alloc(DType::kF32, 1, 4, "x");
  p.load(x, region(3, 0, 4, 1, 4));
  test::expect_error([&] { validate_program(k, 0, p, 1e6); }, {"argument 3", "has 2"});
}

TEST(ValidateProgram, StoreWithOverlappingRows) {
  const Kernel k = kernel_with_args({1000});
  TileProgram p;
  const auto x = p.alloc(DType::kF32, 4, 10, "x");
  p.store(region(0, 0, 9, 4, 10), x);  // row 1 starts inside row 0
  test::expect_error([&] { validate_program(k, 2, p, 1e6); }, {"block 2", "(store)", "row_stride 9", "overlap"});
  TileProgram q;
  const auto y = q.alloc(DType::kF32, 4, 10, "y");
  q.store(region(0, 0, 0, 2, 10), y);  // two rows onto the same memory
  test::expect_error([&] { validate_program(k, 0, q, 1e6); }, {"(store)", "overlap"});
}

TEST(ValidateProgram, SramOverflowNamesBothSizes) {
  const Kernel k = kernel_with_args({10});
  TileProgram p;
  p.alloc(DType::kF32, 256, 256, "big");  // 256 KiB
  p.alloc(DType::kBF16, 256, 256, "big2");  // 128 KiB
  const double sram = 256.0 * 1024;
  const std::string need = format_quantity(Dimension::kBytes, static_cast<double>(p.sram_bytes()));
  const std::string have = format_quantity(Dimension::kBytes, sram);
  test::expect_error([&] { validate_program(k, 3, p, sram); }, {"kernel 'probe'", "block 3", need, have, "SRAM"});
  EXPECT_NO_THROW(validate_program(k, 3, p, static_cast<double>(p.sram_bytes())));  // exactly full is fine
}

}  // namespace
}  // namespace ppu
