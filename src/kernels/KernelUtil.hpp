// Helpers shared by the kernel library: argument checks with clear errors, and tiling of flat and
// row-major tensors into tile regions.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <initializer_list>
#include <string>

#include "arch/Error.hpp"
#include "runtime/Device.hpp"

namespace ppu::kernels {

// Throws UserError unless `b` is a buffer of exactly `numel` elements.
inline void expect_numel(const std::string& kernel, const char* role, const Buffer& b, int64_t numel,
                         const std::string& shape) {
  if (b.numel != numel)
    throw UserError(fmt::format("{}: {} '{}' has {} elements but the shape {} needs {}", kernel, role, b.name, b.numel,
                                shape, numel));
}

inline void expect_positive(const std::string& kernel, std::initializer_list<std::pair<const char*, int64_t>> dims) {
  for (const auto& [name, v] : dims)
    if (v <= 0) throw UserError(fmt::format("{}: {} = {}; every size must be positive", kernel, name, v));
}

inline void expect_dtype_in(const std::string& kernel, const char* role, const Buffer& b,
                            std::initializer_list<DType> valid) {
  std::string names;
  for (DType d : valid) {
    if (d == b.dtype) return;
    names += (names.empty() ? "" : ", ") + std::string(dtype_name(d));
  }
  throw UserError(fmt::format("{}: {} '{}' is {}; valid: {}", kernel, role, b.name, dtype_name(b.dtype), names));
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Region for rows [r0, r0+rows) and columns [c0, c0+cols) of a row-major [*, ld] matrix starting at
// element `base` of argument `arg`.
inline TileRegion matrix_region(uint16_t arg, int64_t base, int64_t ld, int64_t r0, int64_t c0, int rows, int cols) {
  return TileRegion{arg, base + r0 * ld + c0, ld, rows, cols};
}

}  // namespace ppu::kernels
