// Internal to the RoPE kernels (Rope.cpp, RopeBackward.cpp): the checks they share and the one kernel
// builder behind both directions. Not an API for other layers: use kernels/Rope.hpp and
// kernels/RopeBackward.hpp.
#pragma once

#include <string>
#include <vector>

#include "kernels/Rope.hpp"

namespace ppu::kernels {

// Throws UserError naming `kname` for non-positive tokens or heads, a table not from
// make_rope_table, heads * head_dim beyond 2^31, a positions list of another length than tokens, or a
// position outside the table.
void check_rope_table_and_positions(const std::string& kname, const RopeTable& table, int64_t tokens, int64_t heads,
                                    const std::vector<int32_t>& positions);

// The rotation of x [tokens, heads, head_dim] into out rows [out_token0, out_token0 + tokens): by
// +angle(position), or with `inverse` by -angle (the transpose, what the backward applies to the
// gradient). Arguments already checked by the caller. Blocks: runs of tokens with a constant position
// step (head-major tiles), single scattered tokens (token-major tiles).
Kernel rope_kernel(const std::string& kname, const RopeTable& table, const Buffer& x, const Buffer& out, int64_t tokens,
                   int64_t heads, const std::vector<int32_t>& positions, int64_t out_token0, bool inverse);

}  // namespace ppu::kernels
