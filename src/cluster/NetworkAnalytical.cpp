// The analytical network model: the scale-out part of a collective is bounded by its most loaded
// resource - a NIC (per direction) or the uplinks of a tier domain (per direction) - at that
// resource's payload capacity. With every group doing the same thing at once and ECMP spreading a
// domain's traffic evenly over its uplinks (the model's assumption), that bound is what a max-min
// flow model gives for the symmetric patterns the collectives make (docs/network.md).
//
//   auto net = make_network(cluster, NetworkKind::kAnalytical);
//   net->cost({ccl::Collective::kAllReduce, 1e9, 1024, 8});   // microseconds of host time after the first call
//
// Cost: one pass over the nodes of one repeating window (NetworkInternal.hpp) per traffic geometry,
// O(nodes x tiers), cached per geometry; every later size is a multiplication.
// Not here: congestion between different concurrent patterns, uneven ECMP, adaptive routing.
#include <algorithm>
#include <map>

#include "cluster/NetworkInternal.hpp"

namespace ppu::cluster::detail {

namespace {

class AnalyticalNetwork final : public HierarchicalNetwork {
 public:
  explicit AnalyticalNetwork(const ClusterSpec& c) : HierarchicalNetwork(c) {}
  std::string name() const override { return "analytical"; }

 protected:
  double traffic_seconds(const Traffic& t) override {
    const auto key = t.geometry();
    auto it = per_byte_.find(key);
    if (it == per_byte_.end()) it = per_byte_.emplace(key, seconds_per_byte(t)).first;
    return it->second * t.bytes;
  }

 private:
  // Seconds per byte of t.bytes: max over NICs and tier uplinks of (bytes through it) / capacity.
  double seconds_per_byte(const Traffic& traffic) const {
    const ClusterSpec& c = cluster_;
    Traffic t = traffic;
    t.bytes = 1;
    const int64_t window = window_nodes(c, t);
    const int uplink_tiers = static_cast<int>(c.tiers.size()) - 1;  // the top tier has no uplinks
    std::vector<int64_t> dom(static_cast<size_t>(uplink_tiers));
    std::vector<std::vector<double>> dom_out(static_cast<size_t>(uplink_tiers)), dom_in(static_cast<size_t>(uplink_tiers));
    for (int j = 0; j < uplink_tiers; ++j) {
      dom[static_cast<size_t>(j)] = static_cast<int64_t>(c.tiers[static_cast<size_t>(j)].nodes.value);
      const auto domains = static_cast<size_t>((window + dom[static_cast<size_t>(j)] - 1) / dom[static_cast<size_t>(j)]);
      dom_out[static_cast<size_t>(j)].assign(domains, 0.0);
      dom_in[static_cast<size_t>(j)].assign(domains, 0.0);
    }
    std::vector<double> node_out(static_cast<size_t>(window), 0.0), node_in(static_cast<size_t>(window), 0.0);

    if (t.shape == Shape::kAllToAll) {
      // Closed form per node set (N^2 flows would be too many): a node sends to the N-1 others; a domain
      // holding m of the set's nodes sends m (N - m) flows out and takes as many in.
      const int n = t.nodes_per_group;
      const int64_t ns = t.node_stride, block = ns * n;
      for (int64_t q = 0; q < window / n; ++q) {
        const int64_t first = (q / ns) * block + q % ns;
        for (int i = 0; i < n; ++i) {
          node_out[static_cast<size_t>(first + i * ns)] += n - 1;
          node_in[static_cast<size_t>(first + i * ns)] += n - 1;
        }
        for (int j = 0; j < uplink_tiers; ++j) {
          const int64_t d = dom[static_cast<size_t>(j)];
          for (int i = 0; i < n;) {  // runs of the set's nodes (ascending) in one domain
            const int64_t domain = (first + i * ns) / d;
            int m = 0;
            while (i + m < n && (first + (i + m) * ns) / d == domain) ++m;
            dom_out[static_cast<size_t>(j)][static_cast<size_t>(domain)] += static_cast<double>(m) * (n - m);
            dom_in[static_cast<size_t>(j)][static_cast<size_t>(domain)] += static_cast<double>(m) * (n - m);
            i += m;
          }
        }
      }
    } else {
      for_each_flow(t, window, [&](int64_t a, int64_t b, double bytes) {
        node_out[static_cast<size_t>(a)] += bytes;
        node_in[static_cast<size_t>(b)] += bytes;
        for (int j = 0; j < uplink_tiers; ++j) {
          const int64_t d = dom[static_cast<size_t>(j)];
          if (a / d == b / d) break;  // domains nest: shared here, shared above
          dom_out[static_cast<size_t>(j)][static_cast<size_t>(a / d)] += bytes;
          dom_in[static_cast<size_t>(j)][static_cast<size_t>(b / d)] += bytes;
        }
      });
    }
    const double nic = c.nic_bandwidth.value * c.nic_efficiency.value;
    double worst = 0;
    for (size_t x = 0; x < node_out.size(); ++x) worst = std::max({worst, node_out[x] / nic, node_in[x] / nic});
    for (int j = 0; j < uplink_tiers; ++j) {
      const double cap = uplink_capacity(c, j, t.busy_rails);
      for (size_t x = 0; x < dom_out[static_cast<size_t>(j)].size(); ++x)
        worst = std::max({worst, dom_out[static_cast<size_t>(j)][x] / cap, dom_in[static_cast<size_t>(j)][x] / cap});
    }
    return worst;
  }

  std::map<std::tuple<int, int, int, int64_t, int64_t>, double> per_byte_;
};

}  // namespace

std::unique_ptr<NetworkModel> make_analytical(const ClusterSpec& c) { return std::make_unique<AnalyticalNetwork>(c); }

}  // namespace ppu::cluster::detail
