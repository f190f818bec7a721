#include "cluster/Planner.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "arch/Error.hpp"
#include "sim/FunctionalExecutor.hpp"

namespace ppu::cluster {

namespace {

bool valid_pp(int64_t layers, int pp) {
  if (pp > layers) return false;
  const int64_t k = (layers + pp - 1) / pp;
  return k * pp - layers <= 2 && k >= 1 && (k * pp - layers == 0 || k > 1);
}

std::string signed_ms(double s) { return fmt::format("{:+.0f} ms", s * 1e3); }

// Why `a` beat `b`: the breakdown items that differ most.
std::string compare(const TrainingResult& a, const TrainingResult& b) {
  std::vector<std::pair<double, std::string>> diffs;
  std::set<std::string> keys;
  for (const auto& [k, v] : a.breakdown) keys.insert(k);
  for (const auto& [k, v] : b.breakdown) keys.insert(k);
  for (const auto& k : keys) {
    const double va = a.breakdown.count(k) ? a.breakdown.at(k) : 0, vb = b.breakdown.count(k) ? b.breakdown.at(k) : 0;
    if (std::abs(va - vb) > 1e-4 * a.iteration_s) diffs.emplace_back(va - vb, k);
  }
  std::sort(diffs.begin(), diffs.end(), [](const auto& x, const auto& y) { return std::abs(x.first) > std::abs(y.first); });
  std::string s;
  for (size_t i = 0; i < diffs.size() && i < 3; ++i)
    s += (s.empty() ? "" : ", ") + fmt::format("{} {}", diffs[i].second, signed_ms(diffs[i].first));
  return s.empty() ? "the same breakdown" : s;
}

}  // namespace

Plan plan_training(const ModelConfig& m, const ClusterSpec& c, const PlanOptions& p, NetworkModel& net,
                   WorkloadCache& cache) {
  const auto wall0 = std::chrono::steady_clock::now();
  auto say = [&](const std::string& s) {
    if (p.progress) p.progress(s);
  };
  const int64_t chips = p.chips > 0 ? p.chips : c.num_chips();
  if (chips > c.num_chips())
    throw UserError(fmt::format("plan: {} chips asked for, but cluster '{}' has {}", chips, c.name, c.num_chips()));
  if (p.seq_len < 1 || p.seq_len > m.max_position_embeddings)
    throw UserError(fmt::format("plan: sequence length {}; valid: 1 to model '{}''s {} positions", p.seq_len, m.name,
                                m.max_position_embeddings));
  const ChipSpec& chip = c.node.chip;
  std::vector<int> tps, pps, cps{1};
  for (int t = 1; t <= c.chips_per_node(); ++t)
    if (m.num_heads % t == 0 && m.num_kv_heads % t == 0) tps.push_back(t);
  for (int q = 1; q <= std::min<int64_t>(m.num_layers, 128); ++q)
    if (valid_pp(m.num_layers, q)) pps.push_back(q);
  if (p.seq_len >= 16384)
    for (int q = 2; q <= 32; q *= 2)
      if (p.seq_len % (2 * q) == 0) cps.push_back(q);

  Plan plan;
  std::map<std::pair<int, int>, WeightShares> shares;
  std::vector<Layout> fitting;
  double closest = 1e300;
  for (int tp : tps)
    for (int pp : pps)
      for (int cp : cps) {
        const int64_t tpc = int64_t{tp} * pp * cp;
        if (chips % tpc != 0) continue;
        const int dp = static_cast<int>(chips / tpc);
        int64_t gb = p.global_batch;
        if (gb == 0) gb = std::max<int64_t>(1, ((int64_t{4} << 20) / p.seq_len + dp - 1) / dp) * dp;
        if (gb % dp != 0) continue;
        std::vector<int> eps{1};
        if (m.is_moe()) {
          eps.clear();
          for (int e = tp; e <= std::min<int64_t>(m.num_experts, 256); e *= 2)
            if (m.num_experts % e == 0 && (int64_t{tp} * dp) % e == 0) eps.push_back(e);
          if (eps.empty()) continue;
        }
        for (int ep : eps)
          for (int64_t mb : {1, 2, 4}) {
            if ((gb / dp) % mb != 0) continue;
            for (int v : {1, 2}) {
              if (v > 1 && (pp == 1 || (m.num_layers / pp) % v != 0 || m.num_layers % pp != 0)) continue;
              for (int zero : {1, 3}) {
                Layout l;
                l.tp = tp, l.pp = pp, l.dp = dp, l.cp = cp, l.ep = ep, l.sp = tp > 1, l.virtual_stages = v;
                l.micro_batch = mb, l.global_batch = gb, l.seq_len = p.seq_len, l.zero = zero;
                l.grad_reduce_bytes = p.grad_reduce_bytes;
                l.attention_style = p.attention_style;
                ++plan.considered;
                auto it = shares.find({tp, ep});
                if (it == shares.end()) it = shares.emplace(std::pair{tp, ep}, weight_shares(m, chip, tp, ep)).first;
                // The least recomputation that fits: none, else full for 1, 2, ... layers per stage, else all.
                // (Selective recomputation redoes the attention core, which a fused attention does not keep.)
                l = least_recomputation(m, chip, l, it->second);
                const MemoryUse mem = training_memory(m, chip, l, it->second);
                const bool fit = mem.fits();
                if (fit) fitting.push_back(l);
                else if (mem.total() < closest) closest = mem.total(), plan.closest_miss = mem, plan.closest_layout = l;
                if (fit) break;  // ZeRO-3 only where ZeRO-1 does not fit
                ++plan.rejected_memory;
              }
            }
          }
      }
  say(fmt::format("{} layouts enumerated, {} fit in {:.0f} GB per chip", plan.considered, fitting.size(),
                  chip.hbm_size.value / 1e9));
  if (fitting.empty()) {
    plan.explanation = fmt::format("no layout fits: the closest ({}) needs {:.1f} GB per chip of {:.1f} GB (short by {:.1f} GB)",
                                   plan.closest_layout.describe(), plan.closest_miss.total() / 1e9,
                                   plan.closest_miss.capacity / 1e9, plan.closest_miss.shortfall() / 1e9);
    plan.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
    return plan;
  }
  const int threads = p.threads > 0 ? p.threads : default_host_threads();
  // Extracts every distinct workload of `layouts` on all threads, then times the layouts one by one.
  auto evaluate = [&](const std::vector<Layout>& layouts) {
    std::vector<WorkloadOptions> todo;
    std::set<std::string> seen;
    for (const Layout& l : layouts) {
      WorkloadOptions o = workload_options(l);
      if (seen.insert(o.key()).second) todo.push_back(o);
    }
    say(fmt::format("timing {} distinct per-chip workloads (kernels on the {} timing engine), then {} layouts", todo.size(),
                    chip.name, layouts.size()));
    std::atomic<size_t> next{0};
    std::exception_ptr failure;
    std::mutex fail_mu;  // guards failure, done and last_report
    size_t done = 0;
    const auto start = std::chrono::steady_clock::now();
    auto last_report = start;
    std::vector<std::thread> pool;
    for (int t = 0; t < std::min<int>(threads, static_cast<int>(todo.size())); ++t)
      pool.emplace_back([&] {
        for (size_t i; (i = next++) < todo.size();) {
          try {
            cache.get(m, chip, todo[i]);
          } catch (...) {
            std::lock_guard<std::mutex> lock(fail_mu);
            if (!failure) failure = std::current_exception();
          }
          // A progress line with an estimate of the time left, at most every 5 s.
          std::lock_guard<std::mutex> lock(fail_mu);
          ++done;
          const auto now = std::chrono::steady_clock::now();
          if (now - last_report >= std::chrono::seconds(5) && done < todo.size()) {
            last_report = now;
            const double spent = std::chrono::duration<double>(now - start).count();
            say(fmt::format("  {} of {} workloads timed, about {:.0f} s left", done, todo.size(),
                            spent / static_cast<double>(done) * static_cast<double>(todo.size() - done)));
          }
        }
      });
    for (auto& t : pool) t.join();
    if (failure) std::rethrow_exception(failure);
    for (const Layout& l : layouts) plan.ranked.push_back(simulate_training(m, c, l, net, cache, chips));
  };
  // Phase 1: every fitting layout at its smallest micro-batch. Phase 2: larger micro-batches for the
  // three fastest, since a micro-batch's workload costs more to time the larger it is.
  auto same_but_mb = [](const Layout& a, const Layout& b) {
    return a.tp == b.tp && a.pp == b.pp && a.dp == b.dp && a.cp == b.cp && a.ep == b.ep && a.virtual_stages == b.virtual_stages &&
           a.zero == b.zero;
  };
  std::vector<Layout> first, later;
  for (const Layout& l : fitting) {
    bool smaller = false;
    for (const Layout& o : fitting) smaller = smaller || (same_but_mb(l, o) && o.micro_batch < l.micro_batch);
    (smaller ? later : first).push_back(l);
  }
  if (p.max_layouts > 0 && static_cast<int>(first.size()) > p.max_layouts) first.resize(static_cast<size_t>(p.max_layouts));
  evaluate(first);
  std::stable_sort(plan.ranked.begin(), plan.ranked.end(),
                   [](const TrainingResult& a, const TrainingResult& b) { return a.iteration_s < b.iteration_s; });
  std::vector<Layout> second;
  for (size_t i = 0; i < plan.ranked.size() && i < 3; ++i)
    for (const Layout& l : later)
      if (same_but_mb(l, plan.ranked[i].layout)) second.push_back(l);
  if (!second.empty()) evaluate(second);
  std::stable_sort(plan.ranked.begin(), plan.ranked.end(),
                   [](const TrainingResult& a, const TrainingResult& b) { return a.iteration_s < b.iteration_s; });
  const TrainingResult& best = plan.ranked.front();
  plan.explanation = fmt::format("{} is fastest: {:.2f} s per iteration, {:.1f}% MFU, {:.1f} of {:.1f} GB per chip",
                                 best.layout.describe(), best.iteration_s, 100 * best.mfu, best.memory.total() / 1e9,
                                 best.memory.capacity / 1e9);
  if (plan.ranked.size() > 1) {
    const TrainingResult& second = plan.ranked[1];
    plan.explanation += fmt::format("; against the runner-up {} ({:.2f} s): {}", second.layout.describe(), second.iteration_s,
                                    compare(best, second));
  }
  // The best layout with another TP degree, to show what the TP choice is worth.
  for (const TrainingResult& r : plan.ranked)
    if (r.layout.tp != best.layout.tp) {
      plan.explanation += fmt::format("; the best with TP {} ({}) takes {:.2f} s: {}", r.layout.tp, r.layout.describe(),
                                      r.iteration_s, compare(best, r));
      break;
    }
  if (plan.rejected_memory > 0)
    plan.explanation += fmt::format("; {} layouts did not fit in memory at any recomputation level", plan.rejected_memory);
  plan.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  return plan;
}

}  // namespace ppu::cluster
