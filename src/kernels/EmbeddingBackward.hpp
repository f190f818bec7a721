// The token embedding's backward: adds each token's output gradient into the table row of its id,
// deterministically, with every row summed by one block in token order (no atomics).
//
//   dx:     [tokens, hidden]  fp32, bf16 or fp16 (the gradient of the lookup's output)
//   dtable: [vocab, hidden]   fp32; dtable[v, :] += sum over t with ids[t] == v of dx[t, :]
//
//   kernels::embedding_grad_zero(dev, dembed);                          // once per optimizer step
//   kernels::embedding_backward(dev, dx, dembed, 151936, 1024, ids);    // per micro-batch: +=
//
// The ids are host data (the batch's tokens). The host groups the token positions by id (ids
// ascending, positions ascending within an id) and gives each block a run of whole ids - about
// the same number of tokens per block, at most kEmbeddingBackwardMaxRowsPerBlock unless one id
// alone has more - and one column chunk of kEmbeddingBackwardChunkElems. For each of its ids a
// block loads the table row into an fp32 accumulator, adds the dx rows in token order, and stores
// the row back: dtable[v] = (((dtable[v] + dx[t0]) + dx[t1]) + ...) in fp32 with t0 < t1 < ...
// Each element has exactly one writer and a fixed order of additions, so the result is the same
// bits for any number of host threads; dx rows and table rows stream through SRAM rings
// kEmbeddingBackwardStages deep.
//
// Only the touched rows are read and written: the rows of ids absent from the batch keep whatever
// dtable held. So the table must hold zeros (or the sum of earlier micro-batches, for gradient
// accumulation) before the first call: embedding_grad_zero writes zeros over the whole table.
//
// Not here: device-resident ids; a padding id whose rows are skipped (leave those tokens out of
// `ids` and dx, or zero their dx rows); splitting one very frequent id over several blocks (a batch
// where one id fills most positions runs that id's sum in one block per column chunk); tied
// input/output embeddings (add the LM head's weight gradient separately, e.g. with kernels::binary).
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/Device.hpp"

namespace ppu::kernels {

// Columns of one row chunk (fp32: 16 KiB). kEmbeddingBackwardStages dx rows plus
// kEmbeddingBackwardStages + 1 accumulators use 144 KiB, well within the smallest core SRAM
// (420 KiB, a100-80g / a800), leaving room for a second resident block.
inline constexpr int kEmbeddingBackwardChunkElems = 4096;
inline constexpr int kEmbeddingBackwardStages = 4;  // dx rows loaded ahead of their adds
// Tokens one block sums when ids repeat no more than that (fewer when that leaves too few blocks).
inline constexpr int kEmbeddingBackwardMaxRowsPerBlock = 32;
// Elements one zeroing store covers (fp32: 32 KiB).
inline constexpr int kEmbeddingGradZeroTileElems = 8192;

// Builds dtable [vocab, hidden] fp32 += the rows of dx [ids.size(), hidden] at their ids (see the
// file comment for the order of the additions). Throws UserError naming "embedding_backward" if
// vocab, hidden or ids.size() is not positive, dtable is not fp32 or dx not a float dtype, a
// buffer's numel does not match its shape, or an id is outside [0, vocab) (naming the token, the id
// and the valid range). The ids are grouped and copied into the kernel. dx must not overlap dtable.
Kernel make_embedding_backward(const Buffer& dx, const Buffer& dtable, int64_t vocab, int64_t hidden,
                               const std::vector<int32_t>& ids);

KernelTiming embedding_backward(Device& dev, const Buffer& dx, const Buffer& dtable, int64_t vocab, int64_t hidden,
                                const std::vector<int32_t>& ids, Stream* s = nullptr);

// Builds the kernel that writes 0 over every element of `dtable` (fp32, any numel; UserError
// naming "embedding_grad_zero" otherwise). Its programs depend on the size alone (timing-cached).
Kernel make_embedding_grad_zero(const Buffer& dtable);

KernelTiming embedding_grad_zero(Device& dev, const Buffer& dtable, Stream* s = nullptr);

// Scalar reference in double: dtable_in [vocab, hidden] plus, for every token t, dx[t, :] (dx as
// fp32 values, already rounded to its dtype) at row ids[t]; returns [vocab, hidden], unrounded.
// Preconditions as for make_embedding_backward (checked with PPU_CHECK).
std::vector<double> embedding_backward_reference(const std::vector<float>& dx, const std::vector<float>& dtable_in,
                                                 int64_t vocab, int64_t hidden, const std::vector<int32_t>& ids);

}  // namespace ppu::kernels
