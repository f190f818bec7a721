#include "kernels/Gemm.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <tuple>

#include "kernels/KernelUtil.hpp"

namespace ppu::kernels {

std::string GemmConfig::describe() const {
  return fmt::format("{}x{}x{} tiles, {} stages{}", tile_m, tile_n, tile_k, stages,
                     split_k > 1 ? fmt::format(", split-K {}", split_k) : "");
}

namespace {

// int8: the int32 accumulator, plus an fp32 tile for the epilogue (cast, scales) and the [tile_m]
// and [tile_n] scale vectors of a W8A8 GEMM (counted always: the choice must not depend on them).
int64_t gemm_sram_bytes(const GemmConfig& c, DType in_type) {
  const int es = dtype_size_bytes(in_type);
  auto r64 = [](int64_t b) { return (b + 63) / 64 * 64; };
  const int64_t epilogue = in_type == DType::kI8 ? r64(int64_t{c.tile_m} * c.tile_n * 4) + r64(int64_t{c.tile_m} * 4) +
                                                       r64(int64_t{c.tile_n} * 4)
                                                 : 0;
  return c.stages * (r64(int64_t{c.tile_m} * c.tile_k * es) + r64(int64_t{c.tile_k} * c.tile_n * es)) +
         r64(int64_t{c.tile_m} * c.tile_n * 4) + epilogue;
}

// The workspace dtype of a split-K GEMM: exact int32 partial sums for int8 inputs, else fp32.
DType workspace_dtype(DType in_type) { return in_type == DType::kI8 ? DType::kI32 : DType::kF32; }

void check_gemm_args(const ChipSpec& chip, const GemmShape& s, const Buffer& a, const Buffer& b, const Buffer& c,
                     const GemmScales* scales = nullptr) {
  const std::string kname = scales ? "gemm_w8a8" : "gemm";
  expect_positive(kname, {{"M", s.m}, {"N", s.n}, {"K", s.k}, {"batch", s.batch}});
  if (s.m > INT32_MAX || s.n > INT32_MAX || s.k > INT32_MAX)
    throw UserError(fmt::format("{}: M, N and K must each be below 2^31 (got {}x{}x{})", kname, s.m, s.n, s.k));
  if (scales) expect_dtype_in(kname, "A", a, {DType::kI8});
  else expect_dtype_in(kname, "A", a, {DType::kBF16, DType::kF16, DType::kF8E4M3, DType::kF8E5M2, DType::kI8});
  if (b.dtype != a.dtype)
    throw UserError(fmt::format("{}: A is {} but B is {}; A and B must share a dtype", kname, dtype_name(a.dtype),
                                dtype_name(b.dtype)));
  if (a.dtype == DType::kI8 && !scales) expect_dtype_in(kname, "C", c, {DType::kI32, DType::kF32, DType::kBF16, DType::kF16});
  else expect_dtype_in(kname, "C", c, {DType::kF32, DType::kBF16, DType::kF16});
  if (!chip.supports(a.dtype))
    throw UserError(fmt::format("{}: {}", kname, matrix_unit_refusal(chip, a.dtype)));
  if (a.dtype == DType::kI8 && s.k > kMmaInt8MaxK)
    throw UserError(fmt::format("{}: K = {} is too long for int32 accumulation of int8 products (an output could "
                                "overflow past K = {}); split the GEMM over K",
                                kname, s.k, kMmaInt8MaxK));
  if (scales) {
    if (!scales->x || !scales->w)
      throw UserError(fmt::format("{}: both scale vectors (per-token s_x, per-channel s_w) are needed", kname));
    expect_dtype_in(kname, "s_x", *scales->x, {DType::kF32});
    expect_dtype_in(kname, "s_w", *scales->w, {DType::kF32});
    expect_numel(kname, "s_x", *scales->x, s.batch * s.m, fmt::format("[{}, {}] (batch, M)", s.batch, s.m));
    expect_numel(kname, "s_w", *scales->w, s.batch * s.n, fmt::format("[{}, {}] (batch, N)", s.batch, s.n));
  }
  const auto shape_a = s.trans_a ? fmt::format("[{}, {}, {}] (batch, K, M)", s.batch, s.k, s.m)
                                 : fmt::format("[{}, {}, {}] (batch, M, K)", s.batch, s.m, s.k);
  const auto shape_b = s.trans_b ? fmt::format("[{}, {}, {}] (batch, N, K)", s.batch, s.n, s.k)
                                 : fmt::format("[{}, {}, {}] (batch, K, N)", s.batch, s.k, s.n);
  expect_numel(kname, "A", a, s.batch * s.m * s.k, shape_a);
  expect_numel(kname, "B", b, s.batch * s.k * s.n, shape_b);
  expect_numel(kname, "C", c, s.batch * s.m * s.n, fmt::format("[{}, {}, {}] (batch, M, N)", s.batch, s.m, s.n));
}

void check_gemm_config(const GemmShape& s, const GemmConfig& cfg) {
  if (cfg.tile_m <= 0 || cfg.tile_n <= 0 || cfg.tile_k <= 0 || cfg.stages < 1 || cfg.group_m < 1)
    throw UserError(fmt::format("gemm: invalid tile configuration {}", cfg.describe()));
  const int64_t ksteps = ceil_div(s.k, cfg.tile_k);
  if (cfg.split_k < 1 || cfg.split_k > ksteps)
    throw UserError(fmt::format("gemm: split_k {} for K = {} in k-steps of {}; valid: 1 to {} (at least one k-step per "
                                "part)",
                                cfg.split_k, s.k, cfg.tile_k, ksteps));
}

// The tile kernel. Without split-K it stores alpha * A.B into C (argument 2); with it, block
// (part, tile) multiplies k-steps [part * ksteps / split, (part + 1) * ksteps / split) and stores the
// unscaled fp32 sum to part `part` of the workspace (argument 2, [split, batch, M, N]).
// int8 inputs accumulate into an int32 tile; the epilogue casts it to fp32 (unless C or the
// workspace is int32 and nothing scales it), multiplies row i by s_x[i] and column j by s_w[j]
// (W8A8, arguments 3 and 4: s_x [batch, M], s_w [batch, N]), then by alpha.
Kernel make_gemm_tiles(const GemmShape& s, const Buffer& a, const Buffer& b, const Buffer& out, const GemmConfig& cfg,
                       const GemmScales* scales = nullptr) {
  const int64_t tiles_m = ceil_div(s.m, cfg.tile_m), tiles_n = ceil_div(s.n, cfg.tile_n);
  const int64_t per_batch = tiles_m * tiles_n;
  const int split = cfg.split_k;
  Kernel k;
  const bool w8a8 = scales != nullptr && split == 1;
  k.name = fmt::format("gemm{} {}x{}x{}{} {}{}{}{}", w8a8 ? "_w8a8" : "", s.m, s.n, s.k,
                       s.batch > 1 ? fmt::format(" x{}", s.batch) : "", dtype_name(a.dtype), s.trans_a ? " A^T" : "",
                       s.trans_b ? " B^T" : "", split > 1 ? fmt::format(" split-K {}", split) : "");
  k.grid = s.batch * per_batch * split;
  k.timing_key =
      fmt::format("{}|{}|{}|{}|{}", k.name, cfg.describe(), cfg.group_m, s.alpha != 1.0f, dtype_name(out.dtype));
  k.args = {a.arg(), b.arg(), out.arg()};
  if (w8a8) {
    k.args.push_back(scales->x->arg());
    k.args.push_back(scales->w->arg());
  }
  k.flops = 2.0 * s.batch * double(s.m) * double(s.n) * double(s.k);
  k.ops = {KernelOp::gemm(GemmDims{s.m, s.n, s.k, s.batch, s.trans_a, s.trans_b})};
  const DType in_t = a.dtype, out_t = out.dtype;
  k.build = [s, cfg, tiles_m, tiles_n, per_batch, in_t, out_t, split, w8a8](int64_t bid, TileProgram& p) {
    const int64_t part = bid / (s.batch * per_batch);
    const int64_t tile = bid % (s.batch * per_batch);
    const int64_t batch = tile / per_batch;
    const int64_t local = tile % per_batch;
    const int64_t group_size = int64_t{cfg.group_m} * tiles_n;
    const int64_t first_m = (local / group_size) * cfg.group_m;
    const int64_t gm = std::min<int64_t>(tiles_m - first_m, cfg.group_m);
    const int64_t pid_m = first_m + (local % group_size) % gm;
    const int64_t pid_n = (local % group_size) / gm;
    const int64_t m0 = pid_m * cfg.tile_m, n0 = pid_n * cfg.tile_n;
    const int mm = static_cast<int>(std::min<int64_t>(cfg.tile_m, s.m - m0));
    const int nn = static_cast<int>(std::min<int64_t>(cfg.tile_n, s.n - n0));
    const int64_t a_base = batch * s.m * s.k, b_base = batch * s.k * s.n, c_base = batch * s.m * s.n;
    const int64_t ksteps_all = ceil_div(s.k, cfg.tile_k);
    const int64_t kt0 = part * ksteps_all / split, kt1 = (part + 1) * ksteps_all / split;
    const int64_t ksteps = kt1 - kt0;
    // Every block allocates for the configured stages (block 0 sizes residency in the timing engine).
    const int stages = static_cast<int>(std::min<int64_t>(cfg.stages, ceil_div(ksteps_all, split)));
    const int used = static_cast<int>(std::min<int64_t>(stages, ksteps));

    BufferId abuf[4], bbuf[4];
    for (int i = 0; i < stages; ++i) {
      abuf[i] = s.trans_a ? p.alloc(in_t, cfg.tile_k, cfg.tile_m, "a") : p.alloc(in_t, cfg.tile_m, cfg.tile_k, "a");
      bbuf[i] = s.trans_b ? p.alloc(in_t, cfg.tile_n, cfg.tile_k, "b") : p.alloc(in_t, cfg.tile_k, cfg.tile_n, "b");
    }
    const bool int8 = in_t == DType::kI8;
    const BufferId acc = p.alloc(int8 ? DType::kI32 : DType::kF32, cfg.tile_m, cfg.tile_n, "acc");
    BufferId sx = 0, sw = 0;
    if (w8a8) {  // the scales first: their loads overlap the k-loop
      sx = p.alloc(DType::kF32, cfg.tile_m, 1, "s_x");
      sw = p.alloc(DType::kF32, 1, cfg.tile_n, "s_w");
      p.load(sx, TileRegion{3, batch * s.m + m0, 1, mm, 1});
      p.load(sw, TileRegion{4, batch * s.n + n0, nn, 1, nn});
    }
    auto load_step = [&](int64_t kt, int slot) {
      const int64_t k0 = kt * cfg.tile_k;
      const int kk = static_cast<int>(std::min<int64_t>(cfg.tile_k, s.k - k0));
      p.load(abuf[slot], s.trans_a ? matrix_region(0, a_base, s.m, k0, m0, kk, mm)
                                   : matrix_region(0, a_base, s.k, m0, k0, mm, kk));
      p.load(bbuf[slot], s.trans_b ? matrix_region(1, b_base, s.k, n0, k0, nn, kk)
                                   : matrix_region(1, b_base, s.n, k0, n0, kk, nn));
    };
    for (int i = 0; i < used; ++i) load_step(kt0 + i, i);
    for (int64_t j = 0; j < ksteps; ++j) {
      const int slot = static_cast<int>(j % used);
      const int64_t kt = kt0 + j;
      const int kk = static_cast<int>(std::min<int64_t>(cfg.tile_k, s.k - kt * cfg.tile_k));
      p.mma(acc, abuf[slot], bbuf[slot], mm, nn, kk, s.trans_a, s.trans_b, j > 0);
      if (j + used < ksteps) load_step(kt + used, slot);
    }
    if (split > 1) {
      p.store(matrix_region(2, part * s.batch * s.m * s.n + c_base, s.n, m0, n0, mm, nn), acc);
      return;
    }
    BufferId res = acc;
    if (int8 && (out_t != DType::kI32 || w8a8 || s.alpha != 1.0f)) {
      res = p.alloc(DType::kF32, cfg.tile_m, cfg.tile_n, "acc_f32");
      p.cast(res, acc, mm, nn);
      if (w8a8) {
        p.binary(BinaryOp::kMul, res, res, sx, mm, nn, Broadcast::kRow);
        p.binary(BinaryOp::kMul, res, res, sw, mm, nn, Broadcast::kCol);
      }
    }
    if (s.alpha != 1.0f) p.unary(UnaryOp::kScale, res, res, mm, nn, s.alpha);
    p.store(matrix_region(2, c_base, s.n, m0, n0, mm, nn), res);
  };
  return k;
}

// The split-K reduce of an int8 GEMM: the int32 parts of each element added in part order (exact),
// then the same epilogue as the unsplit kernel's (cast, W8A8 scales, alpha) into C. One block per
// row of C and chunk of up to kIntReduceCols columns, so that a row's s_x is one value.
constexpr int kIntReduceCols = 2048;
Kernel make_gemm_reduce_int(const GemmShape& s, const Buffer& workspace, const Buffer& c, int split,
                            const GemmScales* scales) {
  const int64_t rows = s.batch * s.m;
  const int64_t chunk = std::min<int64_t>(s.n, kIntReduceCols);
  const int64_t chunks = ceil_div(s.n, chunk);
  const bool w8a8 = scales != nullptr;
  Kernel k;
  k.name = fmt::format("gemm{} split-K reduce {}x{}{} int32 {} parts", w8a8 ? "_w8a8" : "", s.m, s.n,
                       s.batch > 1 ? fmt::format(" x{}", s.batch) : "", split);
  k.grid = rows * chunks;
  k.timing_key = fmt::format("{}|{}|{}", k.name, dtype_name(c.dtype), s.alpha != 1.0f);
  k.args = {workspace.arg(), c.arg()};
  if (w8a8) {
    k.args.push_back(scales->x->arg());
    k.args.push_back(scales->w->arg());
  }
  k.ops = {KernelOp::elementwise(ElementwiseDims{rows * s.n, split, ElementwiseFn::kSplitKReduce})};
  const int64_t n = rows * s.n, N = s.n, M = s.m;
  const float alpha = s.alpha;
  const DType out_t = c.dtype;
  k.build = [n, N, M, chunk, chunks, split, alpha, out_t, w8a8](int64_t block, TileProgram& p) {
    const int64_t row = block / chunks, c0 = (block % chunks) * chunk;
    const int cols = static_cast<int>(std::min<int64_t>(chunk, N - c0));
    const int width = static_cast<int>(chunk);
    const int64_t off = row * N + c0;
    std::vector<BufferId> part(static_cast<size_t>(split));
    for (int j = 0; j < split; ++j) {
      part[static_cast<size_t>(j)] = p.alloc(DType::kI32, 1, width, "part");
      p.load(part[static_cast<size_t>(j)], TileRegion{0, j * n + off, width, 1, cols});
    }
    BufferId sx = 0, sw = 0;
    if (w8a8) {
      sx = p.alloc(DType::kF32, 1, 1, "s_x");
      sw = p.alloc(DType::kF32, 1, width, "s_w");
      p.load(sx, TileRegion{2, row, 1, 1, 1});
      p.load(sw, TileRegion{3, (row / M) * N + c0, width, 1, cols});
    }
    for (int j = 1; j < split; ++j) p.binary(BinaryOp::kAdd, part[0], part[0], part[static_cast<size_t>(j)], 1, cols);
    BufferId res = part[0];
    if (out_t != DType::kI32 || w8a8 || alpha != 1.0f) {
      res = p.alloc(DType::kF32, 1, width, "sum_f32");
      p.cast(res, part[0], 1, cols);
      if (w8a8) {
        p.binary(BinaryOp::kMul, res, res, sx, 1, cols, Broadcast::kRow);
        p.binary(BinaryOp::kMul, res, res, sw, 1, cols, Broadcast::kCol);
      }
    }
    if (alpha != 1.0f) p.unary(UnaryOp::kScale, res, res, 1, cols, alpha);
    p.store(TileRegion{1, off, width, 1, cols}, res);
  };
  return k;
}

Kernel make_gemm_reduce(const ChipSpec& chip, const GemmShape& s, const Buffer& workspace, const Buffer& c, int split);

// The split-K reduce for inputs of type `in_type`.
Kernel make_split_reduce(const ChipSpec& chip, const GemmShape& s, DType in_type, const Buffer& workspace,
                         const Buffer& c, int split, const GemmScales* scales) {
  if (in_type == DType::kI8) return make_gemm_reduce_int(s, workspace, c, split, scales);
  return make_gemm_reduce(chip, s, workspace, c, split);
}

// The split-K reduce: C = alpha * (part 0 + part 1 + ...) element by element, in part order, over
// the flat [batch * M * N] layout both share. A block loads its tile of every part at once (all the
// loads in flight together, so their latencies overlap), then adds them in order.
constexpr int64_t kSplitKReduceSramBytes = 96 * 1024;  // four blocks fit the smallest preset SRAM
Kernel make_gemm_reduce(const ChipSpec& chip, const GemmShape& s, const Buffer& workspace, const Buffer& c, int split) {
  const int64_t n = s.batch * s.m * s.n;
  // Tiles of 256 to 8192 elements (as SRAM allows for split + 1 of them), about one per core when C
  // is small (a decode step's C is a few thousand elements).
  const int64_t most = std::max<int64_t>(256, kSplitKReduceSramBytes / 4 / (split + 1) / 256 * 256);
  const int64_t tile =
      std::clamp<int64_t>(ceil_div(ceil_div(n, chip.num_cores()), 256) * 256, 256, std::min<int64_t>(most, 8192));
  const int64_t tiles = ceil_div(n, tile);
  Kernel k;
  k.name = fmt::format("gemm split-K reduce {}x{}{} {} parts", s.m, s.n,
                       s.batch > 1 ? fmt::format(" x{}", s.batch) : "", split);
  k.grid = tiles;
  k.timing_key = fmt::format("{}|{}|{}|{}", k.name, dtype_name(c.dtype), tile, s.alpha != 1.0f);
  k.args = {workspace.arg(), c.arg()};
  k.ops = {KernelOp::elementwise(ElementwiseDims{n, split, ElementwiseFn::kSplitKReduce})};
  const float alpha = s.alpha;
  k.build = [n, tile, split, alpha](int64_t block, TileProgram& p) {
    const int64_t off = block * tile;
    const int cols = static_cast<int>(std::min<int64_t>(tile, n - off));
    std::vector<BufferId> part(static_cast<size_t>(split));
    for (int j = 0; j < split; ++j) {
      part[static_cast<size_t>(j)] = p.alloc(DType::kF32, 1, static_cast<int>(tile), "part");
      p.load(part[static_cast<size_t>(j)], TileRegion{0, j * n + off, tile, 1, cols});
    }
    for (int j = 1; j < split; ++j) p.binary(BinaryOp::kAdd, part[0], part[0], part[static_cast<size_t>(j)], 1, cols);
    if (alpha != 1.0f) p.unary(UnaryOp::kScale, part[0], part[0], 1, cols, alpha);
    p.store(TileRegion{1, off, tile, 1, cols}, part[0]);
  };
  return k;
}

struct Candidate {
  GemmConfig cfg;
  double estimate;  // heuristic rank only; the timing engine decides the real time
};

// Every tile shape that fits the SRAM, with the deepest pipeline (2-4 stages) that fits, ranked by
// a wave-quantization and operand-bandwidth estimate (like a BLAS library's heuristic).
std::vector<Candidate> gemm_candidates(const ChipSpec& chip, const GemmShape& s, DType in_type) {
  const int es = dtype_size_bytes(in_type);
  const double cores = chip.num_cores();
  const double core_rate = std::max(chip.matrix_flops_per_s(in_type), 1.0) / cores;
  std::vector<Candidate> out;
  // Row tiles: the large ones, plus 16 and 32 for skinny problems (a few tokens times a weight
  // matrix), where a 64-row tile would be mostly padding.
  std::vector<int> msizes = {256, 192, 128, 64};
  if (s.m <= 32) msizes.insert(msizes.end(), {32, 16});
  const int nsizes[] = {256, 192, 128, 64};
  // k-steps of 128 to 1024 bytes per row: deeper steps mean fewer instructions (and fewer per-step
  // synchronisations on real hardware) when K is long; skinny problems stream B in long rows.
  std::vector<int> tks = {128 / es, 256 / es};
  if (s.m <= 32) tks.insert(tks.end(), {512 / es, 1024 / es});
  for (int tk : tks) {
    if (tk > 128 / es && s.k < 2 * tk) continue;
    for (int tm : msizes) {
      for (int tn : nsizes) {
        if (int64_t{tm} * tn > 256 * 128) continue;
        for (int stages : {4, 3, 2}) {
          GemmConfig c{tm, tn, tk, stages, 8};
          if (static_cast<double>(gemm_sram_bytes(c, in_type)) > chip.sram_bytes()) continue;
          const double tiles = static_cast<double>(s.batch) * std::ceil(double(s.m) / tm) * std::ceil(double(s.n) / tn);
          const double waves = std::ceil(tiles / cores);
          const double kp = std::ceil(double(s.k) / 16) * 16;
          const double compute = 2.0 * std::max(tm, 16) * tn * kp / core_rate;
          const double active = std::min(tiles, cores);
          const double load = (double(tm) + tn) * kp * es / (chip.l2_bandwidth.value / active);
          // A small per-step cost (one DMA latency's worth of issue work per 100 steps) breaks ties
          // toward deeper k-steps.
          const double steps = std::ceil(double(s.k) / tk);
          out.push_back({c, waves * (std::max(compute, load) + steps * chip.dma_latency.value * 0.01)});
          break;  // the deepest pipeline that fits
        }
      }
    }
  }
  std::stable_sort(out.begin(), out.end(), [](const Candidate& a, const Candidate& b) { return a.estimate < b.estimate; });
  return out;
}

// Below this many tile instructions, the top candidates are simulated and the fastest is taken
// (autotuning, as cuBLASLt's algorithm search does); above it the heuristic's first choice is used,
// where wave quantization matters little and simulation would cost more.
constexpr double kAutotuneInstructions = 150000;
constexpr size_t kAutotuneCandidates = 8;
constexpr double kAutotuneSlack = 0.03;

// Part counts tried for a split-K configuration with `tiles` C tiles and `ksteps` k-steps, ascending:
// a few steps, and enough blocks to fill the cores once or twice (two resident blocks per core),
// each part keeping at least kSplitKMinSteps k-steps.
constexpr int64_t kSplitKMinSteps = 2;
constexpr int kSplitKMostParts = 32;
std::vector<int> split_k_counts(int64_t tiles, int64_t ksteps, int cores) {
  const int64_t most = std::min<int64_t>(kSplitKMostParts, ksteps / kSplitKMinSteps);
  std::vector<int> out;
  auto add = [&](int64_t sp) {
    if (sp >= 2 && sp <= most && std::find(out.begin(), out.end(), sp) == out.end())
      out.push_back(static_cast<int>(sp));
  };
  for (int64_t sp : {2, 3, 4, 6, 8, 12, 16, 24, 32}) add(sp);
  add(cores / tiles);
  add(2 * cores / tiles);
  std::sort(out.begin(), out.end());
  return out;
}

// The chip inputs of a choice, part of its cache key, so that a ChipSpec changed in code (a sweep)
// is not answered from an entry of the preset it was loaded from.
using ChoiceKey =
    std::tuple<std::string, int64_t, int64_t, int64_t, int64_t, int, int, int, int, std::array<double, 9>>;
// `split`: 0 for the unsplit search, 1 for the answer with split-K allowed.
ChoiceKey choice_key(const ChipSpec& chip, const GemmShape& s, DType in_type, int split) {
  const std::array<double, 9> chip_inputs{chip.sram_bytes(),         static_cast<double>(chip.num_cores()),
                                          chip.matrix_flops_per_s(in_type), chip.l2_bandwidth.value,
                                          chip.dma_latency.value,      chip.hbm_bandwidth.value,
                                          chip.dma_bandwidth_per_core.value, chip.launch_latency.value,
                                          chip.graph_node_latency_value()};
  return {chip.name + "|" + chip.file, s.m, s.n, s.k, s.batch, int(s.trans_a), int(s.trans_b),
          static_cast<int>(in_type), split, chip_inputs};
}

// Timing-only buffers with plausible addresses for the autotuner: the L2 model only needs distinct
// ranges (A, B, C, then the split-K workspace).
struct TuneArgs {
  Buffer a, b, c;
  uint64_t next = 0;
  TuneArgs(const GemmShape& s, DType in_type) {
    a = make(in_type, s.batch * s.m * s.k, "A");
    b = make(in_type, s.batch * s.k * s.n, "B");
    c = make(DType::kBF16, s.batch * s.m * s.n, "C");
  }
  Buffer make(DType t, int64_t numel, const char* name) {
    const uint64_t addr = 0x100000 + next;
    next += static_cast<uint64_t>(numel) * 4;
    return Buffer{0, addr, t, numel, numel * dtype_size_bytes(t), nullptr, name};
  }
};

// The unsplit choice and the candidates timed on the way (empty when the problem was too large to
// simulate them, or the chip lacks the dtype).
struct UnsplitChoice {
  GemmConfig best;
  double best_s = INFINITY;
  std::vector<std::pair<double, GemmConfig>> timed;
};

UnsplitChoice choose_unsplit(const ChipSpec& chip, const GemmShape& s, DType in_type) {
  UnsplitChoice out;
  const auto cands = gemm_candidates(chip, s, in_type);
  const int tk = dtype_size_bytes(in_type) == 1 ? 128 : 64;
  if (cands.empty()) {  // does not fit: validation reports it
    out.best = GemmConfig{64, 64, tk, 2, 8};
    return out;
  }
  const GemmConfig& first = cands.front().cfg;
  out.best = first;
  const double instrs = static_cast<double>(s.batch) * std::ceil(double(s.m) / first.tile_m) *
                        std::ceil(double(s.n) / first.tile_n) * (2.0 * std::ceil(double(s.k) / first.tile_k) + 2);
  if (instrs > kAutotuneInstructions || !chip.supports(in_type)) return out;
  TuneArgs args(s, in_type);
  TimingEngine eng(chip);
  std::vector<int> tks_seen;
  for (size_t i = 0; i < cands.size(); ++i) {
    // The heuristic's top candidates, plus the best-ranked one of every k-step depth.
    const int ktile = cands[i].cfg.tile_k;
    const bool new_tk = std::find(tks_seen.begin(), tks_seen.end(), ktile) == tks_seen.end();
    if (i >= kAutotuneCandidates && !new_tk) continue;
    if (new_tk) tks_seen.push_back(ktile);
    out.timed.emplace_back(eng.run(make_gemm_tiles(s, args.a, args.b, args.c, cands[i].cfg)).time_s, cands[i].cfg);
  }
  double fastest = INFINITY;
  for (const auto& [t, cfg] : out.timed) fastest = std::min(fastest, t);
  // Among configurations within kAutotuneSlack of the fastest, take the one with the fewest tile
  // steps (blocks x k-steps): as fast on the chip, fewer instructions to issue and to simulate, and
  // long contiguous rows for the host that runs the numbers.
  double best_steps = INFINITY;
  for (const auto& [t, cfg] : out.timed) {
    if (t > fastest * (1.0 + kAutotuneSlack)) continue;
    const double steps = std::ceil(double(s.m) / cfg.tile_m) * std::ceil(double(s.n) / cfg.tile_n) *
                         std::ceil(double(s.k) / cfg.tile_k);
    if (steps < best_steps) {
      best_steps = steps;
      out.best = cfg;
      out.best_s = t;
    }
  }
  return out;
}

// Split-K, when the C tiles leave cores idle: the kSplitKShapes fastest unsplit tile shapes with
// every part count of split_k_counts (wave quantization makes the time go up and down with the
// count), timed as they run (the tile kernel, then the reduce, whose launch as a node of a captured
// graph costs graph_node_latency instead of launch_latency); kept only if it beats the unsplit
// choice by more than the autotune slack.
constexpr size_t kSplitKShapes = 4;
GemmConfig choose_split(const ChipSpec& chip, const GemmShape& s, DType in_type, const UnsplitChoice& u) {
  const double reduce_saving = chip.launch_latency.value - chip.graph_node_latency_value();
  TuneArgs args(s, in_type);
  TimingEngine eng(chip);
  GemmConfig best = u.best;
  double best_s = INFINITY;
  std::vector<std::pair<double, GemmConfig>> bases = u.timed;
  std::stable_sort(bases.begin(), bases.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  if (bases.size() > kSplitKShapes) bases.resize(kSplitKShapes);
  for (const auto& [t0, base] : bases) {
    const int64_t tiles = s.batch * ceil_div(s.m, base.tile_m) * ceil_div(s.n, base.tile_n);
    if (tiles >= chip.num_cores()) continue;
    for (const int sp : split_k_counts(tiles, ceil_div(s.k, base.tile_k), chip.num_cores())) {
      GemmConfig cfg = base;
      cfg.split_k = sp;
      const Buffer w = args.make(workspace_dtype(in_type), gemm_workspace_numel(s, cfg), "W");
      const double t = eng.run(make_gemm_tiles(s, args.a, args.b, w, cfg)).time_s +
                       eng.run(make_split_reduce(chip, s, in_type, w, args.c, sp, nullptr)).time_s - reduce_saving;
      if (t < best_s) {
        best_s = t;
        best = cfg;
      }
    }
  }
  return best_s < u.best_s / (1.0 + kAutotuneSlack) ? best : u.best;
}

// cache[key], computed by `compute` on the first call; a call for a key another thread is computing
// waits for its answer (the ranks of a split model ask for the same shapes at the same time: one
// search each, not one per rank). The answer does not depend on which thread computes it.
template <class V, class F>
V once_per_key(std::mutex& mu, std::condition_variable& done, std::map<ChoiceKey, V>& cache, std::set<ChoiceKey>& busy,
               const ChoiceKey& key, F&& compute) {
  {
    std::unique_lock<std::mutex> lk(mu);
    for (;;) {
      if (auto it = cache.find(key); it != cache.end()) return it->second;
      if (busy.insert(key).second) break;
      done.wait(lk);
    }
  }
  std::optional<V> v;
  try {
    v = compute();
  } catch (...) {
    {
      std::lock_guard<std::mutex> lk(mu);
      busy.erase(key);
    }
    done.notify_all();
    throw;
  }
  {
    std::lock_guard<std::mutex> lk(mu);
    cache.emplace(key, *v);
    busy.erase(key);
  }
  done.notify_all();
  return *v;
}

}  // namespace

GemmConfig choose_gemm_config(const ChipSpec& chip, const GemmShape& s, DType in_type, bool allow_split_k) {
  // Every answer is cached: a decode loop asks for the same few shapes hundreds of times per step,
  // and ranking the candidates costs more than running a small GEMM's host numbers. The unsplit
  // search is cached on its own, shared by both answers.
  static std::mutex mu;
  static std::condition_variable done;
  static std::map<ChoiceKey, UnsplitChoice> unsplit_cache;
  static std::map<ChoiceKey, GemmConfig> split_cache;
  static std::set<ChoiceKey> busy;
  const ChoiceKey ukey = choice_key(chip, s, in_type, 0);
  const UnsplitChoice u =
      once_per_key(mu, done, unsplit_cache, busy, ukey, [&] { return choose_unsplit(chip, s, in_type); });
  if (!allow_split_k || u.timed.empty()) return u.best;
  const ChoiceKey skey = choice_key(chip, s, in_type, 1);
  return once_per_key(mu, done, split_cache, busy, skey, [&] { return choose_split(chip, s, in_type, u); });
}

int64_t gemm_workspace_numel(const GemmShape& s, const GemmConfig& cfg) {
  return cfg.split_k > 1 ? int64_t{cfg.split_k} * s.batch * s.m * s.n : 0;
}

Kernel make_gemm(const ChipSpec& chip, const GemmShape& s, const Buffer& a, const Buffer& b, const Buffer& c,
                 const GemmConfig* config, const GemmScales* scales) {
  check_gemm_args(chip, s, a, b, c, scales);
  const GemmConfig cfg = config ? *config : choose_gemm_config(chip, s, a.dtype, /*allow_split_k=*/false);
  if (cfg.split_k > 1)
    throw UserError(fmt::format("gemm: configuration {} splits K, which takes two kernels and a workspace; use "
                                "kernels::gemm or make_gemm_kernels",
                                cfg.describe()));
  check_gemm_config(s, cfg);
  return make_gemm_tiles(s, a, b, c, cfg, scales);
}

DType gemm_workspace_dtype(DType in_type) { return workspace_dtype(in_type); }

std::vector<Kernel> make_gemm_kernels(const ChipSpec& chip, const GemmShape& s, const Buffer& a, const Buffer& b,
                                      const Buffer& c, const GemmConfig& cfg, const Buffer* workspace,
                                      const GemmScales* scales) {
  check_gemm_args(chip, s, a, b, c, scales);
  check_gemm_config(s, cfg);
  if (cfg.split_k == 1) return {make_gemm_tiles(s, a, b, c, cfg, scales)};
  const int64_t need = gemm_workspace_numel(s, cfg);
  const DType wt = workspace_dtype(a.dtype);
  if (!workspace)
    throw UserError(fmt::format("gemm: configuration {} needs a workspace of {} {} elements; none given",
                                cfg.describe(), need, dtype_name(wt)));
  if (workspace->dtype != wt) expect_dtype_in("gemm", "workspace", *workspace, {wt});
  expect_numel("gemm", "workspace", *workspace, need,
               fmt::format("[{}, {}, {}, {}] (split, batch, M, N)", cfg.split_k, s.batch, s.m, s.n));
  return {make_gemm_tiles(s, a, b, *workspace, cfg),
          make_split_reduce(chip, s, a.dtype, *workspace, c, cfg.split_k, scales)};
}

namespace {

// The timing of kernels run one after another, as one: times, work and traffic added up.
KernelTiming in_sequence(KernelTiming first, const KernelTiming& next) {
  first.name += " + " + next.name;
  first.time_s += next.time_s;
  first.blocks += next.blocks;
  first.instructions += next.instructions;
  first.matrix_busy_s += next.matrix_busy_s;
  first.vector_busy_s += next.vector_busy_s;
  first.hbm_read_bytes += next.hbm_read_bytes;
  first.hbm_write_bytes += next.hbm_write_bytes;
  first.l2_hit_bytes += next.l2_hit_bytes;
  first.atomic_bytes += next.atomic_bytes;
  first.hbm_busy_s += next.hbm_busy_s;
  first.hbm_cost_bytes += next.hbm_cost_bytes;
  first.l2_busy_s += next.l2_busy_s;
  first.matrix_flops += next.matrix_flops;
  first.useful_flops += next.useful_flops;
  return first;
}

}  // namespace

KernelTiming gemm(Device& dev, const GemmShape& s, const Buffer& a, const Buffer& b, const Buffer& c, Stream* stream,
                  const GemmConfig* config, const GemmScales* scales) {
  check_gemm_args(dev.chip(), s, a, b, c, scales);
  const GemmConfig cfg = config ? *config : choose_gemm_config(dev.chip(), s, a.dtype);
  DeviceBuffer workspace;
  if (cfg.split_k > 1) {
    check_gemm_config(s, cfg);  // before sizing the workspace from it
    workspace = dev.alloc_owned(workspace_dtype(a.dtype), gemm_workspace_numel(s, cfg), "gemm split-K partials");
  }
  std::vector<Kernel> ks =
      make_gemm_kernels(dev.chip(), s, a, b, c, cfg, workspace.valid() ? &workspace.get() : nullptr, scales);
  KernelTiming t = dev.launch(ks[0], stream);
  for (size_t i = 1; i < ks.size(); ++i) t = in_sequence(std::move(t), dev.launch(ks[i], stream));
  return t;
}

KernelTiming gemm_w8a8(Device& dev, const GemmShape& s, const Buffer& a, const Buffer& s_x, const Buffer& b,
                       const Buffer& s_w, const Buffer& c, Stream* stream, const GemmConfig* config) {
  const GemmScales scales{&s_x, &s_w};
  return gemm(dev, s, a, b, c, stream, config, &scales);
}

void gemm_w8a8_reference(const GemmShape& s, const std::vector<int8_t>& a, const std::vector<float>& s_x,
                         const std::vector<int8_t>& b, const std::vector<float>& s_w, std::vector<float>& c) {
  c.assign(static_cast<size_t>(s.batch * s.m * s.n), 0.0f);
  for (int64_t bt = 0; bt < s.batch; ++bt)
    for (int64_t i = 0; i < s.m; ++i)
      for (int64_t j = 0; j < s.n; ++j) {
        int64_t acc = 0;
        for (int64_t p = 0; p < s.k; ++p)
          acc += int64_t{a[gemm_a_index(s, bt, i, p)]} * int64_t{b[gemm_b_index(s, bt, p, j)]};
        float y = static_cast<float>(acc);  // exact below 2^24; else rounded as the int32 -> fp32 cast does
        y = y * s_x[static_cast<size_t>(bt * s.m + i)];
        y = y * s_w[static_cast<size_t>(bt * s.n + j)];
        c[static_cast<size_t>(bt * s.m * s.n + i * s.n + j)] = y * s.alpha;
      }
}

void gemm_reference(const GemmShape& s, const std::vector<float>& a, const std::vector<float>& b,
                    std::vector<float>& c) {
  c.assign(static_cast<size_t>(s.batch * s.m * s.n), 0.0f);
  for (int64_t bt = 0; bt < s.batch; ++bt)
    for (int64_t i = 0; i < s.m; ++i)
      for (int64_t j = 0; j < s.n; ++j) {
        double acc = 0;
        for (int64_t p = 0; p < s.k; ++p)
          acc += double(a[gemm_a_index(s, bt, i, p)]) * double(b[gemm_b_index(s, bt, p, j)]);
        c[static_cast<size_t>(bt * s.m * s.n + i * s.n + j)] = static_cast<float>(acc * s.alpha);
      }
}

KernelTiming launch_grouped(Device& dev, const std::string& name, std::vector<Kernel> parts, Stream* stream) {
  if (parts.size() == 1) return dev.launch(parts.front(), stream);
  std::vector<std::pair<int64_t, size_t>> need;
  for (size_t i = 0; i < parts.size(); ++i) {
    TileProgram probe;
    parts[i].build(0, probe);
    need.emplace_back(-probe.sram_bytes(), i);
  }
  std::stable_sort(need.begin(), need.end());
  std::vector<Kernel> ordered;
  for (const auto& [bytes, i] : need) ordered.push_back(std::move(parts[i]));
  return dev.launch(concat_kernels(name, std::move(ordered)), stream);
}

}  // namespace ppu::kernels
