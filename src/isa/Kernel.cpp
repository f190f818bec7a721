#include "isa/Kernel.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <memory>

#include "arch/Error.hpp"
#include "arch/Units.hpp"

namespace ppu {

namespace {

template <class D>
const D& dims_of(const KernelOp& o, const char* what) {
  if (const D* d = std::get_if<D>(&o.dims)) return *d;
  throw UserError(fmt::format("kernel op: asked for {} dimensions of a '{}' op", what, op_class_name(o.op)));
}

}  // namespace

KernelOp KernelOp::rows(OpClass c, const RowDims& d) {
  if (c != OpClass::kRmsNorm && c != OpClass::kLayerNorm && c != OpClass::kSoftmax && c != OpClass::kEmbedding &&
      c != OpClass::kGather)
    throw UserError(fmt::format("kernel op: '{}' does not take row dimensions; valid: rms_norm, layer_norm, softmax, "
                                "embedding, gather",
                                static_cast<size_t>(c) < kOpClassNames.size() ? op_class_name(c) : "?"));
  return {c, d};
}
const GemmDims& KernelOp::gemm_dims() const { return dims_of<GemmDims>(*this, "gemm"); }
const AttentionDims& KernelOp::attention_dims() const { return dims_of<AttentionDims>(*this, "attention"); }
const RowDims& KernelOp::row_dims() const { return dims_of<RowDims>(*this, "row"); }
const ElementwiseDims& KernelOp::elementwise_dims() const { return dims_of<ElementwiseDims>(*this, "elementwise"); }
const RopeDims& KernelOp::rope_dims() const { return dims_of<RopeDims>(*this, "rope"); }

void set_elementwise_fn(Kernel& k, ElementwiseFn fn) {
  if (k.ops.empty()) throw UserError(fmt::format("set_elementwise_fn: kernel '{}' has no op record", k.name));
  for (KernelOp& o : k.ops) {
    auto* d = std::get_if<ElementwiseDims>(&o.dims);
    if (o.op != OpClass::kElementwise || !d)
      throw UserError(fmt::format("set_elementwise_fn: kernel '{}' has a '{}' record; only elementwise records take a "
                                  "function",
                                  k.name, op_class_name(o.op)));
    d->fn = fn;
  }
}

Kernel concat_kernels(std::string name, std::vector<Kernel> parts) {
  if (parts.empty()) throw UserError(fmt::format("concat_kernels '{}': no kernels to concatenate", name));
  Kernel k;
  k.name = std::move(name);
  std::vector<int64_t> first_block;
  std::vector<uint16_t> first_arg;
  bool keyed = true;
  for (const Kernel& p : parts) {
    if (!p.build) throw UserError(fmt::format("concat_kernels '{}': part '{}' has no builder", k.name, p.name));
    if (p.sync_mma != parts.front().sync_mma)
      throw UserError(fmt::format("concat_kernels '{}': part '{}' and part '{}' use different matrix instruction kinds "
                                  "(sync_mma); one launch runs one kind",
                                  k.name, parts.front().name, p.name));
    first_block.push_back(k.grid);
    first_arg.push_back(static_cast<uint16_t>(k.args.size()));
    k.grid += p.grid;
    k.args.insert(k.args.end(), p.args.begin(), p.args.end());
    k.flops += p.flops;
    k.ops.insert(k.ops.end(), p.ops.begin(), p.ops.end());
    k.accumulates = k.accumulates || p.accumulates;
    keyed = keyed && !p.timing_key.empty();
    if (keyed) k.timing_key += p.timing_key + "#";
  }
  if (!keyed) k.timing_key.clear();
  k.sync_mma = parts.front().sync_mma;
  k.max_resident_blocks = parts.front().max_resident_blocks;
  if (k.args.size() > 65535) throw UserError(fmt::format("concat_kernels '{}': more than 65535 arguments", k.name));
  auto shared = std::make_shared<std::vector<Kernel>>(std::move(parts));
  k.build = [shared, first_block, first_arg](int64_t block, TileProgram& p) {
    const auto it = std::upper_bound(first_block.begin(), first_block.end(), block);
    const auto i = static_cast<size_t>(it - first_block.begin() - 1);
    (*shared)[i].build(block - first_block[i], p);
    if (first_arg[i] != 0) p.offset_args(first_arg[i]);
  };
  return k;
}

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
    if (in.op == OpCode::kStore && (in.flags & kFlagAccumulate)) {
      if (!k.accumulates)
        throw UserError(fmt::format("{}: store_add in a kernel without Kernel::accumulates; set it so that the "
                                    "executors order the blocks' additions",
                                    where()));
      if (t.dtype != DType::kF32)
        throw UserError(fmt::format("{}: store_add into tensor '{}' of {}; atomic additions need an fp32 tensor",
                                    where(), t.name, dtype_name(t.dtype)));
    }
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
