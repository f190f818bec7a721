// Elementwise kernels over flat tensors of any dtype: the data are streamed through SRAM in
// 1 x kMapTile tiles, double-buffered, converted to fp32 by the DMA, transformed on the vector unit
// and converted to the output dtype on store. The grid is a persistent one (kMapBlocksPerCore blocks
// per core, each streaming a contiguous range of tiles), as grid-stride GPU kernels are, so block
// dispatch and pipeline fill are paid a few times per core rather than once per tile.
//
//   kernels::copy(dev, src, dst);                          // also converts dtype
//   kernels::unary(dev, UnaryOp::kSilu, x, y);
//   kernels::binary(dev, BinaryOp::kAdd, a, b, y);         // y = a + b (same numel)
//   kernels::triad(dev, b, c, a, 0.4f);                    // a = b + 0.4 * c (BabelStream triad)
//
// All buffers of one call must have the same number of elements (UserError otherwise). In-place
// use (output = an input) is allowed: each tile is read before it is written.
#pragma once

#include "runtime/Device.hpp"

namespace ppu::kernels {

inline constexpr int kMapTile = 8192;        // elements per tile
inline constexpr int kMapBlocksPerCore = 2;  // persistent grid: blocks per core

Kernel make_copy(const ChipSpec& chip, const Buffer& src, const Buffer& dst);
Kernel make_unary(const ChipSpec& chip, UnaryOp op, const Buffer& x, const Buffer& y, float imm = 0.0f);
Kernel make_binary(const ChipSpec& chip, BinaryOp op, const Buffer& a, const Buffer& b, const Buffer& y);
Kernel make_triad(const ChipSpec& chip, const Buffer& b, const Buffer& c, const Buffer& a, float scalar);

KernelTiming copy(Device& dev, const Buffer& src, const Buffer& dst, Stream* s = nullptr);
KernelTiming unary(Device& dev, UnaryOp op, const Buffer& x, const Buffer& y, float imm = 0.0f, Stream* s = nullptr);
KernelTiming binary(Device& dev, BinaryOp op, const Buffer& a, const Buffer& b, const Buffer& y, Stream* s = nullptr);
KernelTiming triad(Device& dev, const Buffer& b, const Buffer& c, const Buffer& a, float scalar, Stream* s = nullptr);

// make_binary rejects BinaryOp::kSelect (a masked move that reads its output).
// Scalar references (fp32 math as the vector unit does it); binary_reference(kSelect, a, b) is the
// masked move onto a zero destination.
float unary_reference(UnaryOp op, float x, float imm);
float binary_reference(BinaryOp op, float a, float b);

}  // namespace ppu::kernels
