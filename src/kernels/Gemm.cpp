#include "kernels/Gemm.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <mutex>
#include <tuple>

#include "kernels/KernelUtil.hpp"

namespace ppu::kernels {

std::string GemmConfig::describe() const {
  return fmt::format("{}x{}x{} tiles, {} stages", tile_m, tile_n, tile_k, stages);
}

namespace {

int64_t gemm_sram_bytes(const GemmConfig& c, int es) {
  auto r64 = [](int64_t b) { return (b + 63) / 64 * 64; };
  return c.stages * (r64(int64_t{c.tile_m} * c.tile_k * es) + r64(int64_t{c.tile_k} * c.tile_n * es)) +
         r64(int64_t{c.tile_m} * c.tile_n * 4);
}

}  // namespace

namespace {

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
          if (static_cast<double>(gemm_sram_bytes(c, es)) > chip.sram_bytes()) continue;
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

}  // namespace

GemmConfig choose_gemm_config(const ChipSpec& chip, const GemmShape& s, DType in_type) {
  // Every answer is cached: a decode loop asks for the same few shapes hundreds of times per step,
  // and ranking the candidates costs more than running a small GEMM's host numbers.
  // The key holds the heuristic's chip inputs too, so that a ChipSpec changed in code (a sweep) is
  // not answered from an entry of the preset it was loaded from.
  static std::mutex mu;
  static std::map<std::tuple<std::string, int64_t, int64_t, int64_t, int64_t, int, int, int, std::array<double, 5>>,
                  GemmConfig>
      cache;
  const std::array<double, 5> chip_inputs{chip.sram_bytes(), static_cast<double>(chip.num_cores()),
                                          chip.matrix_flops_per_s(in_type), chip.l2_bandwidth.value,
                                          chip.dma_latency.value};
  const auto key = std::make_tuple(chip.name + "|" + chip.file, s.m, s.n, s.k, s.batch, int(s.trans_a), int(s.trans_b),
                                   static_cast<int>(in_type), chip_inputs);
  {
    std::lock_guard<std::mutex> lk(mu);
    if (auto it = cache.find(key); it != cache.end()) return it->second;
  }
  auto remember = [&](const GemmConfig& c) {
    std::lock_guard<std::mutex> lk(mu);
    cache.emplace(key, c);
    return c;
  };
  const auto cands = gemm_candidates(chip, s, in_type);
  const int tk = dtype_size_bytes(in_type) == 1 ? 128 : 64;
  if (cands.empty()) return remember(GemmConfig{64, 64, tk, 2, 8});  // does not fit: validation reports it
  const GemmConfig& first = cands.front().cfg;
  const double instrs = static_cast<double>(s.batch) * std::ceil(double(s.m) / first.tile_m) *
                        std::ceil(double(s.n) / first.tile_n) * (2.0 * std::ceil(double(s.k) / first.tile_k) + 2);
  if (instrs > kAutotuneInstructions || !chip.supports(in_type)) return remember(first);
  // Timing-only buffers with plausible addresses: the L2 model only needs distinct ranges.
  auto arg = [](DType t, int64_t numel, uint64_t addr, const char* name) {
    return Buffer{0, addr, t, numel, numel * dtype_size_bytes(t), nullptr, name};
  };
  const int64_t na = s.batch * s.m * s.k, nb = s.batch * s.k * s.n;
  const Buffer a = arg(in_type, na, 0x100000, "A");
  const Buffer b = arg(in_type, nb, 0x100000 + static_cast<uint64_t>(na) * 4, "B");
  const Buffer c = arg(DType::kBF16, s.batch * s.m * s.n, 0x100000 + static_cast<uint64_t>(na + nb) * 4, "C");
  TimingEngine eng(chip);
  std::vector<std::pair<double, GemmConfig>> timed;
  std::vector<int> tks_seen;
  for (size_t i = 0; i < cands.size(); ++i) {
    // The heuristic's top candidates, plus the best-ranked one of every k-step depth.
    const int tk = cands[i].cfg.tile_k;
    const bool new_tk = std::find(tks_seen.begin(), tks_seen.end(), tk) == tks_seen.end();
    if (i >= kAutotuneCandidates && !new_tk) continue;
    if (new_tk) tks_seen.push_back(tk);
    timed.emplace_back(eng.run(make_gemm(chip, s, a, b, c, &cands[i].cfg)).time_s, cands[i].cfg);
  }
  double best_t = INFINITY;
  for (const auto& [t, cfg] : timed) best_t = std::min(best_t, t);
  // Among configurations within kAutotuneSlack of the fastest, take the one with the fewest tile
  // steps (blocks x k-steps): as fast on the chip, fewer instructions to issue and to simulate, and
  // long contiguous rows for the host that runs the numbers.
  GemmConfig best = first;
  double best_steps = INFINITY;
  for (const auto& [t, cfg] : timed) {
    if (t > best_t * (1.0 + kAutotuneSlack)) continue;
    const double steps = std::ceil(double(s.m) / cfg.tile_m) * std::ceil(double(s.n) / cfg.tile_n) *
                         std::ceil(double(s.k) / cfg.tile_k);
    if (steps < best_steps) {
      best_steps = steps;
      best = cfg;
    }
  }
  return remember(best);
}

Kernel make_gemm(const ChipSpec& chip, const GemmShape& s, const Buffer& a, const Buffer& b, const Buffer& c,
                 const GemmConfig* config) {
  const std::string kname = "gemm";
  expect_positive(kname, {{"M", s.m}, {"N", s.n}, {"K", s.k}, {"batch", s.batch}});
  if (s.m > INT32_MAX || s.n > INT32_MAX || s.k > INT32_MAX)
    throw UserError(fmt::format("gemm: M, N and K must each be below 2^31 (got {}x{}x{})", s.m, s.n, s.k));
  expect_dtype_in(kname, "A", a, {DType::kBF16, DType::kF16, DType::kF8E4M3, DType::kF8E5M2});
  if (b.dtype != a.dtype)
    throw UserError(fmt::format("gemm: A is {} but B is {}; A and B must share a dtype", dtype_name(a.dtype),
                                dtype_name(b.dtype)));
  expect_dtype_in(kname, "C", c, {DType::kF32, DType::kBF16, DType::kF16});
  if (!chip.supports(a.dtype))
    throw UserError(fmt::format("gemm: {} has no {} matrix unit; valid input dtypes on it: bf16, fp16{}", chip.name,
                                dtype_name(a.dtype), chip.matrix_fp8.present ? ", fp8e4m3, fp8e5m2" : ""));
  const auto shape_a = s.trans_a ? fmt::format("[{}, {}, {}] (batch, K, M)", s.batch, s.k, s.m)
                                 : fmt::format("[{}, {}, {}] (batch, M, K)", s.batch, s.m, s.k);
  const auto shape_b = s.trans_b ? fmt::format("[{}, {}, {}] (batch, N, K)", s.batch, s.n, s.k)
                                 : fmt::format("[{}, {}, {}] (batch, K, N)", s.batch, s.k, s.n);
  expect_numel(kname, "A", a, s.batch * s.m * s.k, shape_a);
  expect_numel(kname, "B", b, s.batch * s.k * s.n, shape_b);
  expect_numel(kname, "C", c, s.batch * s.m * s.n, fmt::format("[{}, {}, {}] (batch, M, N)", s.batch, s.m, s.n));

  const GemmConfig cfg = config ? *config : choose_gemm_config(chip, s, a.dtype);
  if (cfg.tile_m <= 0 || cfg.tile_n <= 0 || cfg.tile_k <= 0 || cfg.stages < 1 || cfg.group_m < 1)
    throw UserError(fmt::format("gemm: invalid tile configuration {}", cfg.describe()));
  const int64_t tiles_m = ceil_div(s.m, cfg.tile_m), tiles_n = ceil_div(s.n, cfg.tile_n);
  const int64_t per_batch = tiles_m * tiles_n;

  Kernel k;
  k.name = fmt::format("gemm {}x{}x{}{} {}{}{}", s.m, s.n, s.k, s.batch > 1 ? fmt::format(" x{}", s.batch) : "",
                       dtype_name(a.dtype), s.trans_a ? " A^T" : "", s.trans_b ? " B^T" : "");
  k.grid = s.batch * per_batch;
  k.timing_key = fmt::format("{}|{}|{}|{}", k.name, cfg.describe(), cfg.group_m, s.alpha != 1.0f);
  k.args = {a.arg(), b.arg(), c.arg()};
  k.flops = 2.0 * s.batch * double(s.m) * double(s.n) * double(s.k);
  k.ops = {KernelOp::gemm(GemmDims{s.m, s.n, s.k, s.batch, s.trans_a, s.trans_b})};
  const DType in_t = a.dtype;
  k.build = [s, cfg, tiles_m, tiles_n, per_batch, in_t](int64_t bid, TileProgram& p) {
    const int64_t batch = bid / per_batch;
    const int64_t local = bid % per_batch;
    const int64_t group_size = int64_t{cfg.group_m} * tiles_n;
    const int64_t first_m = (local / group_size) * cfg.group_m;
    const int64_t gm = std::min<int64_t>(tiles_m - first_m, cfg.group_m);
    const int64_t pid_m = first_m + (local % group_size) % gm;
    const int64_t pid_n = (local % group_size) / gm;
    const int64_t m0 = pid_m * cfg.tile_m, n0 = pid_n * cfg.tile_n;
    const int mm = static_cast<int>(std::min<int64_t>(cfg.tile_m, s.m - m0));
    const int nn = static_cast<int>(std::min<int64_t>(cfg.tile_n, s.n - n0));
    const int64_t a_base = batch * s.m * s.k, b_base = batch * s.k * s.n, c_base = batch * s.m * s.n;
    const int64_t ksteps = ceil_div(s.k, cfg.tile_k);
    const int stages = static_cast<int>(std::min<int64_t>(cfg.stages, ksteps));

    BufferId abuf[4], bbuf[4];
    for (int i = 0; i < stages; ++i) {
      abuf[i] = s.trans_a ? p.alloc(in_t, cfg.tile_k, cfg.tile_m, "a") : p.alloc(in_t, cfg.tile_m, cfg.tile_k, "a");
      bbuf[i] = s.trans_b ? p.alloc(in_t, cfg.tile_n, cfg.tile_k, "b") : p.alloc(in_t, cfg.tile_k, cfg.tile_n, "b");
    }
    const BufferId acc = p.alloc(DType::kF32, cfg.tile_m, cfg.tile_n, "acc");
    auto load_step = [&](int64_t kt, int slot) {
      const int64_t k0 = kt * cfg.tile_k;
      const int kk = static_cast<int>(std::min<int64_t>(cfg.tile_k, s.k - k0));
      p.load(abuf[slot], s.trans_a ? matrix_region(0, a_base, s.m, k0, m0, kk, mm)
                                   : matrix_region(0, a_base, s.k, m0, k0, mm, kk));
      p.load(bbuf[slot], s.trans_b ? matrix_region(1, b_base, s.k, n0, k0, nn, kk)
                                   : matrix_region(1, b_base, s.n, k0, n0, kk, nn));
    };
    for (int i = 0; i < stages; ++i) load_step(i, i);
    for (int64_t kt = 0; kt < ksteps; ++kt) {
      const int slot = static_cast<int>(kt % stages);
      const int kk = static_cast<int>(std::min<int64_t>(cfg.tile_k, s.k - kt * cfg.tile_k));
      p.mma(acc, abuf[slot], bbuf[slot], mm, nn, kk, s.trans_a, s.trans_b, kt > 0);
      if (kt + stages < ksteps) load_step(kt + stages, slot);
    }
    if (s.alpha != 1.0f) p.unary(UnaryOp::kScale, acc, acc, mm, nn, s.alpha);
    p.store(matrix_region(2, c_base, s.n, m0, n0, mm, nn), acc);
  };
  return k;
}

KernelTiming gemm(Device& dev, const GemmShape& s, const Buffer& a, const Buffer& b, const Buffer& c, Stream* stream,
                  const GemmConfig* config) {
  return dev.launch(make_gemm(dev.chip(), s, a, b, c, config), stream);
}

void gemm_reference(const GemmShape& s, const std::vector<float>& a, const std::vector<float>& b,
                    std::vector<float>& c) {
  c.assign(static_cast<size_t>(s.batch * s.m * s.n), 0.0f);
  for (int64_t bt = 0; bt < s.batch; ++bt)
    for (int64_t i = 0; i < s.m; ++i)
      for (int64_t j = 0; j < s.n; ++j) {
        double acc = 0;
        for (int64_t p = 0; p < s.k; ++p) {
          const float av = s.trans_a ? a[static_cast<size_t>(bt * s.m * s.k + p * s.m + i)]
                                     : a[static_cast<size_t>(bt * s.m * s.k + i * s.k + p)];
          const float bv = s.trans_b ? b[static_cast<size_t>(bt * s.k * s.n + j * s.k + p)]
                                     : b[static_cast<size_t>(bt * s.k * s.n + p * s.n + j)];
          acc += double(av) * double(bv);
        }
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
