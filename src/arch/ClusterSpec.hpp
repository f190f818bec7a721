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
// one below; the top tier's domain holds every node). Traffic between two nodes leaves the smallest
// domain they share through every tier below it. `oversubscription` of tier i is (bandwidth of the
// links into a tier-i switch from below) / (bandwidth of its links up to tier i+1): 1 = non-blocking;
// the top tier has no uplinks and must have 1. With `rail_optimized`, NIC k of every node goes to the
// tier-0 switch(es) of rail k (NVIDIA's rail-optimised design): same-rail traffic between nodes of
// one tier-0 domain takes one hop; a tier-0 domain then spans `nodes` nodes on each of the
// nics_per_node rails. Without it, all of a node's NICs go to one tier-0 switch.
//
// Every numeric field is a Quantity with a unit and a source or an assumption, as in chip and node
// presets.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "arch/NodeSpec.hpp"

namespace ppu {

struct NetworkTier {
  std::string name;           // "leaf", "spine", "core"
  Quantity nodes;             // count: nodes in one domain of this tier
  Quantity oversubscription;  // ratio >= 1 (dimensionless; 1 = non-blocking); 1 for the top tier
  Quantity latency;           // s, added by a hop through a switch of this tier
};

struct ClusterSpec {
  std::string name;          // preset key, e.g. "zhenwu-10k"
  std::string display_name;  // "10,240 Zhenwu 810E PPUs (1,280 x zhenwu-8, 8 x 400 Gb/s RoCE, 3-tier Clos)"
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
};

// Names of the built-in cluster presets, sorted.
std::vector<std::string> cluster_preset_names();

// Loads a preset by name, or a file if `name_or_path` ends in ".json" or contains '/'. The node is
// loaded by its name (or path). Throws UserError: unknown name (listing the known ones), unreadable
// file, or invalid content (naming the file and the field and what would be valid).
ClusterSpec load_cluster(std::string_view name_or_path);
ClusterSpec parse_cluster(std::string_view json_text, std::string_view origin);

}  // namespace ppu
