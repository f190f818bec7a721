#include "kernels/KernelUtil.hpp"

#include <iterator>

namespace ppu::kernels {

std::string data_timing_key(const std::string& head, const std::vector<int32_t>& v) {
  std::string key = fmt::format("{}|ids {}", head, v.size());
  if (v.empty()) return key;
  fmt::format_to(std::back_inserter(key), " {}", v[0]);
  for (size_t i = 1; i < v.size();) {
    const int64_t step = int64_t{v[i]} - v[i - 1];
    size_t j = i + 1;
    while (j < v.size() && int64_t{v[j]} - v[j - 1] == step) ++j;
    fmt::format_to(std::back_inserter(key), " {:+}x{}", step, j - i);
    if (key.size() > head.size() + kDataTimingKeyMaxBytes) return "";
    i = j;
  }
  return key;
}

}  // namespace ppu::kernels
