// Linear: y [rows, out] = x [rows, in] . W^T (+ b), W [out, in] as checkpoints store it, split for
// tensor parallelism in Megatron's two ways:
//   kColumn  each rank holds out / tp rows of W (and of b): y holds this rank's columns;
//   kRow     each rank holds in / tp columns of W: y is a partial sum, to be reduced over the TP
//            group before the (replicated) bias is added - the caller does both (add_bias after).
//   kReplicated  the whole W on every rank.
//
//   nn::Linear q(dev, "model.layers.0.self_attn.q_proj", q_width, hidden, mm, true, nn::TpSplit::kColumn, 0, 2);
//   q.forward(dev, h, y, T);   // GEMM launch
//   q.add_bias(dev, y, T);     // nothing without a bias
//
// Parameter names: prefix + ".weight" / ".bias". The weight is in the matrix-input dtype; the bias bf16.
// An int8 weight makes a W8A8 layer (SmoothQuant's scheme): the weight carries a scale per output
// channel (Parameter::scale), and forward() quantises x per token before the int8 GEMM.
#pragma once

#include <array>
#include <string>
#include <string_view>

#include "nn/Parameter.hpp"

namespace ppu::nn {

enum class TpSplit : uint8_t { kReplicated, kColumn, kRow, kCount };
inline constexpr std::array<std::string_view, static_cast<size_t>(TpSplit::kCount)> kTpSplitNames = {"replicated", "column",
                                                                                                    "row"};
static_assert(kTpSplitNames.size() == static_cast<size_t>(TpSplit::kCount));

class Linear {
 public:
  Linear() = default;
  // UserError if tp does not divide the split dimension.
  Linear(Device& dev, const std::string& prefix, int64_t out, int64_t in, DType weight_dtype, bool bias, TpSplit split,
         int tp_rank = 0, int tp = 1);

  int64_t out_local() const { return out_local_; }  // columns of y on this rank
  int64_t in_local() const { return in_local_; }    // columns of x this rank reads
  // The GEMM y [rows, out_local] = x [rows, in_local] . W^T as one kernel (for grouped launches; never
  // split-K).
  Kernel make(const ChipSpec& chip, const Buffer& x, const Buffer& y, int64_t rows) const;
  // Runs the GEMM (kernels::gemm: with split-K where a few rows leave the cores idle, as in decode).
  KernelTiming forward(Device& dev, const Buffer& x, const Buffer& y, int64_t rows) const;
  // y += b per row (no-op without a bias).
  void add_bias(Device& dev, const Buffer& y, int64_t rows) const;

  Parameter weight, bias;  // bias empty unless asked for

 private:
  int64_t out_local_ = 0, in_local_ = 0;
};

}  // namespace ppu::nn
