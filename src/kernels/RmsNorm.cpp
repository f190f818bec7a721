#include "kernels/RmsNorm.hpp"

#include <algorithm>
#include <cmath>

#include "kernels/KernelUtil.hpp"

namespace ppu::kernels {

Kernel make_rms_norm(const Buffer& x, const Buffer& weight, const Buffer& y, int64_t rows, int64_t cols, float eps) {
  const std::string kname = "rms_norm";
  expect_positive(kname, {{"rows", rows}, {"cols", cols}});
  const auto shape = fmt::format("[{}, {}] (rows, cols)", rows, cols);
  expect_numel(kname, "input x", x, rows * cols, shape);
  expect_numel(kname, "weight", weight, cols, fmt::format("[{}] (cols)", cols));
  expect_numel(kname, "output y", y, rows * cols, shape);
  if (!std::isfinite(eps) || eps < 0.0f)
    throw UserError(fmt::format("{}: eps = {}; it must be finite and >= 0 (models use 1e-5 or 1e-6)", kname, eps));

  const RowTiling t = plan_row_tiling(rows, cols, kRmsNormTileElems);
  Kernel k;
  k.name = fmt::format("rms_norm {}x{} {}->{}", rows, cols, dtype_name(x.dtype), dtype_name(y.dtype));
  k.ops = {KernelOp::rows(OpClass::kRmsNorm, RowDims{rows, cols})};
  k.timing_key = k.name;  // the tiling is a function of the shape and dtypes alone
  k.grid = t.blocks;
  k.args = {x.arg(), weight.arg(), y.arg()};
  k.flops = 4.0 * double(rows) * double(cols);  // square, sum, two multiplies per element
  const auto inv_cols = static_cast<float>(1.0 / double(cols));
  k.build = [t, eps, inv_cols](int64_t block, TileProgram& p) {
    const int ntiles = t.tiles_in_block(block);
    const bool chunked = t.chunks > 1;  // then ntiles == 1 and tile_rows == 1
    // Steps: one per row tile; or, for chunked rows, pass 1's chunks then pass 2's.
    const int64_t steps = chunked ? 2 * t.chunks : ntiles;
    const int stages = static_cast<int>(std::min<int64_t>(kRmsNormStages, steps));
    auto region = [&](int64_t step, uint16_t arg) { return t.step_region(block, step, arg); };
    // rms[r] <- 1 / sqrt(sum_sq[r] / cols + eps), in place.
    auto finish_stats = [&](BufferId rms, int nr) { emit_rsqrt_mean_eps(p, rms, nr, inv_cols, eps); };
    BufferId xb[kRmsNormStages];
    for (int s = 0; s < stages; ++s) xb[s] = p.alloc(DType::kF32, t.tile_rows, t.chunk_cols, "x");

    if (!chunked) {
      const int cols = t.chunk_cols;
      const BufferId w = p.alloc(DType::kF32, 1, cols, "weight");
      const BufferId sq = p.alloc(DType::kF32, t.tile_rows, cols, "squares");
      BufferId rms[kRmsNormStages];
      for (int s = 0; s < stages; ++s) rms[s] = p.alloc(DType::kF32, t.tile_rows, 1, "rms");
      p.load(w, TileRegion{1, 0, cols, 1, cols});
      pipeline_steps(
          steps, stages, [&](int64_t step, int slot) { p.load(xb[slot], region(step, 0)); },
          [&](int64_t step, int slot) {
            const TileRegion r = region(step, 2);
            const BufferId xs = xb[slot];
            p.unary(UnaryOp::kSquare, sq, xs, r.rows, cols);
            p.reduce(ReduceOp::kSum, rms[slot], sq, r.rows, cols);
            finish_stats(rms[slot], r.rows);
            p.binary(BinaryOp::kMul, xs, xs, rms[slot], r.rows, cols, Broadcast::kRow);
            p.binary(BinaryOp::kMul, xs, xs, w, r.rows, cols, Broadcast::kCol);
            p.store(r, xs);
          });
      return;
    }

    // Chunked row: pass 1 squares each chunk in place and folds its sum into `rms`; pass 2 reloads
    // the chunk together with the weight's slice of it.
    BufferId wb[kRmsNormStages];
    for (int s = 0; s < stages; ++s) wb[s] = p.alloc(DType::kF32, 1, t.chunk_cols, "weight");
    const BufferId rms = p.alloc(DType::kF32, 1, 1, "rms");
    pipeline_steps(
        steps, stages,
        [&](int64_t step, int slot) {
          p.load(xb[slot], region(step, 0));
          if (step >= t.chunks) {
            const int64_t c = step - t.chunks;
            p.load(wb[slot], t.vector_region(c, 1));
          }
        },
        [&](int64_t step, int slot) {
          const int64_t c = step % t.chunks;
          const int w = t.chunk_width(c);
          const BufferId xs = xb[slot];
          if (step < t.chunks) {  // pass 1
            p.unary(UnaryOp::kSquare, xs, xs, 1, w);
            p.reduce(ReduceOp::kSum, rms, xs, 1, w, /*accumulate=*/c > 0);
            if (c + 1 == t.chunks) finish_stats(rms, 1);
          } else {  // pass 2
            p.binary(BinaryOp::kMul, xs, xs, rms, 1, w, Broadcast::kRow);
            p.binary(BinaryOp::kMul, xs, xs, wb[slot], 1, w, Broadcast::kCol);
            p.store(region(step, 2), xs);
          }
        });
  };
  return k;
}

KernelTiming rms_norm(Device& dev, const Buffer& x, const Buffer& weight, const Buffer& y, int64_t rows, int64_t cols,
                      float eps, Stream* s) {
  return dev.launch(make_rms_norm(x, weight, y, rows, cols, eps), s);
}

std::vector<double> rms_norm_reference(const std::vector<float>& x, const std::vector<float>& weight, int64_t rows,
                                       int64_t cols, float eps) {
  std::vector<double> y(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.data() + r * cols;
    double ss = 0;
    for (int64_t c = 0; c < cols; ++c) ss += double(xr[c]) * double(xr[c]);
    const double inv_rms = 1.0 / std::sqrt(ss / double(cols) + double(eps));
    for (int64_t c = 0; c < cols; ++c) y[static_cast<size_t>(r * cols + c)] = double(xr[c]) * inv_rms * double(weight[c]);
  }
  return y;
}

}  // namespace ppu::kernels
