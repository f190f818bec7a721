#include "kernels/Sampling.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "kernels/KernelUtil.hpp"

namespace ppu::kernels {

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

void expect_index_range(const std::string& kname, int64_t cols) {
  if (cols >= kMaxExactIndex)
    throw UserError(fmt::format("{}: cols = {}; ids are exact fp32 integers, so rows must be shorter than 2^24 = {}",
                                kname, cols, kMaxExactIndex));
}

void expect_scratch(const std::string& kname, const SamplingSplit& plan, const Buffer& scratch) {
  if (plan.scratch_elems() == 0) return;
  if (!scratch.valid() || scratch.dtype != DType::kF32 || scratch.numel < plan.scratch_elems())
    throw UserError(fmt::format("{}: rows of {} split over {} blocks need an fp32 scratch of at least {} elements; "
                                "got {}",
                                kname, plan.cols, plan.splits, plan.scratch_elems(),
                                scratch.valid() ? fmt::format("'{}' ({}, {} elements)", scratch.name,
                                                              dtype_name(scratch.dtype), scratch.numel)
                                                : std::string("none")));
}

// The rows x columns one block of a row kernel covers: `ntiles` row tiles of `nr(t)` rows from
// row `r0(t)`, each over columns [c0, c0 + len) walked in chunks of `chunk_cols`.
struct BlockSpan {
  int ntiles = 1;
  int64_t r0[kRowMaxTilesPerBlock] = {};
  int nr[kRowMaxTilesPerBlock] = {};
  int64_t c0 = 0, len = 0;
  int chunk_cols = 1;
  int64_t chunks() const { return ceil_div(len, chunk_cols); }
  int chunk_width(int64_t c) const { return static_cast<int>(std::min<int64_t>(chunk_cols, len - c * chunk_cols)); }
};

// Block `block` of a row kernel over [rows, cols]: RowTiling `t` when unsplit, else block =
// row * splits + segment.
BlockSpan block_span(const SamplingSplit& plan, const RowTiling& t, int64_t block) {
  BlockSpan s;
  if (plan.splits == 1) {
    s.ntiles = t.tiles_in_block(block);
    for (int i = 0; i < s.ntiles; ++i) {
      s.r0[i] = t.tile_row0(block, i);
      s.nr[i] = t.tile_row_count(block, i);
    }
    s.len = plan.cols;
    s.chunk_cols = t.chunk_cols;
    return s;
  }
  s.r0[0] = block / plan.splits;
  s.nr[0] = 1;
  s.c0 = (block % plan.splits) * plan.split_cols;
  s.len = std::min(plan.split_cols, plan.cols - s.c0);
  s.chunk_cols = static_cast<int>(std::min<int64_t>(kSamplingTileElems, plan.split_cols));
  return s;
}

// Greedy pass: per block, the running (max, arg-max) of each row tile over its chunks. Unsplit:
// the arg-max goes to ids (arg 1). Split: max and arg-max go to the scratch (arg 1) at [0, rows,
// splits] and [1, rows, splits].
Kernel make_argmax_pass(const SamplingSplit& plan, const Buffer& logits, const Buffer& out) {
  const RowTiling t = plan_row_tiling(plan.rows, plan.cols, kSamplingTileElems);
  const bool split = plan.splits > 1;
  Kernel k;
  k.name = fmt::format("argmax{} {}x{} {}", split ? " partials" : "", plan.rows, plan.cols, dtype_name(logits.dtype));
  k.timing_key = fmt::format("{} /{}", k.name, plan.splits);
  k.grid = split ? plan.rows * plan.splits : t.blocks;
  k.args = {logits.arg(), out.arg()};
  k.flops = 3.0 * double(plan.rows) * double(plan.cols);  // max, then compare and blend
  k.build = [plan, t, split](int64_t block, TileProgram& p) {
    const BlockSpan s = block_span(plan, t, block);
    const int64_t chunks = s.chunks();
    const int64_t steps = s.ntiles * chunks;
    const int stages = static_cast<int>(std::min<int64_t>(kSamplingStages, steps));
    const int tr = split ? 1 : t.tile_rows;
    BufferId xb[kSamplingStages];
    for (int i = 0; i < stages; ++i) xb[i] = p.alloc(DType::kF32, tr, s.chunk_cols, "logits");
    // Two running pairs, so that the next row tile need not wait for this one's store.
    const int npairs = std::min(2, s.ntiles);
    BufferId mx[2], arg[2];
    for (int i = 0; i < npairs; ++i) {
      mx[i] = p.alloc(DType::kF32, tr, 1, "max");
      arg[i] = p.alloc(DType::kF32, tr, 1, "argmax");
    }
    BufferId cmx = 0, carg = 0, gt = 0;
    if (chunks > 1) {
      cmx = p.alloc(DType::kF32, tr, 1, "chunk_max");
      carg = p.alloc(DType::kF32, tr, 1, "chunk_argmax");
      gt = p.alloc(DType::kF32, tr, 1, "greater");
    }
    auto load = [&](int64_t step, int slot) {
      const auto tile = static_cast<int>(step / chunks);
      const int64_t c = step % chunks;
      p.load(xb[slot], matrix_region(0, 0, plan.cols, s.r0[tile], s.c0 + c * s.chunk_cols, s.nr[tile],
                                     s.chunk_width(c)));
    };
    auto body = [&](int64_t step, int slot) {
      const auto tile = static_cast<int>(step / chunks);
      const int64_t c = step % chunks;
      const int nr = s.nr[tile], w = s.chunk_width(c);
      const auto base = static_cast<int32_t>(s.c0 + c * s.chunk_cols);
      const BufferId m = mx[tile % npairs], a = arg[tile % npairs];
      if (c == 0) {
        p.reduce(ReduceOp::kMax, m, xb[slot], nr, w);
        p.reduce(ReduceOp::kArgMax, a, xb[slot], nr, w, false, base);
      } else {
        // A later chunk wins only with a strictly greater maximum: ties keep the lower index.
        p.reduce(ReduceOp::kMax, cmx, xb[slot], nr, w);
        p.reduce(ReduceOp::kArgMax, carg, xb[slot], nr, w, false, base);
        p.binary(BinaryOp::kCmpGt, gt, cmx, m, nr, 1);
        p.binary(BinaryOp::kSelect, a, gt, carg, nr, 1);
        p.binary(BinaryOp::kMax, m, m, cmx, nr, 1);
      }
      if (c + 1 < chunks) return;
      if (!split) {
        p.store(TileRegion{1, s.r0[tile], 1, nr, 1}, a);
        return;
      }
      const int64_t at = s.r0[0] * plan.splits + s.c0 / plan.split_cols;
      p.store(TileRegion{1, at, 1, 1, 1}, m);
      p.store(TileRegion{1, plan.rows * plan.splits + at, 1, 1, 1}, a);
    };
    pipeline_steps(steps, stages, load, body);
  };
  return k;
}

// Greedy combine: per row, the index held by the first block whose maximum is the row's maximum
// (blocks cover increasing columns, so that is the lowest index of the maximum).
Kernel make_argmax_combine(const SamplingSplit& plan, const Buffer& scratch, const Buffer& ids) {
  const int64_t S = plan.splits;
  const RowTiling t = plan_row_tiling(plan.rows, S, kSamplingTileElems);
  Kernel k;
  k.name = fmt::format("argmax combine {}x{}", plan.rows, S);
  k.timing_key = k.name;
  k.grid = t.blocks;
  k.args = {scratch.arg(), ids.arg()};
  k.flops = 4.0 * double(plan.rows) * double(S);
  k.build = [plan, t, S](int64_t block, TileProgram& p) {
    const int ntiles = t.tiles_in_block(block);
    const int stages = std::min(kSamplingStages, ntiles);
    const auto cols = static_cast<int>(S);
    BufferId pm[kSamplingStages], pi[kSamplingStages], res[kSamplingStages];
    for (int i = 0; i < stages; ++i) {
      pm[i] = p.alloc(DType::kF32, t.tile_rows, cols, "partial_max");
      pi[i] = p.alloc(DType::kF32, t.tile_rows, cols, "partial_argmax");
      res[i] = p.alloc(DType::kF32, t.tile_rows, 1, "argmax");
    }
    const BufferId col = p.alloc(DType::kF32, t.tile_rows, cols, "column");
    p.iota(col, t.tile_rows, cols, 0);
    pipeline_steps(
        ntiles, stages,
        [&](int64_t step, int slot) {
          const auto tile = static_cast<int>(step);
          const int64_t r0 = t.tile_row0(block, tile);
          const int nr = t.tile_row_count(block, tile);
          p.load(pm[slot], matrix_region(0, 0, S, r0, 0, nr, cols));
          p.load(pi[slot], matrix_region(0, plan.rows * S, S, r0, 0, nr, cols));
        },
        [&](int64_t step, int slot) {
          const auto tile = static_cast<int>(step);
          const int nr = t.tile_row_count(block, tile);
          p.reduce(ReduceOp::kArgMax, res[slot], pm[slot], nr, cols);
          p.binary(BinaryOp::kCmpEq, pm[slot], col, res[slot], nr, cols, Broadcast::kRow);  // one-hot
          p.binary(BinaryOp::kMul, pm[slot], pm[slot], pi[slot], nr, cols);
          p.reduce(ReduceOp::kSum, res[slot], pm[slot], nr, cols);  // exact: one nonzero integer
          p.store(TileRegion{1, t.tile_row0(block, tile), 1, nr, 1}, res[slot]);
        });
  };
  return k;
}

// Emits k rounds of selection over x [1, n] (destroyed: winners become NaN): round j writes the
// maximum to values[0, j] and its id to ids[0, j]. `id_of(pos)` emits the instructions that turn
// the arg-max position `pos` ([1, 1], with `mask` = one-hot of it over [1, n]) into an id in
// `id`; returns the buffer holding it.
template <class IdOf>
void emit_selection(TileProgram& p, BufferId x, BufferId pos_iota, int n, int rounds, int k, BufferId values,
                    BufferId ids, int32_t index_base, IdOf&& id_of) {
  const BufferId mask = p.alloc(DType::kF32, 1, n, "mask");
  const BufferId col_k = p.alloc(DType::kF32, 1, k, "column");
  const BufferId at_j = p.alloc(DType::kF32, 1, k, "round_mask");
  const BufferId m = p.alloc(DType::kF32, 1, 1, "max");
  const BufferId pos = p.alloc(DType::kF32, 1, 1, "argmax");
  const BufferId j_val = p.alloc(DType::kF32, 1, 1, "round");
  const BufferId nan = p.alloc(DType::kF32, 1, 1, "nan");
  p.iota(col_k, 1, k, 0);
  p.fill(nan, 1, 1, kNaN);
  for (int j = 0; j < rounds; ++j) {
    p.reduce(ReduceOp::kMax, m, x, 1, n);
    p.reduce(ReduceOp::kArgMax, pos, x, 1, n, false, index_base);
    p.binary(BinaryOp::kCmpEq, mask, pos_iota, pos, 1, n, Broadcast::kRow);
    const BufferId id = id_of(pos, mask);
    p.fill(j_val, 1, 1, static_cast<float>(j));
    p.binary(BinaryOp::kCmpEq, at_j, col_k, j_val, 1, k, Broadcast::kRow);
    p.binary(BinaryOp::kSelect, values, at_j, m, 1, k, Broadcast::kRow);
    p.binary(BinaryOp::kSelect, ids, at_j, id, 1, k, Broadcast::kRow);
    if (j + 1 < rounds) p.binary(BinaryOp::kSelect, x, mask, nan, 1, n, Broadcast::kRow);
  }
}

// Top-k pass 1: block = row * splits + segment; the segment's min(k, len) best into values/ids
// (unsplit: args 1 and 2, [rows, k]) or into the scratch (arg 1: [0, rows, splits, k] values,
// [1, rows, splits, k] ids; rounds past the segment's length leave NaN values and id -1).
Kernel make_top_k_pass(const SamplingSplit& plan, const Buffer& logits, const std::vector<Buffer>& outs) {
  const bool split = plan.splits > 1;
  Kernel k;
  k.name = fmt::format("top_k{} {}x{} k={} {}", split ? " partials" : "", plan.rows, plan.cols, plan.k,
                       dtype_name(logits.dtype));
  k.timing_key = fmt::format("{} /{}", k.name, plan.splits);
  k.grid = plan.rows * plan.splits;
  k.args = {logits.arg()};
  for (const Buffer& b : outs) k.args.push_back(b.arg());
  k.flops = 5.0 * double(plan.k) * double(plan.rows) * double(plan.cols);
  k.build = [plan, split](int64_t block, TileProgram& p) {
    const int64_t row = block / plan.splits, seg = block % plan.splits;
    const int64_t c0 = seg * plan.split_cols;
    const auto n = static_cast<int>(std::min(plan.split_cols, plan.cols - c0));
    const auto kk = static_cast<int>(plan.k);
    const auto width = static_cast<int>(plan.split_cols);
    const BufferId x = p.alloc(DType::kF32, 1, width, "logits");
    const BufferId col = p.alloc(DType::kF32, 1, width, "column");
    const BufferId vals = p.alloc(DType::kF32, 1, kk, "values");
    const BufferId ids = p.alloc(DType::kF32, 1, kk, "ids");
    p.load(x, TileRegion{0, row * plan.cols + c0, plan.cols, 1, n});
    p.iota(col, 1, n, static_cast<int32_t>(c0));
    const int rounds = std::min(kk, n);
    if (rounds < kk) {
      p.fill(vals, 1, kk, kNaN);
      p.fill(ids, 1, kk, -1.0f);
    }
    emit_selection(p, x, col, n, rounds, kk, vals, ids, static_cast<int32_t>(c0),
                   [](BufferId pos, BufferId) { return pos; });
    if (!split) {
      p.store(TileRegion{1, row * plan.k, plan.k, 1, kk}, vals);
      p.store(TileRegion{2, row * plan.k, plan.k, 1, kk}, ids);
      return;
    }
    const int64_t at = (row * plan.splits + seg) * plan.k;
    p.store(TileRegion{1, at, plan.k, 1, kk}, vals);
    p.store(TileRegion{1, plan.rows * plan.splits * plan.k + at, plan.k, 1, kk}, ids);
  };
  return k;
}

// Top-k pass 2: per row, the same selection over its splits x k candidates; a winner's id is read
// from the candidates' ids with its one-hot mask (multiply, sum: exact, one nonzero integer).
Kernel make_top_k_merge(const SamplingSplit& plan, const Buffer& scratch, const Buffer& values, const Buffer& ids) {
  const int64_t C = plan.splits * plan.k;
  Kernel k;
  k.name = fmt::format("top_k merge {}x{} k={}", plan.rows, C, plan.k);
  k.timing_key = k.name;
  k.grid = plan.rows;
  k.args = {scratch.arg(), values.arg(), ids.arg()};
  k.flops = 7.0 * double(plan.k) * double(plan.rows) * double(C);
  k.build = [plan, C](int64_t row, TileProgram& p) {
    const auto n = static_cast<int>(C);
    const auto kk = static_cast<int>(plan.k);
    const BufferId cv = p.alloc(DType::kF32, 1, n, "candidate_values");
    const BufferId ci = p.alloc(DType::kF32, 1, n, "candidate_ids");
    const BufferId col = p.alloc(DType::kF32, 1, n, "column");
    const BufferId picked = p.alloc(DType::kF32, 1, n, "picked");
    const BufferId id = p.alloc(DType::kF32, 1, 1, "id");
    const BufferId vals = p.alloc(DType::kF32, 1, kk, "values");
    const BufferId out_ids = p.alloc(DType::kF32, 1, kk, "ids");
    p.load(cv, TileRegion{0, row * C, C, 1, n});
    p.load(ci, TileRegion{0, plan.rows * C + row * C, C, 1, n});
    p.iota(col, 1, n, 0);
    emit_selection(p, cv, col, n, kk, kk, vals, out_ids, 0, [&](BufferId, BufferId mask) {
      p.binary(BinaryOp::kMul, picked, mask, ci, 1, n);
      p.reduce(ReduceOp::kSum, id, picked, 1, n);
      return id;
    });
    p.store(TileRegion{1, row * plan.k, plan.k, 1, kk}, vals);
    p.store(TileRegion{2, row * plan.k, plan.k, 1, kk}, out_ids);
  };
  return k;
}

void expect_logits(const std::string& kname, const Buffer& logits, int64_t rows, int64_t cols) {
  expect_dtype_in(kname, "logits", logits, {DType::kF32, DType::kBF16, DType::kF16});
  expect_numel(kname, "logits", logits, rows * cols, fmt::format("[{}, {}] (rows, vocab)", rows, cols));
}

// A device buffer freed when it goes out of scope (also when a kernel throws); none for numel 0.
struct TempBuffer {
  Device& dev;
  Buffer b;
  TempBuffer(Device& d, DType t, int64_t numel, const char* name)
      : dev(d), b(numel > 0 ? d.alloc(t, numel, name) : Buffer{}) {}
  ~TempBuffer() {
    if (b.valid()) dev.free(b);
  }
  TempBuffer(const TempBuffer&) = delete;
  TempBuffer& operator=(const TempBuffer&) = delete;
};

std::vector<KernelTiming> launch_all(Device& dev, const std::vector<Kernel>& ks, Stream* s) {
  std::vector<KernelTiming> out;
  for (const Kernel& k : ks) out.push_back(dev.launch(k, s));
  return out;
}

}  // namespace

SamplingSplit plan_argmax(const ChipSpec& chip, int64_t rows, int64_t cols) {
  const std::string kname = "argmax";
  expect_positive(kname, {{"rows", rows}, {"cols", cols}});
  expect_index_range(kname, cols);
  SamplingSplit plan{rows, cols, 1, 1, cols};
  const int64_t most = std::max<int64_t>(1, cols / kArgMaxMinSplitCols);
  const int64_t want = ceil_div(chip.num_cores(), rows);
  const int64_t splits = std::min(most, want);
  if (splits > 1) {
    plan.split_cols = ceil_div(cols, splits);
    plan.splits = ceil_div(cols, plan.split_cols);
  }
  return plan;
}

std::vector<Kernel> make_argmax(const ChipSpec& chip, const Buffer& logits, const Buffer& ids, int64_t rows,
                                int64_t cols, const Buffer& scratch) {
  const std::string kname = "argmax";
  const SamplingSplit plan = plan_argmax(chip, rows, cols);
  expect_logits(kname, logits, rows, cols);
  expect_dtype_in(kname, "ids", ids, {DType::kF32});
  expect_numel(kname, "ids", ids, rows, fmt::format("[{}] (rows)", rows));
  if (plan.splits == 1) return {make_argmax_pass(plan, logits, ids)};
  expect_scratch(kname, plan, scratch);
  return {make_argmax_pass(plan, logits, scratch), make_argmax_combine(plan, scratch, ids)};
}

std::vector<KernelTiming> argmax(Device& dev, const Buffer& logits, const Buffer& ids, int64_t rows, int64_t cols,
                                 Stream* s) {
  const TempBuffer scratch(dev, DType::kF32, plan_argmax(dev.chip(), rows, cols).scratch_elems(), "argmax.partials");
  return launch_all(dev, make_argmax(dev.chip(), logits, ids, rows, cols, scratch.b), s);
}

SamplingSplit plan_top_k(int64_t rows, int64_t cols, int64_t k) {
  const std::string kname = "top_k";
  expect_positive(kname, {{"rows", rows}, {"cols", cols}, {"k", k}});
  expect_index_range(kname, cols);
  if (k > std::min(cols, kTopKMax))
    throw UserError(fmt::format("{}: k = {}; it must be at most the row length ({}) and kTopKMax ({})", kname, k, cols,
                                kTopKMax));
  SamplingSplit plan{rows, cols, k, 1, cols};
  if (cols <= kSamplingTileElems) return plan;
  const int64_t fewest = ceil_div(cols, kSamplingTileElems);  // segments must fit a tile
  const int64_t most = kSamplingTileElems / k;                // their candidates must fit one too
  if (fewest > most)
    throw UserError(fmt::format("{}: k = {} over rows of {}: the {} segments' candidates ({}) exceed one tile of {}; "
                                "use a smaller k",
                                kname, k, cols, fewest, fewest * k, kSamplingTileElems));
  // Pass 1 costs about 5 k (cols / S) lane operations per block, pass 2 about 7 k (S k) per row.
  const auto balanced = std::llround(std::sqrt(5.0 * double(cols) / (7.0 * double(k))));
  const int64_t splits = std::clamp<int64_t>(balanced, fewest, most);
  plan.split_cols = ceil_div(cols, splits);
  plan.splits = ceil_div(cols, plan.split_cols);
  return plan;
}

std::vector<Kernel> make_top_k(const Buffer& logits, const Buffer& values, const Buffer& ids, int64_t rows,
                               int64_t cols, int64_t k, const Buffer& scratch) {
  const std::string kname = "top_k";
  const SamplingSplit plan = plan_top_k(rows, cols, k);
  expect_logits(kname, logits, rows, cols);
  const auto shape = fmt::format("[{}, {}] (rows, k)", rows, k);
  expect_dtype_in(kname, "values", values, {DType::kF32});
  expect_dtype_in(kname, "ids", ids, {DType::kF32});
  expect_numel(kname, "values", values, rows * k, shape);
  expect_numel(kname, "ids", ids, rows * k, shape);
  if (plan.splits == 1) return {make_top_k_pass(plan, logits, {values, ids})};
  expect_scratch(kname, plan, scratch);
  return {make_top_k_pass(plan, logits, {scratch}), make_top_k_merge(plan, scratch, values, ids)};
}

std::vector<KernelTiming> top_k(Device& dev, const Buffer& logits, const Buffer& values, const Buffer& ids,
                                int64_t rows, int64_t cols, int64_t k, Stream* s) {
  const TempBuffer scratch(dev, DType::kF32, plan_top_k(rows, cols, k).scratch_elems(), "top_k.candidates");
  return launch_all(dev, make_top_k(logits, values, ids, rows, cols, k, scratch.b), s);
}

std::vector<int32_t> download_ids(Device& dev, const Buffer& ids, Stream* s) {
  expect_dtype_in("download_ids", "ids", ids, {DType::kF32});
  const std::vector<float> v = dev.download(ids, s);
  std::vector<int32_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const float f = v[i];
    if (!(f >= 0.0f && f < static_cast<float>(kMaxExactIndex)) || std::floor(f) != f)
      throw UserError(fmt::format("download_ids: element {} of '{}' is {}, not an id in [0, 2^24)", i, ids.name, f));
    out[i] = static_cast<int32_t>(f);
  }
  return out;
}

int32_t sample_from_candidates(std::span<const float> values, std::span<const int32_t> ids, double temperature,
                               double top_p, double uniform) {
  if (values.empty() || values.size() != ids.size())
    throw UserError(fmt::format("sampling: {} candidate values and {} ids; need the same positive number",
                                values.size(), ids.size()));
  if (!(temperature > 0.0) || !std::isfinite(temperature))
    throw UserError(fmt::format("sampling: temperature {} must be positive (greedy is arg-max)", temperature));
  if (!(top_p > 0.0 && top_p <= 1.0)) throw UserError(fmt::format("sampling: top_p {} must be in (0, 1]", top_p));
  if (!(uniform >= 0.0 && uniform < 1.0)) throw UserError(fmt::format("sampling: uniform {} must be in [0, 1)", uniform));
  // From here on the operations and their order are those of Sampler::sample after its partial
  // sort: keep them identical, or the device path stops reproducing the host's tokens.
  const size_t k = values.size();
  const double maxl = values[0];
  std::vector<double> p(k);
  double sum = 0;
  for (size_t i = 0; i < k; ++i) sum += p[i] = std::exp((values[i] - maxl) / temperature);
  size_t keep = k;
  if (top_p < 1.0) {
    double mass = 0;
    for (size_t i = 0; i < k; ++i) {
      mass += p[i] / sum;
      if (mass >= top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept = 0;
  for (size_t i = 0; i < keep; ++i) kept += p[i];
  double r = uniform * kept;
  for (size_t i = 0; i < keep; ++i) {
    r -= p[i];
    if (r < 0) return ids[i];
  }
  return ids[keep - 1];
}

std::vector<int32_t> sample_tokens(Device& dev, const Buffer& logits, int64_t rows, int64_t vocab,
                                   const SamplingParams& params, std::span<const double> uniforms, Stream* s) {
  if (params.temperature == 0.0) {
    const TempBuffer ids(dev, DType::kF32, rows, "sample.ids");
    argmax(dev, logits, ids.b, rows, vocab, s);
    return download_ids(dev, ids.b, s);
  }
  if (params.top_k < 1 || params.top_k > kTopKMax)
    throw UserError(fmt::format("sampling on the device: top_k = {}; it must be in [1, {}] when temperature > 0 "
                                "(sample on the host otherwise)",
                                params.top_k, kTopKMax));
  if (static_cast<int64_t>(uniforms.size()) != rows)
    throw UserError(fmt::format("sampling on the device: {} uniforms for {} rows; need one per row", uniforms.size(),
                                rows));
  const int64_t k = std::min(params.top_k, vocab);
  const TempBuffer values(dev, DType::kF32, rows * k, "sample.values"), ids(dev, DType::kF32, rows * k, "sample.ids");
  top_k(dev, logits, values.b, ids.b, rows, vocab, k, s);
  const std::vector<float> v = dev.download(values.b, s);
  const std::vector<int32_t> id = download_ids(dev, ids.b, s);
  std::vector<int32_t> out(static_cast<size_t>(rows));
  const auto uk = static_cast<size_t>(k);
  for (size_t r = 0; r < out.size(); ++r)
    out[r] = sample_from_candidates(std::span<const float>(v).subspan(r * uk, uk),
                                    std::span<const int32_t>(id).subspan(r * uk, uk), params.temperature,
                                    params.top_p, uniforms[r]);
  return out;
}

std::vector<int32_t> argmax_reference(const std::vector<float>& x, int64_t rows, int64_t cols) {
  std::vector<int32_t> out(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.data() + r * cols;
    int64_t best = -1;
    for (int64_t c = 0; c < cols; ++c)
      if (!std::isnan(xr[c]) && (best < 0 || xr[c] > xr[best])) best = c;
    out[static_cast<size_t>(r)] = static_cast<int32_t>(std::max<int64_t>(best, 0));
  }
  return out;
}

std::vector<int32_t> top_k_reference(const std::vector<float>& x, int64_t rows, int64_t cols, int64_t k) {
  std::vector<int32_t> out;
  std::vector<int32_t> ids(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.data() + r * cols;
    std::iota(ids.begin(), ids.end(), 0);
    std::partial_sort(ids.begin(), ids.begin() + k, ids.end(),
                      [&](int32_t a, int32_t b) { return xr[a] != xr[b] ? xr[a] > xr[b] : a < b; });
    out.insert(out.end(), ids.begin(), ids.begin() + k);
  }
  return out;
}

}  // namespace ppu::kernels
