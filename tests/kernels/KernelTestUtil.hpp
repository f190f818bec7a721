// Helpers for the kernel tests: device buffers from host values, and an element-wise comparison
// against a double-precision reference with a per-element error bound.
//
// The bounds are built in two parts: `e`, a bound on the error of the fp32 value the vector unit
// computes (derived per kernel from the fp32 unit roundoff), then stored_bound() adds the rounding
// of that value to the output dtype.
#pragma once

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "TestUtil.hpp"
#include "arch/ChipSpec.hpp"
#include "runtime/Device.hpp"

namespace ppu::test {

inline constexpr DType kFloatTypes[] = {DType::kF32, DType::kBF16, DType::kF16};

struct Shape {
  int64_t rows, cols;
};

inline std::string describe(Shape s, DType in, DType out) {
  return fmt::format("[{}, {}] {}->{}", s.rows, s.cols, dtype_name(in), dtype_name(out));
}

// Column chunks a row-wise kernel with tiles of `tile_elems` elements walks a row of `cols` in.
inline int64_t chunks_of(int64_t cols, int tile_elems) { return (cols + tile_elems - 1) / tile_elems; }

// fp32 unit roundoff: the vector unit's arithmetic.
inline const double kU32 = std::ldexp(1.0, -24);

// Allocates a buffer of `t` holding `values` (which should already be rounded to `t`).
inline Buffer make_buffer(Device& dev, DType t, const std::vector<float>& values, const std::string& name) {
  Buffer b = dev.alloc(t, static_cast<int64_t>(values.size()), name);
  dev.upload(b, values);
  return b;
}

// Half the smallest positive (subnormal) value of `t`: the absolute error of rounding a value in
// the subnormal range, where the relative bound u * |v| does not hold.
inline double subnormal_slack(DType t) {
  switch (t) {
    case DType::kF32: return std::ldexp(1.0, -150);
    case DType::kBF16: return std::ldexp(1.0, -134);
    case DType::kF16: return std::ldexp(1.0, -25);
    case DType::kF8E4M3: return std::ldexp(1.0, -10);
    case DType::kF8E5M2: return std::ldexp(1.0, -17);
    default: return 1.0;
  }
}

// Bound on |stored - ref| when the fp32 value v before the store has |v - ref| <= e: storing to
// `out` rounds v once more (relative u_out, none for fp32), or by subnormal_slack near zero.
inline double stored_bound(DType out, double ref, double e) {
  const double u_out = out == DType::kF32 ? 0.0 : unit_roundoff(out);
  return e + u_out * (std::fabs(ref) + e) + subnormal_slack(out);
}

// Expects |got[i] - ref[i]| <= bound(i) for every i (NaN fails). Reports the first failing elements
// and the number of failures, labelled with `what`.
inline void expect_within(const std::vector<float>& got, const std::vector<double>& ref,
                          const std::function<double(size_t)>& bound, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  int failures = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(double(got[i]) - ref[i]);
    const double b = bound(i);
    if (!(err <= b) && ++failures <= 5)
      ADD_FAILURE() << what << ": element " << i << " is " << got[i] << ", reference " << ref[i] << ", error " << err
                    << " > bound " << b;
  }
  EXPECT_EQ(failures, 0) << what << ": " << failures << " of " << got.size() << " elements outside the bound";
}

}  // namespace ppu::test
