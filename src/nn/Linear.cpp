#include "nn/Linear.hpp"

#include "kernels/BiasActivation.hpp"
#include "kernels/Gemm.hpp"

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
  return kernels::make_gemm(chip, kernels::GemmShape{rows, out_local_, in_local_, 1, false, true}, x, weight, y);
}

KernelTiming Linear::forward(Device& dev, const Buffer& x, const Buffer& y, int64_t rows) const {
  return kernels::gemm(dev, kernels::GemmShape{rows, out_local_, in_local_, 1, false, true}, x, weight, y);
}

void Linear::add_bias(Device& dev, const Buffer& y, int64_t rows) const {
  if (bias.held()) kernels::bias_activation(dev, y, bias, y, rows, out_local_);
}

}  // namespace ppu::nn
