// Parameter: one weight tensor of a module - its checkpoint name, the whole (single-chip) tensor's
// shape, how tensor or expert parallelism splits it, how it is initialised, and this rank's part in
// an owning device buffer (freed with the module).
//
//   nn::Parameter w = nn::Parameter::make(dev, "model.layers.0.mlp.up_proj.weight", {ffn, hidden},
//                                         DType::kBF16, nn::Init::kRandom, nn::Split{0, tp_rank, tp});
//   kernels::gemm(dev, shape, x, w, y);   // a Parameter is used as the Buffer of its part
//
// Split{dim, part, parts}: this rank holds block `part` of `parts` equal blocks along dimension
// `dim` (0: rows, 1: columns of a row-major [rows, cols] tensor); dim -1: the whole tensor
// (replicated). A parameter another rank holds (a routed expert under expert parallelism) keeps its
// name and shape, and its place in the model's parameter order, with no buffer: random weights and
// checkpoints then read the same on every layout.
//
// Not here: reading checkpoints or drawing random values (models/Weights), gradients (training).
#pragma once

#include <array>
#include <cstdint>
#include <string_view>
#include <string>
#include <vector>

#include "runtime/Device.hpp"

namespace ppu::nn {

enum class Init : uint8_t { kRandom, kOnes, kCount };  // uniform with std 0.02 (Qwen's initializer_range); norms 1
inline constexpr std::array<std::string_view, static_cast<size_t>(Init::kCount)> kInitNames = {"random", "ones"};
static_assert(kInitNames.size() == static_cast<size_t>(Init::kCount));

struct Split {
  int dim = -1;
  int part = 0;
  int parts = 1;
};

struct Parameter {
  std::string name;
  std::vector<int64_t> shape;  // the whole tensor's
  Init init = Init::kRandom;
  Split split;
  DeviceBuffer value;          // this rank's part; empty when another rank holds the tensor
  // int8 matrices (W8A8 inference): fp32 [rows of this rank's part], the per-output-channel scale of
  // each row (value[r, c] * scale[r] is the weight); empty for every other dtype.
  DeviceBuffer scale;

  // Allocates this rank's part (DeviceOutOfMemory if it does not fit), and for an int8 matrix its
  // row scales. UserError if the split does not divide the dimension evenly or names a dimension the
  // shape lacks, or an int8 parameter is not a matrix.
  static Parameter make(Device& dev, std::string name, std::vector<int64_t> shape, DType dtype, Init init,
                        Split split = {});
  // A parameter held by another rank: name and shape only.
  static Parameter elsewhere(std::string name, std::vector<int64_t> shape, Split split = {});

  bool held() const { return value.valid(); }
  operator const Buffer&() const { return value; }  // NOLINT: used wherever the buffer is taken
  int64_t numel() const;                            // of the whole tensor
  int64_t bytes() const { return held() ? value->bytes : 0; }
  // This rank's block of the whole tensor's row-major values (`whole` has numel() elements).
  std::vector<float> shard_of(const std::vector<float>& whole) const;
};

}  // namespace ppu::nn
