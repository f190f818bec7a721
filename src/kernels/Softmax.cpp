#include "kernels/Softmax.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/KernelUtil.hpp"

namespace ppu::kernels {

Kernel make_softmax(const Buffer& x, const Buffer& y, int64_t rows, int64_t cols) {
  const std::string kname = "softmax";
  expect_positive(kname, {{"rows", rows}, {"cols", cols}});
  const auto shape = fmt::format("[{}, {}] (rows, cols)", rows, cols);
  expect_numel(kname, "input x", x, rows * cols, shape);
  expect_numel(kname, "output y", y, rows * cols, shape);

  const RowTiling t = plan_row_tiling(rows, cols, kSoftmaxTileElems);
  Kernel k;
  k.name = fmt::format("softmax {}x{} {}->{}", rows, cols, dtype_name(x.dtype), dtype_name(y.dtype));
  k.ops = {KernelOp::rows(OpClass::kSoftmax, RowDims{rows, cols})};
  k.timing_key = k.name;  // the tiling is a function of the shape and dtypes alone
  k.grid = t.blocks;
  k.args = {x.arg(), y.arg()};
  k.flops = 5.0 * double(rows) * double(cols);  // max, subtract, exp, sum, scale per element
  k.build = [t](int64_t block, TileProgram& p) {
    const int ntiles = t.tiles_in_block(block);
    const bool chunked = t.chunks > 1;  // then ntiles == 1 and tile_rows == 1
    // Steps: one per row tile; or, for chunked rows, pass 1's chunks then pass 2's.
    const int64_t steps = chunked ? 2 * t.chunks : ntiles;
    const int stages = static_cast<int>(std::min<int64_t>(kSoftmaxStages, steps));
    BufferId xb[kSoftmaxStages];
    for (int s = 0; s < stages; ++s) xb[s] = p.alloc(DType::kF32, t.tile_rows, t.chunk_cols, "x");
    auto region = [&](int64_t step, uint16_t arg) { return t.step_region(block, step, arg); };
    auto load = [&](int64_t step, int slot) { p.load(xb[slot], region(step, 0)); };

    if (!chunked) {
      BufferId m[kSoftmaxStages], sum[kSoftmaxStages];
      for (int s = 0; s < stages; ++s) {
        m[s] = p.alloc(DType::kF32, t.tile_rows, 1, "max");
        sum[s] = p.alloc(DType::kF32, t.tile_rows, 1, "sum");
      }
      pipeline_steps(steps, stages, load, [&](int64_t step, int slot) {
        const TileRegion r = region(step, 1);
        const BufferId xs = xb[slot];
        p.reduce(ReduceOp::kMax, m[slot], xs, r.rows, r.cols);
        p.binary(BinaryOp::kSub, xs, xs, m[slot], r.rows, r.cols, Broadcast::kRow);
        p.unary(UnaryOp::kExp, xs, xs, r.rows, r.cols);
        p.reduce(ReduceOp::kSum, sum[slot], xs, r.rows, r.cols);
        p.unary(UnaryOp::kRecip, sum[slot], sum[slot], r.rows, 1);
        p.binary(BinaryOp::kMul, xs, xs, sum[slot], r.rows, r.cols, Broadcast::kRow);
        p.store(r, xs);
      });
      return;
    }

    // Chunked row: running max in m[cur] (the other one receives the next maximum, so no copy),
    // running sum in `sum`; `chunk_max` and `rescale` are scratch. The running max starts at
    // -FLT_MAX rather than at the first chunk's max, so that a first chunk of only -inf (masked)
    // gives exp(-inf - m) = 0 rather than exp(-inf + inf) = NaN.
    BufferId m[2] = {p.alloc(DType::kF32, 1, 1, "max"), p.alloc(DType::kF32, 1, 1, "max")};
    const BufferId sum = p.alloc(DType::kF32, 1, 1, "sum");
    const BufferId chunk_max = p.alloc(DType::kF32, 1, 1, "chunk_max");
    const BufferId rescale = p.alloc(DType::kF32, 1, 1, "rescale");
    int cur = 0;
    p.fill(m[cur], 1, 1, -std::numeric_limits<float>::max());
    pipeline_steps(steps, stages, load, [&](int64_t step, int slot) {
      const int64_t c = step % t.chunks;
      const int w = t.chunk_width(c);
      const BufferId xs = xb[slot];
      if (step < t.chunks) {  // pass 1
        online_softmax_chunk(p, c, xs, w, m, cur, chunk_max, rescale, sum);
        if (c + 1 == t.chunks) p.unary(UnaryOp::kRecip, sum, sum, 1, 1);
      } else {  // pass 2: sum holds 1 / s
        p.binary(BinaryOp::kSub, xs, xs, m[cur], 1, w, Broadcast::kRow);
        p.unary(UnaryOp::kExp, xs, xs, 1, w);
        p.binary(BinaryOp::kMul, xs, xs, sum, 1, w, Broadcast::kRow);
        p.store(region(step, 1), xs);
      }
    });
  };
  return k;
}

KernelTiming softmax(Device& dev, const Buffer& x, const Buffer& y, int64_t rows, int64_t cols, Stream* s) {
  return dev.launch(make_softmax(x, y, rows, cols), s);
}

std::vector<double> softmax_reference(const std::vector<float>& x, int64_t rows, int64_t cols) {
  std::vector<double> y(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.data() + r * cols;
    double* yr = y.data() + r * cols;
    double m = xr[0];
    for (int64_t c = 1; c < cols; ++c) m = std::max(m, double(xr[c]));
    double s = 0;
    for (int64_t c = 0; c < cols; ++c) s += yr[c] = std::exp(double(xr[c]) - m);
    for (int64_t c = 0; c < cols; ++c) yr[c] /= s;
  }
  return y;
}

}  // namespace ppu::kernels
