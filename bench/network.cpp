// Network-model benchmark: (1) predicted multi-node all-reduce bus bandwidth on DGX-A100 nodes with
// 8 x 200 Gb/s HDR NICs against the published ~192 GB/s (NVIDIA's NCCL team, NVIDIA/nccl issue #812),
// for both models; (2) host wall time of each model answering a data-parallel all-reduce request at
// about 1k, 10k and 100k chips - the first request on a new model (cold: for the flow model this
// forks its SimGrid worker and builds the platform), a repeat (warm) and a new size of the same
// pattern (cached geometry) - to show how the cost grows.
//
//   bench_network              # tables
//   bench_network --markdown   # the same as markdown
//
// Clusters are built here by hand (NIC numbers with their sources below). Exit status is 0 even when
// a case misses its target: this prints measurements, it is not a test.
#include <fmt/format.h>

#include <chrono>
#include <cstring>
#include <iostream>

#include "arch/ClusterSpec.hpp"
#include "cluster/Network.hpp"
#include "report/Table.hpp"

using namespace ppu;
using namespace ppu::cluster;

namespace {

Quantity q(double v, Dimension d, const char* why) {
  Quantity x;
  x.value = v;
  x.dim = d;
  x.present = true;
  x.assumed = why;
  return x;
}

struct Tier {
  const char* name;
  double nodes, oversubscription;
};

ClusterSpec make_cluster(const std::string& node, int nodes, double nic_gbps, const std::vector<Tier>& tiers) {
  ClusterSpec c;
  c.name = fmt::format("{}-x{}", node, nodes);
  c.node_name = node;
  c.node = load_node(node);
  c.nodes = q(nodes, Dimension::kCount, "bench");
  c.nics_per_node = q(8, Dimension::kCount, "one NIC per chip, as DGX/HGX nodes");
  c.nic_bandwidth = q(nic_gbps * 1e9 / 8, Dimension::kBandwidth, "HDR 200 Gb/s or NDR 400 Gb/s line rate");
  c.nic_efficiency = q(0.94, Dimension::kFraction,
                       "a 400 Gb/s NDR NIC delivers 46-49 GB/s of 50 (NVIDIA/nccl-tests issue #267): about the middle, 0.94");
  c.nic_latency = q(3e-6, Dimension::kTime, "IB NIC to NIC through one switch, software to software");
  c.rail_optimized = true;
  for (const Tier& t : tiers) {
    NetworkTier nt;
    nt.name = t.name;
    nt.nodes = q(t.nodes, Dimension::kCount, "bench");
    nt.oversubscription = q(t.oversubscription, Dimension::kFraction, "non-blocking");
    nt.latency = q(0.5e-6, Dimension::kTime, "one switch hop");
    c.tiers.push_back(nt);
  }
  return c;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string wall(double s) {
  if (s >= 1) return fmt::format("{:.2f} s", s);
  if (s >= 1e-3) return fmt::format("{:.1f} ms", s * 1e3);
  return fmt::format("{:.1f} us", s * 1e6);
}

}  // namespace

int main(int argc, char** argv) {
  bool md = false;
  for (int i = 1; i < argc; ++i) md = md || std::strcmp(argv[i], "--markdown") == 0;
  auto render = [&](const Table& t) { return md ? t.render_markdown() : t.render(); };

  // --- 1. multi-node all-reduce bus bandwidth, DGX-A100 + 8 x HDR -----------------------------------
  constexpr double kReferenceBusbw = 192e9;  // NVIDIA/nccl issue #812: DGX-A100 multi-node all-reduce
  Table bw({"nodes", "ranks", "size", "model", "busbw GB/s", "reference GB/s", "error", "algorithm"});
  double worst_error = 0;
  for (int nodes : {2, 4, 16, 64, 256}) {
    const ClusterSpec c = make_cluster("a100-dgx", nodes, 200, {{"leaf", 16, 1}, {"spine", 256, 1}});
    for (NetworkKind kind : {NetworkKind::kAnalytical, NetworkKind::kFlow}) {
      auto net = make_network(c, kind);
      for (double bytes : {1e9, 8e9}) {
        const CollectiveRequest r{ccl::Collective::kAllReduce, bytes, 8 * nodes, 1, 0};
        const CollectiveCost cost = net->cost(r);
        const double busbw = bytes / cost.seconds * ccl::bus_factor(r.collective, r.group_size);
        const double err = busbw / kReferenceBusbw - 1;
        if (bytes == 8e9) worst_error = std::max(worst_error, std::abs(err));
        bw.add_row({std::to_string(nodes), std::to_string(8 * nodes), fmt::format("{:g} GB", bytes / 1e9), net->name(),
                    fmt::format("{:.1f}", busbw / 1e9), fmt::format("{:.0f}", kReferenceBusbw / 1e9),
                    fmt::format("{:+.1f}%", 100 * err), cost.how.substr(0, cost.how.find(" over "))});
      }
    }
  }
  // The same on the a100-selene cluster preset, with its own NIC numbers.
  const ClusterSpec selene = load_cluster("a100-selene");
  for (NetworkKind kind : {NetworkKind::kAnalytical, NetworkKind::kFlow}) {
    auto net = make_network(selene, kind);
    for (int nodes : {2, 16, 140, 560}) {
      const CollectiveRequest r{ccl::Collective::kAllReduce, 8e9, 8 * nodes, 1, 8 * nodes};
      const CollectiveCost cost = net->cost(r);
      const double busbw = r.bytes / cost.seconds * ccl::bus_factor(r.collective, r.group_size);
      bw.add_row({std::to_string(nodes), std::to_string(8 * nodes), "8 GB", net->name() + " (a100-selene preset)",
                  fmt::format("{:.1f}", busbw / 1e9), fmt::format("{:.0f}", kReferenceBusbw / 1e9),
                  fmt::format("{:+.1f}%", 100 * (busbw / kReferenceBusbw - 1)), cost.how.substr(0, cost.how.find(" over "))});
    }
  }
  std::cout << "Multi-node all-reduce bus bandwidth, DGX-A100 (8 x A100, NVSwitch) + 8 x 200 Gb/s HDR: hand-built "
               "clusters with NIC efficiency 0.94 (from the NDR point) on a 2-tier non-blocking Clos, then the "
               "a100-selene preset (its own NIC efficiency, " << selene.nic_efficiency.value << ")\n\n"
            << render(bw) << fmt::format("\nworst |error| at 8 GB (hand-built clusters): {:.1f}%\n\n", 100 * worst_error);

  // --- 2. host cost of one data-parallel all-reduce request ---------------------------------------------
  // zhenwu-8 nodes with 8 x 400 Gb/s NICs; leaves of 32 nodes, spines of 256, a core above; TP 8 inside
  // the node, DP over every node (one member per node, stride 8); and a second pattern that needs the
  // node's own collective (all ranks of every node in one group of 8 x nodes).
  struct Scale {
    const char* label;
    int nodes;
    std::vector<Tier> tiers;
  };
  const Scale scales[] = {{"1k", 128, {{"leaf", 32, 1}, {"spine", 128, 1}}},
                          {"10k", 1280, {{"leaf", 32, 1}, {"spine", 256, 1}, {"core", 1280, 1}}},
                          {"100k", 12800, {{"leaf", 32, 1}, {"spine", 256, 1}, {"core", 12800, 1}}}};
  Table cost({"chips", "model", "request", "cold", "warm", "new size", "simulated time", "algorithm"});
  // Times `r` on `net` cold, again (warm), and at a new size of the same pattern; adds a row.
  auto time_request = [&](NetworkModel& net, CollectiveRequest r, const std::string& chips, const std::string& what) {
    auto t0 = std::chrono::steady_clock::now();
    const CollectiveCost first = net.cost(r);
    const double cold = seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    net.cost(r);
    const double warm = seconds_since(t0);
    r.bytes = 2e8;  // a new size of the same pattern
    t0 = std::chrono::steady_clock::now();
    net.cost(r);
    const double fresh = seconds_since(t0);
    cost.add_row({chips, net.name(), what, wall(cold), wall(warm), wall(fresh), fmt::format("{:.2f} ms", first.seconds * 1e3),
                  first.how.substr(0, first.how.find(" over "))});
  };
  for (const Scale& s : scales) {
    const ClusterSpec c = make_cluster("zhenwu-8", s.nodes, 400, s.tiers);
    for (NetworkKind kind : {NetworkKind::kAnalytical, NetworkKind::kFlow}) {
      auto net = make_network(c, kind);
      const CollectiveRequest reqs[] = {{ccl::Collective::kAllReduce, 1e9, s.nodes, 8, 0},
                                        {ccl::Collective::kAllReduce, 1e9, 8 * s.nodes, 1, 0}};
      const char* names[] = {"DP all-reduce 1 GB (group = nodes, stride 8)", "all-reduce 1 GB over every chip"};
      for (int i = 0; i < 2; ++i) time_request(*net, reqs[i], fmt::format("{} ({})", 8 * s.nodes, s.label), names[i]);
    }
  }
  // Every cluster preset: one DP all-reduce (TP 8 inside the node, DP over every node), both models.
  for (const std::string& name : cluster_preset_names()) {
    const ClusterSpec c = load_cluster(name);
    const int C = c.chips_per_node();
    for (NetworkKind kind : {NetworkKind::kAnalytical, NetworkKind::kFlow}) {
      auto net = make_network(c, kind);
      time_request(*net, CollectiveRequest{ccl::Collective::kAllReduce, 1e9, c.num_nodes(), C, 0},
                   fmt::format("{} ({})", c.num_chips(), name), "DP all-reduce 1 GB (group = nodes)");
    }
  }
  std::cout << "Host wall time per request (cold: first request on a new model; warm: the same request again; "
               "new size: same pattern, 200 MB - its node part is simulated anew where there is one)\n\n"
            << render(cost);
  return 0;
}
