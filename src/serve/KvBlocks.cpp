#include "serve/KvBlocks.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "arch/Error.hpp"

namespace ppu::serve {

namespace {
const std::vector<int32_t> kNoTable;
}  // namespace

KvBlocks::KvBlocks(int64_t num_blocks, int64_t block_size, bool prefix_caching)
    : num_blocks_(num_blocks), block_size_(block_size), prefix_caching_(prefix_caching) {
  if (num_blocks < 1 || num_blocks > (int64_t{1} << 31) - 1)
    throw UserError(fmt::format("KV cache: {} blocks; valid: 1 .. 2147483647", num_blocks));
  if (block_size < 1 || block_size > 4096)
    throw UserError(fmt::format("KV cache: block size {} positions; valid: 1 .. 4096", block_size));
}

uint64_t KvBlocks::chain_hash(uint64_t parent, const int32_t* ids, int64_t n) {
  // FNV-1a over the parent hash and the ids, then a final avalanche (splitmix64's); a match also
  // compares the ids, so this only has to spread well.
  uint64_t h = 1469598103934665603ull ^ parent;
  for (int64_t i = 0; i < n; ++i) {
    h ^= static_cast<uint32_t>(ids[i]);
    h *= 1099511628211ull;
  }
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  return h ^ (h >> 31);
}

int32_t KvBlocks::take_block() {
  int32_t b;
  if (!free_.empty()) {
    b = free_.front();
    free_.pop_front();
  } else if (static_cast<int64_t>(blocks_.size()) < num_blocks_) {
    b = static_cast<int32_t>(blocks_.size());
    blocks_.emplace_back();
  } else {
    PPU_CHECK(!lru_.empty(), "take_block without an available block");
    b = lru_.front();
    lru_.pop_front();
    Block& blk = blocks_[static_cast<size_t>(b)];
    by_hash_.erase(blk.hash);
    blk.registered = false;
    blk.tokens.clear();
  }
  blocks_[static_cast<size_t>(b)].refs = 1;
  return b;
}

int64_t KvBlocks::match_prefix(uint64_t seq, const std::vector<int32_t>& tokens) {
  Seq& s = seqs_[seq];
  PPU_CHECK(s.table.empty(), "match_prefix on a sequence that already holds blocks");
  if (!prefix_caching_) return 0;
  // Full blocks strictly before the last token: the last one is always computed.
  const int64_t full = (static_cast<int64_t>(tokens.size()) - 1) / block_size_;
  query_positions_ += full * block_size_;
  uint64_t h = 0;
  for (int64_t i = 0; i < full; ++i) {
    const int32_t* ids = tokens.data() + i * block_size_;
    const uint64_t next = chain_hash(h, ids, block_size_);
    const auto it = by_hash_.find(next);
    if (it == by_hash_.end()) break;
    Block& blk = blocks_[static_cast<size_t>(it->second)];
    if (!std::equal(blk.tokens.begin(), blk.tokens.end(), ids)) break;
    if (blk.refs == 0) lru_.erase(blk.lru_pos);
    ++blk.refs;
    s.table.push_back(it->second);
    h = next;
  }
  s.registered = static_cast<int64_t>(s.table.size());
  s.last_hash = h;
  const int64_t hit = s.registered * block_size_;
  hit_positions_ += hit;
  return hit;
}

bool KvBlocks::grow(uint64_t seq, int64_t positions) {
  Seq& s = seqs_[seq];
  const int64_t need = blocks_for(positions) - static_cast<int64_t>(s.table.size());
  if (need <= 0) return true;
  if (need > available_blocks()) return false;
  for (int64_t i = 0; i < need; ++i) s.table.push_back(take_block());
  return true;
}

void KvBlocks::register_full_blocks(uint64_t seq, const std::vector<int32_t>& tokens, int64_t computed) {
  if (!prefix_caching_ || static_cast<int64_t>(tokens.size()) < computed) return;
  const auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  Seq& s = it->second;
  const int64_t full = std::min<int64_t>(computed / block_size_, static_cast<int64_t>(s.table.size()));
  for (int64_t i = s.registered; i < full; ++i) {
    const int32_t* ids = tokens.data() + i * block_size_;
    const uint64_t h = chain_hash(s.last_hash, ids, block_size_);
    const int32_t b = s.table[static_cast<size_t>(i)];
    Block& blk = blocks_[static_cast<size_t>(b)];
    if (!blk.registered && by_hash_.find(h) == by_hash_.end()) {
      blk.registered = true;
      blk.hash = h;
      blk.tokens.assign(ids, ids + block_size_);
      by_hash_.emplace(h, b);
    }
    s.last_hash = h;
    s.registered = i + 1;
  }
}

void KvBlocks::release(uint64_t seq) {
  const auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  // Later blocks first: they are the least likely to be shared, so they are evicted first.
  for (auto b = it->second.table.rbegin(); b != it->second.table.rend(); ++b) {
    Block& blk = blocks_[static_cast<size_t>(*b)];
    PPU_CHECK(blk.refs > 0, "release of an unreferenced block");
    if (--blk.refs > 0) continue;
    if (blk.registered) {
      lru_.push_back(*b);
      blk.lru_pos = std::prev(lru_.end());
    } else {
      free_.push_back(*b);
    }
  }
  seqs_.erase(it);
}

const std::vector<int32_t>& KvBlocks::table(uint64_t seq) const {
  const auto it = seqs_.find(seq);
  return it == seqs_.end() ? kNoTable : it->second.table;
}

}  // namespace ppu::serve
