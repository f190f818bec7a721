// Tests of sim/HostIsa (the PPU_HOST_ISA switch) and of the host kernels on every SIMD path this CPU
// supports. The matrix unit's blocked path sums each output in increasing k with exact products, so
// its results must be bit-identical on every path and equal a sequential fp32 loop (tolerance 0).
// The decode dot path and the vector unit's sums reassociate: they are checked against the
// sequential sum within the fp32 accumulation bound (k+1) * 2^-24 * sum|terms|, twice that allowed,
// as in test_mma.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "TestUtil.hpp"
#include "sim/HostIsa.hpp"
#include "sim/Mma.hpp"
#include "sim/VectorOps.hpp"

namespace ppu {
namespace {

// Restores the path that was requested before the test (PPU_HOST_ISA, when CI forces one).
class HostIsa : public ::testing::Test {
 protected:
  void SetUp() override { saved_ = host_isa_requested(); }
  void TearDown() override { set_host_isa(saved_); }
  std::string saved_;
};

TEST_F(HostIsa, EnvironmentChoosesThePath) {
  // scripts/test.sh runs the kernel tests a second time with PPU_HOST_ISA=scalar.
  const char* env = std::getenv("PPU_HOST_ISA");
  EXPECT_EQ(saved_, env && *env ? std::string(env) : std::string("auto"));
  if (saved_ != "auto" && saved_ != "avx512bf16") {
    EXPECT_EQ(host_isa_active(), saved_);
  }
}

TEST_F(HostIsa, UnknownNameListsWhatThisBinaryHasAndThisCpuSupports) {
  const std::vector<std::string> compiled = host_isa_compiled(), supported = host_isa_supported();
  ASSERT_FALSE(compiled.empty());
  EXPECT_EQ(compiled.front(), "auto");
  EXPECT_NE(std::find(compiled.begin(), compiled.end(), "scalar"), compiled.end());
  std::string joined_compiled, joined_supported;
  for (const auto& s : compiled) joined_compiled += (joined_compiled.empty() ? "" : ", ") + s;
  for (const auto& s : supported) joined_supported += (joined_supported.empty() ? "" : ", ") + s;
  test::expect_error([] { set_host_isa("avx1024"); },
                     {"avx1024", "unknown host SIMD path", "this binary has: " + joined_compiled,
                      "this CPU supports: " + joined_supported});
  EXPECT_EQ(host_isa_requested(), saved_) << "a refused name must leave the previous choice in place";
}

TEST_F(HostIsa, UnsupportedNameIsRefusedNamingWhatThisCpuSupports) {
  const std::vector<std::string> compiled = host_isa_compiled(), supported = host_isa_supported();
  std::string missing;
  for (const auto& s : compiled)
    if (std::find(supported.begin(), supported.end(), s) == supported.end()) missing = s;
  if (missing.empty()) GTEST_SKIP() << "this CPU runs every path compiled into the binary";
  test::expect_error([&] { set_host_isa(missing); }, {missing, "this CPU cannot run", "this CPU supports: auto"});
}

TEST_F(HostIsa, EverySupportedPathIsTakenWhenAsked) {
  for (const std::string& name : host_isa_supported()) {
    set_host_isa(name);
    EXPECT_EQ(host_isa_requested(), name);
    if (name == "auto") continue;
    if (name == "avx512bf16") {
      EXPECT_TRUE(mma_has_avx512bf16());
      continue;
    }
    // Highway may run a narrower target than asked only if the asked one is not compiled in, which
    // host_isa_supported() excludes.
    EXPECT_EQ(host_isa_active(), name);
    EXPECT_FALSE(mma_has_avx512bf16()) << name << " must not use the AVX512-BF16 micro-kernels";
  }
}

// A [m, k] (or [k, m]) times B [k, n] (or [n, k]) in `t` on the current path.
std::vector<float> run_mma(DType t, int m, int n, int k, bool ta, bool tb, const std::vector<float>& af,
                           const std::vector<float>& bf, const std::vector<float>& c0) {
  std::vector<unsigned char> a(af.size() * dtype_size_bytes(t)), b(bf.size() * dtype_size_bytes(t));
  convert_from_f32(t, af.data(), a.data(), static_cast<int64_t>(af.size()));
  convert_from_f32(t, bf.data(), b.data(), static_cast<int64_t>(bf.size()));
  std::vector<float> c = c0;
  MmaScratch s;
  mma_tile(t, a.data(), ta ? m : k, ta, b.data(), tb ? k : n, tb, c.data(), n, m, n, k, /*accumulate=*/true, s);
  return c;
}

TEST_F(HostIsa, BlockedMmaIsBitIdenticalOnEveryPathAndToASequentialLoop) {
  // Shapes around the micro-tile (6 rows, 2 vectors of columns) and the k chunk (256), every
  // transpose; m > 4 so that no decode dot path is taken.
  struct Shape {
    int m, n, k;
  };
  for (DType t : {DType::kBF16, DType::kF16, DType::kF8E4M3, DType::kF8E5M2})
    for (const Shape sh : {Shape{7, 33, 300}, Shape{13, 16, 5}, Shape{6, 65, 257}})
      for (int f = 0; f < 4; ++f) {
        const bool ta = f & 1, tb = f & 2;
        const float range = dtype_is_fp8(t) ? 4.0f : 1.0f;
        const auto af = test::random_values(static_cast<size_t>(sh.m) * sh.k, t, 7 + f, -range, range);
        const auto bf = test::random_values(static_cast<size_t>(sh.k) * sh.n, t, 9 + f, -range, range);
        const auto c0 = test::random_values(static_cast<size_t>(sh.m) * sh.n, DType::kF32, 11, -1.0f, 1.0f);
        std::vector<float> ref = c0;  // sequential fp32: one rounding per addition, products exact
        for (int i = 0; i < sh.m; ++i)
          for (int j = 0; j < sh.n; ++j)
            for (int p = 0; p < sh.k; ++p) {
              const float av = ta ? af[static_cast<size_t>(p) * sh.m + i] : af[static_cast<size_t>(i) * sh.k + p];
              const float bv = tb ? bf[static_cast<size_t>(j) * sh.k + p] : bf[static_cast<size_t>(p) * sh.n + j];
              ref[static_cast<size_t>(i) * sh.n + j] += av * bv;
            }
        for (const std::string& name : host_isa_supported()) {
          if (name == "auto" || (name == "avx512bf16" && t == DType::kBF16)) continue;  // VDPBF16PS: pairs first
          set_host_isa(name);
          ASSERT_EQ(run_mma(t, sh.m, sh.n, sh.k, ta, tb, af, bf, c0), ref)
              << name << " " << dtype_name(t) << " m=" << sh.m << " n=" << sh.n << " k=" << sh.k << " ta=" << ta
              << " tb=" << tb;
        }
      }
}

TEST_F(HostIsa, DecodeDotPathOnEveryPathWithinTheSummationBound) {
  for (DType t : {DType::kBF16, DType::kF16})
    for (int m = 1; m <= 4; ++m)
      for (int k : {1, 31, 300}) {
        const int n = 37;  // four streams of 9 rows plus one left over
        const auto af = test::random_values(static_cast<size_t>(m) * k, t, 21 + m, -1.0f, 1.0f);
        const auto bf = test::random_values(static_cast<size_t>(n) * k, t, 23 + k, -1.0f, 1.0f);
        const auto c0 = test::random_values(static_cast<size_t>(m) * n, DType::kF32, 25, -1.0f, 1.0f);
        for (const std::string& name : host_isa_supported()) {
          set_host_isa(name);
          const auto c = run_mma(t, m, n, k, false, true, af, bf, c0);
          for (int i = 0; i < m; ++i)
            for (int j = 0; j < n; ++j) {
              double ref = c0[static_cast<size_t>(i) * n + j], mag = std::fabs(ref);
              for (int p = 0; p < k; ++p) {
                const double v = double(af[static_cast<size_t>(i) * k + p]) * bf[static_cast<size_t>(j) * k + p];
                ref += v;
                mag += std::fabs(v);
              }
              ASSERT_NEAR(c[static_cast<size_t>(i) * n + j], ref, 2.0 * (k + 1) * std::ldexp(1.0, -24) * mag)
                  << name << " " << dtype_name(t) << " m=" << m << " k=" << k << " at [" << i << "," << j << "]";
            }
          EXPECT_EQ(run_mma(t, m, n, k, false, true, af, bf, c0), c) << name << ": not deterministic";
        }
      }
}

TEST_F(HostIsa, Fp16SpecialValuesWidenExactlyOnEveryPath) {
  // Subnormals, the largest finite value, inf and NaN in A; B all ones. Row 0 holds an inf, row 1 a
  // NaN; the others only finite values. Blocked path (m = 7) and dot path (m = 1, B stored [n, k]).
  const int k = 24, n = 19;
  const float sub = std::ldexp(1.0f, -24);  // the smallest fp16 subnormal
  for (int m : {7, 1}) {
    std::vector<float> af(static_cast<size_t>(m) * k);
    for (size_t i = 0; i < af.size(); ++i) af[i] = (i % 3 == 0 ? 65504.0f : 3 * sub) * (i % 2 ? -1.0f : 1.0f);
    af[0] = std::numeric_limits<float>::infinity();
    if (m > 1) af[static_cast<size_t>(k) + 3] = std::numeric_limits<float>::quiet_NaN();
    const std::vector<float> bf(static_cast<size_t>(k) * n, 1.0f), c0(static_cast<size_t>(m) * n, 0.0f);
    std::vector<float> ref = c0;
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j)
        for (int p = 0; p < k; ++p) ref[static_cast<size_t>(i) * n + j] += af[static_cast<size_t>(i) * k + p];
    for (const std::string& name : host_isa_supported()) {
      set_host_isa(name);
      const auto c = run_mma(DType::kF16, m, n, k, false, /*tb=*/m == 1, af, bf, c0);
      for (size_t i = 0; i < c.size(); ++i) {
        if (std::isnan(ref[i])) {
          ASSERT_TRUE(std::isnan(c[i])) << name << " m=" << m << " at " << i;
        } else if (m == 1 && std::isfinite(ref[i])) {  // the dot path reassociates: within the bound
          ASSERT_NEAR(c[i], ref[i], 2.0 * (k + 1) * std::ldexp(1.0, -24) * 65504.0 * k) << name << " at " << i;
        } else {
          ASSERT_EQ(c[i], ref[i]) << name << " m=" << m << " at " << i;
        }
      }
    }
  }
}

TEST_F(HostIsa, VectorUnitOnEveryPath) {
  // IEEE operations give the same bits on every path; sums stay within the accumulation bound.
  const int64_t n = 103;
  const auto a = test::random_values(n, DType::kF32, 31, -2.0f, 2.0f);
  const auto b = test::random_values(n, DType::kF32, 32, 0.5f, 2.0f);
  double sum = 0, mag = 0;
  for (float v : a) sum += v, mag += std::fabs(v);
  for (const std::string& name : host_isa_supported()) {
    set_host_isa(name);
    std::vector<float> d(n);
    vec_binary(BinaryOp::kDiv, a.data(), b.data(), d.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(d[i], a[i] / b[i]) << name << " at " << i;
    EXPECT_NEAR(vec_reduce(ReduceOp::kSum, a.data(), n), sum, 2.0 * (n + 1) * std::ldexp(1.0, -24) * mag) << name;
    EXPECT_EQ(vec_argmax(a.data(), n), std::max_element(a.begin(), a.end()) - a.begin()) << name;
  }
}

}  // namespace
}  // namespace ppu
