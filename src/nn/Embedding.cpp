#include "nn/Embedding.hpp"

#include "kernels/Elementwise.hpp"
#include "kernels/Embedding.hpp"
#include "kernels/Gather.hpp"

namespace ppu::nn {

Embedding::Embedding(Device& dev, int64_t vocab, int64_t hidden, int64_t max_positions) : vocab_(vocab), hidden_(hidden) {
  table = Parameter::make(dev, "model.embed_tokens.weight", {vocab, hidden}, DType::kBF16, Init::kRandom);
  if (max_positions > 0)
    positions = Parameter::make(dev, "model.embed_positions.weight", {max_positions, hidden}, DType::kBF16, Init::kRandom);
}

void Embedding::forward(Context& ctx, const std::vector<int32_t>& tokens, const std::vector<int32_t>& pos,
                        const Buffer& x) const {
  Device& dev = ctx.dev();
  ctx.op("embedding", [&] {
    kernels::embedding(dev, table, x, vocab_, hidden_, tokens);
    if (positions.held()) {  // learned positions (GPT): x += wpe[position]
      DeviceBuffer pe = ctx.alloc(static_cast<int64_t>(tokens.size()) * hidden_, "position_embedding", DType::kF32);
      kernels::gather_rows(dev, positions, hidden_, pos, pe);
      kernels::binary(dev, BinaryOp::kAdd, x, pe, x);
    }
  });
}

}  // namespace ppu::nn
