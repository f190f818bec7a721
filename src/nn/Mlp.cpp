#include "nn/Mlp.hpp"

#include "kernels/BiasActivation.hpp"
#include "kernels/Elementwise.hpp"

namespace ppu::nn {

Mlp::Mlp(Device& dev, const std::string& prefix, int64_t hidden, int64_t ffn, bool gelu, bool bias, DType weight_dtype,
         const ParallelGroups& groups)
    : gelu_(gelu) {
  const int tp = groups.degrees.tp, r = groups.tp_rank;
  if (!gelu) gate_proj = Linear(dev, prefix + "gate_proj", ffn, hidden, weight_dtype, false, TpSplit::kColumn, r, tp);
  up_proj = Linear(dev, prefix + "up_proj", ffn, hidden, weight_dtype, bias, TpSplit::kColumn, r, tp);
  down_proj = Linear(dev, prefix + "down_proj", hidden, ffn, weight_dtype, bias, TpSplit::kRow, r, tp);
}

void Mlp::forward(Context& ctx, const Buffer& h, const Buffer& o, int64_t T) const {
  Device& dev = ctx.dev();
  const int64_t F = up_proj.out_local();
  const DType at = ctx.act_dtype(), mm = ctx.matmul_dtype();
  if (gelu_) {  // GPT: fc2(gelu(fc1 h + b1))
    DeviceBuffer u = ctx.alloc(T * F, "up", at), gu = ctx.alloc(T * F, "gelu", mm);
    ctx.op("mlp gemm", [&] { up_proj.forward(dev, h, u, T); });
    ctx.op("mlp activation", [&] {
      if (up_proj.bias.held()) kernels::bias_activation(dev, u, up_proj.bias, gu, T, F, UnaryOp::kGelu);
      else kernels::unary(dev, UnaryOp::kGelu, u, gu);
    });
    ctx.op("mlp gemm", [&] { down_proj.forward(dev, gu, o, T); });
    return;
  }
  DeviceBuffer g = ctx.alloc(T * F, "gate", at), u = ctx.alloc(T * F, "up", at), gu = ctx.alloc(T * F, "gate_up", mm);
  ctx.op("mlp gemm", [&] {
    gate_proj.forward(dev, h, g, T);
    up_proj.forward(dev, h, u, T);
  });
  ctx.op("mlp activation", [&] {
    Kernel gate = kernels::make_unary(dev.chip(), UnaryOp::kSilu, g, g);
    Kernel prod = kernels::make_binary(dev.chip(), BinaryOp::kMul, g, u, gu);
    set_elementwise_fn(gate, ElementwiseFn::kSwigluGate);  // SwiGLU: its backward is one kernel (nn/OpBackward)
    set_elementwise_fn(prod, ElementwiseFn::kSwiglu);
    dev.launch(std::move(gate));
    dev.launch(std::move(prod));
  });
  ctx.op("mlp gemm", [&] { down_proj.forward(dev, gu, o, T); });
}

}  // namespace ppu::nn
