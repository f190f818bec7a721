#include "kernels/RopeBackward.hpp"

#include <algorithm>
#include <cmath>
#include <memory>

#include "kernels/KernelUtil.hpp"

namespace ppu::kernels {

namespace {

// One block's work: tokens [token0, token0 + tokens) at positions pos0 + j * pos_step, heads
// [head0, head0 + heads), one head per pipeline step.
struct RopeBwItem {
  int64_t token0 = 0, pos0 = 0, pos_step = 0;
  int32_t tokens = 1, head0 = 0, heads = 1;
};

// Cuts the tokens into runs of at most max_run tokens whose positions step by a constant >= 0, and
// each run's heads into groups, so that the chip gets about kRopeTargetBlocks blocks.
std::vector<RopeBwItem> plan_items(const std::vector<int32_t>& positions, int64_t heads, int max_run) {
  std::vector<RopeBwItem> runs;
  const auto n = static_cast<int64_t>(positions.size());
  auto pos = [&](int64_t t) { return int64_t{positions[static_cast<size_t>(t)]}; };
  for (int64_t t = 0; t < n;) {
    RopeBwItem r;
    r.token0 = t;
    r.pos0 = pos(t);
    r.pos_step = t + 1 < n ? std::max<int64_t>(pos(t + 1) - r.pos0, 0) : 0;
    while (r.tokens < max_run && t + r.tokens < n && pos(t + r.tokens) - pos(t + r.tokens - 1) == r.pos_step)
      ++r.tokens;
    runs.push_back(r);
    t += r.tokens;
  }
  const int64_t groups =
      std::clamp<int64_t>(kRopeTargetBlocks / static_cast<int64_t>(runs.size()), 1, heads);
  const int64_t per = ceil_div(heads, groups);
  std::vector<RopeBwItem> items;
  for (const RopeBwItem& r : runs)
    for (int64_t h = 0; h < heads; h += per) {
      RopeBwItem it = r;
      it.head0 = static_cast<int32_t>(h);
      it.heads = static_cast<int32_t>(std::min(per, heads - h));
      items.push_back(it);
    }
  return items;
}

}  // namespace

Kernel make_rope_backward(const RopeTable& table, const Buffer& dy, const Buffer& dx, int64_t tokens, int64_t heads,
                          const std::vector<int32_t>& positions) {
  const std::string kname = "rope_backward";
  expect_positive(kname, {{"tokens", tokens}, {"heads", heads}});
  const int64_t d = table.head_dim, half = d / 2;
  if (d <= 0 || d % 2 != 0 || table.max_positions <= 0)
    throw UserError(fmt::format("{}: the rope table has head_dim {} and {} positions; build it with make_rope_table",
                                kname, d, table.max_positions));
  if (heads > INT32_MAX / d)
    throw UserError(fmt::format("{}: heads = {} is too large (heads * head_dim must stay below 2^31)", kname, heads));
  const auto table_shape = fmt::format("[{}, {}] (max_positions, head_dim / 2)", table.max_positions, half);
  expect_numel(kname, "table cos", table.cos, table.max_positions * half, table_shape);
  expect_numel(kname, "table sin", table.sin, table.max_positions * half, table_shape);
  const auto shape = fmt::format("[{}, {}, {}] (tokens, heads, head_dim)", tokens, heads, d);
  for (const auto& [role, b] : {std::pair<const char*, const Buffer*>{"gradient dy", &dy}, {"output dx", &dx}}) {
    expect_numel(kname, role, *b, tokens * heads * d, shape);
    expect_dtype_in(kname, role, *b, {DType::kF32, DType::kBF16, DType::kF16});
  }
  const bool same = dx.addr == dy.addr && dx.dtype == dy.dtype;
  if (!same && dx.addr < dy.addr + dy.bytes && dy.addr < dx.addr + dx.bytes)
    throw UserError(fmt::format("{}: output dx '{}' overlaps gradient dy '{}' without being the same elements; valid: "
                                "the same buffer (in place) or disjoint buffers",
                                kname, dx.name, dy.name));
  if (static_cast<int64_t>(positions.size()) != tokens)
    throw UserError(
        fmt::format("{}: {} positions given for {} tokens; one per token is needed", kname, positions.size(), tokens));
  for (int64_t t = 0; t < tokens; ++t) {
    const int32_t p = positions[static_cast<size_t>(t)];
    if (p < 0 || p >= table.max_positions)
      throw UserError(fmt::format("{}: token {} is at position {}, outside the rope table's {} positions (valid: 0 "
                                  "to {})",
                                  kname, t, p, table.max_positions, table.max_positions - 1));
  }

  const int max_run = static_cast<int>(std::clamp<int64_t>(kRopeTileElems / half, 1, kRopeTileRows));
  auto items = std::make_shared<const std::vector<RopeBwItem>>(plan_items(positions, heads, max_run));
  int alloc_rows = 1;
  for (const RopeBwItem& it : *items) alloc_rows = std::max(alloc_rows, it.tokens);

  Kernel k;
  k.name = fmt::format("{} {}x{}x{} {}->{}", kname, tokens, heads, d, dtype_name(dy.dtype), dtype_name(dx.dtype));
  k.ops = {KernelOp::rope(RopeDims{tokens, heads, d})};
  k.grid = static_cast<int64_t>(items->size());
  k.args = {dy.arg(), table.cos.arg(), table.sin.arg(), dx.arg()};
  k.flops = 3.0 * double(tokens) * double(heads) * double(d);  // 6 ops per pair
  const int hf = static_cast<int>(half);
  k.build = [items, heads, d, hf, alloc_rows](int64_t block, TileProgram& p) {
    const RopeBwItem& it = (*items)[static_cast<size_t>(block)];
    const int n = it.tokens;
    // Every block allocates the same buffers (block 0 sizes the SRAM a core reserves).
    BufferId y1[kRopeStages], y2[kRopeStages];
    for (int s = 0; s < kRopeStages; ++s) {
      y1[s] = p.alloc(DType::kF32, alloc_rows, hf, "dy1");
      y2[s] = p.alloc(DType::kF32, alloc_rows, hf, "dy2");
    }
    const BufferId t1 = p.alloc(DType::kF32, alloc_rows, hf, "dy1*sin");
    const BufferId t2 = p.alloc(DType::kF32, alloc_rows, hf, "dy2*sin");
    const BufferId cs = p.alloc(DType::kF32, alloc_rows, hf, "cos");
    const BufferId sn = p.alloc(DType::kF32, alloc_rows, hf, "sin");
    p.load(cs, TileRegion{1, it.pos0 * hf, it.pos_step * hf, n, hf});
    p.load(sn, TileRegion{2, it.pos0 * hf, it.pos_step * hf, n, hf});
    // First half of head head0 + step of the block's tokens in argument `arg`.
    auto region = [&](int64_t step, uint16_t arg) {
      return TileRegion{arg, (it.token0 * heads + it.head0 + step) * d, heads * d, n, hf};
    };
    pipeline_steps(
        it.heads, kRopeStages,
        [&](int64_t step, int slot) {
          TileRegion r = region(step, 0);
          p.load(y1[slot], r);
          r.offset += hf;
          p.load(y2[slot], r);
        },
        [&](int64_t step, int slot) {
          const BufferId a = y1[slot], b = y2[slot];
          p.binary(BinaryOp::kMul, t1, a, sn, n, hf);
          p.binary(BinaryOp::kMul, t2, b, sn, n, hf);
          p.binary(BinaryOp::kMul, a, a, cs, n, hf);
          p.binary(BinaryOp::kMul, b, b, cs, n, hf);
          p.binary(BinaryOp::kAdd, a, a, t2, n, hf);  // dy1 c + dy2 s
          p.binary(BinaryOp::kSub, b, b, t1, n, hf);  // dy2 c - dy1 s
          TileRegion r = region(step, 3);
          p.store(r, a);
          r.offset += hf;
          p.store(r, b);
        });
  };
  return k;
}

KernelTiming rope_backward(Device& dev, const RopeTable& table, const Buffer& dy, const Buffer& dx, int64_t tokens,
                           int64_t heads, const std::vector<int32_t>& positions, Stream* s) {
  return dev.launch(make_rope_backward(table, dy, dx, tokens, heads, positions), s);
}

std::vector<double> rope_backward_reference(const std::vector<float>& dy, int64_t tokens, int64_t heads,
                                            int64_t head_dim, const std::vector<int32_t>& positions, double theta,
                                            const RopeScaling* scaling) {
  PPU_CHECK(static_cast<int64_t>(dy.size()) == tokens * heads * head_dim && head_dim % 2 == 0 &&
                static_cast<int64_t>(positions.size()) == tokens,
            "rope_backward_reference: shapes");
  const int64_t half = head_dim / 2;
  const std::vector<double> inv_freq = rope_inv_freq(theta, head_dim, scaling);
  std::vector<double> dx(dy.size());
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const double a = double(positions[static_cast<size_t>(t)]) * inv_freq[static_cast<size_t>(i)];
      const double c = std::cos(a), s = std::sin(a);
      for (int64_t h = 0; h < heads; ++h) {
        const auto base = static_cast<size_t>((t * heads + h) * head_dim);
        const double y1 = dy[base + static_cast<size_t>(i)], y2 = dy[base + static_cast<size_t>(i + half)];
        dx[base + static_cast<size_t>(i)] = y1 * c + y2 * s;
        dx[base + static_cast<size_t>(i + half)] = y2 * c - y1 * s;
      }
    }
  return dx;
}

}  // namespace ppu::kernels
