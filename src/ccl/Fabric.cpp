#include "ccl/Fabric.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "arch/Error.hpp"

namespace ppu::ccl {

int Fabric::add(std::string name, double line_bw, double efficiency) {
  resources_.push_back({std::move(name), line_bw * efficiency, line_bw});
  return static_cast<int>(resources_.size()) - 1;
}

Fabric::Fabric(const NodeSpec& node) : node_(node) {
  const int n = node.num_chips();
  const double eff = node.link_efficiency.value;
  paths_.assign(static_cast<size_t>(n) * n, {});
  latency_.assign(static_cast<size_t>(n) * n, 0.0);
  auto at = [&](int a, int b) { return static_cast<size_t>(a) * n + b; };
  const ChipSpec& chip = node.chip;
  for (int c = 0; c < n; ++c)
    memory_.push_back(add(fmt::format("hbm c{}", c), chip.hbm_bandwidth.value * chip.hbm_read_efficiency.value, 1.0));
  const bool mesh = node.topology == Topology::kFullMesh || node.topology == Topology::kMeshesOverPcie;
  const bool pcie = node.topology == Topology::kPcie || node.topology == Topology::kMeshesOverPcie;
  if (mesh) {
    const int g = node.group_chips();
    for (int a = 0; a < n; ++a)
      for (int b = 0; b < n; ++b)
        if (a != b && a / g == b / g) {
          paths_[at(a, b)] = {add(fmt::format("c{}->c{}", a, b), node.link_bandwidth.value, eff)};
          latency_[at(a, b)] = node.link_latency.value;
        }
  }
  if (node.topology == Topology::kSwitch) {
    for (int c = 0; c < n; ++c) {
      up_.push_back(add(fmt::format("c{}->sw", c), node.link_bandwidth.value, eff));
      down_.push_back(add(fmt::format("sw->c{}", c), node.link_bandwidth.value, eff));
    }
    if (node.has_switch_reduction()) nvls_ = add("nvls", node.switch_reduction_bandwidth.value, 1.0);
    for (int a = 0; a < n; ++a)
      for (int b = 0; b < n; ++b)
        if (a != b) {
          paths_[at(a, b)] = {up_[static_cast<size_t>(a)], down_[static_cast<size_t>(b)]};
          latency_[at(a, b)] = node.link_latency.value;
        }
  }
  if (pcie) {
    const int per = static_cast<int>(node.pcie_switch_chips.value);
    const int switches = n / per;
    std::vector<int> cu, cd, su, sd;
    for (int c = 0; c < n; ++c) {
      cu.push_back(add(fmt::format("c{}->pcie{}", c, c / per), node.pcie_bandwidth.value, eff));
      cd.push_back(add(fmt::format("pcie{}->c{}", c / per, c), node.pcie_bandwidth.value, eff));
    }
    for (int s = 0; s < switches; ++s) {
      su.push_back(add(fmt::format("pcie{}->host", s), node.host_bandwidth.value, eff));
      sd.push_back(add(fmt::format("host->pcie{}", s), node.host_bandwidth.value, eff));
    }
    for (int a = 0; a < n; ++a)
      for (int b = 0; b < n; ++b) {
        if (a == b || !paths_[at(a, b)].empty()) continue;  // mesh links take precedence
        const int sa = a / per, sb = b / per;
        auto& p = paths_[at(a, b)];
        p = {cu[static_cast<size_t>(a)], cd[static_cast<size_t>(b)]};
        if (sa != sb) p.insert(p.begin() + 1, {su[static_cast<size_t>(sa)], sd[static_cast<size_t>(sb)]});
        latency_[at(a, b)] = node.pcie_latency.value;
      }
  }
  for (int a = 0; a < n; ++a)
    for (int b = 0; b < n; ++b) PPU_CHECK(a == b || !paths_[at(a, b)].empty(), "fabric without a path");
}

void Fabric::add_to(FlowSim& sim) const {
  PPU_CHECK(sim.num_resources() == 0, "the fabric's resources must come first");
  for (const Resource& r : resources_) sim.add_resource(r.name, r.bw_bytes_per_s);
}

const std::vector<int>& Fabric::path(int a, int b) const {
  PPU_CHECK(a != b && a >= 0 && b >= 0 && a < num_chips() && b < num_chips(), "path between two different chips");
  return paths_[static_cast<size_t>(a) * num_chips() + b];
}

double Fabric::path_latency_s(int a, int b) const { return latency_[static_cast<size_t>(a) * num_chips() + b]; }

double Fabric::path_bandwidth(int a, int b) const {
  double bw = 1e300;
  for (int r : path(a, b)) bw = std::min(bw, resources_[static_cast<size_t>(r)].bw_bytes_per_s);
  return bw;
}

}  // namespace ppu::ccl
