// Kernel: a grid of blocks plus a builder that writes each block's tile program.
//
//   Kernel k;
//   k.name = "scale";
//   k.grid = num_tiles;
//   k.args = {in_arg, out_arg};            // global tensors the programs address by index
//   k.build = [=](int64_t block, TileProgram& p) { ... };
//
// Both executors call `build` for each block they run (the functional one on host threads, the
// timing one lazily as blocks are dispatched onto cores), so a builder must be a pure function of
// the block index and thread-safe. No block's program may need more SRAM than block 0's (the timing
// engine sizes how many blocks a core holds from block 0). The runtime fills in TensorArg::data (functional mode) and
// device_addr (both modes) from its device buffers.
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "arch/DType.hpp"
#include "isa/TileProgram.hpp"

namespace ppu {

struct TensorArg {
  DType dtype = DType::kF32;
  int64_t numel = 0;          // elements addressable through this argument
  void* data = nullptr;       // host memory of the emulated device (null in timing-only mode)
  uint64_t device_addr = 0;   // simulated device address of element 0 (for the L2 model)
  std::string name;
};

// What a kernel computes, typed, in terms other layers derive work from (nn/OpBackward builds an
// op's backward kernels from its record; the cluster layer composes a training step from them).
// Descriptive only: nothing is timed from it. One op class per kind of computation, each with its
// own dimensions (shapes in the vocabulary of the kernels' headers):
//   kGemm         GemmDims      C[batch, m, n] = op(A)[m, k] . op(B)[k, n]
//   kAttention    AttentionDims one sequence's attention over its KV cache
//   kRmsNorm      RowDims       rows x cols normalised per row (kLayerNorm likewise, with a bias)
//   kSoftmax      RowDims       per-row softmax
//   kElementwise  ElementwiseDims numel outputs from `inputs` same-sized tensors (activations, adds)
//   kEmbedding    RowDims       rows (tokens) gathered from a table of rows of cols
//   kGather       RowDims       rows gathered (MoE dispatch / combine, logit rows)
//   kRope         RopeDims      rotary positions on tokens x heads x head_dim
enum class OpClass : uint8_t {
  kGemm, kAttention, kRmsNorm, kLayerNorm, kSoftmax, kElementwise, kEmbedding, kGather, kRope, kCount
};
inline constexpr std::array<std::string_view, static_cast<size_t>(OpClass::kCount)> kOpClassNames = {
    "gemm", "attention", "rms_norm", "layer_norm", "softmax", "elementwise", "embedding", "gather", "rope"};
static_assert(kOpClassNames.size() == static_cast<size_t>(OpClass::kCount));
constexpr std::string_view op_class_name(OpClass c) { return kOpClassNames[static_cast<size_t>(c)]; }

struct GemmDims {
  int64_t m = 0, n = 0, k = 0, batch = 1;
  bool trans_a = false, trans_b = false;
  auto operator<=>(const GemmDims&) const = default;
};
struct AttentionDims {
  int64_t batch = 1, q_tokens = 0, kv_len = 0, q_heads = 0, kv_heads = 0, head_dim = 0;
  bool causal = true;
  int64_t past_len = 0;
  auto operator<=>(const AttentionDims&) const = default;
};
struct RowDims {
  int64_t rows = 0, cols = 0;
  auto operator<=>(const RowDims&) const = default;
};
struct ElementwiseDims {
  int64_t numel = 0;
  int inputs = 1;
  auto operator<=>(const ElementwiseDims&) const = default;
};
struct RopeDims {
  int64_t tokens = 0, heads = 0, head_dim = 0;
  auto operator<=>(const RopeDims&) const = default;
};

struct KernelOp {
  OpClass op = OpClass::kElementwise;
  std::variant<GemmDims, AttentionDims, RowDims, ElementwiseDims, RopeDims> dims = ElementwiseDims{};

  static KernelOp gemm(const GemmDims& d) { return {OpClass::kGemm, d}; }
  static KernelOp attention(const AttentionDims& d) { return {OpClass::kAttention, d}; }
  // kRmsNorm, kLayerNorm, kSoftmax, kEmbedding or kGather (UserError for another class).
  static KernelOp rows(OpClass c, const RowDims& d);
  static KernelOp elementwise(const ElementwiseDims& d) { return {OpClass::kElementwise, d}; }
  static KernelOp rope(const RopeDims& d) { return {OpClass::kRope, d}; }
  // The dimensions of this op's class; UserError naming both classes if it is another one.
  const GemmDims& gemm_dims() const;
  const AttentionDims& attention_dims() const;
  const RowDims& row_dims() const;
  const ElementwiseDims& elementwise_dims() const;
  const RopeDims& rope_dims() const;
};

struct Kernel {
  std::string name;
  int64_t grid = 0;
  std::vector<TensorArg> args;
  std::function<void(int64_t block, TileProgram& program)> build;
  // Useful work, for reports (not used to time anything): FLOPs the kernel is asked to do.
  double flops = 0.0;
  // Optional. If set, it must determine every block's program completely, up to the base addresses
  // of the arguments (shapes, tile configuration, everything the builder reads). The timing engine
  // then reuses the result of an earlier kernel with the same key and argument dtypes/sizes instead
  // of simulating again - exact, since each kernel starts from an empty L2 and only relative
  // addresses matter. Leave empty when the programs depend on data (token ids, routes).
  std::string timing_key;
  // The matrix instructions are the previous generation's synchronous warp-level kind (as
  // FlashAttention-2 issues mma.sync on Hopper): timed at ChipSpec::mma_sync_fraction of the peak.
  bool sync_mma = false;
  // Most blocks one core runs at once (0: as many as SRAM allows, up to kMaxResidentBlocks).
  int max_resident_blocks = 0;
  // Its programs may use store_add (atomic reductions into fp32 arguments). The functional executor
  // then applies the blocks' additions in block order, so the result does not depend on threads.
  bool accumulates = false;
  // What it computes (empty: not described); concat_kernels joins its parts' lists.
  std::vector<KernelOp> ops;
};

// One launch running the blocks of several independent kernels one after another in block order
// (like a grouped GEMM or a batched attention: the parts' blocks share the chip in one grid). Part
// i's arguments follow those of parts 0..i-1. Throws UserError if `parts` is empty or a part has no
// builder; as for any kernel, no block may need more SRAM than block 0 (put the largest part first).
Kernel concat_kernels(std::string name, std::vector<Kernel> parts);

// Checks that every load/store of `p` stays inside its tensor argument and that the program fits an
// SRAM of `sram_bytes`. Throws UserError naming the kernel, block, instruction and limits.
void validate_program(const Kernel& k, int64_t block, const TileProgram& p, double sram_bytes);

}  // namespace ppu
