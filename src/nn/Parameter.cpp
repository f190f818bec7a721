#include "nn/Parameter.hpp"

#include <fmt/format.h>

#include "arch/Error.hpp"

namespace ppu::nn {

namespace {

void check_split(const std::string& name, const std::vector<int64_t>& shape, const Split& s) {
  if (s.dim < 0 && s.parts == 1) return;
  if (s.dim < 0 || s.dim >= static_cast<int>(shape.size()) || s.dim > 1 || s.parts < 1 || s.part < 0 ||
      s.part >= s.parts || shape[static_cast<size_t>(s.dim)] % s.parts != 0)
    throw UserError(fmt::format("parameter '{}': split along dimension {} into {} parts (part {}) does not fit its shape "
                                "of {} dimensions; valid: dimension 0 or 1 of the shape, divided evenly",
                                name, s.dim, s.parts, s.part, shape.size()));
}

}  // namespace

int64_t Parameter::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Parameter Parameter::make(Device& dev, std::string name, std::vector<int64_t> shape, DType dtype, Init init, Split split) {
  check_split(name, shape, split);
  Parameter p;
  p.name = std::move(name);
  p.shape = std::move(shape);
  p.init = init;
  p.split = split;
  p.value = dev.alloc_owned(dtype, p.numel() / split.parts, p.name);
  if (dtype == DType::kI8) {
    if (p.shape.size() != 2)
      throw UserError(fmt::format("parameter '{}': int8 weights are matrices [out, in] with a scale per row; this one "
                                  "has {} dimensions",
                                  p.name, p.shape.size()));
    const int64_t rows = split.dim == 0 ? p.shape[0] / split.parts : p.shape[0];
    p.scale = dev.alloc_owned(DType::kF32, rows, p.name + ".scale");
  }
  return p;
}

Parameter Parameter::elsewhere(std::string name, std::vector<int64_t> shape, Split split) {
  check_split(name, shape, split);
  Parameter p;
  p.name = std::move(name);
  p.shape = std::move(shape);
  p.split = split;
  return p;
}

std::vector<float> Parameter::shard_of(const std::vector<float>& whole) const {
  const int parts = split.parts, r = split.part;
  if (parts == 1 || split.dim < 0) return whole;
  const int64_t rows = shape[0], cols = shape.size() > 1 ? shape[1] : 1;
  std::vector<float> out;
  out.reserve(whole.size() / static_cast<size_t>(parts));
  if (split.dim == 0) {
    const int64_t r0 = rows / parts * r, r1 = rows / parts * (r + 1);
    out.assign(whole.begin() + r0 * cols, whole.begin() + r1 * cols);
  } else {
    const int64_t c0 = cols / parts * r, c1 = cols / parts * (r + 1);
    for (int64_t i = 0; i < rows; ++i) out.insert(out.end(), whole.begin() + i * cols + c0, whole.begin() + i * cols + c1);
  }
  return out;
}

}  // namespace ppu::nn
