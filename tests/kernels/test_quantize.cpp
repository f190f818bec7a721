// Per-row int8 quantisation (kernels/Quantize) against its scalar reference, which performs the same
// fp32 operations in the same order: scales and int8 values must be bit-identical. Also checked
// against the definition: |x - q * s| <= s / 2 (plus the fp32 rounding of x / s, relative 2^-24)
// and |q| <= 127. Shapes: one element, primes, a zero row, rows longer than one tile (the
// two-pass path), and bf16/fp16/fp32 inputs.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "TestUtil.hpp"
#include "kernels/Quantize.hpp"

namespace ppu {
namespace {

void check_quantize(int64_t rows, int64_t cols, DType in_t, uint64_t seed, bool zero_row = false) {
  Device dev(load_chip("a800"));
  auto xv = test::random_values(static_cast<size_t>(rows * cols), in_t, seed, -3.0f, 3.0f);
  if (zero_row)
    for (int64_t c = 0; c < cols; ++c) xv[static_cast<size_t>(c)] = 0.0f;
  Buffer x = dev.alloc(in_t, rows * cols, "x"), q = dev.alloc(DType::kI8, rows * cols, "q");
  Buffer s = dev.alloc(DType::kF32, rows, "scale");
  dev.upload(x, xv);
  kernels::quantize_rows_int8(dev, x, q, s, rows, cols);
  std::vector<int8_t> qref;
  std::vector<float> sref;
  kernels::quantize_rows_int8_reference(xv, rows, cols, qref, sref);
  const auto* qg = static_cast<const int8_t*>(q.data);
  const auto sg = dev.download(s);
  const std::string what = fmt::format("[{}, {}] {}", rows, cols, dtype_name(in_t));
  for (int64_t r = 0; r < rows; ++r) {
    ASSERT_EQ(f32_bits(sg[static_cast<size_t>(r)]), f32_bits(sref[static_cast<size_t>(r)])) << what << " row " << r;
    const double sc = sref[static_cast<size_t>(r)];
    for (int64_t c = 0; c < cols; ++c) {
      const size_t i = static_cast<size_t>(r * cols + c);
      ASSERT_EQ(qg[i], qref[i]) << what << " at [" << r << ", " << c << "]";
      ASSERT_LE(std::abs(int{qg[i]}), 127);
      ASSERT_LE(std::fabs(xv[i] - qg[i] * sc), sc / 2 + std::ldexp(std::fabs(xv[i]), -23)) << what;
    }
  }
}

TEST(QuantizeRowsInt8, BitIdenticalToTheReference) {
  uint64_t seed = 1;
  for (DType t : {DType::kBF16, DType::kF16, DType::kF32}) {
    check_quantize(1, 1, t, seed++);
    check_quantize(7, 13, t, seed++);
    check_quantize(300, 97, t, seed++);
  }
  check_quantize(3, 1000, DType::kBF16, seed++, /*zero_row=*/true);
}

TEST(QuantizeRowsInt8, RowsLongerThanATileTakeTwoPasses) {
  check_quantize(3, kernels::kQuantizeTileElems * 2 + 5, DType::kBF16, 40);
}

TEST(QuantizeRowsInt8, ZeroRowGetsTheSmallestScaleAndZeros) {
  Device dev(load_chip("h100"));
  Buffer x = dev.alloc(DType::kBF16, 8, "x"), q = dev.alloc(DType::kI8, 8, "q"), s = dev.alloc(DType::kF32, 1, "s");
  dev.upload(x, std::vector<float>(8, 0.0f));
  kernels::quantize_rows_int8(dev, x, q, s, 1, 8);
  EXPECT_EQ(dev.download(s)[0], kernels::kQuantizeMinScale);
  for (float v : dev.download(q)) EXPECT_EQ(v, 0.0f);
  // The row's largest magnitude maps to +-127 exactly.
  dev.upload(x, {0.5f, -2.0f, 1.0f, 0, 0, 0, 0, 0.25f});
  kernels::quantize_rows_int8(dev, x, q, s, 1, 8);
  EXPECT_EQ(dev.download(q)[1], -127.0f);
}

// Timed as the memory-bound kernel it is: reads 2 bytes (bf16) and writes 1 byte per element, at no
// more than the HBM peak and - for a large tensor - within a small factor of it.
TEST(QuantizeRowsInt8, TimedAsMemoryWork) {
  for (const char* name : {"h100", "zhenwu-810e"}) {
    const ChipSpec chip = load_chip(name);
    Device dev(chip, ExecMode::kTimingOnly);
    const int64_t rows = 4096, cols = 8192;
    Buffer x = dev.alloc(DType::kBF16, rows * cols, "x"), q = dev.alloc(DType::kI8, rows * cols, "q");
    Buffer s = dev.alloc(DType::kF32, rows, "s");
    const KernelTiming t = kernels::quantize_rows_int8(dev, x, q, s, rows, cols);
    const double bytes = 3.0 * rows * cols;
    EXPECT_GE(t.hbm_read_bytes + t.l2_hit_bytes, 2.0 * rows * cols) << name;
    EXPECT_GE(t.time_s, bytes / chip.hbm_bandwidth.value) << name;
    EXPECT_LT(t.time_s, 3.0 * bytes / (chip.hbm_bandwidth.value * chip.hbm_write_efficiency.value)) << name;
  }
}

TEST(QuantizeRowsInt8, BadInput) {
  Device dev(load_chip("h100"));
  Buffer x = dev.alloc(DType::kBF16, 12, "x"), q = dev.alloc(DType::kI8, 12, "q"), s = dev.alloc(DType::kF32, 3, "s");
  Buffer q16 = dev.alloc(DType::kBF16, 12, "q16"), s_short = dev.alloc(DType::kF32, 2, "s2");
  Buffer x8 = dev.alloc(DType::kI8, 12, "x8");
  test::expect_error([&] { kernels::quantize_rows_int8(dev, x, q, s, 0, 4); }, {"quantize_rows_int8", "rows = 0"});
  test::expect_error([&] { kernels::quantize_rows_int8(dev, x, q16, s, 3, 4); },
                     {"quantize_rows_int8", "output q", "bf16", "valid: int8"});
  test::expect_error([&] { kernels::quantize_rows_int8(dev, x8, q, s, 3, 4); },
                     {"quantize_rows_int8", "input x", "int8", "valid: bf16, fp16, fp32"});
  test::expect_error([&] { kernels::quantize_rows_int8(dev, x, q, s_short, 3, 4); },
                     {"quantize_rows_int8", "output scale", "has 2 elements", "[3] (rows)"});
  test::expect_error([&] { kernels::quantize_rows_int8(dev, x, q, s, 4, 4); },
                     {"quantize_rows_int8", "input x", "has 12 elements", "[4, 4]"});
}

}  // namespace
}  // namespace ppu
