#include "kernels/Optimizer.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>

#include "kernels/Elementwise.hpp"
#include "kernels/KernelUtil.hpp"

namespace ppu::kernels {

namespace {

// Tiles [first, first + count) of `tiles` that block `block` of `grid` streams: contiguous, balanced
// to one tile, never empty while grid <= tiles.
struct TileSpan {
  int64_t first = 0, count = 0;
};
TileSpan block_span(int64_t block, int64_t grid, int64_t tiles) {
  const int64_t first = block * tiles / grid;
  return {first, (block + 1) * tiles / grid - first};
}

// Tile `t` of a flat [n] argument, as one row of at most tile_elems elements.
TileRegion flat_tile(uint16_t arg, int64_t n, int tile_elems, int64_t t) {
  const int64_t off = t * tile_elems;
  return TileRegion{arg, off, tile_elems, 1, static_cast<int>(std::min<int64_t>(tile_elems, n - off))};
}

// A persistent grid over `tiles` tiles, as kernels/Elementwise's.
int64_t persistent_grid(const ChipSpec& chip, int64_t tiles) {
  return std::min<int64_t>(tiles, int64_t{chip.num_cores()} * kMapBlocksPerCore);
}

[[noreturn]] void bad_param(const char* kernel, const char* field, double value, const char* valid) {
  throw UserError(fmt::format("{}: {} = {}; valid: {}", kernel, field, value, valid));
}

// The per-step constants of the AdamW program, rounded to fp32 once.
struct AdamWConstants {
  float grad_scale, beta1, one_minus_beta1, beta2, one_minus_beta2, inv_sqrt_bc2, eps, step_size, decay;
};
AdamWConstants adamw_constants(const AdamWParams& hp) {
  // Converting a double beyond fp32's range is undefined; such settings are refused by name.
  auto f32 = [](const char* what, double v) {
    if (!(std::fabs(v) <= std::numeric_limits<float>::max()))
      throw UserError(fmt::format("adamw: {} = {} does not fit fp32 (the vector unit's immediates)", what, v));
    return static_cast<float>(v);
  };
  const double t = static_cast<double>(hp.step);
  const double bc1 = 1.0 - std::pow(hp.beta1, t), bc2 = 1.0 - std::pow(hp.beta2, t);
  return {f32("grad_scale", hp.grad_scale),
          static_cast<float>(hp.beta1),
          static_cast<float>(1.0 - hp.beta1),
          static_cast<float>(hp.beta2),
          static_cast<float>(1.0 - hp.beta2),
          f32("1 / sqrt(1 - beta2^t)", 1.0 / std::sqrt(bc2)),
          f32("eps", hp.eps),
          f32("lr / (1 - beta1^t)", hp.lr / bc1),
          f32("1 - lr * weight_decay", 1.0 - hp.lr * hp.weight_decay)};
}

enum AdamWArg : uint16_t { kArgGrad, kArgParam, kArgExpAvg, kArgExpAvgSq, kArgCopy };

}  // namespace

void check_adamw_params(const AdamWParams& hp) {
  const char* k = "adamw";
  if (!(hp.lr >= 0.0 && std::isfinite(hp.lr))) bad_param(k, "lr", hp.lr, ">= 0 and finite");
  if (!(hp.beta1 >= 0.0 && hp.beta1 < 1.0)) bad_param(k, "beta1", hp.beta1, "[0, 1)");
  if (!(hp.beta2 >= 0.0 && hp.beta2 < 1.0)) bad_param(k, "beta2", hp.beta2, "[0, 1)");
  if (!(hp.eps > 0.0 && std::isfinite(hp.eps))) bad_param(k, "eps", hp.eps, "> 0 and finite");
  if (!(hp.weight_decay >= 0.0 && std::isfinite(hp.weight_decay)))
    bad_param(k, "weight_decay", hp.weight_decay, ">= 0 and finite");
  if (!(hp.grad_scale > 0.0 && std::isfinite(hp.grad_scale))) bad_param(k, "grad_scale", hp.grad_scale, "> 0 and finite");
  if (hp.step < 1)
    throw UserError(fmt::format("{}: step t = {}; valid: >= 1 (the first update is t = 1)", k, hp.step));
}

Kernel make_adamw(const ChipSpec& chip, const AdamWParams& hp, const Buffer& grad, const Buffer& param,
                  const Buffer& exp_avg, const Buffer& exp_avg_sq, const Buffer& param_copy) {
  const std::string kname = "adamw";
  check_adamw_params(hp);
  const int64_t n = param.numel;
  const std::string shape = fmt::format("[{}] of param '{}'", n, param.name);
  expect_dtype_in(kname, "param", param, {DType::kF32});
  for (const auto& [role, b] : {std::pair<const char*, const Buffer*>{"grad", &grad}, {"exp_avg", &exp_avg},
                                {"exp_avg_sq", &exp_avg_sq}, {"param_copy", &param_copy}})
    expect_numel(kname, role, *b, n, shape);
  expect_dtype_in(kname, "grad", grad, {DType::kF32});
  expect_dtype_in(kname, "exp_avg", exp_avg, {DType::kF32});
  expect_dtype_in(kname, "exp_avg_sq", exp_avg_sq, {DType::kF32});
  expect_dtype_in(kname, "param_copy", param_copy, {DType::kBF16, DType::kF16});

  const int64_t tiles = ceil_div(n, kAdamWTileElems);
  Kernel k;
  k.name = fmt::format("adamw [{}] fp32->{}", n, dtype_name(param_copy.dtype));
  // Only the immediates change from step to step; argument sizes and dtypes join the key in the engine.
  k.timing_key = "optimizer adamw";
  k.grid = persistent_grid(chip, tiles);
  k.args = {grad.arg(), param.arg(), exp_avg.arg(), exp_avg_sq.arg(), param_copy.arg()};
  k.flops = 15.0 * double(n);  // vector operations per parameter, below
  k.ops = {KernelOp::elementwise(ElementwiseDims{n, 4, ElementwiseFn::kOptimizer})};
  const AdamWConstants c = adamw_constants(hp);
  const int64_t grid = k.grid;
  // The same for every block (the timing engine sizes residency from block 0).
  const int stages = static_cast<int>(std::min<int64_t>(kAdamWStages, ceil_div(tiles, grid)));
  k.build = [=](int64_t block, TileProgram& p) {
    const TileSpan span = block_span(block, grid, tiles);
    BufferId in[kAdamWStages][4];  // grad, param, exp_avg, exp_avg_sq (AdamWArg order)
    static constexpr const char* kNames[4] = {"grad", "param", "exp_avg", "exp_avg_sq"};
    for (int s = 0; s < stages; ++s)
      for (int a = 0; a < 4; ++a) in[s][a] = p.alloc(DType::kF32, 1, kAdamWTileElems, kNames[a]);
    // One temporary for every stage: the vector unit runs in program order anyway.
    const BufferId tmp = p.alloc(DType::kF32, 1, kAdamWTileElems, "tmp");
    auto region = [&](int64_t step, AdamWArg arg) { return flat_tile(arg, n, kAdamWTileElems, span.first + step); };
    auto load = [&](int64_t step, int slot) {
      for (int a = 0; a < 4; ++a) p.load(in[slot][a], region(step, static_cast<AdamWArg>(a)));
    };
    auto body = [&](int64_t step, int slot) {
      const int cols = region(step, kArgParam).cols;
      const BufferId g = in[slot][kArgGrad], w = in[slot][kArgParam], m = in[slot][kArgExpAvg],
                     v = in[slot][kArgExpAvgSq];
      p.unary(UnaryOp::kScale, g, g, 1, cols, c.grad_scale);  // g = grad * grad_scale
      p.unary(UnaryOp::kScale, m, m, 1, cols, c.beta1);       // m = beta1 m + (1 - beta1) g
      p.unary(UnaryOp::kScale, tmp, g, 1, cols, c.one_minus_beta1);
      p.binary(BinaryOp::kAdd, m, m, tmp, 1, cols);
      p.store(region(step, kArgExpAvg), m);
      p.unary(UnaryOp::kScale, v, v, 1, cols, c.beta2);  // v = beta2 v + (1 - beta2) g^2
      p.unary(UnaryOp::kSquare, tmp, g, 1, cols);
      p.unary(UnaryOp::kScale, tmp, tmp, 1, cols, c.one_minus_beta2);
      p.binary(BinaryOp::kAdd, v, v, tmp, 1, cols);
      p.store(region(step, kArgExpAvgSq), v);
      p.unary(UnaryOp::kSqrt, tmp, v, 1, cols);  // denom = sqrt(v) / sqrt(bc2) + eps
      p.unary(UnaryOp::kScale, tmp, tmp, 1, cols, c.inv_sqrt_bc2);
      p.unary(UnaryOp::kAddImm, tmp, tmp, 1, cols, c.eps);
      p.binary(BinaryOp::kDiv, tmp, m, tmp, 1, cols);  // (lr / bc1) m / denom
      p.unary(UnaryOp::kScale, tmp, tmp, 1, cols, c.step_size);
      p.unary(UnaryOp::kScale, w, w, 1, cols, c.decay);  // p = p (1 - lr wd) - that
      p.binary(BinaryOp::kSub, w, w, tmp, 1, cols);
      p.store(region(step, kArgParam), w);
      p.store(region(step, kArgCopy), w);  // rounded to bf16 / fp16 by the DMA
    };
    pipeline_steps(span.count, stages, load, body);
  };
  return k;
}

KernelTiming adamw(Device& dev, const AdamWParams& hp, const Buffer& grad, const Buffer& param, const Buffer& exp_avg,
                   const Buffer& exp_avg_sq, const Buffer& param_copy, Stream* s) {
  return dev.launch(make_adamw(dev.chip(), hp, grad, param, exp_avg, exp_avg_sq, param_copy), s);
}

AdamWState adamw_reference(const AdamWParams& hp, double grad, AdamWState s) {
  check_adamw_params(hp);
  const double t = static_cast<double>(hp.step);
  const double g = grad * hp.grad_scale;
  s.param *= 1.0 - hp.lr * hp.weight_decay;
  s.exp_avg = hp.beta1 * s.exp_avg + (1.0 - hp.beta1) * g;
  s.exp_avg_sq = hp.beta2 * s.exp_avg_sq + (1.0 - hp.beta2) * g * g;
  const double bias_correction1 = 1.0 - std::pow(hp.beta1, t), bias_correction2 = 1.0 - std::pow(hp.beta2, t);
  const double step_size = hp.lr / bias_correction1;
  const double denom = std::sqrt(s.exp_avg_sq) / std::sqrt(bias_correction2) + hp.eps;
  s.param -= step_size * s.exp_avg / denom;
  return s;
}

Kernel make_fill(const ChipSpec& chip, const Buffer& y, float value) {
  const int64_t n = y.numel;
  expect_positive("fill", {{"elements", n}});
  const int64_t tiles = ceil_div(n, kNormTileElems);
  Kernel k;
  k.name = fmt::format("fill {} [{}] {}", y.name, n, dtype_name(y.dtype));
  k.timing_key = "optimizer fill";
  k.grid = persistent_grid(chip, tiles);
  k.args = {y.arg()};
  const int64_t grid = k.grid;
  const int cols = static_cast<int>(std::min<int64_t>(kNormTileElems, n));
  k.build = [=](int64_t block, TileProgram& p) {
    const TileSpan span = block_span(block, grid, tiles);
    const BufferId b = p.alloc(DType::kF32, 1, kNormTileElems, "value");
    p.fill(b, 1, cols, value);
    for (int64_t t = span.first; t < span.first + span.count; ++t) p.store(flat_tile(0, n, kNormTileElems, t), b);
  };
  return k;
}

KernelTiming fill(Device& dev, const Buffer& y, float value, Stream* s) {
  return dev.launch(make_fill(dev.chip(), y, value), s);
}

Kernel make_grad_sum_squares(const ChipSpec& chip, const std::vector<Buffer>& grads, const Buffer& stats) {
  const std::string kname = "grad_sum_squares";
  if (grads.empty()) throw UserError(kname + ": the list of gradient buffers is empty; pass at least one");
  const auto nb = static_cast<int64_t>(grads.size());
  if (nb >= std::numeric_limits<uint16_t>::max())
    throw UserError(fmt::format("{}: {} gradient buffers; at most {} per launch (split the list)", kname, nb,
                                std::numeric_limits<uint16_t>::max() - 1));
  for (const Buffer& g : grads) expect_dtype_in(kname, "gradient", g, {DType::kF32, DType::kBF16, DType::kF16});
  expect_dtype_in(kname, "stats", stats, {DType::kF32});
  expect_numel(kname, "stats", stats, grad_stats_numel(nb), fmt::format("[2 * ({} + 1)] for {} buffers", nb, nb));

  // Each buffer's share of the persistent grid, in proportion to its tiles, at least one block each;
  // buffer i's blocks are [first_block[i], first_block[i + 1]).
  std::vector<int64_t> numel(static_cast<size_t>(nb)), first_block(static_cast<size_t>(nb) + 1, 0);
  int64_t total_tiles = 0;
  double elements = 0;
  for (int64_t i = 0; i < nb; ++i) {
    numel[static_cast<size_t>(i)] = grads[static_cast<size_t>(i)].numel;
    total_tiles += ceil_div(numel[static_cast<size_t>(i)], kNormTileElems);
    elements += double(numel[static_cast<size_t>(i)]);
  }
  const int64_t target = int64_t{chip.num_cores()} * kMapBlocksPerCore;
  for (int64_t i = 0; i < nb; ++i) {
    const int64_t tiles = ceil_div(numel[static_cast<size_t>(i)], kNormTileElems);
    const int64_t blocks = std::clamp<int64_t>(tiles * target / total_tiles, 1, tiles);
    first_block[static_cast<size_t>(i) + 1] = first_block[static_cast<size_t>(i)] + blocks;
  }

  Kernel k;
  k.name = fmt::format("{} {} buffers", kname, nb);
  k.timing_key = k.name;  // the plan depends on the sizes (in the key by the engine) and the chip
  k.grid = first_block.back();
  k.accumulates = true;
  for (const Buffer& g : grads) k.args.push_back(g.arg());
  k.args.push_back(stats.arg());
  k.flops = 2.0 * elements;
  const auto stats_arg = static_cast<uint16_t>(nb);
  k.build = [=](int64_t block, TileProgram& p) {
    const auto it = std::upper_bound(first_block.begin(), first_block.end(), block);
    const int64_t buf = (it - first_block.begin()) - 1;
    const int64_t n = numel[static_cast<size_t>(buf)];
    const int64_t b0 = first_block[static_cast<size_t>(buf)];
    const TileSpan span =
        block_span(block - b0, first_block[static_cast<size_t>(buf) + 1] - b0, ceil_div(n, kNormTileElems));
    // Every block allocates the same buffers (the timing engine sizes residency from block 0).
    BufferId x[kNormStages];
    for (BufferId& b : x) b = p.alloc(DType::kF32, 1, kNormTileElems, "x");
    const BufferId sq = p.alloc(DType::kF32, 1, kNormTileElems, "sq");
    const BufferId bad = p.alloc(DType::kF32, 1, kNormTileElems, "bad");
    const BufferId acc_sq = p.alloc(DType::kF32, 1, 1, "acc_sq");
    const BufferId acc_bad = p.alloc(DType::kF32, 1, 1, "acc_bad");
    auto region = [&](int64_t step) { return flat_tile(static_cast<uint16_t>(buf), n, kNormTileElems, span.first + step); };
    auto load = [&](int64_t step, int slot) { p.load(x[slot], region(step)); };
    auto body = [&](int64_t step, int slot) {
      const int cols = region(step).cols;
      p.unary(UnaryOp::kSquare, sq, x[slot], 1, cols);
      p.reduce(ReduceOp::kSum, acc_sq, sq, 1, cols, /*accumulate=*/step > 0);
      // x - x is 0 for a finite x and NaN for NaN and +-inf; 0 == 0 gives 1, NaN == NaN 0; minus 1:
      // -1 for each non-finite element, summed.
      p.binary(BinaryOp::kSub, bad, x[slot], x[slot], 1, cols);
      p.binary(BinaryOp::kCmpEq, bad, bad, bad, 1, cols);
      p.unary(UnaryOp::kAddImm, bad, bad, 1, cols, -1.0f);
      p.reduce(ReduceOp::kSum, acc_bad, bad, 1, cols, /*accumulate=*/step > 0);
    };
    pipeline_steps(span.count, kNormStages, load, body);
    p.unary(UnaryOp::kNeg, acc_bad, acc_bad, 1, 1);
    p.store_add(TileRegion{stats_arg, buf, 1, 1, 1}, acc_sq);
    p.store_add(TileRegion{stats_arg, nb, 1, 1, 1}, acc_sq);
    p.store_add(TileRegion{stats_arg, nb + 1 + buf, 1, 1, 1}, acc_bad);
    p.store_add(TileRegion{stats_arg, 2 * nb + 1, 1, 1, 1}, acc_bad);
  };
  return k;
}

int64_t GradNorm::first_nonfinite() const {
  for (size_t i = 0; i < buffer_nonfinite.size(); ++i)
    if (buffer_nonfinite[i] != 0) return static_cast<int64_t>(i);
  return -1;
}

GradNorm grad_norm(Device& dev, const std::vector<Buffer>& grads, Stream* s) {
  const auto nb = static_cast<int64_t>(grads.size());
  DeviceBuffer stats = dev.alloc_owned(DType::kF32, grad_stats_numel(nb), "grad_norm stats");
  const Kernel sum = make_grad_sum_squares(dev.chip(), grads, stats);  // checks before anything runs
  GradNorm r;
  r.time_s = dev.launch(make_fill(dev.chip(), stats, 0.0f), s).time_s;
  r.time_s += dev.launch(sum, s).time_s;
  if (!dev.functional()) {
    dev.copy_to_host_timed(stats, s);
    return r;
  }
  const std::vector<float> v = dev.download(stats, s);
  auto count = [](float c) { return static_cast<int64_t>(c); };  // exact fp32 integers below 2^24
  r.has_values = true;
  r.buffer_sum_squares.assign(v.begin(), v.begin() + nb);
  for (int64_t i = 0; i < nb; ++i) r.buffer_nonfinite.push_back(count(v[static_cast<size_t>(nb + 1 + i)]));
  r.sum_squares = v[static_cast<size_t>(nb)];
  r.norm = std::sqrt(r.sum_squares);
  r.nonfinite = count(v[static_cast<size_t>(2 * nb + 1)]);
  return r;
}

double clip_coefficient(double total_norm, double max_norm) {
  if (!(total_norm >= 0.0))
    throw UserError(fmt::format("clip_coefficient: total_norm = {}; valid: >= 0 (inf gives 0)", total_norm));
  if (max_norm <= 0.0) return 1.0;
  // PyTorch's 1e-6 keeps the division finite for an all-zero gradient.
  return std::min(1.0, max_norm / (total_norm + 1e-6));
}

double WarmupCosineSchedule::lr(int64_t t) const {
  const char* k = "lr schedule";
  if (!(peak_lr >= 0.0 && std::isfinite(peak_lr))) bad_param(k, "peak_lr", peak_lr, ">= 0 and finite");
  if (!(min_lr >= 0.0 && min_lr <= peak_lr))
    throw UserError(fmt::format("{}: min_lr = {}; valid: [0, peak_lr = {}]", k, min_lr, peak_lr));
  if (total_steps < 1) throw UserError(fmt::format("{}: total_steps = {}; valid: >= 1", k, total_steps));
  if (warmup_steps < 0 || warmup_steps > total_steps)
    throw UserError(fmt::format("{}: warmup_steps = {}; valid: [0, total_steps = {}]", k, warmup_steps, total_steps));
  if (t < 1) throw UserError(fmt::format("{}: step t = {}; valid: >= 1 (the first update is t = 1)", k, t));
  if (t <= warmup_steps) return peak_lr * double(t) / double(warmup_steps);
  if (t > total_steps) return min_lr;
  const double r = double(t - warmup_steps) / double(total_steps - warmup_steps);
  return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * r));
}

LossScaler::LossScaler(const LossScalerConfig& config) : config_(config) {
  const char* k = "loss scaler";
  const double fmax = std::numeric_limits<float>::max();
  if (!(config.init_scale > 0.0 && config.init_scale <= fmax))
    bad_param(k, "init_scale", config.init_scale, "> 0 and finite in fp32");
  if (!(config.growth_factor > 1.0 && std::isfinite(config.growth_factor)))
    bad_param(k, "growth_factor", config.growth_factor, "> 1 and finite");
  if (!(config.backoff_factor > 0.0 && config.backoff_factor < 1.0))
    bad_param(k, "backoff_factor", config.backoff_factor, "(0, 1)");
  if (config.growth_interval < 1)
    throw UserError(fmt::format("{}: growth_interval = {}; valid: >= 1", k, config.growth_interval));
  scale_ = static_cast<float>(config.init_scale);
}

void LossScaler::restore(double scale, int64_t growth_tracker, int64_t skipped_steps) {
  if (!(scale > 0.0 && scale <= std::numeric_limits<float>::max()))
    bad_param("loss scaler", "scale", scale, "> 0 and finite in fp32");
  if (growth_tracker < 0 || skipped_steps < 0)
    throw UserError(fmt::format("loss scaler: growth_tracker = {}, skipped_steps = {}; valid: >= 0", growth_tracker,
                                skipped_steps));
  scale_ = static_cast<float>(scale);
  tracker_ = growth_tracker;
  skipped_ = skipped_steps;
}

bool LossScaler::update(bool found_nonfinite) {
  if (found_nonfinite) {
    scale_ = static_cast<float>(double(scale_) * config_.backoff_factor);
    tracker_ = 0;
    ++skipped_;
    return false;
  }
  if (++tracker_ == config_.growth_interval) {
    const auto grown = static_cast<float>(double(scale_) * config_.growth_factor);
    if (std::isfinite(grown)) scale_ = grown;
    tracker_ = 0;
  }
  return true;
}

}  // namespace ppu::kernels
