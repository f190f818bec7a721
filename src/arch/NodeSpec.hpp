// NodeSpec: one server ("node") of accelerators as data - which chip, how many, and how they are
// wired - loaded from a preset (presets/nodes/<name>.json) or a user's file with the same schema
// (docs/nodes.md).
//
//   NodeSpec n = load_node("zhenwu-8");          // 8 PPUs, a full mesh over their 7 links
//   n.num_chips();                              // 8
//   n.chip.name;                                // "zhenwu-810e" (the chip preset, loaded)
//   n.link_bandwidth.value;                     // 50e9 B/s per direction per chip pair
//
// Topologies (`topology` in the file):
//   full_mesh         every chip has its own link to every other chip (link_bandwidth per pair)
//   switch            every chip has one port into a non-blocking switch (NVSwitch); link_bandwidth is
//                     the port's bandwidth per direction; optional in-switch reduction (NVLS)
//   pcie              no chip-to-chip links: chips sit under PCIe switches (pcie_switch_chips each),
//                     the switches' uplinks (host_bandwidth) meet in the host
//   meshes_over_pcie  groups of mesh_chips in full meshes; traffic between meshes goes over PCIe as in
//                     `pcie` (a 16-card server as two 8-chip meshes)
// Every numeric field is a Quantity with a unit and a source or an assumption, as in chip presets.
//
// Not here: the flow model that uses these numbers (ccl/Fabric), clusters of nodes (later layers).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "arch/ChipSpec.hpp"

namespace ppu {

enum class Topology : uint8_t { kFullMesh, kSwitch, kPcie, kMeshesOverPcie, kCount };
inline constexpr std::array<std::string_view, static_cast<size_t>(Topology::kCount)> kTopologyNames = {
    "full_mesh", "switch", "pcie", "meshes_over_pcie"};
static_assert(kTopologyNames.size() == static_cast<size_t>(Topology::kCount));
constexpr std::string_view topology_name(Topology t) { return kTopologyNames[static_cast<size_t>(t)]; }

struct NodeSpec {
  std::string name;          // preset key, e.g. "h100-dgx"
  std::string display_name;  // "NVIDIA DGX H100 (8x H100 SXM5, NVSwitch)"
  std::string notes;
  std::string file;          // where it was loaded from
  std::string chip_name;     // as written in the file (a chip preset name or a path)
  ChipSpec chip;             // the chip, loaded
  Topology topology = Topology::kSwitch;

  Quantity chips;                       // count of chips in the node
  Quantity mesh_chips;                  // count: chips per full mesh (meshes_over_pcie)
  Quantity link_bandwidth;              // B/s per direction: per chip pair (mesh) or per switch port
  Quantity link_latency;                // s, chip to chip over the links
  Quantity link_efficiency;             // fraction of the line rate a collective's payload gets
  Quantity pcie_bandwidth;              // B/s per direction, chip to its PCIe switch
  Quantity pcie_latency;                // s, chip to chip through PCIe
  Quantity pcie_switch_chips;           // count of chips under one PCIe switch
  Quantity host_bandwidth;              // B/s per direction, a PCIe switch's uplink into the host
  Quantity switch_reduction_bandwidth;  // B/s per port: in-switch reduction (NVLS); absent = none
  Quantity switch_reduction_latency;    // s, added to an in-switch reduction
  Quantity collective_latency;          // s, fixed cost of one collective call (launch, setup)
  Quantity step_latency;                // s, synchronisation cost of one pipelined transfer step
  Quantity chunk_size;                  // bytes, the unit in which collectives pipeline data
  Quantity pipeline_depth;              // count: chunks in flight per connection and channel
  Quantity channels;                    // count: independent pipelines a collective runs (NCCL's channels)
  Quantity ll_efficiency;               // fraction of line rate for the low-latency protocol; absent = none
  Quantity ll_step_latency;             // s, step synchronisation cost of the low-latency protocol

  int num_chips() const { return static_cast<int>(chips.value); }
  // Chips that share a group: a mesh (meshes_over_pcie), a PCIe switch (pcie), else every chip.
  int group_chips() const;
  bool has_links() const { return topology != Topology::kPcie; }
  bool has_switch_reduction() const { return switch_reduction_bandwidth.present; }
  bool has_low_latency_protocol() const { return ll_efficiency.present; }
};

// One field of the node schema. `required` and `allowed` are bit masks over Topology.
struct NodeFieldInfo {
  std::string_view key;
  Dimension dim;
  uint32_t required;
  uint32_t allowed;
  std::string_view description;
  Quantity NodeSpec::*member;
  ValueRange range;  // checked at load (docs/presets.md, "Valid ranges")
};
const std::vector<NodeFieldInfo>& node_fields();

// Names of the built-in node presets, sorted.
std::vector<std::string> node_preset_names();

// Loads a preset by name, or a file if `name_or_path` ends in ".json" or contains '/'. The chip is
// loaded by its name (or path). Throws UserError: unknown name (listing the known ones), unreadable
// file, or invalid content (naming the file and the field).
NodeSpec load_node(std::string_view name_or_path);
NodeSpec parse_node(std::string_view json_text, std::string_view origin);

}  // namespace ppu
