// Helpers for the sim tests: host tensors in any dtype that kernels can address, and one-block
// kernels built from a lambda.
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "arch/DType.hpp"
#include "isa/Kernel.hpp"

namespace ppu::test {

// A tensor in host memory holding `dtype` elements (the "device memory" of functional mode).
struct HostTensor {
  DType dtype = DType::kF32;
  std::vector<unsigned char> bytes;

  HostTensor(DType t, const std::vector<float>& values) : dtype(t), bytes(values.size() * dtype_size_bytes(t)) {
    convert_from_f32(t, values.data(), bytes.data(), static_cast<int64_t>(values.size()));
  }
  HostTensor(DType t, int64_t numel, float fill) : HostTensor(t, std::vector<float>(static_cast<size_t>(numel), fill)) {}

  int64_t numel() const { return static_cast<int64_t>(bytes.size()) / dtype_size_bytes(dtype); }
  float get(int64_t i) const { return load_as_f32(dtype, bytes.data() + i * dtype_size_bytes(dtype)); }
  const unsigned char* raw(int64_t i) const { return bytes.data() + i * dtype_size_bytes(dtype); }
  TensorArg arg(const std::string& name, uint64_t addr = 0x10000) {
    return TensorArg{dtype, numel(), bytes.data(), addr, name};
  }
};

inline Kernel one_block_kernel(std::string name, std::vector<TensorArg> args,
                               std::function<void(int64_t, TileProgram&)> build) {
  Kernel k;
  k.name = std::move(name);
  k.grid = 1;
  k.args = std::move(args);
  k.build = std::move(build);
  return k;
}

}  // namespace ppu::test
