// Algorithms: each collective x algorithm as a Schedule builder (ccl/Schedule), for any rank count
// (1, primes, non-powers of two). Data is split into chunks of at most `chunk_elems` that travel
// independently, so steps pipeline; at most `pipeline_depth` chunks are in flight per connection
// per channel (the later ones wait for a slot), and each connection of a channel sends its chunks in
// the order built here (chunk by chunk, step by step, as NCCL's channels do). Chunk j goes on
// channel j % channels, so the channels' pipelines overlap each other's step latencies.
//
//   ScheduleSpec spec{Collective::kAllReduce, Algorithm::kRing, /*ranks=*/8, /*count=*/1 << 20};
//   spec.chunk_elems = 1 << 18; spec.pipeline_depth = 2;
//   Schedule s = build_schedule(spec);
//
// Buffer layouts per rank (elements): all-reduce, broadcast, reduce: send and recv of `count`;
// reduce-scatter: send [ranks x count], recv [count]; all-gather: send [count], recv [ranks x count];
// all-to-all: send and recv [ranks x count], block p for peer p; all-to-all-v: blocks of
// counts[r][p] back to back; send/recv: `pairs`.
//
// Not here: which algorithm is fastest (the selector in ccl/Communicator), checks of user input.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "ccl/Collective.hpp"
#include "ccl/Fabric.hpp"
#include "ccl/Schedule.hpp"

namespace ppu::ccl {

struct SendRecvPair {
  int src = 0, dst = 0;  // ranks: src's send buffer goes to dst's recv buffer
  int64_t count = 0;
};

struct ScheduleSpec {
  Collective collective = Collective::kAllReduce;
  Algorithm algorithm = Algorithm::kRing;
  int ranks = 1;
  int64_t count = 0;  // elements; see the layouts above
  int root = 0;
  std::vector<std::vector<int64_t>> counts;  // all-to-all-v: counts[r][p] sent by rank r to rank p
  std::vector<SendRecvPair> pairs;           // send/recv
  std::vector<bool> in_place;                // per rank: send and recv are the same memory (layout-wise)
  std::vector<int> groups;                   // per rank: its group (hierarchical), ascending by rank
  int64_t chunk_elems = 1 << 20;
  int pipeline_depth = 2;
  int channels = 1;  // chunk j travels on channel j % channels: its own connection queues
};

Schedule build_schedule(const ScheduleSpec& spec);

// nullopt if `a` implements `c` for this many ranks on `fabric` with these rank groups; otherwise why
// not (for error messages and the selector).
std::optional<std::string> unsupported(Collective c, Algorithm a, const Fabric& fabric, const std::vector<int>& groups);

}  // namespace ppu::ccl
