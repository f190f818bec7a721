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
//   kElementwise  ElementwiseDims numel outputs from `inputs` same-sized tensors, computing `fn`
//   kEmbedding    RowDims       rows (tokens) gathered from a table of source_rows (vocab) rows of cols
//   kGather       RowDims       rows gathered from source_rows rows (MoE dispatch, logit rows), or
//                               with k >= 1 each row the weighted sum of k of them (MoE combine)
//   kRope         RopeDims      rotary positions on tokens x heads x head_dim
// Each record carries what its backward needs (nn/OpBackward): the function of an elementwise
// kernel, a table's or a source's row count, a router's top-k.
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
  // kEmbedding: the table's rows (vocab); kGather: the rows gathered from (0: not said).
  int64_t source_rows = 0;
  // kGather: 0 a row gather, k >= 1 a combine of k source rows per output row; kSoftmax: 0 a plain
  // softmax, k >= 1 an MoE router's softmax whose top-k choice feeds the combine weights.
  int64_t k = 0;
  bool renormalize = false;  // kSoftmax router: the top-k weights renormalised to sum 1 (norm_topk_prob)
  auto operator<=>(const RowDims&) const = default;
};

// What an elementwise kernel computes: its backward depends on it (nn/OpBackward says each one's).
enum class ElementwiseFn : uint8_t {
  kUnspecified,   // not said: nn::backward_seconds refuses it
  kCopy,          // y = x, also a dtype cast
  kAdd,           // y = a + b (the residual, a position embedding added)
  kMul,           // y = a * b (e.g. a dropout mask)
  kSwigluGate,    // silu(gate), SwiGLU's first half (its product follows as kSwiglu)
  kSwiglu,        // silu(gate) * up, SwiGLU's product
  kGelu,          // gelu(x)
  kBias,          // x + bias[col] (ElementwiseDims::cols is the bias's length)
  kBiasGelu,      // gelu(x + bias[col])
  kUnary,         // another unary map (scale, exp, ...; also an activation after a bias other than GELU)
  kBinary,        // another binary map
  kTriad,         // a = b + s * c (the bandwidth benchmark)
  kKvCacheWrite,  // keys or values copied into an inference KV cache
  kSplitKReduce,  // the sum of a split-K GEMM's partial products
  kOptimizer,     // an optimizer update
  kBackward,      // part of a backward pass itself (activation, router backward)
  kCount
};
inline constexpr std::array<std::string_view, static_cast<size_t>(ElementwiseFn::kCount)> kElementwiseFnNames = {
    "unspecified", "copy", "add", "mul",     "swiglu_gate",    "swiglu",         "gelu",      "bias",
    "bias_gelu",   "unary", "binary", "triad", "kv_cache_write", "split_k_reduce", "optimizer", "backward"};
static_assert(kElementwiseFnNames.size() == static_cast<size_t>(ElementwiseFn::kCount));
constexpr std::string_view elementwise_fn_name(ElementwiseFn f) { return kElementwiseFnNames[static_cast<size_t>(f)]; }

struct ElementwiseDims {
  int64_t numel = 0;
  int inputs = 1;
  ElementwiseFn fn = ElementwiseFn::kUnspecified;
  int64_t cols = 0;  // kBias, kBiasGelu: the row length (numel = rows x cols)
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

// Sets the function of every elementwise record of `k` (a caller that knows more than the kernel
// family, e.g. that a silu is SwiGLU's gate or a copy a KV-cache write). UserError naming the kernel
// if it has no record or one of another class.
void set_elementwise_fn(Kernel& k, ElementwiseFn fn);

// Checks that every load/store of `p` stays inside its tensor argument and that the program fits an
// SRAM of `sram_bytes`. Throws UserError naming the kernel, block, instruction and limits.
void validate_program(const Kernel& k, int64_t block, const TileProgram& p, double sram_bytes);

}  // namespace ppu
