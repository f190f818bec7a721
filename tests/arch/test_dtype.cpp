// Tests of arch/DType: every storage conversion against an independent reference.
//
//  * bf16: the two bf16 neighbours of |x| are its truncation and the next code up; the reference
//    picks the nearer one in exact double arithmetic, ties to the even code.
//  * fp16: GCC's _Float16 (IEEE binary16, conversions in round-to-nearest-even) on x86-64.
//  * fp8 e4m3 / e5m2: a decoder written from the OCP FP8 spec, and an encoder that searches all
//    128 non-negative codes for the nearest value (ties to the even code), then applies the
//    overflow rule of each format (e4m3: saturate to 448; e5m2: round to inf).
//  * Bulk convert_to_f32 / convert_from_f32 against the scalar functions, for every dtype.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "TestUtil.hpp"
#include "arch/DType.hpp"

namespace ppu {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<DType> all_dtypes() {
  std::vector<DType> v;
  for (int i = 0; i < static_cast<int>(DType::kCount); ++i) v.push_back(static_cast<DType>(i));
  return v;
}

// Floats that exercise every exponent with the interesting low-half patterns (exact bf16 codes,
// just above/below ties, ties), plus seeded random bit patterns and named edge values.
std::vector<float> test_floats(size_t random_count, uint64_t seed) {
  std::vector<float> v;
  const uint32_t lows[] = {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu, 0x4000u, 0xc000u};
  for (uint32_t hi = 0; hi < 65536; ++hi)
    for (uint32_t lo : lows) v.push_back(f32_from_bits((hi << 16) | lo));
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < random_count; ++i) v.push_back(f32_from_bits(static_cast<uint32_t>(rng())));
  const float edges[] = {0.0f,
                         -0.0f,
                         kInf,
                         -kInf,
                         kNaN,
                         -kNaN,
                         std::numeric_limits<float>::max(),
                         -std::numeric_limits<float>::max(),
                         std::numeric_limits<float>::min(),
                         std::numeric_limits<float>::denorm_min(),
                         -std::numeric_limits<float>::denorm_min(),
                         1.0f,
                         -1.0f,
                         65504.0f,
                         65519.99f,
                         65520.0f,
                         448.0f,
                         464.0f,
                         57344.0f,
                         61440.0f};
  for (float e : edges) v.push_back(e);
  return v;
}

// ---------------------------------------------------------------------------------------------
// bf16

// Magnitude of the bf16 code `c` (sign bit clear), in exact double arithmetic. The code just past
// the largest finite one (0x7f80, inf) is given the value 2^128, the next binade's first value,
// which is the neighbour IEEE rounding measures overflow against.
double bf16_magnitude(uint32_t c) {
  const int exp = static_cast<int>(c >> 7);
  const int man = static_cast<int>(c & 0x7f);
  if (exp == 0) return std::ldexp(static_cast<double>(man), 1 - 127 - 7);
  return std::ldexp(static_cast<double>(128 + man), exp - 127 - 7);
}

uint16_t bf16_reference(float x) {
  const uint32_t u = f32_bits(x);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a == 0x7f800000u) return static_cast<uint16_t>(sign | 0x7f80u);
  const uint32_t lo = a >> 16;  // largest bf16 magnitude <= |x|
  const uint32_t hi = lo + 1;   // smallest bf16 magnitude > |x| (if |x| is not exact)
  const double ax = std::fabs(static_cast<double>(x));
  const double d_lo = ax - bf16_magnitude(lo);
  const double d_hi = bf16_magnitude(hi) - ax;
  uint32_t r;
  if (d_lo < d_hi) r = lo;
  else if (d_hi < d_lo) r = hi;
  else r = (lo & 1u) ? hi : lo;
  return static_cast<uint16_t>(sign | r);
}

TEST(DTypeBf16, DecodeIsUpperHalfOfFp32) {
  // bf16 is by definition the top 16 bits of an fp32: check the decoded value against the
  // definition in exact arithmetic for every code.
  for (uint32_t c = 0; c < 65536; ++c) {
    const float f = bf16_to_f32(static_cast<uint16_t>(c));
    const uint32_t mag = c & 0x7fffu;
    if ((mag >> 7) == 0xff) {
      if ((mag & 0x7f) == 0) {
        EXPECT_TRUE(std::isinf(f)) << std::hex << c;
      } else {
        EXPECT_TRUE(std::isnan(f)) << std::hex << c;
      }
      continue;
    }
    const double expect = ((c & 0x8000u) ? -1.0 : 1.0) * bf16_magnitude(mag);
    ASSERT_EQ(static_cast<double>(f), expect) << std::hex << c;
  }
}

TEST(DTypeBf16, EncodeIsRoundToNearestEvenAgainstReference) {
  const auto xs = test_floats(1'000'000, 1);
  int64_t bad = 0;
  for (float x : xs) {
    const uint16_t got = f32_to_bf16(x);
    if (std::isnan(x)) {
      // NaN stays a quiet NaN.
      EXPECT_TRUE(std::isnan(bf16_to_f32(got))) << std::hex << f32_bits(x);
      EXPECT_NE(got & 0x0040u, 0u) << "NaN must be quiet, input " << std::hex << f32_bits(x);
      continue;
    }
    const uint16_t want = bf16_reference(x);
    if (got != want && ++bad <= 10)
      ADD_FAILURE() << "f32_to_bf16(" << std::hexfloat << x << " = 0x" << std::hex << f32_bits(x) << ") = 0x" << got
                    << ", reference 0x" << want;
  }
  EXPECT_EQ(bad, 0);
}

TEST(DTypeBf16, NamedTiesAndOverflow) {
  // 1 + 2^-8 lies halfway between 1 (even code 0x3f80) and 1 + 2^-7 (odd code 0x3f81): even wins.
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80u);
  // 1 + 3*2^-8 lies halfway between 0x3f81 (odd) and 0x3f82 (even): rounds up.
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82u);
  // Just above a tie rounds up.
  EXPECT_EQ(f32_to_bf16(std::nextafter(1.0f + std::ldexp(1.0f, -8), 2.0f)), 0x3f81u);
  // FLT_MAX is above the largest bf16 (0x7f7f) by more than half an ulp: rounds to inf.
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80u);
  EXPECT_EQ(f32_to_bf16(-std::numeric_limits<float>::max()), 0xff80u);
  EXPECT_EQ(f32_to_bf16(kInf), 0x7f80u);
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000u);
  // The smallest fp32 subnormal is below half the smallest bf16 subnormal (2^-133): rounds to 0.
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::denorm_min()), 0x0000u);
}

// ---------------------------------------------------------------------------------------------
// fp16 against GCC's _Float16

uint16_t half_bits(_Float16 h) {
  uint16_t u;
  std::memcpy(&u, &h, 2);
  return u;
}
_Float16 half_from_bits(uint16_t u) {
  _Float16 h;
  std::memcpy(&h, &u, 2);
  return h;
}

TEST(DTypeFp16, DecodeAllCodesMatchesFloat16) {
  std::vector<uint16_t> codes(65536);
  for (uint32_t c = 0; c < 65536; ++c) codes[c] = static_cast<uint16_t>(c);
  std::vector<float> bulk(65536);
  convert_to_f32(DType::kF16, codes.data(), bulk.data(), 65536);
  for (uint32_t c = 0; c < 65536; ++c) {
    const float want = static_cast<float>(half_from_bits(static_cast<uint16_t>(c)));
    const float got = f16_to_f32(static_cast<uint16_t>(c));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << std::hex << c;
      EXPECT_TRUE(std::isnan(bulk[c])) << std::hex << c;
      continue;
    }
    ASSERT_EQ(f32_bits(got), f32_bits(want)) << "code 0x" << std::hex << c;
    ASSERT_EQ(f32_bits(bulk[c]), f32_bits(want)) << "bulk, code 0x" << std::hex << c;
  }
}

// Inputs dense around the fp16 range: every fp16 value, every midpoint between neighbours (an exact
// tie) and the floats just either side of it, plus random values over the fp16 exponent range.
std::vector<float> fp16_range_floats(uint64_t seed) {
  std::vector<float> v;
  for (uint32_t c = 0; c <= 0x7c00u; ++c) {
    const float x = static_cast<float>(half_from_bits(static_cast<uint16_t>(c)));
    v.push_back(x);
    if (c < 0x7c00u) {
      const double next = c + 1 == 0x7c00u ? 65536.0 : static_cast<double>(half_from_bits(static_cast<uint16_t>(c + 1)));
      const float mid = static_cast<float>((static_cast<double>(x) + next) / 2);  // exact in fp32
      v.push_back(mid);
      v.push_back(std::nextafter(mid, 0.0f));
      v.push_back(std::nextafter(mid, kInf));
    }
  }
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> e(-30.0, 17.0);
  for (int i = 0; i < 500'000; ++i) v.push_back(static_cast<float>(std::exp2(e(rng))));
  const size_t n = v.size();
  for (size_t i = 0; i < n; ++i) v.push_back(-v[i]);
  return v;
}

TEST(DTypeFp16, EncodeMatchesFloat16) {
  auto xs = fp16_range_floats(2);
  const auto more = test_floats(500'000, 3);
  xs.insert(xs.end(), more.begin(), more.end());
  std::vector<uint16_t> bulk(xs.size());
  convert_from_f32(DType::kF16, xs.data(), bulk.data(), static_cast<int64_t>(xs.size()));
  int64_t bad = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const float x = xs[i];
    const uint16_t got = f32_to_f16(x);
    if (std::isnan(x)) {
      EXPECT_TRUE(std::isnan(f16_to_f32(got)));
      EXPECT_TRUE(std::isnan(f16_to_f32(bulk[i])));
      continue;
    }
    const uint16_t want = half_bits(static_cast<_Float16>(x));
    if ((got != want || bulk[i] != want) && ++bad <= 10)
      ADD_FAILURE() << "x = " << std::hexfloat << x << " (0x" << std::hex << f32_bits(x) << "): f32_to_f16 0x" << got
                    << ", convert_from_f32 0x" << bulk[i] << ", _Float16 0x" << want;
  }
  EXPECT_EQ(bad, 0);
}

TEST(DTypeFp16, NamedEdges) {
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bffu);                     // max finite
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00u);                     // tie between max (odd) and inf: inf
  EXPECT_EQ(f32_to_f16(std::nextafter(65520.0f, 0.0f)), 0x7bffu);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001u);        // smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000u);        // half of it: tie to even (0)
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -25)), 0x0002u);        // 1.5 subnormal ulps: tie to even (2)
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000u);
  EXPECT_EQ(f32_to_f16(-kInf), 0xfc00u);
}

// ---------------------------------------------------------------------------------------------
// fp8 (OCP FP8 spec)

struct Fp8Format {
  const char* name;
  int exp_bits, man_bits, bias;
  bool has_inf;  // e5m2: exponent all ones = inf/NaN; e4m3fn: only S.1111.111 is NaN
  float (*decode)(uint8_t);
  uint8_t (*encode)(float);
  DType dtype;
};

const Fp8Format kE4M3{"e4m3", 4, 3, 7, false, fp8e4m3_to_f32, f32_to_fp8e4m3, DType::kF8E4M3};
const Fp8Format kE5M2{"e5m2", 5, 2, 15, true, fp8e5m2_to_f32, f32_to_fp8e5m2, DType::kF8E5M2};

enum class Kind { kFinite, kInf, kNaN };

// Decodes code c per the OCP spec, in double. `kind` says whether it is finite, inf or NaN.
double fp8_spec_value(const Fp8Format& f, uint32_t c, Kind* kind) {
  const uint32_t sign = c >> 7;
  const uint32_t exp = (c >> f.man_bits) & ((1u << f.exp_bits) - 1);
  const uint32_t man = c & ((1u << f.man_bits) - 1);
  const uint32_t exp_max = (1u << f.exp_bits) - 1;
  *kind = Kind::kFinite;
  if (f.has_inf && exp == exp_max) {
    *kind = man == 0 ? Kind::kInf : Kind::kNaN;
    return 0;
  }
  if (!f.has_inf && exp == exp_max && man == (1u << f.man_bits) - 1) {
    *kind = Kind::kNaN;
    return 0;
  }
  double v = exp == 0 ? std::ldexp(static_cast<double>(man), 1 - f.bias - f.man_bits)
                      : std::ldexp(static_cast<double>(man + (1u << f.man_bits)), static_cast<int>(exp) - f.bias - f.man_bits);
  return sign ? -v : v;
}

// Reference encoder: nearest of the non-negative codes by exhaustive search, ties to the even code.
// e5m2 also offers inf (code 0x7c, even) at 2^16 - the next binade's first value - so values at or
// past the midpoint 61440 round to inf; e4m3 clamps to its max (satfinite) instead.
uint8_t fp8_reference(const Fp8Format& f, float x) {
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  const double a = std::fabs(static_cast<double>(x));
  if (!f.has_inf && a > 448.0) return sign | 0x7e;
  if (std::isinf(x)) return sign | 0x7c;  // e5m2
  uint32_t best = 0;
  double best_d = std::numeric_limits<double>::infinity();
  for (uint32_t c = 0; c < 128; ++c) {
    Kind k;
    double v = fp8_spec_value(f, c, &k);
    if (k == Kind::kNaN) continue;
    if (k == Kind::kInf) v = 65536.0;
    const double d = std::fabs(a - v);
    if (d < best_d || (d == best_d && (c & 1u) == 0)) {
      best = c;
      best_d = d;
    }
  }
  return static_cast<uint8_t>(sign | best);
}

class Fp8Test : public ::testing::TestWithParam<Fp8Format> {};

TEST_P(Fp8Test, DecodeMatchesSpecForAll256Codes) {
  const Fp8Format& f = GetParam();
  std::vector<uint8_t> codes(256);
  for (int c = 0; c < 256; ++c) codes[static_cast<size_t>(c)] = static_cast<uint8_t>(c);
  std::vector<float> bulk(256);
  convert_to_f32(f.dtype, codes.data(), bulk.data(), 256);
  for (uint32_t c = 0; c < 256; ++c) {
    Kind k;
    const double want = fp8_spec_value(f, c, &k);
    const float got = f.decode(static_cast<uint8_t>(c));
    switch (k) {
      case Kind::kNaN:
        EXPECT_TRUE(std::isnan(got)) << f.name << " code " << c;
        EXPECT_TRUE(std::isnan(bulk[c])) << f.name << " code " << c;
        break;
      case Kind::kInf:
        EXPECT_EQ(got, (c & 0x80) ? -kInf : kInf) << f.name << " code " << c;
        EXPECT_EQ(bulk[c], got);
        break;
      case Kind::kFinite:
        EXPECT_EQ(static_cast<double>(got), want) << f.name << " code " << c;
        EXPECT_EQ(f32_bits(bulk[c]), f32_bits(got)) << f.name << " code " << c;
        EXPECT_EQ(std::signbit(got), (c & 0x80) != 0) << f.name << " code " << c;
        break;
    }
  }
}

TEST_P(Fp8Test, SpecConstants) {
  const Fp8Format& f = GetParam();
  // Published in the OCP FP8 spec: max normal and min subnormal of each format.
  if (f.has_inf) {
    EXPECT_EQ(f.decode(0x7b), 57344.0f);
    EXPECT_EQ(f.decode(0x01), std::ldexp(1.0f, -16));
    EXPECT_EQ(f.decode(0x7c), kInf);
    EXPECT_EQ(f.decode(0xfc), -kInf);
  } else {
    EXPECT_EQ(f.decode(0x7e), 448.0f);
    EXPECT_EQ(f.decode(0x01), std::ldexp(1.0f, -9));
    EXPECT_TRUE(std::isnan(f.decode(0x7f)));
    EXPECT_TRUE(std::isnan(f.decode(0xff)));
    EXPECT_EQ(f.decode(0x78), 256.0f);  // exponent all ones is a normal binade in e4m3fn
  }
}

TEST_P(Fp8Test, DecodeEncodeRoundTripAllCodes) {
  const Fp8Format& f = GetParam();
  for (uint32_t c = 0; c < 256; ++c) {
    const float v = f.decode(static_cast<uint8_t>(c));
    const uint8_t back = f.encode(v);
    if (std::isnan(v)) {
      EXPECT_TRUE(std::isnan(f.decode(back))) << f.name << " NaN code " << c << " re-encodes to " << int{back};
      continue;
    }
    EXPECT_EQ(back, c) << f.name << " value " << v;
  }
}

// Every fp8 value, every midpoint between neighbours and the floats either side of it, random
// values over a wide exponent range, random bit patterns and the named edges; both signs.
std::vector<float> fp8_inputs(const Fp8Format& f, uint64_t seed) {
  std::vector<double> mags;
  for (uint32_t c = 0; c < 128; ++c) {
    Kind k;
    const double v = fp8_spec_value(f, c, &k);
    if (k == Kind::kFinite) mags.push_back(v);
  }
  mags.push_back(f.has_inf ? 65536.0 : 480.0);  // the next value past max (inf / the NaN code)
  std::vector<float> v;
  for (size_t i = 0; i + 1 < mags.size(); ++i) {
    const float mid = static_cast<float>((mags[i] + mags[i + 1]) / 2);
    v.push_back(static_cast<float>(mags[i]));
    v.push_back(mid);
    v.push_back(std::nextafter(mid, 0.0f));
    v.push_back(std::nextafter(mid, kInf));
  }
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> e(-22.0, 20.0);
  for (int i = 0; i < 100'000; ++i) v.push_back(static_cast<float>(std::exp2(e(rng))));
  for (int i = 0; i < 100'000; ++i) v.push_back(f32_from_bits(static_cast<uint32_t>(rng())));
  for (float x : {0.0f, kInf, std::numeric_limits<float>::max(), std::numeric_limits<float>::denorm_min(), 448.0f,
                  464.0f, 465.0f, 479.0f, 500.0f, 57344.0f, 61439.0f, 61440.0f, 1e6f})
    v.push_back(x);
  const size_t n = v.size();
  for (size_t i = 0; i < n; ++i) v.push_back(-v[i]);
  return v;
}

TEST_P(Fp8Test, EncodeMatchesExhaustiveSearchReference) {
  const Fp8Format& f = GetParam();
  const auto xs = fp8_inputs(f, 4);
  std::vector<uint8_t> bulk(xs.size());
  convert_from_f32(f.dtype, xs.data(), bulk.data(), static_cast<int64_t>(xs.size()));
  int64_t bad = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const float x = xs[i];
    const uint8_t got = f.encode(x);
    if (std::isnan(x)) {
      EXPECT_TRUE(std::isnan(f.decode(got)));
      EXPECT_TRUE(std::isnan(f.decode(bulk[i])));
      continue;
    }
    const uint8_t want = fp8_reference(f, x);
    if ((got != want || bulk[i] != want) && ++bad <= 10)
      ADD_FAILURE() << f.name << " x = " << std::hexfloat << x << ": encode 0x" << std::hex << int{got}
                    << ", bulk 0x" << int{bulk[i]} << ", reference 0x" << int{want};
  }
  EXPECT_EQ(bad, 0);
}

INSTANTIATE_TEST_SUITE_P(Formats, Fp8Test, ::testing::Values(kE4M3, kE5M2),
                         [](const ::testing::TestParamInfo<Fp8Format>& i) { return std::string(i.param.name); });

TEST(DTypeFp8, E4M3SaturatesAt448) {
  EXPECT_EQ(fp8e4m3_to_f32(f32_to_fp8e4m3(1000.0f)), 448.0f);
  EXPECT_EQ(fp8e4m3_to_f32(f32_to_fp8e4m3(-1000.0f)), -448.0f);
  EXPECT_EQ(fp8e4m3_to_f32(f32_to_fp8e4m3(kInf)), 448.0f);
  EXPECT_EQ(fp8e4m3_to_f32(f32_to_fp8e4m3(-kInf)), -448.0f);
  EXPECT_EQ(fp8e4m3_to_f32(f32_to_fp8e4m3(464.0f)), 448.0f);  // would be the tie with 480 (NaN code)
  EXPECT_EQ(f32_to_fp8e4m3(kNaN), 0x7fu);
  // Ties to even: 1 + 1/16 lies between 1 (0x38, even) and 1 + 1/8 (0x39).
  EXPECT_EQ(f32_to_fp8e4m3(1.0625f), 0x38u);
  EXPECT_EQ(f32_to_fp8e4m3(1.1875f), 0x3au);  // between 0x39 (odd) and 0x3a
}

TEST(DTypeFp8, E5M2OverflowsToInf) {
  EXPECT_EQ(f32_to_fp8e5m2(1e6f), 0x7cu);
  EXPECT_EQ(f32_to_fp8e5m2(-1e6f), 0xfcu);
  EXPECT_EQ(f32_to_fp8e5m2(61440.0f), 0x7cu);                           // tie between max (odd) and inf
  EXPECT_EQ(f32_to_fp8e5m2(std::nextafter(61440.0f, 0.0f)), 0x7bu);     // just below: max
  EXPECT_EQ(f32_to_fp8e5m2(kInf), 0x7cu);
  EXPECT_TRUE(std::isnan(fp8e5m2_to_f32(f32_to_fp8e5m2(kNaN))));
  // Ties to even: 1 + 1/8 lies between 1 (0x3c, even) and 1.25 (0x3d).
  EXPECT_EQ(f32_to_fp8e5m2(1.125f), 0x3cu);
  EXPECT_EQ(f32_to_fp8e5m2(1.375f), 0x3eu);
}

// ---------------------------------------------------------------------------------------------
// Bulk conversions and generic helpers against the scalar functions

TEST(DTypeBulk, ConvertFromF32MatchesScalarStoreForEveryDtype) {
  const auto xs = test_floats(200'000, 5);
  const auto n = static_cast<int64_t>(xs.size());
  for (DType t : all_dtypes()) {
    const size_t es = static_cast<size_t>(dtype_size_bytes(t));
    std::vector<unsigned char> bulk(xs.size() * es), one(es);
    convert_from_f32(t, xs.data(), bulk.data(), n);
    int64_t bad = 0;
    for (size_t i = 0; i < xs.size(); ++i) {
      store_from_f32(t, one.data(), xs[i]);
      if (std::isnan(xs[i]) && dtype_is_int(t)) {  // integers have no NaN: it converts to 0
        EXPECT_EQ(load_as_f32(t, bulk.data() + i * es), 0.0f) << dtype_name(t);
        EXPECT_EQ(load_as_f32(t, one.data()), 0.0f) << dtype_name(t);
        continue;
      }
      if (std::isnan(xs[i])) {
        EXPECT_TRUE(std::isnan(load_as_f32(t, bulk.data() + i * es))) << dtype_name(t);
        EXPECT_TRUE(std::isnan(load_as_f32(t, one.data()))) << dtype_name(t);
        continue;
      }
      if (std::memcmp(one.data(), bulk.data() + i * es, es) != 0 && ++bad <= 5)
        ADD_FAILURE() << dtype_name(t) << ": bulk and scalar differ for 0x" << std::hex << f32_bits(xs[i]);
    }
    EXPECT_EQ(bad, 0) << dtype_name(t);
  }
}

TEST(DTypeBulk, ConvertToF32MatchesScalarLoadForEveryDtype) {
  std::mt19937_64 rng(6);
  for (DType t : all_dtypes()) {
    const int es = dtype_size_bytes(t);
    // Every code for the 8- and 16-bit types; random bit patterns for fp32.
    const int64_t n = es == 4 ? 100'000 : (int64_t{1} << (8 * es));
    std::vector<unsigned char> src(static_cast<size_t>(n * es));
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t code = es == 4 ? static_cast<uint32_t>(rng()) : static_cast<uint32_t>(i);
      std::memcpy(src.data() + i * es, &code, static_cast<size_t>(es));  // little-endian low bytes
    }
    std::vector<float> bulk(static_cast<size_t>(n));
    convert_to_f32(t, src.data(), bulk.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const float s = load_as_f32(t, src.data() + i * es);
      if (std::isnan(s)) {
        ASSERT_TRUE(std::isnan(bulk[static_cast<size_t>(i)])) << dtype_name(t) << " element " << i;
        continue;
      }
      ASSERT_EQ(f32_bits(bulk[static_cast<size_t>(i)]), f32_bits(s)) << dtype_name(t) << " element " << i;
    }
  }
}

TEST(DTypeBulk, RoundToIsStoreThenLoad) {
  const auto xs = test_floats(20'000, 7);
  for (DType t : all_dtypes()) {
    unsigned char buf[4];
    for (float x : xs) {
      store_from_f32(t, buf, x);
      const float want = load_as_f32(t, buf);
      const float got = round_to(t, x);
      if (std::isnan(want)) {
        ASSERT_TRUE(std::isnan(got));
      } else {
        ASSERT_EQ(f32_bits(got), f32_bits(want)) << dtype_name(t);
      }
    }
  }
  // fp32 is the identity.
  for (float x : xs) {
    if (!std::isnan(x)) {
      ASSERT_EQ(f32_bits(round_to(DType::kF32, x)), f32_bits(x));
    }
  }
}

TEST(DTypeBulk, ZeroLengthConversionsTouchNothing) {
  for (DType t : all_dtypes()) {
    float dst = 7.0f;
    unsigned char raw[4] = {1, 2, 3, 4};
    convert_to_f32(t, raw, &dst, 0);
    convert_from_f32(t, &dst, raw, 0);
    EXPECT_EQ(dst, 7.0f);
    EXPECT_EQ(raw[0], 1);
    EXPECT_EQ(raw[3], 4);
  }
}

TEST(DTypeNames, NamesSizesAndAliases) {
  const int sizes[] = {4, 2, 2, 1, 1, 1, 4};
  for (DType t : all_dtypes()) {
    EXPECT_EQ(dtype_from_name(dtype_name(t)), t);
    EXPECT_EQ(dtype_size_bytes(t), sizes[static_cast<int>(t)]);
    EXPECT_NE(dtype_valid_names().find(std::string(dtype_name(t))), std::string::npos);
  }
  EXPECT_EQ(dtype_from_name("float32"), DType::kF32);
  EXPECT_EQ(dtype_from_name("bfloat16"), DType::kBF16);
  EXPECT_EQ(dtype_from_name("float16"), DType::kF16);
  EXPECT_EQ(dtype_from_name("fp8"), DType::kF8E4M3);
  EXPECT_EQ(dtype_from_name("e5m2"), DType::kF8E5M2);
  EXPECT_EQ(dtype_from_name("int8"), DType::kI8);
  EXPECT_EQ(dtype_from_name("i8"), DType::kI8);
  EXPECT_EQ(dtype_from_name("i32"), DType::kI32);
  EXPECT_FALSE(dtype_from_name("int4").has_value());
  EXPECT_FALSE(dtype_from_name("uint8").has_value());
  EXPECT_FALSE(dtype_from_name("").has_value());
  EXPECT_FALSE(dtype_from_name("BF16").has_value());  // names are case-sensitive
  EXPECT_TRUE(dtype_is_fp8(DType::kF8E4M3));
  EXPECT_TRUE(dtype_is_fp8(DType::kF8E5M2));
  EXPECT_FALSE(dtype_is_fp8(DType::kBF16));
  EXPECT_TRUE(dtype_is_int(DType::kI8) && dtype_is_int(DType::kI32));
  EXPECT_FALSE(dtype_is_int(DType::kF8E4M3) || dtype_is_int(DType::kF32));
}

// int8 / int32: round to nearest even, saturate, NaN -> 0 (PTX cvt.rni.sat); exact back to fp32
// up to 2^24.
TEST(DTypeInt, RoundsToNearestEvenAndSaturates) {
  const float kInf = std::numeric_limits<float>::infinity(), kNaN = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(f32_to_int8(0.5f), 0);
  EXPECT_EQ(f32_to_int8(1.5f), 2);
  EXPECT_EQ(f32_to_int8(2.5f), 2);
  EXPECT_EQ(f32_to_int8(-2.5f), -2);
  EXPECT_EQ(f32_to_int8(-0.49f), 0);
  EXPECT_EQ(f32_to_int8(126.5f), 126);
  EXPECT_EQ(f32_to_int8(127.4f), 127);
  EXPECT_EQ(f32_to_int8(1e9f), 127);
  EXPECT_EQ(f32_to_int8(-128.6f), -128);
  EXPECT_EQ(f32_to_int8(-kInf), -128);
  EXPECT_EQ(f32_to_int8(kInf), 127);
  EXPECT_EQ(f32_to_int8(kNaN), 0);
  EXPECT_EQ(f32_to_int32(16777217.0f), 16777216);  // the fp32 input is already 2^24
  EXPECT_EQ(f32_to_int32(-3.5f), -4);
  EXPECT_EQ(f32_to_int32(3e9f), INT32_MAX);
  EXPECT_EQ(f32_to_int32(-3e9f), INT32_MIN);
  EXPECT_EQ(f32_to_int32(-2147483648.0f), INT32_MIN);
  EXPECT_EQ(f32_to_int32(kNaN), 0);
  for (int v = -128; v <= 127; ++v) {
    const auto b = static_cast<int8_t>(v);
    EXPECT_EQ(load_as_f32(DType::kI8, &b), static_cast<float>(v));
    EXPECT_EQ(round_to(DType::kI8, static_cast<float>(v)), static_cast<float>(v));
  }
  const int32_t big = (1 << 24) + 1;
  EXPECT_EQ(load_as_f32(DType::kI32, &big), 16777216.0f) << "int32 -> fp32 rounds above 2^24";
  EXPECT_EQ(unit_roundoff(DType::kI8), 0.5);
  EXPECT_EQ(unit_roundoff(DType::kI32), std::ldexp(1.0, -24));
}

}  // namespace
}  // namespace ppu
