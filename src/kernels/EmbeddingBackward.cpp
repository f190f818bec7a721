#include "kernels/EmbeddingBackward.hpp"

#include <algorithm>
#include <memory>
#include <numeric>

#include "kernels/KernelUtil.hpp"

namespace ppu::kernels {

namespace {

// The token positions grouped by id, and the blocks' shares of them.
struct GradPlan {
  std::vector<int32_t> ids;    // distinct ids, ascending
  std::vector<int64_t> first;  // id j's positions are pos[first[j] .. first[j + 1])
  std::vector<int32_t> pos;    // token positions, by id, ascending within an id
  std::vector<int64_t> group;  // block group g sums ids [group[g], group[g + 1])
  int stages = 1;              // dx rows in flight (<= the most rows of a group)
  int accs = 1;                // accumulator ring (<= the most ids of a group)
};

GradPlan plan_grad(const std::vector<int32_t>& ids, int64_t chunks) {
  GradPlan g;
  const auto tokens = static_cast<int64_t>(ids.size());
  g.pos.resize(ids.size());
  std::iota(g.pos.begin(), g.pos.end(), 0);
  std::stable_sort(g.pos.begin(), g.pos.end(),
                   [&](int32_t a, int32_t b) { return ids[static_cast<size_t>(a)] < ids[static_cast<size_t>(b)]; });
  for (int64_t i = 0; i < tokens; ++i) {
    const int32_t id = ids[static_cast<size_t>(g.pos[static_cast<size_t>(i)])];
    if (g.ids.empty() || g.ids.back() != id) {
      g.ids.push_back(id);
      g.first.push_back(i);
    }
  }
  g.first.push_back(tokens);

  const int64_t per_block =
      std::clamp<int64_t>(ceil_div(tokens * chunks, kRowTargetBlocks), 1, kEmbeddingBackwardMaxRowsPerBlock);
  const auto nids = static_cast<int64_t>(g.ids.size());
  int64_t most_rows = 0, most_ids = 0;
  g.group.push_back(0);
  for (int64_t j = 0; j < nids;) {
    const int64_t start = j;
    int64_t rows = 0;
    do {  // at least one id per group, however many rows it has
      rows += g.first[static_cast<size_t>(j + 1)] - g.first[static_cast<size_t>(j)];
      ++j;
    } while (j < nids && rows + g.first[static_cast<size_t>(j + 1)] - g.first[static_cast<size_t>(j)] <= per_block);
    g.group.push_back(j);
    most_rows = std::max(most_rows, rows);
    most_ids = std::max(most_ids, j - start);
  }
  g.stages = static_cast<int>(std::min<int64_t>(kEmbeddingBackwardStages, most_rows));
  // stages + 1 accumulators let each id's table row load run as far ahead as its dx rows: the
  // id that used the same accumulator before ended at least stages + 1 rows earlier, so its store
  // is already in the program when the load is emitted.
  g.accs = static_cast<int>(std::min<int64_t>(g.stages + 1, most_ids));
  return g;
}

}  // namespace

Kernel make_embedding_backward(const Buffer& dx, const Buffer& dtable, int64_t vocab, int64_t hidden,
                               const std::vector<int32_t>& ids) {
  const std::string kname = "embedding_backward";
  const auto tokens = static_cast<int64_t>(ids.size());
  expect_positive(kname, {{"vocab", vocab}, {"hidden", hidden}, {"tokens (ids.size())", tokens}});
  expect_dtype_in(kname, "dtable", dtable, {DType::kF32});
  expect_dtype_in(kname, "dx", dx, {DType::kF32, DType::kBF16, DType::kF16});
  expect_numel(kname, "dtable", dtable, vocab * hidden, fmt::format("[{}, {}] (vocab, hidden)", vocab, hidden));
  expect_numel(kname, "dx", dx, tokens * hidden, fmt::format("[{}, {}] (tokens, hidden)", tokens, hidden));
  expect_token_ids(kname, ids, vocab);

  const int chunk = static_cast<int>(std::min<int64_t>(hidden, kEmbeddingBackwardChunkElems));
  const int64_t chunks = ceil_div(hidden, chunk);
  const auto plan = std::make_shared<const GradPlan>(plan_grad(ids, chunks));

  Kernel k;
  k.name = fmt::format("embedding_backward {}x{} into {} {}", tokens, hidden, vocab, dtype_name(dx.dtype));
  k.grid = static_cast<int64_t>(plan->group.size() - 1) * chunks;
  k.args = {dx.arg(), dtable.arg()};
  k.flops = double(tokens) * double(hidden);  // one add per element of dx
  // The programs are a function of the sizes and dtype (in the name) and the ids.
  k.timing_key = data_timing_key(k.name, ids);
  k.build = [plan, hidden, chunk, chunks](int64_t block, TileProgram& p) {
    const GradPlan& g = *plan;
    const auto grp = static_cast<size_t>(block / chunks);
    const int64_t c0 = (block % chunks) * chunk;
    const int width = static_cast<int>(std::min<int64_t>(chunk, hidden - c0));
    const int64_t j0 = g.group[grp], j1 = g.group[grp + 1];
    const int64_t p0 = g.first[static_cast<size_t>(j0)], steps = g.first[static_cast<size_t>(j1)] - p0;
    // Every block allocates the same buffers (block 0 sizes the SRAM a core reserves).
    BufferId row[kEmbeddingBackwardStages], acc[kEmbeddingBackwardStages + 1];
    for (int s = 0; s < g.stages; ++s) row[s] = p.alloc(DType::kF32, 1, chunk, "dx_row");
    for (int a = 0; a < g.accs; ++a) acc[a] = p.alloc(DType::kF32, 1, chunk, "dtable_row");
    // The id (index into g.ids) that step i of this block adds into.
    auto id_of = [&](int64_t i) {
      const auto it = std::upper_bound(g.first.begin() + j0, g.first.begin() + j1, p0 + i);
      return static_cast<int64_t>(it - g.first.begin()) - 1;
    };
    auto table_row = [&](int64_t j) { return matrix_region(1, 0, hidden, g.ids[static_cast<size_t>(j)], c0, 1, width); };
    pipeline_steps(
        steps, g.stages,
        [&](int64_t i, int slot) {
          const int64_t j = id_of(i);
          if (p0 + i == g.first[static_cast<size_t>(j)]) p.load(acc[(j - j0) % g.accs], table_row(j));
          const int32_t t = g.pos[static_cast<size_t>(p0 + i)];
          p.load(row[slot], matrix_region(0, 0, hidden, t, c0, 1, width));
        },
        [&](int64_t i, int slot) {
          const int64_t j = id_of(i);
          const BufferId a = acc[(j - j0) % g.accs];
          p.binary(BinaryOp::kAdd, a, a, row[slot], 1, width);
          if (p0 + i + 1 == g.first[static_cast<size_t>(j + 1)]) p.store(table_row(j), a);
        });
  };
  return k;
}

KernelTiming embedding_backward(Device& dev, const Buffer& dx, const Buffer& dtable, int64_t vocab, int64_t hidden,
                                const std::vector<int32_t>& ids, Stream* s) {
  return dev.launch(make_embedding_backward(dx, dtable, vocab, hidden, ids), s);
}

Kernel make_embedding_grad_zero(const Buffer& dtable) {
  const std::string kname = "embedding_grad_zero";
  expect_dtype_in(kname, "dtable", dtable, {DType::kF32});
  const int64_t n = dtable.numel;
  const int64_t tiles = ceil_div(n, kEmbeddingGradZeroTileElems);
  const int64_t per_block = ceil_div(tiles, kRowTargetBlocks);
  const int tile = static_cast<int>(std::min<int64_t>(n, kEmbeddingGradZeroTileElems));
  Kernel k;
  k.name = fmt::format("embedding_grad_zero {}", n);
  k.timing_key = k.name;  // a function of the size alone
  k.grid = ceil_div(tiles, per_block);
  k.args = {dtable.arg()};
  k.build = [n, tiles, per_block, tile](int64_t block, TileProgram& p) {
    const BufferId zero = p.alloc(DType::kF32, 1, tile, "zero");
    p.fill(zero, 1, tile, 0.0f);
    for (int64_t i = block * per_block; i < std::min(tiles, (block + 1) * per_block); ++i) {
      const int64_t at = i * tile;
      p.store(TileRegion{0, at, tile, 1, static_cast<int>(std::min<int64_t>(tile, n - at))}, zero);
    }
  };
  return k;
}

KernelTiming embedding_grad_zero(Device& dev, const Buffer& dtable, Stream* s) {
  return dev.launch(make_embedding_grad_zero(dtable), s);
}

std::vector<double> embedding_backward_reference(const std::vector<float>& dx, const std::vector<float>& dtable_in,
                                                 int64_t vocab, int64_t hidden, const std::vector<int32_t>& ids) {
  PPU_CHECK(static_cast<int64_t>(dtable_in.size()) == vocab * hidden, "embedding_backward_reference: table size");
  PPU_CHECK(dx.size() == ids.size() * static_cast<size_t>(hidden), "embedding_backward_reference: dx size");
  std::vector<double> out(dtable_in.begin(), dtable_in.end());
  for (size_t t = 0; t < ids.size(); ++t) {
    PPU_CHECK(ids[t] >= 0 && ids[t] < vocab, "embedding_backward_reference: id out of range");
    for (int64_t c = 0; c < hidden; ++c)
      out[static_cast<size_t>(int64_t{ids[t]} * hidden + c)] += dx[t * static_cast<size_t>(hidden) + static_cast<size_t>(c)];
  }
  return out;
}

}  // namespace ppu::kernels
