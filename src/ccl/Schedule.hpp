// Schedule: a collective as a graph of transfers and local reductions between ranks, built once per
// call by an algorithm (ccl/Algorithms) and then run twice - in simulated time over the node's
// fabric, and on the real data in the ranks' buffers. One schedule, two clocks, as for kernels.
//
//   Schedule s = build_schedule(spec);                       // e.g. ring all-reduce, 8 ranks
//   ScheduleTiming t = time_schedule(s, fabric, chips, 0.0); // simulated seconds per rank
//   run_schedule(s, buffers, DType::kBF16, ReductionOp::kSum, threads);   // the numbers
//
// An op reads regions (rank, buffer, element offset) and writes others; `deps` are ops that must
// finish first (data, reuse of a region, and the pipeline's limit of chunks in flight). Ops with no
// path between them never touch overlapping regions, so any topological order gives the same bits.
//
// Timing of one op: each remote source crosses the fabric as one flow (latency = path latency +
// step latency; see the protocol below) that also loads the destination chip's HBM while it arrives
// (a reduction reads every source and writes the result: (sources + 1) x bytes; a copy writes its
// bytes), since chips reduce data as it streams in. Through a switch (`via_switch`) a reduction is one
// flow over every source's port, the switch's reduction unit and every destination's port (with
// several destinations, plus a multicast store by the first), a multicast one flow over the source's
// port and every destination's port. A local copy moves 2 x bytes, a local
// reduction (sources + 1) x bytes through the chip's HBM.
// Numerics: a reduction computes in fp32 in the order of `srcs` and rounds once to the dtype.
#pragma once

#include <cstdint>
#include <vector>

#include "arch/DType.hpp"
#include "ccl/Collective.hpp"
#include "ccl/Fabric.hpp"

namespace ppu::ccl {

enum class BufferRole : uint8_t { kSend, kRecv, kScratch, kCount };

struct Region {
  int32_t rank = 0;  // communicator rank
  BufferRole buf = BufferRole::kRecv;
  int64_t offset = 0;  // elements
};

enum class OpType : uint8_t { kCopy, kReduce };

struct Op {
  OpType type = OpType::kCopy;
  bool via_switch = false;
  int64_t count = 0;            // elements
  std::vector<Region> srcs;     // copy: 1; reduce: >= 2, combined in this order
  std::vector<Region> dsts;     // >= 1 (several: the same result to each)
  std::vector<int32_t> deps;    // earlier ops
};

struct Schedule {
  std::vector<Op> ops;
  int64_t scratch_elems = 0;  // per rank, in the collective's dtype
  int64_t connections = 0;    // distinct (channel, source, destination) queues the ops use
  int pipeline_depth = 1;     // ops in flight per connection at most
};

// Simulated times of a schedule started at start_s: when each rank's last op ended, and overall.
struct ScheduleTiming {
  double end_s = 0;
  std::vector<double> rank_end_s;
};

// Runs `s` on a FlowSim over `fabric`; rank r sits on chip chips[r]. Ops without deps start at
// start_s + the node's collective_latency. `sim` (optional) receives the flows, for traces: it
// must be empty or hold exactly the fabric's resources.
// Under Protocol::kLowLatency every transfer puts link_efficiency / ll_efficiency times its bytes on
// the wire and pays ll_step_latency instead of step_latency (PPU_CHECK: the node must have it).
ScheduleTiming time_schedule(const Schedule& s, const Fabric& fabric, const std::vector<int>& chips, int64_t elem_bytes,
                             double start_s, Protocol protocol = Protocol::kSimple, FlowSim* sim = nullptr);

// What timing a schedule costs the host. Every flow's start and end recomputes the rates of the
// flows in flight (FlowSim), and at most pipeline_depth ops are in flight per connection, so the
// cost grows as flows x in_flight: about 1e-8 s of host time per unit (measured 2026-12 on an 8-chip
// mesh; direct all-reduce, the densest schedule). `flows` counts one per remote source or
// destination of each op (an upper bound: local ops move through memory only).
struct ScheduleWork {
  int64_t flows = 0;
  int64_t in_flight = 0;  // min(flows, connections x pipeline_depth)
  double updates() const { return static_cast<double>(flows) * static_cast<double>(in_flight); }
};
ScheduleWork schedule_work(const Schedule& s);
// The most flow updates one collective may simulate (about 10-15 s of host time); the communicator
// refuses a larger schedule before timing it (ccl/Communicator). The project's largest own schedule,
// an 8 GiB all-reduce on zhenwu-16 (ring, 4 MiB chunks), needs 1e8.
inline constexpr double kMaxScheduleWork = 1e9;

// Host pointers of one rank's buffers (null where a role is unused).
struct RankData {
  void* send = nullptr;
  void* recv = nullptr;
  void* scratch = nullptr;
};
// Moves and reduces the real data. `threads` <= 1 runs on the calling thread; independent ops
// otherwise run on up to `threads` host threads.
void run_schedule(const Schedule& s, const std::vector<RankData>& data, DType dtype, ReductionOp op, int threads);

}  // namespace ppu::ccl
