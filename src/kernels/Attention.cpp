#include "kernels/Attention.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

#include "kernels/AttentionInternal.hpp"
#include "kernels/KernelUtil.hpp"

namespace ppu::kernels {

static_assert(kAttentionPackingNames.size() == static_cast<size_t>(AttentionPacking::kCount),
              "name table must cover every AttentionPacking");
static_assert(kAttentionStyleNames.size() == static_cast<size_t>(AttentionStyle::kCount),
              "name table must cover every AttentionStyle");

std::string AttentionConfig::describe() const {
  return fmt::format("{}packing {}, {}x{} tiles (q rows x kv), {} stages, up to {} splits",
                     style == AttentionStyle::kPipelined
                         ? ""
                         : fmt::format("{} style, ", kAttentionStyleNames[static_cast<size_t>(style)]),
                     kAttentionPackingNames[static_cast<size_t>(packing)], tile_q, tile_kv, stages, splits);
}

namespace {

constexpr float kNegMax = -std::numeric_limits<float>::max();

// Matrix-unit operand dtype for a tensor of dtype `t`: itself if 16-bit, else bf16 (exact for fp8,
// the fp32 range kept for fp32).
DType matrix_type(DType t) { return t == DType::kBF16 || t == DType::kF16 ? t : DType::kBF16; }

int64_t round64(int64_t bytes) { return (bytes + 63) / 64 * 64; }

// SRAM of one attention block; mirrors the allocations of the builder below.
int64_t attention_sram_bytes(int rows, int tile_kv, int stages, int64_t d, DType qk_t, DType pv_t, bool masked) {
  const int64_t qk = dtype_size_bytes(qk_t), pv = dtype_size_bytes(pv_t), r = rows, kv = tile_kv;
  int64_t b = round64(r * d * qk);                              // Q
  b += stages * (round64(kv * d * qk) + round64(kv * d * pv));  // K, V ring
  b += 2 * (round64(r * kv * 4) + round64(r * kv * pv));        // S, P (double-buffered)
  if (masked) b += round64(r * kv * 4);                         // mask tile
  b += round64(r * d * 4);                                      // O
  b += 5 * round64(r * 4);                                      // m (2), l, alpha, row max
  return b;
}

int64_t group_size(const AttentionShape& s) { return s.kv_heads > 0 ? s.q_heads / s.kv_heads : 1; }

// Rows a tile needs at most: tokens of a head, or heads of a group.
int64_t rows_needed(const AttentionShape& s, bool by_tokens) { return by_tokens ? s.q_tokens : group_size(s); }

// Tiles (not counting splits) of a call.
int64_t tile_count(const AttentionShape& s, bool by_tokens, int tile_q) {
  return by_tokens ? ceil_div(s.q_tokens, tile_q) * s.q_heads
                   : s.q_tokens * s.kv_heads * ceil_div(group_size(s), tile_q);
}

// Query rows one block processes. kTokens: row r is token token0 + r of head head0, at position
// pos0 + r. kHeads: row r is head head0 + r of token token0, every row at position pos0.
struct Tile {
  int64_t token0 = 0;
  int32_t head0 = 0;
  int32_t rows = 0;
  int64_t pos0 = 0;
  int64_t kv_end = 0;    // positions [0, kv_end) are visible to some row
  int64_t kv_tiles = 0;  // ceil(kv_end / tile_kv)
  int32_t splits = 1;
  int32_t combine_slot = -1;  // index among the split tiles (scratch slot), -1 if not split
};

// One block of the main kernel: KV tiles [kv_tile0, kv_tile1) of a tile, part `split` of it.
struct Item {
  int32_t tile = 0;
  int32_t split = 0;
  int64_t kv_tile0 = 0, kv_tile1 = 0;
};

struct Plan {
  AttentionConfig cfg;
  bool by_tokens = true;
  bool causal = true;
  int rows_alloc = 1;  // rows of every block's buffers
  std::vector<Tile> tiles;
  std::vector<Item> items;
  std::vector<int32_t> split_tiles;  // tiles with splits > 1, by combine slot
};

std::shared_ptr<const Plan> make_plan(const AttentionShape& s, const AttentionConfig& cfg) {
  auto plan = std::make_shared<Plan>();
  Plan& pl = *plan;
  pl.cfg = cfg;
  pl.by_tokens = cfg.packing == AttentionPacking::kTokens;
  pl.causal = s.causal;
  pl.rows_alloc = static_cast<int>(std::min<int64_t>(cfg.tile_q, rows_needed(s, pl.by_tokens)));
  const int64_t g = group_size(s);
  // kTokens: kv head by kv head (blocks running side by side then read the same few heads' K/V, which
  // stay in L2, as FlashAttention's grid runs the q tiles of a head together), and within one the
  // heaviest tiles (longest KV range) first, so that the last wave is made of short ones.
  if (pl.by_tokens) {
    for (int64_t kvh = 0; kvh < s.kv_heads; ++kvh)
      for (int64_t qt = ceil_div(s.q_tokens, cfg.tile_q) - 1; qt >= 0; --qt) {
        const int64_t t0 = qt * cfg.tile_q;
        const auto rows = static_cast<int32_t>(std::min<int64_t>(cfg.tile_q, s.q_tokens - t0));
        for (int64_t h = kvh * g; h < (kvh + 1) * g; ++h)
          pl.tiles.push_back(Tile{t0, static_cast<int32_t>(h), rows, s.past_len + t0, s.past_len + t0 + rows});
      }
  } else {
    for (int64_t t = s.q_tokens - 1; t >= 0; --t)
      for (int64_t kvh = 0; kvh < s.kv_heads; ++kvh)
        for (int64_t j = 0; j < g; j += cfg.tile_q) {
          const auto rows = static_cast<int32_t>(std::min<int64_t>(cfg.tile_q, g - j));
          pl.tiles.push_back(Tile{t, static_cast<int32_t>(kvh * g + j), rows, s.past_len + t, s.past_len + t + 1});
        }
  }
  int64_t max_kv_tiles = 1;
  for (Tile& t : pl.tiles) {
    if (!s.causal) t.kv_end = s.kv_len();
    t.kv_tiles = ceil_div(t.kv_end, cfg.tile_kv);
    max_kv_tiles = std::max(max_kv_tiles, t.kv_tiles);
  }
  // Every split gets about the same number of KV tiles, so long tiles get more splits.
  const int64_t per_split = ceil_div(max_kv_tiles, cfg.splits);
  for (size_t i = 0; i < pl.tiles.size(); ++i) {
    Tile& t = pl.tiles[i];
    t.splits = static_cast<int32_t>(ceil_div(t.kv_tiles, per_split));
    if (t.splits > 1) {
      t.combine_slot = static_cast<int32_t>(pl.split_tiles.size());
      pl.split_tiles.push_back(static_cast<int32_t>(i));
    }
  }
  // Items: the tiles of one kv head that read the same KV range (the heads of a group in kTokens,
  // the head chunks of a group in kHeads) are adjacent, split by split, so that blocks running
  // side by side share K/V tiles in L2.
  for (size_t i = 0; i < pl.tiles.size();) {
    const Tile& first = pl.tiles[i];
    const int64_t kvh = first.head0 / g;
    size_t end = i + 1;
    while (end < pl.tiles.size() && pl.tiles[end].head0 / g == kvh && pl.tiles[end].pos0 == first.pos0) ++end;
    for (int32_t sp = 0; sp < first.splits; ++sp)
      for (size_t j = i; j < end; ++j) {
        const Tile& t = pl.tiles[j];
        pl.items.push_back(
            Item{static_cast<int32_t>(j), sp, sp * t.kv_tiles / t.splits, (sp + 1) * t.kv_tiles / t.splits});
      }
    i = end;
  }
  return plan;
}

// Argument indices of the main kernel.
enum : uint16_t { kArgQ, kArgK, kArgV, kArgOut, kArgMask, kArgPartialO, kArgPartialML, kArgLse };

// Region of a tile's rows in a [*, rows of D] tensor laid out like q: row r of the tile is row
// (token0 * q_heads + head0) + r * step of the [q_tokens * q_heads, D] view.
TileRegion rows_region(uint16_t arg, const Tile& t, int64_t q_heads, int64_t d, bool by_tokens) {
  return TileRegion{arg, (t.token0 * q_heads + t.head0) * d, (by_tokens ? q_heads : 1) * d, t.rows,
                    static_cast<int>(d)};
}

// Region of a tile's rows in the log-sum-exp output [q_heads, q_tokens] (one value per row, a
// column of the tile): kTokens rows are consecutive tokens of one head, kHeads rows the heads of
// one token.
TileRegion lse_region(uint16_t arg, const Tile& t, int64_t q_tokens, bool by_tokens) {
  return TileRegion{arg, int64_t{t.head0} * q_tokens + t.token0, by_tokens ? 1 : q_tokens, t.rows, 1};
}

// Block table entries a paged block reads, counted in 16-bit elements of the workspace's mask (the
// kernel's stand-in source for the table's bytes, see PagedAttention.hpp): 4 bytes per entry, at most
// one row of the mask (190 entries; a block's first transfers need the first few only).
int table_read_elements(int64_t entries) {
  return static_cast<int>(std::min<int64_t>(2 * entries, kAttentionMaskCols));
}

Kernel make_main_kernel(const AttentionShape& s, std::shared_ptr<const Plan> plan, const AttentionWorkspace& ws,
                        const Buffer& q, const Buffer& k, const Buffer& v, const Buffer& out, const KvAddressing& kv,
                        const TensorArg& partial_o, const TensorArg& partial_ml, const TensorArg& lse) {
  const Plan& pl = *plan;
  Kernel kern;
  kern.name = fmt::format("{}attention {}x{}/{}x{} past {} {}{}",
                          kv.paged() ? fmt::format("paged({}) ", kv.block_size) : "", s.q_tokens, s.q_heads,
                          s.kv_heads, s.head_dim, s.past_len, dtype_name(k.dtype), s.causal ? "" : " non-causal");
  kern.grid = static_cast<int64_t>(pl.items.size());
  const bool has_lse = lse.numel > 0;
  kern.timing_key = fmt::format("{}|{}|{}|{}|{}|{}|{}{}", kern.name, pl.cfg.describe(), dtype_name(q.dtype),
                                dtype_name(v.dtype), dtype_name(out.dtype), s.kv_capacity, s.scale, has_lse ? "|lse" : "");
  // A paged kernel's loads follow the table: its entries (as far as the sequence reaches) are part
  // of the key, so that a table that reuses a block is not timed as one that does not.
  if (kv.paged()) {
    const auto used = static_cast<size_t>(ceil_div(s.kv_len(), kv.block_size));
    const std::vector<int32_t> entries(kv.table->begin(), kv.table->begin() + static_cast<std::ptrdiff_t>(used));
    kern.timing_key = data_timing_key(kern.timing_key, entries);
  }
  kern.args = {q.arg(), k.arg(), v.arg(), out.arg(), ws.mask.arg(), partial_o, partial_ml, lse};
  kern.ops = {KernelOp::attention(
      AttentionDims{1, s.q_tokens, s.kv_len(), s.q_heads, s.kv_heads, s.head_dim, s.causal, s.past_len})};
  // FlashAttention-2 style: synchronous MMAs, and one block at a time per core, so a core's matrix
  // unit idles during the softmax (see AttentionStyle).
  kern.sync_mma = pl.cfg.style == AttentionStyle::kFlashAttention2;
  if (kern.sync_mma) kern.max_resident_blocks = 1;
  // 2 * D FLOPs for each of q . k and p . v, per (q head, visible position).
  const double visible = s.causal ? double(s.q_tokens) * double(s.past_len) + double(s.q_tokens) * double(s.q_tokens + 1) / 2
                                  : double(s.q_tokens) * double(s.kv_len());
  kern.flops = 4.0 * double(s.head_dim) * double(s.q_heads) * visible;
  const DType qk_t = matrix_type(k.dtype), pv_t = matrix_type(v.dtype);
  const float scale = s.scale > 0.0f ? s.scale : static_cast<float>(1.0 / std::sqrt(double(s.head_dim)));
  const int d = static_cast<int>(s.head_dim);
  const int64_t q_heads = s.q_heads, kv_heads = s.kv_heads, g = group_size(s);
  const int64_t split_slots = std::max<int64_t>(1, static_cast<int64_t>(pl.split_tiles.size()));
  const int64_t q_tokens = s.q_tokens;
  kern.build = [plan, qk_t, pv_t, scale, d, q_heads, kv_heads, g, split_slots, q_tokens, has_lse, kv](int64_t block,
                                                                                                     TileProgram& p) {
    const Plan& pl = *plan;
    const AttentionConfig& cfg = pl.cfg;
    const Item& it = pl.items[static_cast<size_t>(block)];
    const Tile& tl = pl.tiles[static_cast<size_t>(it.tile)];
    const int R = pl.rows_alloc, tk = cfg.tile_kv, n = tl.rows;
    const int64_t steps = it.kv_tile1 - it.kv_tile0;
    const int stages = static_cast<int>(std::min<int64_t>(cfg.stages, steps));

    // Every block allocates the same buffers (block 0 sizes the SRAM a core reserves).
    const BufferId qb = p.alloc(qk_t, R, d, "q");
    BufferId kb[kAttentionMaxStages], vb[kAttentionMaxStages];
    for (int i = 0; i < cfg.stages; ++i) {
      kb[i] = p.alloc(qk_t, tk, d, "k");
      vb[i] = p.alloc(pv_t, tk, d, "v");
    }
    BufferId sb[2], pb[2];
    for (int i = 0; i < 2; ++i) {
      sb[i] = p.alloc(DType::kF32, R, tk, "s");
      pb[i] = p.alloc(pv_t, R, tk, "p");
    }
    const BufferId maskb = pl.by_tokens && pl.causal ? p.alloc(DType::kF32, R, tk, "mask") : BufferId{0};
    const BufferId ob = p.alloc(DType::kF32, R, d, "o");
    const BufferId mb[2] = {p.alloc(DType::kF32, R, 1, "m"), p.alloc(DType::kF32, R, 1, "m")};
    const BufferId lb = p.alloc(DType::kF32, R, 1, "l");
    const BufferId alpha = p.alloc(DType::kF32, R, 1, "alpha");
    const BufferId rmax = p.alloc(DType::kF32, R, 1, "row max");

    const int64_t kvh = tl.head0 / g;
    auto kv_start = [&](int64_t step) { return (it.kv_tile0 + step) * tk; };
    auto kv_width = [&](int64_t step) { return static_cast<int>(std::min<int64_t>(tk, tl.kv_end - kv_start(step))); };
    // Rows [pos, pos + rows) of this kv head: one region of a contiguous cache, or one per pool block
    // the range touches - each a transfer of its own, all in flight together (load_part), as a
    // paged kernel on hardware issues one copy per block.
    auto load_kv = [&](int64_t step, int slot) {
      const int64_t pos = kv_start(step);
      const int rows = kv_width(step);
      if (!kv.paged()) {
        const TileRegion r{kArgK, (pos * kv_heads + kvh) * d, kv_heads * d, rows, d};
        p.load(kb[slot], r);
        p.load(vb[slot], TileRegion{kArgV, r.offset, r.row_stride, r.rows, r.cols});
        return;
      }
      for (int r0 = 0; r0 < rows;) {
        const int64_t at = pos + r0, in_block = at % kv.block_size;
        const int64_t block_id = (*kv.table)[static_cast<size_t>(at / kv.block_size)];
        const int n = static_cast<int>(std::min<int64_t>(rows - r0, kv.block_size - in_block));
        const TileRegion r{kArgK, ((block_id * kv.block_size + in_block) * kv_heads + kvh) * d, kv_heads * d, n, d};
        p.load_part(kb[slot], r, r0);
        p.load_part(vb[slot], TileRegion{kArgV, r.offset, r.row_stride, r.rows, r.cols}, r0);
        r0 += n;
      }
    };
    auto emit_scores = [&](int64_t step) {
      p.mma(sb[step % 2], qb, kb[step % stages], n, kv_width(step), d, /*trans_a=*/false, /*trans_b=*/true,
            /*accumulate=*/false);
    };

    if (kv.paged()) {
      // The addresses of the first K/V transfers depend on the table: a dependent read of the
      // block's entries (its bytes, from the workspace; the values are in the addresses already)
      // into a score buffer not yet in use, then a fence. Later entries are read while earlier
      // tiles stream, as a real kernel's loop does, and cost nothing visible.
      const int64_t first = kv_start(0) / kv.block_size;
      const int64_t last = (kv_start(steps - 1) + kv_width(steps - 1) - 1) / kv.block_size;
      const int elems = table_read_elements(last - first + 1);
      const int cols = std::min(elems, tk), rows = std::min(static_cast<int>(ceil_div(elems, cols)), R);
      p.load(sb[1], TileRegion{kArgMask, 0, kAttentionMaskCols, rows, cols});
      p.sync();
    }
    p.load(qb, rows_region(kArgQ, tl, q_heads, d, pl.by_tokens));
    for (int i = 0; i < stages; ++i) load_kv(i, i);
    p.fill(mb[0], n, 1, kNegMax);
    int cur = 0;  // mb[cur] holds the running max
    const bool ahead = cfg.style == AttentionStyle::kPipelined;
    if (ahead) emit_scores(0);
    for (int64_t step = 0; step < steps; ++step) {
      // Pipelined: issue the next scores first, so the matrix unit computes them during this step's
      // softmax. FlashAttention-2 style: this step's scores now, then its softmax.
      if (!ahead) emit_scores(step);
      else if (step + 1 < steps) emit_scores(step + 1);
      const BufferId sc = sb[step % 2], pr = pb[step % 2];
      const int w = kv_width(step);
      p.unary(UnaryOp::kScale, sc, sc, n, w, scale);
      // kTokens: the tile crosses the diagonal if its last column is beyond row 0's position.
      const int64_t delta = tl.pos0 - kv_start(step);
      if (pl.by_tokens && pl.causal && w - 1 > delta) {
        p.load(maskb, TileRegion{kArgMask, kAttentionMaskDiag - delta, kAttentionMaskCols, n, w});
        p.binary(BinaryOp::kAdd, sc, sc, maskb, n, w);
      }
      if (step == 0) {
        p.reduce(ReduceOp::kMax, mb[cur], sc, n, w, /*accumulate=*/true);
      } else {
        const BufferId m_old = mb[cur], m_new = mb[1 - cur];
        p.reduce(ReduceOp::kMax, rmax, sc, n, w);
        p.binary(BinaryOp::kMax, m_new, m_old, rmax, n, 1);
        p.binary(BinaryOp::kSub, alpha, m_old, m_new, n, 1);  // <= 0: exp cannot overflow
        p.unary(UnaryOp::kExp, alpha, alpha, n, 1);
        cur = 1 - cur;
      }
      p.binary(BinaryOp::kSub, sc, sc, mb[cur], n, w, Broadcast::kRow);
      p.unary(UnaryOp::kExp, sc, sc, n, w);
      if (step > 0) p.binary(BinaryOp::kMul, lb, lb, alpha, n, 1);
      p.reduce(ReduceOp::kSum, lb, sc, n, w, /*accumulate=*/step > 0);
      p.cast(pr, sc, n, w);
      if (step > 0) p.binary(BinaryOp::kMul, ob, ob, alpha, n, d, Broadcast::kRow);
      p.mma(ob, pr, vb[step % stages], n, d, w, false, false, /*accumulate=*/step > 0);
      if (step + stages < steps) load_kv(step + stages, static_cast<int>(step % stages));
    }
    if (tl.splits == 1) {
      if (has_lse) {  // lse = m + log(l), before l is inverted
        p.unary(UnaryOp::kLog, rmax, lb, n, 1);
        p.binary(BinaryOp::kAdd, rmax, rmax, mb[cur], n, 1);
        p.store(lse_region(kArgLse, tl, q_tokens, pl.by_tokens), rmax);
      }
      p.unary(UnaryOp::kRecip, lb, lb, n, 1);
      p.binary(BinaryOp::kMul, ob, ob, lb, n, d, Broadcast::kRow);
      p.store(rows_region(kArgOut, tl, q_heads, d, pl.by_tokens), ob);
      return;
    }
    // Partial result of this split: O unnormalised, m and l per row.
    const int64_t slot = int64_t{tl.combine_slot} * cfg.splits + it.split;
    p.store(TileRegion{kArgPartialO, slot * R * d, d, n, d}, ob);
    p.store(TileRegion{kArgPartialML, slot * R, 1, n, 1}, mb[cur]);
    p.store(TileRegion{kArgPartialML, split_slots * cfg.splits * R + slot * R, 1, n, 1}, lb);
  };
  return kern;
}

Kernel make_combine_kernel(const ChipSpec& chip, const AttentionShape& s, std::shared_ptr<const Plan> plan,
                           const Buffer& out, const TensorArg& partial_o, const TensorArg& partial_ml,
                           const TensorArg& lse) {
  const Plan& pl = *plan;
  // Splits in flight: all of them when they fit half the SRAM (a decode step: a few KiB each), so
  // the DMA streams every part back to back instead of paying its latency split after split.
  const int64_t per_split = round64(int64_t{pl.rows_alloc} * s.head_dim * 4) + 2 * round64(int64_t{pl.rows_alloc} * 4);
  const int64_t fixed = per_split + 4 * round64(int64_t{pl.rows_alloc} * 4);
  const int stages = static_cast<int>(std::clamp<int64_t>(
      (static_cast<int64_t>(chip.sram_bytes() / 2) - fixed) / per_split, 2, std::max(2, pl.cfg.splits - 1)));
  Kernel kern;
  kern.name = fmt::format("attention combine {}x{}x{} {} splits", s.q_tokens, s.q_heads, s.head_dim, pl.cfg.splits);
  kern.grid = static_cast<int64_t>(pl.split_tiles.size());
  const bool has_lse = lse.numel > 0;
  kern.timing_key = fmt::format("{}|{}|{}|{}|{}|{}{}", kern.name, pl.cfg.describe(), s.kv_heads, s.past_len, s.kv_len(),
                                stages, has_lse ? "|lse" : "");
  kern.args = {partial_o, partial_ml, out.arg(), lse};
  const int d = static_cast<int>(s.head_dim);
  const int64_t q_heads = s.q_heads, q_tokens = s.q_tokens;
  const auto split_slots = static_cast<int64_t>(pl.split_tiles.size());
  kern.build = [plan, d, q_heads, q_tokens, split_slots, stages, has_lse](int64_t block, TileProgram& p) {
    const Plan& pl = *plan;
    const Tile& tl = pl.tiles[static_cast<size_t>(pl.split_tiles[static_cast<size_t>(block)])];
    const int R = pl.rows_alloc, n = tl.rows, max_splits = pl.cfg.splits;
    const BufferId ob = p.alloc(DType::kF32, R, d, "o");
    const BufferId mb[2] = {p.alloc(DType::kF32, R, 1, "m"), p.alloc(DType::kF32, R, 1, "m")};
    const BufferId lb = p.alloc(DType::kF32, R, 1, "l");
    const BufferId wa = p.alloc(DType::kF32, R, 1, "w_old");
    const BufferId wb = p.alloc(DType::kF32, R, 1, "w_split");
    std::vector<BufferId> os(static_cast<size_t>(stages)), ms(os.size()), ls(os.size());
    for (size_t i = 0; i < os.size(); ++i) {
      os[i] = p.alloc(DType::kF32, R, d, "o_split");
      ms[i] = p.alloc(DType::kF32, R, 1, "m_split");
      ls[i] = p.alloc(DType::kF32, R, 1, "l_split");
    }
    const int64_t slot0 = int64_t{tl.combine_slot} * max_splits;
    const int64_t l_base = split_slots * max_splits * R;
    auto load_split = [&](int64_t sp, BufferId o, BufferId m, BufferId l) {
      p.load(o, TileRegion{0, (slot0 + sp) * R * d, d, n, d});
      p.load(m, TileRegion{1, (slot0 + sp) * R, 1, n, 1});
      p.load(l, TileRegion{1, l_base + (slot0 + sp) * R, 1, n, 1});
    };
    load_split(0, ob, mb[0], lb);
    int cur = 0;
    pipeline_steps(
        tl.splits - 1, stages,
        [&](int64_t i, int slot_index) {
          const auto slot = static_cast<size_t>(slot_index);
          load_split(i + 1, os[slot], ms[slot], ls[slot]);
        },
        [&](int64_t, int slot_index) {
          const auto slot = static_cast<size_t>(slot_index);
          const BufferId m_old = mb[cur], m_new = mb[1 - cur];
          p.binary(BinaryOp::kMax, m_new, m_old, ms[slot], n, 1);
          p.binary(BinaryOp::kSub, wa, m_old, m_new, n, 1);
          p.unary(UnaryOp::kExp, wa, wa, n, 1);
          p.binary(BinaryOp::kSub, wb, ms[slot], m_new, n, 1);
          p.unary(UnaryOp::kExp, wb, wb, n, 1);
          p.binary(BinaryOp::kMul, ob, ob, wa, n, d, Broadcast::kRow);
          p.binary(BinaryOp::kMul, os[slot], os[slot], wb, n, d, Broadcast::kRow);
          p.binary(BinaryOp::kAdd, ob, ob, os[slot], n, d);
          p.binary(BinaryOp::kMul, lb, lb, wa, n, 1);
          p.binary(BinaryOp::kMul, ls[slot], ls[slot], wb, n, 1);
          p.binary(BinaryOp::kAdd, lb, lb, ls[slot], n, 1);
          cur = 1 - cur;
        });
    if (has_lse) {  // lse = M + log(L), into a scratch row vector
      p.unary(UnaryOp::kLog, wa, lb, n, 1);
      p.binary(BinaryOp::kAdd, wa, wa, mb[cur], n, 1);
      p.store(lse_region(3, tl, q_tokens, pl.by_tokens), wa);
    }
    p.unary(UnaryOp::kRecip, lb, lb, n, 1);
    p.binary(BinaryOp::kMul, ob, ob, lb, n, d, Broadcast::kRow);
    p.store(rows_region(2, tl, q_heads, d, pl.by_tokens), ob);
  };
  return kern;
}

}  // namespace

void check_attention_shape(const std::string& kname, const AttentionShape& s) {
  expect_positive(kname, {{"q_tokens", s.q_tokens},
                          {"q_heads", s.q_heads},
                          {"kv_heads", s.kv_heads},
                          {"head_dim", s.head_dim},
                          {"kv_capacity", s.kv_capacity}});
  if (s.past_len < 0) throw UserError(fmt::format("{}: past_len = {}; it must be >= 0", kname, s.past_len));
  if (s.q_heads % s.kv_heads != 0)
    throw UserError(
        fmt::format("{}: q_heads = {} is not a multiple of kv_heads = {}; grouped-query attention needs "
                    "every kv head to serve the same number of q heads",
                    kname, s.q_heads, s.kv_heads));
  if (s.kv_len() > s.kv_capacity)
    throw UserError(fmt::format("{}: kv_len = past_len + q_tokens = {} + {} = {} exceeds the cache's kv_capacity of {}",
                                kname, s.past_len, s.q_tokens, s.kv_len(), s.kv_capacity));
  if (s.head_dim > kAttentionMaxHeadDim)
    throw UserError(fmt::format("{}: head_dim = {}; at most {} is supported", kname, s.head_dim, kAttentionMaxHeadDim));
  if (!std::isfinite(s.scale) || s.scale < 0.0f)
    throw UserError(
        fmt::format("{}: scale = {}; it must be finite and > 0 (or 0 for 1/sqrt(head_dim))", kname, s.scale));
  if (s.q_heads > INT32_MAX || s.q_tokens > INT32_MAX || s.kv_capacity > INT32_MAX)
    throw UserError(fmt::format("{}: q_tokens, q_heads and kv_capacity must each be below 2^31", kname));
}

namespace {

void check_shape(const AttentionShape& s) { check_attention_shape("attention", s); }

void check_config(const AttentionConfig& c) {
  auto bad = [&](const char* field, int v, int lo, int hi) {
    if (v < lo || v > hi) throw UserError(fmt::format("attention: config {} = {}; valid: {} to {}", field, v, lo, hi));
  };
  if (c.packing == AttentionPacking::kAuto || c.packing == AttentionPacking::kCount)
    throw UserError("attention: config packing must be resolved to tokens or heads");
  if (c.style == AttentionStyle::kCount)
    throw UserError("attention: config style must be pipelined or flash-attention-2");
  bad("tile_q", c.tile_q, 1, kAttentionMaxTileQ);
  bad("tile_kv", c.tile_kv, 1, kAttentionMaxTileKv);
  bad("stages", c.stages, 2, kAttentionMaxStages);
  bad("splits", c.splits, 1, 1 << 16);
}

// KV splits per tile (flash-decoding), from a streaming model of the main kernel: a block reads its
// part of one kv head's cache at most at the core's DMA rate (blocks sharing a core share it), all
// of them together at most at the HBM read rate; splitting shortens the per-block stream but adds
// a second kernel (launch, a DMA round trip to load the parts and one to store the result). The
// smallest split count within 5% of the best estimate is taken (fewer parts, less scratch), with
// every part at least kAttentionMinSplitPositions long. Compute is not modelled: splits matter
// when the tiles are few, and then the K/V stream dominates (decode, short chunks of a long
// context). The timing engine, not this estimate, gives the time.
int choose_splits(const ChipSpec& chip, const AttentionShape& s, const AttentionConfig& c, bool by_tokens, DType k_type,
                  DType v_type) {
  const int64_t tiles = tile_count(s, by_tokens, c.tile_q);
  const auto cores = static_cast<double>(chip.num_cores());
  const int64_t most = std::max<int64_t>(1, s.kv_len() / kAttentionMinSplitPositions);
  if (static_cast<double>(tiles) >= cores || most == 1) return 1;
  const double tile_bytes =
      double(s.kv_len()) * double(s.head_dim) * (dtype_size_bytes(k_type) + dtype_size_bytes(v_type));
  // Tiles of one kv head that read the same positions share them through L2: HBM sees each once.
  const double unique_tiles =
      by_tokens ? double(ceil_div(s.q_tokens, c.tile_q)) * double(s.kv_heads) : double(s.q_tokens) * double(s.kv_heads);
  const double hbm_s = unique_tiles * tile_bytes / (chip.hbm_bandwidth.value * chip.hbm_read_efficiency.value);
  const double combine_s = chip.launch_latency.value + chip.block_latency.value + 2 * chip.dma_latency.value;
  auto estimate = [&](int64_t splits) {
    const double blocks = double(tiles) * double(splits);
    const double per_core = std::ceil(blocks / cores);
    const double stream_s = tile_bytes / double(splits) * per_core / chip.dma_bandwidth_per_core.value;
    return std::max(stream_s, hbm_s) + (splits > 1 ? combine_s : 0.0);
  };
  double best = INFINITY;
  for (int64_t sp = 1; sp <= most; ++sp) best = std::min(best, estimate(sp));
  for (int64_t sp = 1; sp <= most; ++sp)
    if (estimate(sp) <= 1.05 * best) return static_cast<int>(sp);
  return 1;
}

}  // namespace

AttentionWorkspace make_attention_workspace(Device& dev, Stream* s) {
  AttentionWorkspace ws;
  ws.mask = dev.alloc(DType::kBF16, int64_t{kAttentionMaskRows} * kAttentionMaskCols, "attention.mask");
  std::vector<float> m(static_cast<size_t>(ws.mask.numel));
  for (int r = 0; r < kAttentionMaskRows; ++r)
    for (int x = 0; x < kAttentionMaskCols; ++x)
      m[static_cast<size_t>(r * kAttentionMaskCols + x)] = x - r <= kAttentionMaskDiag ? 0.0f : -INFINITY;
  dev.upload(ws.mask, m, s);
  return ws;
}

void free_attention_workspace(Device& dev, AttentionWorkspace& ws) {
  if (ws.mask.valid()) dev.free(ws.mask);
}

AttentionConfig choose_attention_config(const ChipSpec& chip, const AttentionShape& s, DType k_type, DType v_type,
                                        const AttentionConfig& base) {
  AttentionConfig c = base;
  const int64_t g = group_size(s);
  if (c.packing == AttentionPacking::kAuto)
    c.packing = s.q_tokens <= g ? AttentionPacking::kHeads : AttentionPacking::kTokens;
  const bool by_tokens = c.packing == AttentionPacking::kTokens;
  const int64_t need_rows = std::max<int64_t>(1, rows_needed(s, by_tokens));
  const DType qk_t = matrix_type(k_type), pv_t = matrix_type(v_type);
  // Query rows: a tile of r rows does 4 r D FLOPs per 2 D element sizes of K/V it streams, i.e. r
  // FLOPs per byte for 16-bit caches. 64 rows when that keeps the matrix unit fed from the core's
  // share of L2 (or its DMA rate, if lower), else 128 (h100: ~82 FLOPs per byte needed, b200 ~126;
  // a100 ~49) - provided 128-row tiles still make three blocks per core: below that the waves and
  // the causal imbalance (the last q tiles see the most positions) cost more than L2 traffic.
  // The kHeads layout has a group's heads as rows, at most 64 at once.
  // KV positions per step: 64 (S, P and the mask stay small); 128 for kHeads, whose few rows leave
  // room for longer DMA transfers.
  if (c.tile_q == 0) {
    const double cores = chip.num_cores();
    const double core_flops = chip.matrix_flops_per_s(qk_t) * chip.mma_efficiency_for(qk_t) / cores;
    const double core_bytes = std::min(chip.dma_bandwidth_per_core.value, chip.l2_bandwidth.value / cores);
    const double kv_es = 0.5 * (dtype_size_bytes(k_type) + dtype_size_bytes(v_type));
    const bool l2_bound = 64 * 2 / kv_es < core_flops / core_bytes;
    const int rows = by_tokens && l2_bound && tile_count(s, true, 128) >= 3 * chip.num_cores() ? 128 : 64;
    c.tile_q = static_cast<int>(std::min<int64_t>(rows, need_rows));
  }
  if (c.tile_kv == 0) c.tile_kv = by_tokens ? 64 : 128;
  const double sram = chip.sram_bytes();
  if (c.stages == 0) {
    // The deepest pipeline (up to 3) that lets two blocks share a core, halving the KV tile down to
    // 32 if needed (head_dim 256 on a 420 KiB core); failing that, one block per core, halving the
    // query tile down to 16 if needed.
    const int rows = static_cast<int>(std::min<int64_t>(c.tile_q, need_rows));
    auto bytes = [&](int tq, int tkv, int st) {
      return static_cast<double>(
          attention_sram_bytes(std::min(rows, tq), tkv, st, s.head_dim, qk_t, pv_t, by_tokens && s.causal));
    };
    for (int blocks : {2, 1}) {
      for (int tq = c.tile_q; c.stages == 0 && tq >= (base.tile_q ? c.tile_q : std::min(c.tile_q, 16)); tq /= 2)
        for (int tkv = c.tile_kv; c.stages == 0 && tkv >= (base.tile_kv ? c.tile_kv : std::min(c.tile_kv, 32));
             tkv /= 2)
          for (int st = 3; st >= 2 && c.stages == 0; --st)
            if (blocks * bytes(tq, tkv, st) <= sram) {
              c.stages = st;
              c.tile_q = tq;
              c.tile_kv = tkv;
            }
      if (c.stages != 0) break;
      if (blocks == 2) continue;
      c.stages = 2;  // nothing fits: the executors' validation names the kernel and the sizes
    }
  }
  if (c.splits == 0) c.splits = choose_splits(chip, s, c, by_tokens, k_type, v_type);
  return c;
}

void check_attention_device(const std::string& kname, const Device& dev, const AttentionWorkspace& ws, DType k_type,
                            DType v_type) {
  if (!ws.mask.valid() || ws.mask.dtype != DType::kBF16 ||
      ws.mask.numel != int64_t{kAttentionMaskRows} * kAttentionMaskCols)
    throw UserError(
        fmt::format("{}: the workspace's mask '{}' is not one made by make_attention_workspace", kname, ws.mask.name));
  for (DType t : {matrix_type(k_type), matrix_type(v_type)})
    if (!dev.chip().supports(t))
      throw UserError(fmt::format("{}: {} has no {} matrix unit for the attention operands", kname, dev.chip().name,
                                  dtype_name(t)));
}

AttentionTiming launch_attention(Device& dev, const AttentionWorkspace& ws, const std::vector<AttentionPart>& parts,
                                 Stream* stream, const AttentionConfig& base, const Buffer* lse) {
  PPU_CHECK(!parts.empty() && (lse == nullptr || parts.size() == 1), "launch_attention: parts");
  const auto B = static_cast<int64_t>(parts.size());
  // Several sequences: configured as one wide sequence, the batch's heads side by side and the
  // longest context.
  AttentionShape agg = parts[0].shape;
  for (const AttentionPart& pt : parts) {
    agg.q_tokens = std::max(agg.q_tokens, pt.shape.q_tokens);
    agg.past_len = std::max(agg.past_len, pt.shape.past_len);
    agg.kv_capacity = std::max(agg.kv_capacity, pt.shape.kv_capacity);
  }
  agg.q_heads *= B;
  agg.kv_heads *= B;
  const AttentionConfig cfg = choose_attention_config(dev.chip(), agg, parts[0].k.dtype, parts[0].v.dtype, base);
  check_config(cfg);
  // Largest part first: block 0 must need the most SRAM.
  std::vector<size_t> order(parts.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return parts[a].shape.q_tokens * parts[a].shape.kv_len() > parts[b].shape.q_tokens * parts[b].shape.kv_len();
  });
  const TensorArg lse_arg = lse ? lse->arg() : TensorArg{};
  std::vector<Kernel> mains, combines;
  std::vector<Buffer> scratch;
  try {
    for (size_t idx : order) {
      const AttentionPart& pt = parts[idx];
      const AttentionShape& s = pt.shape;
      const auto plan = make_plan(s, cfg);
      const auto split_tiles = static_cast<int64_t>(plan->split_tiles.size());
      TensorArg po{}, pml{};
      if (split_tiles > 0) {
        const int64_t rows = split_tiles * cfg.splits * plan->rows_alloc;
        scratch.push_back(dev.alloc(DType::kF32, rows * s.head_dim, "attention.partial_o"));
        po = scratch.back().arg();
        scratch.push_back(dev.alloc(DType::kF32, 2 * rows, "attention.partial_ml"));
        pml = scratch.back().arg();
        combines.push_back(make_combine_kernel(dev.chip(), s, plan, pt.out, po, pml, lse_arg));
      }
      mains.push_back(make_main_kernel(s, plan, ws, pt.q, pt.k, pt.v, pt.out, pt.kv, po, pml, lse_arg));
    }
    AttentionTiming timing;
    timing.config = cfg;
    timing.attention = dev.launch(
        B == 1 ? std::move(mains[0]) : concat_kernels(fmt::format("attention batch {}", B), std::move(mains)), stream);
    if (!combines.empty())
      timing.combine = dev.launch(B == 1 ? std::move(combines[0])
                                         : concat_kernels(fmt::format("attention combine batch {}", B), std::move(combines)),
                                  stream);
    for (Buffer& b : scratch) dev.free(b);
    return timing;
  } catch (...) {
    for (Buffer& b : scratch) dev.free(b);
    throw;
  }
}

AttentionTiming attention(Device& dev, const AttentionWorkspace& ws, const AttentionShape& s, const Buffer& q,
                          const Buffer& k_cache, const Buffer& v_cache, const Buffer& out, Stream* stream,
                          const AttentionConfig* config, const Buffer* lse) {
  const std::string kname = "attention";
  check_shape(s);
  const auto q_shape = fmt::format("[{}, {}, {}] (q_tokens, q_heads, head_dim)", s.q_tokens, s.q_heads, s.head_dim);
  const auto kv_shape =
      fmt::format("[{}, {}, {}] (kv_capacity, kv_heads, head_dim)", s.kv_capacity, s.kv_heads, s.head_dim);
  expect_numel(kname, "q", q, s.q_tokens * s.q_heads * s.head_dim, q_shape);
  expect_numel(kname, "k_cache", k_cache, s.kv_capacity * s.kv_heads * s.head_dim, kv_shape);
  expect_numel(kname, "v_cache", v_cache, s.kv_capacity * s.kv_heads * s.head_dim, kv_shape);
  expect_numel(kname, "output", out, s.q_tokens * s.q_heads * s.head_dim, q_shape);
  if (lse) {
    expect_numel(kname, "lse", *lse, s.q_heads * s.q_tokens,
                 fmt::format("[{}, {}] (q_heads, q_tokens)", s.q_heads, s.q_tokens));
    expect_dtype_in(kname, "lse", *lse, {DType::kF32});
  }
  check_attention_device(kname, dev, ws, k_cache.dtype, v_cache.dtype);
  return launch_attention(dev, ws, {AttentionPart{s, q, k_cache, v_cache, out, KvAddressing{}}}, stream,
                          config ? *config : AttentionConfig{}, lse);
}

AttentionTiming attention_batch(Device& dev, const AttentionWorkspace& ws, const std::vector<AttentionBatchItem>& items,
                                Stream* stream, AttentionStyle style) {
  if (items.empty()) throw UserError("attention_batch: no sequences");
  AttentionConfig base;
  base.style = style;
  if (items.size() == 1) {
    const auto& it = items[0];
    return attention(dev, ws, it.shape, it.q, it.k_cache, it.v_cache, it.out, stream, &base);
  }
  const AttentionShape& first = items[0].shape;
  for (const auto& it : items)
    if (it.shape.q_heads != first.q_heads || it.shape.kv_heads != first.kv_heads ||
        it.shape.head_dim != first.head_dim || it.shape.causal != first.causal)
      throw UserError("attention_batch: every sequence must have the same q_heads, kv_heads, head_dim and causal flag");
  std::vector<AttentionPart> parts;
  for (size_t idx = 0; idx < items.size(); ++idx) {
    const AttentionBatchItem& it = items[idx];
    const AttentionShape& s = it.shape;
    check_shape(s);
    const auto q_shape = fmt::format("[{}, {}, {}] (q_tokens, q_heads, head_dim)", s.q_tokens, s.q_heads, s.head_dim);
    const auto kv_shape = fmt::format("[{}, {}, {}] (kv_capacity, kv_heads, head_dim)", s.kv_capacity, s.kv_heads, s.head_dim);
    const std::string kname = fmt::format("attention_batch item {}", idx);
    expect_numel(kname, "q", it.q, s.q_tokens * s.q_heads * s.head_dim, q_shape);
    expect_numel(kname, "k_cache", it.k_cache, s.kv_capacity * s.kv_heads * s.head_dim, kv_shape);
    expect_numel(kname, "v_cache", it.v_cache, s.kv_capacity * s.kv_heads * s.head_dim, kv_shape);
    expect_numel(kname, "output", it.out, s.q_tokens * s.q_heads * s.head_dim, q_shape);
    parts.push_back(AttentionPart{s, it.q, it.k_cache, it.v_cache, it.out, KvAddressing{}});
  }
  return launch_attention(dev, ws, parts, stream, base, nullptr);
}

std::vector<double> attention_reference(const AttentionShape& s, const std::vector<float>& q,
                                        const std::vector<float>& k_cache, const std::vector<float>& v_cache) {
  const int64_t d = s.head_dim, g = group_size(s);
  PPU_CHECK(s.kv_heads > 0 && s.q_heads % s.kv_heads == 0 && s.kv_len() <= s.kv_capacity &&
                static_cast<int64_t>(q.size()) == s.q_tokens * s.q_heads * d &&
                static_cast<int64_t>(k_cache.size()) == s.kv_capacity * s.kv_heads * d &&
                static_cast<int64_t>(v_cache.size()) == s.kv_capacity * s.kv_heads * d,
            "attention_reference: shapes");
  const double scale = s.scale > 0.0f ? double(s.scale) : 1.0 / std::sqrt(double(d));
  std::vector<double> out(q.size()), score;
  for (int64_t t = 0; t < s.q_tokens; ++t)
    for (int64_t h = 0; h < s.q_heads; ++h) {
      const float* qr = q.data() + (t * s.q_heads + h) * d;
      const int64_t kvh = h / g, visible = s.causal ? s.past_len + t + 1 : s.kv_len();
      score.assign(static_cast<size_t>(visible), 0.0);
      double m = -INFINITY;
      for (int64_t j = 0; j < visible; ++j) {
        const float* kr = k_cache.data() + (j * s.kv_heads + kvh) * d;
        double acc = 0;
        for (int64_t c = 0; c < d; ++c) acc += double(qr[c]) * double(kr[c]);
        score[static_cast<size_t>(j)] = acc * scale;
        m = std::max(m, acc * scale);
      }
      double l = 0;
      double* o = out.data() + (t * s.q_heads + h) * d;
      for (int64_t j = 0; j < visible; ++j) {
        const double p = std::exp(score[static_cast<size_t>(j)] - m);
        l += p;
        const float* vr = v_cache.data() + (j * s.kv_heads + kvh) * d;
        for (int64_t c = 0; c < d; ++c) o[c] += p * double(vr[c]);
      }
      for (int64_t c = 0; c < d; ++c) o[c] /= l;
    }
  return out;
}

}  // namespace ppu::kernels
