// Node presets: every built-in loads with its topology, and every kind of bad file gets an error that
// names the file, the field and what is valid.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>

#include "TestUtil.hpp"
#include "arch/NodeSpec.hpp"

namespace ppu {
namespace {

TEST(NodeSpec, EveryPresetLoads) {
  const auto names = node_preset_names();
  for (const char* want : {"zhenwu-8", "zhenwu-16", "zhenwu-16-icn", "zhenwu-8-pcie", "a100-dgx", "a800-hgx", "h100-dgx", "h200-hgx",
                           "h20-hgx", "h800-hgx"})
    EXPECT_NE(std::find(names.begin(), names.end(), want), names.end()) << want;
  for (const auto& n : names) {
    const NodeSpec s = load_node(n);
    EXPECT_EQ(s.name, n);
    EXPECT_GT(s.num_chips(), 0);
    EXPECT_EQ(s.num_chips() % s.group_chips(), 0);
  }
}

TEST(NodeSpec, ZhenwuNodes) {
  const NodeSpec z = load_node("zhenwu-8");
  EXPECT_EQ(z.topology, Topology::kFullMesh);
  EXPECT_EQ(z.num_chips(), 8);
  EXPECT_EQ(z.chip.name, "zhenwu-810e");
  EXPECT_DOUBLE_EQ(z.link_bandwidth.value, 50e9);
  EXPECT_FALSE(z.has_switch_reduction());
  const NodeSpec z16 = load_node("zhenwu-16");
  EXPECT_EQ(z16.topology, Topology::kMeshesOverPcie);
  EXPECT_EQ(z16.num_chips(), 16);
  EXPECT_EQ(z16.group_chips(), 8);
  EXPECT_FALSE(z16.chips.source.empty()) << "16 PPUs per Lingjun node is published (Alibaba Cloud ACK doc)";
  // The other reading of the 16-card node: both islands on one ICN switch, each chip's port the sum
  // of its 7 links (the island join is the topology field; docs/nodes.md).
  const NodeSpec icn = load_node("zhenwu-16-icn");
  EXPECT_EQ(icn.topology, Topology::kSwitch);
  EXPECT_EQ(icn.num_chips(), 16);
  EXPECT_EQ(icn.group_chips(), 16);
  EXPECT_DOUBLE_EQ(icn.link_bandwidth.value, icn.chip.chip_links.value * icn.chip.chip_link_bandwidth.value);
  EXPECT_FALSE(icn.has_switch_reduction());
  EXPECT_NE(icn.notes.find("islands joined over ICN"), std::string::npos);
  EXPECT_NE(z16.notes.find("islands joined over PCIe"), std::string::npos);
  EXPECT_EQ(load_node("zhenwu-8-pcie").topology, Topology::kPcie);
  EXPECT_TRUE(load_node("h100-dgx").has_switch_reduction());
  EXPECT_FALSE(load_node("a100-dgx").has_switch_reduction());
}

std::string minimal(const std::string& extra = "", const std::string& topology = "full_mesh", int chips = 4) {
  auto q = [](const char* k, const char* v, const char* u) {
    return fmt::format("\"{}\": {{\"value\": {}, \"unit\": \"{}\", \"assumed\": \"test\"}}", k, v, u);
  };
  std::string s = fmt::format("{{\"name\": \"t\", \"display_name\": \"T\", \"chip\": \"zhenwu-810e\", \"topology\": \"{}\"",
                              topology);
  s += ", " + q("chips", std::to_string(chips).c_str(), "count");
  if (topology != "pcie") s += ", " + q("link_bandwidth", "50", "GB/s") + ", " + q("link_latency", "1", "us");
  s += ", " + q("link_efficiency", "0.8", "fraction") + ", " + q("collective_latency", "5", "us") + ", " +
       q("step_latency", "1", "us") + ", " + q("chunk_size", "1", "MiB") + ", " + q("pipeline_depth", "2", "count") +
       ", " + q("channels", "4", "count");
  if (!extra.empty()) s += ", " + extra;
  return s + "}";
}

TEST(NodeSpec, MinimalFileParses) {
  const NodeSpec n = parse_node(minimal(), "t.json");
  EXPECT_EQ(n.num_chips(), 4);
  EXPECT_EQ(n.topology, Topology::kFullMesh);
}

TEST(NodeSpec, UnknownNameListsKnownOnes) {
  test::expect_error([] { load_node("dgx-9000"); }, {"unknown node 'dgx-9000'", "zhenwu-8", "h100-dgx", ".json"});
}

TEST(NodeSpec, BadFields) {
  test::expect_error([] { parse_node("{", "x.json"); }, {"x.json", "not valid JSON"});
  test::expect_error([] { parse_node(minimal("\"speed\": 3"), "x.json"); },
                     {"x.json", "unknown field 'speed'", "valid fields", "link_bandwidth"});
  test::expect_error([] { parse_node(minimal("", "ring"), "x.json"); },
                     {"field 'topology'", "'ring'", "full_mesh, switch, pcie, meshes_over_pcie"});
  test::expect_error(
      [] { parse_node(minimal("\"mesh_chips\": {\"value\": 2, \"unit\": \"count\", \"assumed\": \"x\"}"), "x.json"); },
      {"field 'mesh_chips' does not apply to topology 'full_mesh'", "meshes_over_pcie"});
  test::expect_error([] { parse_node(minimal("", "pcie"), "x.json"); },
                     {"missing field 'pcie_bandwidth'", "topology 'pcie' needs it"});
  test::expect_error([] { parse_node(minimal("", "full_mesh", 9), "x.json"); },
                     {"full mesh of 9 chips needs 8 links", "zhenwu-810e", "has 7"});
  test::expect_error(
      [] {
        parse_node(minimal("\"switch_reduction_bandwidth\": {\"value\": 100, \"unit\": \"GB/s\", \"assumed\": \"x\"}",
                           "switch"),
                   "x.json");
      },
      {"'switch_reduction_bandwidth' and 'switch_reduction_latency' go together"});
  test::expect_error(
      [] {
        std::string s = minimal();
        s.replace(s.find("\"zhenwu-810e\""), 13, "\"tpu-v9\"");
        parse_node(s, "x.json");
      },
      {"x.json: field 'chip'", "unknown chip 'tpu-v9'"});
  test::expect_error(
      [] {
        std::string s = minimal();
        s.replace(s.find("\"GB/s\""), 6, "\"GB\"");
        parse_node(s, "x.json");
      },
      {"field 'link_bandwidth'", "unit 'GB' is not a bandwidth unit"});
}

TEST(NodeSpec, MeshGroupsMustDivide) {
  auto q = [](const char* k, const char* v, const char* u) {
    return fmt::format("\"{}\": {{\"value\": {}, \"unit\": \"{}\", \"assumed\": \"t\"}}", k, v, u);
  };
  const std::string extra = q("mesh_chips", "3", "count") + ", " + q("pcie_bandwidth", "50", "GB/s") + ", " +
                            q("pcie_latency", "2", "us") + ", " + q("pcie_switch_chips", "4", "count") + ", " +
                            q("host_bandwidth", "50", "GB/s");
  test::expect_error([&] { parse_node(minimal(extra, "meshes_over_pcie", 8), "x.json"); },
                     {"field 'mesh_chips': 3 does not divide the node's 8 chips"});
}

}  // namespace
}  // namespace ppu
