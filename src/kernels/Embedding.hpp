// Token embedding lookup: out[t, :] = table[ids[t], :] for token ids known on the host when the
// kernel is built (a tokenizer's output or the token just sampled).
//
//   table: [vocab, hidden]   any dtype (bf16 in checkpoints)
//   out:   [tokens, hidden]  any dtype; tokens = ids.size()
//
//   kernels::embedding(dev, embed_tokens, hidden_states, 151936, 1024, {9707, 1879});
//
// Each selected row is moved by the DMA in chunks of up to kEmbeddingChunkElems columns through an
// SRAM buffer of the table's dtype, so the values are copied exactly when out has the table's
// dtype (otherwise rounded once, RNE, by the store). Several tokens go to one block, their rows
// streamed through kEmbeddingStages buffers; the vector and matrix units are not used.
//
// Not here: ids that live on the device (a gather driven by device data has no place in a tile
// program, whose addresses are fixed when it is built), positional embeddings, or scaling
// (Gemma's sqrt(hidden)). Nothing is fused: each row is one load and one store.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/Device.hpp"

namespace ppu::kernels {

// Columns of one row chunk (fp32: 32 KiB). kEmbeddingStages chunks stay far below the smallest core
// SRAM (420 KiB, a100-80g / a800) and leave room for a second resident block.
inline constexpr int kEmbeddingChunkElems = 8192;
inline constexpr int kEmbeddingStages = 4;  // rows loaded ahead of their stores
// Most tokens one block copies (fewer when that leaves too few blocks to fill the chip).
inline constexpr int kEmbeddingMaxTokensPerBlock = 32;

// Builds the lookup of `ids` (one per output row) in table [vocab, hidden] into out [ids.size(),
// hidden]. Throws UserError naming "embedding" if vocab, hidden or ids.size() is not positive, a
// buffer's numel does not match its shape, or an id is outside [0, vocab) (naming the token, the
// id and the vocab size). The ids are copied into the kernel.
Kernel make_embedding(const Buffer& table, const Buffer& out, int64_t vocab, int64_t hidden,
                      const std::vector<int32_t>& ids);

KernelTiming embedding(Device& dev, const Buffer& table, const Buffer& out, int64_t vocab, int64_t hidden,
                       const std::vector<int32_t>& ids, Stream* s = nullptr);

// Scalar reference: table [vocab, hidden] as fp32 values; returns [ids.size(), hidden], the selected
// rows unchanged. Same preconditions as make_embedding (ids in range), checked with PPU_CHECK.
std::vector<float> embedding_reference(const std::vector<float>& table, int64_t vocab, int64_t hidden,
                                       const std::vector<int32_t>& ids);

}  // namespace ppu::kernels
