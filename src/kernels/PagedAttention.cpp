#include "kernels/PagedAttention.hpp"

#include <algorithm>
#include <memory>

#include "kernels/AttentionInternal.hpp"
#include "kernels/Elementwise.hpp"
#include "kernels/KernelUtil.hpp"

namespace ppu::kernels {

namespace {

bool power_of_two(int64_t x) { return x > 0 && (x & (x - 1)) == 0; }

void check_block_size(const std::string& kname, int64_t block_size) {
  if (!power_of_two(block_size) || block_size < kPagedMinBlockSize || block_size > kPagedMaxBlockSize)
    throw UserError(fmt::format("{}: block_size = {}; valid: a power of two from {} to {} (16 is vLLM's default)",
                                kname, block_size, kPagedMinBlockSize, kPagedMaxBlockSize));
}

// Blocks of a pool [num_blocks, block_size, kv_heads, head_dim]; UserError unless its numel is a
// positive whole number of blocks.
int64_t pool_blocks(const std::string& kname, const char* role, const Buffer& pool, int64_t block_size,
                    int64_t kv_heads, int64_t head_dim) {
  const int64_t per_block = block_size * kv_heads * head_dim;
  if (pool.numel <= 0 || pool.numel % per_block != 0)
    throw UserError(fmt::format("{}: {} '{}' has {} elements, not a whole number of blocks [{}, {}, {}] (block_size, "
                                "kv_heads, head_dim) = {} elements each",
                                kname, role, pool.name, pool.numel, block_size, kv_heads, head_dim, per_block));
  return pool.numel / per_block;
}

// The table must reach `positions` positions, and the entries those use must be pool blocks.
void check_table(const std::string& kname, const std::vector<int32_t>& table, int64_t block_size, int64_t positions,
                 int64_t num_blocks) {
  const int64_t need = ceil_div(positions, block_size);
  if (static_cast<int64_t>(table.size()) < need)
    throw UserError(fmt::format("{}: the block table has {} entries ({} positions at block_size {}) but {} positions "
                                "need {}",
                                kname, table.size(), static_cast<int64_t>(table.size()) * block_size, block_size,
                                positions, need));
  for (int64_t i = 0; i < need; ++i) {
    const int32_t b = table[static_cast<size_t>(i)];
    if (b < 0 || b >= num_blocks)
      throw UserError(fmt::format("{}: block table entry {} is block {}, outside the pool's {} blocks (valid: 0 to {})",
                                  kname, i, b, num_blocks, num_blocks - 1));
  }
}

// The checks of one sequence (kname names it), and the part launch_attention runs.
AttentionPart checked_part(const std::string& kname, const AttentionShape& s, const Buffer& q, const Buffer& out,
                           const PagedKvCache& cache, const std::vector<int32_t>& table) {
  if (s.kv_capacity != 0)
    throw UserError(fmt::format("{}: kv_capacity = {}; leave it 0 - the block table sets the positions a paged call "
                                "may address",
                                kname, s.kv_capacity));
  check_block_size(kname, cache.block_size);
  AttentionShape sh = s;
  sh.kv_capacity = std::max<int64_t>(s.kv_len(), 1);  // the real limit is the table's, checked below
  check_attention_shape(kname, sh);
  const int64_t blocks = pool_blocks(kname, "k_pool", cache.k_pool, cache.block_size, s.kv_heads, s.head_dim);
  if (cache.v_pool.numel != cache.k_pool.numel)
    throw UserError(fmt::format("{}: v_pool '{}' has {} elements but k_pool '{}' has {}; both hold the same blocks",
                                kname, cache.v_pool.name, cache.v_pool.numel, cache.k_pool.name, cache.k_pool.numel));
  check_table(kname, table, cache.block_size, s.kv_len(), blocks);
  const auto q_shape = fmt::format("[{}, {}, {}] (q_tokens, q_heads, head_dim)", s.q_tokens, s.q_heads, s.head_dim);
  expect_numel(kname, "q", q, s.q_tokens * s.q_heads * s.head_dim, q_shape);
  expect_numel(kname, "output", out, s.q_tokens * s.q_heads * s.head_dim, q_shape);
  const int64_t used = ceil_div(s.kv_len(), cache.block_size);
  sh.kv_capacity = used * cache.block_size;
  auto t =
      std::make_shared<const std::vector<int32_t>>(table.begin(), table.begin() + static_cast<std::ptrdiff_t>(used));
  return AttentionPart{sh, q, cache.k_pool, cache.v_pool, out, KvAddressing{cache.block_size, std::move(t)}};
}

// A run of positions inside one block: tokens [t0, t0 + n) go to rows [row, row + n) of `block`.
struct Run {
  int64_t t0, n, block, row;
};

std::vector<Run> runs_of(const std::vector<int32_t>& table, int64_t block_size, int64_t start, int64_t tokens) {
  std::vector<Run> runs;
  for (int64_t t = 0; t < tokens;) {
    const int64_t pos = start + t, row = pos % block_size;
    const int64_t n = std::min(tokens - t, block_size - row);
    runs.push_back(Run{t, n, table[static_cast<size_t>(pos / block_size)], row});
    t += n;
  }
  return runs;
}

void check_write(const std::string& kname, const Buffer& rows, const Buffer& pool, int64_t block_size,
                 int64_t kv_heads, int64_t head_dim, const std::vector<int32_t>& table, int64_t start, int64_t tokens) {
  expect_positive(kname, {{"kv_heads", kv_heads}, {"head_dim", head_dim}, {"tokens", tokens}});
  if (start < 0) throw UserError(fmt::format("{}: start = {}; it must be >= 0", kname, start));
  check_block_size(kname, block_size);
  const int64_t blocks = pool_blocks(kname, "pool", pool, block_size, kv_heads, head_dim);
  expect_numel(kname, "rows", rows, tokens * kv_heads * head_dim,
               fmt::format("[{}, {}, {}] (tokens, kv_heads, head_dim)", tokens, kv_heads, head_dim));
  check_table(kname, table, block_size, start + tokens, blocks);
  // Positions before start are not written: only the entries of the written range must be valid.
}

}  // namespace

AttentionTiming paged_attention(Device& dev, const AttentionWorkspace& ws, const AttentionShape& s, const Buffer& q,
                                const PagedKvCache& cache, const std::vector<int32_t>& block_table, const Buffer& out,
                                Stream* stream, const AttentionConfig* config, const Buffer* lse) {
  const std::string kname = "paged attention";
  AttentionPart part = checked_part(kname, s, q, out, cache, block_table);
  if (lse) {
    expect_numel(kname, "lse", *lse, s.q_heads * s.q_tokens,
                 fmt::format("[{}, {}] (q_heads, q_tokens)", s.q_heads, s.q_tokens));
    expect_dtype_in(kname, "lse", *lse, {DType::kF32});
  }
  check_attention_device(kname, dev, ws, cache.k_pool.dtype, cache.v_pool.dtype);
  return launch_attention(dev, ws, {std::move(part)}, stream, config ? *config : AttentionConfig{}, lse);
}

AttentionTiming paged_attention_batch(Device& dev, const AttentionWorkspace& ws, const PagedKvCache& cache,
                                      const std::vector<PagedAttentionBatchItem>& items, Stream* stream,
                                      AttentionStyle style) {
  if (items.empty()) throw UserError("paged attention batch: no sequences");
  const AttentionShape& first = items[0].shape;
  for (const auto& it : items)
    if (it.shape.q_heads != first.q_heads || it.shape.kv_heads != first.kv_heads ||
        it.shape.head_dim != first.head_dim || it.shape.causal != first.causal)
      throw UserError(
          "paged attention batch: every sequence must have the same q_heads, kv_heads, head_dim and causal flag");
  std::vector<AttentionPart> parts;
  for (size_t i = 0; i < items.size(); ++i)
    parts.push_back(checked_part(fmt::format("paged attention batch item {}", i), items[i].shape, items[i].q,
                                 items[i].out, cache, items[i].block_table));
  check_attention_device("paged attention batch", dev, ws, cache.k_pool.dtype, cache.v_pool.dtype);
  AttentionConfig base;
  base.style = style;
  return launch_attention(dev, ws, parts, stream, base, nullptr);
}

Kernel make_paged_kv_write(const ChipSpec& chip, const Buffer& rows, const Buffer& pool, int64_t block_size,
                           int64_t kv_heads, int64_t head_dim, const std::vector<int32_t>& block_table, int64_t start,
                           int64_t tokens) {
  const std::string kname = "paged kv write";
  check_write(kname, rows, pool, block_size, kv_heads, head_dim, block_table, start, tokens);
  const int64_t w = kv_heads * head_dim;
  std::vector<Kernel> parts;
  for (const Run& r : runs_of(block_table, block_size, start, tokens))
    parts.push_back(
        make_copy(chip, rows.view(r.t0 * w, r.n * w), pool.view((r.block * block_size + r.row) * w, r.n * w)));
  Kernel k = concat_kernels(fmt::format("{} {} tokens at {} into {} (block {})", kname, tokens, start, pool.name,
                                        block_size),
                            std::move(parts));
  set_elementwise_fn(k, ElementwiseFn::kKvCacheWrite);
  return k;
}

Kernel make_paged_rope_write(const RopeTable& rope, const Buffer& k, const Buffer& pool, int64_t block_size,
                             int64_t kv_heads, const std::vector<int32_t>& block_table, int64_t start,
                             const std::vector<int32_t>& positions) {
  const std::string kname = "paged rope write";
  const auto tokens = static_cast<int64_t>(positions.size());
  check_write(kname, k, pool, block_size, kv_heads, rope.head_dim, block_table, start, tokens);
  const int64_t w = kv_heads * rope.head_dim;
  std::vector<Kernel> parts;
  for (const Run& r : runs_of(block_table, block_size, start, tokens)) {
    const std::vector<int32_t> pos(positions.begin() + static_cast<std::ptrdiff_t>(r.t0),
                                   positions.begin() + static_cast<std::ptrdiff_t>(r.t0 + r.n));
    const Buffer block = pool.view(r.block * block_size * w, block_size * w);
    parts.push_back(make_rope(rope, k.view(r.t0 * w, r.n * w), block, r.n, kv_heads, pos, r.row));
  }
  return concat_kernels(
      fmt::format("{} {} tokens at {} into {} (block {})", kname, tokens, start, pool.name, block_size),
      std::move(parts));
}

KernelTiming paged_kv_write(Device& dev, const PagedKvCache& cache, int64_t kv_heads, int64_t head_dim,
                            const std::vector<int32_t>& block_table, int64_t start, int64_t tokens, const Buffer& k_new,
                            const Buffer& v_new, Stream* s) {
  std::vector<Kernel> both;
  both.push_back(make_paged_kv_write(dev.chip(), k_new, cache.k_pool, cache.block_size, kv_heads, head_dim,
                                     block_table, start, tokens));
  both.push_back(make_paged_kv_write(dev.chip(), v_new, cache.v_pool, cache.block_size, kv_heads, head_dim,
                                     block_table, start, tokens));
  return dev.launch(concat_kernels(fmt::format("paged kv write {} tokens at {}", tokens, start), std::move(both)), s);
}

std::vector<float> paged_write_reference(std::vector<float> pool, int64_t block_size, int64_t kv_heads,
                                         int64_t head_dim, const std::vector<int32_t>& block_table, int64_t start,
                                         const std::vector<float>& rows) {
  const int64_t w = kv_heads * head_dim, tokens = static_cast<int64_t>(rows.size()) / w;
  PPU_CHECK(w > 0 && block_size > 0 && static_cast<int64_t>(rows.size()) == tokens * w, "paged_write_reference: shapes");
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t pos = start + t;
    const int64_t block = block_table.at(static_cast<size_t>(pos / block_size));
    const int64_t at = (block * block_size + pos % block_size) * w;
    PPU_CHECK(block >= 0 && at + w <= static_cast<int64_t>(pool.size()), "paged_write_reference: block outside the pool");
    for (int64_t c = 0; c < w; ++c) pool[static_cast<size_t>(at + c)] = rows[static_cast<size_t>(t * w + c)];
  }
  return pool;
}

std::vector<float> paged_gather_reference(const std::vector<float>& pool, int64_t block_size, int64_t kv_heads,
                                          int64_t head_dim, const std::vector<int32_t>& block_table, int64_t positions) {
  const int64_t w = kv_heads * head_dim;
  std::vector<float> out(static_cast<size_t>(positions * w));
  for (int64_t pos = 0; pos < positions; ++pos) {
    const int64_t block = block_table.at(static_cast<size_t>(pos / block_size));
    const int64_t at = (block * block_size + pos % block_size) * w;
    PPU_CHECK(block >= 0 && at + w <= static_cast<int64_t>(pool.size()), "paged_gather_reference: block outside the pool");
    std::copy(pool.begin() + at, pool.begin() + at + w, out.begin() + pos * w);
  }
  return out;
}

}  // namespace ppu::kernels
