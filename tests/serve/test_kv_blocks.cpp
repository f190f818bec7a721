// serve/KvBlocks: block accounting, prefix matching, sharing and LRU eviction, against hand-counted
// expectations.
#include <gtest/gtest.h>

#include <numeric>

#include "TestUtil.hpp"
#include "arch/Error.hpp"
#include "serve/KvBlocks.hpp"

using ppu::UserError;
using ppu::serve::KvBlocks;
using ppu::test::error_message;

namespace {

std::vector<int32_t> ids(int n, int first = 0) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), first);
  return v;
}

}  // namespace

TEST(KvBlocks, GrowTakesCeilBlocksAndReleaseReturnsThem) {
  KvBlocks kv(10, 4, false);
  EXPECT_EQ(kv.blocks_for(0), 0);
  EXPECT_EQ(kv.blocks_for(1), 1);
  EXPECT_EQ(kv.blocks_for(4), 1);
  EXPECT_EQ(kv.blocks_for(5), 2);
  EXPECT_TRUE(kv.grow(1, 9));  // 3 blocks
  EXPECT_EQ(kv.table(1).size(), 3u);
  EXPECT_EQ(kv.used_blocks(), 3);
  EXPECT_TRUE(kv.grow(1, 12));  // still 3
  EXPECT_EQ(kv.used_blocks(), 3);
  EXPECT_TRUE(kv.grow(2, 28));  // 7 more: all 10 used
  EXPECT_EQ(kv.available_blocks(), 0);
  EXPECT_FALSE(kv.grow(1, 13));  // a 4th block: none left, nothing changes
  EXPECT_EQ(kv.table(1).size(), 3u);
  kv.release(2);
  EXPECT_EQ(kv.available_blocks(), 7);
  EXPECT_TRUE(kv.grow(1, 13));
  kv.release(1);
  kv.release(1);  // unknown now: no-op
  EXPECT_EQ(kv.used_blocks(), 0);
  EXPECT_EQ(kv.available_blocks(), 10);
  EXPECT_TRUE(kv.table(1).empty());
}

TEST(KvBlocks, TablesNeverShareABlockWithoutPrefixCaching) {
  KvBlocks kv(8, 2, false);
  ASSERT_TRUE(kv.grow(1, 8));
  ASSERT_TRUE(kv.grow(2, 8));
  std::vector<int32_t> all = kv.table(1);
  all.insert(all.end(), kv.table(2).begin(), kv.table(2).end());
  std::sort(all.begin(), all.end());
  EXPECT_EQ(all, ids(8));
}

TEST(KvBlocks, PrefixMatchReusesFullBlocksButNeverTheWholePrompt) {
  KvBlocks kv(16, 4, true);
  const auto prompt = ids(10);  // blocks [0..3] [4..7] [8,9]
  EXPECT_EQ(kv.match_prefix(1, prompt), 0);
  ASSERT_TRUE(kv.grow(1, 10));
  kv.register_full_blocks(1, prompt, 10);  // two full blocks registered
  // Same prompt: the two full blocks are shared.
  EXPECT_EQ(kv.match_prefix(2, prompt), 8);
  EXPECT_EQ(kv.table(2), std::vector<int32_t>(kv.table(1).begin(), kv.table(1).begin() + 2));
  EXPECT_EQ(kv.used_blocks(), 3);  // shared blocks count once
  // A prompt of exactly 8 tokens: at most the first block (its last token is always computed).
  EXPECT_EQ(kv.match_prefix(3, ids(8)), 4);
  // Differs in the second block: only the first matches.
  auto other = prompt;
  other[5] = 99;
  EXPECT_EQ(kv.match_prefix(4, other), 4);
  // Differs in the first: nothing.
  other[0] = 99;
  EXPECT_EQ(kv.match_prefix(5, other), 0);
  EXPECT_EQ(kv.prefix_query_positions(), 8 + 8 + 4 + 8 + 8);
  EXPECT_EQ(kv.prefix_hit_positions(), 8 + 4 + 4);
}

TEST(KvBlocks, ReleasedPrefixStaysCachedUntilEvictedLeastRecentFirst) {
  KvBlocks kv(4, 2, true);
  const auto a = ids(5, 0), b = ids(5, 100);
  ASSERT_TRUE(kv.grow(1, 4));
  kv.register_full_blocks(1, a, 4);
  kv.release(1);  // 2 cached blocks
  EXPECT_EQ(kv.cached_blocks(), 2);
  EXPECT_EQ(kv.available_blocks(), 4);
  ASSERT_TRUE(kv.grow(2, 4));  // takes the 2 never-used blocks first
  kv.register_full_blocks(2, b, 4);
  kv.release(2);
  EXPECT_EQ(kv.cached_blocks(), 4);
  // Both prefixes still hit.
  EXPECT_EQ(kv.match_prefix(3, a), 4);
  kv.release(3);
  // One fresh block must evict: the least recently released is b's second block (b was released
  // before a's re-release, and a table's later blocks go first).
  ASSERT_TRUE(kv.grow(4, 1));
  EXPECT_EQ(kv.match_prefix(5, b), 2);  // b's first block survives
  kv.release(5);
  EXPECT_EQ(kv.match_prefix(6, a), 4);  // a untouched
}

TEST(KvBlocks, SharedBlockIsFreedOnlyByItsLastHolder) {
  KvBlocks kv(4, 2, true);
  const auto p = ids(3);
  ASSERT_TRUE(kv.grow(1, 3));
  kv.register_full_blocks(1, p, 2);
  ASSERT_EQ(kv.match_prefix(2, p), 2);
  kv.release(1);
  EXPECT_EQ(kv.used_blocks(), 1);  // sequence 2 still holds the shared block
  EXPECT_EQ(kv.cached_blocks(), 0);
  kv.release(2);
  EXPECT_EQ(kv.used_blocks(), 0);
  EXPECT_EQ(kv.cached_blocks(), 1);
}

TEST(KvBlocks, RejectsBadSizes) {
  EXPECT_EQ(error_message([] { KvBlocks(0, 16, true); }), "KV cache: 0 blocks; valid: 1 .. 2147483647");
  EXPECT_EQ(error_message([] { KvBlocks(8, 0, true); }), "KV cache: block size 0 positions; valid: 1 .. 4096");
  EXPECT_EQ(error_message([] { KvBlocks(8, 5000, true); }), "KV cache: block size 5000 positions; valid: 1 .. 4096");
}
