// Token sampling on the device: greedy arg-max and top-k candidates over rows of logits, plus the
// host-side draw that turns k candidates into a token exactly as models/Sampler does.
//
//   logits: [rows, vocab]  fp32, bf16 or fp16 (read as fp32)
//   ids:    [rows]         fp32 holding exact integers (the vector unit has no integer type; every
//                          id below 2^24 is exact): the arg-max of each row, ties to the lowest id
//   values, cand_ids: [rows, k] fp32: each row's k largest logits in descending order (ties by
//                          ascending id) and their ids - the order Sampler's partial sort gives
//
//   kernels::argmax(dev, logits, ids, 1, 151936);                       // greedy, on the device
//   std::vector<int32_t> next = kernels::download_ids(dev, ids);
//   kernels::top_k(dev, logits, values, cand_ids, 1, 151936, 20);        // k candidates
//   int32_t tok = kernels::sample_from_candidates(vals_row, ids_row, 0.7, 0.8, uniform);
//   // or all at once: kernels::sample_tokens(dev, logits, rows, vocab, params, uniforms)
//
// Greedy: a row is split over several blocks when there are too few rows to fill the chip (each
// block walks its segment in chunks, folding every chunk's max and arg-max into a running pair with
// cmp_gt/select), then a second kernel picks, per row, the partial maximum that comes first and its
// index (arg-max, a one-hot mask from cmp_eq against an iota, multiply and sum).
// Top-k: each block holds one segment of a row in SRAM and selects k times (max, arg-max, mask the
// winner to NaN so that later arg-maxes skip it, record value and id at column j with a one-hot
// select); a second kernel runs the same selection over the segments' candidates. Both kernels are
// pure functions of the shapes (timing_key set).
//
// Where each step runs: arg-max and top-k on the device; temperature, softmax, top-p and the draw on
// the host over the k candidates (2 k values per row cross the host link instead of the whole
// row), in double precision with the same operations as models/Sampler, so that with the same
// uniform draw the token is the same. The uniform comes from the caller (the host's seeded RNG).
//
// Not here: top_k = 0 (no limit) or k > kTopKMax with temperature > 0 - the caller downloads the
// logits and uses the host sampler; rows with NaN logits (NaNs are skipped by max and arg-max, so
// greedy ignores them, but a row needs at least k non-NaN logits for top-k); repetition penalties.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "runtime/Device.hpp"

namespace ppu::kernels {

// Elements of one SRAM tile (fp32: 32 KiB). Greedy uses kSamplingStages tiles plus row statistics;
// top-k holds one segment of this size with its iota and mask (96 KiB), far below the smallest
// core SRAM (420 KiB, a100-80g / a800).
inline constexpr int kSamplingTileElems = 8192;
inline constexpr int kSamplingStages = 3;  // tiles loaded ahead of the vector unit (greedy)
// Shortest segment a greedy block takes when a row is split: below this, the per-block latency
// (dispatch, DMA) outweighs the bandwidth another core adds.
inline constexpr int64_t kArgMaxMinSplitCols = 2048;
// Largest k of top_k (its second pass holds splits * k candidates of a row in one tile).
inline constexpr int64_t kTopKMax = 256;

// How a sampling kernel splits rows: `splits` blocks per row, each taking `split_cols` columns (the
// last one fewer). splits == 1: one kernel, no scratch.
struct SamplingSplit {
  int64_t rows = 0, cols = 0, k = 1;  // k = 1 for arg-max
  int64_t splits = 1, split_cols = 0;
  // fp32 elements of scratch the two-kernel form needs (0 when splits == 1).
  int64_t scratch_elems() const { return splits > 1 ? 2 * rows * splits * k : 0; }
};

// Greedy split for `chip`: enough blocks to fill the cores when rows are few, segments of at least
// kArgMaxMinSplitCols. Throws UserError naming "argmax" for non-positive rows or cols, or cols of
// 2^24 or more (ids would not be exact in fp32).
SamplingSplit plan_argmax(const ChipSpec& chip, int64_t rows, int64_t cols);

// Builds the greedy kernels: logits [rows, cols] -> ids [rows] (fp32 integers). One kernel if
// plan.splits == 1, else two (partials into `scratch`, then the combine), launched in order.
// scratch: fp32 with at least plan.scratch_elems() elements (ignored when none are needed).
// Throws UserError naming "argmax" for a buffer whose numel does not match, a logits dtype other
// than fp32/bf16/fp16, non-fp32 ids or scratch, or a scratch that is too small.
std::vector<Kernel> make_argmax(const ChipSpec& chip, const Buffer& logits, const Buffer& ids, int64_t rows,
                                int64_t cols, const Buffer& scratch = Buffer{});

// Runs make_argmax on `dev`, allocating (and freeing) the scratch; returns each launch's timing.
std::vector<KernelTiming> argmax(Device& dev, const Buffer& logits, const Buffer& ids, int64_t rows, int64_t cols,
                                 Stream* s = nullptr);

// Top-k split: one segment of at most kSamplingTileElems per block, the number of segments chosen
// to balance the first pass (about 5 k x segment lane operations per block) against the second
// (about 7 k x splits x k per row). Throws UserError naming "top_k" for non-positive rows, cols or
// k, k > min(cols, kTopKMax), cols >= 2^24, or a row too long for k (splits x k must fit a tile).
SamplingSplit plan_top_k(int64_t rows, int64_t cols, int64_t k);

// Builds the top-k kernels: logits [rows, cols] -> values [rows, k] and ids [rows, k] (fp32), each
// row descending by value, ties by ascending id. One kernel when plan.splits == 1, else two (the
// candidates of every segment into `scratch`, then the selection among them). Errors as
// plan_top_k, plus buffer numel/dtype mismatches and a short scratch (UserError naming "top_k").
std::vector<Kernel> make_top_k(const Buffer& logits, const Buffer& values, const Buffer& ids, int64_t rows,
                               int64_t cols, int64_t k, const Buffer& scratch = Buffer{});

std::vector<KernelTiming> top_k(Device& dev, const Buffer& logits, const Buffer& values, const Buffer& ids,
                                int64_t rows, int64_t cols, int64_t k, Stream* s = nullptr);

// Downloads an fp32 buffer of ids (timed as a device-to-host copy) as int32. Throws UserError if a
// value is not an integer in [0, 2^24).
std::vector<int32_t> download_ids(Device& dev, const Buffer& ids, Stream* s = nullptr);

// The host's step after top-k: candidates `values` (descending, ties by ascending id) with their
// `ids`; softmax of values / temperature, keep the smallest prefix whose probability mass reaches
// top_p, and draw with `uniform` in [0, 1). The same double-precision operations, in the same
// order, as models/Sampler after its partial sort, so equal inputs give the same token. Throws
// UserError for empty or mismatched spans, temperature <= 0, top_p outside (0, 1] or uniform
// outside [0, 1).
int32_t sample_from_candidates(std::span<const float> values, std::span<const int32_t> ids, double temperature,
                               double top_p, double uniform);

struct SamplingParams {
  double temperature = 0.0;  // 0: greedy
  int64_t top_k = 0;         // must be in [1, kTopKMax] when temperature > 0
  double top_p = 1.0;
};

// Samples one token per row of logits [rows, vocab]: greedy (arg-max on the device) when
// temperature is 0, else top-k on the device and sample_from_candidates on the host with
// uniforms[r] for row r (uniforms.size() == rows; ignored for greedy). k is min(top_k, vocab), as
// the host sampler clamps it. Throws UserError for top_k outside [1, kTopKMax] with temperature > 0
// (use the host sampler), a wrong number of uniforms, or what the kernels reject.
std::vector<int32_t> sample_tokens(Device& dev, const Buffer& logits, int64_t rows, int64_t vocab,
                                   const SamplingParams& params, std::span<const double> uniforms,
                                   Stream* s = nullptr);

// Scalar references: x [rows, cols]. argmax_reference: first index of the maximum (NaNs skipped,
// 0 for a row of NaNs). top_k_reference: [rows, k] ids in descending order of value, ties by id.
std::vector<int32_t> argmax_reference(const std::vector<float>& x, int64_t rows, int64_t cols);
std::vector<int32_t> top_k_reference(const std::vector<float>& x, int64_t rows, int64_t cols, int64_t k);

}  // namespace ppu::kernels
