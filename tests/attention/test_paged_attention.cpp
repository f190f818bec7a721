// Tests of kernels/PagedAttention: attention through a block table and the paged cache writes.
//
//  * Paged attention against the contiguous kernel: the same configuration runs the same
//    instructions on the same values, so outputs must be bit-identical (EXPECT on every element's
//    bits), for prefill, chunked prefill and decode (with flash-decoding splits), GQA groups 1, 4 and
//    8, head_dim 64 and 128, block sizes 16, 32 and 128, kv lengths 1, primes, and non-multiples of
//    the block and tile sizes; forced tiles whose tile_kv is not a multiple of the block size or the
//    other way round; a batch over one pool whose tables share blocks.
//  * Paged attention against attention_reference (double) through the gathered cache, with the
//    bound tests/attention/test_attention.cpp derives (tests/attention/AttentionBound.hpp).
//  * The tables are seeded shuffles of a pool with more blocks than the sequence needs; every
//    block the table does not name, and every row past kv_len, holds NaN, so a load that misses the
//    table's block poisons the output.
//  * Writes against a scalar reference (exact: a copy converts once, as the reference rounds
//    once) and the paged RoPE write against make_rope into a contiguous cache (bit-identical).
//  * One test per kind of invalid input, asserting its message.
//  * Timing-only: paged vs contiguous at Qwen3-8B's attention shape (32 q heads, 8 kv heads,
//    head_dim 128) for a decode step at 4k and a 2k prefill, on h100 and zhenwu-810e (printed).
#include <gtest/gtest.h>

#include <cstring>
#include <iostream>
#include <limits>
#include <numeric>

#include "attention/AttentionBound.hpp"
#include "kernels/Elementwise.hpp"
#include "kernels/KernelTestUtil.hpp"
#include "kernels/PagedAttention.hpp"
#include "kernels/Rope.hpp"

namespace ppu {
namespace {

using kernels::AttentionConfig;
using kernels::AttentionPacking;
using kernels::AttentionShape;
using kernels::PagedKvCache;

constexpr DType kBF16 = DType::kBF16, kF16 = DType::kF16, kF32 = DType::kF32;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// A seeded permutation of 0 .. n-1 (Fisher-Yates on a fixed generator, the same on every platform).
std::vector<int32_t> shuffled(int64_t n, uint64_t seed) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  std::mt19937_64 rng(seed);
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[static_cast<size_t>(rng() % i)]);
  return v;
}

// A table of ceil(kv_len / block_size) distinct blocks of a pool of 2x that + 3, in shuffled order.
struct Table {
  std::vector<int32_t> ids;
  int64_t pool_blocks;
};
Table make_table(int64_t kv_len, int64_t block_size, uint64_t seed) {
  const int64_t need = (kv_len + block_size - 1) / block_size, pool = 2 * need + 3;
  std::vector<int32_t> perm = shuffled(pool, seed);
  perm.resize(static_cast<size_t>(need));
  return {perm, pool};
}

// Pool values: `cache` [kv_len, kv_heads, head_dim] at the table's positions, NaN everywhere else.
std::vector<float> to_pool(const std::vector<float>& cache, const Table& t, int64_t block_size, int64_t w) {
  std::vector<float> pool(static_cast<size_t>(t.pool_blocks * block_size * w), kNaN);
  return kernels::paged_write_reference(pool, block_size, w, 1, t.ids, 0, cache);
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

struct Case {
  int64_t q_tokens, past_len, q_heads, kv_heads, head_dim, block_size;
  DType t = kBF16;
  AttentionConfig config{};  // zero fields: chosen
};

std::string describe(const Case& c) {
  return fmt::format("q_tokens {} past {} heads {}/{} d {} block {} {} (config: {})", c.q_tokens, c.past_len,
                     c.q_heads, c.kv_heads, c.head_dim, c.block_size, dtype_name(c.t), c.config.describe());
}

// Runs a case paged and contiguous with the same configuration; expects identical bits and the
// paged output within the reference bound. Returns the configuration that ran.
AttentionConfig check_paged(Device& dev, const kernels::AttentionWorkspace& ws, const Case& c, uint64_t seed) {
  AttentionShape s{.q_tokens = c.q_tokens, .q_heads = c.q_heads, .kv_heads = c.kv_heads, .head_dim = c.head_dim,
                   .kv_capacity = 0, .past_len = c.past_len};
  const int64_t d = c.head_dim, w = c.kv_heads * d, kv_len = s.kv_len();
  const auto q = test::random_values(static_cast<size_t>(c.q_tokens * c.q_heads * d), c.t, seed, -6.0f, 6.0f);
  const auto k = test::random_values(static_cast<size_t>(kv_len * w), c.t, seed + 1);
  const auto v = test::random_values(static_cast<size_t>(kv_len * w), c.t, seed + 2);
  const Table tab = make_table(kv_len, c.block_size, seed + 3);

  // Contiguous: [kv_len + 5, kv_heads, head_dim], NaN past kv_len.
  AttentionShape cs = s;
  cs.kv_capacity = kv_len + 5;
  auto kc = k, vc = v;
  kc.resize(static_cast<size_t>(cs.kv_capacity * w), kNaN);
  vc.resize(kc.size(), kNaN);
  Buffer qb = test::make_buffer(dev, c.t, q, "q");
  Buffer kcb = test::make_buffer(dev, c.t, kc, "k_cache"), vcb = test::make_buffer(dev, c.t, vc, "v_cache");
  Buffer kp = test::make_buffer(dev, c.t, to_pool(k, tab, c.block_size, w), "k_pool");
  Buffer vp = test::make_buffer(dev, c.t, to_pool(v, tab, c.block_size, w), "v_pool");
  Buffer o_cont = dev.alloc(c.t, static_cast<int64_t>(q.size()), "out_contiguous");
  Buffer o_paged = dev.alloc(c.t, static_cast<int64_t>(q.size()), "out_paged");

  const auto tc = kernels::attention(dev, ws, cs, qb, kcb, vcb, o_cont, nullptr, &c.config);
  const auto tp = kernels::paged_attention(dev, ws, s, qb, PagedKvCache{kp, vp, c.block_size}, tab.ids, o_paged,
                                           nullptr, &c.config);
  const std::string what = describe(c) + " ran as " + tp.config.describe();
  EXPECT_EQ(tp.config.describe(), tc.config.describe()) << what;
  EXPECT_EQ(tp.combine.has_value(), tc.combine.has_value()) << what;
  const std::vector<float> got = dev.download(o_paged), want = dev.download(o_cont);
  int64_t differ = 0;
  for (size_t i = 0; i < got.size(); ++i) differ += same_bits(got[i], want[i]) ? 0 : 1;
  EXPECT_EQ(differ, 0) << what << ": elements whose bits differ from the contiguous kernel's";

  const std::vector<double> ref = kernels::attention_reference(AttentionShape{cs.q_tokens, cs.q_heads, cs.kv_heads,
                                                                              cs.head_dim, kv_len, cs.past_len},
                                                               q, k, v);
  const int64_t steps = (kv_len + tp.config.tile_kv - 1) / tp.config.tile_kv + tp.config.splits;
  AttentionShape rs = cs;
  rs.kv_capacity = kv_len;
  const auto bound = test::attention_bound(rs, q, k, v, ref, c.t, c.t, c.t, c.t, steps);
  test::expect_within(got, ref, [&](size_t i) { return bound[i]; }, what + " (paged vs double reference)");
  for (Buffer* b : {&qb, &kcb, &vcb, &kp, &vp, &o_cont, &o_paged}) dev.free(*b);
  return tp.config;
}

// Prefill, chunked prefill and decode for GQA groups 1, 4 and 8, head_dim 64 and 128, blocks 16,
// 32 and 128: kv lengths 1, 37 (prime, < one block of 128), 100 = 83 + 17, 131 (prime, past one
// 128-position tile), 599 (prime; decode splits it).
TEST(PagedAttention, MatchesContiguousBitExactly) {
  Device dev(load_chip("h100"));
  auto ws = kernels::make_attention_workspace(dev);
  struct Heads {
    int64_t q, kv, d;
  };
  const Heads layouts[] = {{4, 4, 64}, {8, 2, 128}, {8, 1, 64}};
  uint64_t seed = 9000;
  for (int64_t bs : {16, 32, 128})
    for (const Heads& h : layouts) {
      const Case cases[] = {
          {1, 0, h.q, h.kv, h.d, bs},     // decode at position 0 (kv_len 1)
          {1, 598, h.q, h.kv, h.d, bs},   // decode at 598 (kv_len 599, split)
          {37, 0, h.q, h.kv, h.d, bs},    // prefill of 37
          {17, 83, h.q, h.kv, h.d, bs},   // chunked prefill
          {131, 0, h.q, h.kv, h.d, bs},   // prefill over two q tiles and three KV tiles
          {2, 129, h.q, h.kv, h.d, bs},   // a short chunk of a speculative step (kHeads for groups >= 2)
      };
      for (const Case& c : cases) check_paged(dev, ws, c, seed += 10);
    }
}

// Tiles against blocks: tile_kv not a multiple of the block size (24 over 16, 40 over 32, 9 over
// 16), the block larger than the tile (16 over 128), forced splits in both packings, fp16.
TEST(PagedAttention, ForcedTilesAcrossBlocks) {
  Device dev(load_chip("h100"));
  auto ws = kernels::make_attention_workspace(dev);
  const auto cfg = test::forced_attention_config;
  const auto kT = AttentionPacking::kTokens, kH = AttentionPacking::kHeads;
  const Case cases[] = {
      {130, 0, 4, 2, 64, 16, kBF16, cfg(kT, 16, 24, 3, 1)},
      {17, 100, 4, 2, 128, 32, kF16, cfg(kT, 5, 40, 4, 3)},
      {37, 11, 2, 2, 64, 16, kBF16, cfg(kT, 7, 9, 2, 8)},
      {61, 200, 8, 8, 64, 128, kBF16, cfg(kT, 16, 16, 2, 2)},
      {1, 598, 8, 1, 128, 16, kBF16, cfg(kH, 3, 40, 3, 7)},
      {1, 600, 8, 2, 64, 32, kF16, cfg(kH, 4, 128, 2, 3)},
      {3, 200, 8, 1, 64, 128, kBF16, cfg(kH, 8, 24, 2, 16)},
  };
  uint64_t seed = 9600;
  for (const Case& c : cases) {
    const AttentionConfig ran = check_paged(dev, ws, c, seed += 10);
    EXPECT_EQ(ran.tile_kv, c.config.tile_kv);
    EXPECT_EQ(ran.splits, c.config.splits);
  }
}

// The ends of the supported range: blocks of 1 position (a 128-position tile is 128 transfers) and
// of 1024 (the whole sequence in one or two blocks), and 256 between, with chosen configurations.
TEST(PagedAttention, ExtremeBlockSizes) {
  Device dev(load_chip("h100"));
  auto ws = kernels::make_attention_workspace(dev);
  const Case cases[] = {
      {1, 300, 8, 2, 64, 1}, {37, 11, 4, 4, 64, 1}, {1, 1100, 8, 1, 128, 1024},
      {130, 470, 8, 1, 64, 1024}, {17, 600, 4, 2, 128, 256},
  };
  uint64_t seed = 9800;
  for (const Case& c : cases) check_paged(dev, ws, c, seed += 10);
}

// Sequences of a batch over one pool, their tables sharing a prefix's blocks (as prefix caching
// shares them): bit-identical to the contiguous batch.
TEST(PagedAttention, BatchSharingBlocksMatchesContiguousBatch) {
  Device dev(load_chip("h100"));
  auto ws = kernels::make_attention_workspace(dev);
  const int64_t qh = 8, kvh = 2, d = 64, bs = 16, w = kvh * d, prefix = 48;  // 3 shared blocks
  const int64_t past[] = {70, 48, 200};                                      // decode positions
  const int64_t pool_blocks = 40;
  const std::vector<int32_t> order = shuffled(pool_blocks, 77);
  // Block ids handed out in shuffled order: the shared prefix first, then each sequence's own.
  size_t next = 3;
  std::vector<float> kpool(static_cast<size_t>(pool_blocks * bs * w), kNaN), vpool = kpool;
  const auto kpre = test::random_values(static_cast<size_t>(prefix * w), kBF16, 1);
  const auto vpre = test::random_values(static_cast<size_t>(prefix * w), kBF16, 2);
  std::vector<kernels::PagedAttentionBatchItem> paged;
  std::vector<kernels::AttentionBatchItem> contiguous;
  std::vector<Buffer> owned;
  for (size_t b = 0; b < 3; ++b) {
    const int64_t kv_len = past[b] + 1, blocks = (kv_len + bs - 1) / bs;
    std::vector<int32_t> table(order.begin(), order.begin() + 3);
    while (static_cast<int64_t>(table.size()) < blocks) table.push_back(order[next++]);
    auto k = test::random_values(static_cast<size_t>(kv_len * w), kBF16, 10 + b);
    auto v = test::random_values(static_cast<size_t>(kv_len * w), kBF16, 20 + b);
    std::copy(kpre.begin(), kpre.begin() + std::min<int64_t>(kv_len, prefix) * w, k.begin());
    std::copy(vpre.begin(), vpre.begin() + std::min<int64_t>(kv_len, prefix) * w, v.begin());
    kpool = kernels::paged_write_reference(kpool, bs, kvh, d, table, 0, k);
    vpool = kernels::paged_write_reference(vpool, bs, kvh, d, table, 0, v);
    const AttentionShape s{.q_tokens = 1, .q_heads = qh, .kv_heads = kvh, .head_dim = d, .past_len = past[b]};
    AttentionShape cs = s;
    cs.kv_capacity = kv_len;
    const auto q = test::random_values(static_cast<size_t>(qh * d), kBF16, 30 + b, -6.0f, 6.0f);
    owned.push_back(test::make_buffer(dev, kBF16, q, "q"));
    owned.push_back(test::make_buffer(dev, kBF16, k, "k_cache"));
    owned.push_back(test::make_buffer(dev, kBF16, v, "v_cache"));
    owned.push_back(dev.alloc(kBF16, qh * d, "out_contiguous"));
    owned.push_back(dev.alloc(kBF16, qh * d, "out_paged"));
    const Buffer* o = &owned[owned.size() - 5];
    contiguous.push_back({cs, o[0], o[1], o[2], o[3]});
    paged.push_back({s, o[0], o[4], table});
  }
  Buffer kp = test::make_buffer(dev, kBF16, kpool, "k_pool"), vp = test::make_buffer(dev, kBF16, vpool, "v_pool");
  const auto tc = kernels::attention_batch(dev, ws, contiguous);
  const auto tp = kernels::paged_attention_batch(dev, ws, PagedKvCache{kp, vp, bs}, paged);
  EXPECT_EQ(tp.config.describe(), tc.config.describe());
  for (size_t b = 0; b < 3; ++b) {
    const auto got = dev.download(paged[b].out), want = dev.download(contiguous[b].out);
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_TRUE(same_bits(got[i], want[i])) << "sequence " << b << " element " << i << ": " << got[i] << " vs "
                                              << want[i];
  }
  for (Buffer& b : owned) dev.free(b);
  dev.free(kp);
  dev.free(vp);
}

// --- TileProgram::load_part, the ISA addition paged tiles use (here rather than in tests/isa since
// paged attention is its one user): the dependencies it derives.

std::vector<uint32_t> deps_of(const TileProgram& p, size_t i) { return {p.deps_begin(i), p.deps_end(i)}; }

TEST(TileProgramLoadPart, DisjointPartsAreInFlightTogether) {
  TileProgram p;
  const BufferId k = p.alloc(kBF16, 32, 64, "k"), s = p.alloc(kF32, 4, 32, "s"), q = p.alloc(kBF16, 4, 64, "q");
  const TileRegion part{0, 0, 64, 16, 64};
  p.load(q, TileRegion{1, 0, 64, 4, 64});  // 0
  p.load_part(k, part, 0);                 // 1
  p.load_part(k, part, 16);                // 2: disjoint from 1, no dependency
  p.load_part(k, part, 8);                 // 3: rows 8..23 overlap both
  EXPECT_TRUE(deps_of(p, 1).empty());
  EXPECT_TRUE(deps_of(p, 2).empty());
  EXPECT_EQ(deps_of(p, 3), (std::vector<uint32_t>{1, 2}));
  p.mma(s, q, k, 4, 32, 64, false, true, false);  // 4: reads k, waits for every part
  EXPECT_EQ(deps_of(p, 4), (std::vector<uint32_t>{0, 1, 2, 3}));
  p.load_part(k, part, 0);   // 5: a new round, after the reader (WAR)
  p.load_part(k, part, 16);  // 6: likewise, not after 5
  EXPECT_EQ(deps_of(p, 5), (std::vector<uint32_t>{4}));
  EXPECT_EQ(deps_of(p, 6), (std::vector<uint32_t>{4}));
  p.load(k, part);  // 7: a full load waits for the round's parts
  EXPECT_EQ(deps_of(p, 7), (std::vector<uint32_t>{5, 6, 4}));
}

// --- cache writes

// K and V rows written through a shuffled table: the whole pool equals the reference (blocks not
// written keep their values), for a prefill from 0, a chunk crossing blocks, a decode write, and a
// conversion from fp32 rows into a bf16 pool.
TEST(PagedKvWrite, MatchesScalarReference) {
  Device dev(load_chip("h100"));
  struct W {
    int64_t start, tokens, kv_heads, head_dim, block_size;
    DType rows_t, pool_t;
  };
  const W writes[] = {
      {0, 37, 2, 64, 16, kBF16, kBF16},   // prefill of 37: 3 runs
      {83, 17, 8, 128, 32, kBF16, kBF16},  // chunk 83..99 crossing a block boundary at 96
      {598, 1, 1, 128, 128, kF16, kF16},  // decode write
      {15, 2, 4, 64, 16, kF32, kBF16},    // two tokens in two blocks, converted
      {0, 300, 2, 64, 128, kBF16, kBF16},  // 3 runs of 128, 128, 44
  };
  uint64_t seed = 9900;
  for (const W& x : writes) {
    const std::string what = fmt::format("write {} tokens at {} kv_heads {} d {} block {} {}->{}", x.tokens, x.start,
                                         x.kv_heads, x.head_dim, x.block_size, dtype_name(x.rows_t),
                                         dtype_name(x.pool_t));
    const int64_t w = x.kv_heads * x.head_dim;
    const Table tab = make_table(x.start + x.tokens, x.block_size, seed += 10);
    const auto pool0 = test::random_values(static_cast<size_t>(tab.pool_blocks * x.block_size * w), x.pool_t, seed + 1);
    const auto k = test::random_values(static_cast<size_t>(x.tokens * w), x.rows_t, seed + 2);
    const auto v = test::random_values(static_cast<size_t>(x.tokens * w), x.rows_t, seed + 3);
    Buffer kp = test::make_buffer(dev, x.pool_t, pool0, "k_pool"), vp = test::make_buffer(dev, x.pool_t, pool0, "v_pool");
    Buffer kb = test::make_buffer(dev, x.rows_t, k, "k_new"), vb = test::make_buffer(dev, x.rows_t, v, "v_new");
    kernels::paged_kv_write(dev, PagedKvCache{kp, vp, x.block_size}, x.kv_heads, x.head_dim, tab.ids, x.start, x.tokens,
                            kb, vb);
    for (auto [buf, rows] : {std::pair{kp, k}, std::pair{vp, v}}) {
      std::vector<float> rounded(rows.size());
      for (size_t i = 0; i < rows.size(); ++i) rounded[i] = round_to(x.pool_t, rows[i]);
      const auto want =
          kernels::paged_write_reference(pool0, x.block_size, x.kv_heads, x.head_dim, tab.ids, x.start, rounded);
      const auto got = dev.download(buf);
      ASSERT_EQ(got.size(), want.size());
      int64_t differ = 0;
      for (size_t i = 0; i < got.size(); ++i) differ += same_bits(got[i], want[i]) ? 0 : 1;
      EXPECT_EQ(differ, 0) << what << " (" << buf.name << ")";
    }
    for (Buffer* b : {&kp, &vp, &kb, &vb}) dev.free(*b);
  }
}

// The fused RoPE + K write through a table equals make_rope into a contiguous cache, bit for bit
// (the same rotation per element), for a prefill chunk crossing blocks and a decode token.
TEST(PagedKvWrite, RopeWriteMatchesContiguousRopeWrite) {
  Device dev(load_chip("h100"));
  const int64_t kvh = 2, d = 64;
  auto rope = kernels::make_rope_table(dev, 1e6, d, 1024);
  for (auto [start, tokens, bs] : {std::tuple<int64_t, int64_t, int64_t>{83, 41, 16}, {598, 1, 32}, {0, 130, 128}}) {
    const int64_t w = kvh * d, positions_total = start + tokens;
    const Table tab = make_table(positions_total, bs, 123 + static_cast<uint64_t>(start));
    const auto k = test::random_values(static_cast<size_t>(tokens * w), kBF16, 5 + static_cast<uint64_t>(start));
    std::vector<int32_t> pos(static_cast<size_t>(tokens));
    std::iota(pos.begin(), pos.end(), static_cast<int32_t>(start));
    Buffer kb = test::make_buffer(dev, kBF16, k, "k");
    Buffer pool = test::make_buffer(dev, kBF16, std::vector<float>(static_cast<size_t>(tab.pool_blocks * bs * w), 0.0f),
                                    "k_pool");
    Buffer cache = dev.alloc(kBF16, positions_total * w, "k_cache");
    dev.launch(kernels::make_rope(rope, kb, cache, tokens, kvh, pos, start));
    dev.launch(kernels::make_paged_rope_write(rope, kb, pool, bs, kvh, tab.ids, start, pos));
    const auto contiguous = dev.download(cache);
    const auto gathered = kernels::paged_gather_reference(dev.download(pool), bs, kvh, d, tab.ids, positions_total);
    for (int64_t i = start * w; i < positions_total * w; ++i)
      ASSERT_TRUE(same_bits(gathered[static_cast<size_t>(i)], contiguous[static_cast<size_t>(i)]))
          << "start " << start << " tokens " << tokens << " block " << bs << " element " << i;
    for (Buffer* b : {&kb, &pool, &cache}) dev.free(*b);
  }
  kernels::free_rope_table(dev, rope);
}

// --- invalid input (timing-only devices: the checks come before any data)

struct Pools {
  Buffer q, out, k, v;
};
// q/out for `s`, pools of `blocks` blocks of `bs`.
Pools alloc_pools(Device& dev, const AttentionShape& s, int64_t blocks, int64_t bs) {
  const int64_t qn = s.q_tokens * s.q_heads * s.head_dim, pn = blocks * bs * s.kv_heads * s.head_dim;
  return {dev.alloc(kBF16, qn, "q"), dev.alloc(kBF16, qn, "out"), dev.alloc(kBF16, pn, "k_pool"),
          dev.alloc(kBF16, pn, "v_pool")};
}

const AttentionShape kSmall{.q_tokens = 3, .q_heads = 4, .kv_heads = 2, .head_dim = 64, .past_len = 30};  // kv_len 33

TEST(PagedAttention, RejectsTableTooShort) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  auto ws = kernels::make_attention_workspace(dev);
  Pools p = alloc_pools(dev, kSmall, 4, 16);
  test::expect_error(
      [&] { kernels::paged_attention(dev, ws, kSmall, p.q, PagedKvCache{p.k, p.v, 16}, {0, 1}, p.out); },
      {"paged attention", "the block table has 2 entries (32 positions at block_size 16)", "33 positions need 3"});
}

TEST(PagedAttention, RejectsBlockOutsidePool) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  auto ws = kernels::make_attention_workspace(dev);
  Pools p = alloc_pools(dev, kSmall, 4, 16);
  test::expect_error(
      [&] { kernels::paged_attention(dev, ws, kSmall, p.q, PagedKvCache{p.k, p.v, 16}, {0, 4, 1}, p.out); },
      {"paged attention", "entry 1 is block 4", "pool's 4 blocks", "valid: 0 to 3"});
  test::expect_error(
      [&] { kernels::paged_attention(dev, ws, kSmall, p.q, PagedKvCache{p.k, p.v, 16}, {0, 1, -1}, p.out); },
      {"paged attention", "entry 2 is block -1"});
  // Entries past the length are not read, so need not be valid.
  EXPECT_NO_THROW(kernels::paged_attention(dev, ws, kSmall, p.q, PagedKvCache{p.k, p.v, 16}, {0, 1, 2, 99}, p.out));
}

TEST(PagedAttention, RejectsUnsupportedBlockSize) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  auto ws = kernels::make_attention_workspace(dev);
  for (int64_t bs : {0, 24, 2048}) {
    Pools p = alloc_pools(dev, kSmall, 4, std::max<int64_t>(bs, 1));
    test::expect_error(
        [&] { kernels::paged_attention(dev, ws, kSmall, p.q, PagedKvCache{p.k, p.v, bs}, {0, 1, 2, 3}, p.out); },
        {"paged attention", fmt::format("block_size = {}", bs), "a power of two from 1 to 1024"});
  }
}

TEST(PagedAttention, RejectsKvCapacitySet) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  auto ws = kernels::make_attention_workspace(dev);
  Pools p = alloc_pools(dev, kSmall, 4, 16);
  AttentionShape s = kSmall;
  s.kv_capacity = 64;
  test::expect_error([&] { kernels::paged_attention(dev, ws, s, p.q, PagedKvCache{p.k, p.v, 16}, {0, 1, 2}, p.out); },
                     {"paged attention", "kv_capacity = 64", "leave it 0"});
}

TEST(PagedAttention, RejectsPoolsNotWholeBlocksOrUnequal) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  auto ws = kernels::make_attention_workspace(dev);
  Pools p = alloc_pools(dev, kSmall, 4, 16);
  Buffer odd = dev.alloc(kBF16, 4 * 16 * 2 * 64 - 64, "odd_pool");
  Buffer big = dev.alloc(kBF16, 5 * 16 * 2 * 64, "big_pool");
  test::expect_error(
      [&] { kernels::paged_attention(dev, ws, kSmall, p.q, PagedKvCache{odd, p.v, 16}, {0, 1, 2}, p.out); },
      {"paged attention", "k_pool 'odd_pool' has 8128 elements", "not a whole number of blocks", "2048 elements each"});
  test::expect_error(
      [&] { kernels::paged_attention(dev, ws, kSmall, p.q, PagedKvCache{p.k, big, 16}, {0, 1, 2}, p.out); },
      {"paged attention", "v_pool 'big_pool' has 10240 elements but k_pool 'k_pool' has 8192"});
}

TEST(PagedAttention, RejectsShapeErrorsAsAttentionDoes) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  auto ws = kernels::make_attention_workspace(dev);
  Pools p = alloc_pools(dev, kSmall, 4, 16);
  AttentionShape s = kSmall;
  s.q_heads = 3;
  test::expect_error([&] { kernels::paged_attention(dev, ws, s, p.q, PagedKvCache{p.k, p.v, 16}, {0, 1, 2}, p.out); },
                     {"paged attention", "q_heads = 3", "not a multiple of kv_heads = 2"});
  Buffer small = dev.alloc(kBF16, 10, "small_out");
  test::expect_error(
      [&] { kernels::paged_attention(dev, ws, kSmall, p.q, PagedKvCache{p.k, p.v, 16}, {0, 1, 2}, small); },
      {"paged attention", "output 'small_out'", "[3, 4, 64] (q_tokens, q_heads, head_dim)"});
  kernels::AttentionWorkspace none;
  test::expect_error(
      [&] { kernels::paged_attention(dev, none, kSmall, p.q, PagedKvCache{p.k, p.v, 16}, {0, 1, 2}, p.out); },
      {"paged attention", "make_attention_workspace"});
}

TEST(PagedAttention, RejectsBatchErrorsNamingTheItem) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  auto ws = kernels::make_attention_workspace(dev);
  Pools p = alloc_pools(dev, kSmall, 4, 16);
  const PagedKvCache c{p.k, p.v, 16};
  test::expect_error([&] { kernels::paged_attention_batch(dev, ws, c, {}); }, {"paged attention batch", "no sequences"});
  std::vector<kernels::PagedAttentionBatchItem> items = {{kSmall, p.q, p.out, {0, 1, 2}}, {kSmall, p.q, p.out, {3, 9, 1}}};
  test::expect_error([&] { kernels::paged_attention_batch(dev, ws, c, items); },
                     {"paged attention batch item 1", "entry 1 is block 9"});
  items[1].shape.head_dim = 128;
  test::expect_error([&] { kernels::paged_attention_batch(dev, ws, c, items); },
                     {"paged attention batch", "same q_heads, kv_heads, head_dim"});
}

TEST(PagedKvWrite, RejectsBadWrites) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  Buffer pool = dev.alloc(kBF16, 4 * 16 * 2 * 64, "k_pool"), rows = dev.alloc(kBF16, 5 * 2 * 64, "k_new");
  const ChipSpec& chip = dev.chip();
  test::expect_error([&] { kernels::make_paged_kv_write(chip, rows, pool, 16, 2, 64, {0, 1}, 30, 5); },
                     {"paged kv write", "2 entries", "35 positions need 3"});
  test::expect_error([&] { kernels::make_paged_kv_write(chip, rows, pool, 16, 2, 64, {0, 7, 1}, 30, 5); },
                     {"paged kv write", "entry 1 is block 7", "pool's 4 blocks"});
  test::expect_error([&] { kernels::make_paged_kv_write(chip, rows, pool, 16, 2, 64, {0, 1}, 0, 4); },
                     {"paged kv write", "rows 'k_new' has 640 elements", "[4, 2, 64] (tokens, kv_heads, head_dim)"});
  test::expect_error([&] { kernels::make_paged_kv_write(chip, rows, pool, 16, 2, 64, {0, 1}, -1, 5); },
                     {"paged kv write", "start = -1"});
  test::expect_error([&] { kernels::make_paged_kv_write(chip, rows, pool, 12, 2, 64, {0, 1}, 0, 5); },
                     {"paged kv write", "block_size = 12"});
  test::expect_error([&] { kernels::make_paged_kv_write(chip, rows, pool, 16, 2, 64, {0}, 0, 0); },
                     {"paged kv write", "tokens = 0"});
  auto rope = kernels::make_rope_table(dev, 1e6, 64, 32);
  test::expect_error([&] { kernels::make_paged_rope_write(rope, rows, pool, 16, 2, {0, 1, 2}, 30, {30, 31, 32, 33, 34}); },
                     {"rope", "position 32", "32 positions"});
}

// --- timing: paged vs contiguous (timing-only), Qwen3-8B's attention (32 q heads, 8 kv heads,
// head_dim 128, bf16 caches), a decode step at 4k positions and a 2k-token prefill.
//
// Expected: paged >= contiguous (the same instructions plus, per block, one dependent table read
// before the first K/V transfer, and more, smaller transfers) and, at block 16, within 1.3x. The
// bytes are the same; a decode tile of 128 positions becomes 8 transfers of 4 KiB issued together
// (load_part), so their DMA latencies overlap and the per-core stream runs as fast as one 32 KiB
// transfer would; what is left is the table read, one DMA round trip (0.6 us on h100) before each
// block's stream of about 5 us (a quarter of the 4k positions' K and V of one kv head at 100 GB/s),
// partly hidden by the other block on the core. A prefill's 32- or 64-position tiles span 2 or 4
// blocks of 16: more flows for the same bytes in the L2 and HBM pools. Prints the times.
TEST(PagedAttentionTiming, CloseToContiguous) {
  for (const char* chip : {"h100", "zhenwu-810e"}) {
    Device dev(load_chip(chip), ExecMode::kTimingOnly);
    auto ws = kernels::make_attention_workspace(dev);
    for (const AttentionShape& s : {AttentionShape{.q_tokens = 1, .q_heads = 32, .kv_heads = 8, .head_dim = 128,
                                                   .past_len = 4095},
                                    AttentionShape{.q_tokens = 2048, .q_heads = 32, .kv_heads = 8, .head_dim = 128}}) {
      const int64_t kv_len = s.kv_len(), w = s.kv_heads * s.head_dim;
      const int64_t qn = s.q_tokens * s.q_heads * s.head_dim;
      Buffer q = dev.alloc(kBF16, qn, "q"), o = dev.alloc(kBF16, qn, "out");
      AttentionShape cs = s;
      cs.kv_capacity = kv_len;
      Buffer kc = dev.alloc(kBF16, kv_len * w, "k_cache"), vc = dev.alloc(kBF16, kv_len * w, "v_cache");
      const double contiguous = kernels::attention(dev, ws, cs, q, kc, vc, o).time_s();
      dev.free(kc);
      dev.free(vc);
      for (int64_t bs : {16, 128}) {
        const Table tab = make_table(kv_len, bs, 42);
        const int64_t pool_numel = tab.pool_blocks * bs * w;
        Buffer kp = dev.alloc(kBF16, pool_numel, "k_pool"), vp = dev.alloc(kBF16, pool_numel, "v_pool");
        const auto t = kernels::paged_attention(dev, ws, s, q, PagedKvCache{kp, vp, bs}, tab.ids, o);
        const double ratio = t.time_s() / contiguous;
        std::cout << fmt::format("[ paged    ] {:12} {} q_tokens {:4} kv_len {:4}: contiguous {:8.2f} us, paged block "
                                 "{:3} {:8.2f} us ({:.3f}x; {})\n",
                                 chip, s.q_tokens == 1 ? "decode " : "prefill", s.q_tokens, kv_len, contiguous * 1e6, bs,
                                 t.time_s() * 1e6, ratio, t.config.describe());
        EXPECT_GE(ratio, 1.0) << chip << " block " << bs;
        if (bs == 16) {
          EXPECT_LE(ratio, 1.3) << chip;
        }
        dev.free(kp);
        dev.free(vp);
      }
      dev.free(q);
      dev.free(o);
    }
  }
}

}  // namespace
}  // namespace ppu
