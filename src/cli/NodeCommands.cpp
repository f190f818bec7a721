// `ppu nodes`, `ppu nodes show NAME` and `ppu bench <collective>` (see Commands.hpp).
#include <fmt/format.h>

#include <cmath>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "arch/NodeSpec.hpp"
#include "arch/QuantityJson.hpp"
#include "ccl/Communicator.hpp"
#include "cli/Commands.hpp"
#include "report/JsonDoc.hpp"
#include "report/Progress.hpp"
#include "report/Table.hpp"
#include "report/TraceWriter.hpp"

namespace ppu::cli {

namespace {

using nlohmann::json;

std::string gbs(double bytes_per_s) { return fmt::format("{:.0f}", bytes_per_s / 1e9); }

std::string links_text(const NodeSpec& n) {
  switch (n.topology) {
    case Topology::kFullMesh: return fmt::format("full mesh, {} GB/s per pair", gbs(n.link_bandwidth.value));
    case Topology::kSwitch: return fmt::format("switch, {} GB/s per chip", gbs(n.link_bandwidth.value));
    case Topology::kPcie:
      return fmt::format("PCIe only, {} GB/s per chip, {} per switch", gbs(n.pcie_bandwidth.value), n.group_chips());
    case Topology::kMeshesOverPcie:
      return fmt::format("{} meshes of {} ({} GB/s per pair) over PCIe", n.num_chips() / n.group_chips(),
                         n.group_chips(), gbs(n.link_bandwidth.value));
    default: return "";
  }
}

// Sizes "1M:8G" (doubling, as nccl-tests -f 2) or "64M"; K, M, G, T are powers of 2 like nccl-tests.
std::vector<int64_t> parse_sizes(const std::string& text) {
  auto one = [&](std::string s) -> int64_t {
    if (!s.empty()) {
      const char u = static_cast<char>(std::toupper(static_cast<unsigned char>(s.back())));
      const int shift = u == 'K' ? 10 : u == 'M' ? 20 : u == 'G' ? 30 : u == 'T' ? 40 : 0;
      if (shift > 0) {
        s.pop_back();
        char* end = nullptr;
        const double v = std::strtod(s.c_str(), &end);
        if (!s.empty() && end == s.c_str() + s.size() && v > 0) return static_cast<int64_t>(std::llround(v * std::ldexp(1.0, shift)));
        throw UserError(fmt::format("--sizes: cannot read '{}'; write e.g. 1M:8G, 64M or 4096", text));
      }
    }
    return parse_size_bytes(s, "--sizes");
  };
  const auto colon = text.find(':');
  if (colon == std::string::npos) return {one(text)};
  const int64_t lo = one(text.substr(0, colon)), hi = one(text.substr(colon + 1));
  if (hi < lo) throw UserError(fmt::format("--sizes '{}': the largest size is below the smallest", text));
  std::vector<int64_t> out;
  for (int64_t s = lo; s <= hi; s *= 2) out.push_back(s);
  return out;
}

}  // namespace

int cmd_nodes_list(bool as_json) {
  json out = json::array();
  Table t({"node", "name", "chip", "chips", "links (per direction)", "in-switch reduction", "host link"});
  for (const auto& name : node_preset_names()) {
    const NodeSpec n = load_node(name);
    const bool pcie = n.pcie_bandwidth.present;
    t.add_row({n.name, n.display_name, n.chip.name, std::to_string(n.num_chips()), links_text(n),
               n.has_switch_reduction() ? fmt::format("{} GB/s", gbs(n.switch_reduction_bandwidth.value)) : "-",
               pcie ? fmt::format("{} GB/s", gbs(n.pcie_bandwidth.value)) : "-"});
    out.push_back({{"node", n.name},
                   {"display_name", n.display_name},
                   {"chip", n.chip.name},
                   {"chips", n.num_chips()},
                   {"topology", std::string(topology_name(n.topology))},
                   {"link_bandwidth_bytes_per_s", n.link_bandwidth.present ? json(n.link_bandwidth.value) : json()},
                   {"switch_reduction_bandwidth_bytes_per_s",
                    n.has_switch_reduction() ? json(n.switch_reduction_bandwidth.value) : json()}});
  }
  if (as_json) print_json_document("nodes", out);
  else std::cout << t.render() << "\n'ppu nodes show NAME' prints every field with its source and the link graph.\n";
  return 0;
}

int cmd_nodes_show(const std::string& name_or_path, bool as_json) {
  const NodeSpec n = load_node(name_or_path);
  const ccl::Fabric f(n);
  json fields = json::object();
  Table t({"field", "value", "basis", "source or reason"});
  t.set_max_width(3, kShowTextWidth);
  for (const auto& fi : node_fields()) {
    const Quantity& q = n.*(fi.member);
    if (!q.present) continue;
    const bool assumed = !q.assumed.empty();
    t.add_row({std::string(fi.key), q.text, assumed ? "assumed" : "published", assumed ? q.assumed : q.source});
    fields[std::string(fi.key)] = quantity_record(q);
  }
  // The link graph: every resource of the flow model (one per direction of each connection).
  Table g({"resource", "line GB/s", "payload GB/s"});
  json res = json::array();
  for (const auto& r : f.resources()) {
    g.add_row({r.name, gbs(r.line_bytes_per_s), gbs(r.bw_bytes_per_s)});
    res.push_back({{"name", r.name}, {"line_bandwidth_bytes_per_s", r.line_bytes_per_s},
                   {"payload_bandwidth_bytes_per_s", r.bw_bytes_per_s}});
  }
  Table p({"from", "to", "path", "latency us", "payload GB/s"});
  for (int a = 0; a < n.num_chips(); ++a)
    for (int b = 0; b < n.num_chips(); ++b) {
      if (a == b || (a > 0 && b > 0 && a != 1)) continue;  // routes from chips 0 and 1: the pattern repeats
      std::string path;
      for (int r : f.path(a, b)) path += (path.empty() ? "" : ", ") + f.resources()[static_cast<size_t>(r)].name;
      p.add_row({std::to_string(a), std::to_string(b), path, fmt::format("{:.1f}", f.path_latency_s(a, b) * 1e6),
                 gbs(f.path_bandwidth(a, b))});
    }
  if (as_json) {
    const json node = {{"node", n.name}, {"display_name", n.display_name}, {"file", json_text_or_null(n.file)},
                       {"chip", n.chip.name}, {"chips", n.num_chips()}, {"topology", std::string(topology_name(n.topology))},
                       {"notes", json_text_or_null(n.notes)}, {"fields", fields}, {"resources", res}};
    print_json_document("nodes show", json::array({node}));
    return 0;
  }
  std::cout << fmt::format("{} ({}: {} x {}, {})\nfrom {}\n", n.display_name, n.name, n.num_chips(), n.chip.name,
                           topology_name(n.topology), n.file);
  std::cout << wrap_text(n.notes) << '\n' << t.render() << "\nLink graph (each resource is one direction of a full-duplex connection; "
            << "transfers that share one share its bandwidth)\n\n" << g.render() << "\nRoutes from chips 0 and 1\n\n"
            << p.render();
  return 0;
}

int cmd_bench_collective(const CollectiveBenchOptions& o) {
  using namespace ccl;
  const auto coll = collective_from_name(o.collective);
  if (!coll || *coll == Collective::kAllToAllV)
    throw UserError(fmt::format("bench '{}': not a collective to benchmark; valid: allreduce, reducescatter, allgather, "
                                "broadcast, reduce, alltoall, sendrecv",
                                o.collective));
  const DType t = parse_dtype_option(o.dtype, "--dtype");
  CollectiveOptions co;
  co.root = o.root;
  if (!o.algo.empty()) {
    co.algorithm = algorithm_from_name(o.algo);
    if (!co.algorithm) throw UserError(fmt::format("--algo '{}' is not an algorithm; valid: {}", o.algo, algorithm_valid_names()));
  }
  if (!o.protocol.empty()) {
    co.protocol = protocol_from_name(o.protocol);
    if (!co.protocol) throw UserError(fmt::format("--protocol '{}' is not a protocol; valid: simple, ll", o.protocol));
  }
  if (auto op = reduction_op_from_name(o.op)) co.op = *op;
  else throw UserError(fmt::format("--op '{}' is not a reduction; valid: sum, max, min", o.op));
  const NodeSpec node = load_node(o.node);
  const int n = o.ranks > 0 ? o.ranks : node.num_chips();
  if (o.ranks < 0) throw UserError(fmt::format("--ranks {}: must be positive", o.ranks));
  const ExecMode mode = o.check ? ExecMode::kFunctional : ExecMode::kTimingOnly;
  std::vector<std::unique_ptr<Device>> devs;
  std::vector<Device*> ptrs;
  for (int r = 0; r < std::min(n, node.num_chips() + 1); ++r) {
    devs.push_back(std::make_unique<Device>(node.chip, mode));
    ptrs.push_back(devs.back().get());
  }
  Communicator comm(node, ptrs);
  comm.set_trace(!o.trace.empty());
  const int64_t es = dtype_size_bytes(t);
  const Collective c = *coll;
  Table tab({"size", "count", "type", "redop", "root", "time us", "algbw GB/s", "busbw GB/s", "algorithm", "protocol"});
  if (o.check) tab = Table({"size", "count", "type", "redop", "root", "time us", "algbw GB/s", "busbw GB/s", "algorithm",
                            "protocol", "#wrong"});
  json rows = json::array();
  bool all_ok = true;
  const std::vector<int64_t> sizes = parse_sizes(o.sizes);
  Progress progress("bench " + o.collective, static_cast<int64_t>(sizes.size()));
  for (int64_t size : sizes) {
    // nccl-tests sizes: all-gather and all-to-all give the receive total, reduce-scatter the send total.
    const bool split = c == Collective::kAllGather || c == Collective::kReduceScatter || c == Collective::kAllToAll;
    const int64_t count = std::max<int64_t>(1, split ? size / es / n : size / es);  // per rank / per block
    int64_t send_n = count, recv_n = count;
    if (c == Collective::kReduceScatter) send_n = count * n;
    if (c == Collective::kAllGather) recv_n = count * n;
    if (c == Collective::kAllToAll) send_n = recv_n = count * n;
    std::vector<Buffer> send, recv;
    for (int r = 0; r < n; ++r) {
      send.push_back(devs[static_cast<size_t>(r)]->alloc(t, send_n, "send"));
      recv.push_back(devs[static_cast<size_t>(r)]->alloc(t, recv_n, "recv"));
      // Small whole numbers, exact in every dtype: rank r sends r + 1 (all-to-all: block p holds r + 1).
      if (o.check) devs[static_cast<size_t>(r)]->upload(send.back(), std::vector<float>(static_cast<size_t>(send_n), static_cast<float>(r + 1)));
    }
    CollectiveResult res;
    switch (c) {
      case Collective::kAllReduce: res = comm.all_reduce(send, recv, co); break;
      case Collective::kReduceScatter: res = comm.reduce_scatter(send, recv, co); break;
      case Collective::kAllGather: res = comm.all_gather(send, recv, co); break;
      case Collective::kBroadcast: res = comm.broadcast(send, recv, co); break;
      case Collective::kReduce: res = comm.reduce(send, recv, co); break;
      case Collective::kAllToAll: res = comm.all_to_all(send, recv, co); break;
      default: {  // send/recv: a ring shift, every rank sends to the next
        std::vector<P2P> pairs;
        for (int r = 0; r < n; ++r) pairs.push_back({r, (r + 1) % n, send[static_cast<size_t>(r)], recv[static_cast<size_t>((r + 1) % n)]});
        res = comm.send_recv(pairs, co);
      }
    }
    int64_t wrong = 0;
    if (o.check) {
      const double nn = n;
      const double sum = co.op == ReductionOp::kSum ? nn * (nn + 1) / 2 : co.op == ReductionOp::kMax ? nn : 1;
      for (int r = 0; r < n; ++r) {
        if (c == Collective::kReduce && r != o.root) continue;
        const auto got = devs[static_cast<size_t>(r)]->download(recv[static_cast<size_t>(r)]);
        for (size_t i = 0; i < got.size(); ++i) {
          double want = 0;
          switch (c) {
            case Collective::kAllReduce:
            case Collective::kReduceScatter:
            case Collective::kReduce: want = sum; break;
            case Collective::kAllGather:
            case Collective::kAllToAll: want = static_cast<double>(i / static_cast<size_t>(count)) + 1; break;
            case Collective::kBroadcast: want = o.root + 1; break;
            default: want = (r - 1 + n) % n + 1;
          }
          wrong += got[i] != round_to(t, static_cast<float>(want));
        }
      }
      all_ok = all_ok && wrong == 0;
    }
    for (int r = 0; r < n; ++r) {
      devs[static_cast<size_t>(r)]->free(send[static_cast<size_t>(r)]);
      devs[static_cast<size_t>(r)]->free(recv[static_cast<size_t>(r)]);
    }
    const bool rooted = c == Collective::kBroadcast || c == Collective::kReduce;
    const bool reduces = c == Collective::kAllReduce || c == Collective::kReduceScatter || c == Collective::kReduce;
    std::vector<std::string> row = {std::to_string(res.size_bytes), std::to_string(split ? count * n : count),
                                    std::string(dtype_name(t)), reduces ? std::string(reduction_op_name(co.op)) : "none",
                                    rooted ? std::to_string(o.root) : "-", fmt::format("{:.1f}", res.time_s * 1e6),
                                    fmt::format("{:.2f}", res.algbw_bytes_per_s / 1e9),
                                    fmt::format("{:.2f}", res.busbw_bytes_per_s / 1e9),
                                    std::string(algorithm_name(res.algorithm)), std::string(protocol_name(res.protocol))};
    if (o.check) row.push_back(std::to_string(wrong));
    tab.add_row(row);
    json j = {{"collective", o.collective}, {"node", node.name}, {"ranks", n}, {"functional", o.check},
              {"size_bytes", res.size_bytes}, {"count", split ? count * n : count}, {"dtype", std::string(dtype_name(t))},
              {"reduction", reduces ? json(std::string(reduction_op_name(co.op))) : json()},
              {"root", rooted ? json(o.root) : json()},
              {"time_s", res.time_s}, {"algorithm_bandwidth_bytes_per_s", res.algbw_bytes_per_s},
              {"bus_bandwidth_bytes_per_s", res.busbw_bytes_per_s}, {"bus_bandwidth_factor", bus_factor(c, n)}, {"algorithm", std::string(algorithm_name(res.algorithm))},
              {"protocol", std::string(protocol_name(res.protocol))}, {"reason", json_text_or_null(res.reason)}};
    if (o.check) j["check"] = {{"elements_wrong", wrong}, {"passed", wrong == 0}};
    rows.push_back(j);
    progress.done(format_quantity(Dimension::kBytes, static_cast<double>(size)));
  }
  if (!o.trace.empty()) {
    TraceWriter w;
    comm.write_trace(w);
    w.write_file(o.trace);
  }
  if (o.json) {
    print_json_document("bench " + o.collective, rows);
  } else {
    std::cout << fmt::format("# {} on {} ({} x {}), {} ranks, {} mode; sizes as nccl-tests (busbw = algbw x {:.3f})\n",
                             o.collective, node.name, node.num_chips(), node.chip.name, n,
                             o.check ? "functional" : "timing-only", bus_factor(c, n))
              << tab.render();
    if (!o.trace.empty()) std::cout << "trace written to " << o.trace << '\n';
  }
  return all_ok ? 0 : 1;
}

}  // namespace ppu::cli
