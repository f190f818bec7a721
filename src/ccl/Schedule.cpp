#include "ccl/Schedule.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>

#include "arch/Error.hpp"

namespace ppu::ccl {

ScheduleTiming time_schedule(const Schedule& s, const Fabric& fabric, const std::vector<int>& chips, int64_t elem_bytes,
                             double start_s, Protocol protocol, FlowSim* trace_sim) {
  FlowSim local;
  FlowSim& sim = trace_sim ? *trace_sim : local;
  if (sim.num_resources() == 0) fabric.add_to(sim);
  PPU_CHECK(sim.num_resources() == static_cast<int>(fabric.resources().size()), "FlowSim holds other resources");
  const NodeSpec& node = fabric.node();
  const double t0 = start_s + node.collective_latency.value;
  const bool ll = protocol == Protocol::kLowLatency;
  PPU_CHECK(!ll || node.has_low_latency_protocol(), "low-latency protocol on a node without one");
  const double step = ll ? node.ll_step_latency.value : node.step_latency.value;
  const double wire = ll ? node.link_efficiency.value / node.ll_efficiency.value : 1.0;
  const size_t n = s.ops.size();
  ScheduleTiming out;
  out.rank_end_s.assign(chips.size(), t0);
  out.end_s = t0;
  if (n == 0) return out;

  // Dependents in CSR form, and how many deps each op still waits for.
  std::vector<int32_t> waiting(n, 0), first(n + 1, 0), next;
  for (size_t i = 0; i < n; ++i)
    for (int32_t d : s.ops[i].deps) {
      PPU_CHECK(d >= 0 && static_cast<size_t>(d) < i, "an op depends on a later op");
      ++first[static_cast<size_t>(d) + 1];
      ++waiting[i];
    }
  for (size_t i = 0; i < n; ++i) first[i + 1] += first[i];
  next.resize(static_cast<size_t>(first[n]));
  {
    std::vector<int32_t> fill(first.begin(), first.end() - 1);
    for (size_t i = 0; i < n; ++i)
      for (int32_t d : s.ops[i].deps) next[static_cast<size_t>(fill[static_cast<size_t>(d)]++)] = static_cast<int32_t>(i);
  }
  std::vector<int32_t> flows_left(n, 0);
  auto chip = [&](const Region& r) { return chips[static_cast<size_t>(r.rank)]; };

  // Memory traffic of an op on its destination chip, in units of its bytes: a reduction reads every
  // source and writes the result (an in-switch reduction only writes), a copy reads and writes
  // locally or only writes what arrives.
  auto launch = [&](size_t i, double t) {
    const Op& o = s.ops[i];
    const double payload = static_cast<double>(o.count * elem_bytes);
    const double bytes = payload * wire;
    int flows = 0;
    auto start = [&](std::vector<std::pair<int, double>> res, double b, double lat) {
      sim.start_weighted(t, std::move(res), b, lat, i);
      ++flows;
    };
    auto on_path = [&](int a, int b2, double mem_weight) {
      std::vector<std::pair<int, double>> res;
      for (int r : fabric.path(a, b2)) res.push_back({r, 1.0});
      // The destination's memory sees the payload (not the protocol's extra wire bytes).
      res.push_back({fabric.memory(b2), mem_weight / wire});
      return res;
    };
    if (o.via_switch) {
      PPU_CHECK(fabric.has_switch(), "a switch op on a node without a switch");
      std::vector<std::pair<int, double>> res;
      double lat = node.link_latency.value + step;
      if (o.type == OpType::kReduce) {
        // Every source's contribution goes up its port, the switch reduces it (one resource for the
        // whole switch), the result comes down to every destination. With several destinations the
        // first one also stores the result back for the switch to multicast (NVLS all-reduce: a
        // reduce-load then a multicast store), one more pass over its up and down port.
        PPU_CHECK(fabric.has_switch_reduction(), "an in-switch reduction on a switch that does not reduce");
        for (const Region& r : o.srcs) res.push_back({fabric.switch_up(chip(r)), 1.0});
        res.push_back({fabric.switch_reduction(), 1.0});
        for (const Region& d : o.dsts) res.push_back({fabric.switch_down(chip(d)), 1.0});
        if (o.dsts.size() > 1) {
          res.push_back({fabric.switch_up(chip(o.dsts[0])), 1.0});
          res.push_back({fabric.switch_down(chip(o.dsts[0])), 1.0});
        }
        lat += node.switch_reduction_latency.value;
      } else {
        res.push_back({fabric.switch_up(chip(o.srcs[0])), 1.0});
        for (const Region& d : o.dsts)
          if (chip(d) != chip(o.srcs[0])) res.push_back({fabric.switch_down(chip(d)), 1.0});
      }
      start(std::move(res), bytes, lat);
    } else if (o.type == OpType::kCopy) {
      const int a = chip(o.srcs[0]);
      for (const Region& d : o.dsts) {
        if (chip(d) != a) start(on_path(a, chip(d), 1.0), bytes, fabric.path_latency_s(a, chip(d)) + step);
        else if (d.rank != o.srcs[0].rank || d.buf != o.srcs[0].buf || d.offset != o.srcs[0].offset)
          start({{fabric.memory(a), 2.0}}, payload, 0.0);
      }
    } else {
      const int b2 = chip(o.dsts[0]);
      int remote = 0;
      for (const Region& r : o.srcs) remote += chip(r) != b2;
      const double mem = static_cast<double>(o.srcs.size() + 1);
      for (const Region& r : o.srcs)
        if (chip(r) != b2) start(on_path(chip(r), b2, mem / remote), bytes, fabric.path_latency_s(chip(r), b2) + step);
      if (remote == 0) start({{fabric.memory(b2), mem}}, payload, 0.0);
    }
    flows_left[i] = flows;
    if (flows == 0) sim.start(t, {}, 0.0, 0.0, i);  // nothing to move: done at once
  };

  for (size_t i = 0; i < n; ++i)
    if (waiting[i] == 0) launch(i, t0);
  size_t done = 0;
  std::vector<char> finished(n, 0);
  while (auto c = sim.next()) {
    const size_t i = static_cast<size_t>(c->tag);
    if (i >= n || finished[i]) continue;  // a flow of an earlier schedule on a shared trace FlowSim
    if (flows_left[i] > 1) {
      --flows_left[i];
      continue;
    }
    finished[i] = 1;
    ++done;
    const Op& o = s.ops[i];
    for (const Region& r : o.srcs) out.rank_end_s[static_cast<size_t>(r.rank)] = std::max(out.rank_end_s[static_cast<size_t>(r.rank)], c->time_s);
    for (const Region& r : o.dsts) out.rank_end_s[static_cast<size_t>(r.rank)] = std::max(out.rank_end_s[static_cast<size_t>(r.rank)], c->time_s);
    out.end_s = std::max(out.end_s, c->time_s);
    for (int32_t k = first[i]; k < first[i + 1]; ++k) {
      const size_t j = static_cast<size_t>(next[static_cast<size_t>(k)]);
      if (--waiting[j] == 0) launch(j, c->time_s);
    }
  }
  PPU_CHECK(done == n, "schedule did not finish (a dependency cycle)");
  return out;
}

ScheduleWork schedule_work(const Schedule& s) {
  ScheduleWork w;
  for (const Op& o : s.ops) w.flows += static_cast<int64_t>(std::max(o.srcs.size(), o.dsts.size()));
  w.in_flight = std::min(w.flows, s.connections * std::max(1, s.pipeline_depth));
  return w;
}

namespace {

constexpr int64_t kBlock = 2048;

// dsts[*][0:count] = srcs[0] (op) srcs[1] (op) ... computed in fp32, rounded once to `t`. Block by
// block every source is read before any destination is written, so destinations may be sources.
void reduce_into(DType t, ReductionOp op, const std::vector<const unsigned char*>& srcs,
                 const std::vector<unsigned char*>& dsts, int64_t count) {
  const int64_t es = dtype_size_bytes(t);
  float acc[kBlock], tmp[kBlock];
  for (int64_t base = 0; base < count; base += kBlock) {
    const int64_t m = std::min(kBlock, count - base);
    const float* a;
    if (t == DType::kF32) {
      std::memcpy(acc, srcs[0] + base * es, static_cast<size_t>(m) * sizeof(float));
    } else {
      convert_to_f32(t, srcs[0] + base * es, acc, m);
    }
    for (size_t k = 1; k < srcs.size(); ++k) {
      if (t == DType::kF32) {
        a = reinterpret_cast<const float*>(srcs[k] + base * es);
      } else {
        convert_to_f32(t, srcs[k] + base * es, tmp, m);
        a = tmp;
      }
      switch (op) {
        case ReductionOp::kSum: for (int64_t e = 0; e < m; ++e) acc[e] += a[e]; break;
        case ReductionOp::kMax: for (int64_t e = 0; e < m; ++e) acc[e] = std::max(acc[e], a[e]); break;
        case ReductionOp::kMin: for (int64_t e = 0; e < m; ++e) acc[e] = std::min(acc[e], a[e]); break;
        default: PPU_CHECK(false, "reduce op");
      }
    }
    for (unsigned char* dst : dsts) {
      if (t == DType::kF32) std::memcpy(dst + base * es, acc, static_cast<size_t>(m) * sizeof(float));
      else convert_from_f32(t, acc, dst + base * es, m);
    }
  }
}

}  // namespace

void run_schedule(const Schedule& s, const std::vector<RankData>& data, DType dtype, ReductionOp op, int threads) {
  const int64_t es = dtype_size_bytes(dtype);
  auto ptr = [&](const Region& r) {
    const RankData& d = data[static_cast<size_t>(r.rank)];
    void* base = r.buf == BufferRole::kSend ? d.send : r.buf == BufferRole::kRecv ? d.recv : d.scratch;
    PPU_CHECK(base != nullptr, "a schedule touches a buffer the rank does not have");
    return static_cast<unsigned char*>(base) + r.offset * es;
  };
  auto exec = [&](const Op& o) {
    if (o.count == 0) return;
    const size_t bytes = static_cast<size_t>(o.count * es);
    if (o.type == OpType::kCopy) {
      // Block by block to every destination, so each source block is read from cache after the first.
      const unsigned char* src = ptr(o.srcs[0]);
      constexpr size_t kCopyBlock = size_t{64} << 10;
      for (size_t base = 0; base < bytes; base += kCopyBlock) {
        const size_t m = std::min(kCopyBlock, bytes - base);
        for (const Region& d : o.dsts) {
          unsigned char* dst = ptr(d);
          if (dst != src) std::memcpy(dst + base, src + base, m);
        }
      }
      return;
    }
    std::vector<const unsigned char*> srcs;
    std::vector<unsigned char*> dsts;
    for (const Region& r : o.srcs) srcs.push_back(ptr(r));
    for (const Region& r : o.dsts) dsts.push_back(ptr(r));
    reduce_into(dtype, op, srcs, dsts, o.count);
  };
  // Kahn's algorithm by levels: ops of one level are independent of each other.
  const size_t n = s.ops.size();
  std::vector<int32_t> level(n, 0);
  int32_t levels = 0;
  for (size_t i = 0; i < n; ++i) {
    for (int32_t d : s.ops[i].deps) level[i] = std::max(level[i], level[static_cast<size_t>(d)] + 1);
    levels = std::max(levels, level[i] + 1);
  }
  std::vector<std::vector<int32_t>> by_level(static_cast<size_t>(levels));
  for (size_t i = 0; i < n; ++i) by_level[static_cast<size_t>(level[i])].push_back(static_cast<int32_t>(i));
  for (const auto& ops : by_level) {
    int64_t bytes = 0;
    for (int32_t i : ops) bytes += s.ops[static_cast<size_t>(i)].count * es;
    const int t = std::min<int>(threads, static_cast<int>(ops.size()));
    if (t <= 1 || bytes < (int64_t{1} << 20)) {
      for (int32_t i : ops) exec(s.ops[static_cast<size_t>(i)]);
      continue;
    }
    std::atomic<size_t> next{0};
    auto worker = [&] {
      for (size_t k; (k = next.fetch_add(1)) < ops.size();) exec(s.ops[static_cast<size_t>(ops[k])]);
    };
    std::vector<std::thread> pool;
    for (int w = 1; w < t; ++w) pool.emplace_back(worker);
    worker();
    for (auto& th : pool) th.join();
  }
}

}  // namespace ppu::ccl
