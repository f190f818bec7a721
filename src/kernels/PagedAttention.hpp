// Paged attention: the attention of kernels/Attention.hpp over a KV cache kept in fixed-size blocks
// of a shared pool, found through a per-sequence block table (the idea of vLLM's PagedAttention,
// Kwon et al., SOSP 2023), and the cache write that scatters new K/V rows into those blocks.
//
//   k_pool, v_pool: [num_blocks, block_size, kv_heads, head_dim]  any dtype (bf16 typically), one
//                   pair per layer, shared by every sequence
//   block_table:    [ceil(kv_len / block_size)] (or longer) pool block ids, host int32: position p
//                   of the sequence is row p % block_size of block block_table[p / block_size]
//   q, out:         [q_tokens, q_heads, head_dim] as for attention()
//
//   PagedKvCache c{k_pool, v_pool, /*block_size=*/16};
//   AttentionShape s{.q_tokens = 1, .q_heads = 32, .kv_heads = 8, .head_dim = 128, .past_len = 4095};
//   kernels::paged_kv_write(dev, c, 8, 128, table, 4095, 1, k_new, v_new);   // position 4095's K/V
//   kernels::paged_attention(dev, ws, s, q, c, table, out);                  // decode at 4095
//
// Why a separate entry point, not an optional table on attention(): the two differ only in how the
// main kernel addresses K/V rows (kernels/AttentionInternal.hpp: one builder, one plan, one combine,
// the same tile configuration), but their arguments differ in kind - a pool shared by sequences, its
// block size and a table instead of one sequence's [kv_capacity, ...] cache - and so do their
// errors; two signatures say which one a call means.
//
// The block table is host data baked into the programs' load addresses when the kernel is built,
// like the row indices of kernels/Gather.hpp. The tile ISA has no integer tensors and no loads whose
// address comes from SRAM, so a device-resident table could not steer the loads; and a serving
// engine knows its tables on the host anyway (vLLM builds them there and copies them over each step).
// What that means for timing:
//  * K/V tiles follow the table: a tile of tile_kv positions is one transfer per block it touches
//    (tile_kv 128 over blocks of 16: 8 transfers of [16, head_dim] of one kv head each), issued
//    together (TileProgram::load_part: parts of one SRAM tile in flight at once, as a GPU kernel's
//    per-block async copies), so their latencies overlap and each is its own flow and L2 entry.
//    Rows of a block are as strided as rows of a contiguous cache (kv_heads * head_dim apart), so
//    the bytes are the same; what costs is the count of transfers.
//  * The table read itself is charged where a real kernel pays for it: every block's first K/V
//    addresses depend on the table, so each block first reads its entries (4 bytes each, at most 190
//    of them: one transfer from the attention workspace, which stands in for the table's bytes
//    because the kernel has no int32 argument to read), then fences; the Q and first K/V loads wait
//    one dependent DMA round trip. Entries for later tiles are read while earlier tiles stream and
//    add nothing visible, as in a pipelined loop.
//  * Measured (tests/attention/test_paged_attention.cpp prints them; Qwen3-8B's 32/8 heads, d 128,
//    bf16): a decode step at 4k is 1.05x the contiguous time on h100 and zhenwu-810e at block 16
//    (1.03-1.04x at block 128: the table read alone), a 2k prefill 1.13x (h100, 32-position tiles
//    over 16-position blocks: twice the transfers) and 1.01x (zhenwu-810e).
// Numerics: the same instructions on the same values as attention() with the same configuration,
// so the results are bit-identical to the contiguous kernel's.
//
// Block sizes: powers of two from kPagedMinBlockSize to kPagedMaxBlockSize. Nothing in the kernel
// needs alignment - a tile may span blocks and a block may span tiles, at any offset - but a real
// kernel splits a position into block and row with a shift and a mask, so other sizes are refused
// as a device kernel would refuse them.
//
// Not here: building or freeing tables (src/serve's KvBlocks), copy-on-write of shared blocks,
// prefix matching, a device-resident table, block sizes that are not powers of two, and the
// backward (training has no KV cache).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/Attention.hpp"
#include "kernels/Rope.hpp"

namespace ppu::kernels {

inline constexpr int64_t kPagedMinBlockSize = 1;
// 1024: past this a block is as coarse as a per-request slot for most requests, and paging gains
// nothing (vLLM's CUDA kernels take 8 to 32 positions, FlashAttention-2's paged cache multiples of
// 256). 1: token-granular pages.
inline constexpr int64_t kPagedMaxBlockSize = 1024;

// One layer's paged K/V pools. Both pools [num_blocks, block_size, kv_heads, head_dim]; num_blocks
// is their numel / (block_size * kv_heads * head_dim), which must divide exactly.
struct PagedKvCache {
  Buffer k_pool, v_pool;
  int64_t block_size = 16;  // positions per block (vLLM's default)
};

// Attention of one sequence over its paged cache: as attention() (Attention.hpp) with K/V rows read
// through `block_table`. s.kv_capacity must be 0: the table's block_table.size() * block_size
// positions are what the call may address. Throws UserError naming "paged attention" for the
// errors attention() names (sizes, heads, head_dim, scale, numel of q/out/lse, workspace, matrix
// unit, config), s.kv_capacity not 0, a block size not a power of two in [kPagedMinBlockSize,
// kPagedMaxBlockSize], pools whose numel is not a whole number of blocks or that differ in size, a
// table shorter than ceil(kv_len / block_size) entries, or an entry of the first ceil(kv_len /
// block_size) outside [0, num_blocks) (naming the entry, its value and the pool's size). Entries
// past those are not read. out must not overlap the pools.
AttentionTiming paged_attention(Device& dev, const AttentionWorkspace& ws, const AttentionShape& s, const Buffer& q,
                                const PagedKvCache& cache, const std::vector<int32_t>& block_table, const Buffer& out,
                                Stream* stream = nullptr, const AttentionConfig* config = nullptr,
                                const Buffer* lse = nullptr);

// A batch of sequences over one pool (a serving engine's decode step): each its own q, out, shape
// (kv_capacity 0) and table; tables may share blocks (a shared prefix). One launch of the main
// kernel and one of the combine, configured as attention_batch() configures. Same errors as
// paged_attention(), naming the item; UserError if the batch is empty or the sequences differ in
// q_heads, kv_heads, head_dim or causal flag.
struct PagedAttentionBatchItem {
  AttentionShape shape;
  Buffer q, out;
  std::vector<int32_t> block_table;
};
AttentionTiming paged_attention_batch(Device& dev, const AttentionWorkspace& ws, const PagedKvCache& cache,
                                      const std::vector<PagedAttentionBatchItem>& items, Stream* stream = nullptr,
                                      AttentionStyle style = AttentionStyle::kPipelined);

// --- cache write: new rows [tokens, kv_heads, head_dim] for positions start .. start + tokens - 1
//
// Each is a concatenation (one launch) of the contiguous kernels the model uses today - a copy, or
// the fused RoPE + store of make_rope (nn/SelfAttention.cpp) - one per run of positions inside one
// block, writing into that block's rows of the pool. A decode step's write is one run (one kernel
// as today); a prefill of n tokens is about n / block_size runs, each a kernel part with its own
// blocks, timed as such.

// Copies rows [tokens, kv_heads, head_dim] (any dtype, converted to the pool's) into `pool` at
// positions start .. start + tokens - 1 through the table. Its records say ElementwiseFn::
// kKvCacheWrite. Throws UserError naming "paged kv write" if kv_heads, head_dim or tokens is not
// positive, start is negative, the block size is not a power of two in [kPagedMinBlockSize,
// kPagedMaxBlockSize], the pool is not a whole number of blocks, rows is not tokens * kv_heads *
// head_dim elements, the table has fewer than ceil((start + tokens) / block_size) entries, or an
// entry the write uses is outside [0, num_blocks).
Kernel make_paged_kv_write(const ChipSpec& chip, const Buffer& rows, const Buffer& pool, int64_t block_size,
                           int64_t kv_heads, int64_t head_dim, const std::vector<int32_t>& block_table, int64_t start,
                           int64_t tokens);

// The paged form of the fused RoPE + K write: k [tokens, kv_heads, head_dim] (tokens =
// positions.size(), head_dim = rope.head_dim) rotated by positions[t] (RoPE positions) into `pool`
// at cache positions start + t. Errors: those of make_paged_kv_write (naming "paged rope write")
// and of make_rope (naming "rope": a position outside the RoPE table).
Kernel make_paged_rope_write(const RopeTable& rope, const Buffer& k, const Buffer& pool, int64_t block_size,
                             int64_t kv_heads, const std::vector<int32_t>& block_table, int64_t start,
                             const std::vector<int32_t>& positions);

// Both halves of a write without RoPE (K and V copied), one launch on `s`.
KernelTiming paged_kv_write(Device& dev, const PagedKvCache& cache, int64_t kv_heads, int64_t head_dim,
                            const std::vector<int32_t>& block_table, int64_t start, int64_t tokens, const Buffer& k_new,
                            const Buffer& v_new, Stream* s = nullptr);

// Scalar reference of a paged write: the pool (as fp32 values, [num_blocks, block_size, kv_heads,
// head_dim]) with rows [tokens, kv_heads, head_dim] of `rows` stored at positions start .. start +
// tokens - 1 through the table (values not rounded; the caller rounds to the pool's dtype).
std::vector<float> paged_write_reference(std::vector<float> pool, int64_t block_size, int64_t kv_heads,
                                         int64_t head_dim, const std::vector<int32_t>& block_table, int64_t start,
                                         const std::vector<float>& rows);

// The contiguous cache [positions, kv_heads, head_dim] a paged pool holds for the first `positions`
// positions of a table (fp32 values): what attention_reference takes.
std::vector<float> paged_gather_reference(const std::vector<float>& pool, int64_t block_size, int64_t kv_heads,
                                          int64_t head_dim, const std::vector<int32_t>& block_table, int64_t positions);

}  // namespace ppu::kernels
