// Embedding: token rows of a [vocab, hidden] table into the residual stream, plus learned positions
// where the model has them (GPT: x = wte[token] + wpe[position]).
//
//   nn::Embedding e(dev, vocab, hidden, /*max_positions=*/0);   // 0: no learned positions
//   e.forward(ctx, tokens, positions, x);                        // x [T, hidden] fp32
//
// Parameter names: model.embed_tokens.weight, model.embed_positions.weight.
#pragma once

#include <cstdint>
#include <vector>

#include "nn/Context.hpp"
#include "nn/Parameter.hpp"

namespace ppu::nn {

class Embedding {
 public:
  Embedding() = default;
  Embedding(Device& dev, int64_t vocab, int64_t hidden, int64_t max_positions);
  // x [T, hidden] = table[tokens] (+ positions[pos]); UserError for a token outside the vocabulary.
  void forward(Context& ctx, const std::vector<int32_t>& tokens, const std::vector<int32_t>& positions,
               const Buffer& x) const;

  Parameter table, positions;  // positions: learned-position models only

 private:
  int64_t vocab_ = 0, hidden_ = 0;
};

}  // namespace ppu::nn
