#include "kernels/Rope.hpp"
#include "kernels/RopeInternal.hpp"

#include <algorithm>
#include <cmath>
#include <memory>

#include "kernels/KernelUtil.hpp"

namespace ppu::kernels {

namespace {


// One block's work. Head-major (tokens > 1): tokens [token0, token0 + tokens) at positions pos0 +
// j * pos_step, heads [head0, head0 + heads) one per step, rows = tokens. Token-major (tokens == 1):
// one token, heads [head0, head0 + heads) as the rows of a single step.
struct RopeItem {
  int64_t token0 = 0;
  int32_t tokens = 1;
  int32_t head0 = 0, heads = 1;
  int64_t pos0 = 0, pos_step = 0;
};

}  // namespace

std::vector<double> rope_inv_freq(double theta, int64_t head_dim, const RopeScaling* scaling) {
  const int64_t half = head_dim / 2;
  std::vector<double> f(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    f[static_cast<size_t>(i)] = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
  if (!scaling) return f;
  const RopeScaling& sc = *scaling;
  if (!(sc.factor >= 1.0) || !(sc.low_freq_factor > 0) || !(sc.high_freq_factor > sc.low_freq_factor) ||
      sc.original_max_positions <= 0)
    throw UserError(fmt::format("rope scaling: factor {} (valid: >= 1), low_freq_factor {} and high_freq_factor {} "
                                "(valid: 0 < low < high), original_max_position_embeddings {} (valid: > 0)",
                                sc.factor, sc.low_freq_factor, sc.high_freq_factor, sc.original_max_positions));
  const double old_len = static_cast<double>(sc.original_max_positions);
  const double low_wavelen = old_len / sc.low_freq_factor, high_wavelen = old_len / sc.high_freq_factor;
  for (double& x : f) {
    const double wavelen = 2.0 * M_PI / x;
    if (wavelen < high_wavelen) continue;
    if (wavelen > low_wavelen) {
      x /= sc.factor;
      continue;
    }
    const double s = (old_len / wavelen - sc.low_freq_factor) / (sc.high_freq_factor - sc.low_freq_factor);
    x = (1.0 - s) * x / sc.factor + s * x;
  }
  return f;
}

std::vector<float> rope_table_values(double theta, int64_t head_dim, int64_t max_positions, bool sine,
                                     const RopeScaling* scaling) {
  const int64_t half = head_dim / 2;
  const std::vector<double> inv_freq = rope_inv_freq(theta, head_dim, scaling);
  std::vector<float> v(static_cast<size_t>(max_positions * half));
  for (int64_t p = 0; p < max_positions; ++p)
    for (int64_t i = 0; i < half; ++i) {
      const double a = static_cast<double>(p) * inv_freq[static_cast<size_t>(i)];
      v[static_cast<size_t>(p * half + i)] = static_cast<float>(sine ? std::sin(a) : std::cos(a));
    }
  return v;
}

RopeTable make_rope_table(Device& dev, double theta, int64_t head_dim, int64_t max_positions, Stream* s,
                          const RopeScaling* scaling) {
  if (head_dim <= 0 || head_dim % 2 != 0)
    throw UserError(fmt::format("rope table: head_dim = {}; it must be positive and even", head_dim));
  if (!std::isfinite(theta) || theta <= 0.0)
    throw UserError(
        fmt::format("rope table: theta = {}; it must be finite and > 0 (Llama 2 uses 1e4, Qwen3 1e6)", theta));
  if (max_positions <= 0)
    throw UserError(fmt::format("rope table: max_positions = {}; it must be positive", max_positions));
  RopeTable t;
  t.theta = theta;
  t.head_dim = head_dim;
  t.max_positions = max_positions;
  const int64_t numel = max_positions * (head_dim / 2);
  t.cos = dev.alloc(DType::kF32, numel, "rope.cos");
  t.sin = dev.alloc(DType::kF32, numel, "rope.sin");
  if (dev.functional()) {
    dev.upload(t.cos, rope_table_values(theta, head_dim, max_positions, false, scaling), s);
    dev.upload(t.sin, rope_table_values(theta, head_dim, max_positions, true, scaling), s);
  } else {
    dev.copy_to_device_timed(t.cos, s);
    dev.copy_to_device_timed(t.sin, s);
  }
  return t;
}

void free_rope_table(Device& dev, RopeTable& table) {
  if (table.cos.valid()) dev.free(table.cos);
  if (table.sin.valid()) dev.free(table.sin);
}

void check_rope_table_and_positions(const std::string& kname, const RopeTable& table, int64_t tokens, int64_t heads,
                                    const std::vector<int32_t>& positions) {
  expect_positive(kname, {{"tokens", tokens}, {"heads", heads}});
  const int64_t d = table.head_dim, half = d / 2;
  if (d <= 0 || d % 2 != 0 || table.max_positions <= 0)
    throw UserError(fmt::format("{}: the rope table has head_dim {} and {} positions; build it with make_rope_table",
                                kname, d, table.max_positions));
  if (heads > INT32_MAX / d)
    throw UserError(fmt::format("{}: heads = {} is too large (heads * head_dim must stay below 2^31)", kname, heads));
  expect_numel(kname, "table cos", table.cos, table.max_positions * half,
               fmt::format("[{}, {}] (max_positions, head_dim / 2)", table.max_positions, half));
  expect_numel(kname, "table sin", table.sin, table.max_positions * half,
               fmt::format("[{}, {}] (max_positions, head_dim / 2)", table.max_positions, half));
  if (static_cast<int64_t>(positions.size()) != tokens)
    throw UserError(
        fmt::format("{}: {} positions given for {} tokens; one per token is needed", kname, positions.size(), tokens));
  for (int64_t t = 0; t < tokens; ++t) {
    const int32_t pos = positions[static_cast<size_t>(t)];
    if (pos < 0 || pos >= table.max_positions)
      throw UserError(
          fmt::format("{}: token {} is at position {}, outside the rope table's {} positions (valid: 0 "
                      "to {}); build a larger table",
                      kname, t, pos, table.max_positions, table.max_positions - 1));
  }
}

Kernel make_rope(const RopeTable& table, const Buffer& x, const Buffer& out, int64_t tokens, int64_t heads,
                 const std::vector<int32_t>& positions, int64_t out_token0) {
  const std::string kname = "rope";
  check_rope_table_and_positions(kname, table, tokens, heads, positions);
  const int64_t d = table.head_dim;
  expect_numel(kname, "input x", x, tokens * heads * d,
               fmt::format("[{}, {}, {}] (tokens, heads, head_dim)", tokens, heads, d));
  if (out_token0 < 0 || out.numel % (heads * d) != 0 || out.numel / (heads * d) < out_token0 + tokens)
    throw UserError(
        fmt::format("{}: output '{}' has {} elements; it must be [out_tokens, {}, {}] (out_tokens, heads, "
                    "head_dim) with out_tokens >= out_token0 + tokens = {} + {}",
                    kname, out.name, out.numel, heads, d, out_token0, tokens));
  return rope_kernel(kname, table, x, out, tokens, heads, positions, out_token0, /*inverse=*/false);
}

Kernel rope_kernel(const std::string& kname, const RopeTable& table, const Buffer& x, const Buffer& out, int64_t tokens,
                   int64_t heads, const std::vector<int32_t>& positions, int64_t out_token0, bool inverse) {
  const int64_t d = table.head_dim, half = d / 2;
  // Rows of a tile: kRopeTileRows, fewer when a row (d/2 elements) is long.
  const int tile_rows = static_cast<int>(std::clamp<int64_t>(kRopeTileElems / half, 1, kRopeTileRows));
  // Runs of tokens with a constant position step >= 0, each at most tile_rows long.
  struct Run {
    int64_t t0, n, pos0, step;
  };
  std::vector<Run> runs;
  for (int64_t t = 0; t < tokens;) {
    Run r{t, 1, positions[static_cast<size_t>(t)], 0};
    if (t + 1 < tokens && positions[static_cast<size_t>(t + 1)] >= r.pos0) {
      r.step = positions[static_cast<size_t>(t + 1)] - r.pos0;
      while (r.n < tile_rows && t + r.n < tokens &&
             positions[static_cast<size_t>(t + r.n)] - positions[static_cast<size_t>(t + r.n - 1)] == r.step)
        ++r.n;
    }
    runs.push_back(r);
    t += r.n;
  }
  int64_t multi = 0;
  for (const Run& r : runs) multi += r.n > 1;
  // Heads of one head-major block: enough blocks to fill the chip, all heads when there are.
  const int64_t head_groups = std::clamp<int64_t>(kRopeTargetBlocks / std::max<int64_t>(multi, 1), 1, heads);
  const int64_t heads_per_group = ceil_div(heads, head_groups);
  auto items = std::make_shared<std::vector<RopeItem>>();
  int alloc_rows = 1;
  for (const Run& r : runs) {
    const int64_t per = r.n > 1 ? heads_per_group : tile_rows;  // head-major: heads per block; else rows
    for (int64_t h = 0; h < heads; h += per) {
      RopeItem it;
      it.token0 = r.t0;
      it.tokens = static_cast<int32_t>(r.n);
      it.head0 = static_cast<int32_t>(h);
      it.heads = static_cast<int32_t>(std::min(per, heads - h));
      it.pos0 = r.pos0;
      it.pos_step = r.step;
      items->push_back(it);
      alloc_rows = std::max(alloc_rows, r.n > 1 ? it.tokens : it.heads);
    }
  }

  Kernel k;
  k.name = fmt::format("{} {}x{}x{} {}->{}", kname, tokens, heads, d, dtype_name(x.dtype), dtype_name(out.dtype));
  k.ops = {KernelOp::rope(RopeDims{tokens, heads, d})};
  k.grid = static_cast<int64_t>(items->size());
  k.args = {x.arg(), table.cos.arg(), table.sin.arg(), out.arg()};
  k.flops = 3.0 * double(tokens) * double(heads) * double(d);  // 6 ops per rotated pair
  const int hf = static_cast<int>(half);
  k.build = [items, heads, d, hf, alloc_rows, out_token0, inverse](int64_t block, TileProgram& p) {
    const RopeItem& it = (*items)[static_cast<size_t>(block)];
    const bool head_major = it.tokens > 1;
    const int64_t steps = head_major ? it.heads : 1;
    const int rows = head_major ? it.tokens : it.heads;
    // Every block allocates the same buffers (block 0 sizes the SRAM a core reserves).
    BufferId x1[kRopeStages], x2[kRopeStages];
    for (int s = 0; s < kRopeStages; ++s) {
      x1[s] = p.alloc(DType::kF32, alloc_rows, hf, "x1");
      x2[s] = p.alloc(DType::kF32, alloc_rows, hf, "x2");
    }
    const BufferId t1 = p.alloc(DType::kF32, alloc_rows, hf, "x1*sin");
    const BufferId t2 = p.alloc(DType::kF32, alloc_rows, hf, "x2*sin");
    const BufferId cs = p.alloc(DType::kF32, alloc_rows, hf, "cos");
    const BufferId sn = p.alloc(DType::kF32, alloc_rows, hf, "sin");
    const int table_rows = head_major ? it.tokens : 1;
    const int64_t table_stride = it.pos_step * hf;
    p.load(cs, TileRegion{1, it.pos0 * hf, table_stride, table_rows, hf});
    p.load(sn, TileRegion{2, it.pos0 * hf, table_stride, table_rows, hf});
    const Broadcast bc = head_major ? Broadcast::kNone : Broadcast::kCol;
    // Region of the first half of step `s` in tensor `arg` whose token 0 is at `token_shift`.
    auto region = [&](int64_t s, uint16_t arg, int64_t token_shift) {
      const int64_t head = it.head0 + (head_major ? s : 0);
      const int64_t offset = ((token_shift + it.token0) * heads + head) * d;
      return TileRegion{arg, offset, head_major ? heads * d : d, rows, hf};
    };
    pipeline_steps(
        steps, kRopeStages,
        [&](int64_t s, int slot) {
          TileRegion r = region(s, 0, 0);
          p.load(x1[slot], r);
          r.offset += hf;
          p.load(x2[slot], r);
        },
        [&](int64_t s, int slot) {
          const BufferId a = x1[slot], b = x2[slot];
          p.binary(BinaryOp::kMul, t1, a, sn, rows, hf, bc);
          p.binary(BinaryOp::kMul, t2, b, sn, rows, hf, bc);
          p.binary(BinaryOp::kMul, a, a, cs, rows, hf, bc);
          p.binary(BinaryOp::kMul, b, b, cs, rows, hf, bc);
          // Forward: x1 c - x2 s, x2 c + x1 s. Inverse (the backward: the transposed rotation,
          // by -angle): x1 c + x2 s, x2 c - x1 s.
          p.binary(inverse ? BinaryOp::kAdd : BinaryOp::kSub, a, a, t2, rows, hf);
          p.binary(inverse ? BinaryOp::kSub : BinaryOp::kAdd, b, b, t1, rows, hf);
          TileRegion r = region(s, 3, out_token0);
          p.store(r, a);
          r.offset += hf;
          p.store(r, b);
        });
  };
  return k;
}

KernelTiming rope(Device& dev, const RopeTable& table, const Buffer& x, const Buffer& out, int64_t tokens,
                  int64_t heads, const std::vector<int32_t>& positions, int64_t out_token0, Stream* s) {
  return dev.launch(make_rope(table, x, out, tokens, heads, positions, out_token0), s);
}

std::vector<double> rope_reference(const std::vector<float>& x, int64_t tokens, int64_t heads, int64_t head_dim,
                                   const std::vector<int32_t>& positions, double theta) {
  PPU_CHECK(static_cast<int64_t>(x.size()) == tokens * heads * head_dim && head_dim % 2 == 0 &&
                static_cast<int64_t>(positions.size()) == tokens,
            "rope_reference: shapes");
  const int64_t half = head_dim / 2;
  std::vector<double> out(x.size());
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const double a = static_cast<double>(positions[static_cast<size_t>(t)]) *
                       std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
      const double c = std::cos(a), s = std::sin(a);
      for (int64_t h = 0; h < heads; ++h) {
        const auto base = static_cast<size_t>((t * heads + h) * head_dim);
        const double x1 = x[base + static_cast<size_t>(i)], x2 = x[base + static_cast<size_t>(i + half)];
        out[base + static_cast<size_t>(i)] = x1 * c - x2 * s;
        out[base + static_cast<size_t>(i + half)] = x2 * c + x1 * s;
      }
    }
  return out;
}

}  // namespace ppu::kernels
