#include "nn/Linear.hpp"

#include <fmt/format.h>

#include "kernels/BiasActivation.hpp"
#include "kernels/Gemm.hpp"
#include "kernels/Quantize.hpp"

namespace ppu::nn {

Linear::Linear(Device& dev, const std::string& prefix, int64_t out, int64_t in, DType weight_dtype, bool bias,
               TpSplit split, int tp_rank, int tp) {
  const int parts = split == TpSplit::kReplicated ? 1 : tp;
  const int dim = split == TpSplit::kColumn ? 0 : split == TpSplit::kRow ? 1 : -1;
  weight = Parameter::make(dev, prefix + ".weight", {out, in}, weight_dtype, Init::kRandom,
                           Split{dim, parts > 1 ? tp_rank : 0, parts});
  out_local_ = split == TpSplit::kColumn ? out / tp : out;
  in_local_ = split == TpSplit::kRow ? in / tp : in;
  if (bias)
    this->bias = Parameter::make(dev, prefix + ".bias", {out}, DType::kBF16, Init::kRandom,
                                 split == TpSplit::kColumn ? Split{0, tp_rank, tp} : Split{});
}

Kernel Linear::make(const ChipSpec& chip, const Buffer& x, const Buffer& y, int64_t rows) const {
  if (weight.value.valid() && weight.value->dtype == DType::kI8)
    throw UserError(fmt::format("linear '{}': an int8 (W8A8) layer quantises its input first, which takes two "
                                "kernels; use forward()",
                                weight.name));
  return kernels::make_gemm(chip, kernels::GemmShape{rows, out_local_, in_local_, 1, false, true}, x, weight, y);
}

KernelTiming Linear::forward(Device& dev, const Buffer& x, const Buffer& y, int64_t rows) const {
  const kernels::GemmShape s{rows, out_local_, in_local_, 1, false, true};
  if (weight.value.valid() && weight.value->dtype == DType::kI8) {
    // W8A8: x [rows, in] quantised per token (its own kernel, timed), then the int8 GEMM with the
    // per-token and per-channel scales in its epilogue.
    DeviceBuffer xq = dev.alloc_owned(DType::kI8, rows * in_local_, weight.name + " input int8");
    DeviceBuffer sx = dev.alloc_owned(DType::kF32, rows, weight.name + " input scales");
    kernels::quantize_rows_int8(dev, x, xq, sx, rows, in_local_);
    return kernels::gemm_w8a8(dev, s, xq, sx, weight, weight.scale, y);
  }
  return kernels::gemm(dev, s, x, weight, y);
}

void Linear::add_bias(Device& dev, const Buffer& y, int64_t rows) const {
  if (bias.held()) kernels::bias_activation(dev, y, bias, y, rows, out_local_);
}

}  // namespace ppu::nn
