#include "kernels/BiasActivation.hpp"

#include <algorithm>
#include <cmath>

#include "kernels/Elementwise.hpp"
#include "kernels/KernelUtil.hpp"

namespace ppu::kernels {

Kernel make_bias_activation(const Buffer& x, const Buffer& bias, const Buffer& y, int64_t rows, int64_t cols,
                            UnaryOp act, float imm) {
  if (act >= UnaryOp::kCount)
    throw UserError(fmt::format("bias_activation: invalid activation {}", static_cast<int>(act)));
  const std::string kname =
      act == UnaryOp::kCopy ? std::string("bias_add") : fmt::format("bias_{}", kUnaryOpNames[static_cast<size_t>(act)]);
  expect_positive(kname, {{"rows", rows}, {"cols", cols}});
  const auto shape = fmt::format("[{}, {}] (rows, cols)", rows, cols);
  expect_numel(kname, "input x", x, rows * cols, shape);
  expect_numel(kname, "bias", bias, cols, fmt::format("[{}] (cols)", cols));
  expect_numel(kname, "output y", y, rows * cols, shape);

  const RowTiling t = plan_row_tiling(rows, cols, kBiasTileElems);
  Kernel k;
  k.name = fmt::format("{} {}x{} {}->{}", kname, rows, cols, dtype_name(x.dtype), dtype_name(y.dtype));
  const ElementwiseFn fn = act == UnaryOp::kCopy ? ElementwiseFn::kBias
                           : act == UnaryOp::kGelu ? ElementwiseFn::kBiasGelu
                                                   : ElementwiseFn::kUnary;
  k.ops = {KernelOp::elementwise(ElementwiseDims{rows * cols, 2, fn, cols})};
  k.timing_key = fmt::format("{} imm={}", k.name, imm);  // the tiling is a function of the shape alone
  k.grid = t.blocks;
  k.args = {x.arg(), bias.arg(), y.arg()};
  k.flops = (act == UnaryOp::kCopy ? 1.0 : 2.0) * double(rows) * double(cols);
  k.build = [t, act, imm](int64_t block, TileProgram& p) {
    const int ntiles = t.tiles_in_block(block);
    const bool chunked = t.chunks > 1;  // then ntiles == 1 and tile_rows == 1
    const int64_t steps = chunked ? t.chunks : ntiles;
    const int stages = static_cast<int>(std::min<int64_t>(kBiasStages, steps));
    auto region = [&](int64_t step, uint16_t arg) { return t.step_region(block, step, arg); };
    BufferId xb[kBiasStages], bb[kBiasStages];
    for (int s = 0; s < stages; ++s) xb[s] = p.alloc(DType::kF32, t.tile_rows, t.chunk_cols, "x");
    const int nbias = chunked ? stages : 1;  // a slice per stage, or the whole bias once
    for (int s = 0; s < nbias; ++s) bb[s] = p.alloc(DType::kF32, 1, t.chunk_cols, "bias");
    if (!chunked) p.load(bb[0], t.vector_region(0, 1));
    pipeline_steps(
        steps, stages,
        [&](int64_t step, int slot) {
          p.load(xb[slot], region(step, 0));
          if (chunked) p.load(bb[slot], t.vector_region(step, 1));
        },
        [&](int64_t step, int slot) {
          const TileRegion r = region(step, 2);
          const BufferId xs = xb[slot];
          p.binary(BinaryOp::kAdd, xs, xs, bb[chunked ? slot : 0], r.rows, r.cols, Broadcast::kCol);
          if (act != UnaryOp::kCopy) p.unary(act, xs, xs, r.rows, r.cols, imm);
          p.store(r, xs);
        });
  };
  return k;
}

KernelTiming bias_activation(Device& dev, const Buffer& x, const Buffer& bias, const Buffer& y, int64_t rows,
                             int64_t cols, UnaryOp act, float imm, Stream* s) {
  return dev.launch(make_bias_activation(x, bias, y, rows, cols, act, imm), s);
}

std::vector<double> bias_activation_reference(const std::vector<float>& x, const std::vector<float>& bias,
                                              int64_t rows, int64_t cols, UnaryOp act, float imm) {
  std::vector<double> y(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const float h = x[static_cast<size_t>(r * cols + c)] + bias[static_cast<size_t>(c)];
      double v;
      if (act == UnaryOp::kGelu) {
        const double hd = h;
        v = 0.5 * hd * (1.0 + std::tanh(0.7978845608028654 * (hd + 0.044715 * hd * hd * hd)));
      } else {
        v = unary_reference(act, h, imm);
      }
      y[static_cast<size_t>(r * cols + c)] = v;
    }
  return y;
}

}  // namespace ppu::kernels
