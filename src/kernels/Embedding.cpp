#include "kernels/Embedding.hpp"

#include <algorithm>
#include <memory>

#include "kernels/KernelUtil.hpp"

namespace ppu::kernels {

Kernel make_embedding(const Buffer& table, const Buffer& out, int64_t vocab, int64_t hidden,
                      const std::vector<int32_t>& ids) {
  const std::string kname = "embedding";
  const auto tokens = static_cast<int64_t>(ids.size());
  expect_positive(kname, {{"vocab", vocab}, {"hidden", hidden}, {"tokens (ids.size())", tokens}});
  expect_numel(kname, "table", table, vocab * hidden, fmt::format("[{}, {}] (vocab, hidden)", vocab, hidden));
  expect_numel(kname, "output", out, tokens * hidden, fmt::format("[{}, {}] (tokens, hidden)", tokens, hidden));
  expect_token_ids(kname, ids, vocab);

  const int chunk = static_cast<int>(std::min<int64_t>(hidden, kEmbeddingChunkElems));
  const int64_t chunks = ceil_div(hidden, chunk);
  const int64_t per_block =
      std::clamp<int64_t>(ceil_div(tokens * chunks, kRowTargetBlocks), 1, kEmbeddingMaxTokensPerBlock);
  const int64_t groups = ceil_div(tokens, per_block);

  Kernel k;
  k.name = fmt::format("embedding {}x{} of {} {}->{}", tokens, hidden, vocab, dtype_name(table.dtype),
                       dtype_name(out.dtype));
  k.grid = groups * chunks;
  k.ops = {KernelOp::rows(OpClass::kEmbedding, RowDims{tokens, hidden, vocab})};
  k.args = {table.arg(), out.arg()};
  k.flops = 0.0;
  // The programs are a function of the shape, the dtypes (in the name) and the ids.
  k.timing_key = data_timing_key(k.name, ids);
  const auto shared_ids = std::make_shared<const std::vector<int32_t>>(ids);
  const DType buf_t = table.dtype;
  k.build = [shared_ids, buf_t, hidden, tokens, chunk, chunks, per_block](int64_t block, TileProgram& p) {
    const int64_t t0 = (block / chunks) * per_block;
    const int64_t c0 = (block % chunks) * chunk;
    const int width = static_cast<int>(std::min<int64_t>(chunk, hidden - c0));
    const int64_t n = std::min(per_block, tokens - t0);
    // Every block allocates the same buffers (block 0 sizes the SRAM a core reserves).
    const int stages = static_cast<int>(std::min<int64_t>(kEmbeddingStages, per_block));
    BufferId row[kEmbeddingStages];
    for (int s = 0; s < stages; ++s) row[s] = p.alloc(buf_t, 1, chunk, "row");
    const std::vector<int32_t>& id = *shared_ids;
    pipeline_steps(
        n, stages,
        [&](int64_t i, int slot) {
          p.load(row[slot], matrix_region(0, 0, hidden, id[static_cast<size_t>(t0 + i)], c0, 1, width));
        },
        [&](int64_t i, int slot) { p.store(matrix_region(1, 0, hidden, t0 + i, c0, 1, width), row[slot]); });
  };
  return k;
}

KernelTiming embedding(Device& dev, const Buffer& table, const Buffer& out, int64_t vocab, int64_t hidden,
                       const std::vector<int32_t>& ids, Stream* s) {
  return dev.launch(make_embedding(table, out, vocab, hidden, ids), s);
}

std::vector<float> embedding_reference(const std::vector<float>& table, int64_t vocab, int64_t hidden,
                                       const std::vector<int32_t>& ids) {
  PPU_CHECK(static_cast<int64_t>(table.size()) == vocab * hidden, "embedding_reference: table size");
  std::vector<float> out;
  out.reserve(ids.size() * static_cast<size_t>(hidden));
  for (int32_t id : ids) {
    PPU_CHECK(id >= 0 && id < vocab, "embedding_reference: id out of range");
    const auto row = table.begin() + int64_t{id} * hidden;
    out.insert(out.end(), row, row + hidden);
  }
  return out;
}

}  // namespace ppu::kernels
