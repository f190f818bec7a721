// FunctionalExecutor: runs a kernel's tile programs on host threads and produces the real numbers.
//
// Each block's program is built and executed on one worker thread against a private SRAM arena,
// instruction by instruction in program order (program order already satisfies every derived
// dependency; the one liberty taken: consecutive k-steps of a decode-shaped MMA that read one
// continuing stretch of global memory run as one call, see mma_streams_long_k). Blocks are
// independent, so workers take them from a shared counter; results do not depend on the number of
// threads (each block writes its own output region). Between kernels the helper threads spin for a
// few tens of microseconds before they sleep, since a decode step launches hundreds of small kernels.
//
//   FunctionalExecutor ex(/*threads=*/0);   // 0: PPU_THREADS or the host's core count
//   ex.run(kernel, chip.sram_bytes());
//
// Numerics: loads/stores/casts round to the destination dtype (RNE); the vector unit computes in
// fp32; MMA as in sim/Mma.hpp. Not here: time (sim/TimingEngine).
#pragma once

#include <memory>
#include <vector>

#include "isa/Kernel.hpp"

namespace ppu {

// Host threads when a caller asks for 0 ("as many as useful"): PPU_THREADS if it is a positive
// integer, otherwise the host's core count (at least 1). Every host thread pool of the simulator
// takes its default from here - this executor, the communicator's data movement and the training
// planner's workload extraction - and results do not depend on it: PPU_THREADS=1 and 2 give the
// same bits (tests/cli/determinism.py).
int default_host_threads();

class FunctionalExecutor {
 public:
  explicit FunctionalExecutor(int threads = 0);
  ~FunctionalExecutor();
  FunctionalExecutor(const FunctionalExecutor&) = delete;
  FunctionalExecutor& operator=(const FunctionalExecutor&) = delete;

  // Runs every block of `k`. Every argument must have host data. Throws UserError if a program is
  // invalid (see validate_program); the first error from any worker is rethrown.
  void run(const Kernel& k, double sram_bytes);
  int threads() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The additions of a block's store_add instructions, held until the block's turn (run() applies
// the blocks' additions in block order, so that results do not depend on host threads).
struct PendingAdds {
  struct Add {
    float* dst;
    int64_t ld;  // elements between rows of the destination
    int rows, cols;
    size_t at;  // first value in `values` (rows x cols, row-major)
  };
  std::vector<Add> adds;
  std::vector<float> values;
  void clear() {
    adds.clear();
    values.clear();
  }
  void apply() const;  // dst += values, in the order the block issued them
};

// Executes one already-built program (used by run(); exposed for tests). `arena` must hold
// p.sram_bytes() bytes, 64-byte aligned. store_add instructions go to `adds` if given, else are
// applied at once.
void execute_program(const Kernel& k, const TileProgram& p, unsigned char* arena, PendingAdds* adds = nullptr);

}  // namespace ppu
