#include "kernels/Gather.hpp"

#include <algorithm>
#include <memory>

#include "kernels/Embedding.hpp"
#include "kernels/KernelUtil.hpp"

namespace ppu::kernels {

namespace {

void check_indices(const std::string& kname, const std::vector<int32_t>& idx, int64_t n_src, const Buffer& src) {
  for (size_t i = 0; i < idx.size(); ++i)
    if (idx[i] < 0 || idx[i] >= n_src)
      throw UserError(fmt::format("{}: index {} at position {} is outside source '{}' rows [0, {})", kname, idx[i], i,
                                  src.name, n_src));
}

int64_t source_rows(const std::string& kname, const Buffer& src, int64_t width) {
  expect_positive(kname, {{"width", width}});
  if (src.numel % width != 0)
    throw UserError(fmt::format("{}: source '{}' has {} elements, not a whole number of rows of width {}", kname,
                                src.name, src.numel, width));
  return src.numel / width;
}

}  // namespace

Kernel make_gather_rows(const Buffer& src, int64_t width, const std::vector<int32_t>& rows, const Buffer& dst) {
  const std::string kname = "gather_rows";
  const int64_t n_src = source_rows(kname, src, width);
  if (rows.empty()) throw UserError("gather_rows: no rows to gather");
  check_indices(kname, rows, n_src, src);
  const auto n = static_cast<int64_t>(rows.size());
  expect_numel(kname, "destination", dst, n * width, fmt::format("[{}, {}]", n, width));
  // The same data movement as an embedding lookup: one program serves both.
  Kernel k = make_embedding(src, dst, n_src, width, rows);
  k.name = fmt::format("gather_rows {}x{}", n, width);
  k.ops = {KernelOp::rows(OpClass::kGather, RowDims{n, width, n_src})};
  return k;
}

KernelTiming gather_rows(Device& dev, const Buffer& src, int64_t width, const std::vector<int32_t>& rows,
                         const Buffer& dst, Stream* s) {
  return dev.launch(make_gather_rows(src, width, rows, dst), s);
}

Kernel make_gather_combine(const Buffer& src, int64_t width, const std::vector<int32_t>& index, int64_t k,
                           const Buffer& weights, const Buffer& dst, bool accumulate) {
  const std::string kname = "gather_combine";
  const int64_t n_src = source_rows(kname, src, width);
  expect_positive(kname, {{"k", k}});
  if (index.empty() || static_cast<int64_t>(index.size()) % k != 0)
    throw UserError(fmt::format("gather_combine: {} indices is not a positive multiple of k = {}", index.size(), k));
  check_indices(kname, index, n_src, src);
  const int64_t tokens = static_cast<int64_t>(index.size()) / k;
  expect_numel(kname, "weights", weights, tokens * k, fmt::format("[{}, {}]", tokens, k));
  expect_numel(kname, "destination", dst, tokens * width, fmt::format("[{}, {}]", tokens, width));
  const int64_t row_tiles = ceil_div(tokens, kGatherRows), col_tiles = ceil_div(width, kGatherChunk);
  Kernel kern;
  kern.name = kname;
  kern.ops = {KernelOp::rows(OpClass::kGather, RowDims{tokens, width, n_src, k})};
  kern.grid = row_tiles * col_tiles;
  kern.args = {src.arg(), weights.arg(), dst.arg()};
  // The programs are a function of these sizes, `accumulate` and the indices.
  kern.timing_key = data_timing_key(
      fmt::format("{} {}x{} k={} of {} accumulate {}", kname, tokens, width, k, n_src, accumulate), index);
  auto idx = std::make_shared<const std::vector<int32_t>>(index);
  kern.build = [=](int64_t b, TileProgram& p) {
    const int64_t r0 = (b / col_tiles) * kGatherRows, c0 = (b % col_tiles) * kGatherChunk;
    const int nr = static_cast<int>(std::min<int64_t>(kGatherRows, tokens - r0));
    const int nc = static_cast<int>(std::min<int64_t>(kGatherChunk, width - c0));
    const auto acc = p.alloc(DType::kF32, kGatherRows, kGatherChunk, "acc");
    const BufferId g[2] = {p.alloc(DType::kF32, kGatherRows, kGatherChunk, "g0"),
                           p.alloc(DType::kF32, kGatherRows, kGatherChunk, "g1")};
    const BufferId w[2] = {p.alloc(DType::kF32, kGatherRows, 1, "w0"), p.alloc(DType::kF32, kGatherRows, 1, "w1")};
    if (accumulate) p.load(acc, matrix_region(2, 0, width, r0, c0, nr, nc));
    else p.fill(acc, nr, nc, 0.0f);
    for (int64_t j = 0; j < k; ++j) {
      const int s = static_cast<int>(j % 2);
      for (int i = 0; i < nr; ++i) {
        const int64_t row = (*idx)[static_cast<size_t>((r0 + i) * k + j)];
        p.load(g[s], TileRegion{0, row * width + c0, width, 1, nc}, i);
      }
      p.load(w[s], TileRegion{1, r0 * k + j, k, nr, 1});  // column j of weights, one value per row
      p.binary(BinaryOp::kMul, g[s], g[s], w[s], nr, nc, Broadcast::kRow);
      p.binary(BinaryOp::kAdd, acc, acc, g[s], nr, nc);
    }
    p.store(matrix_region(2, 0, width, r0, c0, nr, nc), acc);
  };
  return kern;
}

KernelTiming gather_combine(Device& dev, const Buffer& src, int64_t width, const std::vector<int32_t>& index, int64_t k,
                            const Buffer& weights, const Buffer& dst, bool accumulate, Stream* s) {
  return dev.launch(make_gather_combine(src, width, index, k, weights, dst, accumulate), s);
}

std::vector<float> gather_rows_reference(const std::vector<float>& src, int64_t width, const std::vector<int32_t>& rows) {
  std::vector<float> out;
  out.reserve(rows.size() * static_cast<size_t>(width));
  for (int32_t r : rows)
    for (int64_t c = 0; c < width; ++c) out.push_back(src[static_cast<size_t>(r * width + c)]);
  return out;
}

std::vector<float> gather_combine_reference(const std::vector<float>& src, int64_t width,
                                            const std::vector<int32_t>& index, int64_t k,
                                            const std::vector<float>& weights, const std::vector<float>& dst_in,
                                            bool accumulate) {
  const int64_t tokens = static_cast<int64_t>(index.size()) / k;
  std::vector<float> out(static_cast<size_t>(tokens * width));
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t c = 0; c < width; ++c) {
      double acc = accumulate ? dst_in[static_cast<size_t>(t * width + c)] : 0.0;
      for (int64_t j = 0; j < k; ++j)
        acc += double(weights[static_cast<size_t>(t * k + j)]) *
               src[static_cast<size_t>(index[static_cast<size_t>(t * k + j)] * width + c)];
      out[static_cast<size_t>(t * width + c)] = static_cast<float>(acc);
    }
  return out;
}

}  // namespace ppu::kernels
