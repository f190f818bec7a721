#include "nn/Norm.hpp"

#include "kernels/LayerNorm.hpp"
#include "kernels/RmsNorm.hpp"

namespace ppu::nn {

Norm::Norm(Device& dev, const std::string& prefix, int64_t cols, bool layer_norm, float eps) : cols_(cols), eps_(eps) {
  weight = Parameter::make(dev, prefix + ".weight", {cols}, DType::kBF16, Init::kOnes);
  if (layer_norm) bias = Parameter::make(dev, prefix + ".bias", {cols}, DType::kBF16, Init::kRandom);
}

void Norm::forward(Device& dev, const Buffer& in, const Buffer& out, int64_t rows) const {
  if (bias.held()) kernels::layer_norm(dev, in, weight, bias, out, rows, cols_, eps_);
  else kernels::rms_norm(dev, in, weight, out, rows, cols_, eps_);
}

}  // namespace ppu::nn
