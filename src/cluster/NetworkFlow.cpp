// The flow network model: the scale-out part of a collective from a flow-level, congestion-aware
// simulation on SimGrid (max-min bandwidth sharing), everything else as in the analytical model.
//
//   auto net = make_network(cluster, NetworkKind::kFlow);
//   net->cost({ccl::Collective::kAllToAll, 64e6, 64, 1});   // first call per traffic geometry: a simulation
//
// Platform: one rail of the multi-tier Clos, as nested SimGrid star zones - a host per node (its NIC
// on this rail) with a split-duplex NIC link of nic_bandwidth x nic_efficiency, one zone per tier
// domain, and per domain a split-duplex uplink with the domain's share of the uplink capacity
// (NetworkInternal.hpp: uplink_capacity). Latencies are zero in SimGrid (the cost assembly adds them)
// and the network model is set explicitly to plain max-min: CM02 without latency or bandwidth
// factors, no cross-traffic, no TCP window bound (network/weight-S 0; TCP-gamma only bounds flows of
// non-zero latency). Collectives load every busy rail the same way, so one rail stands for all.
//
// Flows: every node-level flow of one repeating window of the cluster (the flows of all groups there
// at once). Pipelined patterns (ring, tree) take bytes / rate of their slowest flow with every flow
// present (the max-min rates at the start); independent flows (all-to-all, send/recv) run until the
// last one finishes. Times are proportional to bytes, so each geometry is simulated once.
//
// One SimGrid engine per process: SimGrid's s4u::Engine is a process-wide singleton whose platform
// cannot grow once sealed, so each flow model runs SimGrid in a worker process of its own, forked on
// its first simulation. The worker builds the platform once, then for every request forks a
// throw-away copy of itself that adds the flows, runs the engine and writes the result back (a run
// leaves flows and a clock behind that SimGrid cannot reset, and cancelling 10^5 flows is slower than
// a fork). Several models - several clusters - in one process each have their own worker; the worker
// ends when its model is destroyed (or its parent dies).
//
// Limits: platform build time grows as nodes^2 / tier-0 domain size (SimGrid's name lookups walk the
// zones): about 1 s for 12,500 nodes of 32-node leaves. All-to-all flows grow as N^2 per group; more
// than 4 million flows in a window is refused (UserError) - use the analytical model there.
#include <fmt/format.h>
#include <signal.h>
#include <simgrid/s4u.hpp>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xbt/log.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>

#include "arch/Error.hpp"
#include "cluster/NetworkInternal.hpp"

namespace ppu::cluster::detail {

namespace {

namespace sg4 = simgrid::s4u;

constexpr uint64_t kMagic = 0x50505546'4c4f5731ULL;  // "PPUFLOW1"
constexpr int64_t kMaxFlows = 4'000'000;
constexpr double kLargestFlowBytes = 1e10;  // flows are scaled so the largest moves this much

struct WireHeader {
  uint64_t magic;
  uint64_t flows;
  int32_t pipelined;
  int32_t busy_rails;
};
struct WireFlow {
  int64_t src, dst;
  double bytes;
};
struct WireReply {
  double seconds;
  int32_t ok;
  char message[492];
};

bool send_all(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::send(fd, c, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    c += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool recv_all(int fd, void* p, size_t n) {
  char* c = static_cast<char*>(p);
  while (n > 0) {
    const ssize_t r = ::recv(fd, c, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    c += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

void set_message(WireReply& r, const std::string& m) {
  std::snprintf(r.message, sizeof r.message, "%s", m.c_str());
}

// --- worker side: the SimGrid platform ---------------------------------------------------------------

class Platform {
 public:
  explicit Platform(const ClusterSpec& c) : c_(c) {
    xbt_log_control_set("root.thres:warning");
    engine_ = new sg4::Engine("ppu-network-flow");  // lives until the worker process exits
    for (const char* cfg : {"network/model:CM02", "network/crosstraffic:0", "network/latency-factor:1",
                            "network/bandwidth-factor:1", "network/weight-S:0"})
      engine_->set_config(cfg);
    const int top = static_cast<int>(c.tiers.size()) - 1;
    uplinks_.resize(static_cast<size_t>(top));
    hosts_.resize(static_cast<size_t>(c.num_nodes()));
    sg4::NetZone* root = sg4::create_star_zone(fmt::format("tier{}", top));
    fill(root, top, 0, c.num_nodes());
    root->seal();
    engine_->seal_platform();
  }

  // Seconds for `flows` (bytes each) under max-min sharing; see the file comment for the two modes.
  double run(bool pipelined, int busy_rails, const std::vector<WireFlow>& flows) {
    for (size_t j = 0; j < uplinks_.size(); ++j) {
      const double cap = uplink_capacity(c_, static_cast<int>(j), busy_rails);
      for (sg4::SplitDuplexLink* l : uplinks_[j]) {
        l->get_link_up()->set_bandwidth(cap);
        l->get_link_down()->set_bandwidth(cap);
      }
    }
    double largest = 0, smallest = std::numeric_limits<double>::infinity();
    for (const WireFlow& f : flows) largest = std::max(largest, f.bytes), smallest = std::min(smallest, f.bytes);
    if (flows.empty() || !(largest > 0)) return 0.0;
    const double scale = kLargestFlowBytes / largest;
    // Never freed: this process ends right after (SimGrid complains about unfinished comms destroyed).
    auto& comms = *new std::vector<sg4::CommPtr>();
    std::vector<uint64_t> sizes;
    comms.reserve(flows.size());
    sizes.reserve(flows.size());
    const double t0 = sg4::Engine::get_clock();
    for (const WireFlow& f : flows) {
      sizes.push_back(static_cast<uint64_t>(std::llround(f.bytes * scale)));
      comms.push_back(sg4::Comm::sendto_async(hosts_[static_cast<size_t>(f.src)], hosts_[static_cast<size_t>(f.dst)],
                                              sizes.back()));
    }
    if (!pipelined) {
      engine_->run();
      return (sg4::Engine::get_clock() - t0) / scale;
    }
    // Well before the smallest flow could finish at a full NIC's rate.
    const double eps = 1e-3 * smallest * scale / (c_.nic_bandwidth.value * c_.nic_efficiency.value);
    engine_->run_until(t0 + eps);
    const double dt = sg4::Engine::get_clock() - t0;
    double worst = 0;
    for (size_t i = 0; i < comms.size(); ++i) {
      const double done = static_cast<double>(sizes[i]) - comms[i]->get_remaining();
      if (!(done > 0)) throw std::runtime_error(fmt::format("flow {} made no progress in {} s", i, dt));
      worst = std::max(worst, static_cast<double>(sizes[i]) * dt / done);
    }
    return worst / scale;
  }

 private:
  // Fills `zone`, a domain of tier j holding nodes [first, first + count).
  void fill(sg4::NetZone* zone, int j, int64_t first, int64_t count) {
    const double nic = c_.nic_bandwidth.value * c_.nic_efficiency.value;
    if (j == 0) {
      for (int64_t x = first; x < first + count; ++x) {
        sg4::Host* h = zone->create_host(fmt::format("n{}", x), 1.0);
        sg4::SplitDuplexLink* l = zone->create_split_duplex_link(fmt::format("nic{}", x), nic);
        zone->add_route(h->get_netpoint(), nullptr, nullptr, nullptr, {{l, sg4::LinkInRoute::Direction::UP}}, true);
        hosts_[static_cast<size_t>(x)] = h;
      }
      return;
    }
    const auto d = static_cast<int64_t>(c_.tiers[static_cast<size_t>(j - 1)].nodes.value);
    for (int64_t cf = first; cf < first + count; cf += d) {
      const int64_t cn = std::min(d, first + count - cf);
      sg4::NetZone* child = sg4::create_star_zone(fmt::format("t{}-{}", j - 1, cf));
      child->set_parent(zone);
      // The child's gateway: a router beside the hosts in a tier-0 zone; above, a router in an empty
      // zone of its own (SimGrid 3.32's star zones cannot route from a nested host to a router that
      // sits beside the nested zones).
      simgrid::kernel::routing::NetPoint* gw = nullptr;
      if (j - 1 == 0) {
        gw = child->create_router(fmt::format("g{}-{}", j - 1, cf));
      } else {
        sg4::NetZone* gz = sg4::create_star_zone(fmt::format("gz{}-{}", j - 1, cf));
        gz->set_parent(child);
        gw = gz->create_router(fmt::format("g{}-{}", j - 1, cf));
        gz->seal();
        child->add_route(gz->get_netpoint(), nullptr, gw, nullptr, {}, true);
      }
      fill(child, j - 1, cf, cn);
      child->seal();
      sg4::SplitDuplexLink* up = zone->create_split_duplex_link(fmt::format("up{}-{}", j - 1, cf),
                                                                uplink_capacity(c_, j - 1, static_cast<int>(c_.nics_per_node.value)));
      zone->add_route(child->get_netpoint(), nullptr, gw, nullptr, {{up, sg4::LinkInRoute::Direction::UP}}, true);
      uplinks_[static_cast<size_t>(j - 1)].push_back(up);
    }
  }

  const ClusterSpec& c_;
  sg4::Engine* engine_ = nullptr;
  std::vector<sg4::Host*> hosts_;
  std::vector<std::vector<sg4::SplitDuplexLink*>> uplinks_;  // [tier][domain]
};

[[noreturn]] void worker_main(int fd, const ClusterSpec& c) {
  std::unique_ptr<Platform> platform;
  std::string build_error;
  try {
    platform = std::make_unique<Platform>(c);
  } catch (const std::exception& e) {
    build_error = e.what();
  }
  for (;;) {
    WireHeader h{};
    if (!recv_all(fd, &h, sizeof h) || h.magic != kMagic) _exit(0);
    std::vector<WireFlow> flows(static_cast<size_t>(h.flows));
    if (!recv_all(fd, flows.data(), flows.size() * sizeof(WireFlow))) _exit(0);
    WireReply rep{};
    if (!platform) {
      set_message(rep, "building the SimGrid platform failed: " + build_error);
      if (!send_all(fd, &rep, sizeof rep)) _exit(0);
      continue;
    }
    const pid_t pid = ::fork();
    if (pid == 0) {
      try {
        rep.seconds = platform->run(h.pipelined != 0, h.busy_rails, flows);
        rep.ok = 1;
      } catch (const std::exception& e) {
        set_message(rep, e.what());
      }
      send_all(fd, &rep, sizeof rep);
      _exit(0);
    }
    if (pid < 0) {
      set_message(rep, std::string("fork failed: ") + std::strerror(errno));
      if (!send_all(fd, &rep, sizeof rep)) _exit(0);
      continue;
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {  // died before it could answer
      set_message(rep, WIFSIGNALED(status) ? fmt::format("the simulation died of signal {}", WTERMSIG(status))
                                           : "the simulation failed");
      if (!send_all(fd, &rep, sizeof rep)) _exit(0);
    }
  }
}

// --- parent side -------------------------------------------------------------------------------------

class FlowWorker {
 public:
  explicit FlowWorker(const ClusterSpec& c) : cluster_(c) {}
  FlowWorker(const FlowWorker&) = delete;
  FlowWorker& operator=(const FlowWorker&) = delete;
  ~FlowWorker() {
    if (fd_ < 0) return;
    ::close(fd_);  // the worker reads end-of-file and exits
    while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
    }
  }

  double run(bool pipelined, int busy_rails, const std::vector<WireFlow>& flows) {
    if (fd_ < 0) start();
    const WireHeader h{kMagic, flows.size(), pipelined ? 1 : 0, busy_rails};
    WireReply rep{};
    const bool io = send_all(fd_, &h, sizeof h) && send_all(fd_, flows.data(), flows.size() * sizeof(WireFlow)) &&
                    recv_all(fd_, &rep, sizeof rep);
    PPU_CHECK(io, "the SimGrid worker process of the flow network model stopped answering");
    rep.message[sizeof rep.message - 1] = '\0';
    PPU_CHECK(rep.ok == 1, std::string("flow network model: ") + rep.message);
    return rep.seconds;
  }

 private:
  void start() {
    int sv[2];
    PPU_CHECK(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0,
              std::string("socketpair for the SimGrid worker: ") + std::strerror(errno));
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    PPU_CHECK(pid >= 0, std::string("fork of the SimGrid worker: ") + std::strerror(errno));
    if (pid == 0) {
      ::close(sv[0]);
      // Keep stdio and this socket only: another model's worker socket inherited here would keep that
      // worker from ever seeing end-of-file.
      const unsigned keep = static_cast<unsigned>(sv[1]);
      if (keep > 3) ::close_range(3, keep - 1, 0);
      ::close_range(keep + 1, ~0U, 0);
      worker_main(sv[1], cluster_);
    }
    ::close(sv[1]);
    fd_ = sv[0];
    pid_ = pid;
  }

  const ClusterSpec& cluster_;
  int fd_ = -1;
  pid_t pid_ = -1;
};

class FlowNetwork final : public HierarchicalNetwork {
 public:
  explicit FlowNetwork(const ClusterSpec& c) : HierarchicalNetwork(c), worker_(cluster_) {}
  std::string name() const override { return "flow"; }

 protected:
  double traffic_seconds(const Traffic& t) override {
    const auto key = t.geometry();
    auto it = per_byte_.find(key);
    if (it == per_byte_.end()) it = per_byte_.emplace(key, simulate(t)).first;
    return it->second * t.bytes;
  }

 private:
  double simulate(const Traffic& traffic) {
    Traffic t = traffic;
    t.bytes = 1;
    const int64_t window = window_nodes(cluster_, t);
    const int64_t n = t.nodes_per_group, sets = window / n;
    const int64_t per_set = t.shape == Shape::kRing       ? n
                            : t.shape == Shape::kShift    ? n - 1
                            : t.shape == Shape::kTree     ? 4 * (n - 1)
                                                          : n * (n - 1);
    if (per_set > kMaxFlows / std::max<int64_t>(sets, 1))
      throw UserError(fmt::format("flow network model: {} over {} nodes per group makes {} x {} flows in a window of {} "
                                  "nodes, above the {} this model simulates; use the analytical model for it",
                                  kShapeNames[static_cast<size_t>(t.shape)], n, sets, per_set, window, kMaxFlows));
    std::vector<WireFlow> flows;
    flows.reserve(static_cast<size_t>(sets * per_set));
    for_each_flow(t, window, [&](int64_t a, int64_t b, double bytes) { flows.push_back({a, b, bytes}); });
    return worker_.run(t.pipelined(), t.busy_rails, flows);
  }

  FlowWorker worker_;
  std::map<std::tuple<int, int, int, int64_t, int64_t>, double> per_byte_;
};

}  // namespace

std::unique_ptr<NetworkModel> make_flow(const ClusterSpec& c) { return std::make_unique<FlowNetwork>(c); }

}  // namespace ppu::cluster::detail
