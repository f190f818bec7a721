#include "ccl/FlowSim.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "arch/Error.hpp"

namespace ppu::ccl {

namespace {
constexpr double kInf = std::numeric_limits<double>::infinity();
}  // namespace

int FlowSim::add_resource(std::string name, double capacity_bytes_per_s) {
  PPU_CHECK(capacity_bytes_per_s > 0 && std::isfinite(capacity_bytes_per_s), "resource capacity must be positive");
  names_.push_back(std::move(name));
  capacity_.push_back(capacity_bytes_per_s);
  return static_cast<int>(capacity_.size()) - 1;
}

void FlowSim::start(double at_s, std::vector<int> resources, double bytes, double latency_s, uint64_t tag) {
  std::vector<std::pair<int, double>> rw;
  for (int r : resources) rw.push_back({r, 1.0});
  start_weighted(at_s, std::move(rw), bytes, latency_s, tag);
}

void FlowSim::start_weighted(double at_s, std::vector<std::pair<int, double>> resources, double bytes, double latency_s,
                             uint64_t tag) {
  PPU_CHECK(bytes >= 0 && latency_s >= 0 && std::isfinite(bytes) && std::isfinite(latency_s) && std::isfinite(at_s),
            "flow bytes and latency must be finite and non-negative");
  PPU_CHECK(bytes == 0 || !resources.empty(), "a flow that moves bytes needs a resource");
  std::sort(resources.begin(), resources.end());
  Flow f;
  for (auto [r, w] : resources) {
    PPU_CHECK(r >= 0 && r < num_resources() && w > 0, "unknown resource or non-positive weight");
    if (!f.resources.empty() && f.resources.back() == r) {
      f.weights.back() += w;
    } else {
      f.resources.push_back(r);
      f.weights.push_back(w);
    }
  }
  f.bytes_total = f.remaining = bytes;
  f.tag = tag;
  f.seq = seq_++;
  const double t = std::max(at_s, now_) + latency_s;
  pending_.push_back({{t, f.seq}, std::move(f)});
  std::push_heap(pending_.begin(), pending_.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
}

void FlowSim::advance(double t) {
  const double dt = t - now_;
  if (dt > 0)
    for (Flow& f : active_) f.remaining = std::max(0.0, f.remaining - f.rate * dt);
  now_ = std::max(now_, t);
}

void FlowSim::recompute_rates() {
  // Progressive filling: raise every unfrozen flow's rate together until a resource is full; the
  // flows crossing it freeze at that rate; repeat. Weighted: a resource r with capacity c_r and
  // unfrozen weight W_r fills at rate c_r / W_r.
  rates_dirty_ = false;
  const size_t nr = capacity_.size();
  std::vector<double> cap(capacity_), weight(nr, 0.0);
  std::vector<int> count(nr, 0);
  std::vector<char> frozen(active_.size(), 0);
  size_t left = 0;
  for (size_t i = 0; i < active_.size(); ++i) {
    if (active_[i].resources.empty()) {
      active_[i].rate = kInf;
      frozen[i] = 1;
      continue;
    }
    ++left;
    for (size_t k = 0; k < active_[i].resources.size(); ++k) {
      const auto r = static_cast<size_t>(active_[i].resources[k]);
      ++count[r];
      weight[r] += active_[i].weights[k];
    }
  }
  // The flows crossing each resource, in active_ order (CSR): a filling step visits only the flows
  // of its tight resource, in the order a scan of active_ would, so the sums round the same way.
  std::vector<size_t> first(nr + 1, 0), fill(nr, 0), crossing;
  for (size_t r = 0; r < nr; ++r) first[r + 1] = first[r] + static_cast<size_t>(count[r]);
  crossing.resize(first[nr]);
  for (size_t i = 0; i < active_.size(); ++i)
    for (int r : active_[i].resources) {
      const auto ur = static_cast<size_t>(r);
      crossing[first[ur] + fill[ur]++] = i;
    }
  while (left > 0) {
    double share = kInf;
    int tight = -1;
    for (size_t r = 0; r < nr; ++r)
      if (count[r] > 0 && cap[r] / weight[r] < share) share = cap[r] / weight[r], tight = static_cast<int>(r);
    PPU_CHECK(tight >= 0, "progressive filling found no resource");
    share = std::max(share, 0.0);
    const auto ut = static_cast<size_t>(tight);
    for (size_t k0 = first[ut]; k0 < first[ut + 1]; ++k0) {
      const size_t i = crossing[k0];
      if (frozen[i]) continue;
      const auto& rs = active_[i].resources;
      frozen[i] = 1;
      --left;
      active_[i].rate = share;
      for (size_t k = 0; k < rs.size(); ++k) {
        const auto r = static_cast<size_t>(rs[k]);
        cap[r] -= share * active_[i].weights[k];
        weight[r] -= active_[i].weights[k];
        --count[r];
      }
    }
  }
}

std::optional<FlowSim::Completion> FlowSim::next() {
  auto heap_cmp = [](const auto& a, const auto& b) { return a.first > b.first; };
  for (;;) {
    if (rates_dirty_) recompute_rates();
    const double t_pending = pending_.empty() ? kInf : pending_.front().first.first;
    double t_done = kInf;
    size_t best = 0;
    for (size_t i = 0; i < active_.size(); ++i) {
      const Flow& f = active_[i];
      const double t = f.remaining <= 0 ? now_ : (f.rate > 0 ? now_ + f.remaining / f.rate : kInf);
      if (t < t_done || (t == t_done && f.seq < active_[best].seq)) t_done = t, best = i;
    }
    if (t_done == kInf && t_pending == kInf) {
      if (!active_.empty()) {
        // A flow whose bytes / rate overflows a double: a bandwidth too small for the work, which
        // only a NodeSpec or resource built in code can have (preset files are range-checked).
        const Flow& f = active_[best];
        const auto r = static_cast<size_t>(f.resources.front());
        throw UserError(fmt::format("a flow over resource '{}' ({:g} B/s) can never finish: {:g} bytes left at "
                                    "{:g} B/s take longer than a double can count; the resource's bandwidth is too "
                                    "small",
                                    names_[r], capacity_[r], f.remaining, f.rate));
      }
      return std::nullopt;
    }
    if (t_done <= t_pending) {
      advance(t_done);
      Flow f = std::move(active_[best]);
      active_.erase(active_.begin() + static_cast<std::ptrdiff_t>(best));
      rates_dirty_ = true;
      if (recording_ && !f.resources.empty())
        records_.push_back({std::move(f.resources), f.bytes_total, f.start_s, now_, f.tag});
      return Completion{f.tag, now_};
    }
    advance(t_pending);
    std::pop_heap(pending_.begin(), pending_.end(), heap_cmp);
    Flow f = std::move(pending_.back().second);
    pending_.pop_back();
    f.start_s = now_;
    active_.push_back(std::move(f));
    rates_dirty_ = true;
  }
}

}  // namespace ppu::ccl
