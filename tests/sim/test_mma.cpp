// Tests of sim/Mma: mma_tile on odd shapes, every transpose combination and every matrix-unit dtype,
// against a double reference. Tolerance: fp32 accumulation of k+1 exact products in any order is
// within (k+1) * 2^-24 * sum|terms| of the exact sum; we allow twice that.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "TestUtil.hpp"
#include "sim/Mma.hpp"

namespace ppu {
namespace {

// Random values of `t` stored as raw elements of `t` in a [rows, ld] array (the pad columns hold
// values too, so a kernel that reads past the extent picks up garbage and fails the check).
struct RawMatrix {
  DType t;
  int rows, ld;
  std::vector<unsigned char> bytes;
  RawMatrix(DType type, int r, int l, uint64_t seed, float range) : t(type), rows(r), ld(l) {
    const auto v = test::random_values(static_cast<size_t>(r) * l, t, seed, -range, range);
    bytes.resize(v.size() * dtype_size_bytes(t));
    convert_from_f32(t, v.data(), bytes.data(), static_cast<int64_t>(v.size()));
  }
  double at(int r, int c) const { return load_as_f32(t, bytes.data() + (int64_t{r} * ld + c) * dtype_size_bytes(t)); }
};

void check_mma(DType t, int m, int n, int k, bool ta, bool tb, bool acc, uint64_t seed) {
  const float range = dtype_is_fp8(t) ? 8.0f : 2.0f;
  // Leading dimensions larger than the extents, odd where possible.
  const int lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;
  RawMatrix a(t, ta ? k : m, lda, seed, range);
  RawMatrix b(t, tb ? n : k, ldb, seed + 1, range);
  std::vector<float> c0 = test::random_values(static_cast<size_t>(m) * ldc, DType::kF32, seed + 2, -4.0f, 4.0f);
  std::vector<float> c = c0;
  MmaScratch scratch;
  mma_tile(t, a.bytes.data(), lda, ta, b.bytes.data(), ldb, tb, c.data(), ldc, m, n, k, acc, scratch);
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < ldc; ++j) {
      const size_t ci = static_cast<size_t>(i) * ldc + j;
      if (j >= n) {
        ASSERT_EQ(c[ci], c0[ci]) << "c[" << i << "," << j << "] lies outside n and must not change";
        continue;
      }
      double ref = acc ? c0[ci] : 0.0, mag = std::fabs(ref);
      for (int p = 0; p < k; ++p) {
        const double av = ta ? a.at(p, i) : a.at(i, p);
        const double bv = tb ? b.at(j, p) : b.at(p, j);
        ref += av * bv;
        mag += std::fabs(av * bv);
      }
      const double tol = 2.0 * (k + 1) * std::ldexp(1.0, -24) * mag;
      ASSERT_NEAR(c[ci], ref, tol) << dtype_name(t) << " m=" << m << " n=" << n << " k=" << k << " ta=" << ta
                                   << " tb=" << tb << " acc=" << acc << " at [" << i << "," << j << "]";
    }
  }
}

class MmaTile : public ::testing::TestWithParam<DType> {};

TEST_P(MmaTile, OddShapesEveryTransposeAgainstDoubleReference) {
  const DType t = GetParam();
  const int sizes[] = {1, 3, 17, 33, 65};
  uint64_t seed = 1000;
  for (int m : sizes)
    for (int n : sizes)
      for (int k : sizes)
        for (int f = 0; f < 4; ++f) {
          check_mma(t, m, n, k, (f & 1) != 0, (f & 2) != 0, /*acc=*/((m + n + k + f) & 1) != 0, seed += 3);
          if (HasFatalFailure()) return;
        }
}

TEST_P(MmaTile, AccumulateAddsAndOverwriteIgnoresPriorContents) {
  const DType t = GetParam();
  // A = ones [2, 4], B = ones [4, 3]: every product sum is exactly 4.
  std::vector<unsigned char> a(8 * dtype_size_bytes(t)), b(12 * dtype_size_bytes(t));
  const std::vector<float> ones(12, 1.0f);
  convert_from_f32(t, ones.data(), a.data(), 8);
  convert_from_f32(t, ones.data(), b.data(), 12);
  MmaScratch s;
  std::vector<float> c(6, 10.0f);
  mma_tile(t, a.data(), 4, false, b.data(), 3, false, c.data(), 3, 2, 3, 4, /*accumulate=*/true, s);
  for (float v : c) EXPECT_EQ(v, 14.0f);
  mma_tile(t, a.data(), 4, false, b.data(), 3, false, c.data(), 3, 2, 3, 4, /*accumulate=*/false, s);
  for (float v : c) EXPECT_EQ(v, 4.0f);
}

TEST_P(MmaTile, ScratchIsReusableAcrossShapes) {
  // One scratch object through a large then a small then a large call (the executor keeps one per
  // thread): results must not depend on what an earlier call left in it.
  const DType t = GetParam();
  MmaScratch s;
  for (int rep = 0; rep < 2; ++rep)
    for (int sz : {65, 3, 33}) {
      RawMatrix a(t, sz, sz, 50 + sz, 1.0f), b(t, sz, sz, 60 + sz, 1.0f);
      std::vector<float> c1(static_cast<size_t>(sz) * sz, 0.0f), c2 = c1;
      mma_tile(t, a.bytes.data(), sz, false, b.bytes.data(), sz, true, c1.data(), sz, sz, sz, sz, false, s);
      MmaScratch fresh;
      mma_tile(t, a.bytes.data(), sz, false, b.bytes.data(), sz, true, c2.data(), sz, sz, sz, sz, false, fresh);
      ASSERT_EQ(c1, c2) << "size " << sz << " rep " << rep;
    }
}

INSTANTIATE_TEST_SUITE_P(MatrixDtypes, MmaTile,
                         ::testing::Values(DType::kBF16, DType::kF16, DType::kF8E4M3, DType::kF8E5M2),
                         [](const ::testing::TestParamInfo<DType>& i) { return std::string(dtype_name(i.param)); });

}  // namespace
}  // namespace ppu
