#include "kernels/Reduce.hpp"

#include <algorithm>
#include <cmath>

#include "kernels/KernelUtil.hpp"

namespace ppu::kernels {

Kernel make_row_reduce(RowReduceOp op, const Buffer& x, const Buffer& y, int64_t rows, int64_t cols) {
  if (op >= RowReduceOp::kCount)
    throw UserError(fmt::format("row_reduce: invalid op {}; valid: sum, max, mean", static_cast<int>(op)));
  const std::string kname = fmt::format("row_{}", kRowReduceOpNames[static_cast<size_t>(op)]);
  expect_positive(kname, {{"rows", rows}, {"cols", cols}});
  expect_numel(kname, "input x", x, rows * cols, fmt::format("[{}, {}] (rows, cols)", rows, cols));
  expect_numel(kname, "output y", y, rows, fmt::format("[{}] (rows)", rows));

  const RowTiling t = plan_row_tiling(rows, cols, kReduceTileElems);
  Kernel k;
  k.name = fmt::format("{} {}x{} {}->{}", kname, rows, cols, dtype_name(x.dtype), dtype_name(y.dtype));
  k.timing_key = k.name;  // the tiling is a function of the shape and dtypes alone
  k.grid = t.blocks;
  k.args = {x.arg(), y.arg()};
  k.flops = double(rows) * double(cols);
  const ReduceOp rop = op == RowReduceOp::kMax ? ReduceOp::kMax : ReduceOp::kSum;
  const bool mean = op == RowReduceOp::kMean;
  const auto inv_cols = static_cast<float>(1.0 / double(cols));
  k.build = [t, rop, mean, inv_cols](int64_t block, TileProgram& p) {
    const int ntiles = t.tiles_in_block(block);
    const int64_t steps = int64_t{ntiles} * t.chunks;
    const int stages = static_cast<int>(std::min<int64_t>(kReduceStages, steps));
    BufferId xb[kReduceStages];
    for (int s = 0; s < stages; ++s) xb[s] = p.alloc(DType::kF32, t.tile_rows, t.chunk_cols, "x");
    // Two accumulators, so the next row tile's reduction need not wait for this one's store.
    const int nacc = std::min(2, ntiles);
    BufferId acc[2];
    for (int i = 0; i < nacc; ++i) acc[i] = p.alloc(DType::kF32, t.tile_rows, 1, "acc");

    auto load = [&](int64_t step, int slot) {
      const auto tile = static_cast<int>(step / t.chunks);
      const int64_t c = step % t.chunks;
      p.load(xb[slot], matrix_region(0, 0, t.cols, t.tile_row0(block, tile), t.chunk_col0(c),
                                     t.tile_row_count(block, tile), t.chunk_width(c)));
    };
    auto body = [&](int64_t step, int slot) {
      const auto tile = static_cast<int>(step / t.chunks);
      const int64_t c = step % t.chunks;
      const int nr = t.tile_row_count(block, tile);
      const BufferId a = acc[tile % nacc];
      p.reduce(rop, a, xb[slot], nr, t.chunk_width(c), /*accumulate=*/c > 0);
      if (c + 1 == t.chunks) {
        if (mean) p.unary(UnaryOp::kScale, a, a, nr, 1, inv_cols);
        p.store(TileRegion{1, t.tile_row0(block, tile), 1, nr, 1}, a);
      }
    };
    pipeline_steps(steps, stages, load, body);
  };
  return k;
}

KernelTiming row_reduce(Device& dev, RowReduceOp op, const Buffer& x, const Buffer& y, int64_t rows, int64_t cols,
                        Stream* s) {
  return dev.launch(make_row_reduce(op, x, y, rows, cols), s);
}

std::vector<double> row_reduce_reference(RowReduceOp op, const std::vector<float>& x, int64_t rows, int64_t cols) {
  std::vector<double> y(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.data() + r * cols;
    double acc = op == RowReduceOp::kMax ? double(xr[0]) : 0.0;
    for (int64_t c = 0; c < cols; ++c) acc = op == RowReduceOp::kMax ? std::max(acc, double(xr[c])) : acc + xr[c];
    y[static_cast<size_t>(r)] = op == RowReduceOp::kMean ? acc / double(cols) : acc;
  }
  return y;
}

}  // namespace ppu::kernels
