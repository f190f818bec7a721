// ClusterSpec: a training/serving cluster as data - which node, how many, the scale-out NICs and the
// network that joins them - loaded from a preset (presets/clusters/<name>.json) or a user's file
// with the same schema (docs/clusters.md).
//
//   ClusterSpec c = load_cluster("zhenwu-10k");   // 1,280 zhenwu-8 nodes = 10,240 PPUs
//   c.num_chips();                                // 10240
//   c.node.chip.name;                             // "zhenwu-810e"
//   c.nic_bandwidth.value;                        // B/s per direction per NIC
//
// The network is a multi-tier Clos (fat-tree), described bottom up by `tiers`. Tier 0's switches
// connect NICs directly; tier i's domain is `nodes` whole nodes (each tier's domain a multiple of the
// one below; the top tier's domain holds every node). Nodes are numbered 0 .. nodes-1 and fill the
// domains in order: node n is in domain n / tiers[i].nodes of tier i. Traffic between two nodes
// leaves the smallest domain they share through every tier below it. `oversubscription` of tier i is
// (bandwidth of the links into a tier-i switch from below) / (bandwidth of its links up to tier i+1):
// 1 = non-blocking; the top tier has no uplinks and must have 1. With `rail_optimized`, NIC k of
// every node goes to the tier-0 switch(es) of rail k (NVIDIA's rail-optimised design): same-rail
// traffic between nodes of one tier-0 domain takes one hop; a tier-0 domain then spans `nodes` nodes
// on each of the nics_per_node rails. Without it, all of a node's NICs go to one tier-0 switch.
//
// Every numeric field is a Quantity with a unit and a source or an assumption, as in chip and node
// presets. The loader's structural rules (docs/clusters.md, "Rules"):
//   - nodes >= 1, nics_per_node >= 1, nic_efficiency a fraction, pue a ratio >= 1;
//   - rail_optimized is required (true or false): it changes every route, so no default is guessed;
//   - tiers: at least one; unique names; each tier's `nodes` a multiple of, and larger than, the
//     tier below's; oversubscription a ratio >= 1, exactly 1 for the top tier;
//   - the top tier's domain holds every node (it may be larger: a pod built for 15K GPUs with 10K
//     in it); no lower tier does (the tiers above it would carry no traffic);
//   - the cluster's nodes fill whole domains of every tier below the top (a multiple of each).
//
// Not here: how traffic is routed and timed over this (cluster/Network*), power and energy reports.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "arch/NodeSpec.hpp"

namespace ppu {

struct NetworkTier {
  std::string name;           // "leaf", "spine", "core"
  std::string notes;          // optional: the switch and how the tier is built
  Quantity nodes;             // count: nodes in one domain of this tier
  Quantity oversubscription;  // ratio >= 1 (dimensionless; 1 = non-blocking); 1 for the top tier
  Quantity latency;           // s, added by a hop through a switch of this tier

  int num_nodes() const { return static_cast<int>(nodes.value); }
};

struct ClusterSpec {
  std::string name;          // preset key, e.g. "zhenwu-10k"
  std::string display_name;  // "10,240 Zhenwu 810E PPUs (1,280 x zhenwu-8, 8 x 400 Gb/s RoCE, ...)"
  std::string notes;
  std::string file;          // where it was loaded from
  std::string node_name;     // as written in the file (a node preset name or a path)
  NodeSpec node;             // the node, loaded

  Quantity nodes;            // count of nodes
  Quantity nics_per_node;    // count of scale-out NICs per node (rails)
  Quantity nic_bandwidth;    // B/s per direction per NIC (files may say Gb/s)
  Quantity nic_latency;      // s, NIC to NIC through one tier-0 switch (software to software)
  Quantity nic_efficiency;   // fraction of the NIC line rate a collective's payload gets
  Quantity node_power;       // W per node beyond its chips (CPUs, NICs, fans, switches' share); for energy
  Quantity pue;              // ratio >= 1, facility power / IT power; for energy
  bool rail_optimized = true;
  std::vector<NetworkTier> tiers;  // bottom up, at least one

  int num_nodes() const { return static_cast<int>(nodes.value); }
  int chips_per_node() const { return node.num_chips(); }
  int64_t num_chips() const { return static_cast<int64_t>(num_nodes()) * chips_per_node(); }
  int num_tiers() const { return static_cast<int>(tiers.size()); }

  // B/s per direction out of one node into the network: nics_per_node x nic_bandwidth (line rate).
  double node_bandwidth_bytes_per_s() const { return nics_per_node.value * nic_bandwidth.value; }
  // Domains of tier `tier` that hold nodes of this cluster (the top tier's last one may be part full).
  // Precondition: 0 <= tier < num_tiers().
  int num_domains(int tier) const;
  // The lowest tier whose domain holds both nodes (0 .. num_tiers()-1); -1 if a == b (no network).
  // Preconditions: 0 <= a, b < num_nodes().
  int common_tier(int a, int b) const;
  // Line-rate B/s per direction per node for traffic that must leave its tier-`tier` domain while
  // every node of that domain sends at once: node bandwidth / (oversubscription of tiers 0..tier).
  // Precondition: 0 <= tier < num_tiers() - 1 (nothing leaves the top tier's domain).
  double bandwidth_leaving_bytes_per_s(int tier) const;
  // One-way small-message latency, s, between nodes whose lowest common tier is `tier`: nic_latency
  // covers NIC -> one tier-0 switch -> NIC; a route up to tier k >= 1 adds the second tier-0 switch,
  // two switches of each tier 1 .. k-1 and one of tier k. Precondition: 0 <= tier < num_tiers().
  double path_latency_s(int tier) const;
};

// One quantity field of the cluster schema (all are required).
struct ClusterFieldInfo {
  std::string_view key;
  Dimension dim;
  std::string_view description;
  Quantity ClusterSpec::*member;
  ValueRange range;  // checked at load (docs/presets.md, "Valid ranges")
};
const std::vector<ClusterFieldInfo>& cluster_fields();

// One quantity field of a tier object in `tiers` (all are required).
struct TierFieldInfo {
  std::string_view key;
  Dimension dim;
  std::string_view description;
  Quantity NetworkTier::*member;
  ValueRange range;  // checked at load (docs/presets.md, "Valid ranges")
};
const std::vector<TierFieldInfo>& tier_fields();

// Names of the built-in cluster presets, sorted.
std::vector<std::string> cluster_preset_names();

// Loads a preset by name, or a file if `name_or_path` ends in ".json" or contains '/'. The node is
// loaded by its name (or path). Throws UserError: unknown name (listing the known ones), unreadable
// file, or invalid content (naming the file and the field and what would be valid).
ClusterSpec load_cluster(std::string_view name_or_path);
ClusterSpec parse_cluster(std::string_view json_text, std::string_view origin);

}  // namespace ppu
