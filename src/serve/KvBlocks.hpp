// KvBlocks: the serving engine's paged KV cache bookkeeping - a pool of fixed-size blocks, a block
// table per sequence, and prefix caching (vLLM's PagedAttention and automatic prefix caching).
//
// A sequence's cache is a list of blocks of `block_size` token positions each (its block table);
// position p lives in block table[p / block_size] at offset p % block_size. Blocks come from one
// pool, so sequences of any length share the memory without reserving their maximum up front.
//
// Prefix caching: once a block is full of computed tokens whose ids are known, it is registered
// under the hash of (the previous block's hash, its token ids), i.e. of the whole prefix up to its
// end. A new sequence whose prompt starts with the same tokens takes those blocks by reference
// instead of computing them again (match_prefix); blocks are reference-counted. When the last
// sequence holding a registered block releases it, the block stays cached (evictable); a request
// for fresh blocks takes never-used free blocks first, then evicts cached blocks, least recently
// released first (LRU). A match compares the stored token ids, not only the hash, so a hash
// collision can never hand one sequence another's cache. A hash holds one block: a second block
// with the same prefix (two sequences computing it at once) or a colliding hash stays private.
//
//   KvBlocks kv(1000, 16, true);                    // 1000 blocks of 16 positions, prefix caching on
//   int64_t cached = kv.match_prefix(7, prompt);    // positions already in the cache (multiple of 16)
//   if (kv.grow(7, cached + chunk)) ...             // blocks for `chunk` more positions, or false
//   kv.register_full_blocks(7, prompt, computed);   // after the step: full blocks become shareable
//   kv.release(7);                                  // sequence done (or preempted)
//
// Memory: a block's bookkeeping exists once it is first used, so a cache of millions of blocks (a
// small model on a large chip) costs nothing up front.
//
// Deterministic: every choice (free-list order, LRU ties) is a fixed function of the call sequence.
// Not here: the cache's memory itself (the model's buffers), copy-on-write of partly shared blocks
// (only full blocks are shared, and they are never written again), swapping blocks to host memory.
#pragma once

#include <cstdint>
#include <deque>
#include <list>
#include <unordered_map>
#include <vector>

namespace ppu::serve {

class KvBlocks {
 public:
  // UserError if num_blocks < 1 or block_size < 1.
  KvBlocks(int64_t num_blocks, int64_t block_size, bool prefix_caching);

  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  bool prefix_caching() const { return prefix_caching_; }
  // Blocks needed to hold `positions` token positions (ceil).
  int64_t blocks_for(int64_t positions) const { return (positions + block_size_ - 1) / block_size_; }

  // Blocks referenced by at least one sequence.
  int64_t used_blocks() const { return num_blocks_ - available_blocks(); }
  // Blocks a grow() may still take: never-used or released ones plus evictable cached ones.
  int64_t available_blocks() const {
    return num_blocks_ - static_cast<int64_t>(blocks_.size()) + static_cast<int64_t>(free_.size() + lru_.size());
  }
  // Released blocks still holding a registered prefix (evictable).
  int64_t cached_blocks() const { return static_cast<int64_t>(lru_.size()); }

  // For a sequence with no blocks yet: takes (by reference) the longest run of registered blocks
  // matching the leading full blocks of `tokens`, never all of `tokens` (at least one token is left
  // to compute, whose logits the next step needs), and returns the positions they cover (a
  // multiple of block_size; 0 with prefix caching off). Counts a query and its hit positions.
  int64_t match_prefix(uint64_t seq, const std::vector<int32_t>& tokens);
  // Makes sequence `seq`'s table hold at least `positions` positions, taking fresh blocks (evicting
  // cached ones if needed). False, with nothing changed, if not enough blocks are available.
  bool grow(uint64_t seq, int64_t positions);
  // Registers every block of `seq` that is full within tokens[0 .. computed) and not yet registered
  // (no-op with prefix caching off or when tokens holds fewer than `computed` ids).
  void register_full_blocks(uint64_t seq, const std::vector<int32_t>& tokens, int64_t computed);
  // Drops every block reference of `seq` (unknown seq: no-op).
  void release(uint64_t seq);

  // The block table of `seq` (empty if it holds none).
  const std::vector<int32_t>& table(uint64_t seq) const;
  // Prefix-cache statistics since construction: positions asked for (full blocks of prompts) and
  // positions found.
  int64_t prefix_query_positions() const { return query_positions_; }
  int64_t prefix_hit_positions() const { return hit_positions_; }

 private:
  struct Block {
    int32_t refs = 0;
    bool registered = false;
    uint64_t hash = 0;
    std::vector<int32_t> tokens;                // the ids it was registered with
    std::list<int32_t>::iterator lru_pos;       // valid while registered and refs == 0
  };
  struct Seq {
    std::vector<int32_t> table;
    int64_t registered = 0;  // leading blocks already registered (or taken from the cache)
    uint64_t last_hash = 0;  // hash of the prefix up to the end of block `registered - 1`
  };
  int32_t take_block();
  static uint64_t chain_hash(uint64_t parent, const int32_t* ids, int64_t n);

  int64_t num_blocks_, block_size_;
  bool prefix_caching_;
  std::vector<Block> blocks_;                      // blocks used so far (ids 0 .. size-1); the rest never touched
  std::deque<int32_t> free_;                       // released unregistered or evicted; taken from the front
  std::list<int32_t> lru_;                         // registered, unreferenced: front = least recent
  std::unordered_map<uint64_t, int32_t> by_hash_;  // one block per prefix hash
  std::unordered_map<uint64_t, Seq> seqs_;
  int64_t query_positions_ = 0, hit_positions_ = 0;
};

}  // namespace ppu::serve
