// Tests of sim/FunctionalExecutor: every opcode on small hand-written programs against scalar
// references, partial extents and strides, dtype conversions, MMA against a double reference, and
// results that do not depend on the number of host threads.
//
// References: IEEE +, -, *, / and fp32 rounding of an exact double result agree bit for bit, so
// the exact vector ops are compared exactly; transcendental ops (host libm in fp32 vs the double
// formula) within 1e-5 relative + 1e-6 absolute; sums within (n+1) * 2^-24 * sum|terms| (the
// classic bound for recursive fp32 summation, doubled for margin).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <numbers>
#include <random>
#include <string>
#include <vector>

#include "SimTestUtil.hpp"
#include "TestUtil.hpp"
#include "sim/FunctionalExecutor.hpp"

namespace ppu {
namespace {

using test::HostTensor;
using test::one_block_kernel;

constexpr double kSram = 1 << 20;
constexpr float kSentinel = -777.0f;

std::vector<DType> all_dtypes() {
  std::vector<DType> v;
  for (int i = 0; i < static_cast<int>(DType::kCount); ++i) v.push_back(static_cast<DType>(i));
  return v;
}

void run1(const Kernel& k) {
  FunctionalExecutor ex(1);
  ex.run(k, kSram);
}

double fp32_sum_tolerance(int n, double sum_abs) { return 2.0 * (n + 1) * std::ldexp(1.0, -24) * sum_abs; }

// ---------------------------------------------------------------------------------------------
// Load / store

TEST(FunctionalLoadStore, StridedRegionsCopyExactlyAndTouchNothingElse) {
  // src: [6, 11] row-major; take rows 0..3, cols 3..7 (offset 3, stride 11).
  std::vector<float> sv(66);
  for (int i = 0; i < 66; ++i) sv[static_cast<size_t>(i)] = static_cast<float>(i) * 0.5f - 3.0f;
  HostTensor src(DType::kF32, sv);
  HostTensor dst(DType::kF32, 60, kSentinel);
  // dst: 4 rows of 5 at offset 2, stride 9.
  Kernel k = one_block_kernel("copy", {src.arg("src"), dst.arg("dst", 0x90000)}, [](int64_t, TileProgram& p) {
    const auto x = p.alloc(DType::kF32, 6, 8, "x");  // larger than the extent: row pitch 8
    p.load(x, {.arg = 0, .offset = 3, .row_stride = 11, .rows = 4, .cols = 5});
    p.store({.arg = 1, .offset = 2, .row_stride = 9, .rows = 4, .cols = 5}, x);
  });
  run1(k);
  for (int64_t i = 0; i < 60; ++i) {
    const int64_t r = (i - 2) / 9, c = (i - 2) % 9;
    const bool covered = i >= 2 && r < 4 && c < 5;
    const float want = covered ? sv[static_cast<size_t>(3 + r * 11 + c)] : kSentinel;
    EXPECT_EQ(dst.get(i), want) << "element " << i;
  }
}

TEST(FunctionalLoadStore, RowStrideZeroBroadcastsOneRow) {
  HostTensor src(DType::kF32, std::vector<float>{1, 2, 3, 4});
  HostTensor dst(DType::kF32, 12, kSentinel);
  Kernel k = one_block_kernel("bcast", {src.arg("src"), dst.arg("dst", 0x90000)}, [](int64_t, TileProgram& p) {
    const auto x = p.alloc(DType::kF32, 3, 4, "x");
    p.load(x, {.arg = 0, .offset = 0, .row_stride = 0, .rows = 3, .cols = 4});
    p.store({.arg = 1, .offset = 0, .row_stride = 4, .rows = 3, .cols = 4}, x);
  });
  run1(k);
  for (int i = 0; i < 12; ++i) EXPECT_EQ(dst.get(i), static_cast<float>(i % 4 + 1));
}

TEST(FunctionalLoadStore, ConversionsForEveryDtypeTriple) {
  // tensor(s) -load-> buffer(b) -store-> tensor(d): each hop rounds to its destination dtype.
  std::vector<float> values = test::random_values(40, DType::kF32, 21, -4.0f, 4.0f);
  values[0] = 1000.0f;   // beyond e4m3: saturates to 448
  values[1] = -1e5f;     // beyond e5m2 and fp16: inf (or -448 in e4m3)
  values[2] = 1e-6f;     // subnormal or zero in the small types
  values[3] = 0.0f;
  for (DType s : all_dtypes())
    for (DType b : all_dtypes())
      for (DType d : all_dtypes()) {
        SCOPED_TRACE(std::string(dtype_name(s)) + " -> " + std::string(dtype_name(b)) + " -> " + std::string(dtype_name(d)));
        HostTensor src(s, values);
        HostTensor dst(d, 40, 0.0f);
        Kernel k = one_block_kernel("conv", {src.arg("src"), dst.arg("dst", 0x90000)}, [b](int64_t, TileProgram& p) {
          const auto x = p.alloc(b, 5, 8, "x");
          p.load(x, {.arg = 0, .offset = 0, .row_stride = 8, .rows = 5, .cols = 8});
          p.store({.arg = 1, .offset = 0, .row_stride = 8, .rows = 5, .cols = 8}, x);
        });
        run1(k);
        for (int64_t i = 0; i < 40; ++i) {
          const float in_src = src.get(i);
          const float want = round_to(d, round_to(b, in_src));
          const float got = dst.get(i);
          ASSERT_EQ(f32_bits(got), f32_bits(want)) << "element " << i << " source value " << in_src;
        }
      }
}

// ---------------------------------------------------------------------------------------------
// Vector unit

struct UnaryCase {
  UnaryOp op;
  bool exact;       // a single IEEE operation (or none): bit-exact against the double formula
  float lo, hi;     // input range
  float imm;
  double (*ref)(double x, double imm);
};

const UnaryCase kUnaryCases[] = {
    {UnaryOp::kCopy, true, -3, 3, 0, [](double x, double) { return x; }},
    {UnaryOp::kNeg, true, -3, 3, 0, [](double x, double) { return -x; }},
    {UnaryOp::kAbs, true, -3, 3, 0, [](double x, double) { return std::fabs(x); }},
    {UnaryOp::kExp, false, -3, 3, 0, [](double x, double) { return std::exp(x); }},
    {UnaryOp::kLog, false, 0.1f, 4, 0, [](double x, double) { return std::log(x); }},
    {UnaryOp::kSqrt, true, 0.1f, 4, 0, [](double x, double) { return std::sqrt(x); }},
    {UnaryOp::kRsqrt, false, 0.1f, 4, 0, [](double x, double) { return 1.0 / std::sqrt(x); }},
    {UnaryOp::kRecip, true, 0.1f, 4, 0, [](double x, double) { return 1.0 / x; }},
    {UnaryOp::kSquare, true, -3, 3, 0, [](double x, double) { return x * x; }},
    {UnaryOp::kRelu, true, -3, 3, 0, [](double x, double) { return x > 0 ? x : 0.0; }},
    {UnaryOp::kSilu, false, -3, 3, 0, [](double x, double) { return x / (1.0 + std::exp(-x)); }},
    {UnaryOp::kGelu, false, -3, 3, 0,
     [](double x, double) {
       return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / std::numbers::pi) * (x + 0.044715 * x * x * x)));
     }},
    {UnaryOp::kSigmoid, false, -3, 3, 0, [](double x, double) { return 1.0 / (1.0 + std::exp(-x)); }},
    {UnaryOp::kTanh, false, -3, 3, 0, [](double x, double) { return std::tanh(x); }},
    {UnaryOp::kScale, true, -3, 3, 0.37f, [](double x, double imm) { return x * imm; }},
    {UnaryOp::kAddImm, true, -3, 3, -1.25f, [](double x, double imm) { return x + imm; }},
};
static_assert(std::size(kUnaryCases) == static_cast<size_t>(UnaryOp::kCount), "a unary op has no test case");

TEST(FunctionalVector, EveryUnaryOpAgainstScalarReference) {
  for (size_t ci = 0; ci < std::size(kUnaryCases); ++ci) {
    const UnaryCase& uc = kUnaryCases[ci];
    ASSERT_EQ(static_cast<size_t>(uc.op), ci) << "cases must be in enum order";
    SCOPED_TRACE(std::string(kUnaryOpNames[ci]));
    // [5, 7] input; the op covers the top-left [4, 6] of a [5, 7] destination pre-filled with a
    // sentinel, which must survive outside the extent.
    HostTensor in(DType::kF32, test::random_values(35, DType::kF32, 100 + ci, uc.lo, uc.hi));
    HostTensor out(DType::kF32, 35, 0.0f);
    Kernel k = one_block_kernel("unary", {in.arg("in"), out.arg("out", 0x90000)}, [&](int64_t, TileProgram& p) {
      const auto x = p.alloc(DType::kF32, 5, 7, "x");
      const auto y = p.alloc(DType::kF32, 5, 7, "y");
      p.load(x, {.arg = 0, .offset = 0, .row_stride = 7, .rows = 5, .cols = 7});
      p.fill(y, 5, 7, kSentinel);
      p.unary(uc.op, y, x, 4, 6, uc.imm);
      p.store({.arg = 1, .offset = 0, .row_stride = 7, .rows = 5, .cols = 7}, y);
    });
    run1(k);
    for (int r = 0; r < 5; ++r)
      for (int c = 0; c < 7; ++c) {
        const int64_t i = r * 7 + c;
        const float got = out.get(i);
        if (r >= 4 || c >= 6) {
          EXPECT_EQ(got, kSentinel) << "outside the extent at " << r << "," << c;
          continue;
        }
        const double ref = uc.ref(in.get(i), uc.imm);
        if (uc.exact) {
          EXPECT_EQ(f32_bits(got), f32_bits(static_cast<float>(ref))) << "x = " << in.get(i);
        } else {
          EXPECT_NEAR(got, ref, 1e-6 + 1e-5 * std::fabs(ref)) << "x = " << in.get(i);
        }
      }
  }
}

double binary_ref(BinaryOp op, double a, double b) {
  switch (op) {
    case BinaryOp::kAdd: return a + b;
    case BinaryOp::kSub: return a - b;
    case BinaryOp::kMul: return a * b;
    case BinaryOp::kDiv: return a / b;
    case BinaryOp::kMax: return a > b ? a : b;
    case BinaryOp::kMin: return a < b ? a : b;
    case BinaryOp::kCmpGt: return a > b ? 1.0 : 0.0;
    case BinaryOp::kCmpEq: return a == b ? 1.0 : 0.0;
    case BinaryOp::kSelect:  // reads the destination: checked by the caller
    case BinaryOp::kCount: break;
  }
  return 0;
}

TEST(FunctionalVector, EveryBinaryOpWithEveryBroadcast) {
  constexpr int R = 5, C = 6;  // extent; buffers are larger so that row pitches differ
  for (int oi = 0; oi < static_cast<int>(BinaryOp::kCount); ++oi)
    for (int bi = 0; bi < static_cast<int>(Broadcast::kCount); ++bi) {
      const auto op = static_cast<BinaryOp>(oi);
      const auto bc = static_cast<Broadcast>(bi);
      SCOPED_TRACE(std::string(kBinaryOpNames[oi]) + " broadcast " + std::string(kBroadcastNames[bi]));
      // a: [6, 8] buffer; b: [6, 9] (none), [6, 3] (row: column 0 is used), [2, 7] (col: row 0).
      const int b_rows = bc == Broadcast::kCol ? 2 : 6;
      const int b_cols = bc == Broadcast::kNone ? 9 : bc == Broadcast::kRow ? 3 : 7;
      std::vector<float> av = test::random_values(48, DType::kF32, 200 + oi, -2.0f, 2.0f);
      for (size_t i = 0; i < av.size(); i += 3) av[i] = 0.0f;  // select keeps dst where a is 0
      HostTensor a(DType::kF32, av);
      std::vector<float> bv = test::random_values(static_cast<size_t>(b_rows * b_cols), DType::kF32, 300 + bi, 0.25f, 2.0f);
      for (size_t i = 0; i < bv.size(); i += 2) bv[i] = -bv[i];  // both signs, never near zero (div)
      HostTensor b(DType::kF32, bv);
      HostTensor out(DType::kF32, 48, 0.0f);
      Kernel k = one_block_kernel("binary", {a.arg("a"), b.arg("b", 0x50000), out.arg("out", 0x90000)},
                                  [&](int64_t, TileProgram& p) {
                                    const auto xa = p.alloc(DType::kF32, 6, 8, "a");
                                    const auto xb = p.alloc(DType::kF32, b_rows, b_cols, "b");
                                    const auto y = p.alloc(DType::kF32, 6, 8, "y");
                                    p.load(xa, {.arg = 0, .offset = 0, .row_stride = 8, .rows = 6, .cols = 8});
                                    p.load(xb, {.arg = 1, .offset = 0, .row_stride = b_cols, .rows = b_rows, .cols = b_cols});
                                    p.fill(y, 6, 8, kSentinel);
                                    p.binary(op, y, xa, xb, R, C, bc);
                                    p.store({.arg = 2, .offset = 0, .row_stride = 8, .rows = 6, .cols = 8}, y);
                                  });
      run1(k);
      for (int r = 0; r < 6; ++r)
        for (int c = 0; c < 8; ++c) {
          const float got = out.get(r * 8 + c);
          if (r >= R || c >= C) {
            EXPECT_EQ(got, kSentinel);
            continue;
          }
          const int br = bc == Broadcast::kCol ? 0 : r;
          const int bcol = bc == Broadcast::kRow ? 0 : c;
          const double av = a.get(r * 8 + c), bv = b.get(br * b_cols + bcol);
          const double want = op == BinaryOp::kSelect ? (av != 0 ? bv : kSentinel) : binary_ref(op, av, bv);
          EXPECT_EQ(f32_bits(got), f32_bits(static_cast<float>(want))) << r << "," << c;
        }
    }
}

TEST(FunctionalVector, BinaryOutputMayAliasAnInput) {
  HostTensor a(DType::kF32, std::vector<float>{1, 2, 3, 4});
  HostTensor out(DType::kF32, 4, 0.0f);
  Kernel k = one_block_kernel("alias", {a.arg("a"), out.arg("out", 0x90000)}, [](int64_t, TileProgram& p) {
    const auto x = p.alloc(DType::kF32, 1, 4, "x");
    p.load(x, {.arg = 0, .offset = 0, .row_stride = 4, .rows = 1, .cols = 4});
    p.binary(BinaryOp::kMul, x, x, x, 1, 4);
    p.store({.arg = 1, .offset = 0, .row_stride = 4, .rows = 1, .cols = 4}, x);
  });
  run1(k);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(out.get(i), static_cast<float>((i + 1) * (i + 1)));
}

TEST(FunctionalVector, ReduceSumAndMaxWithAndWithoutAccumulate) {
  constexpr int R = 4, C = 37;  // extent inside a [5, 40] source
  HostTensor in(DType::kF32, test::random_values(200, DType::kF32, 400, -3.0f, 3.0f));
  HostTensor init(DType::kF32, std::vector<float>{0.5f, -10.0f, 2.0f, 100.0f, 7.0f});
  for (int oi = 0; oi < static_cast<int>(ReduceOp::kCount); ++oi)
    for (bool acc : {false, true}) {
      const auto op = static_cast<ReduceOp>(oi);
      if (op == ReduceOp::kArgMax && acc) continue;  // rejected at build time (TileProgram tests)
      SCOPED_TRACE(std::string(kReduceOpNames[oi]) + (acc ? " accumulate" : ""));
      HostTensor out(DType::kF32, 10, 0.0f);  // [5, 2]: column 1 must keep the sentinel
      Kernel k = one_block_kernel("reduce", {in.arg("in"), init.arg("init", 0x40000), out.arg("out", 0x90000)},
                                  [&](int64_t, TileProgram& p) {
                                    const auto x = p.alloc(DType::kF32, 5, 40, "x");
                                    const auto d = p.alloc(DType::kF32, 5, 2, "d");
                                    p.load(x, {.arg = 0, .offset = 0, .row_stride = 40, .rows = 5, .cols = 40});
                                    p.fill(d, 5, 2, kSentinel);
                                    p.load(d, {.arg = 1, .offset = 0, .row_stride = 1, .rows = 5, .cols = 1});
                                    p.reduce(op, d, x, R, C, acc);
                                    p.store({.arg = 2, .offset = 0, .row_stride = 2, .rows = 5, .cols = 2}, d);
                                  });
      run1(k);
      for (int r = 0; r < 5; ++r) {
        EXPECT_EQ(out.get(r * 2 + 1), kSentinel) << "column 1 is outside the destination extent";
        const float got = out.get(r * 2);
        if (r >= R) {
          EXPECT_EQ(got, init.get(r)) << "row " << r << " is outside the extent";
          continue;
        }
        double sum = 0, sum_abs = 0, mx = -INFINITY;
        int arg = 0;
        for (int c = 0; c < C; ++c) {
          const double v = in.get(r * 40 + c);
          sum += v;
          sum_abs += std::fabs(v);
          if (v > mx) arg = c;
          mx = std::max(mx, v);
        }
        if (op == ReduceOp::kArgMax) {
          EXPECT_EQ(got, static_cast<float>(arg)) << "row " << r;
        } else if (op == ReduceOp::kSum) {
          const double want = sum + (acc ? init.get(r) : 0.0);
          EXPECT_NEAR(got, want, fp32_sum_tolerance(C + 1, sum_abs + std::fabs(init.get(r)))) << "row " << r;
        } else {
          const double want = acc ? std::max(mx, static_cast<double>(init.get(r))) : mx;
          EXPECT_EQ(static_cast<double>(got), want) << "row " << r;
        }
      }
    }
}

TEST(FunctionalVector, FillCoversOnlyItsExtent) {
  HostTensor out(DType::kF32, 20, 0.0f);
  Kernel k = one_block_kernel("fill", {out.arg("out")}, [](int64_t, TileProgram& p) {
    const auto x = p.alloc(DType::kF32, 4, 5, "x");
    p.fill(x, 4, 5, 1.5f);
    p.fill(x, 2, 3, -2.0f);
    p.store({.arg = 0, .offset = 0, .row_stride = 5, .rows = 4, .cols = 5}, x);
  });
  run1(k);
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 5; ++c) EXPECT_EQ(out.get(r * 5 + c), (r < 2 && c < 3) ? -2.0f : 1.5f) << r << "," << c;
}

TEST(FunctionalVector, IotaWritesColumnIndexPlusBaseInItsExtent) {
  for (int32_t base : {0, 7, -3, static_cast<int32_t>(kMaxExactIndex - 5)}) {
    SCOPED_TRACE(base);
    HostTensor out(DType::kF32, 20, 0.0f);
    Kernel k = one_block_kernel("iota", {out.arg("out")}, [&](int64_t, TileProgram& p) {
      const auto x = p.alloc(DType::kF32, 4, 5, "x");
      p.fill(x, 4, 5, kSentinel);
      p.iota(x, 3, 5, base);
      p.store({.arg = 0, .offset = 0, .row_stride = 5, .rows = 4, .cols = 5}, x);
    });
    run1(k);
    for (int r = 0; r < 4; ++r)
      for (int c = 0; c < 5; ++c)
        EXPECT_EQ(out.get(r * 5 + c), r < 3 ? static_cast<float>(base + c) : kSentinel) << r << "," << c;
  }
}

// Runs `op` on one-row operands a and b (no broadcast) into a destination pre-filled with `dst0`.
std::vector<float> run_binary_row(BinaryOp op, const std::vector<float>& av, const std::vector<float>& bv, float dst0) {
  const int n = static_cast<int>(av.size());
  HostTensor a(DType::kF32, av), b(DType::kF32, bv), out(DType::kF32, n, 0.0f);
  Kernel k = one_block_kernel("binary_row", {a.arg("a"), b.arg("b", 0x50000), out.arg("out", 0x90000)},
                              [&](int64_t, TileProgram& p) {
                                const auto xa = p.alloc(DType::kF32, 1, n, "a");
                                const auto xb = p.alloc(DType::kF32, 1, n, "b");
                                const auto y = p.alloc(DType::kF32, 1, n, "y");
                                p.load(xa, {.arg = 0, .offset = 0, .row_stride = n, .rows = 1, .cols = n});
                                p.load(xb, {.arg = 1, .offset = 0, .row_stride = n, .rows = 1, .cols = n});
                                p.fill(y, 1, n, dst0);
                                p.binary(op, y, xa, xb, 1, n);
                                p.store({.arg = 2, .offset = 0, .row_stride = n, .rows = 1, .cols = n}, y);
                              });
  run1(k);
  std::vector<float> r(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) r[static_cast<size_t>(i)] = out.get(i);
  return r;
}

TEST(FunctionalVector, ComparesAndSelectOnEdgeValues) {
  const float nan = std::nanf(""), inf = INFINITY;
  // 19 elements: one full vector on every target plus a tail.
  const std::vector<float> a = {1, 2, 2, -0.0f, 0.0f, nan, 1, nan, inf, -inf, inf, 3, 0, 0, 5, -5, 1e-45f, 7, 0};
  const std::vector<float> b = {2, 2, 1, 0.0f, -0.0f, 1, nan, nan, inf, -inf, 1, 3, 4, 0, 4, -5, 0, 8, nan};
  const auto gt = run_binary_row(BinaryOp::kCmpGt, a, b, kSentinel);
  const auto eq = run_binary_row(BinaryOp::kCmpEq, a, b, kSentinel);
  const auto sel = run_binary_row(BinaryOp::kSelect, a, b, kSentinel);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(f32_bits(gt[i]), f32_bits(a[i] > b[i] ? 1.0f : 0.0f)) << i;
    EXPECT_EQ(f32_bits(eq[i]), f32_bits(a[i] == b[i] ? 1.0f : 0.0f)) << i;
    // Every nonzero a selects b, NaN included (NaN != 0); zeros of either sign keep the destination.
    const float want = a[i] != 0.0f ? b[i] : kSentinel;
    EXPECT_EQ(f32_bits(sel[i]), f32_bits(want)) << i;
  }
}

// Reduces one row of `values` with `op` (index base `base` for argmax); returns dst[0, 0].
float reduce_row(ReduceOp op, const std::vector<float>& values, int32_t base = 0) {
  const int n = static_cast<int>(values.size());
  HostTensor in(DType::kF32, values), out(DType::kF32, 1, 0.0f);
  Kernel k = one_block_kernel("reduce_row", {in.arg("in"), out.arg("out", 0x90000)}, [&](int64_t, TileProgram& p) {
    const auto x = p.alloc(DType::kF32, 1, n, "x");
    const auto d = p.alloc(DType::kF32, 1, 1, "d");
    p.load(x, {.arg = 0, .offset = 0, .row_stride = n, .rows = 1, .cols = n});
    p.reduce(op, d, x, 1, n, false, base);
    p.store({.arg = 1, .offset = 0, .row_stride = 1, .rows = 1, .cols = 1}, d);
  });
  run1(k);
  return out.get(0);
}

TEST(FunctionalVector, ArgMaxTakesTheFirstMaximumAndIgnoresNaN) {
  const float nan = std::nanf(""), inf = INFINITY;
  // The maximum at every position of rows of several lengths (vector bodies and tails), with ties
  // after it and NaNs before and after it.
  for (int n : {1, 2, 7, 16, 17, 33, 100}) {
    for (int at = 0; at < n; ++at) {
      std::vector<float> v = test::random_values(static_cast<size_t>(n), DType::kF32, 600 + n, -1.0f, 1.0f);
      v[static_cast<size_t>(at)] = 5.0f;
      for (int j = at + 1; j < n; j += 3) v[static_cast<size_t>(j)] = 5.0f;
      for (int j = at + 2; j < n; j += 5) v[static_cast<size_t>(j)] = nan;
      if (at > 0) v[static_cast<size_t>(at - 1)] = nan;
      ASSERT_EQ(reduce_row(ReduceOp::kArgMax, v), static_cast<float>(at)) << "n " << n << " at " << at;
      ASSERT_EQ(reduce_row(ReduceOp::kArgMax, v, 1000), static_cast<float>(1000 + at)) << "n " << n << " at " << at;
      ASSERT_EQ(reduce_row(ReduceOp::kMax, v), 5.0f) << "max ignores NaN; n " << n << " at " << at;
    }
  }
  EXPECT_EQ(reduce_row(ReduceOp::kArgMax, {nan, -inf, -inf}), 1.0f) << "-inf is a value; NaN is not";
  EXPECT_EQ(reduce_row(ReduceOp::kArgMax, std::vector<float>(20, nan), 3), 3.0f) << "all NaN: the first column";
  EXPECT_EQ(reduce_row(ReduceOp::kMax, std::vector<float>(20, nan)), -inf) << "all NaN: no value";
  EXPECT_EQ(reduce_row(ReduceOp::kArgMax, {-0.0f, 0.0f, 0.0f}), 0.0f) << "-0 ties with +0";
  EXPECT_EQ(reduce_row(ReduceOp::kArgMax, {1.0f, inf, inf}), 1.0f);
}

TEST(FunctionalVector, CastToEveryDtypeAndBetweenThem) {
  std::vector<float> values = test::random_values(24, DType::kF32, 500, -8.0f, 8.0f);
  values[0] = 1000.0f;
  values[1] = -70000.0f;
  values[2] = 3e-5f;
  for (DType via : all_dtypes())
    for (DType second : all_dtypes()) {
      SCOPED_TRACE(std::string("fp32 -> ") + std::string(dtype_name(via)) + " -> " + std::string(dtype_name(second)) + " -> fp32");
      HostTensor in(DType::kF32, values);
      HostTensor out(DType::kF32, 24, 0.0f);
      Kernel k = one_block_kernel("cast", {in.arg("in"), out.arg("out", 0x90000)}, [&](int64_t, TileProgram& p) {
        const auto x = p.alloc(DType::kF32, 4, 6, "x");
        const auto t1 = p.alloc(via, 4, 6, "t1");
        const auto t2 = p.alloc(second, 4, 6, "t2");
        const auto y = p.alloc(DType::kF32, 4, 6, "y");
        p.load(x, {.arg = 0, .offset = 0, .row_stride = 6, .rows = 4, .cols = 6});
        p.cast(t1, x, 4, 6);
        p.cast(t2, t1, 4, 6);
        p.cast(y, t2, 4, 6);
        p.store({.arg = 1, .offset = 0, .row_stride = 6, .rows = 4, .cols = 6}, y);
      });
      run1(k);
      for (int i = 0; i < 24; ++i) {
        const float want = round_to(second, round_to(via, values[static_cast<size_t>(i)]));
        EXPECT_EQ(f32_bits(out.get(i)), f32_bits(want)) << "value " << values[static_cast<size_t>(i)];
      }
    }
}

// ---------------------------------------------------------------------------------------------
// MMA through the executor

struct MmaCase {
  DType t;
  bool ta, tb, acc;
};

class FunctionalMma : public ::testing::TestWithParam<MmaCase> {};

TEST_P(FunctionalMma, MatchesDoubleReference) {
  const MmaCase mc = GetParam();
  constexpr int M = 19, N = 23, K = 37;
  const float range = dtype_is_fp8(mc.t) ? 4.0f : 1.0f;
  // Logical A [M, K], B [K, N], C0 [M, N]; stored transposed where the flags say so.
  const auto av = test::random_values(M * K, mc.t, 600, -range, range);
  const auto bv = test::random_values(K * N, mc.t, 601, -range, range);
  const auto cv = test::random_values(M * N, DType::kF32, 602, -5.0f, 5.0f);
  std::vector<float> a_store(av.size()), b_store(bv.size());
  for (int i = 0; i < M; ++i)
    for (int p = 0; p < K; ++p) a_store[static_cast<size_t>(mc.ta ? p * M + i : i * K + p)] = av[static_cast<size_t>(i * K + p)];
  for (int p = 0; p < K; ++p)
    for (int j = 0; j < N; ++j) b_store[static_cast<size_t>(mc.tb ? j * K + p : p * N + j)] = bv[static_cast<size_t>(p * N + j)];
  HostTensor A(mc.t, a_store), B(mc.t, b_store), C(DType::kF32, cv);
  const int a_rows = mc.ta ? K : M, a_cols = mc.ta ? M : K;
  const int b_rows = mc.tb ? N : K, b_cols = mc.tb ? K : N;
  Kernel k = one_block_kernel("mma", {A.arg("A"), B.arg("B", 0x40000), C.arg("C", 0x80000)}, [&](int64_t, TileProgram& p) {
    // Buffers larger than the operands, so leading dimensions differ from the extents.
    const auto a = p.alloc(mc.t, a_rows + 2, a_cols + 3, "a");
    const auto b = p.alloc(mc.t, b_rows + 1, b_cols + 5, "b");
    const auto c = p.alloc(DType::kF32, M + 3, N + 1, "c");
    p.load(a, {.arg = 0, .offset = 0, .row_stride = a_cols, .rows = a_rows, .cols = a_cols});
    p.load(b, {.arg = 1, .offset = 0, .row_stride = b_cols, .rows = b_rows, .cols = b_cols});
    p.load(c, {.arg = 2, .offset = 0, .row_stride = N, .rows = M, .cols = N});
    p.mma(c, a, b, M, N, K, mc.ta, mc.tb, mc.acc);
    p.store({.arg = 2, .offset = 0, .row_stride = N, .rows = M, .cols = N}, c);
  });
  run1(k);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double ref = mc.acc ? cv[static_cast<size_t>(i * N + j)] : 0.0;
      double mag = std::fabs(ref);
      for (int p = 0; p < K; ++p) {
        const double prod = static_cast<double>(av[static_cast<size_t>(i * K + p)]) * bv[static_cast<size_t>(p * N + j)];
        ref += prod;
        mag += std::fabs(prod);
      }
      ASSERT_NEAR(C.get(i * N + j), ref, fp32_sum_tolerance(K + 1, mag)) << "c[" << i << "," << j << "]";
    }
}

std::vector<MmaCase> mma_cases() {
  std::vector<MmaCase> v;
  for (DType t : {DType::kBF16, DType::kF16, DType::kF8E4M3, DType::kF8E5M2})
    for (int f = 0; f < 8; ++f) v.push_back({t, (f & 1) != 0, (f & 2) != 0, (f & 4) != 0});
  return v;
}

INSTANTIATE_TEST_SUITE_P(AllDtypesAndFlags, FunctionalMma, ::testing::ValuesIn(mma_cases()),
                         [](const ::testing::TestParamInfo<MmaCase>& i) {
                           return std::string(dtype_name(i.param.t)) + (i.param.ta ? "_ta" : "") +
                                  (i.param.tb ? "_tb" : "") + (i.param.acc ? "_acc" : "_overwrite");
                         });

// ---------------------------------------------------------------------------------------------
// Threads, errors, direct execution

// A multi-block kernel using every unit: per block, C = A_b . B (bf16), row softmax-like scaling,
// cast to bf16 and store to the block's own rows.
struct MixedKernel {
  static constexpr int kBlocks = 23, M = 32, N = 24, K = 40;
  HostTensor a{DType::kBF16, test::random_values(kBlocks * M * K, DType::kBF16, 700)};
  HostTensor b{DType::kBF16, test::random_values(K * N, DType::kBF16, 701)};
  HostTensor out{DType::kBF16, kBlocks * M * N, 0.0f};
  HostTensor sums{DType::kF32, kBlocks * M, 0.0f};

  Kernel kernel() {
    Kernel k;
    k.name = "mixed";
    k.grid = kBlocks;
    k.args = {a.arg("a"), b.arg("b", 0x4000000), out.arg("out", 0x8000000), sums.arg("sums", 0xc000000)};
    k.build = [](int64_t blk, TileProgram& p) {
      const auto ta = p.alloc(DType::kBF16, M, K, "a");
      const auto tb = p.alloc(DType::kBF16, K, N, "b");
      const auto c = p.alloc(DType::kF32, M, N, "c");
      const auto s = p.alloc(DType::kF32, M, 1, "s");
      const auto o = p.alloc(DType::kBF16, M, N, "o");
      p.load(ta, {.arg = 0, .offset = blk * M * K, .row_stride = K, .rows = M, .cols = K});
      p.load(tb, {.arg = 1, .offset = 0, .row_stride = N, .rows = K, .cols = N});
      p.mma(c, ta, tb, M, N, K, false, false, false);
      p.unary(UnaryOp::kExp, c, c, M, N);
      p.reduce(ReduceOp::kSum, s, c, M, N);
      p.binary(BinaryOp::kDiv, c, c, s, M, N, Broadcast::kRow);
      p.cast(o, c, M, N);
      p.store({.arg = 2, .offset = blk * M * N, .row_stride = N, .rows = M, .cols = N}, o);
      p.store({.arg = 3, .offset = blk * M, .row_stride = 1, .rows = M, .cols = 1}, s);
    };
    return k;
  }
};

TEST(FunctionalThreads, ResultsAreBitIdenticalForAnyThreadCount) {
  MixedKernel ref;
  {
    FunctionalExecutor ex(1);
    EXPECT_EQ(ex.threads(), 1);
    ex.run(ref.kernel(), kSram);
  }
  for (int threads : {2, 3, 8}) {
    MixedKernel m;
    FunctionalExecutor ex(threads);
    EXPECT_EQ(ex.threads(), threads);
    for (int rep = 0; rep < 2; ++rep) {  // a reused executor gives the same again
      ex.run(m.kernel(), kSram);
      EXPECT_EQ(m.out.bytes, ref.out.bytes) << threads << " threads, run " << rep;
      EXPECT_EQ(m.sums.bytes, ref.sums.bytes) << threads << " threads, run " << rep;
    }
  }
  // And the numbers are right: each output row sums to about 1 (bf16 rounding of each element).
  for (int r = 0; r < MixedKernel::kBlocks * MixedKernel::M; ++r) {
    double s = 0;
    for (int c = 0; c < MixedKernel::N; ++c) s += ref.out.get(int64_t{r} * MixedKernel::N + c);
    EXPECT_NEAR(s, 1.0, MixedKernel::N * std::ldexp(1.0, -8)) << "row " << r;
  }
}

// store_add: many blocks add into the same fp32 elements. Each block adds 1 + block * 2^-20 to
// every element of a shared row; fp32 addition is not associative, so only adding in one fixed
// order gives the same bits for every thread count - the executors add in block order. The sum
// equals a sequential double-checked reference within fp32 rounding.
TEST(FunctionalThreads, StoreAddAppliesBlocksInBlockOrder) {
  static constexpr int kBlocks = 97, kCols = 300;
  auto run = [&](int threads) {
    HostTensor acc(DType::kF32, kCols, 0.5f);
    HostTensor pad(DType::kF32, int64_t{1} << 17, 0.0f);  // enough argument bytes for the helpers
    Kernel k;
    k.name = "adds";
    k.grid = kBlocks;
    k.accumulates = true;
    k.args = {acc.arg("acc"), pad.arg("pad", 0x900000)};
    k.build = [](int64_t block, TileProgram& p) {
      const auto b = p.alloc(DType::kF32, 1, kCols, "b");
      p.fill(b, 1, kCols, 1.0f + static_cast<float>(block) * 0x1p-20f);
      p.store_add(TileRegion{0, 0, kCols, 1, kCols}, b);
    };
    FunctionalExecutor ex(threads);
    ex.run(k, kSram);
    return acc;
  };
  const HostTensor one = run(1);
  float expect = 0.5f;  // the same additions, in block order, in fp32
  double exact = 0.5;
  for (int b = 0; b < kBlocks; ++b) {
    expect += 1.0f + static_cast<float>(b) * 0x1p-20f;
    exact += 1.0 + b * 0x1p-20;
  }
  for (int c = 0; c < kCols; ++c) {
    EXPECT_EQ(one.get(c), expect) << "column " << c;
    EXPECT_NEAR(one.get(c), exact, fp32_sum_tolerance(kBlocks, exact));
  }
  for (int threads : {2, 3, 8})
    for (int rep = 0; rep < 3; ++rep) EXPECT_EQ(run(threads).bytes, one.bytes) << threads << " threads, run " << rep;
}

TEST(FunctionalLoadStore, StoreAddNeedsTheKernelFlagAndFp32) {
  HostTensor f32(DType::kF32, 64, 0.0f), bf16(DType::kBF16, 64, 0.0f);
  auto kernel = [&](TensorArg dst, bool flag) {
    Kernel k = one_block_kernel("adds", {dst}, [](int64_t, TileProgram& p) {
      const auto b = p.alloc(DType::kF32, 1, 64, "b");
      p.fill(b, 1, 64, 1.0f);
      p.store_add(TileRegion{0, 0, 64, 1, 64}, b);
    });
    k.accumulates = flag;
    return k;
  };
  test::expect_error([&] { run1(kernel(f32.arg("acc"), false)); }, {"'adds'", "store_add", "Kernel::accumulates"});
  test::expect_error([&] { run1(kernel(bf16.arg("acc"), true)); }, {"store_add", "'acc'", "bf16", "fp32 tensor"});
  run1(kernel(f32.arg("acc"), true));
  EXPECT_EQ(f32.get(63), 1.0f);
  run1(kernel(f32.arg("acc"), true));
  EXPECT_EQ(f32.get(0), 2.0f) << "adds to what is there";
  TileProgram p;
  const auto h = p.alloc(DType::kBF16, 1, 64, "h");
  test::expect_error([&] { p.store_add(TileRegion{0, 0, 64, 1, 64}, h); }, {"store_add source"});
}

TEST(FunctionalThreads, ZeroThreadsReadsPpuThreads) {
  const char* old = std::getenv("PPU_THREADS");
  const std::string saved = old ? old : "";
  ::setenv("PPU_THREADS", "3", 1);
  EXPECT_EQ(FunctionalExecutor(0).threads(), 3);
  ::unsetenv("PPU_THREADS");
  EXPECT_GE(FunctionalExecutor(0).threads(), 1) << "without PPU_THREADS: the host's core count";
  EXPECT_EQ(FunctionalExecutor(5).threads(), 5) << "an explicit count wins";
  if (old) ::setenv("PPU_THREADS", saved.c_str(), 1);
}

TEST(FunctionalErrors, ArgumentWithoutHostData) {
  Kernel k = one_block_kernel("nodata", {TensorArg{DType::kF32, 16, nullptr, 0x1000, "x"}}, [](int64_t, TileProgram&) {});
  FunctionalExecutor ex(1);
  test::expect_error([&] { ex.run(k, kSram); }, {"'nodata'", "'x'", "no host data"});
}

TEST(FunctionalErrors, InvalidBlockIsReportedFromAnyThreadAndExecutorRecovers) {
  HostTensor t(DType::kF32, 64, 0.0f);
  Kernel k;
  k.name = "oob";
  k.grid = 8;
  k.args = {t.arg("t")};
  k.build = [](int64_t blk, TileProgram& p) {
    const auto x = p.alloc(DType::kF32, 1, 8, "x");
    p.fill(x, 1, 8, static_cast<float>(blk));
    // Block 5 stores past the end of its 64-element tensor.
    p.store({.arg = 0, .offset = blk == 5 ? 60 : blk * 8, .row_stride = 8, .rows = 1, .cols = 8}, x);
  };
  FunctionalExecutor ex(3);
  test::expect_error([&] { ex.run(k, kSram); }, {"kernel 'oob'", "block 5", "outside tensor 't'"});
  // The next run of a valid kernel on the same executor completes and writes every block.
  k.build = [](int64_t blk, TileProgram& p) {
    const auto x = p.alloc(DType::kF32, 1, 8, "x");
    p.fill(x, 1, 8, static_cast<float>(blk));
    p.store({.arg = 0, .offset = blk * 8, .row_stride = 8, .rows = 1, .cols = 8}, x);
  };
  ex.run(k, kSram);
  for (int i = 0; i < 64; ++i) EXPECT_EQ(t.get(i), static_cast<float>(i / 8));
}

TEST(FunctionalErrors, ProgramLargerThanSram) {
  HostTensor t(DType::kF32, 4, 0.0f);
  Kernel k = one_block_kernel("big", {t.arg("t")}, [](int64_t, TileProgram& p) { p.alloc(DType::kF32, 1024, 1024, "huge"); });
  FunctionalExecutor ex(2);
  test::expect_error([&] { ex.run(k, 512.0 * 1024); }, {"kernel 'big'", "SRAM"});
}

TEST(FunctionalExecutorDirect, ExecuteProgramRunsOneBuiltProgram) {
  HostTensor in(DType::kBF16, std::vector<float>{1, -2, 3, -4, 5, -6});
  HostTensor out(DType::kF32, 6, 0.0f);
  Kernel k = one_block_kernel("direct", {in.arg("in"), out.arg("out", 0x9000)}, nullptr);
  TileProgram p;
  const auto x = p.alloc(DType::kF32, 2, 3, "x");
  p.load(x, {.arg = 0, .offset = 0, .row_stride = 3, .rows = 2, .cols = 3});
  p.unary(UnaryOp::kAbs, x, x, 2, 3);
  p.store({.arg = 1, .offset = 0, .row_stride = 3, .rows = 2, .cols = 3}, x);
  std::vector<unsigned char> raw(static_cast<size_t>(p.sram_bytes()) + 64);
  auto* arena = raw.data() + ((64 - reinterpret_cast<uintptr_t>(raw.data()) % 64) % 64);
  execute_program(k, p, arena);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(out.get(i), static_cast<float>(i + 1));
}

TEST(FunctionalExecutorDirect, EmptyGridDoesNothing) {
  HostTensor t(DType::kF32, 4, 3.0f);
  Kernel k = one_block_kernel("empty", {t.arg("t")}, [](int64_t, TileProgram&) { ADD_FAILURE() << "built a block"; });
  k.grid = 0;
  FunctionalExecutor ex(2);
  ex.run(k, kSram);
  EXPECT_EQ(t.get(0), 3.0f);
}

}  // namespace
}  // namespace ppu
