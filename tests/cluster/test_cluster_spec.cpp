// Cluster presets: every built-in loads with consistent totals, the tier helpers follow the rules of
// ClusterSpec.hpp, and every kind of bad file gets an error that names the file, the field and what
// would be valid.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "TestUtil.hpp"
#include "arch/ClusterSpec.hpp"
#include "arch/Presets.hpp"

namespace ppu {
namespace {

using nlohmann::json;

TEST(ClusterSpec, EveryPresetLoadsWithConsistentTotals) {
  const auto names = cluster_preset_names();
  for (const char* want : {"a100-selene", "h100-24k", "h800-2k", "zhenwu-10k", "zhenwu-10k-16", "a800-10k", "h20-10k"})
    EXPECT_NE(std::find(names.begin(), names.end(), want), names.end()) << want;
  for (const auto& n : names) {
    SCOPED_TRACE(n);
    const ClusterSpec c = load_cluster(n);
    EXPECT_EQ(c.name, n);
    EXPECT_EQ(c.num_chips(), int64_t{c.num_nodes()} * c.node.num_chips());
    ASSERT_GE(c.num_tiers(), 1);
    EXPECT_GE(c.tiers.back().num_nodes(), c.num_nodes());
    EXPECT_EQ(c.tiers.back().oversubscription.value, 1.0);
    for (int i = 0; i + 1 < c.num_tiers(); ++i) {
      EXPECT_EQ(c.num_nodes() % c.tiers[static_cast<size_t>(i)].num_nodes(), 0);
      EXPECT_EQ(c.tiers[static_cast<size_t>(i) + 1].num_nodes() % c.tiers[static_cast<size_t>(i)].num_nodes(), 0);
    }
    EXPECT_GE(c.pue.value, 1.0);
    EXPECT_GT(c.node_power.value, 0.0);
    EXPECT_LE(c.nic_efficiency.value, 1.0);
    // Every quantity says where it comes from.
    for (const auto& f : cluster_fields()) EXPECT_FALSE((c.*(f.member)).source.empty() && (c.*(f.member)).assumed.empty());
    for (const auto& t : c.tiers)
      for (const auto& f : tier_fields()) EXPECT_FALSE((t.*(f.member)).source.empty() && (t.*(f.member)).assumed.empty());
  }
}

TEST(ClusterSpec, PresetKeyNumbers) {
  const ClusterSpec z = load_cluster("zhenwu-10k");
  EXPECT_EQ(z.num_chips(), 10240);
  EXPECT_EQ(z.num_nodes(), 1280);
  EXPECT_EQ(z.node.name, "zhenwu-8");
  EXPECT_EQ(z.node.chip.name, "zhenwu-810e");
  EXPECT_DOUBLE_EQ(z.nic_bandwidth.value, 50e9);  // 400 Gb/s
  EXPECT_DOUBLE_EQ(z.node_bandwidth_bytes_per_s(), 400e9);
  EXPECT_TRUE(z.rail_optimized);
  EXPECT_EQ(z.num_domains(0), 10);  // 10 segments of 1,024 PPUs
  EXPECT_EQ(z.num_domains(1), 1);   // in one pod
  for (const char* twin : {"a800-10k", "h20-10k"}) {
    SCOPED_TRACE(twin);
    const ClusterSpec t = load_cluster(twin);
    EXPECT_EQ(t.num_chips(), 10240);
    // The equal-network assumption: everything but the node matches zhenwu-10k.
    for (const auto& f : cluster_fields()) EXPECT_DOUBLE_EQ((t.*(f.member)).value, (z.*(f.member)).value) << f.key;
    ASSERT_EQ(t.num_tiers(), z.num_tiers());
    for (size_t i = 0; i < t.tiers.size(); ++i)
      for (const auto& f : tier_fields()) EXPECT_DOUBLE_EQ((t.tiers[i].*(f.member)).value, (z.tiers[i].*(f.member)).value);
  }
  // The same 10,240 PPUs of the cloud's 16-PPU node: per chip the same NIC bandwidth, node power and
  // switch figures; segments of 128 hosts (2,048 PPUs, SimAI's HPN template with 16 GPUs per server),
  // 7 per pod.
  const ClusterSpec z16 = load_cluster("zhenwu-10k-16");
  EXPECT_EQ(z16.num_chips(), 10240);
  EXPECT_EQ(z16.num_nodes(), 640);
  EXPECT_EQ(z16.node.name, "zhenwu-16");
  EXPECT_DOUBLE_EQ(z16.node_bandwidth_bytes_per_s() / z16.chips_per_node(), z.node_bandwidth_bytes_per_s() / z.chips_per_node());
  EXPECT_DOUBLE_EQ(z16.node_power.value / z16.chips_per_node(), z.node_power.value / z.chips_per_node());
  for (const char* key : {"nic_bandwidth", "nic_latency", "nic_efficiency", "pue"}) {
    const auto& f = *std::find_if(cluster_fields().begin(), cluster_fields().end(), [&](const auto& x) { return x.key == key; });
    EXPECT_DOUBLE_EQ((z16.*(f.member)).value, (z.*(f.member)).value) << key;
  }
  EXPECT_EQ(z16.tiers[0].num_nodes() * z16.chips_per_node(), 2048);
  EXPECT_EQ(z16.tiers[1].num_nodes() / z16.tiers[0].num_nodes(), 7);
  EXPECT_EQ(z16.num_domains(0), 5);
  EXPECT_EQ(z16.num_domains(1), 1);
  ASSERT_EQ(z16.num_tiers(), z.num_tiers());
  for (int i = 0; i < z.num_tiers(); ++i) {
    EXPECT_DOUBLE_EQ(z16.tiers[i].oversubscription.value, z.tiers[i].oversubscription.value);
    EXPECT_DOUBLE_EQ(z16.tiers[i].latency.value, z.tiers[i].latency.value);
  }
  EXPECT_EQ(load_cluster("a800-10k").node.chip.name, "a800");
  EXPECT_EQ(load_cluster("h20-10k").node.chip.name, "h20");

  const ClusterSpec s = load_cluster("a100-selene");
  EXPECT_EQ(s.num_chips(), 4480);
  EXPECT_GE(s.num_chips(), 3072);  // the largest Megatron-LM SC'21 run
  EXPECT_DOUBLE_EQ(s.nic_bandwidth.value, 25e9);  // 200 Gb/s HDR
  EXPECT_EQ(s.num_tiers(), 3);
  EXPECT_EQ(s.tiers[0].num_nodes(), 20);  // a scalable unit

  const ClusterSpec m = load_cluster("h100-24k");
  EXPECT_EQ(m.num_chips(), 24576);
  EXPECT_FALSE(m.rail_optimized);
  EXPECT_EQ(m.tiers[1].num_nodes() * m.chips_per_node(), 3072);  // a pod
  EXPECT_DOUBLE_EQ(m.tiers[1].oversubscription.value, 7.0);      // 1:7 between pods

  const ClusterSpec d = load_cluster("h800-2k");
  EXPECT_EQ(d.num_chips(), 2048);
  EXPECT_EQ(d.num_tiers(), 2);
  EXPECT_EQ(d.node.chip.name, "h800");
}

TEST(ClusterSpec, TierHelpers) {
  const ClusterSpec m = load_cluster("h100-24k");  // rack 2, pod 384 at 7:1, aggregation 3072
  EXPECT_EQ(m.common_tier(5, 5), -1);
  EXPECT_EQ(m.common_tier(0, 1), 0);
  EXPECT_EQ(m.common_tier(1, 2), 1);
  EXPECT_EQ(m.common_tier(383, 384), 2);
  EXPECT_EQ(m.common_tier(0, 3071), 2);
  EXPECT_EQ(m.num_domains(0), 1536);
  EXPECT_EQ(m.num_domains(1), 8);
  EXPECT_EQ(m.num_domains(2), 1);
  EXPECT_DOUBLE_EQ(m.bandwidth_leaving_bytes_per_s(0), 400e9);      // non-blocking inside a pod
  EXPECT_DOUBLE_EQ(m.bandwidth_leaving_bytes_per_s(1), 400e9 / 7);  // 1:7 out of a pod
  const double nic = m.nic_latency.value, l0 = m.tiers[0].latency.value, l1 = m.tiers[1].latency.value,
               l2 = m.tiers[2].latency.value;
  EXPECT_DOUBLE_EQ(m.path_latency_s(0), nic);
  EXPECT_DOUBLE_EQ(m.path_latency_s(1), nic + l0 + l1);
  EXPECT_DOUBLE_EQ(m.path_latency_s(2), nic + l0 + 2 * l1 + l2);
  // The top tier may be larger than the cluster: its last domain is part full.
  const ClusterSpec z = load_cluster("zhenwu-10k");
  EXPECT_GT(z.tiers.back().num_nodes(), z.num_nodes());
  EXPECT_EQ(z.common_tier(0, 1279), 1);
  EXPECT_EQ(z.common_tier(0, 127), 0);
}

TEST(ClusterSpec, UserFileWorksLikeAPreset) {
  auto j = json::parse(*builtin_preset("clusters", "zhenwu-10k"));
  j["name"] = "my-cluster";
  j["nodes"]["value"] = 256;
  const std::string path = test::temp_path("my-cluster.json");
  std::ofstream(path) << j.dump(2);
  const ClusterSpec c = load_cluster(path);
  EXPECT_EQ(c.name, "my-cluster");
  EXPECT_EQ(c.num_chips(), 2048);
  EXPECT_EQ(c.file, path);
}

// A valid two-tier cluster of 8 nodes, `edit` applied to its JSON before parsing.
ClusterSpec parse_edited(const std::function<void(json&)>& edit) {
  auto q = [](double v, const char* u) { return json{{"value", v}, {"unit", u}, {"assumed", "test"}}; };
  json j = {{"name", "t"},
            {"display_name", "T"},
            {"node", "zhenwu-8"},
            {"rail_optimized", true},
            {"nodes", q(8, "count")},
            {"nics_per_node", q(8, "count")},
            {"nic_bandwidth", q(400, "Gb/s")},
            {"nic_latency", q(3, "us")},
            {"nic_efficiency", q(0.9, "fraction")},
            {"node_power", q(3, "kW")},
            {"pue", q(1.2, "ratio")},
            {"tiers", json::array({json{{"name", "leaf"}, {"nodes", q(4, "count")}, {"oversubscription", q(2, "ratio")},
                                        {"latency", q(0.5, "us")}},
                                   json{{"name", "spine"}, {"nodes", q(8, "count")}, {"oversubscription", q(1, "ratio")},
                                        {"latency", q(0.5, "us")}}})}};
  edit(j);
  return parse_cluster(j.dump(), "x.json");
}

TEST(ClusterSpec, MinimalFileParses) {
  const ClusterSpec c = parse_edited([](json&) {});
  EXPECT_EQ(c.num_chips(), 64);
  EXPECT_EQ(c.file, "x.json");
  EXPECT_DOUBLE_EQ(c.bandwidth_leaving_bytes_per_s(0), 8 * 50e9 / 2);
  EXPECT_DOUBLE_EQ(c.pue.value, 1.2);
  // A PUE of 1 and percentages of a fraction are fine.
  EXPECT_DOUBLE_EQ(parse_edited([](json& j) { j["pue"]["value"] = 1; }).pue.value, 1.0);
  EXPECT_DOUBLE_EQ(parse_edited([](json& j) { j["nic_efficiency"] = {{"value", 94}, {"unit", "%"}, {"source", "s"}}; })
                       .nic_efficiency.value,
                   0.94);
}

TEST(ClusterSpec, UnknownPresetListsKnownOnes) {
  test::expect_error([] { load_cluster("zhenwu-100k"); },
                     {"unknown cluster 'zhenwu-100k'", "zhenwu-10k", "a100-selene", "h100-24k", ".json"});
  test::expect_error([] { load_cluster("/nonexistent/c.json"); }, {"/nonexistent/c.json", "cannot open"});
}

TEST(ClusterSpec, NotJsonOrNotAnObject) {
  test::expect_error([] { parse_cluster("{", "x.json"); }, {"x.json", "not valid JSON"});
  test::expect_error([] { parse_cluster("[1]", "x.json"); }, {"x.json", "a cluster file must be a JSON object"});
}

TEST(ClusterSpec, UnknownFieldListsValidOnes) {
  test::expect_error([] { parse_edited([](json& j) { j["racks"] = 3; }); },
                     {"x.json", "unknown field 'racks'", "valid fields", "nics_per_node", "tiers"});
  test::expect_error([] { parse_edited([](json& j) { j["tiers"][0]["radix"] = 40; }); },
                     {"x.json: tiers[0]", "unknown field 'radix'", "oversubscription", "latency"});
}

TEST(ClusterSpec, MissingFieldNamesItAndItsUnits) {
  test::expect_error([] { parse_edited([](json& j) { j.erase("nic_bandwidth"); }); },
                     {"x.json", "missing field 'nic_bandwidth'", "bandwidth", "Gb/s"});
  test::expect_error([] { parse_edited([](json& j) { j.erase("node"); }); }, {"missing field 'node'"});
  test::expect_error([] { parse_edited([](json& j) { j["tiers"][1].erase("latency"); }); },
                     {"x.json: tiers[1]", "missing field 'latency'", "us"});
  test::expect_error([] { parse_edited([](json& j) { j["tiers"][1].erase("name"); }); },
                     {"tiers[1]", "missing field 'name'"});
  test::expect_error([] { parse_edited([](json& j) { j.erase("tiers"); }); }, {"missing field 'tiers'"});
  test::expect_error([] { parse_edited([](json& j) { j.erase("rail_optimized"); }); },
                     {"missing field 'rail_optimized'", "true or false"});
}

TEST(ClusterSpec, BadUnitListsValidOnes) {
  test::expect_error([] { parse_edited([](json& j) { j["nic_bandwidth"]["unit"] = "Gb"; }); },
                     {"x.json", "field 'nic_bandwidth'", "unit 'Gb' is not a bandwidth unit", "Gb/s"});
  test::expect_error([] { parse_edited([](json& j) { j["pue"]["unit"] = "fraction"; }); },
                     {"field 'pue'", "not a ratio unit", "valid: ratio"});
  test::expect_error([] { parse_edited([](json& j) { j["tiers"][0]["latency"]["unit"] = "cycles"; }); },
                     {"field 'tiers[0].latency'", "not a time unit", "us"});
}

TEST(ClusterSpec, RatiosBelowOneAreRejected) {
  test::expect_error([] { parse_edited([](json& j) { j["tiers"][0]["oversubscription"]["value"] = 0.5; }); },
                     {"x.json", "field 'tiers[0].oversubscription'", "0.5 ratio is out of range; valid: 1 to 1000",
                      "ratio >= 1", "non-blocking"});
  test::expect_error([] { parse_edited([](json& j) { j["pue"]["value"] = 0.9; }); },
                     {"field 'pue'", "0.9 ratio is out of range; valid: 1 to 10", "ratio >= 1"});
  test::expect_error([] { parse_edited([](json& j) { j["pue"]["value"] = 0; }); }, {"field 'pue'", "must be positive"});
}

TEST(ClusterSpec, FractionAboveOneIsRejected) {
  test::expect_error([] { parse_edited([](json& j) { j["nic_efficiency"]["value"] = 1.2; }); },
                     {"field 'nic_efficiency'", "at most 1"});
}

TEST(ClusterSpec, NonIntegerCountIsRejected) {
  test::expect_error([] { parse_edited([](json& j) { j["nodes"]["value"] = 7.5; }); },
                     {"field 'nodes'", "7.5", "whole number"});
  test::expect_error([] { parse_edited([](json& j) { j["nics_per_node"]["value"] = 0; }); },
                     {"field 'nics_per_node'", "must be positive"});
  test::expect_error([] { parse_edited([](json& j) { j["tiers"][0]["nodes"]["value"] = 2.5; }); },
                     {"field 'tiers[0].nodes'", "whole number"});
}

TEST(ClusterSpec, MissingSourceIsRejected) {
  test::expect_error([] { parse_edited([](json& j) { j["node_power"].erase("assumed"); }); },
                     {"field 'node_power'", "\"source\"", "\"assumed\""});
}

TEST(ClusterSpec, RailOptimizedMustBeBoolean) {
  test::expect_error([] { parse_edited([](json& j) { j["rail_optimized"] = "yes"; }); },
                     {"field 'rail_optimized'", "true or false", "\"yes\""});
  EXPECT_FALSE(parse_edited([](json& j) { j["rail_optimized"] = false; }).rail_optimized);
}

TEST(ClusterSpec, TiersMustBeANonEmptyListOfObjects) {
  test::expect_error([] { parse_edited([](json& j) { j["tiers"] = json::array(); }); },
                     {"field 'tiers'", "non-empty list", "oversubscription"});
  test::expect_error([] { parse_edited([](json& j) { j["tiers"] = json::object(); }); }, {"field 'tiers'"});
  test::expect_error([] { parse_edited([](json& j) { j["tiers"][0] = 3; }); }, {"tiers[0] must be an object"});
  test::expect_error([] { parse_edited([](json& j) { j["tiers"][1]["name"] = "leaf"; }); },
                     {"tiers[1]", "name 'leaf' is used by an earlier tier"});
}

TEST(ClusterSpec, TierNodesMustNest) {
  // 6 is not a multiple of the leaf's 4.
  test::expect_error([] { parse_edited([](json& j) { j["tiers"][1]["nodes"]["value"] = 6; }); },
                     {"x.json", "field 'tiers[1].nodes'", "tier 'spine' of 6 nodes does not nest tier 'leaf' of 4",
                      "larger multiple", "8"});
  // Equal to the tier below: no larger.
  test::expect_error(
      [] {
        parse_edited([](json& j) {
          j["nodes"]["value"] = 4;
          j["tiers"][1]["nodes"]["value"] = 4;
        });
      },
      {"field 'tiers[1].nodes'", "does not nest"});
}

TEST(ClusterSpec, TopTierMustCoverEveryNode) {
  test::expect_error([] { parse_edited([](json& j) { j["nodes"]["value"] = 16; }); },
                     {"x.json", "field 'tiers[1].nodes'", "top tier 'spine' spans 8 nodes", "cluster has 16",
                      "at least 16"});
}

TEST(ClusterSpec, TopTierMustBeNonBlocking) {
  test::expect_error([] { parse_edited([](json& j) { j["tiers"][1]["oversubscription"]["value"] = 2; }); },
                     {"field 'tiers[1].oversubscription'", "top tier 'spine' has no uplinks", "must be 1"});
}

TEST(ClusterSpec, LowerTierHoldingEveryNodeIsRejected) {
  test::expect_error([] { parse_edited([](json& j) { j["nodes"]["value"] = 4; }); },
                     {"field 'tiers[0].nodes'", "tier 'leaf' already holds all 4 nodes", "remove them"});
}

TEST(ClusterSpec, NodesMustFillLowerTiers) {
  // 6 nodes under a spine of 8: the second leaf (4 nodes) would be half full.
  test::expect_error([] { parse_edited([](json& j) { j["nodes"]["value"] = 6; }); },
                     {"field 'nodes'", "6 nodes do not fill whole 'leaf' domains of 4", "multiple of 4", "4 or 8"});
}

TEST(ClusterSpec, UnknownNodePreset) {
  test::expect_error([] { parse_edited([](json& j) { j["node"] = "dgx-9000"; }); },
                     {"x.json: field 'node'", "unknown node 'dgx-9000'", "zhenwu-8", "h100-dgx"});
}

}  // namespace
}  // namespace ppu
