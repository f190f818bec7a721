#include "kernels/RopeBackward.hpp"

#include <algorithm>
#include <cmath>
#include <memory>

#include "kernels/KernelUtil.hpp"
#include "kernels/RopeInternal.hpp"

namespace ppu::kernels {

Kernel make_rope_backward(const RopeTable& table, const Buffer& dy, const Buffer& dx, int64_t tokens, int64_t heads,
                          const std::vector<int32_t>& positions) {
  const std::string kname = "rope_backward";
  check_rope_table_and_positions(kname, table, tokens, heads, positions);
  const int64_t d = table.head_dim;
  const auto shape = fmt::format("[{}, {}, {}] (tokens, heads, head_dim)", tokens, heads, d);
  for (const auto& [role, b] : {std::pair<const char*, const Buffer*>{"gradient dy", &dy}, {"output dx", &dx}}) {
    expect_numel(kname, role, *b, tokens * heads * d, shape);
    expect_dtype_in(kname, role, *b, {DType::kF32, DType::kBF16, DType::kF16});
  }
  const bool same = dx.addr == dy.addr && dx.dtype == dy.dtype;
  if (!same && dx.addr < dy.addr + dy.bytes && dy.addr < dx.addr + dx.bytes)
    throw UserError(fmt::format("{}: output dx '{}' overlaps gradient dy '{}' without being the same elements; valid: "
                                "the same buffer (in place) or disjoint buffers",
                                kname, dx.name, dy.name));
  // The transpose of the forward's rotation, on the forward's tiling.
  return rope_kernel(kname, table, dy, dx, tokens, heads, positions, 0, /*inverse=*/true);
}

KernelTiming rope_backward(Device& dev, const RopeTable& table, const Buffer& dy, const Buffer& dx, int64_t tokens,
                           int64_t heads, const std::vector<int32_t>& positions, Stream* s) {
  return dev.launch(make_rope_backward(table, dy, dx, tokens, heads, positions), s);
}

std::vector<double> rope_backward_reference(const std::vector<float>& dy, int64_t tokens, int64_t heads,
                                            int64_t head_dim, const std::vector<int32_t>& positions, double theta,
                                            const RopeScaling* scaling) {
  PPU_CHECK(static_cast<int64_t>(dy.size()) == tokens * heads * head_dim && head_dim % 2 == 0 &&
                static_cast<int64_t>(positions.size()) == tokens,
            "rope_backward_reference: shapes");
  const int64_t half = head_dim / 2;
  const std::vector<double> inv_freq = rope_inv_freq(theta, head_dim, scaling);
  std::vector<double> dx(dy.size());
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const double a = double(positions[static_cast<size_t>(t)]) * inv_freq[static_cast<size_t>(i)];
      const double c = std::cos(a), s = std::sin(a);
      for (int64_t h = 0; h < heads; ++h) {
        const auto base = static_cast<size_t>((t * heads + h) * head_dim);
        const double y1 = dy[base + static_cast<size_t>(i)], y2 = dy[base + static_cast<size_t>(i + half)];
        dx[base + static_cast<size_t>(i)] = y1 * c + y2 * s;
        dx[base + static_cast<size_t>(i + half)] = y2 * c - y1 * s;
      }
    }
  return dx;
}

}  // namespace ppu::kernels
