#include "kernels/GatherBackward.hpp"

#include <algorithm>
#include <memory>

#include "kernels/Gather.hpp"
#include "kernels/KernelUtil.hpp"

namespace ppu::kernels {

Kernel make_gather_combine_backward(const Buffer& src, int64_t width, const std::vector<int32_t>& index, int64_t k,
                                    const Buffer& weights, const Buffer& dy, const Buffer& d_src,
                                    const Buffer& d_weights) {
  const std::string kname = "gather_combine_backward";
  expect_positive(kname, {{"width", width}, {"k", k}});
  if (src.numel % width != 0)
    throw UserError(fmt::format("{}: source '{}' has {} elements, not a whole number of rows of width {}", kname,
                                src.name, src.numel, width));
  const int64_t n_src = src.numel / width;
  if (index.empty() || static_cast<int64_t>(index.size()) % k != 0)
    throw UserError(fmt::format("{}: {} indices is not a positive multiple of k = {}", kname, index.size(), k));
  std::vector<int64_t> user(static_cast<size_t>(n_src), -1);  // position in index naming each source row
  for (size_t i = 0; i < index.size(); ++i) {
    const int32_t r = index[i];
    if (r < 0 || r >= n_src)
      throw UserError(fmt::format("{}: index {} at position {} is outside source '{}' rows [0, {})", kname, r, i,
                                  src.name, n_src));
    int64_t& first = user[static_cast<size_t>(r)];
    if (first >= 0)
      throw UserError(fmt::format("{}: source row {} is named at positions {} and {}; each row may be used by one "
                                  "(token, choice) only (its gradient would need a sum)",
                                  kname, r, first, i));
    first = static_cast<int64_t>(i);
  }
  const int64_t tokens = static_cast<int64_t>(index.size()) / k;
  const auto tk = fmt::format("[{}, {}] (tokens, k)", tokens, k);
  const auto tw = fmt::format("[{}, {}] (tokens, width)", tokens, width);
  expect_numel(kname, "weights", weights, tokens * k, tk);
  expect_numel(kname, "gradient dy", dy, tokens * width, tw);
  expect_numel(kname, "output d_src", d_src, n_src * width, fmt::format("[{}, {}] (n_src, width)", n_src, width));
  expect_numel(kname, "output d_weights", d_weights, tokens * k, tk);
  const std::pair<const char*, const Buffer*> bufs[] = {
      {"source", &src}, {"weights", &weights}, {"gradient dy", &dy}, {"output d_src", &d_src}, {"output d_weights", &d_weights}};
  for (const auto& [role, b] : bufs) expect_dtype_in(kname, role, *b, {DType::kF32, DType::kBF16, DType::kF16});
  for (int o = 3; o < 5; ++o)
    for (int i = 0; i < 5; ++i) {
      const Buffer& a = *bufs[o].second;
      const Buffer& b = *bufs[i].second;
      if (i != o && a.addr < b.addr + b.bytes && b.addr < a.addr + a.bytes)
        throw UserError(fmt::format("{}: {} '{}' overlaps {} '{}'; they must be disjoint buffers", kname, bufs[o].first,
                                    a.name, bufs[i].first, b.name));
    }

  const int64_t row_tiles = ceil_div(tokens, kGatherRows), chunks = ceil_div(width, kCombineBwChunk);
  Kernel kern;
  kern.name = fmt::format("{} {}x{} k={}", kname, tokens, width, k);
  kern.ops = {KernelOp::rows(OpClass::kGather, RowDims{tokens, width})};
  kern.grid = row_tiles;
  kern.args = {src.arg(), weights.arg(), dy.arg(), d_src.arg(), d_weights.arg()};
  kern.flops = 3.0 * double(tokens) * double(k) * double(width);
  // The programs are a function of the sizes (in the name, n_src in the arguments') and the indices.
  kern.timing_key = data_timing_key(fmt::format("{} of {}", kern.name, n_src), index);
  auto idx = std::make_shared<const std::vector<int32_t>>(index);
  const int cw = static_cast<int>(std::min<int64_t>(width, kCombineBwChunk));
  kern.build = [=](int64_t block, TileProgram& p) {
    const int64_t r0 = block * kGatherRows;
    const int nr = static_cast<int>(std::min<int64_t>(kGatherRows, tokens - r0));
    BufferId dyb[2], g[2], w[2];
    for (int s = 0; s < 2; ++s) {
      dyb[s] = p.alloc(DType::kF32, kGatherRows, cw, "dy");
      g[s] = p.alloc(DType::kF32, kGatherRows, cw, "src_rows");
      w[s] = p.alloc(DType::kF32, kGatherRows, 1, "w_j");
    }
    std::vector<BufferId> acc(static_cast<size_t>(k));
    for (auto& a : acc) a = p.alloc(DType::kF32, kGatherRows, 1, "d_w_j");
    auto source_row = [&](int r, int64_t j) { return int64_t{(*idx)[static_cast<size_t>((r0 + r) * k + j)]}; };
    // Step i: chunk i / k of the width, choice i % k.
    pipeline_steps(
        chunks * k, 2,
        [&](int64_t i, int slot) {
          const int64_t c = i / k, j = i % k, c0 = c * kCombineBwChunk;
          const int nc = static_cast<int>(std::min<int64_t>(kCombineBwChunk, width - c0));
          if (j == 0) p.load(dyb[c % 2], matrix_region(2, 0, width, r0, c0, nr, nc));
          for (int r = 0; r < nr; ++r) p.load(g[slot], TileRegion{0, source_row(r, j) * width + c0, width, 1, nc}, r);
          p.load(w[slot], TileRegion{1, r0 * k + j, k, nr, 1});  // column j of the weights
        },
        [&](int64_t i, int slot) {
          const int64_t c = i / k, j = i % k, c0 = c * kCombineBwChunk;
          const int nc = static_cast<int>(std::min<int64_t>(kCombineBwChunk, width - c0));
          const BufferId y = dyb[c % 2], a = acc[static_cast<size_t>(j)];
          p.binary(BinaryOp::kMul, g[slot], g[slot], y, nr, nc);
          p.reduce(ReduceOp::kSum, a, g[slot], nr, nc, /*accumulate=*/c > 0);
          p.binary(BinaryOp::kMul, g[slot], y, w[slot], nr, nc, Broadcast::kRow);  // w[t, j] * dy[t]
          for (int r = 0; r < nr; ++r) p.store(TileRegion{3, source_row(r, j) * width + c0, width, 1, nc}, g[slot], r);
          if (c == chunks - 1) p.store(TileRegion{4, r0 * k + j, k, nr, 1}, a);
        });
  };
  return kern;
}

KernelTiming gather_combine_backward(Device& dev, const Buffer& src, int64_t width, const std::vector<int32_t>& index,
                                     int64_t k, const Buffer& weights, const Buffer& dy, const Buffer& d_src,
                                     const Buffer& d_weights, Stream* s) {
  return dev.launch(make_gather_combine_backward(src, width, index, k, weights, dy, d_src, d_weights), s);
}

CombineGrads gather_combine_backward_reference(const std::vector<float>& src, int64_t width,
                                               const std::vector<int32_t>& index, int64_t k,
                                               const std::vector<float>& weights, const std::vector<float>& dy) {
  const int64_t tokens = static_cast<int64_t>(index.size()) / k;
  PPU_CHECK(static_cast<int64_t>(weights.size()) == tokens * k && static_cast<int64_t>(dy.size()) == tokens * width &&
                static_cast<int64_t>(src.size()) % width == 0,
            "gather_combine_backward_reference: sizes");
  CombineGrads r{std::vector<double>(src.size()), std::vector<double>(weights.size())};
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const auto tj = static_cast<size_t>(t * k + j);
      const int64_t row = index[tj];
      double dot = 0;
      for (int64_t c = 0; c < width; ++c) {
        const double y = dy[static_cast<size_t>(t * width + c)];
        dot += double(src[static_cast<size_t>(row * width + c)]) * y;
        r.d_src[static_cast<size_t>(row * width + c)] = double(weights[tj]) * y;
      }
      r.d_weights[tj] = dot;
    }
  return r;
}

}  // namespace ppu::kernels
