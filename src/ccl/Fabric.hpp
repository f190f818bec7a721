// Fabric: a node's wiring as flow-level resources (ccl/FlowSim), built from its NodeSpec.
//
//   Fabric f(load_node("h100-dgx"));
//   f.path(0, 3);              // resources a 0 -> 3 transfer crosses: {up 0, down 3}
//   f.path_latency_s(0, 3);    // link_latency
//   FlowSim sim; f.add_to(sim);  // the same resources, indices preserved
//
// Resources, each one direction of a full-duplex connection, at line rate x link_efficiency:
//   full mesh        "c0->c1" for every ordered chip pair
//   switch           "c0->sw" (port up) and "sw->c0" (port down) per chip; with in-switch reduction
//                    also "nvls" (the rate at which the switch produces reduced data, all ports together)
//   pcie             "c0->pcie0" and "pcie0->c0" per chip, "pcie0->host" and "host->pcie0" per switch
//   meshes_over_pcie the mesh links within each mesh, plus the pcie resources between meshes
// and "hbm c0" per chip (local copies and reductions, at the chip's HBM read rate).
// Routing is fixed (the only path, or the direct one): no adaptive routing.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "arch/NodeSpec.hpp"
#include "ccl/FlowSim.hpp"

namespace ppu::ccl {

class Fabric {
 public:
  struct Resource {
    std::string name;
    double bw_bytes_per_s;  // payload rate (line rate x efficiency for links)
    double line_bytes_per_s;
  };

  explicit Fabric(const NodeSpec& node);

  const NodeSpec& node() const { return node_; }
  int num_chips() const { return node_.num_chips(); }
  const std::vector<Resource>& resources() const { return resources_; }
  // Adds every resource to `sim` in order (resource i here is resource i there).
  void add_to(FlowSim& sim) const;

  // Resources a transfer from chip a to chip b (a != b) crosses, and its latency in seconds.
  const std::vector<int>& path(int a, int b) const;
  double path_latency_s(int a, int b) const;
  // Chip c's memory (HBM) resource.
  int memory(int c) const { return memory_[static_cast<size_t>(c)]; }
  // Switch ports of chip c (switch topology only; -1 otherwise) and the switch's reduction resource
  // (-1 without in-switch reduction).
  int switch_up(int c) const { return up_.empty() ? -1 : up_[static_cast<size_t>(c)]; }
  int switch_down(int c) const { return down_.empty() ? -1 : down_[static_cast<size_t>(c)]; }
  int switch_reduction() const { return nvls_; }
  bool has_switch() const { return !up_.empty(); }
  bool has_switch_reduction() const { return nvls_ >= 0; }
  // The group (mesh or PCIe switch) chip c belongs to; groups are contiguous runs of chips.
  int group_of(int c) const { return c / node_.group_chips(); }
  // The slowest per-direction payload bandwidth on the path from a to b (B/s).
  double path_bandwidth(int a, int b) const;

 private:
  // Adds a resource of line_bw x efficiency B/s; `fields` names the preset fields it comes from, for the
  // UserError a zero, denormal or non-finite rate gets.
  int add(std::string name, double line_bw, double efficiency, std::string_view fields);

  NodeSpec node_;
  std::vector<Resource> resources_;
  std::vector<std::vector<int>> paths_;  // [a * n + b]
  std::vector<double> latency_;          // [a * n + b]
  std::vector<int> memory_, up_, down_;
  int nvls_ = -1;
};

}  // namespace ppu::ccl
