// Mlp: a dense decoder layer's feed-forward block, as a partial sum over the TP group.
//   SwiGLU (Qwen3, Llama):  o = (silu(h . Wg^T) * (h . Wu^T)) . Wd^T
//   GELU (GPT):             o = gelu(h . Wu^T + bu) . Wd^T          (+ bd, added by the caller)
// Gate and up are column-parallel, down row-parallel: under TP o is this rank's partial sum, which
// the caller reduces before adding down_proj's bias (if any) to the residual stream.
//
//   nn::Mlp mlp(dev, "model.layers.0.mlp.", hidden, ffn, /*gelu=*/false, /*bias=*/false, mm, groups);
//   mlp.forward(ctx, h, o, T);
#pragma once

#include <string>

#include "nn/Context.hpp"
#include "nn/Linear.hpp"

namespace ppu::nn {

class Mlp {
 public:
  Mlp() = default;
  Mlp(Device& dev, const std::string& prefix, int64_t hidden, int64_t ffn, bool gelu, bool bias, DType weight_dtype,
      const ParallelGroups& groups);
  // o [T, hidden] (partial under TP; without down_proj's bias) from h [T, hidden].
  void forward(Context& ctx, const Buffer& h, const Buffer& o, int64_t T) const;

  Linear gate_proj, up_proj, down_proj;  // gate_proj: SwiGLU only

 private:
  bool gelu_ = false;
};

}  // namespace ppu::nn
