// FlowSim: a flow-level network engine. Resources (directed links, switch ports, a chip's memory) have
// a capacity in bytes per second; a flow crosses a set of resources, waits out its latency, then moves
// its bytes at a rate that the active flows share max-min fairly (progressive filling), recomputed
// whenever a flow starts or ends. A full-duplex link is two resources, one per direction, so traffic
// one way never slows traffic the other way.
//
//   FlowSim sim;
//   int ab = sim.add_resource("0->1", 50e9);
//   sim.start(0.0, {ab}, 1e6, 1e-6, /*tag=*/7);      // 1 MB after 1 us
//   while (auto done = sim.next()) use(done->tag, done->time_s);   // 21 us
//
// Deterministic: completions at the same time come out in the order the flows were started.
// Not here: what the flows mean (ccl/Schedule), packet-level effects (congestion control, routing
// choices, latency factors): a flow is fluid.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ppu::ccl {

class FlowSim {
 public:
  struct Completion {
    uint64_t tag;
    double time_s;
  };
  // One finished flow for traces: when its bytes started and stopped moving.
  struct FlowRecord {
    std::vector<int> resources;
    double bytes, start_s, end_s;
    uint64_t tag;
  };

  // Adds a resource; returns its index. Capacity must be positive (PPU_CHECK).
  int add_resource(std::string name, double capacity_bytes_per_s);
  int num_resources() const { return static_cast<int>(capacity_.size()); }
  const std::string& resource_name(int r) const { return names_[static_cast<size_t>(r)]; }
  double capacity(int r) const { return capacity_[static_cast<size_t>(r)]; }

  // Starts a flow at `at_s` (not before now()): after `latency_s` it moves `bytes` (>= 0) over
  // `resources` (may be empty: then it is a pure delay). `tag` comes back with its completion.
  void start(double at_s, std::vector<int> resources, double bytes, double latency_s, uint64_t tag);
  // The same with a weight per resource: moving one byte of the flow uses `weight` bytes of that
  // resource's capacity (a reduction that reads two operands and writes one uses its chip's memory
  // at weight 3). Weights must be positive; a resource listed twice adds its weights.
  void start_weighted(double at_s, std::vector<std::pair<int, double>> resources, double bytes, double latency_s,
                      uint64_t tag);
  // Advances to the next completion and returns it; nullopt when nothing is left. Throws UserError,
  // naming the resource, when an active flow can never finish (its bytes / rate overflows a double).
  std::optional<Completion> next();
  double now() const { return now_; }
  bool idle() const { return pending_.empty() && active_.empty(); }

  // Keep a FlowRecord of every finished flow that crossed a resource (for traces); off by default.
  void set_recording(bool on) { recording_ = on; }
  const std::vector<FlowRecord>& records() const { return records_; }

 private:
  struct Flow {
    std::vector<int> resources;  // sorted, unique
    std::vector<double> weights;  // per resource
    double bytes_total, remaining, rate = 0, start_s = 0;
    uint64_t tag, seq;
  };
  void recompute_rates();
  void advance(double t);

  std::vector<std::string> names_;
  std::vector<double> capacity_;
  double now_ = 0;
  uint64_t seq_ = 0;
  // Flows waiting out their latency: (time they become active, seq) -> flow; kept sorted by a heap.
  std::vector<std::pair<std::pair<double, uint64_t>, Flow>> pending_;
  std::vector<Flow> active_;
  bool rates_dirty_ = false;
  bool recording_ = false;
  std::vector<FlowRecord> records_;
};

}  // namespace ppu::ccl
