#include "kernels/Quantize.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/KernelUtil.hpp"

namespace ppu::kernels {

namespace {
constexpr int kQuantizeStages = 2;  // tiles loaded ahead of the vector unit
constexpr float kInv127 = 1.0f / 127.0f;
}  // namespace

Kernel make_quantize_rows_int8(const Buffer& x, const Buffer& q, const Buffer& scale, int64_t rows, int64_t cols) {
  const std::string kname = "quantize_rows_int8";
  expect_positive(kname, {{"rows", rows}, {"cols", cols}});
  const auto shape = fmt::format("[{}, {}] (rows, cols)", rows, cols);
  expect_dtype_in(kname, "input x", x, {DType::kBF16, DType::kF16, DType::kF32});
  expect_dtype_in(kname, "output q", q, {DType::kI8});
  expect_dtype_in(kname, "output scale", scale, {DType::kF32});
  expect_numel(kname, "input x", x, rows * cols, shape);
  expect_numel(kname, "output q", q, rows * cols, shape);
  expect_numel(kname, "output scale", scale, rows, fmt::format("[{}] (rows)", rows));

  const RowTiling t = plan_row_tiling(rows, cols, kQuantizeTileElems);
  Kernel k;
  k.name = fmt::format("quantize_rows_int8 {}x{} {}", rows, cols, dtype_name(x.dtype));
  // An elementwise map with a row statistic; inference only (no backward).
  k.ops = {KernelOp::elementwise(ElementwiseDims{rows * cols, 1, ElementwiseFn::kUnary})};
  k.timing_key = k.name;
  k.grid = t.blocks;
  k.args = {x.arg(), q.arg(), scale.arg()};
  k.flops = 3.0 * double(rows) * double(cols);  // abs, max, divide per element
  k.build = [t](int64_t block, TileProgram& p) {
    const int ntiles = t.tiles_in_block(block);
    const bool chunked = t.chunks > 1;  // then ntiles == 1 and tile_rows == 1
    const int64_t steps = chunked ? 2 * t.chunks : ntiles;
    const int stages = static_cast<int>(std::min<int64_t>(kQuantizeStages, steps));
    BufferId xb[kQuantizeStages];
    for (int s = 0; s < stages; ++s) xb[s] = p.alloc(DType::kF32, t.tile_rows, t.chunk_cols, "x");
    const BufferId ab = p.alloc(DType::kF32, t.tile_rows, t.chunk_cols, "abs");
    const BufferId qb = p.alloc(DType::kI8, t.tile_rows, t.chunk_cols, "q");
    const BufferId sc = p.alloc(DType::kF32, t.tile_rows, 1, "scale");
    const BufferId lo = p.alloc(DType::kF32, t.tile_rows, 1, "min_scale");
    p.fill(lo, t.tile_rows, 1, kQuantizeMinScale);
    // sc[r] <- max(sc[r] / 127, min) from the row's max |x|, and stored.
    auto finish_scale = [&](int nr, int64_t row0) {
      p.unary(UnaryOp::kScale, sc, sc, nr, 1, kInv127);
      p.binary(BinaryOp::kMax, sc, sc, lo, nr, 1);
      p.store(TileRegion{2, row0, 1, nr, 1}, sc);
    };
    auto quantize = [&](BufferId xs, int nr, int w, const TileRegion& out) {
      p.binary(BinaryOp::kDiv, ab, xs, sc, nr, w, Broadcast::kRow);
      p.cast(qb, ab, nr, w);
      p.store(out, qb);
    };
    if (!chunked) {
      const int cols = t.chunk_cols;
      pipeline_steps(
          steps, stages, [&](int64_t step, int slot) { p.load(xb[slot], t.step_region(block, step, 0)); },
          [&](int64_t step, int slot) {
            const TileRegion r = t.step_region(block, step, 1);
            p.unary(UnaryOp::kAbs, ab, xb[slot], r.rows, cols);
            p.reduce(ReduceOp::kMax, sc, ab, r.rows, cols);
            finish_scale(r.rows, t.tile_row0(block, static_cast<int>(step)));
            quantize(xb[slot], r.rows, cols, r);
          });
      return;
    }
    // Chunked row: pass 1 folds each chunk's max |x| into sc; pass 2 reloads and quantises.
    pipeline_steps(
        steps, stages, [&](int64_t step, int slot) { p.load(xb[slot], t.step_region(block, step, 0)); },
        [&](int64_t step, int slot) {
          const int64_t c = step % t.chunks;
          const int w = t.chunk_width(c);
          if (step < t.chunks) {
            p.unary(UnaryOp::kAbs, ab, xb[slot], 1, w);
            p.reduce(ReduceOp::kMax, sc, ab, 1, w, /*accumulate=*/c > 0);
            if (c + 1 == t.chunks) finish_scale(1, t.tile_row0(block, 0));
          } else {
            quantize(xb[slot], 1, w, t.step_region(block, step, 1));
          }
        });
  };
  return k;
}

KernelTiming quantize_rows_int8(Device& dev, const Buffer& x, const Buffer& q, const Buffer& scale, int64_t rows,
                                int64_t cols, Stream* s) {
  return dev.launch(make_quantize_rows_int8(x, q, scale, rows, cols), s);
}

void quantize_rows_int8_reference(const std::vector<float>& x, int64_t rows, int64_t cols, std::vector<int8_t>& q,
                                  std::vector<float>& scale) {
  q.assign(static_cast<size_t>(rows * cols), 0);
  scale.assign(static_cast<size_t>(rows), 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.data() + r * cols;
    float amax = -std::numeric_limits<float>::infinity();  // the vector unit's max ignores NaNs
    for (int64_t c = 0; c < cols; ++c)
      if (!std::isnan(xr[c])) amax = std::max(amax, std::fabs(xr[c]));
    const float s = std::max(amax * kInv127, kQuantizeMinScale);
    scale[static_cast<size_t>(r)] = s;
    for (int64_t c = 0; c < cols; ++c) q[static_cast<size_t>(r * cols + c)] = f32_to_int8(xr[c] / s);
  }
}

}  // namespace ppu::kernels
