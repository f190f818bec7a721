// Rotary position embedding (RoPE), Llama/Qwen "rotate_half" convention, on per-head vectors:
// for a token at position p and i < d/2, with angle a = p * theta^(-2i/d), c = cos(a), s = sin(a):
//
//   out[t, h, i]       = x[t, h, i] * c - x[t, h, i + d/2] * s
//   out[t, h, i + d/2] = x[t, h, i + d/2] * c + x[t, h, i] * s
//
//   x:   [tokens, heads, head_dim] row-major, any dtype
//   out: [out_tokens, heads, head_dim] any dtype; token t goes to out token out_token0 + t, so the
//        rotated keys can be written straight into a KV cache (out = k_cache, out_token0 = past_len)
//   table: cos and sin [max_positions, head_dim / 2] fp32, on the device (RopeTable)
//
//   RopeTable rt = kernels::make_rope_table(dev, 1e6, 128, 40960);     // once per model
//   std::vector<int32_t> pos(tokens);  std::iota(pos.begin(), pos.end(), past_len);
//   kernels::rope(dev, rt, q, q, tokens, q_heads, pos);                 // in place
//   kernels::rope(dev, rt, k, k_cache, tokens, kv_heads, pos, past_len);
//
// The table is computed on the host in double (angle, then cos and sin, each rounded once to fp32)
// and uploaded once. Frameworks compute the angle in fp32 (HF transformers' inv_freq * position),
// which at position 40000 is off by up to ~5e-3 rad; this table is the exact rounding instead.
//
// The kernel: tokens are cut into runs whose positions step by a constant >= 0 (a prefill's
// past_len + t is one run). Within a run, a block takes up to kRopeTileRows tokens and a group of
// heads, and per head loads the two halves [tokens, d/2] (row stride heads * d), the cos and sin
// rows of its positions once (row stride = the position step times d/2; 0 repeats one row), and
// computes with six vector ops (x1*s, x2*s, x1*c, x2*c, a subtraction and an addition); runs of one
// token (decode, or scattered positions) take all heads of the token as the rows instead and read
// cos/sin as a one-row broadcast. In-place use (out = x, or views of the same elements) is allowed;
// any other overlap of x and out is not (a block could overwrite tokens another still reads).
//
// Llama 3.1 frequency scaling (RopeScaling) changes the table's frequencies, not the kernel.
//
// Not here: partial rotary (rotating only part of head_dim), the interleaved (GPT-J) pair layout,
// or other scaled RoPE variants (YaRN, NTK): build another table for those.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/Device.hpp"

namespace ppu::kernels {

// Most rows (tokens, or heads of one token) of one SRAM tile, and the most elements of one tile:
// fp32 tiles of at most kRopeTileElems (16 KiB). 2 * kRopeStages + 4 of them (x halves per stage,
// two products, cos, sin) stay far below the smallest core SRAM (420 KiB, a100-80g / a800).
inline constexpr int kRopeTileRows = 64;
inline constexpr int kRopeTileElems = 4096;
inline constexpr int kRopeStages = 2;
// Blocks the planner aims for when splitting heads into groups (a few waves on every preset).
inline constexpr int64_t kRopeTargetBlocks = 512;

// Llama 3.1's RoPE frequency scaling ("rope_scaling": {"rope_type": "llama3", ...} in config.json):
// with inv_freq_i = theta^(-2i/d) and wavelength w_i = 2 pi / inv_freq_i, frequencies whose
// wavelength is below original_max_positions / high_freq_factor are kept, those above
// original_max_positions / low_freq_factor are divided by factor, and those between are blended:
// s = (original_max_positions / w_i - low_freq_factor) / (high_freq_factor - low_freq_factor),
// inv_freq_i' = (1 - s) inv_freq_i / factor + s inv_freq_i (as Hugging Face transformers computes it).
struct RopeScaling {
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_positions = 8192;
};

// The inverse frequencies theta^(-2i/d), i < head_dim / 2, scaled if `scaling` is given. Throws
// UserError naming "rope scaling" for factor < 1, low_freq_factor >= high_freq_factor, or
// non-positive values.
std::vector<double> rope_inv_freq(double theta, int64_t head_dim, const RopeScaling* scaling = nullptr);

// cos/sin of every (position, frequency) pair on the device, and the parameters they came from.
struct RopeTable {
  Buffer cos, sin;  // [max_positions, head_dim / 2] fp32
  double theta = 0.0;
  int64_t head_dim = 0;
  int64_t max_positions = 0;
};

// Builds the table on the host (double) and uploads it (timed over the host link on stream `s`).
// Throws UserError naming "rope table" if head_dim is not positive and even, theta is not finite
// and > 0, or max_positions is not positive; DeviceOutOfMemory if the device cannot hold it.
RopeTable make_rope_table(Device& dev, double theta, int64_t head_dim, int64_t max_positions, Stream* s = nullptr,
                          const RopeScaling* scaling = nullptr);
void free_rope_table(Device& dev, RopeTable& table);

// The table's values as uploaded: cos (sin if `sine`) [max_positions, head_dim / 2], fp32.
std::vector<float> rope_table_values(double theta, int64_t head_dim, int64_t max_positions, bool sine,
                                     const RopeScaling* scaling = nullptr);

// Builds RoPE of x [tokens, heads, head_dim] (head_dim = table.head_dim) into out at token
// out_token0, with positions[t] the position of token t. Throws UserError naming "rope" if tokens
// or heads is not positive, positions.size() != tokens, a position is outside [0,
// table.max_positions) (naming the token, the position and the table size), x's numel is not
// tokens * heads * head_dim, or out's numel is not a multiple of heads * head_dim holding at least
// out_token0 + tokens tokens (so out = x implies out_token0 = 0). The positions are copied into the
// kernel.
Kernel make_rope(const RopeTable& table, const Buffer& x, const Buffer& out, int64_t tokens, int64_t heads,
                 const std::vector<int32_t>& positions, int64_t out_token0 = 0);

KernelTiming rope(Device& dev, const RopeTable& table, const Buffer& x, const Buffer& out, int64_t tokens,
                  int64_t heads, const std::vector<int32_t>& positions, int64_t out_token0 = 0, Stream* s = nullptr);

// Scalar reference in double, angles and cos/sin computed from theta directly (not from the fp32
// table): x [tokens, heads, head_dim] as fp32 values; returns [tokens, heads, head_dim] unrounded.
std::vector<double> rope_reference(const std::vector<float>& x, int64_t tokens, int64_t heads, int64_t head_dim,
                                   const std::vector<int32_t>& positions, double theta);

}  // namespace ppu::kernels
