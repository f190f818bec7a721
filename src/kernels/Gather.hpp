// Row gathers with host-known indices: the data movement of embedding lookups and of mixture-of-
// experts dispatch and combine.
//
//   gather_rows(dev, src, width, {4, 0, 3}, dst);             // dst[i, :] = src[rows[i], :]
//   gather_combine(dev, src, width, idx, k, weights, dst);    // dst[t, :] = sum_j w[t, j] * src[idx[t*k + j], :]
//
// The indices are host data captured by the program builder (in a serving loop the token ids and
// the router's top-k choices are on the host anyway). gather_rows is the embedding kernel's program
// (kernels/Embedding.hpp); gather_combine assembles [kGatherRows, chunk] tiles from single-row DMA
// loads (loads at a buffer row offset), so the time is that of many small transfers, as on hardware. Weights of gather_combine stay on the device ([tokens, k], any float
// dtype) and are read by the kernel.
//
// Not here: computing routes (top-k) - see the model code; scatter with atomics (not modelled).
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/Device.hpp"

namespace ppu::kernels {

inline constexpr int kGatherRows = 16;     // rows per tile
inline constexpr int kGatherChunk = 2048;  // columns per tile

// src [n_src, width], dst [rows.size(), width], any float dtypes (converted on the way).
// Throws UserError on an index outside [0, n_src), an empty row list, or mismatched sizes.
Kernel make_gather_rows(const Buffer& src, int64_t width, const std::vector<int32_t>& rows, const Buffer& dst);
KernelTiming gather_rows(Device& dev, const Buffer& src, int64_t width, const std::vector<int32_t>& rows,
                         const Buffer& dst, Stream* s = nullptr);

// src [n_src, width]; index: tokens*k row numbers of src; weights [tokens, k]; dst [tokens, width].
// accumulate: dst += the combination (e.g. onto a residual stream) instead of dst = it.
Kernel make_gather_combine(const Buffer& src, int64_t width, const std::vector<int32_t>& index, int64_t k,
                           const Buffer& weights, const Buffer& dst, bool accumulate = false);
KernelTiming gather_combine(Device& dev, const Buffer& src, int64_t width, const std::vector<int32_t>& index, int64_t k,
                            const Buffer& weights, const Buffer& dst, bool accumulate = false, Stream* s = nullptr);

// References (double accumulation): src/weights/dst given as fp32 host values.
std::vector<float> gather_rows_reference(const std::vector<float>& src, int64_t width, const std::vector<int32_t>& rows);
std::vector<float> gather_combine_reference(const std::vector<float>& src, int64_t width,
                                            const std::vector<int32_t>& index, int64_t k,
                                            const std::vector<float>& weights, const std::vector<float>& dst_in,
                                            bool accumulate);

}  // namespace ppu::kernels
