// Softmax cross-entropy over a vocabulary, for language-model training: the loss of each row of
// logits against its target id, and the gradient of a scaled sum of those losses.
//
//   logits:  [rows, vocab]  fp32 or bf16
//   targets: rows host ids in [0, vocab), or kCrossEntropyIgnore (-1: the row is ignored)
//   loss:    [rows] fp32    loss[r] = lse[r] - logits[r, targets[r]]   (0 for an ignored row)
//   lse:     [rows] fp32    lse[r] = log(sum_c exp(logits[r, c]))       (every row, ignored ones too)
//   dlogits: [rows, vocab]  fp32 or bf16, may be logits itself (in place)
//            dlogits[r, c] = scale * (exp(logits[r, c] - lse[r]) - [c == targets[r]])  (0 if ignored)
//
//   kernels::cross_entropy(dev, logits, loss, lse, tokens, 151936, targets);
//   // mean loss over the n rows whose target is not -1: sum(loss) / n; its gradient:
//   kernels::cross_entropy_backward(dev, logits, lse, logits, tokens, 151936, targets, 1.0f / n);
//
// The forward reads every logit once: rows up to kCrossEntropyTileElems long go several to a tile
// (at most kCrossEntropyMaxTileRows), longer rows one per block in chunks of kCrossEntropyTileElems
// columns with an online maximum and sum of exponentials (Softmax.hpp's pass 1), so no [rows,
// vocab] fp32 temporary exists anywhere; lse = max + log(sum), and the target logit is one
// element the DMA fetches by itself (the ids are host data, fixed when the programs are built).
// The backward reads the saved lse and the logits once and writes dlogits once: the one-hot is a
// compare of an iota against the target id (only in the chunk holding the target, for chunked
// rows); in-place use is safe because each tile is read before it is written. An ignored row's
// loss and gradient are stored as exact zeros from a zero buffer (its logits are not read in the
// backward when the row is chunked), whatever its logits hold.
//
// Numerics: fp32 between the load and the store; only differences to a running maximum are
// exponentiated, so logits of any magnitude work. A row of only -inf gives lse = -inf and loss NaN;
// +inf or NaN anywhere in a row gives NaN, as in PyTorch.
//
// Not here: label smoothing, class weights, z-loss, logit soft-capping, a fused LM-head GEMM (the
// logits must exist; chunking the rows over several calls bounds their memory), the reduction of
// the per-row losses to a mean (sum `loss` on the host, or with kernels::reduce), or splitting one
// row over several blocks (a few rows of a 152K vocabulary use only a few cores). Vocabularies must
// be shorter than kMaxExactIndex (2^24): the one-hot compares column ids as exact fp32 integers.
// The programs depend on the targets, so the timing engine does not cache them (no timing_key).
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/Device.hpp"

namespace ppu::kernels {

// Elements of one SRAM tile (fp32: 64 KiB). The backward holds kCrossEntropyStages of them plus an
// iota / one-hot scratch tile: 256 KiB, within the smallest core SRAM (420 KiB, a100-80g / a800).
inline constexpr int kCrossEntropyTileElems = 16384;
inline constexpr int kCrossEntropyStages = 3;  // tiles loaded ahead of the vector unit
// Most rows in one tile of short rows: each row's target costs one instruction (a DMA of the
// target logit in the forward, a fill building the per-row target column in the backward), so
// this keeps a block's program to a few hundred instructions.
inline constexpr int kCrossEntropyMaxTileRows = 32;
// The target id of a row that takes no part in the loss (PyTorch's ignore_index default is -100;
// here it is -1).
inline constexpr int32_t kCrossEntropyIgnore = -1;

// Builds the forward: loss [rows] and lse [rows] (both fp32) from logits [rows, vocab] (fp32 or
// bf16) and `targets` (rows ids, each in [0, vocab) or kCrossEntropyIgnore; copied into the
// kernel). Throws UserError naming "cross_entropy" if rows or vocab is not positive, vocab >=
// kMaxExactIndex, targets.size() != rows, a buffer's numel does not match its shape or its dtype
// is not a valid one, or a target is outside the valid range (naming the row, the id and the
// range). The outputs must not overlap logits.
Kernel make_cross_entropy(const Buffer& logits, const Buffer& loss, const Buffer& lse, int64_t rows, int64_t vocab,
                          const std::vector<int32_t>& targets);

KernelTiming cross_entropy(Device& dev, const Buffer& logits, const Buffer& loss, const Buffer& lse, int64_t rows,
                           int64_t vocab, const std::vector<int32_t>& targets, Stream* s = nullptr);

// Builds the backward: dlogits [rows, vocab] (fp32 or bf16; may be the same buffer as logits) =
// scale * (softmax(logits) - onehot(targets)), zero on ignored rows, from logits [rows, vocab]
// (fp32 or bf16) and the forward's lse [rows] fp32. `scale` multiplies the whole gradient, e.g.
// 1 / (rows not ignored across the whole batch) for a mean loss; it must be finite. Same
// UserErrors as make_cross_entropy (naming "cross_entropy_backward"), plus a non-finite scale.
Kernel make_cross_entropy_backward(const Buffer& logits, const Buffer& lse, const Buffer& dlogits, int64_t rows,
                                   int64_t vocab, const std::vector<int32_t>& targets, float scale);

KernelTiming cross_entropy_backward(Device& dev, const Buffer& logits, const Buffer& lse, const Buffer& dlogits,
                                    int64_t rows, int64_t vocab, const std::vector<int32_t>& targets, float scale,
                                    Stream* s = nullptr);

// Scalar reference in double: logits [rows, vocab] in double (the values the device holds, or
// perturbed ones: a finite-difference test differentiates this function). loss and lse are [rows]
// (loss 0 on ignored rows), unrounded. Preconditions as for make_cross_entropy (PPU_CHECK).
struct CrossEntropyReference {
  std::vector<double> loss, lse;
};
CrossEntropyReference cross_entropy_reference(const std::vector<double>& logits, int64_t rows, int64_t vocab,
                                              const std::vector<int32_t>& targets);

// Scalar reference of the backward in double, from the logits alone (lse recomputed in double):
// returns dlogits [rows, vocab], unrounded.
std::vector<double> cross_entropy_backward_reference(const std::vector<double>& logits, int64_t rows, int64_t vocab,
                                                     const std::vector<int32_t>& targets, double scale);

}  // namespace ppu::kernels
