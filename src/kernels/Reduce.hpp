// Row reductions over the last dim: y[r] = sum, max or mean of x[r, :] for a row-major [rows, cols]
// tensor x; y is [rows]. Input and output may be any dtype (each its own); the vector unit
// accumulates in fp32 and the result is rounded to y's dtype on store.
//
//   kernels::row_reduce(dev, RowReduceOp::kSum, x, y, rows, cols);   // x [rows, cols] -> y [rows]
//
// Rows up to kReduceTileElems long are reduced whole, several rows per tile and several tiles per
// block; longer rows are walked one row per block in chunks of kReduceTileElems columns, each
// chunk's result folded into the running one (reduce with accumulate). Summation is recursive
// (left to right) in fp32 within a chunk, then across chunks: its error bound is that of recursive
// summation over cols + chunks terms.
//
// Not here: reductions over other dims (transpose first), arg-max (kernels/Sampling), or splitting one row over
// several blocks (a row of n elements is one block of about n / kReduceTileElems loads). A NaN in a
// row is ignored by max (fmax semantics) and propagates through sum and mean.
#pragma once

#include <array>
#include <string_view>
#include <vector>

#include "runtime/Device.hpp"

namespace ppu::kernels {

enum class RowReduceOp : uint8_t { kSum, kMax, kMean, kCount };
inline constexpr std::array<std::string_view, static_cast<size_t>(RowReduceOp::kCount)> kRowReduceOpNames = {
    "sum", "max", "mean"};

// Elements of one SRAM tile (fp32: 64 KiB). kReduceStages of them, plus row statistics, stay far
// below the smallest core SRAM (420 KiB, a100-80g / a800).
inline constexpr int kReduceTileElems = 16384;
inline constexpr int kReduceStages = 3;  // tiles loaded ahead of the vector unit

// Builds y[r] = op over c < cols of x[r, c]; x [rows, cols], y [rows]. Throws UserError naming the
// kernel ("row_sum", "row_max", "row_mean") if rows or cols is not positive or a buffer's numel
// does not match its shape.
Kernel make_row_reduce(RowReduceOp op, const Buffer& x, const Buffer& y, int64_t rows, int64_t cols);

KernelTiming row_reduce(Device& dev, RowReduceOp op, const Buffer& x, const Buffer& y, int64_t rows, int64_t cols,
                        Stream* s = nullptr);

// Scalar reference in double: x [rows, cols] as fp32 values (already rounded to x's dtype);
// returns [rows] in double, unrounded.
std::vector<double> row_reduce_reference(RowReduceOp op, const std::vector<float>& x, int64_t rows, int64_t cols);

}  // namespace ppu::kernels
