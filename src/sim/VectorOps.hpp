// Host implementation of the vector unit's row operations, vectorised with Highway (SIMD chosen at
// run time: AVX-512, AVX2, SSE4, ... - never -march=native; PPU_HOST_ISA narrows it, sim/HostIsa.hpp).
//
//   vec_unary(UnaryOp::kSilu, src, dst, n, 0.0f);     // dst[i] = silu(src[i])
//   vec_binary(BinaryOp::kAdd, a, b, dst, n);          // dst[i] = a[i] + b[i]
//   float s = vec_reduce(ReduceOp::kSum, x, n);
//
// Numerics: fp32 throughout. exp/log/tanh use Highway's polynomial approximations (a few ulp; exp(x)
// is exactly 0 below -87.3 and +inf above 88.72), divisions and square roots are IEEE. Sums are
// accumulated in SIMD lanes, then combined: a different order from a sequential loop, within the
// usual fp32 summation bound. Results are the same on every run on a given CPU; across CPUs with
// different vector widths they can differ in the last bits.
// Compares give 1.0f or 0.0f; kSelect is a masked move (dst[i] = a[i] != 0 ? b[i] : dst[i]), the
// one op that reads dst.
// In-place use (dst == src or dst == a) is allowed.
#pragma once

#include <cstdint>

#include "isa/TileProgram.hpp"

namespace ppu {

void vec_unary(UnaryOp op, const float* src, float* dst, int64_t n, float imm);
void vec_binary(BinaryOp op, const float* a, const float* b, float* dst, int64_t n);
// dst[i] = a[i] op b (one scalar for all elements).
void vec_binary_scalar(BinaryOp op, const float* a, float b, float* dst, int64_t n);
// Sum or max of n >= 1 values (max ignores NaNs: -inf if all are NaN). Not for kArgMax.
float vec_reduce(ReduceOp op, const float* x, int64_t n);
// Index of the first occurrence of the maximum of n >= 1 values, NaNs ignored (0 if all are NaN).
int64_t vec_argmax(const float* x, int64_t n);

}  // namespace ppu
