#include "isa/Kernel.hpp"

#include <fmt/format.h>

#include "arch/Error.hpp"
#include "arch/Units.hpp"

namespace ppu {

void validate_program(const Kernel& k, int64_t block, const TileProgram& p, double sram_bytes) {
  if (static_cast<double>(p.sram_bytes()) > sram_bytes)
    throw UserError(fmt::format("kernel '{}' block {}: its tile program needs {} of SRAM but a core has {}; "
                                "use smaller tiles",
                                k.name, block, format_quantity(Dimension::kBytes, static_cast<double>(p.sram_bytes())),
                                format_quantity(Dimension::kBytes, sram_bytes)));
  const auto& ins = p.instrs();
  for (size_t i = 0; i < ins.size(); ++i) {
    const Instr& in = ins[i];
    if (in.op != OpCode::kLoad && in.op != OpCode::kStore) continue;
    const TileRegion& r = in.region;
    auto where = [&] { return fmt::format("kernel '{}' block {} instruction {} ({})", k.name, block, i, opcode_name(in.op)); };
    if (r.arg >= k.args.size())
      throw UserError(fmt::format("{}: names argument {}, but the kernel has {}", where(), r.arg, k.args.size()));
    const TensorArg& t = k.args[r.arg];
    const int64_t last = r.offset + int64_t{r.rows - 1} * r.row_stride + (r.cols - 1);
    // Loads may overlap rows (row_stride 0 broadcasts one row); stores may not.
    const bool overlap = in.op == OpCode::kStore && r.rows > 1 && r.row_stride < r.cols;
    if (r.offset < 0 || r.row_stride < 0 || overlap || last >= t.numel)
      throw UserError(fmt::format("{}: region offset {} rows {} cols {} row_stride {} falls outside tensor '{}' of {} "
                                  "elements (or a store's rows overlap)",
                                  where(), r.offset, r.rows, r.cols, r.row_stride, t.name, t.numel));
  }
}

}  // namespace ppu
