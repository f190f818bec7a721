#include "kernels/LayerNorm.hpp"

#include <algorithm>
#include <cmath>

#include "kernels/KernelUtil.hpp"

namespace ppu::kernels {

Kernel make_layer_norm(const Buffer& x, const Buffer& gamma, const Buffer& beta, const Buffer& y, int64_t rows,
                       int64_t cols, float eps) {
  const std::string kname = "layer_norm";
  expect_positive(kname, {{"rows", rows}, {"cols", cols}});
  const auto shape = fmt::format("[{}, {}] (rows, cols)", rows, cols);
  expect_numel(kname, "input x", x, rows * cols, shape);
  expect_numel(kname, "gamma", gamma, cols, fmt::format("[{}] (cols)", cols));
  expect_numel(kname, "beta", beta, cols, fmt::format("[{}] (cols)", cols));
  expect_numel(kname, "output y", y, rows * cols, shape);
  if (!std::isfinite(eps) || eps < 0.0f)
    throw UserError(fmt::format("{}: eps = {}; it must be finite and >= 0 (GPT models use 1e-5)", kname, eps));

  const RowTiling t = plan_row_tiling(rows, cols, kLayerNormTileElems);
  Kernel k;
  k.name = fmt::format("layer_norm {}x{} {}->{}", rows, cols, dtype_name(x.dtype), dtype_name(y.dtype));
  k.ops = {KernelOp::rows(OpClass::kLayerNorm, RowDims{rows, cols})};
  k.timing_key = k.name;  // the tiling is a function of the shape and dtypes alone
  k.grid = t.blocks;
  k.args = {x.arg(), gamma.arg(), beta.arg(), y.arg()};
  k.flops = 8.0 * double(rows) * double(cols);  // sum, centre, square, sum, scale, gamma, beta
  const auto inv_cols = static_cast<float>(1.0 / double(cols));
  k.build = [t, eps, inv_cols](int64_t block, TileProgram& p) {
    const int ntiles = t.tiles_in_block(block);
    const bool chunked = t.chunks > 1;  // then ntiles == 1 and tile_rows == 1
    const int64_t steps = chunked ? 2 * t.chunks : ntiles;
    const int stages = static_cast<int>(std::min<int64_t>(kLayerNormStages, steps));
    auto region = [&](int64_t step, uint16_t arg) { return t.step_region(block, step, arg); };
    // rstd[r] <- 1 / sqrt(m2[r] / cols + eps), in place.
    auto finish_stats = [&](BufferId m2, int nr) { emit_rsqrt_mean_eps(p, m2, nr, inv_cols, eps); };
    BufferId xb[kLayerNormStages];
    for (int s = 0; s < stages; ++s) xb[s] = p.alloc(DType::kF32, t.tile_rows, t.chunk_cols, "x");

    if (!chunked) {
      const int cols = t.chunk_cols;
      const BufferId g = p.alloc(DType::kF32, 1, cols, "gamma");
      const BufferId b = p.alloc(DType::kF32, 1, cols, "beta");
      const BufferId sq = p.alloc(DType::kF32, t.tile_rows, cols, "squares");
      BufferId mean[kLayerNormStages], rstd[kLayerNormStages];
      for (int s = 0; s < stages; ++s) {
        mean[s] = p.alloc(DType::kF32, t.tile_rows, 1, "mean");
        rstd[s] = p.alloc(DType::kF32, t.tile_rows, 1, "rstd");
      }
      p.load(g, t.vector_region(0, 1));
      p.load(b, t.vector_region(0, 2));
      pipeline_steps(
          steps, stages, [&](int64_t step, int slot) { p.load(xb[slot], region(step, 0)); },
          [&](int64_t step, int slot) {
            const TileRegion r = region(step, 3);
            const BufferId xs = xb[slot];
            p.reduce(ReduceOp::kSum, mean[slot], xs, r.rows, cols);
            p.unary(UnaryOp::kScale, mean[slot], mean[slot], r.rows, 1, inv_cols);
            p.binary(BinaryOp::kSub, xs, xs, mean[slot], r.rows, cols, Broadcast::kRow);
            p.unary(UnaryOp::kSquare, sq, xs, r.rows, cols);
            p.reduce(ReduceOp::kSum, rstd[slot], sq, r.rows, cols);
            finish_stats(rstd[slot], r.rows);
            p.binary(BinaryOp::kMul, xs, xs, rstd[slot], r.rows, cols, Broadcast::kRow);
            p.binary(BinaryOp::kMul, xs, xs, g, r.rows, cols, Broadcast::kCol);
            p.binary(BinaryOp::kAdd, xs, xs, b, r.rows, cols, Broadcast::kCol);
            p.store(r, xs);
          });
      return;
    }

    // Chunked row. Pass 1: chunk c (width w, after n = c * chunk_cols elements) gives its mean cm
    // and centred sum of squares cm2; with delta = cm - mean:
    //   mean += delta * w / (n + w),   m2 += cm2 + delta^2 * n * w / (n + w).
    BufferId gb[kLayerNormStages], bb[kLayerNormStages];
    for (int s = 0; s < stages; ++s) {
      gb[s] = p.alloc(DType::kF32, 1, t.chunk_cols, "gamma");
      bb[s] = p.alloc(DType::kF32, 1, t.chunk_cols, "beta");
    }
    const BufferId mean = p.alloc(DType::kF32, 1, 1, "mean");
    const BufferId m2 = p.alloc(DType::kF32, 1, 1, "m2");  // becomes rstd
    const BufferId cm = p.alloc(DType::kF32, 1, 1, "chunk_mean");
    const BufferId cm2 = p.alloc(DType::kF32, 1, 1, "chunk_m2");
    const BufferId delta = p.alloc(DType::kF32, 1, 1, "delta");
    const BufferId d2 = p.alloc(DType::kF32, 1, 1, "delta_term");
    pipeline_steps(
        steps, stages,
        [&](int64_t step, int slot) {
          p.load(xb[slot], region(step, 0));
          if (step >= t.chunks) {
            const int64_t c = step - t.chunks;
            p.load(gb[slot], t.vector_region(c, 1));
            p.load(bb[slot], t.vector_region(c, 2));
          }
        },
        [&](int64_t step, int slot) {
          const int64_t c = step % t.chunks;
          const int w = t.chunk_width(c);
          const BufferId xs = xb[slot];
          if (step < t.chunks) {  // pass 1
            const BufferId m_c = c == 0 ? mean : cm, m2_c = c == 0 ? m2 : cm2;
            p.reduce(ReduceOp::kSum, m_c, xs, 1, w);
            p.unary(UnaryOp::kScale, m_c, m_c, 1, 1, static_cast<float>(1.0 / w));
            p.binary(BinaryOp::kSub, xs, xs, m_c, 1, w, Broadcast::kRow);
            p.unary(UnaryOp::kSquare, xs, xs, 1, w);
            p.reduce(ReduceOp::kSum, m2_c, xs, 1, w);
            if (c > 0) {
              const double n = double(t.chunk_col0(c));
              p.binary(BinaryOp::kSub, delta, cm, mean, 1, 1);
              p.unary(UnaryOp::kScale, d2, delta, 1, 1, static_cast<float>(w / (n + w)));
              p.binary(BinaryOp::kAdd, mean, mean, d2, 1, 1);
              p.unary(UnaryOp::kSquare, d2, delta, 1, 1);
              p.unary(UnaryOp::kScale, d2, d2, 1, 1, static_cast<float>(n * w / (n + w)));
              p.binary(BinaryOp::kAdd, m2, m2, cm2, 1, 1);
              p.binary(BinaryOp::kAdd, m2, m2, d2, 1, 1);
            }
            if (c + 1 == t.chunks) finish_stats(m2, 1);
          } else {  // pass 2: m2 holds rstd
            p.binary(BinaryOp::kSub, xs, xs, mean, 1, w, Broadcast::kRow);
            p.binary(BinaryOp::kMul, xs, xs, m2, 1, w, Broadcast::kRow);
            p.binary(BinaryOp::kMul, xs, xs, gb[slot], 1, w, Broadcast::kCol);
            p.binary(BinaryOp::kAdd, xs, xs, bb[slot], 1, w, Broadcast::kCol);
            p.store(region(step, 3), xs);
          }
        });
  };
  return k;
}

KernelTiming layer_norm(Device& dev, const Buffer& x, const Buffer& gamma, const Buffer& beta, const Buffer& y,
                        int64_t rows, int64_t cols, float eps, Stream* s) {
  return dev.launch(make_layer_norm(x, gamma, beta, y, rows, cols, eps), s);
}

std::vector<double> layer_norm_reference(const std::vector<float>& x, const std::vector<float>& gamma,
                                         const std::vector<float>& beta, int64_t rows, int64_t cols, float eps) {
  std::vector<double> y(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.data() + r * cols;
    double mean = 0;
    for (int64_t c = 0; c < cols; ++c) mean += xr[c];
    mean /= double(cols);
    double var = 0;
    for (int64_t c = 0; c < cols; ++c) var += (xr[c] - mean) * (xr[c] - mean);
    const double rstd = 1.0 / std::sqrt(var / double(cols) + double(eps));
    for (int64_t c = 0; c < cols; ++c)
      y[static_cast<size_t>(r * cols + c)] = (xr[c] - mean) * rstd * double(gamma[c]) + double(beta[c]);
  }
  return y;
}

}  // namespace ppu::kernels
