// SelfAttention: a decoder layer's attention block - q/k/v projections (column-parallel under TP,
// optional biases), optional QK-norm (RMSNorm per head), RoPE, the KV cache of each sequence slot,
// the attention kernel (fused FlashAttention-style, or Megatron 2021's unfused GEMM-softmax-GEMM in
// timing-only runs) and the output projection (row-parallel: its result is a partial sum over the
// TP group, reduced by the caller, who also adds its bias).
//
//   nn::SelfAttention att(dev, spec, "model.layers.0.self_attn.", groups);
//   att.allocate_cache(dev, positions);                   // after every weight, as the model lays out memory
//   att.forward(ctx, batch, h, o, scratch, rope, ws);     // o [T, hidden] (partial under TP)
//
// Shapes: h [T, hidden]; q [T, heads/tp * d]; k, v [T, kv_heads/tp * d]; the cache of a layer
// [positions of all slots, kv_heads/tp, d], slot s at positions [slot_offset, + capacity), or - a
// paged cache (allocate_paged_cache, the serving engine's) - one K and one V pool [blocks,
// block_size, kv_heads/tp, d] that each sequence reaches through its block table
// (kernels/PagedAttention; BatchLayout::block_tables).
// Not here: the block bookkeeping (serve/KvBlocks), unfused attention and the layer-0 K tap over a
// paged cache (both read a contiguous one: a PPU_CHECK; Qwen3Model refuses them up front), the
// attention backward (nn/OpBackward).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "kernels/Attention.hpp"
#include "kernels/Rope.hpp"
#include "nn/Context.hpp"
#include "nn/Linear.hpp"
#include "nn/Norm.hpp"

namespace ppu::nn {

// Records an intermediate tensor's fp32 host values for tests (functional runs only; may be empty).
using Tap = std::function<void(const std::string& name, const std::vector<float>& values)>;

// The rows of one forward: its sequences one after another.
struct BatchLayout {
  std::vector<int64_t> row, len, past;            // per sequence: first row, new tokens, positions cached before
  std::vector<int64_t> slot_offset, slot_capacity;  // per sequence: its cache slot's first position and size
  std::vector<int32_t> positions;                 // per row: its position in its sequence
  // Paged caches only: per sequence, its block table (covering past + len positions); the slot
  // fields are then unused.
  std::vector<std::vector<int32_t>> block_tables;
  int64_t tokens = 0;
  size_t size() const { return row.size(); }
};

struct AttentionSpec {
  int64_t hidden = 0, heads = 0, kv_heads = 0, head_dim = 0;
  bool bias = false, qk_norm = false, rope = true;
  float norm_eps = 1e-6f;
  DType weight_dtype = DType::kBF16;  // projections (the matrix-input dtype)
  DType kv_dtype = DType::kBF16;
  bool unfused = false;  // Megatron-LM 2021's unfused attention (timing only)
  kernels::AttentionStyle style = kernels::AttentionStyle::kPipelined;
};

// Per-forward buffers shared by every layer's attention (allocated once by the model).
struct AttentionScratch {
  DeviceBuffer q, qn, k, kn, v, out;  // [T, q width], [T, q width], [T, kv width] x 3, [T, q width]
};

class SelfAttention {
 public:
  SelfAttention() = default;
  SelfAttention(Device& dev, const AttentionSpec& spec, const std::string& prefix, const ParallelGroups& groups);
  // The layer's K and V caches for `positions` positions of all slots (DeviceOutOfMemory past HBM).
  void allocate_cache(Device& dev, int64_t positions);
  // Instead of allocate_cache: K and V pools of `blocks` blocks of `block_size` positions each
  // ([blocks, block_size, kv_heads/tp, d]; DeviceOutOfMemory past HBM). block_size must be one
  // kernels/PagedAttention accepts (checked by the caller).
  void allocate_paged_cache(Device& dev, int64_t blocks, int64_t block_size);
  bool paged() const { return block_size_ > 0; }
  int64_t cache_bytes() const { return k_cache_.valid() ? 2 * k_cache_->bytes : 0; }
  int64_t q_width() const { return heads_ * spec_.head_dim; }   // this rank's
  int64_t kv_width() const { return kv_heads_ * spec_.head_dim; }
  // Scratch for a forward of T rows (act: activation dtype, mm: matrix-input dtype).
  AttentionScratch scratch(Context& ctx, int64_t T) const;

  // o [T, hidden] = this rank's part of attention(h) . Wo^T (no bias). Appends each sequence's new
  // keys and values to its slot (paged: to its blocks, batch.block_tables). `tap` (may be empty) sees layer-0 intermediates.
  void forward(Context& ctx, const BatchLayout& batch, const Buffer& h, const Buffer& o, const AttentionScratch& s,
               const kernels::RopeTable& rope, const kernels::AttentionWorkspace& ws, const Tap& tap = {});

  Linear q_proj, k_proj, v_proj, o_proj;
  Norm q_norm, k_norm;  // qk_norm only

 private:
  void unfused(Context& ctx, const BatchLayout& batch);
  AttentionSpec spec_;
  int64_t heads_ = 0, kv_heads_ = 0;
  int64_t block_size_ = 0;  // paged caches: positions per block; 0: contiguous slots
  DeviceBuffer k_cache_, v_cache_;
};

}  // namespace ppu::nn
