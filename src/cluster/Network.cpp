// The parts of the network models both share: names, checks of clusters and requests, where groups
// sit, node-level traffic helpers, the node's own collectives (ccl, cached) and the cost assembly
// (algorithms, protocols, latencies). See cluster/NetworkInternal.hpp and docs/network.md.
#include <fmt/format.h>

#include "arch/NameTable.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <set>

#include "arch/Error.hpp"
#include "ccl/Communicator.hpp"
#include "cluster/NetworkInternal.hpp"
#include "runtime/Device.hpp"

namespace ppu::cluster {

const char* network_kind_name(NetworkKind k) {
  const auto i = static_cast<size_t>(k);
  return i < kNetworkKindNames.size() ? kNetworkKindNames[i].data() : "?";
}
std::optional<NetworkKind> network_kind_from_name(std::string_view s) {
  return find_name<NetworkKind>(kNetworkKindNames, s);
}

std::unique_ptr<NetworkModel> make_network(const ClusterSpec& cluster, NetworkKind kind) {
  detail::check_cluster(cluster);
  switch (kind) {
    case NetworkKind::kAnalytical: return detail::make_analytical(cluster);
    case NetworkKind::kFlow: return detail::make_flow(cluster);
    default:
      throw UserError(fmt::format("network kind {} is not a network model; valid: {}", static_cast<int>(kind),
                                  join_names(kNetworkKindNames)));
  }
}

namespace detail {

namespace {

int64_t domain_nodes(const ClusterSpec& c, int tier) { return static_cast<int64_t>(c.tiers[static_cast<size_t>(tier)].nodes.value); }
int num_tiers(const ClusterSpec& c) { return static_cast<int>(c.tiers.size()); }
double nic_payload(const ClusterSpec& c) { return c.nic_bandwidth.value * c.nic_efficiency.value; }
int nics(const ClusterSpec& c) { return static_cast<int>(c.nics_per_node.value); }

std::string chip_list(const std::vector<int>& chips) {
  std::string out;
  for (int ch : chips) out += fmt::format("{}{}", out.empty() ? "" : ",", ch);
  return out;
}

std::string ms(double s) { return s >= 1e-3 ? fmt::format("{:.3g} ms", s * 1e3) : fmt::format("{:.3g} us", s * 1e6); }

}  // namespace

void check_cluster(const ClusterSpec& c) {
  const std::string who = fmt::format("cluster '{}'", c.name);
  if (c.nodes.value < 1 || c.nodes.value != std::floor(c.nodes.value))
    throw UserError(fmt::format("{}: nodes {} must be a whole number >= 1", who, c.nodes.value));
  if (c.node.num_chips() < 1) throw UserError(fmt::format("{}: node '{}' has no chips", who, c.node.name));
  if (c.nics_per_node.value < 1 || c.nics_per_node.value != std::floor(c.nics_per_node.value))
    throw UserError(fmt::format("{}: nics_per_node {} must be a whole number >= 1", who, c.nics_per_node.value));
  // Rates and latencies the network models divide by and add: a zero, denormal or infinite one would
  // leave a transfer unable to finish (issue 17: every simulation loop ends or names its input).
  if (!(std::isnormal(c.nic_bandwidth.value) && c.nic_bandwidth.value > 0))
    throw UserError(
        fmt::format("{}: nic_bandwidth {} must be > 0 B/s and finite (not denormal)", who, c.nic_bandwidth.value));
  if (!(c.nic_efficiency.value > 0 && c.nic_efficiency.value <= 1))
    throw UserError(fmt::format("{}: nic_efficiency {} must be in (0, 1]", who, c.nic_efficiency.value));
  if (!(c.nic_latency.value >= 0 && std::isfinite(c.nic_latency.value)))
    throw UserError(fmt::format("{}: nic_latency {} must be >= 0 s and finite", who, c.nic_latency.value));
  if (c.tiers.empty()) throw UserError(fmt::format("{}: tiers is empty; at least one tier (the NICs' switches) is needed", who));
  int64_t below = 1;
  for (size_t i = 0; i < c.tiers.size(); ++i) {
    const NetworkTier& t = c.tiers[i];
    const std::string tw = fmt::format("{}: tier {} ('{}')", who, i, t.name);
    if (t.nodes.value < 1 || t.nodes.value != std::floor(t.nodes.value))
      throw UserError(fmt::format("{}: nodes {} must be a whole number >= 1", tw, t.nodes.value));
    const auto d = static_cast<int64_t>(t.nodes.value);
    if (d % below != 0)
      throw UserError(fmt::format("{}: nodes {} is not a multiple of the tier below's {}; domains must nest", tw, d, below));
    if (!(t.oversubscription.value >= 1 && std::isfinite(t.oversubscription.value)))
      throw UserError(fmt::format("{}: oversubscription {} must be >= 1 (1 = non-blocking) and finite", tw,
                                  t.oversubscription.value));
    if (!(t.latency.value >= 0 && std::isfinite(t.latency.value)))
      throw UserError(fmt::format("{}: latency {} must be >= 0 s and finite", tw, t.latency.value));
    below = d;
  }
  if (below < c.num_nodes())
    throw UserError(fmt::format("{}: the top tier '{}' holds {} nodes but the cluster has {}; the top tier's domain must "
                                "hold every node",
                                who, c.tiers.back().name, below, c.num_nodes()));
}

Layout layout_of(const ClusterSpec& c, const CollectiveRequest& r) {
  const int64_t chips = c.num_chips();
  const int C = c.chips_per_node();
  if (std::find(kNetworkCollectives.begin(), kNetworkCollectives.end(), r.collective) == kNetworkCollectives.end()) {
    std::string valid;
    for (ccl::Collective v : kNetworkCollectives)
      valid += fmt::format("{}{}", valid.empty() ? "" : ", ", ccl::collective_name(v));
    const auto i = static_cast<size_t>(r.collective);
    const std::string what = i < ccl::kCollectiveNames.size()
                                 ? fmt::format("'{}' is not one the network models time", ccl::collective_name(r.collective))
                                 : fmt::format("{} is not a collective", i);
    throw UserError(fmt::format("request collective {}; valid: {}", what, valid));
  }
  if (!std::isfinite(r.bytes) || r.bytes < 0)
    throw UserError(fmt::format("request bytes {} is not valid; valid: a finite number of bytes per rank >= 0", r.bytes));
  if (r.group_size < 1) throw UserError(fmt::format("request group_size {} is not valid; valid: 1 .. {}", r.group_size, chips));
  if (r.stride < 1) throw UserError(fmt::format("request stride {} is not valid; valid: >= 1", r.stride));
  if (r.total_ranks < 0 || r.total_ranks > chips)
    throw UserError(fmt::format("request total_ranks {} is not valid; valid: 0 (the whole cluster) .. {} (cluster '{}' "
                                "has {} chips)",
                                r.total_ranks, chips, c.name, chips));
  Layout l;
  l.group_size = r.group_size;
  l.stride = r.stride;
  l.total_ranks = r.total_ranks == 0 ? chips : r.total_ranks;
  l.chips_per_node = C;
  const int64_t G = r.group_size, s = r.stride, T = l.total_ranks;
  if (G > T)
    throw UserError(fmt::format("request group_size {} is larger than total_ranks {}; valid: group_size <= total_ranks", G, T));
  if (s > T / G || T % (s * G) != 0)
    throw UserError(fmt::format("request total_ranks {} is not a multiple of stride {} x group_size {} = {}; valid: "
                                "total_ranks a multiple of {}",
                                T, s, G, s * G, s * G));
  if (G == 1 || (s * G <= C && C % (s * G) == 0)) {  // every group inside one node
    l.in_node = true;
    l.k = static_cast<int>(G);
    for (int64_t i = 0; i < G; ++i) l.chips.push_back(static_cast<int>(i * s));
    return l;
  }
  l.in_node = false;
  if (s % C == 0) {  // one member per node
    l.k = 1;
    l.node_stride = s / C;
  } else if (s < C && C % s == 0 && G % (C / s) == 0) {  // whole nodes
    l.k = static_cast<int>(C / s);
    l.node_stride = 1;
  } else {
    throw UserError(fmt::format(
        "request group_size {} at stride {} does not sit evenly on {}-chip nodes; valid: stride x group_size dividing {} "
        "(groups inside a node), stride a multiple of {} (one member per node), or stride dividing {} with group_size a "
        "multiple of {} / stride (whole nodes)",
        G, s, C, C, C, C, C));
  }
  l.nodes_per_group = static_cast<int>(G / l.k);
  l.nodes_used = T / C;
  for (int j = 0; j < l.k; ++j) l.chips.push_back(static_cast<int>(j * s));
  return l;
}

std::vector<int> binary_tree_parents(int n) {
  std::vector<int> parent(static_cast<size_t>(std::max(n, 0)), -1);
  // In-order balanced tree: the middle of a range is the root of its subtrees, so every subtree is a
  // contiguous range of nodes (NCCL's trees are laid out the same way, keeping subtrees local).
  struct Range {
    int lo, hi, up;
  };
  std::vector<Range> todo;
  if (n > 0) todo.push_back({0, n - 1, -1});
  while (!todo.empty()) {
    const Range rg = todo.back();
    todo.pop_back();
    if (rg.lo > rg.hi) continue;
    const int mid = rg.lo + (rg.hi - rg.lo) / 2;
    parent[static_cast<size_t>(mid)] = rg.up;
    todo.push_back({rg.lo, mid - 1, mid});
    todo.push_back({mid + 1, rg.hi, mid});
  }
  return parent;
}

namespace {
// Most tree edges at one position over the two trees (the second shifted by one position).
int tree_max_degree(int n) {
  const auto parent = binary_tree_parents(n);
  std::vector<int> degree(static_cast<size_t>(n), 0);
  for (int tree = 0; tree < 2; ++tree)
    for (int p = 0; p < n; ++p)
      if (parent[static_cast<size_t>(p)] >= 0) {
        ++degree[static_cast<size_t>((p + tree) % n)];
        ++degree[static_cast<size_t>((parent[static_cast<size_t>(p)] + tree) % n)];
      }
  return *std::max_element(degree.begin(), degree.end());
}

// Edges from the root to the deepest leaf of binary_tree_parents(n): floor(log2 n).
int tree_depth(int n) {
  int depth = 0;
  while ((int64_t{2} << depth) <= n) ++depth;
  return depth;
}
}  // namespace

int64_t window_nodes(const ClusterSpec& c, const Traffic& t) {
  const int64_t block = t.node_stride * t.nodes_per_group;
  for (int j = 0; j < num_tiers(c); ++j) {
    const int64_t d = domain_nodes(c, j);
    if (d % block == 0 && t.nodes_used % d == 0) return d;
  }
  return t.nodes_used;
}

double uplink_capacity(const ClusterSpec& c, int tier, int busy_rails) {
  double over = 1;
  for (int m = 0; m <= tier; ++m) over *= c.tiers[static_cast<size_t>(m)].oversubscription.value;
  const double total = static_cast<double>(domain_nodes(c, tier)) * nics(c) * nic_payload(c) / over;
  // A rail-optimised tier-0 switch serves one rail; every other switch is shared by all rails, and
  // ECMP spreads the busy rails' traffic over its uplinks.
  if (tier == 0 && c.rail_optimized) return total / nics(c);
  return total / busy_rails;
}

int shared_tier(const ClusterSpec& c, int64_t a, int64_t b) {
  if (a == b) return -1;
  for (int j = 0; j < num_tiers(c); ++j)
    if (a / domain_nodes(c, j) == b / domain_nodes(c, j)) return j;
  return num_tiers(c) - 1;
}

double hop_latency(const ClusterSpec& c, int64_t a, int64_t b) {
  const int j = shared_tier(c, a, b);
  double lat = c.nic_latency.value;
  if (j >= 1) {
    lat += c.tiers[0].latency.value + c.tiers[static_cast<size_t>(j)].latency.value;
    for (int m = 1; m < j; ++m) lat += 2 * c.tiers[static_cast<size_t>(m)].latency.value;
  }
  return lat;
}

// --- NodeCollectives --------------------------------------------------------------------------------

namespace {
constexpr DType kDType = DType::kBF16;  // 2-byte elements, as gradients and activations travel

// How the reports ("how") name a collective: the spelling they have always printed ("all_reduce"),
// not ccl's names ("allreduce"), so that reports and docs keep their text.
constexpr std::array<std::string_view, static_cast<size_t>(ccl::Collective::kCount)> kReportNames = {
    "all_reduce", "reduce_scatter", "all_gather", "broadcast", "reduce", "all_to_all", "all_to_all_v", "send_recv"};
static_assert(kReportNames.size() == static_cast<size_t>(ccl::Collective::kCount));
std::string_view report_name(ccl::Collective c) { return kReportNames[static_cast<size_t>(c)]; }
}  // namespace

NodeCollectives::NodeCollectives(NodeSpec node) : node_(std::move(node)) {}
NodeCollectives::~NodeCollectives() = default;

NodeCollectives::Timing NodeCollectives::time(ccl::Collective kind, const std::vector<int>& chips, double bytes, bool ring) {
  return cached(kind, chips, {}, bytes, ring);
}

NodeCollectives::Timing NodeCollectives::send_recv(const std::vector<std::pair<int, int>>& chip_pairs, double bytes) {
  return cached(ccl::Collective::kSendRecv, {}, chip_pairs, bytes, false);
}

NodeCollectives::Timing NodeCollectives::cached(ccl::Collective kind, const std::vector<int>& chips,
                                                const std::vector<std::pair<int, int>>& pairs, double bytes, bool ring) {
  constexpr double cap = static_cast<double>(ccl::kSimulateUpToBytes);
  if (bytes > cap) {
    const Timing hi = cached(kind, chips, pairs, cap, ring);
    const Timing lo = cached(kind, chips, pairs, cap / 2, ring);
    const double slope = (hi.seconds - lo.seconds) / (cap / 2);
    return {hi.seconds + (bytes - cap) * slope, fmt::format("{} (extrapolated from {} and {} MB)", hi.how,
                                                            ccl::kSimulateUpToBytes >> 21, ccl::kSimulateUpToBytes >> 20)};
  }
  const auto key = std::make_tuple(static_cast<int>(kind), chips, pairs, bytes, ring);
  auto it = cache_.find(key);
  if (it != cache_.end()) return it->second;
  return cache_[key] = simulate(kind, chips, pairs, bytes, ring);
}

NodeCollectives::Timing NodeCollectives::simulate(ccl::Collective kind, const std::vector<int>& chips_in,
                                                  const std::vector<std::pair<int, int>>& pairs, double bytes, bool ring) {
  const int C = node_.num_chips();
  // Send/recv: one rank per chip of the node, rank r on chip r.
  std::vector<int> chips = chips_in;
  if (kind == ccl::Collective::kSendRecv) {
    chips.clear();
    for (int ch = 0; ch < C; ++ch) chips.push_back(ch);
  }
  const int n = static_cast<int>(chips.size());
  PPU_CHECK(n >= 1 && n <= C, "node collective over an impossible number of ranks");
  while (static_cast<int>(devices_.size()) < C) devices_.push_back(std::make_unique<Device>(node_.chip, ExecMode::kTimingOnly));
  auto& comm = comms_[chips];
  if (!comm) {
    std::vector<Device*> ptrs;
    for (int r = 0; r < n; ++r) ptrs.push_back(devices_[static_cast<size_t>(r)].get());
    ccl::CommOptions o;
    o.chips = chips;
    comm = std::make_unique<ccl::Communicator>(node_, ptrs, o);
  }
  const int64_t es = dtype_size_bytes(kDType);
  const int64_t count = std::max<int64_t>(1, std::llround(bytes / static_cast<double>(es)));
  const int64_t per = std::max<int64_t>(1, std::llround(bytes / static_cast<double>(es) / n));
  int64_t send_n = count, recv_n = count;
  switch (kind) {
    case ccl::Collective::kReduceScatter: send_n = per * n, recv_n = per; break;
    case ccl::Collective::kAllGather: send_n = per, recv_n = per * n; break;
    case ccl::Collective::kAllToAll: send_n = recv_n = per * n; break;
    default: break;
  }
  std::vector<Buffer> send, recv;
  for (int r = 0; r < n; ++r) {
    send.push_back(devices_[static_cast<size_t>(r)]->alloc(kDType, send_n, "send"));
    recv.push_back(devices_[static_cast<size_t>(r)]->alloc(kDType, recv_n, "recv"));
  }
  ccl::CollectiveOptions o;
  if (ring && !ccl::unsupported(kind, ccl::Algorithm::kRing, comm->fabric(), std::vector<int>(static_cast<size_t>(n), 0)))
    o.algorithm = ccl::Algorithm::kRing;
  ccl::CollectiveResult res;
  switch (kind) {
    case ccl::Collective::kAllReduce: res = comm->all_reduce(send, recv, o); break;
    case ccl::Collective::kReduceScatter: res = comm->reduce_scatter(send, recv, o); break;
    case ccl::Collective::kAllGather: res = comm->all_gather(send, recv, o); break;
    case ccl::Collective::kAllToAll: res = comm->all_to_all(send, recv, o); break;
    case ccl::Collective::kSendRecv: {
      std::vector<ccl::P2P> p2p;
      for (const auto& [a, b] : pairs) p2p.push_back({a, b, send[static_cast<size_t>(a)], recv[static_cast<size_t>(b)]});
      res = comm->send_recv(p2p, o);
      break;
    }
    default: PPU_CHECK(false, "a node collective the network models do not use");
  }
  for (int r = 0; r < n; ++r) {
    devices_[static_cast<size_t>(r)]->free(send[static_cast<size_t>(r)]);
    devices_[static_cast<size_t>(r)]->free(recv[static_cast<size_t>(r)]);
  }
  return {res.time_s, fmt::format("{}/{}", ccl::algorithm_name(res.algorithm), ccl::protocol_name(res.protocol))};
}

// --- the cost assembly ------------------------------------------------------------------------------

HierarchicalNetwork::HierarchicalNetwork(const ClusterSpec& c) : cluster_(c), node_(c.node) {}

CollectiveCost HierarchicalNetwork::cost(const CollectiveRequest& request) {
  const Layout l = layout_of(cluster_, request);
  CollectiveRequest r = request;
  // All-to-all-v by its total bytes per rank, as an all-to-all of equal blocks (Network.hpp).
  if (r.collective == ccl::Collective::kAllToAllV) r.collective = ccl::Collective::kAllToAll;
  if (r.group_size == 1 || r.bytes == 0) {
    CollectiveCost c;
    c.how = r.group_size == 1 ? "groups of one rank: nothing moves" : "no bytes: nothing moves";
    return c;
  }
  return l.in_node ? in_node(r, l) : multi_node(r, l);
}

CollectiveCost HierarchicalNetwork::in_node(const CollectiveRequest& r, const Layout& l) {
  CollectiveCost c;
  NodeCollectives::Timing t;
  if (r.collective == ccl::Collective::kSendRecv) {
    // Every group on the first node sends to its next member at once (ranks = chips of node 0).
    std::vector<std::pair<int, int>> pairs;
    const int64_t ranks = std::min<int64_t>(l.total_ranks, l.chips_per_node);
    const int64_t block = l.stride * l.group_size;
    for (int64_t g = 0; g < ranks; ++g)
      if ((g % block) / l.stride < l.group_size - 1) pairs.emplace_back(static_cast<int>(g), static_cast<int>(g + l.stride));
    t = node_.send_recv(pairs, r.bytes);
    c.how = fmt::format("inside one node: {} concurrent send/recv pairs at stride {} ({})", pairs.size(), l.stride, t.how);
  } else {
    t = node_.time(r.collective, l.chips, r.bytes, false);
    c.how = fmt::format("inside one node: node {} over {} chips [{}] ({})", report_name(r.collective), l.chips.size(),
                        chip_list(l.chips), t.how);
  }
  c.seconds = c.node_seconds = t.seconds;
  return c;
}

CollectiveCost HierarchicalNetwork::multi_node(const CollectiveRequest& r, const Layout& l) {
  const ClusterSpec& cl = cluster_;
  const NodeSpec& nd = cl.node;
  const int C = l.chips_per_node, R = nics(cl), k = l.k, N = l.nodes_per_group;
  const double G = l.group_size, S = r.bytes;
  const double groups_per_node = static_cast<double>(C) / k;  // share the node's NICs
  const double coll_lat = nd.collective_latency.value;
  const double intra_hop = nd.has_links() ? nd.link_latency.value : nd.pcie_latency.value;

  struct Protocol {
    const char* name;
    double slowdown;  // scale-out time relative to the simple protocol's payload rate
    double step_s;    // per-step synchronisation
  };
  std::vector<Protocol> protocols = {{"simple", 1.0, nd.step_latency.value}};
  if (nd.has_low_latency_protocol())
    protocols.push_back({"ll", cl.nic_efficiency.value / nd.ll_efficiency.value, nd.ll_step_latency.value});

  Traffic base;
  base.busy_rails = R;
  base.nodes_per_group = N;
  base.node_stride = l.node_stride;
  base.nodes_used = l.nodes_used;
  // Latencies of the first node set's edges (every set is a translate; hops differ only at domain edges).
  // All-to-all: the worst pair is the set's first and last node (they share the highest tier).
  auto pattern_latency = [&](Shape shape, bool average) {
    if (shape == Shape::kAllToAll) return hop_latency(cl, 0, static_cast<int64_t>(N - 1) * l.node_stride);
    Traffic t = base;
    t.shape = shape;
    t.bytes = 1;
    t.node_stride = 1;  // positions of the first set, mapped to its nodes below
    t.nodes_used = N;
    double sum = 0, worst = 0;
    int64_t count = 0;
    for_each_flow(t, N, [&](int64_t a, int64_t b, double) {
      const double h = hop_latency(cl, a * l.node_stride, b * l.node_stride);
      sum += h, worst = std::max(worst, h), ++count;
    });
    return count == 0 ? 0.0 : average ? sum / static_cast<double>(count) : worst;
  };
  // Per pattern, cached: repeated requests cost microseconds even at 10^5 chips.
  auto edge_latency = [&](Shape shape, bool average) {
    const auto key = std::make_tuple(static_cast<int>(shape), N, l.node_stride, average);
    auto it = latency_cache_.find(key);
    if (it != latency_cache_.end()) return it->second;
    return latency_cache_[key] = pattern_latency(shape, average);
  };
  auto tree_shape = [&]() -> std::pair<int, int> {  // depth, most edges at one position
    auto it = tree_cache_.find(N);
    if (it != tree_cache_.end()) return it->second;
    return tree_cache_[N] = {tree_depth(N), tree_max_degree(N)};
  };

  struct Candidate {
    std::string algo;
    const Protocol* p;
    double latency_s, network_s, node_s, total_s;
    std::string node_how;
  };
  std::vector<Candidate> cands;
  auto add = [&](const std::string& algo, double net_simple, double node_s, const std::string& node_how,
                 const std::function<double(const Protocol&)>& latency) {
    for (const Protocol& p : protocols) {
      const double lat = latency(p), net = net_simple * p.slowdown;
      cands.push_back({algo, &p, lat, net, node_s, lat + std::max(net, node_s), node_how});
    }
  };
  auto node_part = [&](ccl::Collective kind, double bytes, bool ring) -> std::pair<double, std::string> {
    if (k <= 1) return {0.0, ""};
    const auto t = node_.time(kind, l.chips, bytes, ring);
    return {t.seconds, t.how};
  };

  switch (r.collective) {
    case ccl::Collective::kAllReduce: {
      // Ring through all G ranks (NCCL's ring): every node boundary carries 2(G-1)/G x S per group, spread
      // over the node's rails; the node hops carry the rest, timed as the node's ring of S(G-1)/G.
      Traffic ring = base;
      ring.shape = Shape::kRing;
      ring.bytes = groups_per_node * 2 * (G - 1) / G * S / R;
      const double ring_net = traffic_seconds(ring);
      const auto [ring_node, ring_how] = node_part(ccl::Collective::kAllReduce, S * (G - 1) / G, true);
      const double ring_alpha = edge_latency(Shape::kRing, true);
      add("ring", ring_net, ring_node, ring_how, [&](const Protocol& p) {
        return coll_lat + (2 * (G - 1) - 2 * (N - 1)) * (intra_hop + p.step_s) + 2.0 * (N - 1) * (ring_alpha + p.step_s);
      });
      // Double binary tree over the nodes, a chain inside each node: every tree edge carries S/2 per tree
      // each way; each rank passes S up and S down its chain (timed as the node's ring of S k/(k-1)).
      // NCCL's double binary tree makes every node send (and receive) 2S: S/2 to its parent and 2 x S/2
      // to its children in the tree where it is inside, S/2 to its parent in the other; its tuning
      // charges the tree 2S per rank (tuning.cc: algorithm bandwidth = bus bandwidth x 0.5). Our two
      // trees (the second shifted by one) are not always so complementary, and at 2 nodes they would
      // move only S - which NCCL's tree does not exploit: the measured 2-node DGX-A100 bus bandwidth
      // (NVIDIA/nccl issue #812) is the ring's. So edges are scaled to put 2S on the busiest node.
      Traffic tree = base;
      tree.shape = Shape::kTree;
      tree.bytes = groups_per_node * (S / 2) * (4.0 / tree_shape().second) / R;
      const double tree_net = traffic_seconds(tree);
      const auto [tree_node, tree_how] = node_part(ccl::Collective::kAllReduce, k > 1 ? S * k / (k - 1) : 0, true);
      const double tree_alpha = edge_latency(Shape::kTree, true);
      const int depth = tree_shape().first;
      add("tree", tree_net, tree_node, tree_how, [&](const Protocol& p) {
        return coll_lat + 2.0 * (depth * (tree_alpha + p.step_s) + (k - 1) * (intra_hop + p.step_s));
      });
      break;
    }
    case ccl::Collective::kReduceScatter:
    case ccl::Collective::kAllGather: {
      Traffic ring = base;
      ring.shape = Shape::kRing;
      ring.bytes = groups_per_node * (G - 1) / G * S / R;
      const double net = traffic_seconds(ring);
      const auto [node_s, node_how] = node_part(r.collective, S * (G - 1) / G, true);
      const double alpha = edge_latency(Shape::kRing, true);
      add("ring", net, node_s, node_how, [&](const Protocol& p) {
        return coll_lat + ((G - 1) - (N - 1)) * (intra_hop + p.step_s) + (N - 1.0) * (alpha + p.step_s);
      });
      break;
    }
    case ccl::Collective::kAllToAll: {
      // Every rank sends S/G to every member; what goes to another node leaves over the rails (PXN: first
      // over the node's links to the chip on the destination's rail). Node-local blocks move at once.
      Traffic a2a = base;
      a2a.shape = Shape::kAllToAll;
      a2a.bytes = groups_per_node * k * k * S / G / R;
      const double net = traffic_seconds(a2a);
      const auto [node_s, node_how] = node_part(ccl::Collective::kAllToAll, S * k / G, false);
      const double alpha = edge_latency(Shape::kAllToAll, false);
      add("direct", net, node_s, node_how, [&](const Protocol& p) { return coll_lat + alpha + p.step_s; });
      break;
    }
    case ccl::Collective::kSendRecv: {
      // Senders across a node boundary: every chip (one member per node), or the s chips at the top of the
      // node (whole nodes: the last member of each group on it). Each uses its own NIC(s).
      const int senders = k == 1 ? C : static_cast<int>(l.stride);
      std::set<int> busy;
      for (int ch = C - senders; ch < C; ++ch) {
        const int lo = ch * R / C, hi = std::max(lo + 1, (ch + 1) * R / C);
        for (int nic = lo; nic < hi; ++nic) busy.insert(nic);
      }
      Traffic shift = base;
      shift.shape = Shape::kShift;
      shift.busy_rails = static_cast<int>(busy.size());
      shift.bytes = senders * S / shift.busy_rails;
      const double net = traffic_seconds(shift);
      double node_s = 0;
      std::string node_how;
      if (k > 1) {
        std::vector<std::pair<int, int>> pairs;
        for (int ch = 0; ch + l.stride < C; ++ch) pairs.emplace_back(ch, static_cast<int>(ch + l.stride));
        const auto t = node_.send_recv(pairs, S);
        node_s = t.seconds, node_how = t.how;
      }
      const double alpha = edge_latency(Shape::kShift, false);
      add("p2p", net, node_s, node_how, [&](const Protocol& p) { return coll_lat + alpha + p.step_s; });
      break;
    }
    default: break;  // layout_of refused the others: no candidate, caught below
  }

  const Candidate* best = nullptr;
  for (const Candidate& c : cands)
    if (!best || c.total_s < best->total_s) best = &c;
  PPU_CHECK(best != nullptr, "no candidate algorithm");
  CollectiveCost out;
  out.seconds = best->total_s;
  out.latency_seconds = best->latency_s;
  out.network_seconds = best->network_s;
  out.node_seconds = best->node_s;
  std::string others;
  for (const Candidate& c : cands)
    if (&c != best) others += fmt::format("{}{}/{} {}", others.empty() ? "" : ", ", c.algo, c.p->name, ms(c.total_s));
  out.how = fmt::format("{} over {} ranks ({} per node x {} nodes{}), {}: scale-out {}{}, latency {}{}{}", best->algo,
                        l.group_size, k, N, l.node_stride > 1 ? fmt::format(", node stride {}", l.node_stride) : "",
                        best->p->name, ms(best->network_s),
                        best->node_s > 0 ? fmt::format(", node part {} ({})", ms(best->node_s), best->node_how) : "",
                        ms(best->latency_s), best->node_s > best->network_s ? " [node-bound]" : " [network-bound]",
                        others.empty() ? "" : fmt::format("; others: {}", others));
  return out;
}

}  // namespace detail
}  // namespace ppu::cluster
