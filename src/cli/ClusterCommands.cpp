// `ppu clusters` and `ppu clusters show NAME` (see Commands.hpp): the cluster presets as a table, and
// every field of one cluster with its unit and source, its network tiers bottom up.
#include <fmt/format.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "arch/ClusterSpec.hpp"
#include "arch/QuantityJson.hpp"
#include "cli/Commands.hpp"
#include "report/JsonDoc.hpp"
#include "report/Table.hpp"

namespace ppu::cli {

namespace {

using nlohmann::json;

// "7:1", "1.067:1", "1:1".
std::string ratio_text(double r) { return fmt::format("{:.4g}:1", r); }

std::string gbits(double bytes_per_s) { return fmt::format("{:.0f} Gb/s", bytes_per_s * 8 / 1e9); }

// "leaf 20 1:1 > spine 140 1:1 > core 560": nodes per domain, and each non-top tier's uplink ratio.
std::string tiers_text(const ClusterSpec& c) {
  std::string out;
  for (int i = 0; i < c.num_tiers(); ++i) {
    const NetworkTier& t = c.tiers[static_cast<size_t>(i)];
    out += fmt::format("{}{} {}", i ? " > " : "", t.name, t.num_nodes());
    if (i + 1 < c.num_tiers()) out += fmt::format(" {}", ratio_text(t.oversubscription.value));
  }
  return out;
}

void add_field_row(Table& t, const std::string& key, const Quantity& q) {
  const bool assumed = !q.assumed.empty();
  t.add_row({key, q.text, assumed ? "assumed" : "published", assumed ? q.assumed : q.source});
}

}  // namespace

int cmd_clusters_list(bool as_json) {
  json out = json::array();
  Table t({"cluster", "chips", "nodes", "NICs per node", "rails", "tiers: nodes per domain, uplink oversubscription"});
  for (const auto& name : cluster_preset_names()) {
    const ClusterSpec c = load_cluster(name);
    t.add_row({c.name, std::to_string(c.num_chips()), fmt::format("{} x {}", c.num_nodes(), c.node.name),
               fmt::format("{} x {}", static_cast<int>(c.nics_per_node.value), gbits(c.nic_bandwidth.value)),
               c.rail_optimized ? "yes" : "no", tiers_text(c)});
    json tiers = json::array();
    for (const auto& tr : c.tiers)
      tiers.push_back({{"name", tr.name}, {"nodes", tr.num_nodes()}, {"oversubscription", tr.oversubscription.value},
                       {"latency_s", tr.latency.value}});
    out.push_back({{"cluster", c.name},
                   {"display_name", c.display_name},
                   {"node", c.node.name},
                   {"chip", c.node.chip.name},
                   {"nodes", c.num_nodes()},
                   {"chips", c.num_chips()},
                   {"nics_per_node", static_cast<int>(c.nics_per_node.value)},
                   {"nic_bandwidth_bytes_per_s", c.nic_bandwidth.value},
                   {"rail_optimized", c.rail_optimized},
                   {"tiers", tiers}});
  }
  if (as_json) print_json_document("clusters", out);
  else std::cout << t.render() << "\n'ppu clusters show NAME' prints every field with its unit and source.\n";
  return 0;
}

int cmd_clusters_show(const std::string& name_or_path, bool as_json) {
  const ClusterSpec c = load_cluster(name_or_path);
  json fields = json::object();
  Table t({"field", "value", "basis", "source or reason"});
  t.set_max_width(3, kShowTextWidth);
  for (const auto& f : cluster_fields()) {
    const Quantity& q = c.*(f.member);
    add_field_row(t, std::string(f.key), q);
    fields[std::string(f.key)] = quantity_record(q);
  }
  // Each tier: its domain, and what a node gets and waits for when its traffic has to cross it.
  Table g({"tier", "nodes per domain", "chips per domain", "domains", "uplink oversubscription",
           "per node leaving a domain", "NIC to NIC via this tier"});
  json tiers = json::array();
  for (int i = 0; i < c.num_tiers(); ++i) {
    const NetworkTier& tr = c.tiers[static_cast<size_t>(i)];
    const bool top = i + 1 == c.num_tiers();
    const double leaving = top ? 0.0 : c.bandwidth_leaving_bytes_per_s(i);
    g.add_row({tr.name, std::to_string(tr.num_nodes()), std::to_string(int64_t{tr.num_nodes()} * c.chips_per_node()),
               std::to_string(c.num_domains(i)), top ? "- (top)" : ratio_text(tr.oversubscription.value),
               top ? "-" : gbits(leaving), fmt::format("{:.2f} us", c.path_latency_s(i) * 1e6)});
    json tf = json::object();
    for (const auto& f : tier_fields()) {
      const Quantity& q = tr.*(f.member);
      add_field_row(t, fmt::format("tiers[{}].{} ({})", i, f.key, tr.name), q);
      tf[std::string(f.key)] = quantity_record(q);
    }
    tiers.push_back({{"name", tr.name},
                     {"notes", json_text_or_null(tr.notes)},
                     {"fields", tf},
                     {"domains", c.num_domains(i)},
                     {"chips_per_domain", int64_t{tr.num_nodes()} * c.chips_per_node()},
                     {"bandwidth_leaving_bytes_per_s", top ? json() : json(leaving)},
                     {"path_latency_s", c.path_latency_s(i)}});
  }
  if (as_json) {
    const json cluster = {{"cluster", c.name},      {"display_name", c.display_name}, {"file", json_text_or_null(c.file)},
                          {"node", c.node.name},    {"chip", c.node.chip.name},       {"nodes", c.num_nodes()},
                          {"chips", c.num_chips()}, {"chips_per_node", c.chips_per_node()},
                          {"rail_optimized", c.rail_optimized}, {"notes", json_text_or_null(c.notes)},
                          {"fields", fields},       {"tiers", tiers}};
    print_json_document("clusters show", json::array({cluster}));
    return 0;
  }
  std::cout << wrap_text(fmt::format("{} ({}: {} x {} = {} x {})", c.display_name, c.name, c.num_nodes(), c.node.name,
                                     c.num_chips(), c.node.chip.name))
            << fmt::format("from {}\n", c.file);
  std::cout << wrap_text(c.notes) << fmt::format("\nScale-out per node: {} x {} = {} per direction; {}\n\n", static_cast<int>(c.nics_per_node.value),
                           gbits(c.nic_bandwidth.value), gbits(c.node_bandwidth_bytes_per_s()),
                           c.rail_optimized ? "rail-optimised (NIC k of every node on rail k's tier-0 switches)"
                                            : "not rail-optimised (all of a node's NICs on one tier-0 switch)")
            << t.render() << "\nNetwork tiers, bottom up (bandwidth at line rate when every node of a domain sends "
            << "out of it at once; latency NIC to NIC through the tier)\n\n"
            << g.render();
  for (const auto& tr : c.tiers)
    if (!tr.notes.empty()) std::cout << wrap_text(fmt::format("{}: {}", tr.name, tr.notes), "  ");
  return 0;
}

}  // namespace ppu::cli
