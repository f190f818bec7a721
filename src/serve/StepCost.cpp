#include "serve/StepCost.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <thread>

#include "arch/Error.hpp"
#include "models/Sampler.hpp"
#include "runtime/Device.hpp"
#include "sim/FunctionalExecutor.hpp"
#include "sim/TimingEngine.hpp"

namespace ppu::serve {

namespace {

// 1, 2, 4, 8, ... and `last` itself.
std::vector<int64_t> rows_grid(int64_t last) {
  std::vector<int64_t> g;
  for (int64_t v = 1; v < last; v *= 2) g.push_back(v);
  g.push_back(last);
  return g;
}

// 0, 16, 32, 64, ... and `last`.
std::vector<int64_t> ctx_grid(int64_t last) {
  std::vector<int64_t> g{0};
  for (int64_t v = 16; v < last; v *= 2) g.push_back(v);
  g.push_back(last);
  return g;
}

// Index i with g[i] <= x <= g[i + 1] (x clamped into the grid), and the weight of g[i + 1].
std::pair<size_t, double> bracket(const std::vector<int64_t>& g, double x) {
  if (g.size() == 1 || x <= static_cast<double>(g.front())) return {0, 0.0};
  if (x >= static_cast<double>(g.back())) return {g.size() - 2, 1.0};
  const auto hi = std::upper_bound(g.begin(), g.end(), x, [](double v, int64_t e) { return v < static_cast<double>(e); });
  const size_t i = static_cast<size_t>(hi - g.begin()) - 1;
  const double w = (x - static_cast<double>(g[i])) / static_cast<double>(g[i + 1] - g[i]);
  return {i, w};
}

template <class F>
double interp1(const std::vector<int64_t>& g, double x, F&& f) {
  const auto [i, w] = bracket(g, x);
  if (g.size() == 1) return f(g[0]);
  const double lo = w < 1.0 ? f(g[i]) : 0.0;
  const double hi = w > 0.0 ? f(g[i + 1]) : 0.0;
  return (1 - w) * lo + w * hi;
}

template <class F>
double interp2(const std::vector<int64_t>& gx, double x, const std::vector<int64_t>& gy, double y, F&& f) {
  return interp1(gx, x, [&](int64_t xv) { return interp1(gy, y, [&](int64_t yv) { return f(xv, yv); }); });
}

bool is_head_kind(const std::string& k) { return k == "logit rows" || k == "lm head" || k == "sampling"; }

}  // namespace

StepCost::StepCost(const ChipSpec& chip, const ModelConfig& cfg, const Qwen3Options& model_options,
                   const StepCostLimits& limits)
    : cfg_(cfg), opt_(model_options), lim_(limits) {
  if (lim_.max_batched_tokens < 1 || lim_.max_num_seqs < 1 || lim_.max_context < 1)
    throw UserError(fmt::format("step cost: max_batched_tokens {}, max_num_seqs {}, max_context {}; each must be at least 1",
                                lim_.max_batched_tokens, lim_.max_num_seqs, lim_.max_context));
  if (opt_.tp_size != 1 || opt_.ep_size != 1)
    throw UserError("step cost: tensor or expert parallelism is not supported by the serving simulation yet (one chip)");
  chip_ = chip;
  chip_.hbm_size.value = 1e18;  // probes of any shape fit; capacity enters no kernel's timing
  timings_ = std::make_shared<TimingCache>();
  workers_ = std::clamp(default_host_threads(), 1, 8);
  {
    Qwen3Options o = opt_;
    o.max_batch = 1;
    o.max_context = 16;
    o.slot_capacity.clear();
    Device dev(chip_, ExecMode::kTimingOnly, 1);
    Qwen3Model m(dev, cfg_, Qwen3Weights::random(0), o);
    weight_bytes_ = m.weight_bytes();
    kv_bytes_per_token_ = static_cast<double>(m.kv_cache_bytes()) / 16.0;
  }
  rows_grid_ = rows_grid(std::max(lim_.max_batched_tokens, lim_.max_num_seqs));
  ctx_grid_ = ctx_grid(lim_.max_context);
}

StepCost::~StepCost() = default;

StepCost::Probe StepCost::run_probe(const Shape& shape, bool graph) const {
  // A fresh device per probe: its clock starts at 0, so the op times (differences of clock readings)
  // round the same whichever thread runs the probe and whatever ran before it.
  Device dev(chip_, ExecMode::kTimingOnly, 1);
  dev.share_timing_cache(timings_);
  Qwen3Options o = opt_;
  o.max_batch = static_cast<int64_t>(shape.size());
  o.slot_capacity.clear();
  for (const auto& [n, past] : shape) o.slot_capacity.push_back(std::max<int64_t>(1, n + past));
  o.max_context = *std::max_element(o.slot_capacity.begin(), o.slot_capacity.end());
  // The forward of a model with `layers` decoder layers, split by kind.
  const auto forward = [&](int64_t layers) {
    ModelConfig c = cfg_;
    c.num_layers = layers;
    Probe p;
    Qwen3Model m(dev, c, Qwen3Weights::random(0), o);
    std::vector<std::vector<int32_t>> seqs;
    for (size_t i = 0; i < shape.size(); ++i) {
      if (shape[i].second > 0) m.assume_past(i, shape[i].second);
      seqs.emplace_back(static_cast<size_t>(shape[i].first), 0);
    }
    const auto before = m.op_times();
    const int64_t resident = dev.bytes_in_use();
    dev.reset_peak_bytes();
    Sampler greedy(SamplerOptions{});
    {
      GraphScope g(dev, graph);
      m.forward_sampled(seqs, greedy);
    }
    p.activation_bytes = dev.peak_bytes_in_use() - resident;
    for (const auto& [kind, s] : m.op_times()) {
      const auto b = before.find(kind);
      const double d = s - (b == before.end() ? 0.0 : b->second);
      if (kind == "attention")
        p.attention_s += d;
      else if (is_head_kind(kind))
        p.head_s += d;
      else
        p.dense_s += d;
    }
    return p;
  };
  // Every decoder layer runs the same kernels (MoE routing is balanced in timing-only mode), which
  // the timing cache times once, and one stream adds their times: the whole model is the one-layer
  // forward plus (layers - 1) times what the second layer adds. Two short forwards instead of one
  // of num_layers layers of kernel launches.
  if (cfg_.num_layers <= 2) return forward(cfg_.num_layers);
  const Probe one = forward(1), two = forward(2);
  const auto extend = [&](double a, double b) { return a + static_cast<double>(cfg_.num_layers - 1) * (b - a); };
  Probe p;
  p.dense_s = extend(one.dense_s, two.dense_s);
  p.head_s = extend(one.head_s, two.head_s);
  p.attention_s = extend(one.attention_s, two.attention_s);
  p.activation_bytes = std::max(one.activation_bytes, two.activation_bytes);
  return p;
}

void StepCost::ensure(const std::vector<Key>& keys) {
  std::vector<Key> missing;
  for (const Key& k : keys)
    if (!probes_by_shape_.count(k) && std::find(missing.begin(), missing.end(), k) == missing.end()) missing.push_back(k);
  if (missing.empty()) return;
  const auto w0 = std::chrono::steady_clock::now();
  std::vector<Probe> out(missing.size());
  const size_t workers = std::min(missing.size(), static_cast<size_t>(workers_));
  if (workers == 1) {
    for (size_t i = 0; i < missing.size(); ++i) out[i] = run_probe(missing[i].first, missing[i].second);
  } else {
    // Each worker thread runs every `workers`-th probe on its own device; results are pure functions
    // of the shape (kernel timings shared through one cache), so the order does not matter.
    std::vector<std::thread> threads;
    std::vector<std::exception_ptr> errors(workers);
    for (size_t w = 0; w < workers; ++w)
      threads.emplace_back([&, w] {
        try {
          for (size_t i = w; i < missing.size(); i += workers)
            out[i] = run_probe(missing[i].first, missing[i].second);
        } catch (...) {
          errors[w] = std::current_exception();
        }
      });
    for (auto& t : threads) t.join();
    for (const auto& e : errors)
      if (e) std::rethrow_exception(e);
  }
  for (size_t i = 0; i < missing.size(); ++i) probes_by_shape_.emplace(missing[i], out[i]);
  probes_ += static_cast<int64_t>(missing.size());
  probe_host_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
}

StepCost::Probe StepCost::probe(const Shape& shape, bool graph) {
  Key k{shape, graph};
  if (collecting_) {
    pending_.push_back(std::move(k));
    return {};
  }
  ensure({k});
  return probes_by_shape_.at(k);
}

double StepCost::dense(int64_t tokens) {
  return interp1(rows_grid_, static_cast<double>(tokens), [&](int64_t t) { return probe({{t, 0}}, false).dense_s; });
}

double StepCost::head(int64_t rows) {
  return interp1(rows_grid_, static_cast<double>(rows),
                 [&](int64_t s) { return probe(Shape(static_cast<size_t>(s), {1, 0}), false).head_s; });
}

StepCost::Probe StepCost::decode_probe(int64_t n, int64_t c) {
  return probe(Shape(static_cast<size_t>(n), {1, c}), true);
}

double StepCost::prefill(int64_t q, int64_t past) {
  return interp1(rows_grid_, static_cast<double>(q), [&](int64_t qv) {
    const int64_t qq = std::max<int64_t>(qv, 2);
    if (qq < kLinearMinTokens)  // short chunks: on the context grid
      return interp1(ctx_grid_, static_cast<double>(past), [&](int64_t pv) { return probe({{qq, pv}}, false).attention_s; });
    // Long chunks: after 0 and kPrefillAnchor cached positions, linear in between and beyond.
    const double a = probe({{qq, 0}}, false).attention_s;
    if (past == 0) return a;
    const double b = probe({{qq, kPrefillAnchor}}, false).attention_s;
    return a + (b - a) * static_cast<double>(past) / static_cast<double>(kPrefillAnchor);
  });
}

StepTime StepCost::step(const StepPlan& plan) {
  // First pass: which probes this step needs (run together, in parallel); second: the time.
  collecting_ = true;
  pending_.clear();
  compute(plan);
  collecting_ = false;
  ensure(pending_);
  pending_.clear();
  return compute(plan);
}

StepTime StepCost::compute(const StepPlan& plan) {
  StepTime t;
  if (plan.items.empty()) return t;
  int64_t n_decode = 0;
  double ctx_sum = 0;
  for (const StepItem& it : plan.items)
    if (it.count == 1) {
      ++n_decode;
      ctx_sum += static_cast<double>(it.start);
    }
  const double mean_ctx = n_decode > 0 ? ctx_sum / static_cast<double>(n_decode) : 0.0;
  const auto whole = [](const Probe& p) { return p.dense_s + p.head_s + p.attention_s; };
  if (n_decode == static_cast<int64_t>(plan.items.size())) {
    t.decode_step_s = interp2(rows_grid_, static_cast<double>(n_decode), ctx_grid_, mean_ctx,
                              [&](int64_t n, int64_t c) { return whole(decode_probe(n, c)); });
    return t;
  }
  t.dense_s = dense(plan.tokens);
  t.head_s = head(static_cast<int64_t>(plan.items.size()));
  if (n_decode > 0)
    t.decode_attention_s = interp2(rows_grid_, static_cast<double>(n_decode), ctx_grid_, mean_ctx,
                                   [&](int64_t n, int64_t c) { return decode_probe(n, c).attention_s; });
  for (const StepItem& it : plan.items)
    if (it.count > 1) t.prefill_attention_s += prefill(it.count, it.start);
  return t;
}

}  // namespace ppu::serve
