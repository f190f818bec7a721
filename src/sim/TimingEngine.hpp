// TimingEngine: advances the chip's clock over a kernel's tile programs (the same programs the
// functional executor runs), without touching data.
//
// Model (docs/architecture.md has the diagram):
//  * After `launch_latency`, blocks are dispatched onto free cores in index order, round-robin over
//    the cores, `block_latency` per dispatch: waves and tail effects fall out of this. A core holds
//    as many blocks as its SRAM fits, at most kMaxResidentBlocks (GPU "occupancy"): the resident
//    blocks share the core's units, so one block's prologue and epilogue overlap another's work.
//    (The functional executor is unaffected: residency changes time, not numbers.)
//  * A core has four in-order units: dma_in, dma_out, matrix, vector. An instruction issues when
//    it is at the head of its unit, the unit is free, and every instruction it depends on (derived
//    from the buffers it names) has completed.
//  * Matrix: 2*m*n*k FLOPs (extents rounded up to the MMA granularity) at the core's share of the
//    dtype's peak times `mma_efficiency`. Vector: elements x op cost at the core's share of
//    `vector_fp32`.
//  * DMA: a transfer waits `dma_latency` after issue, then moves its bytes as a flow in a shared
//    pool: loads that hit in L2 share the L2 bandwidth; misses, and all stores, share HBM, where a
//    read costs 1/hbm_read_efficiency and a write 1/hbm_write_efficiency of its bytes. Flows in a
//    pool share its bandwidth equally (processor sharing), each capped at `dma_bandwidth_per_core` (so a core that loads and stores at once moves up to twice it).
//    Each engine streams its transfers one after another (the next one's latency overlaps).
//  * L2 is an LRU over the tiles (address, shape) that were loaded or stored.
//
// One serialized event loop; ties are broken by (time, sequence number), so results are
// deterministic. Cost grows linearly with the number of instructions (plus log of the events in
// flight); see bench/sim_speed.
//
//   TimingEngine eng(chip);
//   KernelTiming t = eng.run(kernel);   // t.time_s, t.bound(), ...
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "arch/ChipSpec.hpp"
#include "isa/Kernel.hpp"

namespace ppu {

struct TraceEvent {
  double start_s = 0, end_s = 0;  // relative to kernel start
  int32_t core = 0;
  Unit unit = Unit::kVector;
  OpCode op = OpCode::kSync;
  int64_t block = 0;
  double bytes = 0;    // DMA
  bool l2_hit = false;  // DMA loads
};

struct KernelTiming {
  std::string name;
  double time_s = 0;             // launch until the last block retires
  double launch_s = 0;
  int64_t blocks = 0;
  int cores = 0;                 // cores of the chip
  double waves = 0;              // blocks / cores
  int64_t instructions = 0;
  int resident_blocks = 1;       // blocks a core held at once
  double matrix_busy_s = 0;      // summed over cores
  double vector_busy_s = 0;
  double hbm_read_bytes = 0, hbm_write_bytes = 0, l2_hit_bytes = 0;
  double atomic_bytes = 0;       // added by store_add (reduced in L2, at atomic_bandwidth_per_core)
  double hbm_busy_s = 0;         // time with at least one HBM flow active
  double hbm_cost_bytes = 0;     // bytes weighted by 1/efficiency (what the pool had to serve)
  double l2_busy_s = 0;
  double matrix_flops = 0;       // 2*m*n*k of every MMA (unrounded)
  double useful_flops = 0;       // Kernel::flops
  std::vector<TraceEvent> trace;
  bool trace_truncated = false;

  // Fractions of their capacity used over the kernel's time.
  double matrix_utilization(const ChipSpec& chip) const;
  double hbm_utilization(const ChipSpec& chip) const;
  double l2_utilization(const ChipSpec& chip) const;
  // "matrix unit", "HBM bandwidth", "L2 bandwidth", "vector unit" or "latency (launch, DMA, few
  // blocks)": the resource closest to saturation, or latency when none is above half.
  std::string bound(const ChipSpec& chip) const;
};

// Results of keyed kernels (Kernel::timing_key) that several engines of the same chip share, so that
// devices made one after another (the cluster layer's workload extraction) time each distinct kernel
// once. Thread-safe. The owner keeps one cache per chip: the key does not name the chip.
class TimingCache {
 public:
  std::optional<KernelTiming> find(const std::string& key) const;
  void put(const std::string& key, const KernelTiming& t);
  size_t size() const;
  // The result of `key`, or nullopt when the caller is to compute it: then the key is claimed until
  // the caller puts its result (or abandons it, on failure). A call for a key another thread has
  // claimed waits for that thread's result, so ranks of a split model that launch the same kernels
  // at the same time time each once. The result is the same whichever thread computes it.
  std::optional<KernelTiming> find_or_claim(const std::string& key);
  void abandon(const std::string& key);

 private:
  mutable std::mutex mu_;
  std::condition_variable done_;
  std::unordered_map<std::string, KernelTiming> map_;
  std::unordered_set<std::string> claimed_;
};

class TimingEngine {
 public:
  explicit TimingEngine(const ChipSpec& chip);
  // Simulates `k`. `trace_limit` > 0 records up to that many per-instruction events.
  // Throws UserError if a block's program is invalid or too large for SRAM.
  // Kernels with a timing_key reuse an earlier identical result (see Kernel::timing_key) unless a
  // trace is asked for.
  KernelTiming run(const Kernel& k, size_t trace_limit = 0);

  const ChipSpec& chip() const { return chip_; }
  int64_t cache_hits() const { return cache_hits_; }
  // Use `cache` (shared with other engines of this chip) instead of this engine's own.
  void share_cache(std::shared_ptr<TimingCache> cache) { shared_ = std::move(cache); }

 private:
  ChipSpec chip_;
  std::shared_ptr<TimingCache> shared_;
  std::unordered_map<std::string, KernelTiming> cache_;
  int64_t cache_hits_ = 0;
};

// Granularity of the matrix unit: MMA extents are rounded up to these before timing (16x16x16
// fragments for 16-bit types, k=32 for fp8), as tensor cores do.
inline constexpr int kMmaGranMN = 16;
// Most blocks one core holds at once (SRAM permitting). Two is what GEMM kernels on current GPUs
// reach with their large tiles (or emulate with persistent, warp-specialised kernels).
inline constexpr int kMaxResidentBlocks = 2;
inline constexpr int kMmaGranK16 = 16;
inline constexpr int kMmaGranK8 = 32;

}  // namespace ppu
