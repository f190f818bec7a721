// Internals shared by the network models (cluster/Network.hpp): where a request's groups sit, the
// scale-out traffic they make, the node's own collectives (ccl, cached), and the cost assembly both
// models share. Only the scale-out bandwidth part differs between the models: the analytical model
// bounds it by the most loaded NIC or tier uplink (NetworkAnalytical.cpp), the flow model simulates
// it on SimGrid (NetworkFlow.cpp).
//
// Vocabulary (docs/network.md):
//   C   chips per node; R NICs (rails) per node; B payload bandwidth of one NIC per direction
//       (nic_bandwidth * nic_efficiency)
//   G   group size; s stride; T total ranks; k members of a group per node; N nodes per group
//   node set  the nodes one group occupies (the C/k groups that share a node share its node set)
//   block     the ns * N consecutive nodes that ns interleaved node sets tile (ns = node stride)
//
// Not part of the public API; not thread-safe.
#pragma once

#include <cstdint>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "arch/ClusterSpec.hpp"
#include "cluster/Network.hpp"

namespace ppu {
class Device;
namespace ccl {
class Communicator;
}
}  // namespace ppu

namespace ppu::cluster::detail {

// Where a request's groups sit on the cluster. Throws UserError (naming the field and what is valid)
// for requests that do not fit.
struct Layout {
  int group_size = 1;
  int64_t stride = 1;
  int64_t total_ranks = 0;
  int chips_per_node = 1;
  bool in_node = true;          // every group inside one node
  int k = 1;                    // members of a group per node (in_node: group_size)
  int nodes_per_group = 1;      // N
  int64_t node_stride = 1;      // nodes between consecutive member nodes of a group (multi-node)
  int64_t nodes_used = 0;       // T / C nodes, all of whose chips take part (multi-node)
  std::vector<int> chips;       // the node's chips holding the first group's members on its first node
};
Layout layout_of(const ClusterSpec& c, const CollectiveRequest& r);

// Throws UserError if the cluster cannot be modelled (see make_network).
void check_cluster(const ClusterSpec& c);

// --- scale-out traffic, as node-level flows on one rail --------------------------------------------

// Node-level patterns within a node set (positions 0..N-1 along the group's nodes):
//   ring      i -> i+1 (mod N)                          ring all-reduce, reduce-scatter, all-gather
//   tree      two in-order binary trees, the second shifted by one position; every tree edge in both
//             directions (reduce up, broadcast down)    NCCL's double binary tree
//   all2all   every ordered pair i != j                  all-to-all
//   shift     i -> i+1 for i < N-1                       send/recv (pipeline neighbours)
enum class Shape : uint8_t { kRing, kTree, kAllToAll, kShift, kCount };
inline constexpr const char* kShapeNames[] = {"ring", "tree", "all2all", "shift"};
static_assert(std::size(kShapeNames) == static_cast<size_t>(Shape::kCount));

struct Traffic {
  Shape shape = Shape::kRing;
  double bytes = 0;        // per node-level edge (flow) on each busy rail
  int busy_rails = 1;      // rails that carry this pattern, each identically (the others idle)
  int nodes_per_group = 2;
  int64_t node_stride = 1;
  int64_t nodes_used = 0;
  // Ring and tree are pipelined (every edge busy for the whole collective, the slowest sets the pace);
  // all-to-all and shift are independent flows (the last to finish sets the time).
  bool pipelined() const { return shape == Shape::kRing || shape == Shape::kTree; }
  // Everything but `bytes`: the time is proportional to bytes for a fixed geometry.
  std::tuple<int, int, int, int64_t, int64_t> geometry() const {
    return {static_cast<int>(shape), busy_rails, nodes_per_group, node_stride, nodes_used};
  }
};

// One directed node-level flow (node indices are global: node g holds chips g*C .. g*C+C-1).
struct NodeFlow {
  int64_t src = 0, dst = 0;
  double bytes = 0;
};

// The nodes the models look at: a window of whole blocks that repeats across the used nodes and
// that no traffic leaves above its tier (the smallest tier domain holding whole blocks), else all
// used nodes. Traffic in every window is the same, so one window stands for all.
int64_t window_nodes(const ClusterSpec& c, const Traffic& t);
// Calls f(src, dst, bytes) for every node-level flow of `t` inside the first window (nodes 0 ..
// window-1), node set by node set. The C/k groups that share a node set are one flow per node pair
// (t.bytes already counts them all).
template <class F>
void for_each_flow(const Traffic& t, int64_t window, F&& f);
// Positions of the parent of each position in an in-order balanced binary tree over 0..n-1 (-1: root).
std::vector<int> binary_tree_parents(int n);

// Payload capacity (B/s per direction) of one tier-j domain's uplinks as seen by one busy rail.
double uplink_capacity(const ClusterSpec& c, int tier, int busy_rails);
// Tier whose domain is the smallest holding both nodes (0: same tier-0 domain; equal nodes: -1).
int shared_tier(const ClusterSpec& c, int64_t a, int64_t b);
// Wire latency (s) from a NIC on node a to one on node b: nic_latency through one tier-0 switch,
// plus the switches of the tiers above it that the path crosses (up and down).
double hop_latency(const ClusterSpec& c, int64_t a, int64_t b);

// --- the node's own collectives ----------------------------------------------------------------------

// Times collectives of ranks placed on given chips of one node with the collective library, in
// timing-only mode, caching each (collective, chips, bytes, algorithm) result. Sizes above
// ccl::kSimulateUpToBytes (256 MB) are extrapolated linearly from 128 and 256 MB (the bandwidth-bound
// regime; the library's flow model grows slow there and every collective is linear in size beyond
// it, to 0.3% on the presets).
class NodeCollectives {
 public:
  explicit NodeCollectives(NodeSpec node);
  ~NodeCollectives();
  struct Timing {
    double seconds = 0;
    std::string how;  // "ring/simple"
  };
  // bytes per rank in the request's convention; ring: force the ring algorithm (else the selector's).
  Timing time(ccl::Collective kind, const std::vector<int>& chips, double bytes, bool ring);
  // Concurrent point-to-point transfers of `bytes` each between chips (src, dst).
  Timing send_recv(const std::vector<std::pair<int, int>>& chip_pairs, double bytes);
  const NodeSpec& node() const { return node_; }

 private:
  Timing simulate(ccl::Collective kind, const std::vector<int>& chips, const std::vector<std::pair<int, int>>& pairs,
                  double bytes, bool ring);
  Timing cached(ccl::Collective kind, const std::vector<int>& chips, const std::vector<std::pair<int, int>>& pairs,
                double bytes, bool ring);
  NodeSpec node_;
  std::vector<std::unique_ptr<Device>> devices_;
  std::map<std::vector<int>, std::unique_ptr<ccl::Communicator>> comms_;
  std::map<std::tuple<int, std::vector<int>, std::vector<std::pair<int, int>>, double, bool>, Timing> cache_;
};

// --- the shared cost assembly ------------------------------------------------------------------------

class HierarchicalNetwork : public NetworkModel {
 public:
  explicit HierarchicalNetwork(const ClusterSpec& c);
  CollectiveCost cost(const CollectiveRequest& r) override;

 protected:
  // Seconds the scale-out traffic `t` takes at the NICs' payload rate (bandwidth part only, no
  // latency). Proportional to t.bytes; implementations cache per geometry.
  virtual double traffic_seconds(const Traffic& t) = 0;
  ClusterSpec cluster_;

 private:
  CollectiveCost in_node(const CollectiveRequest& r, const Layout& l);
  CollectiveCost multi_node(const CollectiveRequest& r, const Layout& l);
  NodeCollectives node_;
  std::map<std::tuple<int, int, int64_t, bool>, double> latency_cache_;  // (shape, N, node stride, average)
  std::map<int, std::pair<int, int>> tree_cache_;                       // N -> (depth, most edges at a node)
};

std::unique_ptr<NetworkModel> make_analytical(const ClusterSpec& c);
std::unique_ptr<NetworkModel> make_flow(const ClusterSpec& c);

// --- template body ---------------------------------------------------------------------------------

template <class F>
void for_each_flow(const Traffic& t, int64_t window, F&& f) {
  const int n = t.nodes_per_group;
  const int64_t ns = t.node_stride;
  const int64_t block = ns * n;
  const int64_t sets = window / n;  // node sets inside the window (whole blocks)
  std::vector<int> parents;
  if (t.shape == Shape::kTree) parents = binary_tree_parents(n);
  for (int64_t q = 0; q < sets; ++q) {
    const int64_t first = (q / ns) * block + q % ns;
    auto node = [&](int64_t i) { return first + i * ns; };
    switch (t.shape) {
      case Shape::kRing:
        for (int i = 0; i < n; ++i) f(node(i), node((i + 1) % n), t.bytes);
        break;
      case Shape::kShift:
        for (int i = 0; i + 1 < n; ++i) f(node(i), node(i + 1), t.bytes);
        break;
      case Shape::kTree:
        for (int tree = 0; tree < 2; ++tree)
          for (int p = 0; p < n; ++p) {
            if (parents[static_cast<size_t>(p)] < 0) continue;
            const int64_t a = node((p + tree) % n), b = node((parents[static_cast<size_t>(p)] + tree) % n);
            f(a, b, t.bytes);
            f(b, a, t.bytes);
          }
        break;
      case Shape::kAllToAll:
        for (int i = 0; i < n; ++i)
          for (int j = 0; j < n; ++j)
            if (i != j) f(node(i), node(j), t.bytes);
        break;
      default:
        break;
    }
  }
}

}  // namespace ppu::cluster::detail
