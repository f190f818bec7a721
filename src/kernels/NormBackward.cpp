#include "kernels/NormBackward.hpp"

#include <algorithm>
#include <cmath>

#include "kernels/KernelUtil.hpp"

namespace ppu::kernels {

namespace {

// Arguments shared by the backward's kernels (dbias only for LayerNorm).
enum : uint16_t { kArgX, kArgW, kArgDY, kArgDX, kArgScratch, kArgDW, kArgDB };

// Per-row statistics, each an fp32 [rows] slice of the scratch in this order (RMSNorm: the first
// two): r, mean(g * xhat), mean(x), mean(g).
enum : int { kStatRstd, kStatGXhat, kStatMean, kStatGMean, kMaxStats };

struct NormKind {
  const char* name;  // "rms_norm_backward" or "layer_norm_backward"
  bool layer;
  int stats() const { return layer ? 4 : 2; }
  int grads() const { return layer ? 2 : 1; }
};
constexpr NormKind kRms{"rms_norm_backward", false};
constexpr NormKind kLayer{"layer_norm_backward", true};

// How the backward cuts [rows, cols]: tiles of [tile_rows, chunk]; the gradient kernel's block
// (group, chunk c) walks row tiles [group * tiles_per_group, ...) of column chunk c; the stats
// kernel's block b every chunk of row tiles [b * stats_tiles_per_block, ...).
struct Plan {
  int64_t rows = 0, cols = 0;
  int chunk = 1;
  int64_t chunks = 1;
  int tile_rows = 1;
  int64_t row_tiles = 0, tiles_per_group = 1, groups = 0;
  int64_t stats_tiles_per_block = 1, stats_blocks = 0;

  bool chunked() const { return chunks > 1; }
  int64_t chunk_col0(int64_t c) const { return c * chunk; }
  int chunk_width(int64_t c) const { return static_cast<int>(std::min<int64_t>(chunk, cols - chunk_col0(c))); }
  int64_t tile_row0(int64_t t) const { return t * tile_rows; }
  int tile_row_count(int64_t t) const {
    return static_cast<int>(std::min<int64_t>(tile_rows, rows - tile_row0(t)));
  }
  // Rows [tile t] x columns [chunk c] of a row-major [rows, cols] argument.
  TileRegion tile_region(uint16_t arg, int64_t t, int64_t c) const {
    return TileRegion{arg, tile_row0(t) * cols + chunk_col0(c), cols, tile_row_count(t), chunk_width(c)};
  }
  // Statistic `stat` of the rows of tile t in the scratch, as a [rows, 1] column.
  TileRegion stat_region(int stat, int64_t t) const {
    return TileRegion{kArgScratch, stat * rows + tile_row0(t), 1, tile_row_count(t), 1};
  }
};

Plan plan_norm_backward(int64_t rows, int64_t cols) {
  Plan p;
  p.rows = rows;
  p.cols = cols;
  p.chunks = ceil_div(cols, kNormBwTileElems);
  // About equal chunks (a multiple of 16 columns) rather than full ones and a sliver: each chunk is
  // a block of its own.
  p.chunk = static_cast<int>(p.chunks == 1 ? cols : ceil_div(ceil_div(cols, p.chunks), 16) * 16);
  p.chunks = ceil_div(cols, p.chunk);
  p.tile_rows = static_cast<int>(std::clamp<int64_t>(kNormBwTileElems / p.chunk, 1,
                                                     std::min<int64_t>(kNormBwMaxTileRows, rows)));
  p.row_tiles = ceil_div(rows, p.tile_rows);
  const int64_t want_groups = std::max<int64_t>(1, ceil_div(kNormBwTargetBlocks, p.chunks));
  p.tiles_per_group =
      std::min(p.row_tiles, std::max<int64_t>(ceil_div(p.row_tiles, want_groups), kNormBwMinTiles));
  p.groups = ceil_div(p.row_tiles, p.tiles_per_group);
  p.stats_tiles_per_block = ceil_div(p.row_tiles, kNormBwTargetBlocks);
  p.stats_blocks = ceil_div(p.row_tiles, p.stats_tiles_per_block);
  return p;
}

int64_t scratch_numel(const NormKind& kind, int64_t rows, int64_t cols) {
  expect_positive(kind.name, {{"rows", rows}, {"cols", cols}});
  return cols > kNormBwTileElems ? kind.stats() * rows : 0;
}

bool overlaps(const Buffer& a, const Buffer& b) {
  return a.bytes > 0 && b.bytes > 0 && a.addr < b.addr + static_cast<uint64_t>(b.bytes) &&
         b.addr < a.addr + static_cast<uint64_t>(a.bytes);
}

struct Role {
  const Buffer* b;
  const char* role;
};

void expect_apart(const NormKind& kind, const Role& a, const Role& b) {
  if (a.b && b.b && overlaps(*a.b, *b.b))
    throw UserError(fmt::format("{}: {} '{}' overlaps {} '{}'; only dx may share memory, and only by being x or dy "
                                "itself",
                                kind.name, a.role, a.b->name, b.role, b.b->name));
}

// The buffers of one backward call, with the roles their errors name.
struct Io {
  Role x, w, dy, dx, dw, db, scratch;  // db.b null for RMSNorm
};

void check_io(const NormKind& kind, const Io& io, int64_t rows, int64_t cols, float eps) {
  const std::string k = kind.name;
  expect_positive(k, {{"rows", rows}, {"cols", cols}});
  const auto matrix = fmt::format("[{}, {}] (rows, cols)", rows, cols), vec = fmt::format("[{}] (cols)", cols);
  for (const Role& r : {io.x, io.dy, io.dx}) expect_numel(k, r.role, *r.b, rows * cols, matrix);
  for (const Role& r : {io.w, io.dw, io.db})
    if (r.b) expect_numel(k, r.role, *r.b, cols, vec);
  for (const Role& r : {io.x, io.w, io.dy, io.dx})
    expect_dtype_in(k, r.role, *r.b, {DType::kF32, DType::kBF16, DType::kF16});
  for (const Role& r : {io.dw, io.db})
    if (r.b) expect_dtype_in(k, r.role, *r.b, {DType::kF32});
  if (!std::isfinite(eps) || eps < 0.0f)
    throw UserError(fmt::format("{}: eps = {}; it must be finite and >= 0 (models use 1e-5 or 1e-6)", k, eps));
  // dx may be x or dy themselves (every element is read before its own row's dx is stored); the
  // sums need memory of their own.
  const Role all[] = {io.x, io.w, io.dy, io.dx, io.dw, io.db};
  enum { kX, kW, kDY, kDX, kDW, kDB, kAll };
  auto same = [](const Buffer& a, const Buffer& b) {
    return a.addr == b.addr && a.numel == b.numel && a.dtype == b.dtype;
  };
  for (int i = kDX; i < kAll; ++i)
    for (int j = 0; j < i; ++j) {
      const bool in_place = i == kDX && (j == kX || j == kDY) && same(*all[i].b, *all[j].b);
      if (!in_place) expect_apart(kind, all[i], all[j]);
    }
}

// The scratch: present, fp32, large enough, apart from the other buffers.
void check_scratch(const NormKind& kind, const Io& io, int64_t rows, int64_t cols) {
  const int64_t need = scratch_numel(kind, rows, cols);
  if (need == 0) return;
  const Buffer& scratch = *io.scratch.b;
  if (!scratch.valid())
    throw UserError(fmt::format("{}: rows of {} columns (> {} per tile) need an fp32 scratch of {} elements ({} per "
                                "row), but none was given",
                                kind.name, cols, kNormBwTileElems, need, kind.stats()));
  expect_dtype_in(kind.name, io.scratch.role, scratch, {DType::kF32});
  if (scratch.numel < need)
    throw UserError(fmt::format("{}: {} '{}' has {} elements but [{}, {}] needs at least {} ({} per row)", kind.name,
                                io.scratch.role, scratch.name, scratch.numel, rows, cols, need, kind.stats()));
  for (const Role& r : {io.x, io.w, io.dy, io.dx, io.dw, io.db}) expect_apart(kind, io.scratch, r);
}

// Builds the kernels; `io` was checked (check_io, check_scratch).
std::vector<Kernel> make_norm_backward(const NormKind& kind, const Io& io, int64_t rows, int64_t cols, float eps,
                                       bool accumulate) {
  const Plan pl = plan_norm_backward(rows, cols);
  std::vector<TensorArg> args = {io.x.b->arg(),  io.w.b->arg(),       io.dy.b->arg(),
                                 io.dx.b->arg(), io.scratch.b->arg(), io.dw.b->arg()};
  if (kind.layer) args.push_back(io.db.b->arg());
  const std::string shape = fmt::format("{}x{}", rows, cols);
  const auto inv_cols = static_cast<float>(1.0 / double(cols));
  const bool layer = kind.layer;
  std::vector<Kernel> out;

  if (pl.chunked()) {
    // A block's steps are every (tile, chunk) of its row tiles in order, so that the loads of the
    // next row run ahead of this row's sums.
    Kernel k;
    k.name = fmt::format("{} stats {} {}", kind.name, shape, dtype_name(io.x.b->dtype));
    k.timing_key = k.name;
    k.grid = pl.stats_blocks;
    k.args = args;
    k.flops = (layer ? 9.0 : 5.0) * double(rows) * double(cols);
    k.build = [pl, eps, inv_cols, layer](int64_t block, TileProgram& p) {
      const int64_t t0 = block * pl.stats_tiles_per_block,
                    steps = std::min(pl.stats_tiles_per_block, pl.row_tiles - t0) * pl.chunks;
      const int stages = static_cast<int>(std::min<int64_t>(kNormBwStages, steps));
      BufferId xb[kNormBwStages], dyb[kNormBwStages], wb[kNormBwStages];
      for (int s = 0; s < stages; ++s) {
        xb[s] = p.alloc(DType::kF32, pl.tile_rows, pl.chunk, "x");
        dyb[s] = p.alloc(DType::kF32, pl.tile_rows, pl.chunk, "dy");
        wb[s] = p.alloc(DType::kF32, 1, pl.chunk, "weight");
      }
      const BufferId g = p.alloc(DType::kF32, pl.tile_rows, pl.chunk, "g");
      const BufferId tmp = p.alloc(DType::kF32, pl.tile_rows, pl.chunk, "products");
      auto col = [&](const char* name) { return p.alloc(DType::kF32, pl.tile_rows, 1, name); };
      // Running statistics of the chunks so far, two sets used by alternate tiles (so that a tile
      // need not wait for the stores of the one before): sum of squares (RMSNorm) or Chan's mean
      // and m2 (LayerNorm); sum of g * x (RMSNorm) or g * (x - mean) (LayerNorm); sum of g.
      BufferId m2s[2], sgxs[2], means[2] = {}, sgs[2] = {};
      for (int i = 0; i < 2; ++i) {
        m2s[i] = col("m2");
        sgxs[i] = col("sum_gx");
        if (layer) {
          means[i] = col("mean");
          sgs[i] = col("sum_g");
        }
      }
      // This chunk's (LayerNorm): mean, m2, sum g, sum g * (x - chunk mean); a delta and a temporary.
      const BufferId cm = layer ? col("chunk_mean") : 0, cm2 = layer ? col("chunk_m2") : 0,
                     csg = layer ? col("chunk_sum_g") : 0, csgx = layer ? col("chunk_sum_gx") : 0,
                     delta = layer ? col("delta") : 0, d2 = layer ? col("delta_term") : 0;
      pipeline_steps(
          steps, stages,
          [&](int64_t step, int slot) {
            const int64_t t = t0 + step / pl.chunks, c = step % pl.chunks;
            p.load(xb[slot], pl.tile_region(kArgX, t, c));
            p.load(dyb[slot], pl.tile_region(kArgDY, t, c));
            p.load(wb[slot], TileRegion{kArgW, pl.chunk_col0(c), pl.chunk, 1, pl.chunk_width(c)});
          },
          [&](int64_t step, int slot) {
            const int64_t t = t0 + step / pl.chunks, c = step % pl.chunks;
            const int n = pl.tile_row_count(t), w = pl.chunk_width(c), set = static_cast<int>(step / pl.chunks % 2);
            const BufferId x = xb[slot], m2 = m2s[set], sgx = sgxs[set], mean = means[set], sg = sgs[set];
            const bool first = c == 0;
            p.binary(BinaryOp::kMul, g, dyb[slot], wb[slot], n, w, Broadcast::kCol);
            if (!layer) {
              p.unary(UnaryOp::kSquare, tmp, x, n, w);
              p.reduce(ReduceOp::kSum, m2, tmp, n, w, /*accumulate=*/!first);
              p.binary(BinaryOp::kMul, tmp, g, x, n, w);
              p.reduce(ReduceOp::kSum, sgx, tmp, n, w, !first);
            } else {
              // Centred on this chunk's mean, then merged (n0 columns before, w in this chunk,
              // delta = chunk mean - mean, a = w / (n0 + w), b = n0 / (n0 + w)):
              //   mean += a delta;  m2 += chunk m2 + n0 a delta^2;  sum g += chunk sum g;
              //   sum g (x - mean) += chunk sum g (x - chunk mean) - a delta sum g + b delta chunk sum g
              // (the last with the sum g before this chunk's).
              const BufferId m_c = first ? mean : cm, m2_c = first ? m2 : cm2, sg_c = first ? sg : csg,
                             sgx_c = first ? sgx : csgx;
              p.reduce(ReduceOp::kSum, m_c, x, n, w);
              p.unary(UnaryOp::kScale, m_c, m_c, n, 1, static_cast<float>(1.0 / w));
              p.binary(BinaryOp::kSub, x, x, m_c, n, w, Broadcast::kRow);
              p.unary(UnaryOp::kSquare, tmp, x, n, w);
              p.reduce(ReduceOp::kSum, m2_c, tmp, n, w);
              p.reduce(ReduceOp::kSum, sg_c, g, n, w);
              p.binary(BinaryOp::kMul, tmp, g, x, n, w);
              p.reduce(ReduceOp::kSum, sgx_c, tmp, n, w);
              if (!first) {
                const double n0 = double(pl.chunk_col0(c)), a = w / (n0 + w), b = n0 / (n0 + w);
                p.binary(BinaryOp::kSub, delta, cm, mean, n, 1);
                p.binary(BinaryOp::kMul, d2, delta, sg, n, 1);
                p.unary(UnaryOp::kScale, d2, d2, n, 1, static_cast<float>(-a));
                p.binary(BinaryOp::kAdd, sgx, sgx, d2, n, 1);
                p.binary(BinaryOp::kMul, d2, delta, csg, n, 1);
                p.unary(UnaryOp::kScale, d2, d2, n, 1, static_cast<float>(b));
                p.binary(BinaryOp::kAdd, sgx, sgx, d2, n, 1);
                p.binary(BinaryOp::kAdd, sgx, sgx, csgx, n, 1);
                p.binary(BinaryOp::kAdd, sg, sg, csg, n, 1);
                p.unary(UnaryOp::kScale, d2, delta, n, 1, static_cast<float>(a));
                p.binary(BinaryOp::kAdd, mean, mean, d2, n, 1);
                p.unary(UnaryOp::kSquare, d2, delta, n, 1);
                p.unary(UnaryOp::kScale, d2, d2, n, 1, static_cast<float>(n0 * a));
                p.binary(BinaryOp::kAdd, m2, m2, cm2, n, 1);
                p.binary(BinaryOp::kAdd, m2, m2, d2, n, 1);
              }
            }
            if (c + 1 < pl.chunks) return;
            // r = 1 / sqrt(m2 / cols + eps) in m2; mean(g * xhat) = r * sum / cols; mean(g).
            emit_rsqrt_mean_eps(p, m2, n, inv_cols, eps);
            p.binary(BinaryOp::kMul, sgx, sgx, m2, n, 1);
            p.unary(UnaryOp::kScale, sgx, sgx, n, 1, inv_cols);
            p.store(pl.stat_region(kStatRstd, t), m2);
            p.store(pl.stat_region(kStatGXhat, t), sgx);
            if (layer) {
              p.unary(UnaryOp::kScale, sg, sg, n, 1, inv_cols);
              p.store(pl.stat_region(kStatMean, t), mean);
              p.store(pl.stat_region(kStatGMean, t), sg);
            }
          });
    };
    out.push_back(std::move(k));
  }

  if (!accumulate) {
    // Zeroes dweight (and dbias) in slices of up to one tile.
    const int64_t slices = ceil_div(cols, kNormBwTileElems);
    const int width = static_cast<int>(std::min<int64_t>(cols, kNormBwTileElems));
    Kernel k;
    k.name = fmt::format("{} zero {}", kind.name, cols);
    k.timing_key = k.name;
    k.grid = kind.grads() * slices;
    k.args = args;
    k.build = [slices, width, cols](int64_t block, TileProgram& p) {
      const int64_t c0 = block % slices * width;
      const int w = static_cast<int>(std::min<int64_t>(width, cols - c0));
      const BufferId zero = p.alloc(DType::kF32, 1, width, "zero");
      p.fill(zero, 1, w, 0.0f);
      p.store(TileRegion{block < slices ? kArgDW : kArgDB, c0, w, 1, w}, zero);
    };
    out.push_back(std::move(k));
  }

  Kernel k;
  k.name = fmt::format("{} {} {}->{}", kind.name, shape, dtype_name(io.x.b->dtype), dtype_name(io.dx.b->dtype));
  k.timing_key = k.name;  // the programs are a function of the shape and dtypes alone
  k.grid = pl.groups * pl.chunks;
  k.args = std::move(args);
  k.accumulates = true;
  // Per element: g, xhat, g * xhat, dy * xhat, its sum, xhat * c, g - that, * r; the square and
  // the sums of the statistics where the rows fit a tile; LayerNorm centres and sums dy too.
  k.flops = ((pl.chunked() ? 8.0 : 12.0) + (layer ? 3.0 : 0.0)) * double(rows) * double(cols);
  k.build = [pl, eps, inv_cols, layer](int64_t block, TileProgram& p) {
    const int64_t group = block / pl.chunks, c = block % pl.chunks;
    const int64_t t0 = group * pl.tiles_per_group, ntiles = std::min(pl.tiles_per_group, pl.row_tiles - t0);
    const int w = pl.chunk_width(c), used = pl.tile_row_count(t0);
    const int stages = static_cast<int>(std::min<int64_t>(kNormBwStages, ntiles));
    const int nstats = layer ? 4 : 2;
    BufferId xb[kNormBwStages], dyb[kNormBwStages], st[kNormBwStages][kMaxStats] = {};
    for (int s = 0; s < stages; ++s) {
      xb[s] = p.alloc(DType::kF32, pl.tile_rows, pl.chunk, "x");
      dyb[s] = p.alloc(DType::kF32, pl.tile_rows, pl.chunk, "dy");
      // Long rows load their statistics per stage; short ones compute them into stage 0's.
      if (s == 0 || pl.chunked())
        for (int i = 0; i < nstats; ++i) st[s][i] = p.alloc(DType::kF32, pl.tile_rows, 1, "stat");
    }
    const BufferId wb = p.alloc(DType::kF32, 1, pl.chunk, "weight");
    const BufferId g = p.alloc(DType::kF32, pl.tile_rows, pl.chunk, "g");
    const BufferId tmp = p.alloc(DType::kF32, pl.tile_rows, pl.chunk, "products");
    const BufferId accw = p.alloc(DType::kF32, pl.tile_rows, pl.chunk, "dweight_rows");
    const BufferId accb = layer ? p.alloc(DType::kF32, pl.tile_rows, pl.chunk, "dbias_rows") : 0;
    p.fill(accw, used, w, 0.0f);
    if (layer) p.fill(accb, used, w, 0.0f);
    p.load(wb, TileRegion{kArgW, pl.chunk_col0(c), pl.chunk, 1, w});
    pipeline_steps(
        ntiles, stages,
        [&](int64_t i, int slot) {
          p.load(xb[slot], pl.tile_region(kArgX, t0 + i, c));
          p.load(dyb[slot], pl.tile_region(kArgDY, t0 + i, c));
          if (pl.chunked())
            for (int s = 0; s < nstats; ++s) p.load(st[slot][s], pl.stat_region(s, t0 + i));
        },
        [&](int64_t i, int slot) {
          const int n = pl.tile_row_count(t0 + i);
          const BufferId x = xb[slot], dy = dyb[slot];
          const BufferId* s = st[pl.chunked() ? slot : 0];
          const BufferId rstd = s[kStatRstd], gxhat = s[kStatGXhat], mean = s[kStatMean], gmean = s[kStatGMean];
          // x becomes xhat.
          if (!pl.chunked()) {
            if (layer) {
              p.reduce(ReduceOp::kSum, mean, x, n, w);
              p.unary(UnaryOp::kScale, mean, mean, n, 1, inv_cols);
              p.binary(BinaryOp::kSub, x, x, mean, n, w, Broadcast::kRow);
            }
            p.unary(UnaryOp::kSquare, tmp, x, n, w);
            p.reduce(ReduceOp::kSum, rstd, tmp, n, w);
            emit_rsqrt_mean_eps(p, rstd, n, inv_cols, eps);
          } else if (layer) {
            p.binary(BinaryOp::kSub, x, x, mean, n, w, Broadcast::kRow);
          }
          p.binary(BinaryOp::kMul, x, x, rstd, n, w, Broadcast::kRow);
          p.binary(BinaryOp::kMul, g, dy, wb, n, w, Broadcast::kCol);
          if (!pl.chunked()) {
            p.binary(BinaryOp::kMul, tmp, g, x, n, w);
            p.reduce(ReduceOp::kSum, gxhat, tmp, n, w);
            p.unary(UnaryOp::kScale, gxhat, gxhat, n, 1, inv_cols);
            if (layer) {
              p.reduce(ReduceOp::kSum, gmean, g, n, w);
              p.unary(UnaryOp::kScale, gmean, gmean, n, 1, inv_cols);
            }
          }
          // The sums' rows, then dx = r (g [- mean(g)] - xhat mean(g xhat)), stored after every
          // read of x and dy (in-place use).
          p.binary(BinaryOp::kMul, tmp, dy, x, n, w);
          p.binary(BinaryOp::kAdd, accw, accw, tmp, n, w);
          if (layer) p.binary(BinaryOp::kAdd, accb, accb, dy, n, w);
          p.binary(BinaryOp::kMul, tmp, x, gxhat, n, w, Broadcast::kRow);
          p.binary(BinaryOp::kSub, g, g, tmp, n, w);
          if (layer) p.binary(BinaryOp::kSub, g, g, gmean, n, w, Broadcast::kRow);
          p.binary(BinaryOp::kMul, g, g, rstd, n, w, Broadcast::kRow);
          p.store(pl.tile_region(kArgDX, t0 + i, c), g);
        });
    // The accumulators' rows, in row order, into the sums (applied in block order).
    for (int r = 0; r < used; ++r) {
      p.store_add(TileRegion{kArgDW, pl.chunk_col0(c), w, 1, w}, accw, r);
      if (layer) p.store_add(TileRegion{kArgDB, pl.chunk_col0(c), w, 1, w}, accb, r);
    }
  };
  out.push_back(std::move(k));
  return out;
}

NormBackwardTiming launch_all(Device& dev, const NormKind& kind, const Io& io, int64_t rows, int64_t cols, float eps,
                              bool accumulate, Stream* s) {
  check_io(kind, io, rows, cols, eps);  // before allocating the scratch, which is then right
  const int64_t need = scratch_numel(kind, rows, cols);
  DeviceBuffer scratch;
  if (need > 0) scratch = dev.alloc_owned(DType::kF32, need, fmt::format("{}.stats", kind.name));
  Io with = io;
  with.scratch.b = &scratch.get();
  NormBackwardTiming t;
  for (const Kernel& k : make_norm_backward(kind, with, rows, cols, eps, accumulate))
    t.kernels.push_back(dev.launch(k, s));
  return t;
}

Io rms_io(const Buffer& x, const Buffer& weight, const Buffer& dy, const Buffer& dx, const Buffer& dweight,
          const Buffer& scratch) {
  return Io{{&x, "input x"},       {&weight, "weight"},        {&dy, "output gradient dy"}, {&dx, "input gradient dx"},
            {&dweight, "gradient dweight"}, {nullptr, "dbias"}, {&scratch, "scratch"}};
}

Io layer_io(const Buffer& x, const Buffer& gamma, const Buffer& dy, const Buffer& dx, const Buffer& dgamma,
            const Buffer& dbeta, const Buffer& scratch) {
  return Io{{&x, "input x"},       {&gamma, "gamma"},         {&dy, "output gradient dy"}, {&dx, "input gradient dx"},
            {&dgamma, "gradient dgamma"}, {&dbeta, "gradient dbeta"}, {&scratch, "scratch"}};
}

// The double reference for both norms: per row, centre (LayerNorm), r, xhat, g, the two means, dx;
// the column sums over rows.
NormBackwardReference reference(bool layer, const std::vector<float>& x, const std::vector<float>& w,
                                const std::vector<float>& dy, int64_t rows, int64_t cols, float eps) {
  PPU_CHECK(static_cast<int64_t>(x.size()) == rows * cols && static_cast<int64_t>(dy.size()) == rows * cols &&
                static_cast<int64_t>(w.size()) == cols,
            "norm backward reference: sizes");
  NormBackwardReference ref;
  ref.dx.resize(x.size());
  ref.dweight.assign(static_cast<size_t>(cols), 0.0);
  if (layer) ref.dbias.assign(static_cast<size_t>(cols), 0.0);
  std::vector<double> xhat(static_cast<size_t>(cols)), g(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    const size_t row = static_cast<size_t>(r * cols);
    double mean = 0;
    if (layer) {
      for (int64_t c = 0; c < cols; ++c) mean += x[row + c];
      mean /= double(cols);
    }
    double m2 = 0;
    for (int64_t c = 0; c < cols; ++c) m2 += (x[row + c] - mean) * (x[row + c] - mean);
    const double rstd = 1.0 / std::sqrt(m2 / double(cols) + double(eps));
    double mg = 0, mgx = 0;
    for (int64_t c = 0; c < cols; ++c) {
      const auto i = static_cast<size_t>(c);
      xhat[i] = (x[row + i] - mean) * rstd;
      g[i] = double(w[i]) * double(dy[row + i]);
      mg += g[i];
      mgx += g[i] * xhat[i];
    }
    mg = layer ? mg / double(cols) : 0.0;
    mgx /= double(cols);
    for (int64_t c = 0; c < cols; ++c) {
      const auto i = static_cast<size_t>(c);
      ref.dx[row + i] = rstd * (g[i] - mg - xhat[i] * mgx);
      ref.dweight[i] += double(dy[row + i]) * xhat[i];
      if (layer) ref.dbias[i] += dy[row + i];
    }
  }
  return ref;
}

}  // namespace

double NormBackwardTiming::time_s() const {
  double t = 0;
  for (const KernelTiming& k : kernels) t += k.time_s;
  return t;
}

int64_t rms_norm_backward_scratch_numel(int64_t rows, int64_t cols) { return scratch_numel(kRms, rows, cols); }
int64_t layer_norm_backward_scratch_numel(int64_t rows, int64_t cols) { return scratch_numel(kLayer, rows, cols); }

std::vector<Kernel> make_rms_norm_backward(const Buffer& x, const Buffer& weight, const Buffer& dy, const Buffer& dx,
                                           const Buffer& dweight, const Buffer& scratch, int64_t rows, int64_t cols,
                                           float eps, bool accumulate) {
  const Io io = rms_io(x, weight, dy, dx, dweight, scratch);
  check_io(kRms, io, rows, cols, eps);
  check_scratch(kRms, io, rows, cols);
  return make_norm_backward(kRms, io, rows, cols, eps, accumulate);
}

NormBackwardTiming rms_norm_backward(Device& dev, const Buffer& x, const Buffer& weight, const Buffer& dy,
                                     const Buffer& dx, const Buffer& dweight, int64_t rows, int64_t cols, float eps,
                                     bool accumulate, Stream* s) {
  const Buffer none;
  return launch_all(dev, kRms, rms_io(x, weight, dy, dx, dweight, none), rows, cols, eps, accumulate, s);
}

std::vector<Kernel> make_layer_norm_backward(const Buffer& x, const Buffer& gamma, const Buffer& dy, const Buffer& dx,
                                             const Buffer& dgamma, const Buffer& dbeta, const Buffer& scratch,
                                             int64_t rows, int64_t cols, float eps, bool accumulate) {
  const Io io = layer_io(x, gamma, dy, dx, dgamma, dbeta, scratch);
  check_io(kLayer, io, rows, cols, eps);
  check_scratch(kLayer, io, rows, cols);
  return make_norm_backward(kLayer, io, rows, cols, eps, accumulate);
}

NormBackwardTiming layer_norm_backward(Device& dev, const Buffer& x, const Buffer& gamma, const Buffer& dy,
                                       const Buffer& dx, const Buffer& dgamma, const Buffer& dbeta, int64_t rows,
                                       int64_t cols, float eps, bool accumulate, Stream* s) {
  const Buffer none;
  return launch_all(dev, kLayer, layer_io(x, gamma, dy, dx, dgamma, dbeta, none), rows, cols, eps, accumulate, s);
}

NormBackwardReference rms_norm_backward_reference(const std::vector<float>& x, const std::vector<float>& weight,
                                                  const std::vector<float>& dy, int64_t rows, int64_t cols,
                                                  float eps) {
  return reference(false, x, weight, dy, rows, cols, eps);
}

NormBackwardReference layer_norm_backward_reference(const std::vector<float>& x, const std::vector<float>& gamma,
                                                    const std::vector<float>& dy, int64_t rows, int64_t cols,
                                                    float eps) {
  return reference(true, x, gamma, dy, rows, cols, eps);
}

}  // namespace ppu::kernels
