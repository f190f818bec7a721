#include "arch/DType.hpp"

#include <cmath>
#include <limits>

namespace ppu {

std::optional<DType> dtype_from_name(std::string_view s) {
  for (size_t i = 0; i < kDTypeNames.size(); ++i)
    if (kDTypeNames[i] == s) return static_cast<DType>(i);
  if (s == "f32" || s == "float32" || s == "float") return DType::kF32;
  if (s == "bfloat16") return DType::kBF16;
  if (s == "f16" || s == "float16" || s == "half") return DType::kF16;
  if (s == "fp8" || s == "e4m3") return DType::kF8E4M3;
  if (s == "e5m2") return DType::kF8E5M2;
  if (s == "i8") return DType::kI8;
  if (s == "i32") return DType::kI32;
  return std::nullopt;
}

std::string dtype_valid_names() {
  std::string out;
  for (auto n : kDTypeNames) {
    if (!out.empty()) out += ", ";
    out += n;
  }
  return out;
}

namespace {

// Decodes a small float with `E` exponent bits, `M` mantissa bits and IEEE-style bias.
// `has_inf`: all-ones exponent encodes inf/NaN (IEEE); otherwise only all-ones exp+mantissa is NaN.
template <int E, int M, bool kHasInf>
float decode_minifloat(uint32_t bits) {
  constexpr int kBias = (1 << (E - 1)) - 1;
  const uint32_t sign = (bits >> (E + M)) & 1u;
  const uint32_t exp = (bits >> M) & ((1u << E) - 1);
  const uint32_t man = bits & ((1u << M) - 1);
  float v;
  if (exp == (1u << E) - 1 && (kHasInf || man == (1u << M) - 1)) {
    v = (kHasInf && man == 0) ? std::numeric_limits<float>::infinity() : std::numeric_limits<float>::quiet_NaN();
  } else if (exp == 0) {
    v = std::ldexp(static_cast<float>(man), 1 - kBias - M);
  } else {
    v = std::ldexp(static_cast<float>(man | (1u << M)), static_cast<int>(exp) - kBias - M);
  }
  return sign ? -v : v;
}

// Encodes fp32 into the small float format with round-to-nearest-even.
// kSaturate: finite overflow becomes +-max instead of inf (used for e4m3, which has no inf).
template <int E, int M, bool kHasInf, bool kSaturate>
uint32_t encode_minifloat(float f) {
  constexpr int kBias = (1 << (E - 1)) - 1;
  constexpr uint32_t kSignShift = E + M;
  uint32_t u = f32_bits(f);
  const uint32_t sign = (u >> 31) << kSignShift;
  const uint32_t exp_all_ones = ((1u << E) - 1) << M;
  if (std::isnan(f)) return sign | exp_all_ones | ((1u << M) - 1);  // canonical NaN
  // Largest finite: for IEEE-like formats, exponent all-ones-1 and full mantissa; for e4m3fn,
  // exponent all ones with mantissa all-ones-minus-one.
  constexpr uint32_t kMaxFinite = kHasInf ? ((((1u << E) - 2) << M) | ((1u << M) - 1))
                                          : ((((1u << E) - 1) << M) | ((1u << M) - 2));
  const float max_finite = decode_minifloat<E, M, kHasInf>(kMaxFinite);
  float a = std::fabs(f);
  if (std::isinf(a)) {
    if (kHasInf && !kSaturate) return sign | exp_all_ones;
    return sign | kMaxFinite;
  }
  // Work in units of the smallest subnormal: q = a / 2^(1-bias-M); rounding happens at integer q
  // for subnormals, and at the right mantissa position for normals.
  int e;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5,1)
  int unbiased = e - 1;
  int min_normal_exp = 1 - kBias;
  int shift = (unbiased < min_normal_exp ? min_normal_exp : unbiased) - M;  // value of 1 ulp = 2^shift
  float scaled = std::ldexp(a, -shift);  // exact (power-of-two scaling)
  float rounded = std::nearbyint(scaled);  // default rounding mode = nearest-even
  float r = std::ldexp(rounded, shift);
  if (r > max_finite) {
    // Values above max round to inf unless within half an ulp of max (RNE handles that via `r`).
    if (kSaturate || !kHasInf) return sign | kMaxFinite;
    return sign | exp_all_ones;
  }
  if (r == 0.0f) return sign;
  int re;
  std::frexp(r, &re);
  int rexp = re - 1;
  if (rexp < min_normal_exp) {  // subnormal
    uint32_t man = static_cast<uint32_t>(std::ldexp(r, -(min_normal_exp - M)));
    return sign | man;
  }
  uint32_t biased = static_cast<uint32_t>(rexp + kBias);
  uint32_t man = static_cast<uint32_t>(std::ldexp(r, -(rexp - M))) & ((1u << M) - 1);
  return sign | (biased << M) | man;
}

}  // namespace

float f16_to_f32(uint16_t h) { return decode_minifloat<5, 10, true>(h); }
uint16_t f32_to_f16(float f) { return static_cast<uint16_t>(encode_minifloat<5, 10, true, false>(f)); }
float fp8e4m3_to_f32(uint8_t v) { return decode_minifloat<4, 3, false>(v); }
uint8_t f32_to_fp8e4m3(float f) { return static_cast<uint8_t>(encode_minifloat<4, 3, false, true>(f)); }
float fp8e5m2_to_f32(uint8_t v) { return decode_minifloat<5, 2, true>(v); }
uint8_t f32_to_fp8e5m2(float f) { return static_cast<uint8_t>(encode_minifloat<5, 2, true, false>(f)); }

int8_t f32_to_int8(float f) {
  if (std::isnan(f)) return 0;
  if (f <= -128.0f) return -128;
  if (f >= 127.0f) return 127;
  return static_cast<int8_t>(std::nearbyint(f));  // default rounding mode: nearest even
}

int32_t f32_to_int32(float f) {
  if (std::isnan(f)) return 0;
  if (f <= -2147483648.0f) return INT32_MIN;
  if (f >= 2147483648.0f) return INT32_MAX;  // 2^31 - 1 is not an fp32: 2^31 is the first above
  return static_cast<int32_t>(std::nearbyint(f));
}

float load_as_f32(DType t, const void* p) {
  switch (t) {
    case DType::kF32: {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    case DType::kBF16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return bf16_to_f32(h);
    }
    case DType::kF16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return f16_to_f32(h);
    }
    case DType::kF8E4M3: return fp8e4m3_to_f32(*static_cast<const uint8_t*>(p));
    case DType::kF8E5M2: return fp8e5m2_to_f32(*static_cast<const uint8_t*>(p));
    case DType::kI8: return static_cast<float>(*static_cast<const int8_t*>(p));
    case DType::kI32: {
      int32_t i;
      std::memcpy(&i, p, 4);
      return static_cast<float>(i);
    }
    case DType::kCount: break;
  }
  return 0.0f;
}

void store_from_f32(DType t, void* p, float v) {
  switch (t) {
    case DType::kF32: std::memcpy(p, &v, 4); return;
    case DType::kBF16: {
      uint16_t h = f32_to_bf16(v);
      std::memcpy(p, &h, 2);
      return;
    }
    case DType::kF16: {
      uint16_t h = f32_to_f16(v);
      std::memcpy(p, &h, 2);
      return;
    }
    case DType::kF8E4M3: *static_cast<uint8_t*>(p) = f32_to_fp8e4m3(v); return;
    case DType::kF8E5M2: *static_cast<uint8_t*>(p) = f32_to_fp8e5m2(v); return;
    case DType::kI8: *static_cast<int8_t*>(p) = f32_to_int8(v); return;
    case DType::kI32: {
      const int32_t i = f32_to_int32(v);
      std::memcpy(p, &i, 4);
      return;
    }
    case DType::kCount: return;
  }
}

float round_to(DType t, float v) {
  alignas(4) unsigned char buf[4];
  store_from_f32(t, buf, v);
  return load_as_f32(t, buf);
}

}  // namespace ppu

namespace ppu {
namespace {

struct DecodeTables {
  float f16[65536];
  float e4m3[256];
  float e5m2[256];
  DecodeTables() {
    for (uint32_t i = 0; i < 65536; ++i) f16[i] = decode_minifloat<5, 10, true>(i);
    for (uint32_t i = 0; i < 256; ++i) {
      e4m3[i] = decode_minifloat<4, 3, false>(i);
      e5m2[i] = decode_minifloat<5, 2, true>(i);
    }
  }
};

const DecodeTables& tables() {
  static const DecodeTables t;
  return t;
}

// Fast fp32 -> fp16 with RNE (bit manipulation; same results as encode_minifloat<5,10>).
inline uint16_t f32_to_f16_fast(float f) {
  uint32_t u = f32_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (a < 0x38800000u) {  // below smallest normal fp16 (2^-14): subnormal or zero
    // value / 2^-24 rounded to nearest even integer.
    float v = f32_from_bits(a);
    float q = std::nearbyint(v * 16777216.0f);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(q));
  }
  uint32_t rounded = a + 0x0fffu + ((a >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
}

}  // namespace

void convert_to_f32(DType t, const void* src, float* dst, int64_t n) {
  if (n <= 0) return;  // also keeps null pointers away from memcpy
  switch (t) {
    case DType::kF32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
    case DType::kBF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = f32_from_bits(static_cast<uint32_t>(s[i]) << 16);
      return;
    }
    case DType::kF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      const float* tab = tables().f16;
      for (int64_t i = 0; i < n; ++i) dst[i] = tab[s[i]];
      return;
    }
    case DType::kF8E4M3:
    case DType::kF8E5M2: {
      const uint8_t* s = static_cast<const uint8_t*>(src);
      const float* tab = t == DType::kF8E4M3 ? tables().e4m3 : tables().e5m2;
      for (int64_t i = 0; i < n; ++i) dst[i] = tab[s[i]];
      return;
    }
    case DType::kI8: {
      const int8_t* s = static_cast<const int8_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]);
      return;
    }
    case DType::kI32: {
      const int32_t* s = static_cast<const int32_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]);
      return;
    }
    case DType::kCount: return;
  }
}

void convert_from_f32(DType t, const float* src, void* dst, int64_t n) {
  if (n <= 0) return;
  switch (t) {
    case DType::kF32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
    case DType::kBF16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case DType::kF16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_f16_fast(src[i]);
      return;
    }
    case DType::kF8E4M3: {
      uint8_t* d = static_cast<uint8_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_fp8e4m3(src[i]);
      return;
    }
    case DType::kF8E5M2: {
      uint8_t* d = static_cast<uint8_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_fp8e5m2(src[i]);
      return;
    }
    case DType::kI8: {
      int8_t* d = static_cast<int8_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_int8(src[i]);
      return;
    }
    case DType::kI32: {
      int32_t* d = static_cast<int32_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_int32(src[i]);
      return;
    }
    case DType::kCount: return;
  }
}

}  // namespace ppu
