// Internal to the attention kernels (Attention.cpp, PagedAttention.cpp): the launch path both share,
// for contiguous caches and for paged pools. Not an API for other layers: use kernels/Attention.hpp
// and kernels/PagedAttention.hpp.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kernels/Attention.hpp"

namespace ppu::kernels {

// How the main kernel finds cache position p of a sequence's K and V.
//  * contiguous (block_size 0): row p of [kv_capacity, kv_heads, head_dim].
//  * paged: row p % block_size of block table[p / block_size] of a pool [num_blocks, block_size,
//    kv_heads, head_dim]; the table is host data baked into the load addresses (PagedAttention.hpp).
struct KvAddressing {
  int64_t block_size = 0;
  std::shared_ptr<const std::vector<int32_t>> table;  // null when contiguous
  bool paged() const { return block_size > 0; }
};

// One sequence of a launch, its arguments already checked by the caller (shape, numels, table).
struct AttentionPart {
  AttentionShape shape;  // paged: kv_capacity = the table's positions
  Buffer q, k, v, out;
  KvAddressing kv;
};

// Throws UserError naming `kname` for the shape errors attention() lists (sizes, heads, kv_len
// beyond kv_capacity, head_dim, scale, 2^31 limits).
void check_attention_shape(const std::string& kname, const AttentionShape& s);

// Throws UserError naming `kname` if the workspace is not from make_attention_workspace or the chip
// has no matrix unit for the caches' operand dtypes.
void check_attention_device(const std::string& kname, const Device& dev, const AttentionWorkspace& ws, DType k_type,
                            DType v_type);

// Chooses the configuration (from `base`; for several parts, as for one sequence holding the
// batch's heads side by side and the longest context), checks it, and launches the main kernel and
// the combine (one launch each for all parts, the largest part first) on `stream`. `lse` only with
// one part. The split scratch is allocated for the call and freed after it, also on an exception.
AttentionTiming launch_attention(Device& dev, const AttentionWorkspace& ws, const std::vector<AttentionPart>& parts,
                                 Stream* stream, const AttentionConfig& base, const Buffer* lse);

}  // namespace ppu::kernels
