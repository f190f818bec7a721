// Element data types of the PPU and their host-side numerics.
//
// Storage types follow hardware rules: bf16/fp16/fp8 values are produced from fp32 by
// round-to-nearest-even; fp32 is the accumulation and vector-unit type. g++ 12 has no bf16
// arithmetic type, so 16- and 8-bit values are carried as raw bit patterns (uint16_t / uint8_t).
//
//   uint16_t h = ppu::f32_to_bf16(1.5f);  float f = ppu::bf16_to_f32(h);   // f == 1.5f
//
// fp8 follows the OCP FP8 spec: e4m3 is the "fn" variant (no infinities, max 448, NaN = S.1111.111);
// conversion from fp32 saturates to +-448 (the ".satfinite" behaviour of H100 conversions; frameworks
// differ, so it is stated here). e5m2 is IEEE-like (has inf); overflow rounds to inf.
//
// int8 and int32 are two's-complement integers: int8 is the input of the integer matrix unit (W8A8
// inference), int32 its accumulator. Conversion from fp32 rounds to nearest even and saturates
// (int8 to [-128, 127], int32 to [-2^31, 2^31 - 1]); NaN becomes 0, as PTX's cvt.rni.sat does.
// int32 to fp32 rounds to nearest even above 2^24 in magnitude (every smaller integer is exact).
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

namespace ppu {

enum class DType : uint8_t { kF32, kBF16, kF16, kF8E4M3, kF8E5M2, kI8, kI32, kCount };

inline constexpr std::array<std::string_view, static_cast<size_t>(DType::kCount)> kDTypeNames = {
    "fp32", "bf16", "fp16", "fp8e4m3", "fp8e5m2", "int8", "int32"};
static_assert(kDTypeNames.size() == static_cast<size_t>(DType::kCount), "name table must cover every DType");
static_assert(!kDTypeNames.back().empty(), "every DType needs a name");

inline constexpr std::array<int, static_cast<size_t>(DType::kCount)> kDTypeSizes = {4, 2, 2, 1, 1, 1, 4};
static_assert(kDTypeSizes.back() != 0, "every DType needs a size");

constexpr std::string_view dtype_name(DType t) { return kDTypeNames[static_cast<size_t>(t)]; }
constexpr int dtype_size_bytes(DType t) { return kDTypeSizes[static_cast<size_t>(t)]; }
constexpr bool dtype_is_fp8(DType t) { return t == DType::kF8E4M3 || t == DType::kF8E5M2; }
constexpr bool dtype_is_int(DType t) { return t == DType::kI8 || t == DType::kI32; }

// Parses "fp32", "bf16", "fp16", "fp8e4m3", "fp8e5m2", "int8", "int32" (also "f32", "float32",
// "float16", "bfloat16", "fp8" = e4m3, "i8", "i32"). Returns nullopt for anything else.
std::optional<DType> dtype_from_name(std::string_view s);
// Comma-separated list of the canonical names, for error messages.
std::string dtype_valid_names();

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float f32_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float bf16_to_f32(uint16_t h) { return f32_from_bits(static_cast<uint32_t>(h) << 16); }
// Round-to-nearest-even; NaN stays a (quiet) NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);  // RNE, overflow to inf, subnormals kept
float fp8e4m3_to_f32(uint8_t v);
uint8_t f32_to_fp8e4m3(float f);  // RNE, saturates to +-448, NaN -> 0x7f
float fp8e5m2_to_f32(uint8_t v);
uint8_t f32_to_fp8e5m2(float f);  // RNE, overflow to inf
// RNE, saturating to [-128, 127]; NaN -> 0.
int8_t f32_to_int8(float f);
// RNE, saturating to [-2^31, 2^31 - 1]; NaN -> 0.
int32_t f32_to_int32(float f);

// Converts one value stored in `t` at `p` to fp32 / stores fp32 `v` into `t` at `p` (rounding RNE).
float load_as_f32(DType t, const void* p);
void store_from_f32(DType t, void* p, float v);

// Bulk conversions (vectorised where the CPU allows). `n` elements.
void convert_to_f32(DType src_type, const void* src, float* dst, int64_t n);
void convert_from_f32(DType dst_type, const float* src, void* dst, int64_t n);
// Round-trips fp32 values through `t` (what storing then reloading would give).
float round_to(DType t, float v);

// Unit roundoff of a storage dtype: the largest relative error of one round-to-nearest into it
// (2^-24 fp32, 2^-8 bf16, 2^-11 fp16, 2^-4 e4m3, 2^-3 e5m2), for error bounds in checks and tests.
// Integers: int32's is fp32's (what reading one as fp32 can lose); int8's is 1/2, the relative error
// of rounding a value of magnitude 1 (rounding to an integer is an absolute error of at most 1/2:
// quantised data is scaled first, and its bounds come from the scale, not from this number).
constexpr double unit_roundoff(DType t) {
  switch (t) {
    case DType::kF32: return 1.0 / (1 << 24);
    case DType::kBF16: return 1.0 / (1 << 8);
    case DType::kF16: return 1.0 / (1 << 11);
    case DType::kF8E4M3: return 1.0 / (1 << 4);
    case DType::kF8E5M2: return 1.0 / (1 << 3);
    case DType::kI8: return 0.5;
    case DType::kI32: return 1.0 / (1 << 24);
    case DType::kCount: break;
  }
  return 1.0;
}

}  // namespace ppu
