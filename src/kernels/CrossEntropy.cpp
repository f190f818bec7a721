#include "kernels/CrossEntropy.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

#include "kernels/KernelUtil.hpp"

namespace ppu::kernels {

namespace {

using Targets = std::shared_ptr<const std::vector<int32_t>>;

// Checks shared by the forward and the backward.
void check_inputs(const std::string& kname, const Buffer& logits, int64_t rows, int64_t vocab,
                  const std::vector<int32_t>& targets) {
  expect_positive(kname, {{"rows", rows}, {"vocab", vocab}});
  if (vocab >= kMaxExactIndex)
    throw UserError(fmt::format("{}: vocab = {}; the one-hot compares column ids as exact fp32 integers, so the "
                                "vocabulary must be smaller than 2^24 = {}",
                                kname, vocab, kMaxExactIndex));
  expect_dtype_in(kname, "logits", logits, {DType::kF32, DType::kBF16});
  expect_numel(kname, "logits", logits, rows * vocab, fmt::format("[{}, {}] (rows, vocab)", rows, vocab));
  if (static_cast<int64_t>(targets.size()) != rows)
    throw UserError(fmt::format("{}: {} target ids for {} rows; one id per row is needed", kname, targets.size(), rows));
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t id = targets[static_cast<size_t>(r)];
    if (id != kCrossEntropyIgnore && (id < 0 || id >= vocab))
      throw UserError(fmt::format("{}: row {} has target id {}, outside the vocabulary (valid ids: 0 to {}, or {} to "
                                  "ignore the row)",
                                  kname, r, id, vocab - 1, kCrossEntropyIgnore));
  }
}

void check_row_vector(const std::string& kname, const char* role, const Buffer& b, int64_t rows) {
  expect_dtype_in(kname, role, b, {DType::kF32});
  expect_numel(kname, role, b, rows, fmt::format("[{}] (rows)", rows));
}

bool any_ignored(const std::vector<int32_t>& targets) {
  return std::find(targets.begin(), targets.end(), kCrossEntropyIgnore) != targets.end();
}

// Tiling of [rows, vocab]: whole rows, at most kCrossEntropyMaxTileRows to a tile, or chunked rows.
RowTiling plan_tiling(int64_t rows, int64_t vocab) {
  const int64_t elems = vocab > kCrossEntropyTileElems
                            ? kCrossEntropyTileElems
                            : std::min<int64_t>(kCrossEntropyTileElems, kCrossEntropyMaxTileRows * vocab);
  return plan_row_tiling(rows, vocab, static_cast<int>(elems));
}

// Stores rows [0, nr) of `src` into rows [r0, r0 + nr), columns [c0, c0 + cols) of a row-major
// [*, ld] argument, in runs: rows whose target is ignored come from the same rows of `zero`.
void store_rows(TileProgram& p, uint16_t arg, int64_t ld, int64_t r0, int nr, int64_t c0, int cols, BufferId src,
                BufferId zero, const int32_t* targets) {
  int a = 0;
  while (a < nr) {
    const bool ignored = targets[r0 + a] == kCrossEntropyIgnore;
    int b = a + 1;
    while (b < nr && (targets[r0 + b] == kCrossEntropyIgnore) == ignored) ++b;
    p.store(TileRegion{arg, (r0 + a) * ld + c0, ld, b - a, cols}, ignored ? zero : src, a);
    a = b;
  }
}

// Rows [r0, r0 + nr): how many are ignored.
int ignored_in(const int32_t* targets, int64_t r0, int nr) {
  return static_cast<int>(std::count(targets + r0, targets + r0 + nr, kCrossEntropyIgnore));
}

// Arguments: 0 logits [rows, vocab], 1 loss [rows], 2 lse [rows].
void build_forward_tiles(const RowTiling& t, const int32_t* tgt, bool has_ignored, int64_t block, TileProgram& p) {
  const int ntiles = t.tiles_in_block(block);
  const int stages = std::min(kCrossEntropyStages, ntiles);
  const int tr = t.tile_rows, w = t.chunk_cols;
  BufferId xb[kCrossEntropyStages], xt[kCrossEntropyStages], m[kCrossEntropyStages], s[kCrossEntropyStages];
  for (int i = 0; i < stages; ++i) {
    xb[i] = p.alloc(DType::kF32, tr, w, "logits");
    xt[i] = p.alloc(DType::kF32, tr, 1, "target_logit");
    m[i] = p.alloc(DType::kF32, tr, 1, "max");
    s[i] = p.alloc(DType::kF32, tr, 1, "sum");
  }
  BufferId zero = 0;
  if (has_ignored) {
    zero = p.alloc(DType::kF32, tr, 1, "zero");
    p.fill(zero, tr, 1, 0.0f);
  }
  pipeline_steps(
      ntiles, stages,
      [&](int64_t step, int slot) {
        const auto tile = static_cast<int>(step);
        const int64_t r0 = t.tile_row0(block, tile);
        const int nr = t.tile_row_count(block, tile);
        p.load(xb[slot], t.step_region(block, step, 0));
        if (ignored_in(tgt, r0, nr) > 0) p.fill(xt[slot], nr, 1, 0.0f);  // rows no load writes
        for (int i = 0; i < nr; ++i)
          if (tgt[r0 + i] != kCrossEntropyIgnore)
            p.load(xt[slot], TileRegion{0, (r0 + i) * t.cols + tgt[r0 + i], 1, 1, 1}, i);
      },
      [&](int64_t step, int slot) {
        const auto tile = static_cast<int>(step);
        const int64_t r0 = t.tile_row0(block, tile);
        const int nr = t.tile_row_count(block, tile);
        const BufferId x = xb[slot];
        p.reduce(ReduceOp::kMax, m[slot], x, nr, w);
        p.binary(BinaryOp::kSub, x, x, m[slot], nr, w, Broadcast::kRow);
        p.unary(UnaryOp::kExp, x, x, nr, w);
        p.reduce(ReduceOp::kSum, s[slot], x, nr, w);
        p.unary(UnaryOp::kLog, s[slot], s[slot], nr, 1);
        p.binary(BinaryOp::kAdd, s[slot], s[slot], m[slot], nr, 1);  // lse
        p.store(TileRegion{2, r0, 1, nr, 1}, s[slot]);
        p.binary(BinaryOp::kSub, xt[slot], s[slot], xt[slot], nr, 1);  // loss
        store_rows(p, 1, 1, r0, nr, 0, 1, xt[slot], zero, tgt);
      });
}

// One row per block, walked in chunks with an online maximum and sum (Softmax.hpp's pass 1).
void build_forward_chunked(const RowTiling& t, const int32_t* tgt, int64_t row, TileProgram& p) {
  const int stages = static_cast<int>(std::min<int64_t>(kCrossEntropyStages, t.chunks));
  BufferId xb[kCrossEntropyStages];
  for (int i = 0; i < stages; ++i) xb[i] = p.alloc(DType::kF32, 1, t.chunk_cols, "logits");
  // Running max in m[cur] (the other one receives the next maximum, so no copy), running sum in
  // `sum`. The max starts at -FLT_MAX, so that a first chunk of only -inf gives exp(-inf - m) = 0
  // rather than NaN.
  const BufferId m[2] = {p.alloc(DType::kF32, 1, 1, "max"), p.alloc(DType::kF32, 1, 1, "max")};
  const BufferId sum = p.alloc(DType::kF32, 1, 1, "sum");
  const BufferId chunk_max = p.alloc(DType::kF32, 1, 1, "chunk_max");
  const BufferId rescale = p.alloc(DType::kF32, 1, 1, "rescale");
  const BufferId xt = p.alloc(DType::kF32, 1, 1, "target_logit");
  const int32_t id = tgt[row];
  if (id == kCrossEntropyIgnore) p.fill(xt, 1, 1, 0.0f);  // stored as the loss
  else p.load(xt, TileRegion{0, row * t.cols + id, 1, 1, 1});
  int cur = 0;
  p.fill(m[cur], 1, 1, -std::numeric_limits<float>::max());
  pipeline_steps(
      t.chunks, stages, [&](int64_t c, int slot) { p.load(xb[slot], t.step_region(row, c, 0)); },
      [&](int64_t c, int slot) {
        online_softmax_chunk(p, c, xb[slot], t.chunk_width(c), m, cur, chunk_max, rescale, sum);
      });
  p.unary(UnaryOp::kLog, sum, sum, 1, 1);
  p.binary(BinaryOp::kAdd, sum, sum, m[cur], 1, 1);  // lse
  p.store(TileRegion{2, row, 1, 1, 1}, sum);
  if (id != kCrossEntropyIgnore) p.binary(BinaryOp::kSub, xt, sum, xt, 1, 1);
  p.store(TileRegion{1, row, 1, 1, 1}, xt);
}

// Arguments: 0 logits [rows, vocab], 1 lse [rows], 2 dlogits [rows, vocab].
void build_backward_tiles(const RowTiling& t, const int32_t* tgt, float scale, int64_t block, TileProgram& p) {
  const int ntiles = t.tiles_in_block(block);
  const int stages = std::min(kCrossEntropyStages, ntiles);
  const int tr = t.tile_rows, w = t.chunk_cols;
  BufferId xb[kCrossEntropyStages], lb[kCrossEntropyStages], tcol[kCrossEntropyStages];
  for (int i = 0; i < stages; ++i) {
    xb[i] = p.alloc(DType::kF32, tr, w, "logits");
    lb[i] = p.alloc(DType::kF32, tr, 1, "lse");
    tcol[i] = p.alloc(DType::kF32, tr, 1, "target");
  }
  const BufferId scratch = p.alloc(DType::kF32, tr, w, "onehot");  // then the zeros of ignored rows
  auto all_ignored = [&](int tile) {
    const int nr = t.tile_row_count(block, tile);
    return ignored_in(tgt, t.tile_row0(block, tile), nr) == nr;
  };
  pipeline_steps(
      ntiles, stages,
      [&](int64_t step, int slot) {
        const auto tile = static_cast<int>(step);
        if (all_ignored(tile)) return;
        p.load(xb[slot], t.step_region(block, step, 0));
        p.load(lb[slot], TileRegion{1, t.tile_row0(block, tile), 1, t.tile_row_count(block, tile), 1});
      },
      [&](int64_t step, int slot) {
        const auto tile = static_cast<int>(step);
        const int64_t r0 = t.tile_row0(block, tile);
        const int nr = t.tile_row_count(block, tile);
        const BufferId x = xb[slot];
        if (all_ignored(tile)) {
          p.fill(scratch, nr, w, 0.0f);
          p.store(TileRegion{2, r0 * t.cols, t.cols, nr, w}, scratch);
          return;
        }
        p.binary(BinaryOp::kSub, x, x, lb[slot], nr, w, Broadcast::kRow);
        p.unary(UnaryOp::kExp, x, x, nr, w);  // softmax
        // The target column, row i = targets[r0 + i] (-1 for ignored rows, which match no column):
        // fills only reach the top-left rows, so fill ever shorter prefixes, the last row first.
        for (int i = nr - 1; i >= 0; --i) p.fill(tcol[slot], i + 1, 1, static_cast<float>(tgt[r0 + i]));
        p.iota(scratch, nr, w, 0);
        p.binary(BinaryOp::kCmpEq, scratch, scratch, tcol[slot], nr, w, Broadcast::kRow);  // one-hot
        p.binary(BinaryOp::kSub, x, x, scratch, nr, w);
        p.unary(UnaryOp::kScale, x, x, nr, w, scale);
        if (ignored_in(tgt, r0, nr) > 0) p.fill(scratch, nr, w, 0.0f);
        store_rows(p, 2, t.cols, r0, nr, 0, w, x, scratch, tgt);
      });
}

void build_backward_chunked(const RowTiling& t, const int32_t* tgt, float scale, int64_t row, TileProgram& p) {
  // Every block allocates the same buffers (block 0 sizes the SRAM a core reserves).
  const int stages = static_cast<int>(std::min<int64_t>(kCrossEntropyStages, t.chunks));
  BufferId xb[kCrossEntropyStages];
  for (int i = 0; i < stages; ++i) xb[i] = p.alloc(DType::kF32, 1, t.chunk_cols, "logits");
  const BufferId scratch = p.alloc(DType::kF32, 1, t.chunk_cols, "onehot");
  const BufferId lb = p.alloc(DType::kF32, 1, 1, "lse");
  const BufferId tb = p.alloc(DType::kF32, 1, 1, "target");
  const int32_t id = tgt[row];
  if (id == kCrossEntropyIgnore) {  // zeros, without reading the row
    p.fill(scratch, 1, t.chunk_cols, 0.0f);
    for (int64_t c = 0; c < t.chunks; ++c) p.store(t.step_region(row, c, 2), scratch);
    return;
  }
  p.load(lb, TileRegion{1, row, 1, 1, 1});
  p.fill(tb, 1, 1, static_cast<float>(id));
  const int64_t target_chunk = id / t.chunk_cols;
  pipeline_steps(
      t.chunks, stages, [&](int64_t c, int slot) { p.load(xb[slot], t.step_region(row, c, 0)); },
      [&](int64_t c, int slot) {
        const int w = t.chunk_width(c);
        const BufferId x = xb[slot];
        p.binary(BinaryOp::kSub, x, x, lb, 1, w, Broadcast::kRow);
        p.unary(UnaryOp::kExp, x, x, 1, w);  // softmax
        if (c == target_chunk) {
          p.iota(scratch, 1, w, static_cast<int32_t>(t.chunk_col0(c)));
          p.binary(BinaryOp::kCmpEq, scratch, scratch, tb, 1, w, Broadcast::kRow);  // one-hot
          p.binary(BinaryOp::kSub, x, x, scratch, 1, w);
        }
        p.unary(UnaryOp::kScale, x, x, 1, w, scale);
        p.store(t.step_region(row, c, 2), x);
      });
}

}  // namespace

Kernel make_cross_entropy(const Buffer& logits, const Buffer& loss, const Buffer& lse, int64_t rows, int64_t vocab,
                          const std::vector<int32_t>& targets) {
  const std::string kname = "cross_entropy";
  check_inputs(kname, logits, rows, vocab, targets);
  check_row_vector(kname, "loss", loss, rows);
  check_row_vector(kname, "lse", lse, rows);

  const RowTiling t = plan_tiling(rows, vocab);
  Kernel k;
  k.name = fmt::format("cross_entropy {}x{} {}", rows, vocab, dtype_name(logits.dtype));
  k.grid = t.blocks;
  k.args = {logits.arg(), loss.arg(), lse.arg()};
  k.flops = 4.0 * double(rows) * double(vocab);  // max, subtract, exp, sum per element
  const Targets tg = std::make_shared<const std::vector<int32_t>>(targets);
  const bool has_ignored = any_ignored(targets);
  k.build = [t, tg, has_ignored](int64_t block, TileProgram& p) {
    if (t.chunks > 1) build_forward_chunked(t, tg->data(), block, p);
    else build_forward_tiles(t, tg->data(), has_ignored, block, p);
  };
  return k;
}

KernelTiming cross_entropy(Device& dev, const Buffer& logits, const Buffer& loss, const Buffer& lse, int64_t rows,
                           int64_t vocab, const std::vector<int32_t>& targets, Stream* s) {
  return dev.launch(make_cross_entropy(logits, loss, lse, rows, vocab, targets), s);
}

Kernel make_cross_entropy_backward(const Buffer& logits, const Buffer& lse, const Buffer& dlogits, int64_t rows,
                                   int64_t vocab, const std::vector<int32_t>& targets, float scale) {
  const std::string kname = "cross_entropy_backward";
  check_inputs(kname, logits, rows, vocab, targets);
  check_row_vector(kname, "lse", lse, rows);
  expect_dtype_in(kname, "dlogits", dlogits, {DType::kF32, DType::kBF16});
  expect_numel(kname, "dlogits", dlogits, rows * vocab, fmt::format("[{}, {}] (rows, vocab)", rows, vocab));
  if (!std::isfinite(scale))
    throw UserError(fmt::format("{}: scale = {}; it must be a finite number (e.g. 1 / rows not ignored)", kname, scale));

  const RowTiling t = plan_tiling(rows, vocab);
  Kernel k;
  k.name = fmt::format("cross_entropy_backward {}x{} {}->{}", rows, vocab, dtype_name(logits.dtype),
                       dtype_name(dlogits.dtype));
  k.grid = t.blocks;
  k.args = {logits.arg(), lse.arg(), dlogits.arg()};
  k.flops = 4.0 * double(rows) * double(vocab);  // subtract, exp, one-hot subtract, scale per element
  const Targets tg = std::make_shared<const std::vector<int32_t>>(targets);
  k.build = [t, tg, scale](int64_t block, TileProgram& p) {
    if (t.chunks > 1) build_backward_chunked(t, tg->data(), scale, block, p);
    else build_backward_tiles(t, tg->data(), scale, block, p);
  };
  return k;
}

KernelTiming cross_entropy_backward(Device& dev, const Buffer& logits, const Buffer& lse, const Buffer& dlogits,
                                    int64_t rows, int64_t vocab, const std::vector<int32_t>& targets, float scale,
                                    Stream* s) {
  return dev.launch(make_cross_entropy_backward(logits, lse, dlogits, rows, vocab, targets, scale), s);
}

CrossEntropyReference cross_entropy_reference(const std::vector<double>& logits, int64_t rows, int64_t vocab,
                                              const std::vector<int32_t>& targets) {
  PPU_CHECK(static_cast<int64_t>(logits.size()) == rows * vocab, "cross_entropy_reference: logits size");
  PPU_CHECK(static_cast<int64_t>(targets.size()) == rows, "cross_entropy_reference: targets size");
  CrossEntropyReference ref;
  ref.loss.resize(static_cast<size_t>(rows));
  ref.lse.resize(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const double* x = logits.data() + r * vocab;
    double m = x[0];
    for (int64_t c = 1; c < vocab; ++c) m = std::max(m, x[c]);
    double s = 0;
    for (int64_t c = 0; c < vocab; ++c) s += std::exp(x[c] - m);
    const double lse = m + std::log(s);
    const int32_t id = targets[static_cast<size_t>(r)];
    PPU_CHECK(id == kCrossEntropyIgnore || (id >= 0 && id < vocab), "cross_entropy_reference: target out of range");
    ref.lse[static_cast<size_t>(r)] = lse;
    ref.loss[static_cast<size_t>(r)] = id == kCrossEntropyIgnore ? 0.0 : lse - x[id];
  }
  return ref;
}

std::vector<double> cross_entropy_backward_reference(const std::vector<double>& logits, int64_t rows, int64_t vocab,
                                                     const std::vector<int32_t>& targets, double scale) {
  const CrossEntropyReference fwd = cross_entropy_reference(logits, rows, vocab, targets);
  std::vector<double> d(static_cast<size_t>(rows * vocab), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t id = targets[static_cast<size_t>(r)];
    if (id == kCrossEntropyIgnore) continue;
    const double lse = fwd.lse[static_cast<size_t>(r)];
    for (int64_t c = 0; c < vocab; ++c) {
      const double p = std::exp(logits[static_cast<size_t>(r * vocab + c)] - lse);
      d[static_cast<size_t>(r * vocab + c)] = scale * (p - (c == id ? 1.0 : 0.0));
    }
  }
  return d;
}

}  // namespace ppu::kernels
