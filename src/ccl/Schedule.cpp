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

  auto local_phase = [&](size_t i, double t) {
    const Op& o = s.ops[i];
    const double bytes = static_cast<double>(o.count * elem_bytes);
    double local_bytes = 0;
    if (o.type == OpType::kReduce) {
      if (!o.via_switch) local_bytes = bytes * static_cast<double>(o.srcs.size() + 1);
    } else {
      for (const Region& d : o.dsts)
        if (chip(d) == chip(o.srcs[0]) && (d.buf != o.srcs[0].buf || d.offset != o.srcs[0].offset || d.rank != o.srcs[0].rank))
          local_bytes += 2 * bytes;
    }
    const int mem = fabric.memory(chip(o.dsts[0]));
    sim.start(t, local_bytes > 0 ? std::vector<int>{mem} : std::vector<int>{}, local_bytes, 0.0, i * 2 + 1);
  };
  auto launch = [&](size_t i, double t) {
    const Op& o = s.ops[i];
    const double bytes = static_cast<double>(o.count * elem_bytes) * wire;
    int flows = 0;
    if (o.via_switch) {
      PPU_CHECK(fabric.has_switch(), "a switch op on a node without a switch");
      std::vector<int> res;
      double lat = node.link_latency.value + step;
      if (o.type == OpType::kReduce) {
        PPU_CHECK(fabric.has_switch_reduction(), "an in-switch reduction on a switch that does not reduce");
        for (const Region& r : o.srcs) {
          res.push_back(fabric.switch_up(chip(r)));
          res.push_back(fabric.switch_reduction(chip(r)));
        }
        res.push_back(fabric.switch_down(chip(o.dsts[0])));
        lat += node.switch_reduction_latency.value;
      } else {
        res.push_back(fabric.switch_up(chip(o.srcs[0])));
        for (const Region& d : o.dsts)
          if (chip(d) != chip(o.srcs[0])) res.push_back(fabric.switch_down(chip(d)));
      }
      sim.start(t, std::move(res), bytes, lat, i * 2);
      flows = 1;
    } else if (o.type == OpType::kCopy) {
      const int a = chip(o.srcs[0]);
      for (const Region& d : o.dsts)
        if (chip(d) != a) {
          sim.start(t, fabric.path(a, chip(d)), bytes, fabric.path_latency_s(a, chip(d)) + step, i * 2);
          ++flows;
        }
    } else {
      const int b = chip(o.dsts[0]);
      for (const Region& r : o.srcs)
        if (chip(r) != b) {
          sim.start(t, fabric.path(chip(r), b), bytes, fabric.path_latency_s(chip(r), b) + step, i * 2);
          ++flows;
        }
    }
    flows_left[i] = flows;
    if (flows == 0) local_phase(i, t);
  };

  for (size_t i = 0; i < n; ++i)
    if (waiting[i] == 0) launch(i, t0);
  size_t done = 0;
  while (auto c = sim.next()) {
    const size_t i = static_cast<size_t>(c->tag / 2);
    if (i >= n) continue;  // a flow of an earlier schedule on a shared trace FlowSim
    if (c->tag % 2 == 0) {
      if (--flows_left[i] == 0) local_phase(i, c->time_s);
      continue;
    }
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

namespace {

constexpr int64_t kBlock = 2048;

// dst[0:count] = srcs[0] (op) srcs[1] (op) ... computed in fp32, rounded once to `t`.
void reduce_into(DType t, ReduceOp op, const std::vector<const unsigned char*>& srcs, unsigned char* dst, int64_t count) {
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
        case ReduceOp::kSum: for (int64_t e = 0; e < m; ++e) acc[e] += a[e]; break;
        case ReduceOp::kMax: for (int64_t e = 0; e < m; ++e) acc[e] = std::max(acc[e], a[e]); break;
        case ReduceOp::kMin: for (int64_t e = 0; e < m; ++e) acc[e] = std::min(acc[e], a[e]); break;
        default: PPU_CHECK(false, "reduce op");
      }
    }
    if (t == DType::kF32) std::memcpy(dst + base * es, acc, static_cast<size_t>(m) * sizeof(float));
    else convert_from_f32(t, acc, dst + base * es, m);
  }
}

}  // namespace

void run_schedule(const Schedule& s, const std::vector<RankData>& data, DType dtype, ReduceOp op, int threads) {
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
      const unsigned char* src = ptr(o.srcs[0]);
      for (const Region& d : o.dsts) {
        unsigned char* dst = ptr(d);
        if (dst != src) std::memcpy(dst, src, bytes);
      }
      return;
    }
    std::vector<const unsigned char*> srcs;
    for (const Region& r : o.srcs) srcs.push_back(ptr(r));
    reduce_into(dtype, op, srcs, ptr(o.dsts[0]), o.count);
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
