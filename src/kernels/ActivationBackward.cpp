#include "kernels/ActivationBackward.hpp"

#include <algorithm>
#include <cmath>
#include <functional>

#include "kernels/KernelUtil.hpp"

namespace ppu::kernels {

namespace {

// GELU's tanh-approximation constants, as the vector unit's kGelu uses them: sqrt(2 / pi), 0.044715.
constexpr double kGeluK0 = 0.7978845608028654;
constexpr double kGeluC = 0.044715;

void expect_grad_dtype(const std::string& kname, const char* role, const Buffer& b) {
  expect_dtype_in(kname, role, b, {DType::kF32, DType::kBF16, DType::kF16});
}

bool overlap(const Buffer& a, const Buffer& b) { return a.addr < b.addr + b.bytes && b.addr < a.addr + a.bytes; }

// An output may be an input exactly (in place: each tile is read before it is written), never part of one.
void expect_same_or_disjoint(const std::string& kname, const char* out_role, const Buffer& out, const char* in_role,
                             const Buffer& in) {
  const bool same = out.addr == in.addr && out.bytes == in.bytes && out.dtype == in.dtype;
  if (overlap(out, in) && !same)
    throw UserError(fmt::format("{}: {} '{}' overlaps {} '{}' without being the same elements; valid: the same buffer "
                                "(in place) or disjoint buffers",
                                kname, out_role, out.name, in_role, in.name));
}

void expect_disjoint(const std::string& kname, const char* a_role, const Buffer& a, const char* b_role, const Buffer& b) {
  if (overlap(a, b))
    throw UserError(fmt::format("{}: {} '{}' overlaps {} '{}'; they must be disjoint buffers", kname, a_role, a.name,
                                b_role, b.name));
}

// How a strip kernel walks a row-major [rows, cols] tensor: a block takes one strip of at most
// kActBwTileElems columns over a group of tiles_per_block row tiles of tile_rows rows (the last
// strip, group and tile may be partial). Blocks go strip-fastest: block = group * strips + strip.
struct StripTiling {
  int64_t rows = 0, cols = 0;
  int strip_cols = 1;
  int64_t strips = 1;
  int tile_rows = 1;
  int64_t row_tiles = 1;
  int64_t tiles_per_block = 1;
  int64_t groups = 1;

  int64_t blocks() const { return strips * groups; }
};

// `reduces`: the kernel sums columns (bias gradient), so every block takes at least
// kBiasGradMinTiles row tiles (or all there are).
StripTiling plan_strips(int64_t rows, int64_t cols, bool reduces) {
  StripTiling t;
  t.rows = rows;
  t.cols = cols;
  t.strip_cols = static_cast<int>(std::min<int64_t>(cols, kActBwTileElems));
  t.strips = ceil_div(cols, t.strip_cols);
  t.tile_rows = static_cast<int>(
      std::clamp<int64_t>(kActBwTileElems / t.strip_cols, 1, std::min<int64_t>(kActBwMaxTileRows, rows)));
  t.row_tiles = ceil_div(rows, t.tile_rows);
  const int64_t groups_wanted = std::max<int64_t>(1, kActBwTargetBlocks / t.strips);
  t.tiles_per_block = ceil_div(t.row_tiles, groups_wanted);
  if (reduces) t.tiles_per_block = std::max<int64_t>(t.tiles_per_block, std::min<int64_t>(kBiasGradMinTiles, t.row_tiles));
  t.groups = ceil_div(t.row_tiles, t.tiles_per_block);
  return t;
}

// What a strip kernel computes per tile. Arguments: the row inputs ([rows, cols], 0 .. inputs-1),
// the bias ([cols], if any), the row outputs, dbias (fp32 [cols], if any).
struct StripSpec {
  int inputs = 1;
  bool bias = false;         // added to input 0 (broadcast over rows) before the body
  std::vector<int> outputs;  // output o is stored from the buffer of input outputs[o] after the body
  int sum_input = -1;        // dbias adds the column sums of this input's buffer after the body; -1: none
  int temps = 0;
  // Emits the vector ops of one tile of [rows, cols] on the fp32 input buffers `in` and temporaries `tmp`.
  std::function<void(TileProgram& p, const BufferId* in, const BufferId* tmp, int rows, int cols)> body;
};

constexpr int kMaxStripInputs = 3, kMaxStripTemps = 2;

Kernel make_strip_kernel(const StripTiling& t, const StripSpec& spec, std::vector<TensorArg> args) {
  PPU_CHECK(spec.inputs <= kMaxStripInputs && spec.temps <= kMaxStripTemps, "strip kernel: too many buffers");
  Kernel k;
  k.grid = t.blocks();
  k.args = std::move(args);
  k.accumulates = spec.sum_input >= 0;
  const auto bias_arg = static_cast<uint16_t>(spec.inputs);
  const auto out_arg = static_cast<uint16_t>(spec.inputs + (spec.bias ? 1 : 0));
  const auto dbias_arg = static_cast<uint16_t>(out_arg + spec.outputs.size());
  k.build = [t, spec, bias_arg, out_arg, dbias_arg](int64_t block, TileProgram& p) {
    const int64_t strip = block % t.strips, tile0 = block / t.strips * t.tiles_per_block;
    const int64_t steps = std::min(t.tiles_per_block, t.row_tiles - tile0);
    const int64_t c0 = strip * t.strip_cols;
    const int nc = static_cast<int>(std::min<int64_t>(t.strip_cols, t.cols - c0));
    // Block 0 takes the most steps, so it allocates the most stages (the SRAM every block may use).
    const int stages = static_cast<int>(std::min<int64_t>(kActBwStages, steps));
    BufferId in[kActBwStages][kMaxStripInputs], tmp[kMaxStripTemps];
    for (int s = 0; s < stages; ++s)
      for (int i = 0; i < spec.inputs; ++i) in[s][i] = p.alloc(DType::kF32, t.tile_rows, t.strip_cols, "in");
    for (int i = 0; i < spec.temps; ++i) tmp[i] = p.alloc(DType::kF32, t.tile_rows, t.strip_cols, "tmp");
    BufferId bias = 0, acc = 0;
    if (spec.bias) {
      bias = p.alloc(DType::kF32, 1, t.strip_cols, "bias");
      p.load(bias, TileRegion{bias_arg, c0, t.cols, 1, nc});
    }
    // Rows of the accumulator that some tile adds into (fewer than tile_rows only in a block of one short tile).
    const int acc_rows = static_cast<int>(std::min<int64_t>(t.tile_rows, t.rows - tile0 * t.tile_rows));
    if (spec.sum_input >= 0) {
      acc = p.alloc(DType::kF32, t.tile_rows, t.strip_cols, "dbias_acc");
      p.fill(acc, acc_rows, nc, 0.0f);
    }
    auto region = [&](int64_t step, uint16_t arg) {
      const int64_t r0 = (tile0 + step) * t.tile_rows;
      const int nr = static_cast<int>(std::min<int64_t>(t.tile_rows, t.rows - r0));
      return TileRegion{arg, r0 * t.cols + c0, t.cols, nr, nc};
    };
    pipeline_steps(
        steps, stages,
        [&](int64_t step, int slot) {
          for (int i = 0; i < spec.inputs; ++i) p.load(in[slot][i], region(step, static_cast<uint16_t>(i)));
        },
        [&](int64_t step, int slot) {
          const BufferId* b = in[slot];
          const TileRegion r = region(step, 0);
          if (spec.bias) p.binary(BinaryOp::kAdd, b[0], b[0], bias, r.rows, r.cols, Broadcast::kCol);
          if (spec.body) spec.body(p, b, tmp, r.rows, r.cols);
          for (size_t o = 0; o < spec.outputs.size(); ++o)
            p.store(region(step, static_cast<uint16_t>(out_arg + o)), b[spec.outputs[o]]);
          if (spec.sum_input >= 0) p.binary(BinaryOp::kAdd, acc, acc, b[spec.sum_input], r.rows, r.cols);
        });
    // Each accumulator row into dbias (row order; blocks in block order: Kernel::accumulates).
    if (spec.sum_input >= 0)
      for (int i = 0; i < acc_rows; ++i) p.store_add(TileRegion{dbias_arg, c0, t.cols, 1, nc}, acc, i);
  };
  return k;
}

// Zeroes an fp32 buffer (before a kernel that adds into it).
Kernel make_zero(const Buffer& b) {
  const int64_t n = b.numel;
  Kernel k;
  k.name = fmt::format("zero {} [{}]", b.name, n);
  k.timing_key = fmt::format("actbw zero {}", n);
  k.grid = ceil_div(n, kActBwTileElems);
  k.args = {b.arg()};
  k.build = [n](int64_t block, TileProgram& p) {
    const int64_t off = block * kActBwTileElems;
    const int cols = static_cast<int>(std::min<int64_t>(kActBwTileElems, n - off));
    const BufferId z = p.alloc(DType::kF32, 1, kActBwTileElems, "zero");
    p.fill(z, 1, cols, 0.0f);
    p.store(TileRegion{0, off, kActBwTileElems, 1, cols}, z);
  };
  return k;
}

// Launches `k`, which adds into `dbias` (if any), after zeroing dbias unless `accumulate`. `k` is
// built (its arguments checked) before anything runs.
KernelTiming launch_summing(Device& dev, const Kernel& k, const Buffer* dbias, bool accumulate, Stream* s) {
  if (dbias && !accumulate) dev.launch(make_zero(*dbias), s);
  return dev.launch(k, s);
}

std::string shape_text(int64_t rows, int64_t cols) { return fmt::format("[{}, {}] (rows, cols)", rows, cols); }

// The checks every [rows, cols] input or output of a strip kernel gets.
void expect_rows_cols(const std::string& kname, const char* role, const Buffer& b, int64_t rows, int64_t cols) {
  expect_numel(kname, role, b, rows * cols, shape_text(rows, cols));
  expect_grad_dtype(kname, role, b);
}

void expect_dbias(const std::string& kname, const Buffer& dbias, int64_t cols) {
  expect_numel(kname, "dbias", dbias, cols, fmt::format("[{}] (cols)", cols));
  expect_dtype_in(kname, "dbias", dbias, {DType::kF32});
}

}  // namespace

Kernel make_swiglu_backward(const Buffer& g, const Buffer& u, const Buffer& dy, const Buffer& dg, const Buffer& du,
                            int64_t rows, int64_t cols) {
  const std::string kname = "swiglu_backward";
  expect_positive(kname, {{"rows", rows}, {"cols", cols}});
  expect_rows_cols(kname, "gate g", g, rows, cols);
  expect_rows_cols(kname, "up u", u, rows, cols);
  expect_rows_cols(kname, "gradient dy", dy, rows, cols);
  expect_rows_cols(kname, "output dg", dg, rows, cols);
  expect_rows_cols(kname, "output du", du, rows, cols);
  expect_disjoint(kname, "output dg", dg, "output du", du);
  for (const Buffer* out : {&dg, &du}) {
    const char* role = out == &dg ? "output dg" : "output du";
    expect_same_or_disjoint(kname, role, *out, "gate g", g);
    expect_same_or_disjoint(kname, role, *out, "up u", u);
    expect_same_or_disjoint(kname, role, *out, "gradient dy", dy);
  }
  StripSpec spec;
  spec.inputs = 3;  // g, u, dy
  spec.outputs = {0, 2};
  spec.temps = 2;
  spec.body = [](TileProgram& p, const BufferId* in, const BufferId* tmp, int r, int c) {
    const BufferId gb = in[0], ub = in[1], dyb = in[2], s = tmp[0], silu = tmp[1];
    p.unary(UnaryOp::kSigmoid, s, gb, r, c);
    p.binary(BinaryOp::kMul, silu, gb, s, r, c);
    p.binary(BinaryOp::kSub, gb, gb, silu, r, c);  // g (1 - s)
    p.unary(UnaryOp::kAddImm, gb, gb, r, c, 1.0f);
    p.binary(BinaryOp::kMul, gb, gb, s, r, c);  // silu'(g)
    p.binary(BinaryOp::kMul, gb, gb, dyb, r, c);
    p.binary(BinaryOp::kMul, gb, gb, ub, r, c);      // dg
    p.binary(BinaryOp::kMul, dyb, dyb, silu, r, c);  // du
  };
  Kernel k = make_strip_kernel(plan_strips(rows, cols, false), spec, {g.arg(), u.arg(), dy.arg(), dg.arg(), du.arg()});
  k.name = fmt::format("{} {}x{} {}->{}", kname, rows, cols, dtype_name(g.dtype), dtype_name(dg.dtype));
  k.timing_key = k.name;  // the programs are a function of the shape alone
  k.ops = {KernelOp::elementwise(ElementwiseDims{rows * cols, 3, ElementwiseFn::kBackward})};
  k.flops = 10.0 * double(rows) * double(cols);
  return k;
}

KernelTiming swiglu_backward(Device& dev, const Buffer& g, const Buffer& u, const Buffer& dy, const Buffer& dg,
                             const Buffer& du, int64_t rows, int64_t cols, Stream* s) {
  return dev.launch(make_swiglu_backward(g, u, dy, dg, du, rows, cols), s);
}

Kernel make_gelu_backward(const Buffer& x, const Buffer& dy, const Buffer& dx, int64_t rows, int64_t cols,
                          const Buffer* bias, const Buffer* dbias) {
  const std::string kname = "gelu_backward";
  expect_positive(kname, {{"rows", rows}, {"cols", cols}});
  expect_rows_cols(kname, "input x", x, rows, cols);
  expect_rows_cols(kname, "gradient dy", dy, rows, cols);
  expect_rows_cols(kname, "output dx", dx, rows, cols);
  if (bias) {
    expect_numel(kname, "bias", *bias, cols, fmt::format("[{}] (cols)", cols));
    expect_grad_dtype(kname, "bias", *bias);
    expect_disjoint(kname, "output dx", dx, "bias", *bias);
  }
  expect_same_or_disjoint(kname, "output dx", dx, "input x", x);
  expect_same_or_disjoint(kname, "output dx", dx, "gradient dy", dy);
  std::vector<TensorArg> args = {x.arg(), dy.arg()};
  if (bias) args.push_back(bias->arg());
  args.push_back(dx.arg());
  if (dbias) {
    expect_dbias(kname, *dbias, cols);
    const std::pair<const char*, const Buffer*> others[] = {
        {"input x", &x}, {"gradient dy", &dy}, {"output dx", &dx}, {"bias", bias}};
    for (const auto& [role, b] : others)
      if (b) expect_disjoint(kname, "dbias", *dbias, role, *b);
    args.push_back(dbias->arg());
  }
  StripSpec spec;
  spec.inputs = 2;  // h (x, plus the bias), dy
  spec.bias = bias != nullptr;
  spec.outputs = {0};
  spec.sum_input = dbias ? 0 : -1;
  spec.temps = 2;
  spec.body = [](TileProgram& p, const BufferId* in, const BufferId* tmp, int r, int c) {
    const BufferId h = in[0], dyb = in[1], a = tmp[0], b = tmp[1];
    p.unary(UnaryOp::kSquare, a, h, r, c);  // h^2
    p.unary(UnaryOp::kScale, b, a, r, c, static_cast<float>(kGeluC));
    p.unary(UnaryOp::kAddImm, b, b, r, c, 1.0f);
    p.binary(BinaryOp::kMul, b, b, h, r, c);  // h + c h^3
    p.unary(UnaryOp::kScale, b, b, r, c, static_cast<float>(kGeluK0));
    p.unary(UnaryOp::kTanh, b, b, r, c);  // t
    p.unary(UnaryOp::kScale, a, a, r, c, static_cast<float>(1.5 * kGeluC * kGeluK0));
    p.unary(UnaryOp::kAddImm, a, a, r, c, static_cast<float>(0.5 * kGeluK0));
    p.binary(BinaryOp::kMul, a, a, h, r, c);  // 0.5 h k0 (1 + 3 c h^2)
    p.unary(UnaryOp::kSquare, h, b, r, c);
    p.unary(UnaryOp::kScale, h, h, r, c, -1.0f);
    p.unary(UnaryOp::kAddImm, h, h, r, c, 1.0f);  // 1 - t^2
    p.binary(BinaryOp::kMul, a, a, h, r, c);
    p.unary(UnaryOp::kScale, b, b, r, c, 0.5f);
    p.unary(UnaryOp::kAddImm, b, b, r, c, 0.5f);  // 0.5 (1 + t)
    p.binary(BinaryOp::kAdd, a, a, b, r, c);      // gelu'(h)
    p.binary(BinaryOp::kMul, h, a, dyb, r, c);    // dx
  };
  Kernel k = make_strip_kernel(plan_strips(rows, cols, dbias != nullptr), spec, std::move(args));
  k.name = fmt::format("{} {}x{} {}->{}{}{}", kname, rows, cols, dtype_name(x.dtype), dtype_name(dx.dtype),
                       bias ? " +bias" : "", dbias ? " +dbias" : "");
  k.timing_key = k.name;
  k.ops = {KernelOp::elementwise(ElementwiseDims{rows * cols, 2, ElementwiseFn::kBackward})};
  k.flops = (dbias ? 20.0 : 19.0) * double(rows) * double(cols);
  return k;
}

KernelTiming gelu_backward(Device& dev, const Buffer& x, const Buffer& dy, const Buffer& dx, int64_t rows,
                           int64_t cols, const Buffer* bias, const Buffer* dbias, bool accumulate_dbias, Stream* s) {
  return launch_summing(dev, make_gelu_backward(x, dy, dx, rows, cols, bias, dbias), dbias, accumulate_dbias, s);
}

Kernel make_bias_grad(const Buffer& dy, const Buffer& dbias, int64_t rows, int64_t cols) {
  const std::string kname = "bias_grad";
  expect_positive(kname, {{"rows", rows}, {"cols", cols}});
  expect_rows_cols(kname, "gradient dy", dy, rows, cols);
  expect_dbias(kname, dbias, cols);
  expect_disjoint(kname, "dbias", dbias, "gradient dy", dy);
  StripSpec spec;
  spec.inputs = 1;
  spec.sum_input = 0;
  Kernel k = make_strip_kernel(plan_strips(rows, cols, true), spec, {dy.arg(), dbias.arg()});
  k.name = fmt::format("{} {}x{} {}", kname, rows, cols, dtype_name(dy.dtype));
  k.timing_key = k.name;
  k.ops = {KernelOp::elementwise(ElementwiseDims{rows * cols, 1, ElementwiseFn::kBackward})};
  k.flops = double(rows) * double(cols);
  return k;
}

KernelTiming bias_grad(Device& dev, const Buffer& dy, const Buffer& dbias, int64_t rows, int64_t cols,
                       bool accumulate, Stream* s) {
  return launch_summing(dev, make_bias_grad(dy, dbias, rows, cols), &dbias, accumulate, s);
}

double gelu_derivative(double h) {
  const double t = std::tanh(kGeluK0 * (h + kGeluC * h * h * h));
  return 0.5 * (1.0 + t) + 0.5 * h * (1.0 - t * t) * kGeluK0 * (1.0 + 3.0 * kGeluC * h * h);
}

SwigluGrads swiglu_backward_reference(const std::vector<float>& g, const std::vector<float>& u,
                                      const std::vector<float>& dy) {
  PPU_CHECK(g.size() == u.size() && g.size() == dy.size(), "swiglu_backward_reference: sizes");
  SwigluGrads r{std::vector<double>(g.size()), std::vector<double>(g.size())};
  for (size_t i = 0; i < g.size(); ++i) {
    const double gd = g[i], s = 1.0 / (1.0 + std::exp(-gd));
    r.dg[i] = double(dy[i]) * u[i] * s * (1.0 + gd * (1.0 - s));
    r.du[i] = double(dy[i]) * gd * s;
  }
  return r;
}

GeluGrads gelu_backward_reference(const std::vector<float>& x, const std::vector<float>& dy, int64_t rows,
                                  int64_t cols, const std::vector<float>* bias) {
  PPU_CHECK(static_cast<int64_t>(x.size()) == rows * cols && x.size() == dy.size() &&
                (!bias || static_cast<int64_t>(bias->size()) == cols),
            "gelu_backward_reference: sizes");
  GeluGrads r{std::vector<double>(x.size()), std::vector<double>(static_cast<size_t>(cols))};
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t c = 0; c < cols; ++c) {
      const auto e = static_cast<size_t>(i * cols + c);
      const float h = bias ? x[e] + (*bias)[static_cast<size_t>(c)] : x[e];
      r.dx[e] = double(dy[e]) * gelu_derivative(h);
      r.dbias[static_cast<size_t>(c)] += r.dx[e];
    }
  return r;
}

std::vector<double> bias_grad_reference(const std::vector<float>& dy, int64_t rows, int64_t cols) {
  PPU_CHECK(static_cast<int64_t>(dy.size()) == rows * cols, "bias_grad_reference: sizes");
  std::vector<double> r(static_cast<size_t>(cols));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t c = 0; c < cols; ++c) r[static_cast<size_t>(c)] += dy[static_cast<size_t>(i * cols + c)];
  return r;
}

}  // namespace ppu::kernels
