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

#include <cstdint>
#include <functional>
#include <string>
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

// What a kernel computes, in terms other layers can derive work from (the cluster layer builds a
// training step's backward pass from the forward's kernels). Descriptive only: nothing is timed
// from it.
//   "gemm":      dims {M, N, K, batch, trans_a, trans_b}
//   "attention": dims {batch, q_tokens, kv_len, heads, kv_heads, head_dim, causal, past_len}
struct KernelOp {
  std::string op;
  std::vector<int64_t> dims;
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
