#include "arch/ClusterSpec.hpp"

#include <fmt/format.h>

#include <iterator>
#include <nlohmann/json.hpp>
#include <set>

#include "arch/Error.hpp"
#include "arch/Presets.hpp"
#include "arch/QuantityJson.hpp"

namespace ppu {

using json = nlohmann::json;

namespace {

const char* const kMetaKeys[] = {"name", "display_name", "notes", "node", "rail_optimized", "tiers"};
const char* const kTierMetaKeys[] = {"name", "notes"};

template <class Fields>
std::string key_list(const char* const* meta, size_t n_meta, const Fields& fields) {
  std::string out;
  for (size_t i = 0; i < n_meta; ++i) out += fmt::format("{}{}", out.empty() ? "" : ", ", meta[i]);
  for (const auto& f : fields) out += fmt::format(", {}", f.key);
  return out;
}

template <class Fields>
void reject_unknown_keys(const json& j, const char* const* meta, size_t n_meta, const Fields& fields,
                         const std::string& where) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    bool known = false;
    for (size_t i = 0; i < n_meta; ++i) known = known || it.key() == meta[i];
    for (const auto& f : fields) known = known || it.key() == f.key;
    if (!known)
      throw UserError(fmt::format("{}: unknown field '{}'; valid fields: {}", where, it.key(),
                                  key_list(meta, n_meta, fields)));
  }
}

std::string missing(std::string_view where, std::string_view key, std::string_view description, Dimension dim) {
  return fmt::format("{}: missing field '{}' ({}, in {} units such as {})", where, key, description,
                     dimension_name(dim), valid_units(dim));
}

NetworkTier parse_tier(const json& t, size_t i, std::string_view origin) {
  const std::string where = fmt::format("{}: tiers[{}]", origin, i);
  if (!t.is_object())
    throw UserError(fmt::format("{} must be an object with name, nodes, oversubscription and latency; got {}", where,
                                t.dump()));
  reject_unknown_keys(t, kTierMetaKeys, std::size(kTierMetaKeys), tier_fields(), where);
  NetworkTier tier;
  if (!t.contains("name")) throw UserError(fmt::format("{}: missing field 'name' (a string, e.g. \"leaf\")", where));
  if (!t.at("name").is_string() || t.at("name").get<std::string>().empty())
    throw UserError(fmt::format("{}: field 'name' must be a non-empty string", where));
  tier.name = t.at("name").get<std::string>();
  if (t.contains("notes")) {
    if (!t.at("notes").is_string() || t.at("notes").get<std::string>().empty())
      throw UserError(fmt::format("{}: field 'notes' must be a non-empty string", where));
    tier.notes = t.at("notes").get<std::string>();
  }
  for (const auto& f : tier_fields()) {
    const std::string key = fmt::format("tiers[{}].{}", i, f.key);
    if (!t.contains(std::string(f.key))) throw UserError(missing(where, f.key, f.description, f.dim));
    tier.*(f.member) = parse_quantity(t.at(std::string(f.key)), key, f.dim, origin, &f.range);
  }
  return tier;
}

// The structural rules of ClusterSpec.hpp, in the order documented in docs/clusters.md.
void check_tiers(const ClusterSpec& c, std::string_view origin) {
  std::set<std::string> names;
  for (size_t i = 0; i < c.tiers.size(); ++i) {
    const NetworkTier& t = c.tiers[i];
    if (!names.insert(t.name).second)
      throw UserError(fmt::format("{}: tiers[{}]: name '{}' is used by an earlier tier; give each tier its own name",
                                  origin, i, t.name));
    if (i == 0) continue;
    const NetworkTier& below = c.tiers[i - 1];
    if (t.num_nodes() <= below.num_nodes() || t.num_nodes() % below.num_nodes() != 0)
      throw UserError(fmt::format(
          "{}: field 'tiers[{}].nodes': tier '{}' of {} nodes does not nest tier '{}' of {} nodes; a tier's domain must "
          "be a larger multiple of the one below (e.g. {} or {})",
          origin, i, t.name, t.num_nodes(), below.name, below.num_nodes(), 2 * below.num_nodes(),
          4 * below.num_nodes()));
  }
  const size_t top = c.tiers.size() - 1;
  const NetworkTier& tt = c.tiers[top];
  if (tt.oversubscription.value != 1.0)
    throw UserError(fmt::format("{}: field 'tiers[{}].oversubscription': the top tier '{}' has no uplinks, so its "
                                "oversubscription must be 1, not {:g}",
                                origin, top, tt.name, tt.oversubscription.value));
  const int n = c.num_nodes();
  if (tt.num_nodes() < n)
    throw UserError(fmt::format("{}: field 'tiers[{}].nodes': the top tier '{}' spans {} nodes, but the cluster has {} "
                                "(field 'nodes'); the top tier's domain must hold every node: give it at least {} or "
                                "add a tier above it",
                                origin, top, tt.name, tt.num_nodes(), n, n));
  for (size_t i = 0; i < top; ++i) {
    const NetworkTier& t = c.tiers[i];
    if (t.num_nodes() >= n)
      throw UserError(fmt::format("{}: field 'tiers[{}].nodes': tier '{}' already holds all {} nodes, so the tiers "
                                  "above it would carry no traffic; remove them or make '{}' smaller",
                                  origin, i, t.name, n, t.name));
    if (n % t.num_nodes() != 0)
      throw UserError(fmt::format("{}: field 'nodes': {} nodes do not fill whole '{}' domains of {} nodes; every tier "
                                  "below the top must be filled: use a multiple of {} (e.g. {} or {})",
                                  origin, n, t.name, t.num_nodes(), t.num_nodes(), n / t.num_nodes() * t.num_nodes(),
                                  (n / t.num_nodes() + 1) * t.num_nodes()));
  }
}

// The ranges of the cluster-only fields (the shared ones are in QuantityJson.hpp); docs/presets.md, "Valid
// ranges".
constexpr ValueRange kClusterNodesRange{1, 1e6, "the largest training clusters have tens of thousands"};
constexpr ValueRange kClusterNicsPerNodeRange{1, 64, "today's GPU servers have 8"};
constexpr ValueRange kClusterNodePowerRange{1, 1e7, "per node beyond its chips; today's servers draw about 5 kW"};
constexpr ValueRange kClusterPueRange{1, 10, "facility power / IT power, a ratio >= 1: 1 = no facility overhead"};
constexpr ValueRange kTierNodesRange{1, 1e6, "nodes in one domain, at most a cluster's million"};
constexpr ValueRange kTierOversubscriptionRange{1, 1000, "bandwidth in / bandwidth up, a ratio >= 1: 1 = non-blocking"};

}  // namespace

const std::vector<ClusterFieldInfo>& cluster_fields() {
  static const std::vector<ClusterFieldInfo> fields = {
      {"nodes", Dimension::kCount, "nodes in the cluster", &ClusterSpec::nodes, kClusterNodesRange},
      {"nics_per_node", Dimension::kCount, "scale-out NICs per node (rails)", &ClusterSpec::nics_per_node,
       kClusterNicsPerNodeRange},
      {"nic_bandwidth", Dimension::kBandwidth, "line rate per NIC per direction", &ClusterSpec::nic_bandwidth,
       kBandwidthRange},
      {"nic_latency", Dimension::kTime, "NIC to NIC through one tier-0 switch, software to software",
       &ClusterSpec::nic_latency, kLatencyRange},
      {"nic_efficiency", Dimension::kFraction, "fraction of the NIC line rate a collective's payload gets",
       &ClusterSpec::nic_efficiency, kEfficiencyRange},
      {"node_power", Dimension::kPower,
       "power per node beyond its chips (CPUs, memory, NICs, fans, its share of the network switches)",
       &ClusterSpec::node_power, kClusterNodePowerRange},
      {"pue", Dimension::kRatio, "power usage effectiveness: facility power / IT power, >= 1", &ClusterSpec::pue,
       kClusterPueRange},
  };
  return fields;
}

const std::vector<TierFieldInfo>& tier_fields() {
  static const std::vector<TierFieldInfo> fields = {
      {"nodes", Dimension::kCount, "nodes in one domain of this tier", &NetworkTier::nodes, kTierNodesRange},
      {"oversubscription", Dimension::kRatio,
       "bandwidth into a switch of this tier from below / bandwidth up to the next tier; 1 = non-blocking, 1 at the "
       "top",
       &NetworkTier::oversubscription, kTierOversubscriptionRange},
      {"latency", Dimension::kTime, "added by a hop through a switch of this tier", &NetworkTier::latency,
       kLatencyRange},
  };
  return fields;
}

int ClusterSpec::num_domains(int tier) const {
  const int per = tiers[static_cast<size_t>(tier)].num_nodes();
  return (num_nodes() + per - 1) / per;
}

int ClusterSpec::common_tier(int a, int b) const {
  if (a == b) return -1;
  for (int i = 0; i < num_tiers(); ++i) {
    const int per = tiers[static_cast<size_t>(i)].num_nodes();
    if (a / per == b / per) return i;
  }
  PPU_CHECK(false, fmt::format("nodes {} and {} share no tier of cluster '{}'", a, b, name));
  return num_tiers() - 1;
}

double ClusterSpec::bandwidth_leaving_bytes_per_s(int tier) const {
  PPU_CHECK(tier >= 0 && tier < num_tiers() - 1, fmt::format("no traffic leaves tier {} of '{}'", tier, name));
  double bw = node_bandwidth_bytes_per_s();
  for (int i = 0; i <= tier; ++i) bw /= tiers[static_cast<size_t>(i)].oversubscription.value;
  return bw;
}

double ClusterSpec::path_latency_s(int tier) const {
  PPU_CHECK(tier >= 0 && tier < num_tiers(), fmt::format("tier {} out of range for '{}'", tier, name));
  double s = nic_latency.value;
  if (tier == 0) return s;
  s += tiers[0].latency.value;
  for (int i = 1; i < tier; ++i) s += 2 * tiers[static_cast<size_t>(i)].latency.value;
  return s + tiers[static_cast<size_t>(tier)].latency.value;
}

ClusterSpec parse_cluster(std::string_view text, std::string_view origin) {
  const json j = parse_preset_object(text, origin, "cluster");
  ClusterSpec c;
  c.file = std::string(origin);
  auto meta = [&](const char* key, bool required) { return preset_string(j, key, required, origin); };
  c.name = meta("name", true);
  c.display_name = meta("display_name", true);
  c.notes = meta("notes", false);
  c.node_name = meta("node", true);
  reject_unknown_keys(j, kMetaKeys, std::size(kMetaKeys), cluster_fields(), std::string(origin));
  for (const auto& f : cluster_fields()) {
    if (!j.contains(std::string(f.key))) throw UserError(missing(origin, f.key, f.description, f.dim));
    c.*(f.member) = parse_quantity(j.at(std::string(f.key)), f.key, f.dim, origin, &f.range);
  }

  if (!j.contains("rail_optimized"))
    throw UserError(fmt::format("{}: missing field 'rail_optimized' (true or false: whether NIC k of every node goes "
                                "to the tier-0 switches of rail k)",
                                origin));
  if (!j.at("rail_optimized").is_boolean())
    throw UserError(fmt::format("{}: field 'rail_optimized' must be true or false, not {}", origin,
                                j.at("rail_optimized").dump()));
  c.rail_optimized = j.at("rail_optimized").get<bool>();

  if (!j.contains("tiers"))
    throw UserError(fmt::format("{}: missing field 'tiers' (the network's switch tiers bottom up, a list of objects "
                                "with name, nodes, oversubscription and latency)",
                                origin));
  const json& tiers = j.at("tiers");
  if (!tiers.is_array() || tiers.empty())
    throw UserError(fmt::format("{}: field 'tiers' must be a non-empty list of tiers (bottom up), each an object with "
                                "name, nodes, oversubscription and latency",
                                origin));
  for (size_t i = 0; i < tiers.size(); ++i) c.tiers.push_back(parse_tier(tiers[i], i, origin));
  check_tiers(c, origin);

  try {
    c.node = load_node(c.node_name);
  } catch (const UserError& e) {
    throw UserError(fmt::format("{}: field 'node': {}", origin, e.what()));
  }
  return c;
}

std::vector<std::string> cluster_preset_names() { return builtin_preset_names("clusters"); }

ClusterSpec load_cluster(std::string_view name_or_path) {
  const PresetText p = preset_text("clusters", "cluster", name_or_path);
  return parse_cluster(p.text, p.origin);
}

}  // namespace ppu
