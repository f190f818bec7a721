#include "serve/StepCost.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <mutex>
#include <thread>

#include "arch/Error.hpp"
#include "ccl/Communicator.hpp"
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

// The kinds of an MoE layer that see every DP group's tokens together (the dispatch and combine
// all-to-alls and the experts' GEMMs and activation; nn/Moe), as opposed to the router, projections
// and norms, which see only their group's.
bool is_expert_kind(const std::string& k) {
  return k == "moe dispatch" || k == "moe expert gemm" || k == "mlp activation" || k == "moe combine";
}

// How long (host seconds) a probe's rank waits at a collective for the others. The ranks run the same
// kernels, so they arrive close together; the margin is for a host whose cores are shared by many
// probes' rank threads at once (8 probes of 16 ranks on 2 cores).
constexpr double kProbeRendezvousS = 120.0;

}  // namespace

void ParallelLayout::check(const ModelConfig& cfg) const {
  if (tp < 1 || ep < 1) throw UserError(fmt::format("--tp {} --ep {}: each degree must be at least 1", tp, ep));
  if ((tp > 1 || ep > 1) && !node)
    throw UserError(fmt::format("--tp {} --ep {}: give the node whose chips run the shards (--node; see ppu nodes)", tp, ep));
  if (ep > 1 && ep % tp != 0)
    throw UserError(fmt::format("--ep {} must be a multiple of --tp {} (attention runs in ep / tp groups of tp chips)", ep, tp));
  if (ep > 1 && !cfg.is_moe())
    throw UserError(fmt::format("--ep {}: model '{}' is dense; expert parallelism needs an MoE model (valid: --ep 1)", ep,
                                cfg.name));
  if (node && world() > node->num_chips())
    throw UserError(fmt::format("--tp {} --ep {}: {} chips asked for; node '{}' has {}", tp, ep, world(), node->name,
                                node->num_chips()));
}

StepCost::StepCost(const ChipSpec& chip, const ModelConfig& cfg, const Qwen3Options& model_options,
                   const StepCostLimits& limits, const ParallelLayout& layout)
    : cfg_(cfg), opt_(model_options), lim_(limits), layout_(layout) {
  if (lim_.max_batched_tokens < 1 || lim_.max_num_seqs < 1 || lim_.max_context < 1)
    throw UserError(fmt::format("step cost: max_batched_tokens {}, max_num_seqs {}, max_context {}; each must be at least 1",
                                lim_.max_batched_tokens, lim_.max_num_seqs, lim_.max_context));
  if (opt_.tp_size != 1 || opt_.ep_size != 1 || opt_.tp_comm || opt_.ep_comm)
    throw UserError("step cost: give the parallel layout as a ParallelLayout (node, tp, ep), not in the model options");
  layout_.check(cfg_);
  served_chip_ = layout_.node ? layout_.node->chip : chip;
  chip_ = served_chip_;
  chip_.hbm_size.value = 1e18;  // probes of any shape fit; capacity enters no kernel's timing
  if (layout_.node) {
    node_ = layout_.node;
    node_->chip = chip_;
  }
  timings_ = std::make_shared<TimingCache>();
  workers_ = std::clamp(default_host_threads(), 1, 8);
  {
    Qwen3Options o = opt_;
    o.max_batch = 1;
    o.max_context = 16;
    o.slot_capacity.clear();
    const Probe p = on_ranks(o, [&](int, Device& dev, const Qwen3Options& ro) {
      Qwen3Model m(dev, cfg_, Qwen3Weights::random(0), ro);
      Probe q;
      q.weight_bytes = m.weight_bytes();
      q.kv_bytes = m.kv_cache_bytes();
      return q;
    });
    weight_bytes_ = p.weight_bytes;
    kv_bytes_per_token_ = static_cast<double>(p.kv_bytes) / 16.0;
  }
  rows_grid_ = rows_grid(std::max(lim_.max_batched_tokens, lim_.max_num_seqs));
  ctx_grid_ = ctx_grid(lim_.max_context);
}

StepCost::~StepCost() = default;

template <class F>
StepCost::Probe StepCost::on_ranks(const Qwen3Options& base, F&& per_rank) const {
  // Fresh devices per call: their clocks start at 0, so the op times (differences of clock readings)
  // round the same whichever thread runs the probe and whatever ran before it.
  const int world = layout_.world();
  std::vector<std::unique_ptr<Device>> devs;
  std::vector<Device*> ranks;
  for (int r = 0; r < world; ++r) {
    devs.push_back(std::make_unique<Device>(chip_, ExecMode::kTimingOnly, 1));
    devs.back()->share_timing_cache(timings_);
    ranks.push_back(devs.back().get());
  }
  if (world == 1) return per_rank(0, *devs[0], base);
  // As `ppu run --node --tp --ep` wires them (cli/ModelCommands run_single): one communicator of all
  // ranks (EP's all-to-alls, or TP's all-reduces without EP) and, with EP and TP, one per DP group.
  const int tp = layout_.tp, ep = layout_.ep;
  ccl::CommOptions co;
  co.rendezvous_timeout_s = kProbeRendezvousS;
  co.host_threads = 1;
  ccl::Communicator comm(*node_, ranks, co);
  std::vector<std::unique_ptr<ccl::Communicator>> tp_groups;
  if (ep > 1 && tp > 1)
    for (int g = 0; g < ep / tp; ++g) {
      ccl::CommOptions go = co;
      for (int t = 0; t < tp; ++t) go.chips.push_back(g * tp + t);
      tp_groups.push_back(std::make_unique<ccl::Communicator>(
          *node_, std::vector<Device*>(ranks.begin() + g * tp, ranks.begin() + (g + 1) * tp), go));
    }
  const auto rank_options = [&](int r) {
    Qwen3Options ro = base;
    ro.tp_size = tp;
    ro.tp_rank = r % tp;
    ro.tp_comm = tp == 1 ? nullptr : ep > 1 ? tp_groups[static_cast<size_t>(r / tp)].get() : &comm;
    ro.ep_size = ep;
    ro.ep_rank = ep > 1 ? r : 0;
    ro.ep_comm = ep > 1 ? &comm : nullptr;
    return ro;
  };
  // Each rank's exception and when it failed (0 first): the cause is reported rather than the
  // rendezvous timeouts it leaves behind on the other ranks (as models/Session generate_parallel).
  std::vector<Probe> out(static_cast<size_t>(world));
  std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
  std::vector<int> failed_as(static_cast<size_t>(world), std::numeric_limits<int>::max());
  std::mutex mu;
  int failures = 0;
  const auto run_rank = [&](int r) {
    try {
      out[static_cast<size_t>(r)] = per_rank(r, *devs[static_cast<size_t>(r)], rank_options(r));
    } catch (...) {
      const std::lock_guard<std::mutex> lock(mu);
      errors[static_cast<size_t>(r)] = std::current_exception();
      failed_as[static_cast<size_t>(r)] = failures++;
    }
  };
  {
    std::vector<std::thread> threads;
    for (int r = 1; r < world; ++r) threads.emplace_back(run_rank, r);
    run_rank(0);
    for (auto& t : threads) t.join();
  }
  // Rank 0's error when it has one: the ranks run the same code, so a bad split fails every rank
  // alike, and the message should not depend on which thread got there first.
  if (errors[0]) std::rethrow_exception(errors[0]);
  const auto first = std::min_element(failed_as.begin(), failed_as.end());
  if (*first == std::numeric_limits<int>::max()) return out[0];
  const auto rank = static_cast<int>(first - failed_as.begin());
  try {
    std::rethrow_exception(errors[static_cast<size_t>(rank)]);
  } catch (const std::exception& e) {
    throw UserError(fmt::format("step cost: rank {} of {} failed: {}", rank, world, e.what()));
  }
}

StepCost::Probe StepCost::run_probe(const Shape& shape, bool graph) const {
  Qwen3Options o = opt_;
  o.max_batch = static_cast<int64_t>(shape.size());
  o.slot_capacity.clear();
  for (const auto& [n, past] : shape) o.slot_capacity.push_back(std::max<int64_t>(1, n + past));
  o.max_context = *std::max_element(o.slot_capacity.begin(), o.slot_capacity.end());
  // Every rank of the layout runs the same shape (each DP group its own copy of it).
  return on_ranks(o, [&](int, Device& dev, const Qwen3Options& ro) {
    // The forward of a model with `layers` decoder layers, split by kind.
    const auto forward = [&](int64_t layers) {
      ModelConfig c = cfg_;
      c.num_layers = layers;
      Probe p;
      Qwen3Model m(dev, c, Qwen3Weights::random(0), ro);
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
        else if (cfg_.is_moe() && is_expert_kind(kind))
          p.expert_s += d;
        else
          p.dense_s += d;
      }
      return p;
    };
    // Every decoder layer runs the same kernels (MoE routing is balanced in timing-only mode) and the
    // same collectives of the same sizes, which the timing cache times once, and one stream adds their
    // times: the whole model is the one-layer forward plus (layers - 1) times what the second layer
    // adds. Two short forwards instead of one of num_layers layers of kernel launches.
    if (cfg_.num_layers <= 2) return forward(cfg_.num_layers);
    const Probe one = forward(1), two = forward(2);
    const auto extend = [&](double a, double b) { return a + static_cast<double>(cfg_.num_layers - 1) * (b - a); };
    Probe p;
    p.dense_s = extend(one.dense_s, two.dense_s);
    p.expert_s = extend(one.expert_s, two.expert_s);
    p.head_s = extend(one.head_s, two.head_s);
    p.attention_s = extend(one.attention_s, two.attention_s);
    p.activation_bytes = std::max(one.activation_bytes, two.activation_bytes);
    return p;
  });
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

double StepCost::dense(int64_t tokens, int64_t expert_tokens) {
  return interp1(rows_grid_, static_cast<double>(tokens), [&](int64_t t) { return probe({{t, 0}}, false).dense_s; }) +
         interp1(rows_grid_, static_cast<double>(expert_tokens), [&](int64_t t) { return probe({{t, 0}}, false).expert_s; });
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

StepPlan StepCost::busiest_group(const StepPlan& plan) const {
  const int groups = layout_.dp_groups();
  if (groups == 1) return plan;
  std::vector<StepPlan> g(static_cast<size_t>(groups));
  // Decodes dealt round-robin in plan order.
  size_t dealt = 0;
  std::vector<const StepItem*> chunks;
  for (const StepItem& it : plan.items) {
    if (it.count > 1) {
      chunks.push_back(&it);
      continue;
    }
    StepPlan& p = g[dealt++ % g.size()];
    p.items.push_back(it);
    p.tokens += it.count;
  }
  // Chunks whole, longest first (plan order among equals), each to the group with the fewest tokens.
  std::stable_sort(chunks.begin(), chunks.end(), [](const StepItem* a, const StepItem* b) { return a->count > b->count; });
  for (const StepItem* c : chunks) {
    const auto least = std::min_element(g.begin(), g.end(), [](const StepPlan& a, const StepPlan& b) { return a.tokens < b.tokens; });
    least->items.push_back(*c);
    least->tokens += c->count;
  }
  // The busiest: most tokens, then most requests, then the lowest index.
  size_t best = 0;
  for (size_t i = 1; i < g.size(); ++i)
    if (g[i].tokens > g[best].tokens || (g[i].tokens == g[best].tokens && g[i].items.size() > g[best].items.size()))
      best = i;
  return g[best];
}

StepTime StepCost::step(const StepPlan& plan) {
  const StepPlan share = busiest_group(plan);
  // The experts see every group's tokens: as many as `groups` groups of the mean share.
  const int64_t groups = layout_.dp_groups();
  const int64_t expert_tokens = (plan.tokens + groups - 1) / groups;
  // First pass: which probes this step needs (run together, in parallel); second: the time.
  collecting_ = true;
  pending_.clear();
  compute(share, expert_tokens);
  collecting_ = false;
  ensure(pending_);
  pending_.clear();
  return compute(share, expert_tokens);
}

StepTime StepCost::compute(const StepPlan& plan, int64_t expert_tokens) {
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
  const auto whole = [](const Probe& p) { return p.dense_s + p.expert_s + p.head_s + p.attention_s; };
  if (n_decode == static_cast<int64_t>(plan.items.size())) {
    t.decode_step_s = interp2(rows_grid_, static_cast<double>(n_decode), ctx_grid_, mean_ctx,
                              [&](int64_t n, int64_t c) { return whole(decode_probe(n, c)); });
    return t;
  }
  t.dense_s = dense(plan.tokens, expert_tokens);
  t.head_s = head(static_cast<int64_t>(plan.items.size()));
  if (n_decode > 0)
    t.decode_attention_s = interp2(rows_grid_, static_cast<double>(n_decode), ctx_grid_, mean_ctx,
                                   [&](int64_t n, int64_t c) { return decode_probe(n, c).attention_s; });
  for (const StepItem& it : plan.items)
    if (it.count > 1) t.prefill_attention_s += prefill(it.count, it.start);
  return t;
}

}  // namespace ppu::serve
