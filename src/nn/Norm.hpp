// Norm: RMSNorm (weight) or LayerNorm (weight and bias) over the last dimension of [rows, cols].
//
//   nn::Norm n(dev, "model.layers.0.input_layernorm", hidden, /*layer_norm=*/false, 1e-6f);
//   n.forward(dev, x, h, T);      // h = rms_norm(x) * w
//
// Parameter names: prefix + ".weight" (initialised to 1) and, for LayerNorm, prefix + ".bias".
#pragma once

#include <string>

#include "nn/Parameter.hpp"

namespace ppu::nn {

class Norm {
 public:
  Norm() = default;
  Norm(Device& dev, const std::string& prefix, int64_t cols, bool layer_norm, float eps);
  void forward(Device& dev, const Buffer& in, const Buffer& out, int64_t rows) const;
  int64_t cols() const { return cols_; }
  float eps() const { return eps_; }

  Parameter weight, bias;  // bias: LayerNorm only

 private:
  int64_t cols_ = 0;
  float eps_ = 0;
};

}  // namespace ppu::nn
