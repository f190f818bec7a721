// Helpers shared by the kernel library: argument checks with clear errors, tiling of flat and
// row-major tensors into tile regions, and a software-pipelined load loop.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

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

// Token ids as an embedding table's row indices: UserError naming the token, its id and the valid
// range for an id outside [0, vocab).
inline void expect_token_ids(const std::string& kernel, const std::vector<int32_t>& ids, int64_t vocab) {
  for (size_t t = 0; t < ids.size(); ++t)
    if (ids[t] < 0 || ids[t] >= vocab)
      throw UserError(fmt::format("{}: token {} has id {}, outside the table's vocab size of {} (valid ids: 0 to {})",
                                  kernel, t, ids[t], vocab, vocab - 1));
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// One chunk of a row's online softmax (softmax and cross-entropy over long rows): folds chunk c of
// the row, x [1, w], into the running max m[cur] and the running sum of exp(x - max) in `sum`
// (rescaling the sum when the max grows; cur flips to the buffer holding the new max), and leaves
// x = exp(x - max). chunk_max and rescale are [1, 1] scratch. Chunk 0 accumulates into m[cur], so the
// caller fills it first (-FLT_MAX).
inline void online_softmax_chunk(TileProgram& p, int64_t c, BufferId x, int w, const BufferId m[2], int& cur,
                                 BufferId chunk_max, BufferId rescale, BufferId sum) {
  if (c == 0) {
    p.reduce(ReduceOp::kMax, m[cur], x, 1, w, /*accumulate=*/true);
  } else {
    const BufferId m_new = m[1 - cur];
    p.reduce(ReduceOp::kMax, chunk_max, x, 1, w);
    p.binary(BinaryOp::kMax, m_new, m[cur], chunk_max, 1, 1);
    p.binary(BinaryOp::kSub, rescale, m[cur], m_new, 1, 1);  // <= 0, so exp cannot overflow
    p.unary(UnaryOp::kExp, rescale, rescale, 1, 1);
    p.binary(BinaryOp::kMul, sum, sum, rescale, 1, 1);
    cur = 1 - cur;
  }
  p.binary(BinaryOp::kSub, x, x, m[cur], 1, w, Broadcast::kRow);
  p.unary(UnaryOp::kExp, x, x, 1, w);
  p.reduce(ReduceOp::kSum, sum, x, 1, w, /*accumulate=*/c > 0);
}

// Region for rows [r0, r0+rows) and columns [c0, c0+cols) of a row-major [*, ld] matrix starting at
// element `base` of argument `arg`.
inline TileRegion matrix_region(uint16_t arg, int64_t base, int64_t ld, int64_t r0, int64_t c0, int rows, int cols) {
  return TileRegion{arg, base + r0 * ld + c0, ld, rows, cols};
}

// How a row-wise kernel (reduction, softmax, norm over the last dim) walks a row-major [rows, cols]
// tensor. An SRAM tile is [tile_rows, chunk_cols]. Rows that fit a tile are taken whole and
// `tiles_per_block` row tiles go to one block (so its loads can run ahead of its vector work); a
// longer row is walked in `chunks` column chunks of chunk_cols (the last one partial), one row per
// block. The last block, the last row tile and the last chunk may be partial.
struct RowTiling {
  int64_t rows = 0, cols = 0;
  int tile_rows = 1;        // rows of one tile (1 when rows are chunked)
  int chunk_cols = 1;       // columns of one tile (== cols unless rows are chunked)
  int64_t chunks = 1;       // column chunks per row
  int tiles_per_block = 1;  // row tiles per block (1 when rows are chunked)
  int64_t blocks = 0;

  int64_t rows_per_block() const { return int64_t{tile_rows} * tiles_per_block; }
  // First row of row tile `t` of `block`.
  int64_t tile_row0(int64_t block, int t) const { return block * rows_per_block() + int64_t{t} * tile_rows; }
  // Rows in row tile `t` of `block`: tile_rows, fewer at the end, 0 past the end.
  int tile_row_count(int64_t block, int t) const {
    return static_cast<int>(std::clamp<int64_t>(rows - tile_row0(block, t), 0, tile_rows));
  }
  // Row tiles of `block` that hold at least one row (>= 1 for block < blocks).
  int tiles_in_block(int64_t block) const {
    const int64_t left = rows - block * rows_per_block();
    return static_cast<int>(std::min<int64_t>(tiles_per_block, (left + tile_rows - 1) / tile_rows));
  }
  int64_t chunk_col0(int64_t chunk) const { return chunk * chunk_cols; }
  int chunk_width(int64_t chunk) const {
    return static_cast<int>(std::min<int64_t>(chunk_cols, cols - chunk_col0(chunk)));
  }
  // Region of argument `arg` (a row-major [rows, cols] tensor) that step `step` of `block` covers,
  // for row kernels whose steps are the block's row tiles, or - for chunked rows - its one row's
  // chunks, step % chunks (so that the steps may walk the row several times, one pass each).
  TileRegion step_region(int64_t block, int64_t step, uint16_t arg) const {
    const bool chunked = chunks > 1;
    const int tile = chunked ? 0 : static_cast<int>(step);
    const int64_t c = chunked ? step % chunks : 0;
    return TileRegion{arg, tile_row0(block, tile) * cols + chunk_col0(c), cols, tile_row_count(block, tile),
                      chunk_width(c)};
  }
  // Region of argument `arg`, a [cols] vector (a norm's weight, a bias), that chunk `chunk` of a
  // row pairs with (all of it when rows are not chunked), as one row.
  TileRegion vector_region(int64_t chunk, uint16_t arg) const {
    return TileRegion{arg, chunk_col0(chunk), chunk_cols, 1, chunk_width(chunk)};
  }
};

// acc[r] <- 1 / sqrt(acc[r] * inv_n + eps) for r < rows, in place: the reciprocal root of a mean
// square or variance from its sum (RMSNorm, LayerNorm).
inline void emit_rsqrt_mean_eps(TileProgram& p, BufferId acc, int rows, float inv_n, float eps) {
  p.unary(UnaryOp::kScale, acc, acc, rows, 1, inv_n);
  p.unary(UnaryOp::kAddImm, acc, acc, rows, 1, eps);
  p.unary(UnaryOp::kRsqrt, acc, acc, rows, 1);
}

// Most rows in one tile (reached for rows shorter than tile_elems / 256): bounds the [tile_rows, 1]
// row statistics each tile keeps, and the rows a block holds.
inline constexpr int kRowMaxTileRows = 256;
// Row tiles per block when rows are short and many: enough for the loads of the next tiles to
// overlap the vector work of this one.
inline constexpr int kRowMaxTilesPerBlock = 4;
// plan_row_tiling puts fewer rows in a block until there are this many blocks (or one row each):
// a few waves on every preset (64 to 148 cores), so that the last wave's tail stays small.
inline constexpr int64_t kRowTargetBlocks = 512;

// Plans the tiling of a [rows, cols] tensor (both positive) for tiles of at most `tile_elems`
// elements. A kernel sizes tile_elems so that all its SRAM buffers fit the smallest core SRAM.
inline RowTiling plan_row_tiling(int64_t rows, int64_t cols, int tile_elems) {
  RowTiling t;
  t.rows = rows;
  t.cols = cols;
  if (cols > tile_elems) {
    t.chunk_cols = tile_elems;
    t.chunks = ceil_div(cols, tile_elems);
    t.blocks = rows;
    return t;
  }
  t.chunk_cols = static_cast<int>(cols);
  const auto fit = static_cast<int>(std::min<int64_t>({tile_elems / cols, kRowMaxTileRows, rows}));
  const int64_t wanted = std::max<int64_t>(1, ceil_div(rows, kRowTargetBlocks));  // rows per block
  if (wanted <= fit) {
    t.tile_rows = static_cast<int>(wanted);
  } else {
    t.tile_rows = fit;
    t.tiles_per_block = static_cast<int>(std::min<int64_t>(kRowMaxTilesPerBlock, ceil_div(wanted, fit)));
  }
  t.blocks = ceil_div(rows, t.rows_per_block());
  return t;
}

// Emits a software-pipelined loop over `steps` steps whose inputs are loaded `stages` steps ahead
// into a ring of buffers: load(step, slot) emits the loads of a step into ring slot `slot`,
// body(step, slot) the instructions that use them. The loads of step i + stages are emitted after
// body(i), so they wait (through the derived dependencies) only until body(i) and any store it
// issued are done with that slot. Uses slots 0 .. min(stages, steps) - 1.
template <class Load, class Body>
void pipeline_steps(int64_t steps, int stages, Load&& load, Body&& body) {
  const int s = static_cast<int>(std::min<int64_t>(stages, steps));
  for (int i = 0; i < s; ++i) load(int64_t{i}, i);
  for (int64_t i = 0; i < steps; ++i) {
    const int slot = static_cast<int>(i % s);
    body(i, slot);
    if (i + s < steps) load(i + s, slot);
  }
}

// Bytes a data-dependent timing key may spend on its index vector (see data_timing_key): routes of
// a few hundred experts take a few thousand runs; keys stay far below the simulation they save.
inline constexpr size_t kDataTimingKeyMaxBytes = 65536;

// Kernel::timing_key for a kernel whose programs are a function of `head` (everything but the data:
// name, shape, options) and of the index vector `v` (token ids, routes): `head`, then `v` written
// exactly as its size, its first value and runs of equal steps ("|ids 6 7 +1x3 -3x2" is 7, 8, 9, 10,
// 7, 4). Indices from balanced routing or all-zero token ids collapse to a few runs, so identical
// launches (every layout of a search) are timed once. Returns "" (no key: every launch is simulated)
// when the runs would take more than kDataTimingKeyMaxBytes.
std::string data_timing_key(const std::string& head, const std::vector<int32_t>& v);

}  // namespace ppu::kernels
