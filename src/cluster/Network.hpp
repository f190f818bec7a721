// Network models of a cluster behind one interface: how long a set of identical, concurrent
// collectives takes on a ClusterSpec's chips, node links and scale-out network.
//
//   auto net = make_network(cluster, NetworkKind::kAnalytical);   // or kFlow (SimGrid)
//   CollectiveRequest r;
//   r.collective = ccl::Collective::kAllReduce; r.bytes = 1e9; r.group_size = 64; r.stride = 8;
//   double s = net->time(r);   // every one of the chips/64 data-parallel groups all-reduces 1 GB at once
//
// Rank numbering: global rank g lives on node g / chips_per_node, chip g % chips_per_node. A request
// describes `total_ranks / group_size` concurrent groups of the Megatron kind: group members are
// base + i * stride (i < group_size), with the groups tiling ranks 0 .. total_ranks-1 (group of rank
// g: inner = g % stride, outer = g / (stride * group_size); base = outer * stride * group_size +
// inner). total_ranks must be a multiple of stride * group_size. TP groups are stride 1, DP groups
// stride tp*cp, PP neighbours stride tp*cp*dp (Megatron's rank order: tp fastest, then cp, dp, pp).
// Groups must sit on nodes evenly: inside one node (stride * group_size divides chips_per_node), one
// member per node (stride a multiple of chips_per_node), or whole nodes (stride divides
// chips_per_node and group_size is a multiple of chips_per_node / stride).
//
// Symmetry: every group does the same thing at the same time, so a model may simulate one
// representative (or one transfer step of all groups together) and multiply; both models do.
//
// The models (docs/network.md has the assumptions and limits):
//   analytical  NCCL-like ring / double-binary-tree costs; the scale-out part from the load of the most
//               loaded NIC and tier uplink (max-min bound), closed form, microseconds per call
//   flow        the same algorithms, but the scale-out part from a flow-level max-min simulation on
//               SimGrid (one rail of the multi-tier Clos, built once per model in a worker process)
// Both time intra-node parts (groups inside a node; the node hops of multi-node algorithms) with the
// collective library's node model (ccl::Communicator in timing-only mode), cached per size.
//
// Not here: stragglers, failures, skewed traffic, overlap with compute (the training simulator),
// rail-asymmetric congestion beyond the busiest rail. Not thread-safe: one thread per model.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "arch/ClusterSpec.hpp"
#include "ccl/Collective.hpp"

namespace ppu::cluster {

// The collectives the models time (ccl::Collective: one vocabulary from the node to the cluster).
// All-to-all-v is timed as an all-to-all of the same bytes per rank in total: MoE dispatch and
// combine, whose blocks follow the routing, are equal on average (skewed traffic is not modelled).
// Broadcast and reduce are not modelled: cost() throws UserError naming the collective and these.
inline constexpr std::array<ccl::Collective, 6> kNetworkCollectives = {
    ccl::Collective::kAllReduce, ccl::Collective::kReduceScatter, ccl::Collective::kAllGather,
    ccl::Collective::kAllToAll,  ccl::Collective::kAllToAllV,     ccl::Collective::kSendRecv};

struct CollectiveRequest {
  ccl::Collective collective = ccl::Collective::kAllReduce;  // one of kNetworkCollectives
  // Bytes per rank: all-reduce: the buffer; reduce-scatter: the full input (each rank keeps 1/n);
  // all-gather: the full output (each rank contributes 1/n); all-to-all: what each rank sends in
  // total (1/n to each member, itself included; all-to-all-v likewise); send/recv: what each rank
  // sends to the member `stride` ranks above it (the last member of a group sends nothing), all pairs
  // at once.
  double bytes = 0;
  int group_size = 1;
  int64_t stride = 1;
  int64_t total_ranks = 0;  // 0: the whole cluster
};

// What a model found: the time and, for reports, which path/algorithm it used.
struct CollectiveCost {
  double seconds = 0;
  std::string how;  // e.g. "ring over 1024 ranks (8 per node x 128 nodes), simple: NIC-bound ..."
  // The parts `seconds` is made of (seconds = latency_seconds + max(network_seconds, node_seconds)):
  double latency_seconds = 0;  // launch plus per-step latencies
  double network_seconds = 0;  // scale-out bandwidth part (0 inside a node)
  double node_seconds = 0;     // intra-node part (the node's own collective for groups inside a node)
};

enum class NetworkKind : uint8_t { kAnalytical, kFlow, kCount };
inline constexpr std::array<std::string_view, static_cast<size_t>(NetworkKind::kCount)> kNetworkKindNames = {
    "analytical", "flow"};
inline constexpr std::array<std::string_view, static_cast<size_t>(NetworkKind::kCount)> kNetworkKindDescriptions = {
    "closed-form NCCL-like costs; scale-out bound by the most loaded NIC or tier uplink (microseconds per call)",
    "same algorithms, scale-out part from a flow-level max-min simulation on SimGrid (congestion-aware)"};
static_assert(kNetworkKindNames.size() == static_cast<size_t>(NetworkKind::kCount));
static_assert(kNetworkKindDescriptions.size() == static_cast<size_t>(NetworkKind::kCount));
const char* network_kind_name(NetworkKind k);
std::optional<NetworkKind> network_kind_from_name(std::string_view s);

class NetworkModel {
 public:
  virtual ~NetworkModel() = default;
  // Throws UserError for requests that do not fit the cluster (see make_network).
  virtual CollectiveCost cost(const CollectiveRequest& r) = 0;
  double time(const CollectiveRequest& r) { return cost(r).seconds; }
  virtual std::string name() const = 0;
};

// Throws UserError for a cluster the models cannot describe (no tiers, a top tier that does not hold
// every node, tier domains that do not nest, non-positive NIC numbers). Its cost() throws UserError
// for requests it cannot time (a collective outside kNetworkCollectives) or that do not fit the
// cluster (group larger than total_ranks, total_ranks not a multiple of stride*group_size or above
// the chip count, negative bytes, groups that do not sit on nodes evenly), naming the field and what
// would be valid.
std::unique_ptr<NetworkModel> make_network(const ClusterSpec& cluster, NetworkKind kind);

}  // namespace ppu::cluster
