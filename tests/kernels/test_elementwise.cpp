// Tests of kernels/Elementwise against unary_reference / binary_reference, on a functional device:
// every UnaryOp and BinaryOp, the triad, copies between every pair of dtypes, in-place use, sizes
// around the tile and block size, timing-only devices, and a size mismatch.
//
// Error metrics:
//  * binary ops: the vector unit does the same single IEEE fp32 operation as binary_reference, so
//    the result is exact: y == round_to(y's dtype, reference).
//  * unary ops: unary_reference evaluates some ops in double (silu, gelu, sigmoid) and the vector
//    unit in fp32 with a few roundings and library calls of about an ulp each, some cancelling (gelu
//    near its zero): |y - ref| <= 16 u max(|ref|, 1), u = 2^-24, then stored_bound for the dtype.
//  * triad a = b + s c: two fp32 roundings, |a - ref| <= u (|s c| + |ref|) with a 1% margin.
//  * copies: the DMA rounds once, RNE: exactly round_to(dst, x) (fp32 -> bf16: f32_to_bf16).
#include <gtest/gtest.h>

#include <cmath>

#include "KernelTestUtil.hpp"
#include "kernels/Elementwise.hpp"

namespace ppu {
namespace {

// Sizes: one element, odd, one tile, one past it, and more tiles than the persistent grid has
// blocks on any preset (kMapBlocksPerCore per core, 148 cores at most), ending in a partial tile.
const std::vector<int64_t> kSizes = {1, 7, kernels::kMapTile, kernels::kMapTile + 1,
                                     int64_t{kernels::kMapTile} * 301 + 4099};

const DType kAllTypes[] = {DType::kF32, DType::kBF16, DType::kF16, DType::kF8E4M3, DType::kF8E5M2};

// Input range for each op, inside its domain and away from poles.
std::pair<float, float> unary_domain(UnaryOp op) {
  switch (op) {
    case UnaryOp::kLog:
    case UnaryOp::kSqrt:
    case UnaryOp::kRsqrt: return {0.05f, 4.0f};
    case UnaryOp::kRecip: return {0.25f, 4.0f};
    case UnaryOp::kExp: return {-8.0f, 8.0f};
    default: return {-4.0f, 4.0f};
  }
}

TEST(Elementwise, EveryUnaryOpMatchesReference) {
  Device dev(load_chip("h100"));
  uint64_t seed = 3000;
  for (size_t o = 0; o < static_cast<size_t>(UnaryOp::kCount); ++o) {
    const auto op = static_cast<UnaryOp>(o);
    const float imm = op == UnaryOp::kScale ? 0.375f : op == UnaryOp::kAddImm ? -1.25f : 0.0f;
    const auto [lo, hi] = unary_domain(op);
    for (DType t : test::kFloatTypes)
      for (int64_t n : {int64_t{7}, int64_t{kernels::kMapTile} * 3 + 1}) {
        const std::vector<float> x = test::random_values(static_cast<size_t>(n), t, ++seed, lo, hi);
        Buffer xb = test::make_buffer(dev, t, x, "x");
        Buffer yb = dev.alloc(t, n, "y");
        kernels::unary(dev, op, xb, yb, imm);
        const std::vector<float> got = dev.download(yb);
        std::vector<double> ref(x.size());
        for (size_t i = 0; i < x.size(); ++i) ref[i] = kernels::unary_reference(op, x[i], imm);
        test::expect_within(
            got, ref,
            [&](size_t i) {
              return test::stored_bound(t, ref[i], 16 * test::kU32 * std::max(std::fabs(ref[i]), 1.0));
            },
            fmt::format("{} [{}] {}", kUnaryOpNames[o], n, dtype_name(t)));
        dev.free(xb);
        dev.free(yb);
      }
  }
}

TEST(Elementwise, EveryBinaryOpIsExact) {
  Device dev(load_chip("h100"));
  uint64_t seed = 3100;
  for (size_t o = 0; o < static_cast<size_t>(BinaryOp::kCount); ++o) {
    const auto op = static_cast<BinaryOp>(o);
    if (op == BinaryOp::kSelect) continue;  // no flat-map kernel (see RejectsSelect)
    for (DType t : test::kFloatTypes)
      for (int64_t n : t == DType::kF32 ? kSizes : std::vector<int64_t>{7, kernels::kMapTile + 1}) {
        const auto un = static_cast<size_t>(n);
        const std::vector<float> a = test::random_values(un, t, ++seed, -4.0f, 4.0f);
        // Divisors kept away from zero: b in [0.25, 4).
        const std::vector<float> b = op == BinaryOp::kDiv ? test::random_values(un, t, ++seed, 0.25f, 4.0f)
                                                          : test::random_values(un, t, ++seed, -4.0f, 4.0f);
        Buffer ab = test::make_buffer(dev, t, a, "a"), bb = test::make_buffer(dev, t, b, "b");
        Buffer yb = dev.alloc(t, n, "y");
        kernels::binary(dev, op, ab, bb, yb);
        const std::vector<float> got = dev.download(yb);
        int bad = 0;
        for (size_t i = 0; i < un; ++i) {
          const float want = round_to(t, kernels::binary_reference(op, a[i], b[i]));
          if (got[i] != want && ++bad <= 3)
            ADD_FAILURE() << kBinaryOpNames[o] << " [" << n << "] " << dtype_name(t) << " element " << i << ": "
                          << got[i] << " != " << want;
        }
        dev.free(ab);
        dev.free(bb);
        dev.free(yb);
      }
  }
}

TEST(Elementwise, TriadMatchesReference) {
  Device dev(load_chip("zhenwu-810e"));
  const float s = 0.4f;
  uint64_t seed = 3200;
  for (DType t : test::kFloatTypes)
    for (int64_t n : kSizes) {
      const auto un = static_cast<size_t>(n);
      const std::vector<float> b = test::random_values(un, t, ++seed), c = test::random_values(un, t, ++seed);
      Buffer bb = test::make_buffer(dev, t, b, "b"), cb = test::make_buffer(dev, t, c, "c");
      Buffer ab = dev.alloc(t, n, "a");
      kernels::triad(dev, bb, cb, ab, s);
      const std::vector<float> got = dev.download(ab);
      std::vector<double> ref(un);
      for (size_t i = 0; i < un; ++i) ref[i] = double(b[i]) + double(s) * double(c[i]);
      test::expect_within(
          got, ref,
          [&](size_t i) {
            const double e = 1.01 * test::kU32 * (std::fabs(double(s) * c[i]) + std::fabs(ref[i]));
            return test::stored_bound(t, ref[i], e);
          },
          fmt::format("triad [{}] {}", n, dtype_name(t)));
      dev.free(bb);
      dev.free(cb);
      dev.free(ab);
    }
}

TEST(Elementwise, CopyConvertsBetweenEveryPairOfDtypes) {
  Device dev(load_chip("h100"));
  const int64_t n = kernels::kMapTile * 3 + 17;
  uint64_t seed = 3300;
  for (DType from : kAllTypes)
    for (DType to : kAllTypes) {
      // Beyond fp8 e4m3's 448, so that its saturation is exercised too.
      const std::vector<float> x = test::random_values(static_cast<size_t>(n), from, ++seed, -600.0f, 600.0f);
      Buffer src = test::make_buffer(dev, from, x, "src");
      Buffer dst = dev.alloc(to, n, "dst");
      kernels::copy(dev, src, dst);
      const std::vector<float> got = dev.download(dst);
      int bad = 0;
      for (size_t i = 0; i < x.size(); ++i) {
        const float want = round_to(to, x[i]);
        if (got[i] != want && ++bad <= 3)
          ADD_FAILURE() << dtype_name(from) << "->" << dtype_name(to) << " element " << i << ": " << got[i]
                        << " != " << want;
      }
      dev.free(src);
      dev.free(dst);
    }
}

TEST(Elementwise, CopyFp32ToBf16RoundsEachValueToNearestEven) {
  Device dev(load_chip("h100"));
  const int64_t n = kernels::kMapTile + 5;
  std::vector<float> x = test::random_values(static_cast<size_t>(n), DType::kF32, 3400, -3.0f, 3.0f);
  // Exact ties between two bf16 values: 1 + 2^-8 rounds down to even 1, 1 + 3 * 2^-8 up to 1 + 2^-6.
  x[0] = 1.0f + std::ldexp(1.0f, -8);
  x[1] = 1.0f + 3 * std::ldexp(1.0f, -8);
  Buffer src = test::make_buffer(dev, DType::kF32, x, "src");
  Buffer dst = dev.alloc(DType::kBF16, n, "dst");
  kernels::copy(dev, src, dst);
  std::vector<uint16_t> bits(static_cast<size_t>(n));
  dev.copy_to_host(bits.data(), dst);
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(bits[i], f32_to_bf16(x[i])) << "element " << i << " = " << x[i];
  EXPECT_EQ(bf16_to_f32(bits[0]), 1.0f);
  EXPECT_EQ(bf16_to_f32(bits[1]), 1.0f + std::ldexp(1.0f, -6));
}

TEST(Elementwise, InPlace) {
  Device dev(load_chip("h100"));
  const int64_t n = kSizes.back();
  const auto un = static_cast<size_t>(n);
  const std::vector<float> x = test::random_values(un, DType::kF32, 3500, -4.0f, 4.0f);
  const std::vector<float> z = test::random_values(un, DType::kF32, 3501, -4.0f, 4.0f);
  Buffer xb = test::make_buffer(dev, DType::kF32, x, "x"), zb = test::make_buffer(dev, DType::kF32, z, "z");
  kernels::unary(dev, UnaryOp::kNeg, xb, xb);    // x = -x
  kernels::binary(dev, BinaryOp::kAdd, xb, zb, xb);  // x = -x + z
  kernels::triad(dev, xb, zb, xb, 2.0f);         // x = (-x + z) + 2 z
  const std::vector<float> got = dev.download(xb);
  for (size_t i = 0; i < un; ++i) {
    const float want = (-x[i] + z[i]) + 2.0f * z[i];
    ASSERT_EQ(got[i], want) << "element " << i;
  }
}

TEST(Elementwise, TimingOnlyDevicesRunThemWithPositiveTime) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  const int64_t n = int64_t{1} << 28;  // 512 MiB of bf16 per buffer: counted in simulated HBM only
  Buffer a = dev.alloc(DType::kBF16, n, "a"), b = dev.alloc(DType::kBF16, n, "b"), c = dev.alloc(DType::kF32, n, "c");
  const KernelTiming times[] = {kernels::copy(dev, a, c), kernels::unary(dev, UnaryOp::kSilu, a, b),
                                kernels::binary(dev, BinaryOp::kMul, a, b, c), kernels::triad(dev, a, b, c, 0.4f)};
  for (const KernelTiming& t : times) {
    EXPECT_GT(t.time_s, 0.0) << t.name;
    EXPECT_GT(t.hbm_read_bytes, 0.0) << t.name;
  }
  EXPECT_GT(dev.synchronize(), 0.0);
}

TEST(Elementwise, RejectsMismatchedNumel) {
  Device dev(load_chip("h100"));
  Buffer a = dev.alloc(DType::kF32, 100, "a"), b = dev.alloc(DType::kF32, 101, "b"), y = dev.alloc(DType::kF32, 100, "y");
  test::expect_error([&] { kernels::binary(dev, BinaryOp::kAdd, a, b, y); },
                     {"add", "input 'b'", "101 elements", "[100] of the output", "needs 100"});
  test::expect_error([&] { kernels::copy(dev, b, y); }, {"copy fp32->fp32", "input 'b'", "101 elements"});
}

TEST(Elementwise, RejectsSelect) {
  Device dev(load_chip("h100"));
  Buffer a = dev.alloc(DType::kF32, 100, "a"), y = dev.alloc(DType::kF32, 100, "y");
  test::expect_error([&] { kernels::binary(dev, BinaryOp::kSelect, a, a, y); },
                     {"binary", "select", "reads its output"});
}

}  // namespace
}  // namespace ppu
