// Collectives benchmark: predicted 8-GPU all-reduce bus bandwidth on the H100 and A100 node presets
// against NCCL measurements (one set of link and protocol parameters per node, every size), and the
// host speed of a functional all-reduce against a plain reduction loop over the same buffers.
//
//   bench_collectives              # tables
//   bench_collectives --markdown   # the same as markdown (scripts/validate.sh -> docs/validation.md)
//   bench_collectives --fidelity   # only the fidelity table (no 2 GB functional run)
//
// Exit status is 0 even when a case misses its target: this prints measurements, it is not a test.
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <iostream>
#include <memory>
#include <thread>

#include "CollectiveReference.hpp"
#include "ccl/Communicator.hpp"
#include "report/Table.hpp"

using namespace ppu;
using namespace ppu::ccl;

namespace {

struct NodeRig {
  NodeSpec node;
  std::vector<std::unique_ptr<Device>> devs;
  std::unique_ptr<Communicator> comm;
  NodeRig(const std::string& name, ExecMode mode, int ranks = 0) : node(load_node(name)) {
    std::vector<Device*> ptrs;
    const int n = ranks > 0 ? ranks : node.num_chips();
    for (int r = 0; r < n; ++r) {
      devs.push_back(std::make_unique<Device>(node.chip, mode));
      ptrs.push_back(devs.back().get());
    }
    comm = std::make_unique<Communicator>(node, ptrs);
  }
};

std::string size_text(double b) {
  if (b >= (1 << 30)) return fmt::format("{:g} GB", b / (1 << 30));
  return fmt::format("{:g} MB", b / (1 << 20));
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  bool md = false, fidelity_only = false;
  for (int i = 1; i < argc; ++i) {
    md = md || std::strcmp(argv[i], "--markdown") == 0;
    fidelity_only = fidelity_only || std::strcmp(argv[i], "--fidelity") == 0;
  }
  Table t({"node", "size", "algorithm/protocol", "predicted busbw GB/s", "measured GB/s", "error", "target", "ok", "source"});
  int pass = 0, total = 0;
  double worst = 0;
  std::map<std::string, std::unique_ptr<NodeRig>> rigs;
  std::string why;
  for (const auto& c : bench::allreduce_cases()) {
    auto& rig = rigs[c.node];
    if (!rig) rig = std::make_unique<NodeRig>(c.node, ExecMode::kTimingOnly);
    const int64_t count = static_cast<int64_t>(c.size_bytes) / 4;
    std::vector<Buffer> bufs;
    for (auto& d : rig->devs) bufs.push_back(d->alloc(DType::kF32, count, "data"));
    CollectiveOptions o;
    if (!c.algorithm.empty()) o.algorithm = *algorithm_from_name(c.algorithm);
    const CollectiveResult r = rig->comm->all_reduce(bufs, bufs, o);  // in place, as nccl-tests -i
    for (size_t i = 0; i < bufs.size(); ++i) rig->devs[i]->free(bufs[i]);
    const double pred = r.busbw_bytes_per_s / 1e9;
    const double err = (pred - c.measured_busbw_gb_s) / c.measured_busbw_gb_s;
    const bool has_target = c.tolerance > 0;
    const bool ok = std::fabs(err) <= c.tolerance;
    if (has_target) {
      pass += ok;
      ++total;
      worst = std::max(worst, std::fabs(err));
    }
    const std::string algo = fmt::format("{}/{}", algorithm_name(r.algorithm), protocol_name(r.protocol));
    t.add_row({c.node, size_text(c.size_bytes), algo, fmt::format("{:.1f}", pred),
               fmt::format("{:.1f}", c.measured_busbw_gb_s), fmt::format("{:+.1f}%", 100 * err),
               has_target ? fmt::format("±{:.0f}%", 100 * c.tolerance) : "-", has_target ? (ok ? "yes" : "NO") : "-",
               c.source});
    if (c.algorithm.empty() && c.tolerance > 0)
      why += fmt::format("- {} {}: {} ({})\n", c.node, size_text(c.size_bytes), algo, r.reason);
  }
  if (md) std::cout << "### 8-GPU all-reduce bus bandwidth (timing-only simulation vs NCCL)\n\n" << t.render_markdown();
  else std::cout << "8-GPU all-reduce bus bandwidth, simulated vs measured\n" << t.render();
  std::cout << fmt::format("\n{} of {} cases within target; worst |error| {:.1f}%.\n\nWhy these algorithms:\n\n{}", pass,
                           total, 100 * worst, why);
  if (fidelity_only) return 0;

  // Functional speed: 256 MB of fp32 per chip, 8 emulated chips, in place.
  const int64_t n = (int64_t{256} << 20) / 4;
  NodeRig rig("zhenwu-8", ExecMode::kFunctional);
  std::vector<Buffer> bufs;
  std::vector<float*> ptrs;
  for (size_t r = 0; r < rig.devs.size(); ++r) {
    bufs.push_back(rig.devs[r]->alloc(DType::kF32, n, "data"));
    ptrs.push_back(static_cast<float*>(bufs.back().data));
    for (int64_t i = 0; i < n; ++i) ptrs.back()[i] = static_cast<float>((i + static_cast<int64_t>(r)) % 7);
  }
  const int ranks = static_cast<int>(ptrs.size());
  const unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  // The plain loop: sum the 8 buffers element by element and write the sum back to all 8, on the same
  // number of host threads.
  // Each measurement is the best of three runs (the machine may be shared).
  constexpr int kReps = 3;
  double loop_s = 1e300;
  for (int rep = 0; rep < kReps; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    for (unsigned w = 0; w < threads; ++w)
      pool.emplace_back([&, w] {
        const int64_t lo = n * w / threads, hi = n * (w + 1) / threads;
        constexpr int64_t kB = 4096;
        float acc[kB];
        for (int64_t b = lo; b < hi; b += kB) {
          const int64_t m = std::min(kB, hi - b);
          for (int64_t i = 0; i < m; ++i) acc[i] = ptrs[0][b + i];
          for (int r = 1; r < ranks; ++r)
            for (int64_t i = 0; i < m; ++i) acc[i] += ptrs[r][b + i];
          for (int r = 0; r < ranks; ++r) std::memcpy(ptrs[r] + b, acc, static_cast<size_t>(m) * 4);
        }
      });
    for (auto& th : pool) th.join();
    loop_s = std::min(loop_s, seconds_since(t0));
  }
  const double loop_bytes = 2.0 * ranks * n * 4;  // read every buffer once, write every buffer once
  // The selector's simulations are cached per size; the first call pays for them, so warm it.
  rig.comm->select(Collective::kAllReduce, n, DType::kF32);
  CollectiveResult r;
  double call_s = 1e300;
  for (int rep = 0; rep < kReps; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    r = rig.comm->all_reduce(bufs, bufs);
    call_s = std::min(call_s, seconds_since(t0));
  }
  // The same schedule's data movement alone (what the call does besides simulating time).
  ScheduleSpec spec;
  spec.collective = Collective::kAllReduce;
  spec.algorithm = r.algorithm;
  spec.ranks = ranks;
  spec.count = n;
  spec.in_place.assign(static_cast<size_t>(ranks), true);
  spec.chunk_elems = static_cast<int64_t>(rig.node.chunk_size.value) / 4;
  spec.pipeline_depth = static_cast<int>(rig.node.pipeline_depth.value);
  spec.channels = static_cast<int>(rig.node.channels.value);
  const Schedule s = build_schedule(spec);
  std::vector<RankData> data;
  for (float* p : ptrs) data.push_back({p, p, nullptr});
  double move_s = 1e300;
  for (int rep = 0; rep < kReps; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    run_schedule(s, data, DType::kF32, ccl::ReductionOp::kSum, static_cast<int>(threads));
    move_s = std::min(move_s, seconds_since(t0));
  }
  // Bytes the schedule moves on the host: per op, sources read plus destinations written.
  double coll_bytes = 0;
  for (const Op& op : s.ops) coll_bytes += static_cast<double>(op.count) * 4 * static_cast<double>(op.srcs.size() + op.dsts.size());
  const double loop_bw = loop_bytes / loop_s;
  Table sp({"what", "host time s", "host bytes moved", "host GB/s", "bandwidth vs loop", "time vs loop"});
  sp.add_row({"plain reduction loop (sum 8 buffers, write back)", fmt::format("{:.3f}", loop_s),
              format_quantity(Dimension::kBytes, loop_bytes), fmt::format("{:.2f}", loop_bw / 1e9), "1", "1"});
  sp.add_row({fmt::format("all-reduce data movement ({}, {} ops)", algorithm_name(r.algorithm), r.ops),
              fmt::format("{:.3f}", move_s), format_quantity(Dimension::kBytes, coll_bytes),
              fmt::format("{:.2f}", coll_bytes / move_s / 1e9), fmt::format("{:.2f}", coll_bytes / move_s / loop_bw),
              fmt::format("{:.2f}", loop_s / move_s)});
  sp.add_row({"whole all_reduce call (data + timing simulation)", fmt::format("{:.3f}", call_s),
              format_quantity(Dimension::kBytes, coll_bytes), fmt::format("{:.2f}", coll_bytes / call_s / 1e9),
              fmt::format("{:.2f}", coll_bytes / call_s / loop_bw), fmt::format("{:.2f}", loop_s / call_s)});
  std::cout << fmt::format("\nFunctional all-reduce, 256 MB fp32 on each of 8 emulated {} chips, {} host threads "
                           "(target: host bandwidth comparable to the loop; best of 3 runs each)\n\n",
                           rig.node.chip.name, threads)
            << (md ? sp.render_markdown() : sp.render());
  return 0;
}
