#include "arch/NodeSpec.hpp"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "arch/Error.hpp"
#include "arch/Presets.hpp"
#include "arch/QuantityJson.hpp"

namespace ppu {

using json = nlohmann::json;

namespace {

constexpr uint32_t bit(Topology t) { return 1u << static_cast<unsigned>(t); }
constexpr uint32_t kAll = bit(Topology::kFullMesh) | bit(Topology::kSwitch) | bit(Topology::kPcie) |
                          bit(Topology::kMeshesOverPcie);
constexpr uint32_t kLinked = bit(Topology::kFullMesh) | bit(Topology::kSwitch) | bit(Topology::kMeshesOverPcie);
constexpr uint32_t kPcied = bit(Topology::kPcie) | bit(Topology::kMeshesOverPcie);

const char* const kMetaKeys[] = {"name", "display_name", "notes", "chip", "topology"};

std::string topology_list() {
  std::string out;
  for (auto n : kTopologyNames) out += fmt::format("{}{}", out.empty() ? "" : ", ", n);
  return out;
}

std::string topologies_in(uint32_t mask) {
  std::string out;
  for (size_t i = 0; i < kTopologyNames.size(); ++i)
    if (mask & (1u << i)) out += fmt::format("{}{}", out.empty() ? "" : ", ", kTopologyNames[i]);
  return out;
}

// The ranges of the node-only fields (the shared ones are in QuantityJson.hpp); docs/presets.md, "Valid ranges".
constexpr ValueRange kNodeChipsRange{1, 1024,
                                     "a node is one scale-up domain: the largest announced, NVL576, has 576 chips, and "
                                     "its link graph grows with the square of the count"};
constexpr ValueRange kNodeMeshChipsRange{1, 1024, "chips per mesh, at most a node's 1024"};
constexpr ValueRange kNodePcieSwitchChipsRange{1, 1024, "chips per PCIe switch, at most a node's 1024"};
constexpr ValueRange kNodeChunkSizeRange{65536, 1073741824,
                                         "NCCL moves 128 KiB to 4 MiB per step; every chunk is simulated, so a 1 GiB "
                                         "collective in 1 KiB chunks would take minutes"};
constexpr ValueRange kNodePipelineDepthRange{1, 16, "chunks in flight per connection; NCCL keeps 8"};
constexpr ValueRange kNodeChannelsRange{1, 64, "NCCL uses at most 64 channels"};

}  // namespace

const std::vector<NodeFieldInfo>& node_fields() {
  static const std::vector<NodeFieldInfo> fields = {
      {"chips", Dimension::kCount, kAll, kAll, "chips in the node", &NodeSpec::chips, kNodeChipsRange},
      {"mesh_chips", Dimension::kCount, bit(Topology::kMeshesOverPcie), bit(Topology::kMeshesOverPcie),
       "chips per full mesh", &NodeSpec::mesh_chips, kNodeMeshChipsRange},
      {"link_bandwidth", Dimension::kBandwidth, kLinked, kLinked,
       "chip-to-chip bandwidth per direction: per chip pair (mesh) or per switch port (switch)",
       &NodeSpec::link_bandwidth, kBandwidthRange},
      {"link_latency", Dimension::kTime, kLinked, kLinked, "chip-to-chip latency over the links",
       &NodeSpec::link_latency, kLatencyRange},
      {"link_efficiency", Dimension::kFraction, kAll, kAll,
       "fraction of a connection's line rate that a collective's payload gets (protocol overhead)",
       &NodeSpec::link_efficiency, kEfficiencyRange},
      {"pcie_bandwidth", Dimension::kBandwidth, kPcied, kPcied, "chip to PCIe switch bandwidth per direction",
       &NodeSpec::pcie_bandwidth, kBandwidthRange},
      {"pcie_latency", Dimension::kTime, kPcied, kPcied, "chip-to-chip latency through PCIe", &NodeSpec::pcie_latency,
       kLatencyRange},
      {"pcie_switch_chips", Dimension::kCount, kPcied, kPcied, "chips under one PCIe switch",
       &NodeSpec::pcie_switch_chips, kNodePcieSwitchChipsRange},
      {"host_bandwidth", Dimension::kBandwidth, kPcied, kPcied,
       "a PCIe switch's uplink into the host, per direction (traffic between switches)", &NodeSpec::host_bandwidth,
       kBandwidthRange},
      {"switch_reduction_bandwidth", Dimension::kBandwidth, 0, bit(Topology::kSwitch),
       "in-switch reduction (NVLS) rate per port; absent: the switch neither reduces nor multicasts (no NVLS)",
       &NodeSpec::switch_reduction_bandwidth, kBandwidthRange},
      {"switch_reduction_latency", Dimension::kTime, 0, bit(Topology::kSwitch),
       "extra latency of an in-switch reduction (with switch_reduction_bandwidth)", &NodeSpec::switch_reduction_latency,
       kLatencyRange},
      {"collective_latency", Dimension::kTime, kAll, kAll, "fixed cost of one collective (launch, setup)",
       &NodeSpec::collective_latency, kLatencyRange},
      {"step_latency", Dimension::kTime, kAll, kAll, "synchronisation cost of one pipelined transfer step",
       &NodeSpec::step_latency, kLatencyRange},
      {"chunk_size", Dimension::kBytes, kAll, kAll, "largest piece in which collectives pipeline data",
       &NodeSpec::chunk_size, kNodeChunkSizeRange},
      {"pipeline_depth", Dimension::kCount, kAll, kAll, "chunks in flight per connection and channel",
       &NodeSpec::pipeline_depth, kNodePipelineDepthRange},
      {"channels", Dimension::kCount, kAll, kAll,
       "independent pipelines (NCCL channels) a collective's chunks spread over", &NodeSpec::channels,
       kNodeChannelsRange},
      {"ll_efficiency", Dimension::kFraction, 0, kAll,
       "fraction of the line rate for payload under the low-latency protocol (flags travel with the data); absent: "
       "none",
       &NodeSpec::ll_efficiency, kEfficiencyRange},
      {"ll_step_latency", Dimension::kTime, 0, kAll, "step synchronisation cost under the low-latency protocol",
       &NodeSpec::ll_step_latency, kLatencyRange},
  };
  return fields;
}

int NodeSpec::group_chips() const {
  switch (topology) {
    case Topology::kMeshesOverPcie: return static_cast<int>(mesh_chips.value);
    case Topology::kPcie: return static_cast<int>(pcie_switch_chips.value);
    default: return num_chips();
  }
}

NodeSpec parse_node(std::string_view text, std::string_view origin) {
  const json j = parse_preset_object(text, origin, "node");
  NodeSpec n;
  n.file = std::string(origin);
  auto meta = [&](const char* key, bool required) { return preset_string(j, key, required, origin); };
  n.name = meta("name", true);
  n.display_name = meta("display_name", true);
  n.notes = meta("notes", false);
  n.chip_name = meta("chip", true);
  const std::string topo = meta("topology", true);
  bool found = false;
  for (size_t i = 0; i < kTopologyNames.size(); ++i)
    if (topo == kTopologyNames[i]) n.topology = static_cast<Topology>(i), found = true;
  if (!found)
    throw UserError(fmt::format("{}: field 'topology': '{}' is not a topology; valid: {}", origin, topo, topology_list()));
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    bool known = false;
    for (const char* m : kMetaKeys) known = known || k == m;
    for (const auto& f : node_fields()) known = known || k == f.key;
    if (!known) {
      std::string valid;
      for (const char* m : kMetaKeys) valid += fmt::format("{}{}", valid.empty() ? "" : ", ", m);
      for (const auto& f : node_fields()) valid += fmt::format(", {}", f.key);
      throw UserError(fmt::format("{}: unknown field '{}'; valid fields: {}", origin, k, valid));
    }
  }
  const uint32_t tb = bit(n.topology);
  for (const auto& f : node_fields()) {
    const bool has = j.contains(std::string(f.key));
    if (has && !(f.allowed & tb))
      throw UserError(fmt::format("{}: field '{}' does not apply to topology '{}' (only to: {})", origin, f.key, topo,
                                  topologies_in(f.allowed)));
    if (!has) {
      if (f.required & tb)
        throw UserError(fmt::format("{}: missing field '{}' ({}, in {} units such as {}); topology '{}' needs it",
                                    origin, f.key, f.description, dimension_name(f.dim), valid_units(f.dim), topo));
      continue;
    }
    n.*(f.member) = parse_quantity(j.at(std::string(f.key)), f.key, f.dim, origin, &f.range);
  }
  if (n.switch_reduction_bandwidth.present != n.switch_reduction_latency.present)
    throw UserError(fmt::format(
        "{}: fields 'switch_reduction_bandwidth' and 'switch_reduction_latency' go together: give both or neither",
        origin));
  if (n.ll_efficiency.present != n.ll_step_latency.present)
    throw UserError(fmt::format("{}: fields 'll_efficiency' and 'll_step_latency' go together: give both or neither", origin));
  const int chips = n.num_chips();
  auto divides = [&](const char* key, const Quantity& q) {
    const int g = static_cast<int>(q.value);
    if (chips % g != 0)
      throw UserError(fmt::format("{}: field '{}': {} does not divide the node's {} chips", origin, key, g, chips));
  };
  if (n.mesh_chips.present) divides("mesh_chips", n.mesh_chips);
  if (n.pcie_switch_chips.present) divides("pcie_switch_chips", n.pcie_switch_chips);
  try {
    n.chip = load_chip(n.chip_name);
  } catch (const UserError& e) {
    throw UserError(fmt::format("{}: field 'chip': {}", origin, e.what()));
  }
  const int links = static_cast<int>(n.chip.chip_links.value);
  const int mesh = n.topology == Topology::kFullMesh ? chips : n.topology == Topology::kMeshesOverPcie ? n.group_chips() : 0;
  if (mesh > 1 && links < mesh - 1)
    throw UserError(fmt::format("{}: a full mesh of {} chips needs {} links per chip; chip '{}' has {}", origin, mesh,
                                mesh - 1, n.chip.name, links));
  return n;
}

std::vector<std::string> node_preset_names() { return builtin_preset_names("nodes"); }

NodeSpec load_node(std::string_view name_or_path) {
  const PresetText p = preset_text("nodes", "node", name_or_path);
  return parse_node(p.text, p.origin);
}

}  // namespace ppu
