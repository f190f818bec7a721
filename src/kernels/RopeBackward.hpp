// Backward of rotary position embedding (kernels/Rope.hpp) for training. The forward rotates each
// pair (x[i], x[i + d/2]) of a head by +a, a = p * inv_freq_i; a rotation's transpose is its inverse,
// so the input gradient is the output gradient rotated by -a:
//
//   dx[t, h, i]       = dy[t, h, i] * c + dy[t, h, i + d/2] * s
//   dx[t, h, i + d/2] = dy[t, h, i + d/2] * c - dy[t, h, i] * s
//
//   dy, dx: [tokens, heads, head_dim] row-major, fp32/bf16/fp16 (converted by the DMA; fp32 math)
//   table:  the forward's RopeTable (cos and sin [max_positions, head_dim / 2] fp32, Llama 3.1
//           scaling included: it lives in the table's frequencies)
//
//   kernels::rope(dev, rt, q, q, tokens, heads, pos);              // forward, in place
//   kernels::rope_backward(dev, rt, dq, dq, tokens, heads, pos);   // backward, in place
//
// The kernel is the forward's (kernels/RopeInternal.hpp rope_kernel) with the rotation transposed:
// the same tiling (runs of tokens whose positions step by a constant, head-major; scattered tokens
// token-major), the same loads, and the sign of the cross terms flipped - so its time equals the
// forward's. In-place use (dx = dy) is allowed; other overlaps are not.
//
// Not here: writing into a token offset of a larger buffer (the forward's out_token0: a cache has no
// gradient), partial or interleaved rotary.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/Rope.hpp"
#include "runtime/Device.hpp"

namespace ppu::kernels {

// Builds the backward of rope(table, x, out, tokens, heads, positions): dx = dy rotated by -angle,
// positions[t] the position of token t (copied into the kernel). Throws UserError naming
// "rope_backward" if tokens or heads is not positive, the table was not built by make_rope_table,
// dy's or dx's numel is not tokens * heads * head_dim or its dtype not fp32/bf16/fp16,
// positions.size() != tokens, a position is outside [0, table.max_positions) (naming the token and
// the table size), or dx overlaps dy without being the same elements.
Kernel make_rope_backward(const RopeTable& table, const Buffer& dy, const Buffer& dx, int64_t tokens, int64_t heads,
                          const std::vector<int32_t>& positions);
KernelTiming rope_backward(Device& dev, const RopeTable& table, const Buffer& dy, const Buffer& dx, int64_t tokens,
                           int64_t heads, const std::vector<int32_t>& positions, Stream* s = nullptr);

// Scalar reference in double: dy [tokens, heads, head_dim] as fp32 values rotated by -angle, the
// angles from rope_inv_freq(theta, head_dim, scaling) in double (not from the fp32 table); returns
// [tokens, heads, head_dim] unrounded.
std::vector<double> rope_backward_reference(const std::vector<float>& dy, int64_t tokens, int64_t heads,
                                            int64_t head_dim, const std::vector<int32_t>& positions, double theta,
                                            const RopeScaling* scaling = nullptr);

}  // namespace ppu::kernels
