#include "ccl/Communicator.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <set>

#include "arch/Error.hpp"
#include "report/TraceWriter.hpp"
#include "sim/FunctionalExecutor.hpp"

namespace ppu::ccl {

namespace {

std::string rank_list(const std::vector<int>& ranks) {
  std::string out;
  for (int r : ranks) out += fmt::format("{}{}", out.empty() ? "" : ", ", r);
  return out.empty() ? "none" : out;
}

std::string bytes_text(double b) { return format_quantity(Dimension::kBytes, b); }

// Refuses, before it is timed, a schedule whose simulation would keep the host busy for minutes
// (kMaxScheduleWork): small chunks, many channels and a deep pipeline over a large message. `scale`
// stands for a message that many times the schedule's (the selector extrapolates past
// kSimulateUpToBytes, but the full message is simulated when it runs).
void check_schedule_work(const Schedule& s, double scale, Collective c, Algorithm a, double bytes,
                         const NodeSpec& node) {
  ScheduleWork w = schedule_work(s);
  if (scale > 1) {
    const int64_t in_flight_max = s.connections * std::max(1, s.pipeline_depth);
    w.flows = static_cast<int64_t>(std::ceil(static_cast<double>(w.flows) * scale));
    w.in_flight = std::min(w.flows, in_flight_max);
  }
  if (w.updates() <= kMaxScheduleWork) return;
  throw UserError(fmt::format(
      "{} of {} on node '{}' ({}): simulating it means {} transfers with up to {} in flight ({:.3g} flow updates), "
      "beyond the limit of {:.0e} (about 10 s of host time); raise the node's chunk_size ({}), lower its channels ({}) "
      "or pipeline_depth ({}), or use a smaller message",
      collective_name(c), bytes_text(bytes), node.name, algorithm_name(a), w.flows, w.in_flight, w.updates(),
      kMaxScheduleWork, bytes_text(node.chunk_size.value), node.channels.value, node.pipeline_depth.value));
}

// Sorted ranks with runs of three or more shortened: {0, 1, 2, 3, 5} -> "0-3,5".
std::string rank_ranges(const std::vector<int>& ranks) {
  std::string out;
  for (size_t i = 0; i < ranks.size();) {
    size_t j = i;
    while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) ++j;
    if (!out.empty()) out += ',';
    if (j >= i + 2) {
      out += fmt::format("{}-{}", ranks[i], ranks[j]);
      i = j + 1;
    } else {
      out += std::to_string(ranks[i++]);
    }
  }
  return out;
}

// The ranks a traced flow of op `o` (over `flow_resources`, sorted) went between: a flow through
// the switch carries all of the op's sources and destinations; otherwise a flow is one remote
// source of a reduction, or one destination of a copy - the one whose path it crossed.
void flow_ranks(const Op& o, const std::vector<int>& flow_resources, const Fabric& fabric, const std::vector<int>& chips,
                std::vector<int>& srcs, std::vector<int>& dsts) {
  auto chip = [&](const Region& r) { return chips[static_cast<size_t>(r.rank)]; };
  auto crossed = [&](int a, int b) {
    if (a == b) return false;
    for (int r : fabric.path(a, b))
      if (!std::binary_search(flow_resources.begin(), flow_resources.end(), r)) return false;
    return true;
  };
  if (o.via_switch) {
    for (const Region& r : o.srcs) srcs.push_back(r.rank);
    for (const Region& r : o.dsts) dsts.push_back(r.rank);
  } else if (o.type == OpType::kCopy) {
    srcs.push_back(o.srcs[0].rank);
    for (const Region& d : o.dsts)
      if (crossed(chip(o.srcs[0]), chip(d))) {
        dsts.push_back(d.rank);
        break;
      }
  } else {
    dsts.push_back(o.dsts[0].rank);
    for (const Region& r : o.srcs)
      if (crossed(chip(r), chip(o.dsts[0]))) {
        srcs.push_back(r.rank);
        break;
      }
  }
  for (auto* v : {&srcs, &dsts}) {
    std::sort(v->begin(), v->end());
    v->erase(std::unique(v->begin(), v->end()), v->end());
  }
}

}  // namespace

// One per-rank collective in the making: what each rank brought, and the outcome.
struct Communicator::Round {
  Collective collective;
  CollectiveOptions options;
  std::vector<std::optional<RankCall>> calls;
  int arrived = 0;
  bool running = false, done = false;
  std::string failure;  // set when a waiting rank timed out: every waiting rank throws it
  CollectiveResult result;
  std::exception_ptr error;
};

Communicator::Communicator(NodeSpec node, std::vector<Device*> devices, CommOptions options)
    : fabric_(std::move(node)), devices_(std::move(devices)), options_(std::move(options)) {
  const NodeSpec& nd = fabric_.node();
  const int n = static_cast<int>(devices_.size());
  if (n == 0) throw UserError("communicator: no devices given; pass one device per rank");
  if (n > nd.num_chips())
    throw UserError(fmt::format("communicator: {} ranks do not fit node '{}', which has {} chips", n, nd.name,
                                nd.num_chips()));
  chips_ = options_.chips;
  if (chips_.empty())
    for (int r = 0; r < n; ++r) chips_.push_back(r);
  if (static_cast<int>(chips_.size()) != n)
    throw UserError(fmt::format("communicator: {} chip placements given for {} ranks", chips_.size(), n));
  std::set<int> seen;
  for (int r = 0; r < n; ++r) {
    const int c = chips_[static_cast<size_t>(r)];
    if (c < 0 || c >= nd.num_chips())
      throw UserError(fmt::format("communicator: rank {} placed on chip {}; node '{}' has chips 0..{}", r, c, nd.name,
                                  nd.num_chips() - 1));
    if (!seen.insert(c).second)
      throw UserError(fmt::format("communicator: chip {} is given to two ranks; one rank per chip", c));
    if (!devices_[static_cast<size_t>(r)]) throw UserError(fmt::format("communicator: rank {} has no device", r));
    const Device& d = *devices_[static_cast<size_t>(r)];
    if (d.chip().name != nd.chip.name)
      throw UserError(fmt::format("communicator: rank {}'s device is a '{}'; node '{}' holds '{}' chips", r,
                                  d.chip().name, nd.name, nd.chip.name));
    if (d.mode() != devices_[0]->mode())
      throw UserError("communicator: devices mix functional and timing-only modes; use one mode for all ranks");
    groups_.push_back(fabric_.group_of(c));
  }
  scratch_.resize(static_cast<size_t>(n));
}

Communicator::~Communicator() = default;

std::vector<Algorithm> Communicator::candidates(Collective c) const {
  std::vector<Algorithm> out;
  for (size_t i = 0; i < static_cast<size_t>(Algorithm::kCount); ++i)
    if (!unsupported(c, static_cast<Algorithm>(i), fabric_, groups_)) out.push_back(static_cast<Algorithm>(i));
  return out;
}

std::vector<Algorithm> Communicator::auto_candidates(Collective c) const {
  // On a switch the selector keeps to NCCL's algorithms (ring, tree, NVLS; all-to-all point to
  // point), so that predictions compare with NCCL measurements; direct and halving-doubling remain
  // available by name. Meshes and PCIe nodes consider every algorithm that applies.
  std::vector<Algorithm> out;
  for (Algorithm a : candidates(c)) {
    const bool reduction_like = c != Collective::kAllToAll && c != Collective::kAllToAllV && c != Collective::kSendRecv;
    if (fabric_.has_switch() && reduction_like && (a == Algorithm::kDirect || a == Algorithm::kHalvingDoubling)) continue;
    out.push_back(a);
  }
  return out;
}

ScheduleSpec Communicator::spec_for(Collective c, Algorithm a, int64_t count, int64_t elem_bytes,
                                    const CollectiveOptions& o) const {
  ScheduleSpec sp;
  sp.collective = c;
  sp.algorithm = a;
  sp.ranks = size();
  sp.count = count;
  sp.root = o.root;
  sp.groups = groups_;
  sp.in_place.assign(static_cast<size_t>(size()), false);
  sp.chunk_elems = std::max<int64_t>(1, static_cast<int64_t>(node().chunk_size.value) / elem_bytes);
  sp.pipeline_depth = static_cast<int>(node().pipeline_depth.value);
  sp.channels = static_cast<int>(node().channels.value);
  return sp;
}

std::vector<Protocol> Communicator::protocols(Algorithm a) const {
  // In-switch reduction and multicast are their own protocol (simple); the others may go either way.
  if (a == Algorithm::kNvls || !node().has_low_latency_protocol()) return {Protocol::kSimple};
  return {Protocol::kSimple, Protocol::kLowLatency};
}

Communicator::Choice Communicator::select(Collective c, int64_t count, DType dtype, const CollectiveOptions& o) {
  const int64_t es = dtype_size_bytes(dtype);
  // All-to-all-v block sizes follow the routing and change call by call (every MoE layer): choose by
  // size class (the next power of two), as tuning tables do, so that each class is simulated once.
  if (c == Collective::kAllToAllV) count = int64_t{1} << static_cast<int>(std::ceil(std::log2(static_cast<double>(count))));
  const auto key = std::make_tuple(static_cast<int>(c), count, es, o.root, o.algorithm ? static_cast<int>(*o.algorithm) : -1,
                                   o.protocol ? static_cast<int>(*o.protocol) : -1);
  if (auto it = selected_.find(key); it != selected_.end()) return it->second;
  std::vector<Algorithm> algos = o.algorithm ? std::vector<Algorithm>{*o.algorithm} : auto_candidates(c);
  PPU_CHECK(!algos.empty(), "a collective without algorithms");
  Choice best{algos[0], Protocol::kSimple, ""};
  std::vector<std::pair<Algorithm, Protocol>> options;
  for (Algorithm a : algos)
    for (Protocol p : protocols(a))
      if (!o.protocol || *o.protocol == p) options.push_back({a, p});
  if (options.empty())
    throw UserError(fmt::format("{}: protocol '{}' does not apply to algorithm '{}' on node '{}'", collective_name(c),
                                protocol_name(*o.protocol), algorithm_name(algos[0]), node().name));
  best.algorithm = options[0].first;
  best.protocol = options[0].second;
  if (size() == 1) {
    best.reason = "one rank: a local copy";
  } else if (options.size() == 1) {
    best.reason = o.algorithm ? "asked for" : "the only algorithm for this collective";
  } else {
    double best_t = 1e300;
    std::string all;
    const int64_t cap = std::max<int64_t>(2, kSimulateUpToBytes / es);
    // Every candidate's schedule is checked before any is timed, so that a refusal comes at once.
    for (Algorithm a : algos) {
      ScheduleSpec sp = spec_for(c, a, std::min(count, cap), es, o);
      if (c == Collective::kAllToAllV) sp.collective = Collective::kAllToAll;
      check_schedule_work(build_schedule(sp), static_cast<double>(count) / static_cast<double>(sp.count), c, a,
                          static_cast<double>(count * es), node());
    }
    for (auto [a, p] : options) {
      auto time_of = [&](int64_t elems) {
        ScheduleSpec sp = spec_for(c, a, elems, es, o);
        if (c == Collective::kAllToAllV) sp.collective = Collective::kAllToAll;  // compared on equal blocks
        return time_schedule(build_schedule(sp), fabric_, chips_, es, 0.0, p).end_s;
      };
      // Past kSimulateUpToBytes every algorithm is in its steady state: time grows linearly with size,
      // so two simulations at the cap and half of it extrapolate (keeps selection fast for GB messages).
      double t;
      if (count <= cap) {
        t = time_of(count);
      } else {
        const double hi = time_of(cap), lo = time_of(cap / 2);
        t = hi + (hi - lo) * static_cast<double>(count - cap) / static_cast<double>(cap - cap / 2);
      }
      all += fmt::format("{}{}/{} {:.1f} us", all.empty() ? "" : ", ", algorithm_name(a), protocol_name(p), t * 1e6);
      if (t < best_t) best_t = t, best.algorithm = a, best.protocol = p;
    }
    best.reason = fmt::format("fastest simulated on {}: {}", node().name, all);
  }
  selected_[key] = best;
  return best;
}

CollectiveResult Communicator::run(Collective c, std::vector<RankCall> calls, const CollectiveOptions& o) {
  const int n = size();
  const std::string what(collective_name(c));
  PPU_CHECK(static_cast<int>(calls.size()) == n, "one call per rank");
  if ((c == Collective::kBroadcast || c == Collective::kReduce) && (o.root < 0 || o.root >= n))
    throw UserError(fmt::format("{}: root {} is not a rank of this communicator (0..{})", what, o.root, n - 1));
  // Which buffers each rank must pass, and their sizes in elements.
  auto send_needed = [&](int r) { return c != Collective::kSendRecv && (c != Collective::kBroadcast || r == o.root); };
  auto recv_needed = [&](int r) { return c != Collective::kSendRecv && (c != Collective::kReduce || r == o.root); };
  std::optional<DType> dtype;
  int dtype_rank = 0;
  const char* dtype_which = "send";
  auto check_buf = [&](int r, const Buffer& b, const char* which) {
    if (!b.valid()) throw UserError(fmt::format("{}: rank {} passed no {} buffer", what, r, which));
    if (devices_[static_cast<size_t>(r)]->functional() && !b.data)
      throw UserError(fmt::format("{}: rank {}'s {} buffer '{}' has no data; pass buffers of rank {}'s device", what, r,
                                  which, b.name, r));
    if (!dtype) {
      dtype = b.dtype, dtype_rank = r, dtype_which = which;
    } else if (b.dtype != *dtype) {
      throw UserError(fmt::format("{}: rank {}'s {} buffer '{}' is {}; rank {}'s {} buffer is {}; every buffer of a "
                                  "collective must have the same dtype",
                                  what, r, which, b.name, dtype_name(b.dtype), dtype_rank, dtype_which,
                                  dtype_name(*dtype)));
    }
  };
  for (int r = 0; r < n; ++r) {
    if (send_needed(r)) check_buf(r, calls[static_cast<size_t>(r)].send, "send");
    if (recv_needed(r)) check_buf(r, calls[static_cast<size_t>(r)].recv, "recv");
  }
  // Element counts: `count` in the layouts of ccl/Algorithms.
  int64_t count = 0;
  auto expect = [&](int r, const Buffer& b, const char* which, int64_t want, const std::string& rule) {
    if (b.numel != want)
      throw UserError(fmt::format("{}: rank {}'s {} buffer '{}' has {} elements; expected {} ({})", what, r, which,
                                  b.name, b.numel, want, rule));
  };
  std::vector<std::vector<int64_t>> counts;
  std::vector<SendRecvPair> pairs;
  const RankCall& c0 = calls[0];
  const RankCall& croot = calls[static_cast<size_t>(std::clamp(o.root, 0, n - 1))];
  switch (c) {
    case Collective::kAllReduce: count = c0.send.numel; break;
    case Collective::kReduceScatter: count = c0.recv.numel; break;
    case Collective::kAllGather: count = c0.send.numel; break;
    case Collective::kBroadcast: count = croot.send.numel; break;
    case Collective::kReduce: count = croot.recv.numel; break;
    case Collective::kAllToAll:
      if (c0.send.numel % n != 0)
        throw UserError(fmt::format("{}: rank 0's send buffer '{}' has {} elements, not a multiple of the {} ranks", what,
                                    c0.send.name, c0.send.numel, n));
      count = c0.send.numel / n;
      break;
    default: break;
  }
  for (int r = 0; r < n && c != Collective::kAllToAllV && c != Collective::kSendRecv; ++r) {
    const RankCall& k = calls[static_cast<size_t>(r)];
    const std::string same = fmt::format("rank {} has {}", c == Collective::kBroadcast || c == Collective::kReduce ? o.root : 0, count);
    switch (c) {
      case Collective::kAllReduce:
      case Collective::kBroadcast:
      case Collective::kReduce:
        if (send_needed(r)) expect(r, k.send, "send", count, "every rank passes the same count; " + same);
        if (recv_needed(r)) expect(r, k.recv, "recv", count, "the same count as its send buffer; " + same);
        break;
      case Collective::kReduceScatter:
        expect(r, k.recv, "recv", count, "every rank receives the same count; " + same);
        expect(r, k.send, "send", count * n, fmt::format("{} ranks x {}", n, count));
        break;
      case Collective::kAllGather:
        expect(r, k.send, "send", count, "every rank sends the same count; " + same);
        expect(r, k.recv, "recv", count * n, fmt::format("{} ranks x {}", n, count));
        break;
      case Collective::kAllToAll:
        expect(r, k.send, "send", count * n, fmt::format("{} ranks x {}", n, count));
        expect(r, k.recv, "recv", count * n, fmt::format("{} ranks x {}", n, count));
        break;
      default: break;
    }
  }
  if (count == 0 && c != Collective::kAllToAllV && c != Collective::kSendRecv)
    throw UserError(fmt::format("{}: zero elements", what));
  if (c == Collective::kAllToAllV) {
    for (int r = 0; r < n; ++r) {
      const auto& v = calls[static_cast<size_t>(r)].counts;
      if (static_cast<int>(v.size()) != n)
        throw UserError(fmt::format("{}: rank {} gave {} counts; one per rank ({}) is needed", what, r, v.size(), n));
      for (int64_t x : v)
        if (x < 0) throw UserError(fmt::format("{}: rank {} gave a negative count {}", what, r, x));
      counts.push_back(v);
    }
    for (int r = 0; r < n; ++r) {
      int64_t out = 0, in = 0;
      for (int p = 0; p < n; ++p) out += counts[static_cast<size_t>(r)][static_cast<size_t>(p)], in += counts[static_cast<size_t>(p)][static_cast<size_t>(r)];
      if (calls[static_cast<size_t>(r)].send.numel < out)
        throw UserError(fmt::format("{}: rank {}'s send buffer '{}' has {} elements; its counts send {}", what, r,
                                    calls[static_cast<size_t>(r)].send.name, calls[static_cast<size_t>(r)].send.numel, out));
      if (calls[static_cast<size_t>(r)].recv.numel < in)
        throw UserError(fmt::format("{}: rank {}'s recv buffer '{}' has {} elements; the others send it {}", what, r,
                                    calls[static_cast<size_t>(r)].recv.name, calls[static_cast<size_t>(r)].recv.numel, in));
      count += out;
    }
  }
  if (c == Collective::kSendRecv) {
    for (int r = 0; r < n; ++r) {
      const RankCall& k = calls[static_cast<size_t>(r)];
      if (k.send_peer < 0) continue;
      if (k.send_peer >= n) throw UserError(fmt::format("{}: rank {} sends to rank {}, not in 0..{}", what, r, k.send_peer, n - 1));
      const RankCall& to = calls[static_cast<size_t>(k.send_peer)];
      if (to.recv_peer != r)
        throw UserError(fmt::format("{}: rank {} sends to rank {}, but rank {} receives from {}", what, r, k.send_peer,
                                    k.send_peer, to.recv_peer < 0 ? std::string("no one") : fmt::format("rank {}", to.recv_peer)));
      check_buf(r, k.send, "send");
      check_buf(k.send_peer, to.recv, "recv");
      expect(k.send_peer, to.recv, "recv", k.send.numel, fmt::format("the size of rank {}'s send buffer", r));
      pairs.push_back({r, k.send_peer, k.send.numel});
      count += k.send.numel;
    }
    for (int r = 0; r < n; ++r) {
      const int from = calls[static_cast<size_t>(r)].recv_peer;
      if (from >= 0 && (from >= n || calls[static_cast<size_t>(from)].send_peer != r))
        throw UserError(fmt::format("{}: rank {} receives from rank {}, which does not send to it", what, r, from));
    }
    if (pairs.empty()) throw UserError(fmt::format("{}: no rank sends anything", what));
  }
  const int64_t es = dtype_size_bytes(*dtype);

  // Algorithm and protocol: asked for by name, or the selector's.
  CollectiveResult res;
  res.collective = c;
  if (o.algorithm) {
    if (auto why = unsupported(c, *o.algorithm, fabric_, groups_)) {
      std::string valid;
      for (Algorithm a : candidates(c)) valid += fmt::format("{}{}", valid.empty() ? "" : ", ", algorithm_name(a));
      throw UserError(fmt::format("{}: algorithm '{}' does not apply: {}; valid here: {}", what,
                                  algorithm_name(*o.algorithm), *why, valid));
    }
  }
  if (o.protocol == Protocol::kLowLatency && !node().has_low_latency_protocol())
    throw UserError(fmt::format("{}: protocol 'll' needs a node with ll_efficiency and ll_step_latency; node '{}' has "
                                "none (valid: simple)",
                                what, node().name));
  if (c == Collective::kSendRecv) {
    res.algorithm = Algorithm::kDirect;
    res.protocol = o.protocol.value_or(Protocol::kSimple);
    res.reason = "point to point";
  } else {
    const Choice ch = select(c, c == Collective::kAllToAllV ? std::max<int64_t>(1, count / n / n) : count, *dtype, o);
    res.algorithm = ch.algorithm;
    res.protocol = ch.protocol;
    res.reason = ch.reason;
  }
  ScheduleSpec sp = spec_for(c, res.algorithm, count, es, o);
  sp.counts = counts;
  sp.pairs = pairs;
  for (int r = 0; r < n; ++r) {
    const Buffer& s = calls[static_cast<size_t>(r)].send;
    const Buffer& v = calls[static_cast<size_t>(r)].recv;
    bool same = false;
    if (s.valid() && v.valid() && s.id == v.id) {
      if (c == Collective::kReduceScatter) same = v.addr == s.addr + static_cast<uint64_t>(r * count * es);
      else if (c == Collective::kAllGather) same = s.addr == v.addr + static_cast<uint64_t>(r * count * es);
      else same = s.addr == v.addr;
    }
    if (same && (c == Collective::kAllToAll || c == Collective::kAllToAllV))
      throw UserError(fmt::format("{}: rank {} passed the same buffer as send and recv; all-to-all cannot run in place",
                                  what, r));
    sp.in_place[static_cast<size_t>(r)] = same;
  }
  const Schedule sched = build_schedule(sp);
  check_schedule_work(sched, 1.0, c, res.algorithm, static_cast<double>(count * es), node());

  // Simulated time: from when every rank's stream is ready.
  std::vector<Stream*> streams(static_cast<size_t>(n));
  double start = 0;
  for (int r = 0; r < n; ++r) {
    Stream* s = calls[static_cast<size_t>(r)].stream;
    streams[static_cast<size_t>(r)] = s ? s : &devices_[static_cast<size_t>(r)]->default_stream();
    start = std::max(start, streams[static_cast<size_t>(r)]->ready_s);
  }
  FlowSim trace_sim;
  trace_sim.set_recording(trace_);
  ScheduleTiming t = time_schedule(sched, fabric_, chips_, es, start, res.protocol, trace_ ? &trace_sim : nullptr);
  // Inside captured graphs (every rank's device in one, past its first kernel) the collective's kernel
  // is a graph node: collective_latency includes a plain kernel launch, of which the node saves
  // launch_latency - graph_node_latency (Device::graph_launch_saving_s).
  double graph_saving = INFINITY;
  for (const Device* d : devices_) graph_saving = std::min(graph_saving, d->graph_launch_saving_s());
  if (graph_saving > 0) {
    for (double& e : t.rank_end_s) e = std::max(start, e - graph_saving);
    t.end_s = std::max(start, t.end_s - graph_saving);
  }
  if (trace_) {
    const std::string how = fmt::format("{}/{}", algorithm_name(res.algorithm), protocol_name(res.protocol));
    std::vector<int> hbm;
    for (int chip = 0; chip < fabric_.num_chips(); ++chip) hbm.push_back(fabric_.memory(chip));
    for (const auto& f : trace_sim.records()) {
      LinkTransfer x;
      for (int r : f.resources)
        if (std::find(hbm.begin(), hbm.end(), r) == hbm.end()) x.links.push_back(r);
      if (x.links.empty()) continue;  // a local copy or reduction
      x.start_s = f.start_s, x.end_s = f.end_s, x.bytes = f.bytes;
      x.collective = c;
      x.algorithm = how;
      flow_ranks(sched.ops[static_cast<size_t>(f.tag)], f.resources, fabric_, chips_, x.srcs, x.dsts);
      link_transfers_.push_back(std::move(x));
    }
  }

  // The numbers.
  if (devices_[0]->functional()) {
    std::vector<RankData> data(static_cast<size_t>(n));
    for (int r = 0; r < n; ++r) {
      auto& sc = scratch_[static_cast<size_t>(r)];
      if (sched.scratch_elems > 0) sc.resize(static_cast<size_t>(std::max<int64_t>(static_cast<int64_t>(sc.size()), sched.scratch_elems * es)));
      data[static_cast<size_t>(r)] = {calls[static_cast<size_t>(r)].send.data, calls[static_cast<size_t>(r)].recv.data,
                                      sc.empty() ? nullptr : sc.data()};
    }
    const int threads = options_.host_threads > 0 ? options_.host_threads : default_host_threads();
    run_schedule(sched, data, *dtype, o.op, threads);
  }

  // Records on every rank's device.
  const int64_t size_bytes = c == Collective::kReduceScatter || c == Collective::kAllGather ? count * n * es
                             : c == Collective::kAllToAll ? count * n * es
                             : c == Collective::kAllToAllV ? count * es / n
                             : count * es;
  const std::string name = fmt::format("{} {} ({}/{})", what, bytes_text(static_cast<double>(size_bytes)),
                                       algorithm_name(res.algorithm), protocol_name(res.protocol));
  for (int r = 0; r < n; ++r)
    devices_[static_cast<size_t>(r)]->record_op(OpKind::kCollective, name, *streams[static_cast<size_t>(r)], start,
                                                t.rank_end_s[static_cast<size_t>(r)], static_cast<double>(size_bytes));
  res.start_s = start;
  res.end_s = t.end_s;
  res.time_s = t.end_s - start;
  res.size_bytes = size_bytes;
  res.algbw_bytes_per_s = res.time_s > 0 ? static_cast<double>(size_bytes) / res.time_s : 0;
  res.busbw_bytes_per_s = res.algbw_bytes_per_s * bus_factor(c, n);
  res.ops = static_cast<int64_t>(sched.ops.size());
  return res;
}

CollectiveResult Communicator::group(Collective c, const std::vector<Buffer>& send, const std::vector<Buffer>& recv,
                                     const CollectiveOptions& o, const std::vector<Stream*>& streams) {
  const int n = size();
  const std::string what(collective_name(c));
  if (static_cast<int>(send.size()) != n || static_cast<int>(recv.size()) != n)
    throw UserError(fmt::format("{}: {} send and {} recv buffers given for {} ranks; one of each per rank", what,
                                send.size(), recv.size(), n));
  if (!streams.empty() && static_cast<int>(streams.size()) != n)
    throw UserError(fmt::format("{}: {} streams given for {} ranks; one per rank or none", what, streams.size(), n));
  std::vector<RankCall> calls(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    calls[static_cast<size_t>(r)].send = send[static_cast<size_t>(r)];
    calls[static_cast<size_t>(r)].recv = recv[static_cast<size_t>(r)];
    calls[static_cast<size_t>(r)].stream = streams.empty() ? nullptr : streams[static_cast<size_t>(r)];
  }
  return run(c, std::move(calls), o);
}

CollectiveResult Communicator::all_reduce(const std::vector<Buffer>& s, const std::vector<Buffer>& r,
                                          const CollectiveOptions& o, const std::vector<Stream*>& st) {
  return group(Collective::kAllReduce, s, r, o, st);
}
CollectiveResult Communicator::reduce_scatter(const std::vector<Buffer>& s, const std::vector<Buffer>& r,
                                              const CollectiveOptions& o, const std::vector<Stream*>& st) {
  return group(Collective::kReduceScatter, s, r, o, st);
}
CollectiveResult Communicator::all_gather(const std::vector<Buffer>& s, const std::vector<Buffer>& r,
                                          const CollectiveOptions& o, const std::vector<Stream*>& st) {
  return group(Collective::kAllGather, s, r, o, st);
}
CollectiveResult Communicator::broadcast(const std::vector<Buffer>& s, const std::vector<Buffer>& r,
                                         const CollectiveOptions& o, const std::vector<Stream*>& st) {
  return group(Collective::kBroadcast, s, r, o, st);
}
CollectiveResult Communicator::reduce(const std::vector<Buffer>& s, const std::vector<Buffer>& r,
                                      const CollectiveOptions& o, const std::vector<Stream*>& st) {
  return group(Collective::kReduce, s, r, o, st);
}
CollectiveResult Communicator::all_to_all(const std::vector<Buffer>& s, const std::vector<Buffer>& r,
                                          const CollectiveOptions& o, const std::vector<Stream*>& st) {
  return group(Collective::kAllToAll, s, r, o, st);
}

CollectiveResult Communicator::all_to_all_v(const std::vector<Buffer>& send, const std::vector<Buffer>& recv,
                                            const std::vector<std::vector<int64_t>>& counts,
                                            const CollectiveOptions& o, const std::vector<Stream*>& streams) {
  const int n = size();
  if (static_cast<int>(counts.size()) != n)
    throw UserError(fmt::format("alltoallv: {} rows of counts for {} ranks; one row per rank", counts.size(), n));
  if (static_cast<int>(send.size()) != n || static_cast<int>(recv.size()) != n)
    throw UserError(fmt::format("alltoallv: {} send and {} recv buffers given for {} ranks; one of each per rank",
                                send.size(), recv.size(), n));
  std::vector<RankCall> calls(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    calls[static_cast<size_t>(r)] = {send[static_cast<size_t>(r)], recv[static_cast<size_t>(r)],
                                     streams.empty() ? nullptr : streams.at(static_cast<size_t>(r)),
                                     counts[static_cast<size_t>(r)], -1, -1};
  }
  return run(Collective::kAllToAllV, std::move(calls), o);
}

CollectiveResult Communicator::send_recv(const std::vector<P2P>& pairs, const CollectiveOptions& o,
                                         const std::vector<Stream*>& streams) {
  const int n = size();
  std::vector<RankCall> calls(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) calls[static_cast<size_t>(r)].stream = streams.empty() ? nullptr : streams.at(static_cast<size_t>(r));
  for (const P2P& p : pairs) {
    if (p.src < 0 || p.src >= n || p.dst < 0 || p.dst >= n || p.src == p.dst)
      throw UserError(fmt::format("sendrecv: pair {} -> {} is not two different ranks of 0..{}", p.src, p.dst, n - 1));
    RankCall& s = calls[static_cast<size_t>(p.src)];
    RankCall& d = calls[static_cast<size_t>(p.dst)];
    if (s.send_peer >= 0) throw UserError(fmt::format("sendrecv: rank {} sends twice; one send per rank per call", p.src));
    if (d.recv_peer >= 0) throw UserError(fmt::format("sendrecv: rank {} receives twice; one receive per rank per call", p.dst));
    s.send_peer = p.dst;
    s.send = p.send;
    d.recv_peer = p.src;
    d.recv = p.recv;
  }
  return run(Collective::kSendRecv, std::move(calls), o);
}

// ---------------------------------------------------------------- per-rank calls

CollectiveResult Communicator::join(int rank, Collective c, RankCall call, const CollectiveOptions& o) {
  const int n = size();
  const std::string what(collective_name(c));
  if (rank < 0 || rank >= n) throw UserError(fmt::format("{}: rank {} is not in 0..{}", what, rank, n - 1));
  std::unique_lock<std::mutex> lk(mu_);
  if (!round_) {
    round_ = std::make_shared<Round>();
    round_->collective = c;
    round_->options = o;
    round_->calls.resize(static_cast<size_t>(n));
  }
  std::shared_ptr<Round> round = round_;
  if (round->collective != c)
    throw UserError(fmt::format("{}: rank {} called {} while other ranks are in {}; every rank must call the same "
                                "collective in the same order",
                                what, rank, what, collective_name(round->collective)));
  if (round->calls[static_cast<size_t>(rank)])
    throw UserError(fmt::format("{}: rank {} joined twice (two threads use the same rank?)", what, rank));
  const CollectiveOptions& o0 = round->options;
  if (o0.algorithm != o.algorithm || o0.op != o.op || o0.root != o.root)
    throw UserError(fmt::format("{}: rank {} passed different options (algorithm, op or root) than the ranks already "
                                "waiting; every rank must pass the same",
                                what, rank));
  round->calls[static_cast<size_t>(rank)] = std::move(call);
  if (++round->arrived == n) {
    round_.reset();
    round->running = true;
    lk.unlock();
    try {
      std::vector<RankCall> calls;
      for (auto& k : round->calls) calls.push_back(*k);
      round->result = run(c, std::move(calls), round->options);
    } catch (...) {
      round->error = std::current_exception();
    }
    lk.lock();
    round->done = true;
    cv_.notify_all();
  } else {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(options_.rendezvous_timeout_s);
    if (!cv_.wait_until(lk, deadline, [&] { return round->running || round->done || !round->failure.empty(); })) {
      // The first rank to time out fails the round for every rank waiting in it; later calls start afresh.
      std::vector<int> missing, joined;
      for (int r = 0; r < n; ++r) (round->calls[static_cast<size_t>(r)] ? joined : missing).push_back(r);
      round->failure = fmt::format("{}: rank(s) {} of {} did not join within {:g} s (joined: {}); every rank must call "
                                   "the collective (CommOptions::rendezvous_timeout_s)",
                                   what, rank_list(missing), n, options_.rendezvous_timeout_s, rank_list(joined));
      if (round_ == round) round_.reset();
      cv_.notify_all();
    }
    if (!round->failure.empty()) throw UserError(round->failure);
    cv_.wait(lk, [&] { return round->done; });
  }
  if (round->error) std::rethrow_exception(round->error);
  return round->result;
}

CollectiveResult Communicator::all_reduce(int rank, const Buffer& s, const Buffer& r, const CollectiveOptions& o, Stream* st) {
  return join(rank, Collective::kAllReduce, {s, r, st, {}, -1, -1}, o);
}
CollectiveResult Communicator::reduce_scatter(int rank, const Buffer& s, const Buffer& r, const CollectiveOptions& o, Stream* st) {
  return join(rank, Collective::kReduceScatter, {s, r, st, {}, -1, -1}, o);
}
CollectiveResult Communicator::all_gather(int rank, const Buffer& s, const Buffer& r, const CollectiveOptions& o, Stream* st) {
  return join(rank, Collective::kAllGather, {s, r, st, {}, -1, -1}, o);
}
CollectiveResult Communicator::broadcast(int rank, const Buffer& s, const Buffer& r, const CollectiveOptions& o, Stream* st) {
  return join(rank, Collective::kBroadcast, {s, r, st, {}, -1, -1}, o);
}
CollectiveResult Communicator::reduce(int rank, const Buffer& s, const Buffer& r, const CollectiveOptions& o, Stream* st) {
  return join(rank, Collective::kReduce, {s, r, st, {}, -1, -1}, o);
}
CollectiveResult Communicator::all_to_all(int rank, const Buffer& s, const Buffer& r, const CollectiveOptions& o, Stream* st) {
  return join(rank, Collective::kAllToAll, {s, r, st, {}, -1, -1}, o);
}
CollectiveResult Communicator::all_to_all_v(int rank, const Buffer& s, const Buffer& r, const std::vector<int64_t>& counts,
                                            const CollectiveOptions& o, Stream* st) {
  return join(rank, Collective::kAllToAllV, {s, r, st, counts, -1, -1}, o);
}
CollectiveResult Communicator::send_recv(int rank, int send_peer, const Buffer& s, int recv_peer, const Buffer& r,
                                         const CollectiveOptions& o, Stream* st) {
  return join(rank, Collective::kSendRecv, {send_peer >= 0 ? s : Buffer{}, recv_peer >= 0 ? r : Buffer{}, st, {}, send_peer, recv_peer}, o);
}

// ---------------------------------------------------------------- trace

void Communicator::write_trace(TraceWriter& w) const {
  for (int r = 0; r < size(); ++r) devices_[static_cast<size_t>(r)]->write_trace(w, 10 * (r + 1), fmt::format("rank {} chip {}", r, chips_[static_cast<size_t>(r)]));
  if (link_transfers_.empty()) return;
  const int kLinksPid = 5;
  w.name_process(kLinksPid, fmt::format("{}: links (one lane per direction; transfers at the same time share a slice)",
                                        node().name));
  std::map<int, std::vector<size_t>> by_link;  // link direction -> its transfers
  for (size_t i = 0; i < link_transfers_.size(); ++i)
    for (int l : link_transfers_[i].links) by_link[l].push_back(i);
  // A slice's name: per collective, one source or one destination with the ranks on the other end
  // ("alltoall 0->1-7"), else the first pairs.
  auto name_of = [&](const std::vector<size_t>& active) {
    std::map<Collective, std::set<std::pair<std::vector<int>, std::vector<int>>>> pairs;
    for (size_t i : active) pairs[link_transfers_[i].collective].insert({link_transfers_[i].srcs, link_transfers_[i].dsts});
    std::string out;
    for (const auto& [coll, ps] : pairs) {
      std::set<int> srcs, dsts;
      for (const auto& [s, d] : ps) srcs.insert(s.begin(), s.end()), dsts.insert(d.begin(), d.end());
      const bool one_src = std::all_of(ps.begin(), ps.end(), [&](const auto& p) { return p.first == ps.begin()->first; });
      const bool one_dst = std::all_of(ps.begin(), ps.end(), [&](const auto& p) { return p.second == ps.begin()->second; });
      std::string who;
      if (one_src || one_dst) {
        who = rank_ranges({srcs.begin(), srcs.end()}) + "->" + rank_ranges({dsts.begin(), dsts.end()});
      } else {
        constexpr size_t kShown = 3;
        size_t k = 0;
        for (const auto& [s, d] : ps) {
          if (k++ == kShown) break;
          who += fmt::format("{}{}->{}", who.empty() ? "" : ", ", rank_ranges(s), rank_ranges(d));
        }
        if (ps.size() > kShown) who += fmt::format(" +{} more", ps.size() - kShown);
      }
      out += fmt::format("{}{} {}", out.empty() ? "" : " + ", collective_name(coll), who);
    }
    return out;
  };
  for (auto& [link, ids] : by_link) {
    w.name_thread(kLinksPid, link, fabric_.resources()[static_cast<size_t>(link)].name);
    // Cut the lane at every start and end; each piece carries the transfers active all through it.
    std::vector<double> cuts;
    for (size_t i : ids) cuts.push_back(link_transfers_[i].start_s), cuts.push_back(link_transfers_[i].end_s);
    std::sort(cuts.begin(), cuts.end());
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    std::sort(ids.begin(), ids.end(), [&](size_t a, size_t b) { return link_transfers_[a].start_s < link_transfers_[b].start_s; });
    struct Piece {
      std::string name, algorithm;
      double start_s, end_s, bytes;
      int transfers;
    };
    std::vector<Piece> pieces;
    std::vector<size_t> active;
    size_t next = 0;
    for (size_t k = 0; k + 1 < cuts.size(); ++k) {
      const double t0 = cuts[k], t1 = cuts[k + 1];
      std::erase_if(active, [&](size_t i) { return link_transfers_[i].end_s <= t0; });
      while (next < ids.size() && link_transfers_[ids[next]].start_s <= t0) {
        if (link_transfers_[ids[next]].end_s > t0) active.push_back(ids[next]);
        ++next;
      }
      if (active.empty()) continue;
      double bytes = 0;
      for (size_t i : active) {
        const LinkTransfer& x = link_transfers_[i];
        bytes += x.bytes * (t1 - t0) / (x.end_s - x.start_s);
      }
      std::string name = name_of(active);
      if (!pieces.empty() && pieces.back().end_s == t0 && pieces.back().name == name) {
        pieces.back().end_s = t1;
        pieces.back().bytes += bytes;
        pieces.back().transfers = std::max(pieces.back().transfers, static_cast<int>(active.size()));
      } else {
        pieces.push_back({std::move(name), link_transfers_[active.front()].algorithm, t0, t1, bytes,
                          static_cast<int>(active.size())});
      }
    }
    for (const Piece& p : pieces) {
      const double dur = p.end_s - p.start_s;
      w.slice(kLinksPid, link, p.name, p.start_s, dur,
              {{"algorithm", p.algorithm},
               {"bytes", p.bytes},
               {"GB/s", p.bytes / dur / 1e9},
               {"transfers_at_once", p.transfers}});
    }
  }
}

}  // namespace ppu::ccl
