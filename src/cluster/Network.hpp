// Network models of a cluster behind one interface: how long a set of identical, concurrent
// collectives takes on a ClusterSpec's chips, node links and scale-out network.
//
//   auto net = make_network(cluster, NetworkKind::kAnalytical);   // or kFlow (SimGrid)
//   CollectiveRequest r;
//   r.kind = CollKind::kAllReduce; r.bytes = 1e9; r.group_size = 64; r.stride = 8;
//   double s = net->time(r);   // every one of the chips/64 data-parallel groups all-reduces 1 GB at once
//
// Rank numbering: global rank g lives on node g / chips_per_node, chip g % chips_per_node. A request
// describes `total_ranks / group_size` concurrent groups of the Megatron kind: group members are
// base + i * stride (i < group_size), with the groups tiling ranks 0 .. total_ranks-1 (group of rank
// g: inner = g % stride, outer = g / (stride * group_size); base = outer * stride * group_size +
// inner). total_ranks must be a multiple of stride * group_size. TP groups are stride 1, DP groups
// stride tp*cp, PP neighbours stride tp*cp*dp (Megatron's rank order: tp fastest, then cp, dp, pp).
//
// Symmetry: every group does the same thing at the same time, so a model may simulate one
// representative (or one transfer step of all groups together) and multiply; both models do.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "arch/ClusterSpec.hpp"

namespace ppu::cluster {

enum class CollKind : uint8_t { kAllReduce, kReduceScatter, kAllGather, kAllToAll, kSendRecv, kCount };
const char* coll_kind_name(CollKind k);

struct CollectiveRequest {
  CollKind kind = CollKind::kAllReduce;
  // Bytes per rank: all-reduce: the buffer; reduce-scatter: the full input (each rank keeps 1/n);
  // all-gather: the full output (each rank contributes 1/n); all-to-all: what each rank sends in
  // total (1/n to each member, itself included); send/recv: what each rank sends to the member
  // `stride` ranks above it (the last member of a group sends nothing), all pairs at once.
  double bytes = 0;
  int group_size = 1;
  int64_t stride = 1;
  int64_t total_ranks = 0;  // 0: the whole cluster
};

// What a model found: the time and, for reports, which path/algorithm it used.
struct CollectiveCost {
  double seconds = 0;
  std::string how;  // e.g. "hierarchical: node ring 8 + rail ring 128 over 2 tiers"
};

enum class NetworkKind : uint8_t { kAnalytical, kFlow };

class NetworkModel {
 public:
  virtual ~NetworkModel() = default;
  virtual CollectiveCost cost(const CollectiveRequest& r) = 0;
  double time(const CollectiveRequest& r) { return cost(r).seconds; }
  virtual std::string name() const = 0;
};

// Throws UserError for requests that do not fit the cluster (group larger than total_ranks,
// total_ranks not a multiple of stride*group_size or above the chip count, negative bytes).
std::unique_ptr<NetworkModel> make_network(const ClusterSpec& cluster, NetworkKind kind);

}  // namespace ppu::cluster
