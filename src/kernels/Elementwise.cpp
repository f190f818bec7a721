#include "kernels/Elementwise.hpp"

#include <cmath>
#include <functional>

#include "kernels/KernelUtil.hpp"

namespace ppu::kernels {

namespace {

// Body: emits the vector ops for one tile of `cols` elements, from input buffers to `out`.
using MapBody = std::function<void(TileProgram& p, const BufferId* in, BufferId out, int cols)>;

// A flat map kernel: every input and the output have the same numel. `compute` false means a pure
// copy: the tile is loaded into a buffer of the input's dtype and stored from it (the DMA converts).
Kernel make_map(const ChipSpec& chip, const std::string& name, std::vector<Buffer> inputs, const Buffer& out, bool compute,
                ElementwiseFn fn, MapBody body) {
  expect_positive(name, {{"elements", out.numel}});
  for (const Buffer& b : inputs) expect_numel(name, "input", b, out.numel, fmt::format("[{}] of the output", out.numel));
  const int64_t n = out.numel;
  const int64_t tiles = ceil_div(n, kMapTile);
  Kernel k;
  k.name = name;
  k.timing_key = fmt::format("map {}|{}|{}", name, inputs.size(), compute);
  k.ops = {KernelOp::elementwise(ElementwiseDims{n, static_cast<int>(inputs.size()), fn})};
  k.grid = std::min<int64_t>(tiles, int64_t{chip.num_cores()} * kMapBlocksPerCore);
  const int64_t grid = k.grid;
  for (const Buffer& b : inputs) k.args.push_back(b.arg());
  k.args.push_back(out.arg());
  const auto nin = static_cast<int>(inputs.size());
  const DType copy_type = inputs.empty() ? DType::kF32 : inputs[0].dtype;
  k.build = [=](int64_t block, TileProgram& p) {
    // Block b streams tiles [b*tiles/grid, (b+1)*tiles/grid): contiguous, balanced to one tile.
    const int64_t t0 = block * tiles / grid;
    const int count = static_cast<int>((block + 1) * tiles / grid - t0);
    // Every block allocates the same buffers (the timing engine sizes residency from block 0).
    const int stages = static_cast<int>(std::min<int64_t>(3, ceil_div(tiles, grid)));
    BufferId in[3][4];
    BufferId res[3];
    for (int s = 0; s < stages; ++s) {
      for (int i = 0; i < nin; ++i) in[s][i] = p.alloc(compute ? DType::kF32 : copy_type, 1, kMapTile, "in");
      res[s] = compute ? p.alloc(DType::kF32, 1, kMapTile, "out") : in[s][0];
    }
    auto region = [&](int64_t tile, uint16_t arg) {
      const int64_t off = tile * kMapTile;
      return TileRegion{arg, off, kMapTile, 1, static_cast<int>(std::min<int64_t>(kMapTile, n - off))};
    };
    for (int s = 0; s < std::min(stages, count); ++s)
      for (int i = 0; i < nin; ++i) p.load(in[s][i], region(t0 + s, static_cast<uint16_t>(i)));
    for (int j = 0; j < count; ++j) {
      const int s = j % stages;
      const TileRegion r = region(t0 + j, static_cast<uint16_t>(nin));
      if (compute) body(p, in[s], res[s], r.cols);
      p.store(r, res[s]);
      if (j + stages < count)
        for (int i = 0; i < nin; ++i) p.load(in[s][i], region(t0 + j + stages, static_cast<uint16_t>(i)));
    }
  };
  return k;
}

}  // namespace

Kernel make_copy(const ChipSpec& chip, const Buffer& src, const Buffer& dst) {
  return make_map(chip, fmt::format("copy {}->{}", dtype_name(src.dtype), dtype_name(dst.dtype)), {src}, dst, false, ElementwiseFn::kCopy, nullptr);
}

Kernel make_unary(const ChipSpec& chip, UnaryOp op, const Buffer& x, const Buffer& y, float imm) {
  if (op >= UnaryOp::kCount) throw UserError("unary: invalid op");
  const ElementwiseFn fn = op == UnaryOp::kGelu ? ElementwiseFn::kGelu : op == UnaryOp::kCopy ? ElementwiseFn::kCopy
                                                                                              : ElementwiseFn::kUnary;
  return make_map(chip, std::string(kUnaryOpNames[static_cast<size_t>(op)]), {x}, y, true, fn,
                  [op, imm](TileProgram& p, const BufferId* in, BufferId out, int cols) {
                    p.unary(op, out, in[0], 1, cols, imm);
                  });
}

Kernel make_binary(const ChipSpec& chip, BinaryOp op, const Buffer& a, const Buffer& b, const Buffer& y) {
  if (op >= BinaryOp::kCount) throw UserError("binary: invalid op");
  if (op == BinaryOp::kSelect)
    throw UserError("binary: select is a masked move that also reads its output; it has no flat-map kernel");
  const ElementwiseFn fn = op == BinaryOp::kAdd ? ElementwiseFn::kAdd : op == BinaryOp::kMul ? ElementwiseFn::kMul
                                                                                             : ElementwiseFn::kBinary;
  return make_map(chip, std::string(kBinaryOpNames[static_cast<size_t>(op)]), {a, b}, y, true, fn,
                  [op](TileProgram& p, const BufferId* in, BufferId out, int cols) {
                    p.binary(op, out, in[0], in[1], 1, cols);
                  });
}

Kernel make_triad(const ChipSpec& chip, const Buffer& b, const Buffer& c, const Buffer& a, float scalar) {
  return make_map(chip, "triad", {b, c}, a, true, ElementwiseFn::kTriad, [scalar](TileProgram& p, const BufferId* in, BufferId out, int cols) {
    p.unary(UnaryOp::kScale, out, in[1], 1, cols, scalar);
    p.binary(BinaryOp::kAdd, out, in[0], out, 1, cols);
  });
}

KernelTiming copy(Device& dev, const Buffer& src, const Buffer& dst, Stream* s) { return dev.launch(make_copy(dev.chip(), src, dst), s); }
KernelTiming unary(Device& dev, UnaryOp op, const Buffer& x, const Buffer& y, float imm, Stream* s) {
  return dev.launch(make_unary(dev.chip(), op, x, y, imm), s);
}
KernelTiming binary(Device& dev, BinaryOp op, const Buffer& a, const Buffer& b, const Buffer& y, Stream* s) {
  return dev.launch(make_binary(dev.chip(), op, a, b, y), s);
}
KernelTiming triad(Device& dev, const Buffer& b, const Buffer& c, const Buffer& a, float scalar, Stream* s) {
  return dev.launch(make_triad(dev.chip(), b, c, a, scalar), s);
}

float unary_reference(UnaryOp op, float x, float imm) {
  switch (op) {
    case UnaryOp::kCopy: return x;
    case UnaryOp::kNeg: return -x;
    case UnaryOp::kAbs: return std::fabs(x);
    case UnaryOp::kExp: return std::exp(x);
    case UnaryOp::kLog: return std::log(x);
    case UnaryOp::kSqrt: return std::sqrt(x);
    case UnaryOp::kRsqrt: return 1.0f / std::sqrt(x);
    case UnaryOp::kRecip: return 1.0f / x;
    case UnaryOp::kSquare: return x * x;
    case UnaryOp::kRelu: return std::max(x, 0.0f);
    case UnaryOp::kSilu: return static_cast<float>(x / (1.0 + std::exp(-double(x))));
    case UnaryOp::kGelu: {  // tanh approximation, as GPT-2 and Megatron use
      const double xd = x;
      return static_cast<float>(0.5 * xd * (1.0 + std::tanh(0.7978845608028654 * (xd + 0.044715 * xd * xd * xd))));
    }
    case UnaryOp::kSigmoid: return static_cast<float>(1.0 / (1.0 + std::exp(-double(x))));
    case UnaryOp::kTanh: return std::tanh(x);
    case UnaryOp::kScale: return x * imm;
    case UnaryOp::kAddImm: return x + imm;
    case UnaryOp::kCount: break;
  }
  return x;
}

float binary_reference(BinaryOp op, float a, float b) {
  switch (op) {
    case BinaryOp::kAdd: return a + b;
    case BinaryOp::kSub: return a - b;
    case BinaryOp::kMul: return a * b;
    case BinaryOp::kDiv: return a / b;
    case BinaryOp::kMax: return std::max(a, b);
    case BinaryOp::kMin: return std::min(a, b);
    case BinaryOp::kCmpGt: return a > b ? 1.0f : 0.0f;
    case BinaryOp::kCmpEq: return a == b ? 1.0f : 0.0f;
    case BinaryOp::kSelect: return a != 0.0f ? b : 0.0f;  // as if the destination held zeros
    case BinaryOp::kCount: break;
  }
  return a;
}

}  // namespace ppu::kernels
