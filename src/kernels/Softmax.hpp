// Softmax over the last dim: y[r, c] = exp(x[r, c] - m_r) / s_r with m_r = max_c x[r, c] and
// s_r = sum_c exp(x[r, c] - m_r), for row-major x and y [rows, cols]. x and y may be any dtype
// (each its own); everything between the load and the store is fp32, so large inputs (|x| ~ 1e4)
// neither overflow nor lose the result: only differences to the row maximum are exponentiated.
//
//   kernels::softmax(dev, logits, probs, tokens, vocab);   // [tokens, vocab] -> [tokens, vocab]
//
// Rows up to kSoftmaxTileElems long are read once: a tile of whole rows is loaded, reduced,
// exponentiated, normalised and stored. Longer rows (a vocabulary, e.g. 151936) are done one row
// per block in two passes over chunks of kSoftmaxTileElems columns:
//   pass 1 (online max and sum): for each chunk, m' = max(m, max(chunk)), s = s * exp(m - m') +
//          sum(exp(chunk - m')), m = m';
//   pass 2: reload each chunk and store exp(chunk - m) / s.
// In-place use (y = x) is allowed: every chunk of a row is read before it is written.
//
// Not here: masking, a temperature or scale (apply one with kernels::unary first), log-softmax, or
// splitting one row over several blocks. -inf elements (masked) give 0, whole chunks of them
// included; a row containing +inf or NaN, or only -inf, gives NaN, as in PyTorch.
#pragma once

#include <vector>

#include "runtime/Device.hpp"

namespace ppu::kernels {

// Elements of one SRAM tile (fp32: 64 KiB). kSoftmaxStages of them, plus row statistics, stay far
// below the smallest core SRAM (420 KiB, a100-80g / a800).
inline constexpr int kSoftmaxTileElems = 16384;
inline constexpr int kSoftmaxStages = 3;  // tiles loaded ahead of the vector unit

// Builds the softmax of x [rows, cols] into y [rows, cols]. Throws UserError naming "softmax" if
// rows or cols is not positive or a buffer's numel is not rows * cols.
Kernel make_softmax(const Buffer& x, const Buffer& y, int64_t rows, int64_t cols);

KernelTiming softmax(Device& dev, const Buffer& x, const Buffer& y, int64_t rows, int64_t cols, Stream* s = nullptr);

// Scalar reference in double (max-subtracted): x [rows, cols] as fp32 values (already rounded to x's
// dtype); returns [rows, cols] in double, unrounded.
std::vector<double> softmax_reference(const std::vector<float>& x, int64_t rows, int64_t cols);

}  // namespace ppu::kernels
