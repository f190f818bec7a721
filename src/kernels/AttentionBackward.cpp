#include "kernels/AttentionBackward.hpp"

#include <algorithm>
#include <cmath>
#include <memory>

#include "kernels/KernelUtil.hpp"

namespace ppu::kernels {

namespace {

const std::string kName = "attention_backward";

// Matrix-unit operand dtype for inputs of dtype `t` (as the forward): itself if 16-bit, else bf16.
DType matrix_type(DType t) { return t == DType::kBF16 || t == DType::kF16 ? t : DType::kBF16; }

int64_t round64(int64_t bytes) { return (bytes + 63) / 64 * 64; }

int64_t group_size(const AttentionBackwardShape& s) { return s.kv_heads > 0 ? s.q_heads / s.kv_heads : 1; }

float resolved_scale(const AttentionBackwardShape& s) {
  return s.scale > 0.0f ? s.scale : static_cast<float>(1.0 / std::sqrt(double(s.head_dim)));
}

// Position of query 0 (causal alignment: the last query sees every key).
int64_t query_offset(const AttentionBackwardShape& s) { return s.seq_k - s.seq_q; }

void check_shape(const AttentionBackwardShape& s) {
  expect_positive(kName, {{"batch", s.batch},
                          {"seq_q", s.seq_q},
                          {"seq_k", s.seq_k},
                          {"q_heads", s.q_heads},
                          {"kv_heads", s.kv_heads},
                          {"head_dim", s.head_dim}});
  if (s.q_heads % s.kv_heads != 0)
    throw UserError(fmt::format("{}: q_heads = {} is not a multiple of kv_heads = {}; grouped-query attention needs "
                                "every kv head to serve the same number of q heads",
                                kName, s.q_heads, s.kv_heads));
  if (s.head_dim > kAttentionMaxHeadDim)
    throw UserError(fmt::format("{}: head_dim = {}; at most {} is supported", kName, s.head_dim, kAttentionMaxHeadDim));
  if (s.causal && s.seq_q > s.seq_k)
    throw UserError(fmt::format("{}: causal with seq_q = {} > seq_k = {}; queries are aligned to the last key, so the "
                                "first ones would see no key (valid: seq_q <= seq_k, or causal = false)",
                                kName, s.seq_q, s.seq_k));
  if (!std::isfinite(s.scale) || s.scale < 0.0f)
    throw UserError(
        fmt::format("{}: scale = {}; it must be finite and > 0 (or 0 for 1/sqrt(head_dim))", kName, s.scale));
  if (s.seq_q > INT32_MAX || s.seq_k > INT32_MAX || s.q_heads > INT32_MAX)
    throw UserError(fmt::format("{}: seq_q, seq_k and q_heads must each be below 2^31", kName));
}

void check_config(const AttentionBackwardConfig& c) {
  auto bad = [&](const char* field, int v, int lo, int hi) {
    if (v < lo || v > hi) throw UserError(fmt::format("{}: config {} = {}; valid: {} to {}", kName, field, v, lo, hi));
  };
  if (c.style == AttentionStyle::kCount)
    throw UserError(fmt::format("{}: config style must be pipelined or flash-attention-2", kName));
  bad("dkdv_tile_kv", c.dkdv_tile_kv, 1, kAttentionMaxTileKv);
  bad("dkdv_tile_q", c.dkdv_tile_q, 1, kAttentionMaxTileQ);
  bad("dq_tile_q", c.dq_tile_q, 1, kAttentionMaxTileQ);
  bad("dq_tile_kv", c.dq_tile_kv, 1, kAttentionMaxTileKv);
  bad("stages", c.stages, 2, kAttentionMaxStages);
}

// Throws unless the two buffers are disjoint in device memory.
void expect_disjoint(const Buffer& a, const char* a_role, const Buffer& b, const char* b_role) {
  if (a.addr < b.addr + static_cast<uint64_t>(b.bytes) && b.addr < a.addr + static_cast<uint64_t>(a.bytes))
    throw UserError(fmt::format("{}: {} '{}' overlaps {} '{}'; every gradient needs its own memory, apart from the "
                                "inputs (the kernels read the inputs after some gradients are stored)",
                                kName, a_role, a.name, b_role, b.name));
}

std::string shape_key(const AttentionBackwardShape& s) {
  return fmt::format("{}x{}x{}|{}/{}x{}|{}|{}", s.batch, s.seq_q, s.seq_k, s.q_heads, s.kv_heads, s.head_dim, s.scale,
                     s.causal ? "causal" : "full");
}

// --- kernel 1: D = rowsum(dO * O) -----------------------------------------------------------------

// Elements per tile of the dot kernel: 8192 (32 KiB fp32 per operand), so two operands in two
// stages take 128 KiB and two blocks fit every core.
constexpr int kDotTileElems = 8192;
// Query rows per such tile (the dot kernel's, and the FA2 style's dQ conversion's).
int dot_tile_rows(const AttentionBackwardShape& s) {
  return static_cast<int>(std::clamp<int64_t>(kDotTileElems / s.head_dim, 16, 128));
}
constexpr int kDotTilesPerBlock = 4;

// FlashAttention-2 style: also clears the fp32 dQ accumulator `dq_accum` (as FA2's preprocessing
// kernel does), rows of this block's queries.
Kernel make_dot_kernel(const AttentionBackwardShape& s, const Buffer& o, const Buffer& d_o, const TensorArg& dvec,
                       const TensorArg& dq_accum) {
  enum : uint16_t { kArgO, kArgDO, kArgD, kArgDQAcc };
  const int d = static_cast<int>(s.head_dim);
  const int rows = dot_tile_rows(s);
  const int64_t tiles = ceil_div(s.seq_q, rows), chunks = ceil_div(tiles, kDotTilesPerBlock);
  Kernel kern;
  kern.name = fmt::format("attention backward dot {}x{}x{}x{}", s.batch, s.seq_q, s.q_heads, s.head_dim);
  kern.grid = s.batch * s.q_heads * chunks;
  const bool clear = dq_accum.numel > 0;
  kern.timing_key = fmt::format("{}|{}|{}|{}{}", kern.name, dtype_name(o.dtype), dtype_name(d_o.dtype), rows,
                                clear ? "|clear dq" : "");
  kern.args = {o.arg(), d_o.arg(), dvec};
  if (clear) kern.args.push_back(dq_accum);
  kern.flops = 0;  // FlashAttention's accounting counts the five matrix products only
  const int64_t seq_q = s.seq_q, heads = s.q_heads;
  kern.build = [=](int64_t block, TileProgram& p) {
    const int64_t bh = block / chunks, chunk = block % chunks, b = bh / heads, h = bh % heads;
    const int64_t steps = std::min<int64_t>(kDotTilesPerBlock, tiles - chunk * kDotTilesPerBlock);
    BufferId ob[2], dob[2], db[2];
    for (int i = 0; i < 2; ++i) {
      ob[i] = p.alloc(DType::kF32, rows, d, "o");
      dob[i] = p.alloc(DType::kF32, rows, d, "do");
      db[i] = p.alloc(DType::kF32, rows, 1, "D");
    }
    const BufferId zero = clear ? p.alloc(DType::kF32, rows, d, "zero") : BufferId{0};
    if (clear) p.fill(zero, rows, d, 0.0f);
    auto t0 = [&](int64_t step) { return (chunk * kDotTilesPerBlock + step) * rows; };
    auto n = [&](int64_t step) { return static_cast<int>(std::min<int64_t>(rows, seq_q - t0(step))); };
    pipeline_steps(
        steps, 2,
        [&](int64_t step, int slot) {
          const int64_t off = ((b * seq_q + t0(step)) * heads + h) * d;
          p.load(ob[slot], TileRegion{kArgO, off, heads * d, n(step), d});
          p.load(dob[slot], TileRegion{kArgDO, off, heads * d, n(step), d});
        },
        [&](int64_t step, int slot) {
          p.binary(BinaryOp::kMul, ob[slot], ob[slot], dob[slot], n(step), d);
          p.reduce(ReduceOp::kSum, db[slot], ob[slot], n(step), d);
          p.store(TileRegion{kArgD, bh * seq_q + t0(step), 1, n(step), 1}, db[slot]);
          if (clear) p.store(TileRegion{kArgDQAcc, ((b * seq_q + t0(step)) * heads + h) * d, heads * d, n(step), d}, zero);
        });
  };
  return kern;
}

// --- kernels 2 and 3 ------------------------------------------------------------------------------

// Arguments shared by the dK/dV and dQ kernels (the gradients and the mask follow).
enum : uint16_t { kArgQ, kArgK, kArgV, kArgDO, kArgLse, kArgD, kArgGrad0 };

struct Common {
  int64_t batch, seq_q, seq_k, q_heads, kv_heads, g, off;
  int d;
  float scale;
  bool causal, ahead;
  DType mt;
  // Element offset of row `t` of head `h` of sequence `b` in a [batch, seq, heads, d] tensor.
  int64_t row(int64_t b, int64_t t, int64_t seq, int64_t heads, int64_t h) const { return ((b * seq + t) * heads + h) * d; }
};

Common make_common(const AttentionBackwardShape& s, const AttentionBackwardConfig& c, DType in_type) {
  return Common{s.batch, s.seq_q, s.seq_k, s.q_heads, s.kv_heads, group_size(s), query_offset(s),
                static_cast<int>(s.head_dim), resolved_scale(s), s.causal, c.style == AttentionStyle::kPipelined,
                matrix_type(in_type)};
}

void set_style(Kernel& k, const AttentionBackwardConfig& c) {
  // FlashAttention-2 style: synchronous MMAs and one block per core (see AttentionStyle).
  k.sync_mma = c.style == AttentionStyle::kFlashAttention2;
  if (k.sync_mma) k.max_resident_blocks = 1;
}

// P = exp(scale * S [+ mask] - lse) in place in `sb` ([n, w] of it), for a tile whose row 0 is at
// position `pos0` and whose column 0 is key `k0`; the mask is loaded only where the tile crosses
// the diagonal (see Attention.hpp, "Causal mask").
void emit_probabilities(TileProgram& p, const Common& c, uint16_t mask_arg, BufferId sb, BufferId maskb,
                        BufferId lseb, int n, int w, int64_t pos0, int64_t k0) {
  p.unary(UnaryOp::kScale, sb, sb, n, w, c.scale);
  const int64_t delta = pos0 - k0;
  if (c.causal && w - 1 > delta) {
    p.load(maskb, TileRegion{mask_arg, kAttentionMaskDiag - delta, kAttentionMaskCols, n, w});
    p.binary(BinaryOp::kAdd, sb, sb, maskb, n, w);
  }
  p.binary(BinaryOp::kSub, sb, sb, lseb, n, w, Broadcast::kRow);
  p.unary(UnaryOp::kExp, sb, sb, n, w);
}

// dS = P * (dP - D) in place in `dpb`, then cast to the matrix dtype into `dsb`.
void emit_dscores(TileProgram& p, BufferId dpb, BufferId sb, BufferId db, BufferId dsb, int n, int w) {
  p.binary(BinaryOp::kSub, dpb, dpb, db, n, w, Broadcast::kRow);
  p.binary(BinaryOp::kMul, dpb, dpb, sb, n, w);
  p.cast(dsb, dpb, n, w);
}

// The dK/dV work: one item per (sequence, kv head, key tile), its steps the (q head of the group,
// query tile) pairs that see its keys. When the items are too few to fill the chip twice over (GQA
// with few kv heads, short or few sequences), an item's steps are cut into parts of about
// `per_part` steps, each run by its own block that stores fp32 partial dK and dV to a scratch
// buffer; a combine kernel sums the parts of each item in order (deterministic) into dk and dv.
struct DkdvItem {
  int64_t b = 0, kvh = 0, j = 0;
  int64_t i_first = 0, steps = 0;  // first query tile; steps = g * (query tiles from i_first)
  int32_t parts = 1;
  int64_t slot0 = -1;  // first scratch slot of its parts (-1: not split)
};
struct DkdvBlock {
  int32_t item = 0, part = 0;
  int64_t st0 = 0, st1 = 0;  // steps [st0, st1) of the item
};
struct DkdvPlan {
  int64_t per_part = 0;  // 0: no split; -1: one part per q head of the group (FlashAttention-2 style)
  std::vector<DkdvItem> items;
  std::vector<DkdvBlock> blocks;
  std::vector<int32_t> split_items;
  int64_t slots = 0;  // scratch slots (one per block of a split item)
};

// A part runs at least this many steps: each part adds a K/V load and a partial store (a few
// steps' worth of DMA), and the combine's reads.
constexpr int64_t kDkdvMinPartSteps = 8;

std::shared_ptr<const DkdvPlan> make_dkdv_plan(const AttentionBackwardShape& s, const AttentionBackwardConfig& cfg,
                                               int cores) {
  auto plan = std::make_shared<DkdvPlan>();
  DkdvPlan& pl = *plan;
  const int tk = cfg.dkdv_tile_kv, tq = cfg.dkdv_tile_q;
  const int64_t kv_tiles = ceil_div(s.seq_k, tk), q_tiles = ceil_div(s.seq_q, tq), g = group_size(s);
  int64_t total = 0;
  // Kv head by kv head (concurrent blocks stream the same Q and dO tiles through L2), the key tiles
  // that see the most queries first (causal: tile 0), so the last wave is made of short blocks.
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t kvh = 0; kvh < s.kv_heads; ++kvh)
      for (int64_t j = 0; j < kv_tiles; ++j) {
        DkdvItem it{b, kvh, j};
        it.i_first = s.causal ? std::max<int64_t>(0, j * tk - query_offset(s)) / tq : 0;
        it.steps = g * (q_tiles - it.i_first);
        total += it.steps;
        pl.items.push_back(it);
      }
  const auto items = static_cast<int64_t>(pl.items.size());
  const bool fa2 = cfg.style == AttentionStyle::kFlashAttention2;
  if (fa2) pl.per_part = g > 1 ? -1 : 0;  // one block per q head (FA2 sums each group's dK/dV after)
  else if (items < 2 * int64_t{cores}) pl.per_part = std::max(kDkdvMinPartSteps, ceil_div(total, 2 * int64_t{cores}));
  for (size_t i = 0; i < pl.items.size(); ++i) {
    DkdvItem& it = pl.items[i];
    it.parts = pl.per_part < 0   ? static_cast<int32_t>(g)
               : pl.per_part > 0 ? static_cast<int32_t>(std::max<int64_t>(1, ceil_div(it.steps, pl.per_part)))
                                 : 1;
    if (it.parts > 1) {
      it.slot0 = pl.slots;
      pl.slots += it.parts;
      pl.split_items.push_back(static_cast<int32_t>(i));
    }
    for (int32_t part = 0; part < it.parts; ++part)
      pl.blocks.push_back(DkdvBlock{static_cast<int32_t>(i), part, part * it.steps / it.parts,
                                    (part + 1) * it.steps / it.parts});
  }
  return plan;
}

Kernel make_dkdv_kernel(const AttentionBackwardShape& s, const AttentionBackwardConfig& cfg,
                        std::shared_ptr<const DkdvPlan> plan, const AttentionWorkspace& ws, const Buffer& q,
                        const Buffer& k, const Buffer& v, const Buffer& d_o, const Buffer& lse, const TensorArg& dvec,
                        const Buffer& dk, const Buffer& dv, const TensorArg& partial, const TensorArg& dq_accum) {
  enum : uint16_t { kArgDK = kArgGrad0, kArgDV, kArgMask, kArgPartial, kArgDQAcc };
  const Common c = make_common(s, cfg, q.dtype);
  const int tk = cfg.dkdv_tile_kv, tq = cfg.dkdv_tile_q, stages_cfg = cfg.stages;
  const int64_t q_tiles = ceil_div(s.seq_q, tq);
  Kernel kern;
  kern.name = fmt::format("attention backward dkdv {}x{}x{}x{}/{}x{}{}", s.batch, s.seq_q, s.seq_k, s.q_heads,
                          s.kv_heads, s.head_dim, s.causal ? "" : " non-causal");
  kern.grid = static_cast<int64_t>(plan->blocks.size());
  kern.timing_key = fmt::format("{}|{}|{}|{}|{}|{}|{}", kern.name, shape_key(s), cfg.describe(), plan->per_part,
                                dtype_name(q.dtype), dtype_name(dk.dtype), dtype_name(dv.dtype));
  kern.args = {q.arg(), k.arg(), v.arg(), d_o.arg(), lse.arg(), dvec, dk.arg(), dv.arg(), ws.mask.arg(), partial};
  set_style(kern, cfg);
  // FlashAttention-2 style: the fifth product (dQ_i += dS K_j) here too, added into the fp32 dQ
  // accumulator with atomic adds.
  const bool atomic_dq = dq_accum.numel > 0;
  if (atomic_dq) {
    kern.args.push_back(dq_accum);
    kern.accumulates = true;
  }
  // Four of the five products (S, dV, dP, dK), or all five; 2 d FLOPs each per (q head, visible pair).
  kern.flops = (atomic_dq ? 10.0 : 8.0) * double(s.head_dim) * double(s.batch) * double(s.q_heads) * s.visible_pairs();
  kern.build = [c, plan, tk, tq, stages_cfg, q_tiles, atomic_dq](int64_t block, TileProgram& p) {
    const int d = c.d;
    const DkdvBlock& blk = plan->blocks[static_cast<size_t>(block)];
    const DkdvItem& it = plan->items[static_cast<size_t>(blk.item)];
    const int64_t b = it.b, kvh = it.kvh, k0 = it.j * tk;
    const int w = static_cast<int>(std::min<int64_t>(tk, c.seq_k - k0));
    const int64_t per_head = q_tiles - it.i_first, steps = blk.st1 - blk.st0;
    const int stages = static_cast<int>(std::clamp<int64_t>(steps, 1, stages_cfg));

    // Every block allocates the same buffers (block 0 sizes the SRAM a core reserves).
    const BufferId kb = p.alloc(c.mt, tk, d, "k"), vb = p.alloc(c.mt, tk, d, "v");
    const BufferId dkb = p.alloc(DType::kF32, tk, d, "dk"), dvb = p.alloc(DType::kF32, tk, d, "dv");
    BufferId qb[kAttentionMaxStages], dob[kAttentionMaxStages], lseb[kAttentionMaxStages], db[kAttentionMaxStages];
    for (int i = 0; i < stages_cfg; ++i) {
      qb[i] = p.alloc(c.mt, tq, d, "q");
      dob[i] = p.alloc(c.mt, tq, d, "do");
      lseb[i] = p.alloc(DType::kF32, tq, 1, "lse");
      db[i] = p.alloc(DType::kF32, tq, 1, "D");
    }
    // S and dP twice when the next step's products run ahead; P and dS (read by this step's dV and
    // dK products only) once.
    BufferId sb[2], dpb[2];
    for (int i = 0; i < 2; ++i) {
      sb[i] = i == 0 || c.ahead ? p.alloc(DType::kF32, tq, tk, "s") : sb[0];
      dpb[i] = i == 0 || c.ahead ? p.alloc(DType::kF32, tq, tk, "dp") : dpb[0];
    }
    const BufferId pb = p.alloc(c.mt, tq, tk, "p"), dsb = p.alloc(c.mt, tq, tk, "ds");
    const BufferId maskb = c.causal ? p.alloc(DType::kF32, tq, tk, "mask") : BufferId{0};
    const BufferId dqb = atomic_dq ? p.alloc(DType::kF32, tq, d, "dq") : BufferId{0};

    const TileRegion kv_rows{kArgK, c.row(b, k0, c.seq_k, c.kv_heads, kvh), c.kv_heads * d, w, d};
    p.load(kb, kv_rows);
    p.load(vb, TileRegion{kArgV, kv_rows.offset, kv_rows.row_stride, w, d});
    if (steps == 0) {  // no query sees these keys (cannot happen with seq_q <= seq_k; kept total)
      p.fill(dkb, w, d, 0.0f);
      p.fill(dvb, w, d, 0.0f);
    }
    // Step st of the item: q head kvh * g + st / per_head, query tile i_first + st % per_head.
    auto head = [&](int64_t st) { return kvh * c.g + (blk.st0 + st) / per_head; };
    auto t0 = [&](int64_t st) { return (it.i_first + (blk.st0 + st) % per_head) * tq; };
    auto rows = [&](int64_t st) { return static_cast<int>(std::min<int64_t>(tq, c.seq_q - t0(st))); };
    auto load_step = [&](int64_t st, int slot) {
      const int64_t h = head(st), t = t0(st);
      const int n = rows(st);
      const int64_t off = c.row(b, t, c.seq_q, c.q_heads, h);
      p.load(qb[slot], TileRegion{kArgQ, off, c.q_heads * d, n, d});
      p.load(dob[slot], TileRegion{kArgDO, off, c.q_heads * d, n, d});
      p.load(lseb[slot], TileRegion{kArgLse, (b * c.q_heads + h) * c.seq_q + t, 1, n, 1});
      p.load(db[slot], TileRegion{kArgD, (b * c.q_heads + h) * c.seq_q + t, 1, n, 1});
    };
    auto emit_products = [&](int64_t st) {  // S = Q K^T, dP = dO V^T
      const int slot = static_cast<int>(st % stages), buf = static_cast<int>(st % 2), n = rows(st);
      p.mma(sb[buf], qb[slot], kb, n, w, d, /*trans_a=*/false, /*trans_b=*/true, /*accumulate=*/false);
      p.mma(dpb[buf], dob[slot], vb, n, w, d, false, true, false);
    };
    for (int i = 0; i < std::min<int64_t>(stages, steps); ++i) load_step(i, i);
    if (c.ahead && steps > 0) emit_products(0);
    for (int64_t st = 0; st < steps; ++st) {
      // Pipelined: the next step's products first, so the matrix unit computes them during this
      // step's vector work. FlashAttention-2 style: this step's products now.
      if (!c.ahead) emit_products(st);
      else if (st + 1 < steps) emit_products(st + 1);
      const int slot = static_cast<int>(st % stages), buf = static_cast<int>(st % 2), n = rows(st);
      emit_probabilities(p, c, kArgMask, sb[buf], maskb, lseb[slot], n, w, c.off + t0(st), k0);
      p.cast(pb, sb[buf], n, w);
      // dV += P^T dO: P as the transposed A operand ([n, w] holds A^T).
      p.mma(dvb, pb, dob[slot], w, d, n, /*trans_a=*/true, false, /*accumulate=*/st > 0);
      emit_dscores(p, dpb[buf], sb[buf], db[slot], dsb, n, w);
      p.mma(dkb, dsb, qb[slot], w, d, n, /*trans_a=*/true, false, /*accumulate=*/st > 0);
      if (atomic_dq) {
        // dQ_i += dS K_j, unscaled (the conversion kernel scales): atomic adds into the accumulator.
        // A fence after them: a GPU warp issues its instructions in order, so it does not start the
        // next step until its adds have gone out, at the core's atomic rate (see the header).
        p.mma(dqb, dsb, kb, n, d, w, false, false, /*accumulate=*/false);
        p.store_add(TileRegion{kArgDQAcc, c.row(b, t0(st), c.seq_q, c.q_heads, head(st)), c.q_heads * d, n, d}, dqb);
        p.sync();
      }
      if (st + stages < steps) load_step(st + stages, slot);
    }
    p.unary(UnaryOp::kScale, dkb, dkb, w, d, c.scale);
    if (it.parts == 1) {
      p.store(TileRegion{kArgDK, kv_rows.offset, kv_rows.row_stride, w, d}, dkb);
      p.store(TileRegion{kArgDV, kv_rows.offset, kv_rows.row_stride, w, d}, dvb);
      return;
    }
    // A part: fp32 partial sums to its scratch slot, [2, tk, d] (dK then dV).
    const int64_t base = (it.slot0 + blk.part) * 2 * tk * d;
    p.store(TileRegion{kArgPartial, base, d, w, d}, dkb);
    p.store(TileRegion{kArgPartial, base + int64_t{tk} * d, d, w, d}, dvb);
  };
  return kern;
}

// Sums the parts of every split dK/dV item into dk and dv: one block per (split item, dK or dV,
// chunk of rows), the parts streaming through `stages` buffers and added in part order.
Kernel make_dkdv_combine_kernel(const AttentionBackwardShape& s, const AttentionBackwardConfig& cfg,
                                std::shared_ptr<const DkdvPlan> plan, const Buffer& dk, const Buffer& dv,
                                const TensorArg& partial) {
  enum : uint16_t { kArgPartial, kArgDK, kArgDV };
  const int tk = cfg.dkdv_tile_kv, d = static_cast<int>(s.head_dim);
  // Rows per block: 8192 elements per buffer (32 KiB), at most a key tile.
  const int rows = static_cast<int>(std::clamp<int64_t>(8192 / s.head_dim, 1, tk));
  const int64_t chunks = ceil_div(tk, rows);
  constexpr int kStages = 3;
  Kernel kern;
  kern.name = fmt::format("attention backward dkdv combine {}x{}x{}/{}x{}", s.batch, s.seq_k, s.q_heads, s.kv_heads,
                          s.head_dim);
  kern.grid = static_cast<int64_t>(plan->split_items.size()) * 2 * chunks;
  kern.timing_key = fmt::format("{}|{}|{}|{}|{}|{}", kern.name, shape_key(s), cfg.describe(), plan->per_part,
                                dtype_name(dk.dtype), dtype_name(dv.dtype));
  kern.args = {partial, dk.arg(), dv.arg()};
  const int64_t seq_k = s.seq_k, kv_heads = s.kv_heads;
  kern.build = [plan, tk, d, rows, chunks, seq_k, kv_heads](int64_t block, TileProgram& p) {
    const int64_t chunk = block % chunks, which = block / chunks % 2;
    const DkdvItem& it = plan->items[static_cast<size_t>(plan->split_items[static_cast<size_t>(block / chunks / 2)])];
    const int64_t k0 = it.j * tk, r0 = chunk * rows;
    const int w = static_cast<int>(std::min<int64_t>(tk, seq_k - k0));
    const int n = static_cast<int>(std::clamp<int64_t>(w - r0, 0, rows));
    const BufferId acc = p.alloc(DType::kF32, rows, d, "sum");
    BufferId part[kStages];
    for (auto& x : part) x = p.alloc(DType::kF32, rows, d, "part");
    if (n == 0) return;  // rows beyond a short last key tile
    auto region = [&](int64_t pt) {
      return TileRegion{kArgPartial, ((it.slot0 + pt) * 2 + which) * tk * d + r0 * d, d, n, d};
    };
    p.load(acc, region(0));
    pipeline_steps(
        it.parts - 1, kStages, [&](int64_t i, int slot) { p.load(part[slot], region(i + 1)); },
        [&](int64_t, int slot) { p.binary(BinaryOp::kAdd, acc, acc, part[slot], n, d); });
    const uint16_t out = which == 0 ? kArgDK : kArgDV;
    p.store(TileRegion{out, ((it.b * seq_k + k0 + r0) * kv_heads + it.kvh) * d, kv_heads * d, n, d}, acc);
  };
  return kern;
}

Kernel make_dq_kernel(const AttentionBackwardShape& s, const AttentionBackwardConfig& cfg, const AttentionWorkspace& ws,
                      const Buffer& q, const Buffer& k, const Buffer& v, const Buffer& d_o, const Buffer& lse,
                      const TensorArg& dvec, const Buffer& dq) {
  enum : uint16_t { kArgDQ = kArgGrad0, kArgMask };
  const Common c = make_common(s, cfg, q.dtype);
  const int tq = cfg.dq_tile_q, tk = cfg.dq_tile_kv, stages_cfg = cfg.stages;
  const int64_t q_tiles = ceil_div(s.seq_q, tq);
  Kernel kern;
  kern.name = fmt::format("attention backward dq {}x{}x{}x{}/{}x{}{}", s.batch, s.seq_q, s.seq_k, s.q_heads,
                          s.kv_heads, s.head_dim, s.causal ? "" : " non-causal");
  kern.grid = s.batch * s.q_heads * q_tiles;
  kern.timing_key = fmt::format("{}|{}|{}|{}|{}", kern.name, shape_key(s), cfg.describe(), dtype_name(q.dtype),
                                dtype_name(dq.dtype));
  kern.args = {q.arg(), k.arg(), v.arg(), d_o.arg(), lse.arg(), dvec, dq.arg(), ws.mask.arg()};
  set_style(kern, cfg);
  // The fifth product, dQ = dS K (the recomputed S and dP are not useful work).
  kern.flops = 2.0 * double(s.head_dim) * double(s.batch) * double(s.q_heads) * s.visible_pairs();
  kern.build = [c, tq, tk, stages_cfg, q_tiles](int64_t block, TileProgram& p) {
    const int d = c.d;
    // Block order: kv head by kv head, heaviest query tiles first, the group's heads side by side.
    const int64_t hg = block % c.g, rest = block / c.g, i = q_tiles - 1 - rest % q_tiles, bk = rest / q_tiles;
    const int64_t b = bk / c.kv_heads, kvh = bk % c.kv_heads, h = kvh * c.g + hg;
    const int64_t t0 = i * tq;
    const int n = static_cast<int>(std::min<int64_t>(tq, c.seq_q - t0));
    // Keys [0, kv_end) are seen by some row of the tile; the last step is cut at kv_end.
    const int64_t kv_end = c.causal ? std::min(c.seq_k, c.off + t0 + n) : c.seq_k;
    const int64_t steps = ceil_div(kv_end, tk);
    const int stages = static_cast<int>(std::clamp<int64_t>(steps, 1, stages_cfg));

    const BufferId qb = p.alloc(c.mt, tq, d, "q"), dob = p.alloc(c.mt, tq, d, "do");
    const BufferId lseb = p.alloc(DType::kF32, tq, 1, "lse"), db = p.alloc(DType::kF32, tq, 1, "D");
    const BufferId dqb = p.alloc(DType::kF32, tq, d, "dq");
    BufferId kb[kAttentionMaxStages], vb[kAttentionMaxStages];
    for (int x = 0; x < stages_cfg; ++x) {
      kb[x] = p.alloc(c.mt, tk, d, "k");
      vb[x] = p.alloc(c.mt, tk, d, "v");
    }
    BufferId sb[2], dpb[2];
    for (int x = 0; x < 2; ++x) {
      sb[x] = x == 0 || c.ahead ? p.alloc(DType::kF32, tq, tk, "s") : sb[0];
      dpb[x] = x == 0 || c.ahead ? p.alloc(DType::kF32, tq, tk, "dp") : dpb[0];
    }
    const BufferId dsb = p.alloc(c.mt, tq, tk, "ds");
    const BufferId maskb = c.causal ? p.alloc(DType::kF32, tq, tk, "mask") : BufferId{0};

    const int64_t q_off = c.row(b, t0, c.seq_q, c.q_heads, h);
    p.load(qb, TileRegion{kArgQ, q_off, c.q_heads * d, n, d});
    p.load(dob, TileRegion{kArgDO, q_off, c.q_heads * d, n, d});
    p.load(lseb, TileRegion{kArgLse, (b * c.q_heads + h) * c.seq_q + t0, 1, n, 1});
    p.load(db, TileRegion{kArgD, (b * c.q_heads + h) * c.seq_q + t0, 1, n, 1});
    auto k0 = [&](int64_t st) { return st * tk; };
    auto width = [&](int64_t st) { return static_cast<int>(std::min<int64_t>(tk, kv_end - k0(st))); };
    auto load_step = [&](int64_t st, int slot) {
      const TileRegion r{kArgK, c.row(b, k0(st), c.seq_k, c.kv_heads, kvh), c.kv_heads * d, width(st), d};
      p.load(kb[slot], r);
      p.load(vb[slot], TileRegion{kArgV, r.offset, r.row_stride, r.rows, d});
    };
    auto emit_products = [&](int64_t st) {
      const int slot = static_cast<int>(st % stages), buf = static_cast<int>(st % 2);
      p.mma(sb[buf], qb, kb[slot], n, width(st), d, false, /*trans_b=*/true, /*accumulate=*/false);
      p.mma(dpb[buf], dob, vb[slot], n, width(st), d, false, true, false);
    };
    for (int x = 0; x < std::min<int64_t>(stages, steps); ++x) load_step(x, x);
    if (c.ahead) emit_products(0);
    for (int64_t st = 0; st < steps; ++st) {
      if (!c.ahead) emit_products(st);
      else if (st + 1 < steps) emit_products(st + 1);
      const int slot = static_cast<int>(st % stages), buf = static_cast<int>(st % 2), w = width(st);
      emit_probabilities(p, c, kArgMask, sb[buf], maskb, lseb, n, w, c.off + t0, k0(st));
      emit_dscores(p, dpb[buf], sb[buf], db, dsb, n, w);
      p.mma(dqb, dsb, kb[slot], n, d, w, false, false, /*accumulate=*/st > 0);
      if (st + stages < steps) load_step(st + stages, slot);
    }
    p.unary(UnaryOp::kScale, dqb, dqb, n, d, c.scale);
    p.store(TileRegion{kArgDQ, q_off, c.q_heads * d, n, d}, dqb);
  };
  return kern;
}

// FlashAttention-2 style, after the dK/dV kernel: dq = scale * dQ accumulator, in dq's dtype. One
// block per (sequence, q head, chunk of query rows).
Kernel make_dq_convert_kernel(const AttentionBackwardShape& s, const TensorArg& dq_accum, const Buffer& dq) {
  enum : uint16_t { kArgAcc, kArgDQ };
  const int d = static_cast<int>(s.head_dim);
  const int rows = dot_tile_rows(s);
  const int64_t chunks = ceil_div(s.seq_q, rows);
  Kernel kern;
  kern.name = fmt::format("attention backward dq convert {}x{}x{}x{}", s.batch, s.seq_q, s.q_heads, s.head_dim);
  kern.grid = s.batch * s.q_heads * chunks;
  kern.timing_key = fmt::format("{}|{}|{}", kern.name, s.scale, dtype_name(dq.dtype));
  kern.args = {dq_accum, dq.arg()};
  const int64_t seq_q = s.seq_q, heads = s.q_heads;
  const float scale = resolved_scale(s);
  kern.build = [=](int64_t block, TileProgram& p) {
    const int64_t bh = block / chunks, chunk = block % chunks, b = bh / heads, h = bh % heads;
    const int64_t t0 = chunk * rows;
    const int n = static_cast<int>(std::min<int64_t>(rows, seq_q - t0));
    const BufferId acc = p.alloc(DType::kF32, rows, d, "dq");
    const TileRegion r{kArgAcc, ((b * seq_q + t0) * heads + h) * d, heads * d, n, d};
    p.load(acc, r);
    p.unary(UnaryOp::kScale, acc, acc, n, d, scale);
    p.store(TileRegion{kArgDQ, r.offset, r.row_stride, n, d}, acc);
  };
  return kern;
}

}  // namespace

double AttentionBackwardShape::visible_pairs() const {
  if (!causal) return double(seq_q) * double(seq_k);
  // Query t sees seq_k - seq_q + t + 1 keys.
  return double(seq_q) * double(seq_k - seq_q) + double(seq_q) * double(seq_q + 1) / 2;
}

std::string AttentionBackwardConfig::describe() const {
  return fmt::format("{}dK/dV {}x{} (kv x q), dQ {}x{} (q x kv), {} stages",
                     style == AttentionStyle::kPipelined
                         ? ""
                         : fmt::format("{} style, ", kAttentionStyleNames[static_cast<size_t>(style)]),
                     dkdv_tile_kv, dkdv_tile_q, dq_tile_q, dq_tile_kv, stages);
}

int64_t attention_backward_dkdv_sram_bytes(const AttentionBackwardConfig& c, int64_t d, DType matrix_type,
                                           bool causal) {
  const int64_t es = dtype_size_bytes(matrix_type), kv = c.dkdv_tile_kv, q = c.dkdv_tile_q;
  const int64_t sets = c.style == AttentionStyle::kPipelined ? 2 : 1;
  int64_t b = 2 * round64(kv * d * es) + 2 * round64(kv * d * 4);  // K, V; dK, dV
  b += c.stages * (2 * round64(q * d * es) + 2 * round64(q * 4));  // Q, dO, lse, D ring
  b += sets * 2 * round64(q * kv * 4) + 2 * round64(q * kv * es);  // S, dP (per set); P, dS
  if (causal) b += round64(q * kv * 4);                            // mask tile
  if (c.style == AttentionStyle::kFlashAttention2) b += round64(q * d * 4);  // dQ_i partial (atomic adds)
  return b;
}

int64_t attention_backward_dq_sram_bytes(const AttentionBackwardConfig& c, int64_t d, DType matrix_type, bool causal) {
  const int64_t es = dtype_size_bytes(matrix_type), q = c.dq_tile_q, kv = c.dq_tile_kv;
  const int64_t sets = c.style == AttentionStyle::kPipelined ? 2 : 1;
  int64_t b = 2 * round64(q * d * es) + 2 * round64(q * 4) + round64(q * d * 4);  // Q, dO, lse, D; dQ
  b += c.stages * 2 * round64(kv * d * es);                                       // K, V ring
  b += sets * 2 * round64(q * kv * 4) + round64(q * kv * es);                     // S, dP (per set); dS
  if (causal) b += round64(q * kv * 4);
  return b;
}

AttentionBackwardConfig choose_attention_backward_config(const ChipSpec& chip, const AttentionBackwardShape& s,
                                                         DType in_type, const AttentionBackwardConfig& base) {
  AttentionBackwardConfig c = base;
  const DType mt = matrix_type(in_type);
  const double sram = chip.sram_bytes();
  // Tile pairs (block tile, step tile) from the most work per step down: 128 x 64 is what
  // FlashAttention-2's backward runs for head_dim 128 on A100 (128 keys per block, 64 queries per
  // step); it fits with 3 stages on a 484 KiB core (h100), 64 x 64 on 420 KiB (a100). Fewer
  // instructions per FLOP also keep the timing engine fast (a step's instruction count is fixed).
  // A tile beyond the sequence is cut to it.
  constexpr std::pair<int, int> kCandidates[] = {{128, 64}, {64, 64}, {64, 32}, {32, 32}, {32, 16}, {16, 16}};
  auto cut = [](int want, int64_t have) { return static_cast<int>(std::min<int64_t>(want, have)); };
  const int stages = base.stages ? base.stages : 3;
  auto pick = [&](int AttentionBackwardConfig::*block, int64_t block_len, int AttentionBackwardConfig::*step,
                  int64_t step_len, auto bytes) {
    for (int st : {stages, base.stages ? stages : 2}) {
      for (const auto& [bt, stt] : kCandidates) {
        AttentionBackwardConfig x = c;
        x.stages = st;
        if (base.*block == 0) x.*block = cut(bt, block_len);
        if (base.*step == 0) x.*step = cut(stt, step_len);
        if (bytes(x) <= sram) return x;
      }
    }
    // Nothing fits: the smallest tiles; the executors' validation names the kernel and the sizes.
    AttentionBackwardConfig x = c;
    x.stages = 2;
    if (base.*block == 0) x.*block = cut(16, block_len);
    if (base.*step == 0) x.*step = cut(16, step_len);
    return x;
  };
  const AttentionBackwardConfig a =
      pick(&AttentionBackwardConfig::dkdv_tile_kv, s.seq_k, &AttentionBackwardConfig::dkdv_tile_q, s.seq_q,
           [&](const AttentionBackwardConfig& x) { return double(attention_backward_dkdv_sram_bytes(x, s.head_dim, mt, s.causal)); });
  const AttentionBackwardConfig b =
      pick(&AttentionBackwardConfig::dq_tile_q, s.seq_q, &AttentionBackwardConfig::dq_tile_kv, s.seq_k,
           [&](const AttentionBackwardConfig& x) { return double(attention_backward_dq_sram_bytes(x, s.head_dim, mt, s.causal)); });
  c.dkdv_tile_kv = a.dkdv_tile_kv;
  c.dkdv_tile_q = a.dkdv_tile_q;
  c.dq_tile_q = b.dq_tile_q;
  c.dq_tile_kv = b.dq_tile_kv;
  c.stages = std::min(a.stages, b.stages);
  return c;
}

AttentionBackwardTiming attention_backward(Device& dev, const AttentionWorkspace& ws, const AttentionBackwardShape& s,
                                           const Buffer& q, const Buffer& k, const Buffer& v, const Buffer& o,
                                           const Buffer& d_o, const Buffer& lse, const Buffer& dq, const Buffer& dk,
                                           const Buffer& dv, Stream* stream, const AttentionBackwardConfig* config) {
  check_shape(s);
  const auto q_shape = fmt::format("[{}, {}, {}, {}] (batch, seq_q, q_heads, head_dim)", s.batch, s.seq_q, s.q_heads,
                                   s.head_dim);
  const auto kv_shape = fmt::format("[{}, {}, {}, {}] (batch, seq_k, kv_heads, head_dim)", s.batch, s.seq_k,
                                    s.kv_heads, s.head_dim);
  const int64_t q_numel = s.batch * s.seq_q * s.q_heads * s.head_dim, kv_numel = s.batch * s.seq_k * s.kv_heads * s.head_dim;
  const std::initializer_list<DType> floats = {DType::kBF16, DType::kF16, DType::kF32};
  struct Arg {
    const Buffer& b;
    const char* role;
  };
  const Arg inputs[] = {{q, "q"}, {k, "k"}, {v, "v"}, {o, "o"}, {d_o, "d_o"}, {lse, "lse"}};
  const Arg grads[] = {{dq, "dq"}, {dk, "dk"}, {dv, "dv"}};
  for (const Arg& a : inputs)
    if (!a.b.valid()) throw UserError(fmt::format("{}: {} is not a valid buffer", kName, a.role));
  for (const Arg& a : grads)
    if (!a.b.valid()) throw UserError(fmt::format("{}: {} is not a valid buffer", kName, a.role));
  expect_numel(kName, "q", q, q_numel, q_shape);
  expect_numel(kName, "k", k, kv_numel, kv_shape);
  expect_numel(kName, "v", v, kv_numel, kv_shape);
  expect_numel(kName, "o", o, q_numel, q_shape);
  expect_numel(kName, "d_o", d_o, q_numel, q_shape);
  expect_numel(kName, "lse", lse, s.batch * s.q_heads * s.seq_q,
               fmt::format("[{}, {}, {}] (batch, q_heads, seq_q)", s.batch, s.q_heads, s.seq_q));
  expect_numel(kName, "dq", dq, q_numel, q_shape);
  expect_numel(kName, "dk", dk, kv_numel, kv_shape);
  expect_numel(kName, "dv", dv, kv_numel, kv_shape);
  expect_dtype_in(kName, "q", q, floats);
  for (const Arg& a : {Arg{k, "k"}, Arg{v, "v"}, Arg{o, "o"}, Arg{d_o, "d_o"}})
    if (a.b.dtype != q.dtype)
      throw UserError(fmt::format("{}: {} '{}' is {} but q '{}' is {}; q, k, v, o and d_o must share one dtype", kName,
                                  a.role, a.b.name, dtype_name(a.b.dtype), q.name, dtype_name(q.dtype)));
  expect_dtype_in(kName, "lse", lse, {DType::kF32});
  for (const Arg& a : grads) expect_dtype_in(kName, a.role, a.b, floats);
  for (size_t i = 0; i < std::size(grads); ++i) {
    for (const Arg& in : inputs) expect_disjoint(grads[i].b, grads[i].role, in.b, in.role);
    for (size_t j = i + 1; j < std::size(grads); ++j) expect_disjoint(grads[i].b, grads[i].role, grads[j].b, grads[j].role);
  }
  if (!ws.mask.valid() || ws.mask.dtype != DType::kBF16 ||
      ws.mask.numel != int64_t{kAttentionMaskRows} * kAttentionMaskCols)
    throw UserError(
        fmt::format("{}: the workspace's mask '{}' is not one made by make_attention_workspace", kName, ws.mask.name));
  const DType mt = matrix_type(q.dtype);
  if (!dev.chip().supports(mt))
    throw UserError(fmt::format("{}: {} has no {} matrix unit for the attention operands", kName, dev.chip().name,
                                dtype_name(mt)));
  const AttentionBackwardConfig cfg =
      choose_attention_backward_config(dev.chip(), s, q.dtype, config ? *config : AttentionBackwardConfig{});
  check_config(cfg);

  const auto plan = make_dkdv_plan(s, cfg, dev.chip().num_cores());
  std::vector<Buffer> scratch;
  AttentionBackwardTiming t;
  t.config = cfg;
  try {
    scratch.push_back(dev.alloc(DType::kF32, s.batch * s.q_heads * s.seq_q, "attention_backward.D"));
    const TensorArg dvec = scratch.back().arg();
    TensorArg partial{};
    if (plan->slots > 0) {
      scratch.push_back(dev.alloc(DType::kF32, plan->slots * 2 * cfg.dkdv_tile_kv * s.head_dim,
                                  "attention_backward.dkdv_parts"));
      partial = scratch.back().arg();
    }
    const bool fa2 = cfg.style == AttentionStyle::kFlashAttention2;
    TensorArg dq_accum{};
    if (fa2) {
      scratch.push_back(dev.alloc(DType::kF32, q_numel, "attention_backward.dq_accum"));
      dq_accum = scratch.back().arg();
    }
    t.dot = dev.launch(make_dot_kernel(s, o, d_o, dvec, dq_accum), stream);
    t.dkdv = dev.launch(make_dkdv_kernel(s, cfg, plan, ws, q, k, v, d_o, lse, dvec, dk, dv, partial, dq_accum), stream);
    if (plan->slots > 0) t.dkdv_combine = dev.launch(make_dkdv_combine_kernel(s, cfg, plan, dk, dv, partial), stream);
    t.dq = fa2 ? dev.launch(make_dq_convert_kernel(s, dq_accum, dq), stream)
               : dev.launch(make_dq_kernel(s, cfg, ws, q, k, v, d_o, lse, dvec, dq), stream);
  } catch (...) {
    for (Buffer& b : scratch) dev.free(b);
    throw;
  }
  for (Buffer& b : scratch) dev.free(b);
  return t;
}

AttentionBackwardReference attention_backward_reference(const AttentionBackwardShape& s, const std::vector<float>& q,
                                                        const std::vector<float>& k, const std::vector<float>& v,
                                                        const std::vector<float>& d_o) {
  const int64_t d = s.head_dim, g = group_size(s), off = query_offset(s);
  const int64_t q_numel = s.batch * s.seq_q * s.q_heads * d, kv_numel = s.batch * s.seq_k * s.kv_heads * d;
  PPU_CHECK(s.batch > 0 && s.seq_q > 0 && s.seq_k > 0 && s.kv_heads > 0 && s.q_heads % s.kv_heads == 0 &&
                (!s.causal || s.seq_q <= s.seq_k) && static_cast<int64_t>(q.size()) == q_numel &&
                static_cast<int64_t>(d_o.size()) == q_numel && static_cast<int64_t>(k.size()) == kv_numel &&
                static_cast<int64_t>(v.size()) == kv_numel,
            "attention_backward_reference: shapes");
  const double scale = s.scale > 0.0f ? double(s.scale) : 1.0 / std::sqrt(double(d));
  AttentionBackwardReference r;
  r.o.assign(static_cast<size_t>(q_numel), 0.0);
  r.dq.assign(static_cast<size_t>(q_numel), 0.0);
  r.lse.assign(static_cast<size_t>(s.batch * s.q_heads * s.seq_q), 0.0);
  r.dk.assign(static_cast<size_t>(kv_numel), 0.0);
  r.dv.assign(static_cast<size_t>(kv_numel), 0.0);
  std::vector<double> p, dp;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.q_heads; ++h)
      for (int64_t t = 0; t < s.seq_q; ++t) {
        const int64_t kvh = h / g, visible = s.causal ? off + t + 1 : s.seq_k;
        const auto qi = static_cast<size_t>(((b * s.seq_q + t) * s.q_heads + h) * d);
        auto kv_at = [&](int64_t j) { return static_cast<size_t>(((b * s.seq_k + j) * s.kv_heads + kvh) * d); };
        p.assign(static_cast<size_t>(visible), 0.0);
        dp.assign(static_cast<size_t>(visible), 0.0);
        double m = -INFINITY;
        for (int64_t j = 0; j < visible; ++j) {
          double acc = 0, dacc = 0;
          for (int64_t c = 0; c < d; ++c) {
            acc += double(q[qi + c]) * double(k[kv_at(j) + c]);
            dacc += double(d_o[qi + c]) * double(v[kv_at(j) + c]);
          }
          p[static_cast<size_t>(j)] = acc * scale;
          dp[static_cast<size_t>(j)] = dacc;
          m = std::max(m, acc * scale);
        }
        double l = 0;
        for (auto& x : p) l += x = std::exp(x - m);
        for (auto& x : p) x /= l;
        r.lse[static_cast<size_t>((b * s.q_heads + h) * s.seq_q + t)] = m + std::log(l);
        double dsum = 0;  // D = dO . O = sum_j P_j dP_j
        for (int64_t j = 0; j < visible; ++j) {
          const double pj = p[static_cast<size_t>(j)];
          dsum += pj * dp[static_cast<size_t>(j)];
          for (int64_t c = 0; c < d; ++c) r.o[qi + c] += pj * double(v[kv_at(j) + c]);
        }
        for (int64_t j = 0; j < visible; ++j) {
          const double pj = p[static_cast<size_t>(j)], ds = pj * (dp[static_cast<size_t>(j)] - dsum);
          const size_t kj = kv_at(j);
          for (int64_t c = 0; c < d; ++c) {
            r.dq[qi + c] += scale * ds * double(k[kj + c]);
            r.dk[kj + c] += scale * ds * double(q[qi + c]);
            r.dv[kj + c] += pj * double(d_o[qi + c]);
          }
        }
      }
  return r;
}

}  // namespace ppu::kernels
