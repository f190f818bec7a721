#include "ccl/Fabric.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <string_view>

#include "arch/Error.hpp"

namespace ppu::ccl {

namespace {

// The flow model divides bytes by these rates and adds these latencies: a zero, denormal, infinite or
// NaN one would leave a collective's flows unable to finish (or finishing at no time). Node and chip
// files cannot hold such values (their valid ranges); a NodeSpec built in code can, and gets this
// error naming the field instead of a simulation that never ends.
void check_latency(const NodeSpec& node, std::string_view key, const Quantity& q) {
  if (!(std::isfinite(q.value) && q.value >= 0))
    throw UserError(fmt::format("node '{}': field '{}' is {} s; the collective simulation needs a finite, "
                                "non-negative latency",
                                node.name, key, q.value));
}

}  // namespace

int Fabric::add(std::string name, double line_bw, double efficiency, std::string_view fields) {
  const double bw = line_bw * efficiency;
  if (!(std::isnormal(bw) && bw > 0))
    throw UserError(fmt::format("node '{}': resource '{}' would move {} B/s ({}); a collective over it could never "
                                "finish: the rate must be positive and finite",
                                node_.name, name, bw, fields));
  resources_.push_back({std::move(name), bw, line_bw});
  return static_cast<int>(resources_.size()) - 1;
}

Fabric::Fabric(const NodeSpec& node) : node_(node) {
  const int n = node.num_chips();
  check_latency(node, "collective_latency", node.collective_latency);
  check_latency(node, "step_latency", node.step_latency);
  if (node.has_low_latency_protocol()) check_latency(node, "ll_step_latency", node.ll_step_latency);
  if (node.has_switch_reduction()) check_latency(node, "switch_reduction_latency", node.switch_reduction_latency);
  const double eff = node.link_efficiency.value;
  paths_.assign(static_cast<size_t>(n) * n, {});
  latency_.assign(static_cast<size_t>(n) * n, 0.0);
  auto at = [&](int a, int b) { return static_cast<size_t>(a) * n + b; };
  const ChipSpec& chip = node.chip;
  for (int c = 0; c < n; ++c)
    memory_.push_back(add(fmt::format("hbm c{}", c), chip.hbm_bandwidth.value * chip.hbm_read_efficiency.value, 1.0,
                          "chip fields 'hbm_bandwidth' x 'hbm_read_efficiency'"));
  const bool mesh = node.topology == Topology::kFullMesh || node.topology == Topology::kMeshesOverPcie;
  const bool pcie = node.topology == Topology::kPcie || node.topology == Topology::kMeshesOverPcie;
  if (mesh || node.topology == Topology::kSwitch) check_latency(node, "link_latency", node.link_latency);
  if (pcie) check_latency(node, "pcie_latency", node.pcie_latency);
  constexpr std::string_view kLinkFields = "fields 'link_bandwidth' x 'link_efficiency'";
  if (mesh) {
    const int g = node.group_chips();
    for (int a = 0; a < n; ++a)
      for (int b = 0; b < n; ++b)
        if (a != b && a / g == b / g) {
          paths_[at(a, b)] = {add(fmt::format("c{}->c{}", a, b), node.link_bandwidth.value, eff, kLinkFields)};
          latency_[at(a, b)] = node.link_latency.value;
        }
  }
  if (node.topology == Topology::kSwitch) {
    for (int c = 0; c < n; ++c) {
      up_.push_back(add(fmt::format("c{}->sw", c), node.link_bandwidth.value, eff, kLinkFields));
      down_.push_back(add(fmt::format("sw->c{}", c), node.link_bandwidth.value, eff, kLinkFields));
    }
    if (node.has_switch_reduction())
      nvls_ = add("nvls", node.switch_reduction_bandwidth.value, 1.0, "field 'switch_reduction_bandwidth'");
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
      cu.push_back(add(fmt::format("c{}->pcie{}", c, c / per), node.pcie_bandwidth.value, eff,
                        "fields 'pcie_bandwidth' x 'link_efficiency'"));
      cd.push_back(add(fmt::format("pcie{}->c{}", c / per, c), node.pcie_bandwidth.value, eff,
                        "fields 'pcie_bandwidth' x 'link_efficiency'"));
    }
    for (int s = 0; s < switches; ++s) {
      su.push_back(add(fmt::format("pcie{}->host", s), node.host_bandwidth.value, eff,
                        "fields 'host_bandwidth' x 'link_efficiency'"));
      sd.push_back(add(fmt::format("host->pcie{}", s), node.host_bandwidth.value, eff,
                        "fields 'host_bandwidth' x 'link_efficiency'"));
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
