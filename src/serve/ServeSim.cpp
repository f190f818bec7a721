#include "serve/ServeSim.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <sstream>

#include "arch/Error.hpp"
#include "report/TraceWriter.hpp"
#include "runtime/Device.hpp"

namespace ppu::serve {

namespace {

// Requests drawn as their own lanes in a Perfetto trace (more would make the file unwieldy).
constexpr size_t kTraceRequestLanes = 1000;
// Points of the KV-use series in a report.
constexpr size_t kKvUsePoints = 500;

nlohmann::json percentiles_json(const Percentiles& p) {
  return {{"mean_s", p.mean}, {"p50_s", p.p50}, {"p90_s", p.p90}, {"p99_s", p.p99}, {"max_s", p.max}, {"count", p.count}};
}

// A completed request's TPOT: (last token - first token) / (output tokens - 1); 0 with one token.
double tpot_of(const RequestRecord& rec) {
  return rec.output_tokens > 1 ? (rec.finish_s - rec.first_token_s) / static_cast<double>(rec.output_tokens - 1) : 0.0;
}

}  // namespace

Percentiles percentiles(std::vector<double>& v) {
  Percentiles p;
  if (v.empty()) return p;
  std::sort(v.begin(), v.end());
  const auto rank = [&](double q) {
    const auto n = static_cast<double>(v.size());
    const auto i = static_cast<size_t>(std::max(1.0, std::ceil(q * n))) - 1;
    return v[std::min(i, v.size() - 1)];
  };
  double sum = 0;
  for (double x : v) sum += x;
  p.count = static_cast<int64_t>(v.size());
  p.mean = sum / static_cast<double>(v.size());
  p.p50 = rank(0.50);
  p.p90 = rank(0.90);
  p.p99 = rank(0.99);
  p.max = v.back();
  return p;
}

Slo parse_slo(const std::string& text) {
  Slo slo;
  std::stringstream in(text);
  std::string part;
  const auto bad = [&](const std::string& why) {
    return UserError(fmt::format("--slo '{}': {}; e.g. ttft=2s,tpot=100ms (keys ttft, tpot, attainment)", text, why));
  };
  // The whole of `t` as a finite number, or NaN.
  const auto number = [](const std::string& t) {
    size_t used = 0;
    double x = 0;
    try {
      x = std::stod(t, &used);
    } catch (const std::exception&) {
      return std::nan("");
    }
    return used == t.size() && std::isfinite(x) ? x : std::nan("");
  };
  while (std::getline(in, part, ',')) {
    const auto eq = part.find('=');
    if (eq == std::string::npos) throw bad(fmt::format("'{}' is not key=value", part));
    const std::string key = part.substr(0, eq), val = part.substr(eq + 1);
    if (key == "attainment") {
      const double a = number(val);
      if (!(a > 0 && a <= 1)) throw bad(fmt::format("attainment '{}' must be a fraction in (0, 1]", val));
      slo.attainment = a;
      continue;
    }
    double scale = 0;
    std::string num;
    if (val.size() > 2 && val.substr(val.size() - 2) == "ms") {
      scale = 1e-3;
      num = val.substr(0, val.size() - 2);
    } else if (val.size() > 1 && val.back() == 's') {
      scale = 1;
      num = val.substr(0, val.size() - 1);
    } else {
      throw bad(fmt::format("'{}' needs a unit, s or ms", val));
    }
    const double x = number(num);
    if (!(x > 0)) throw bad(fmt::format("'{}' must be a positive time", val));
    if (key == "ttft")
      slo.ttft_s = x * scale;
    else if (key == "tpot")
      slo.tpot_s = x * scale;
    else
      throw bad(fmt::format("unknown key '{}'", key));
  }
  if (!slo.any()) throw bad("no bound given");
  return slo;
}

nlohmann::json ServeReport::to_json() const {
  nlohmann::json j = {{"chip", chip},
                      {"model", model},
                      {"node", node.empty() ? nlohmann::json() : nlohmann::json(node)},
                      {"tp", tp},
                      {"ep", ep},
                      {"chips", chips},
                      {"dp_groups", dp_groups},
                      {"requests", requests},
                      {"completed", completed},
                      {"rejected", rejected},
                      {"first_rejection", first_rejection.empty() ? nlohmann::json() : nlohmann::json(first_rejection)},
                      {"duration_s", duration_s},
                      {"request_rate_per_s", request_rate},
                      {"requests_per_s", requests_per_s},
                      {"output_tokens_per_s", output_tokens_per_s},
                      {"total_tokens_per_s", total_tokens_per_s},
                      {"ttft", percentiles_json(ttft)},
                      {"tpot", percentiles_json(tpot)},
                      {"itl", percentiles_json(itl)},
                      {"e2e", percentiles_json(e2e)},
                      {"steps", steps},
                      {"preemptions", preemptions},
                      {"mean_batch", mean_batch},
                      {"mean_step_tokens", mean_step_tokens},
                      {"kv_blocks", kv_blocks},
                      {"block_size", block_size},
                      {"kv_bytes_per_token", kv_bytes_per_token},
                      {"weight_bytes", weight_bytes},
                      {"activation_bytes", activation_bytes},
                      {"kv_peak_use", kv_peak_use},
                      {"kv_mean_use", kv_mean_use},
                      {"prefix_hit_tokens", prefix_hit_tokens},
                      {"probes", probes},
                      {"host_s", host_s}};
  nlohmann::json series = nlohmann::json::array();
  for (const auto& [t, u] : kv_use) series.push_back({{"time_s", t}, {"use", u}});
  j["kv_use"] = series;
  if (slo) {
    j["slo"] = {{"ttft_s", slo->ttft_s > 0 ? nlohmann::json(slo->ttft_s) : nlohmann::json()},
                {"tpot_s", slo->tpot_s > 0 ? nlohmann::json(slo->tpot_s) : nlohmann::json()},
                {"attainment_target", slo->attainment},
                {"attainment", slo_attainment},
                {"goodput_requests_per_s", goodput_rps}};
  } else {
    j["slo"] = nullptr;
  }
  return j;
}

ServeSim::ServeSim(const ChipSpec& chip, const ModelConfig& cfg, const ServeSimConfig& c, const ParallelLayout& layout)
    : chip_(layout.node ? layout.node->chip : chip), cfg_(cfg), c_(c), layout_(layout) {
  if (!(c_.kv_memory_fraction > 0 && c_.kv_memory_fraction <= 1))
    throw UserError(fmt::format("kv memory fraction {}; valid: above 0, at most 1", c_.kv_memory_fraction));
  if (c_.max_model_len < 0) throw UserError(fmt::format("max model length {}; valid: 0 (the model's) or more", c_.max_model_len));
  const int64_t model_len = c_.max_model_len > 0 ? c_.max_model_len : cfg_.max_position_embeddings;
  if (model_len < 2) throw UserError(fmt::format("{}: a context of {} positions cannot serve a request", cfg_.name, model_len));
  c_.max_model_len = model_len;
  c_.scheduler.max_model_len = model_len;
  Qwen3Options mo;
  mo.matmul_dtype = c_.matmul_dtype;
  mo.kv_dtype = c_.kv_dtype;
  // Validates the scheduler's numbers before any probe runs.
  {
    KvBlocks probe_kv(1, c_.block_size, false);
    Scheduler probe_s(c_.scheduler, probe_kv);
  }
  cost_ = std::make_unique<StepCost>(
      chip_, cfg_, mo,
      StepCostLimits{c_.scheduler.max_batched_tokens, c_.scheduler.max_num_seqs, model_len}, layout_);
  weight_bytes_ = static_cast<double>(cost_->weight_bytes());
  // One chip holds its TP share of each cached token; a DP group's tp chips hold all of it.
  const double chip_kv_bytes_per_token = cost_->kv_bytes_per_token();
  kv_bytes_per_token_ = chip_kv_bytes_per_token * layout_.tp;
  activation_bytes_ = static_cast<double>(cost_->activation_bytes(std::min(c_.scheduler.max_batched_tokens, model_len)));
  const double free = chip_.hbm_bytes() - weight_bytes_ - activation_bytes_;
  const double budget = c_.kv_memory_fraction * std::max(0.0, free);
  const double block_bytes = static_cast<double>(c_.block_size) * chip_kv_bytes_per_token;
  const double group_blocks = std::floor(budget / block_bytes);
  kv_blocks_ = static_cast<int64_t>(std::min(group_blocks * layout_.dp_groups(), 2147483647.0));
  if (kv_blocks_ < 1)
    throw DeviceOutOfMemory(
        fmt::format("serve {} on {}: weights {:.2f} GB and activations {:.2f} GB of {:.2f} GB HBM leave {:.3f} GB for the KV "
                    "cache; one block of {} positions needs {:.3f} GB",
                    cfg_.name, chip_.name, weight_bytes_ / 1e9, activation_bytes_ / 1e9, chip_.hbm_bytes() / 1e9, budget / 1e9,
                    c_.block_size, block_bytes / 1e9),
        static_cast<int64_t>(block_bytes), static_cast<int64_t>(weight_bytes_ + activation_bytes_),
        static_cast<int64_t>(chip_.hbm_bytes()));
}

ServeSim::~ServeSim() = default;

ServeReport ServeSim::run(const std::vector<RequestSpec>& reqs, TraceWriter* trace) {
  const auto w0 = std::chrono::steady_clock::now();
  const int64_t probes0 = cost_->probes();
  ServeReport r;
  r.chip = chip_.name;
  r.model = cfg_.name;
  if (layout_.node) r.node = layout_.node->name;
  r.tp = layout_.tp;
  r.ep = layout_.ep;
  r.chips = layout_.world();
  r.dp_groups = layout_.dp_groups();
  r.requests = static_cast<int64_t>(reqs.size());
  r.kv_blocks = kv_blocks_;
  r.block_size = c_.block_size;
  r.kv_bytes_per_token = kv_bytes_per_token_;
  r.weight_bytes = weight_bytes_;
  r.activation_bytes = activation_bytes_;
  r.records.resize(reqs.size());
  KvBlocks kv(kv_blocks_, c_.block_size, c_.prefix_caching);
  Scheduler sched(c_.scheduler, kv);
  std::vector<double> last_token(reqs.size(), 0.0), itl;
  if (trace) {
    const std::string where = layout_.node ? fmt::format("{} chips of {} (TP {}, EP {})", layout_.world(), layout_.node->name,
                                                         layout_.tp, layout_.ep)
                                           : chip_.name;
    trace->name_process(1, fmt::format("{} on {}: engine", cfg_.name, where));
    trace->name_thread(1, 1, "steps");
    trace->name_process(2, "requests");
  }
  const auto n = reqs.size();
  size_t next = 0, done = 0;
  double t = 0, kv_time_sum = 0, batch_sum = 0, tokens_sum = 0;
  std::vector<std::pair<double, double>> kv_all;
  while (done < n) {
    for (; next < n && reqs[next].arrival_s <= t; ++next) {
      const RequestSpec& q = reqs[next];
      RequestRecord& rec = r.records[next];
      rec.arrival_s = q.arrival_s;
      rec.input_tokens = q.input_tokens;
      Request req{next, q.input_tokens, q.output_tokens, {}};
      if (auto why = sched.never_fits(req)) {
        rec.rejected = true;
        ++r.rejected;
        if (r.first_rejection.empty()) r.first_rejection = *why;
        ++done;
        continue;
      }
      sched.add(std::move(req));
    }
    if (sched.idle()) {
      if (next >= n) break;
      t = std::max(t, reqs[next].arrival_s);
      continue;
    }
    const StepPlan plan = sched.schedule();
    PPU_CHECK(!plan.empty(), "the scheduler planned an empty step with requests queued");
    const double dt = cost_->step_s(plan);
    const double use = static_cast<double>(kv.used_blocks()) / static_cast<double>(kv_blocks_);
    if (trace)
      trace->slice(1, 1, fmt::format("{} reqs, {} tokens", plan.items.size(), plan.tokens), t, dt,
                   {{"requests", plan.items.size()}, {"tokens", plan.tokens}, {"kv_use", use}});
    kv_time_sum += use * dt;
    r.kv_peak_use = std::max(r.kv_peak_use, use);
    kv_all.emplace_back(t, use);
    t += dt;
    ++r.steps;
    batch_sum += static_cast<double>(plan.items.size());
    tokens_sum += static_cast<double>(plan.tokens);
    for (uint64_t id : plan.preempted) ++r.records[id].preemptions;
    for (const StepItem& it : plan.items) {
      if (!it.samples) continue;
      RequestRecord& rec = r.records[it.id];
      if (rec.first_token_s < 0)
        rec.first_token_s = t;
      else
        itl.push_back(t - last_token[it.id]);
      last_token[it.id] = t;
      ++rec.output_tokens;
    }
    for (uint64_t id : sched.complete(plan)) {
      RequestRecord& rec = r.records[id];
      rec.finish_s = t;
      ++done;
      ++r.completed;
      if (trace && id < kTraceRequestLanes) {
        const int tid = static_cast<int>(id) + 1;
        trace->name_thread(2, tid, fmt::format("request {}", id));
        trace->slice(2, tid, "waiting + prefill", rec.arrival_s, rec.first_token_s - rec.arrival_s,
                     {{"input_tokens", rec.input_tokens}, {"preemptions", rec.preemptions}});
        trace->slice(2, tid, "decode", rec.first_token_s, rec.finish_s - rec.first_token_s,
                     {{"output_tokens", rec.output_tokens}});
      }
    }
    if (trace) {
      trace->counter(1, "running", t, static_cast<double>(sched.running()));
      trace->counter(1, "waiting", t, static_cast<double>(sched.waiting()));
      trace->counter(1, "KV use", t, static_cast<double>(kv.used_blocks()) / static_cast<double>(kv_blocks_));
    }
  }
  // Summary.
  std::vector<double> ttft, tpot, e2e;
  double first_arrival = n > 0 ? reqs.front().arrival_s : 0.0, last_finish = first_arrival;
  int64_t out_tokens = 0, in_tokens = 0;
  for (const RequestRecord& rec : r.records) {
    if (rec.rejected || rec.finish_s < 0) continue;
    ttft.push_back(rec.first_token_s - rec.arrival_s);
    e2e.push_back(rec.finish_s - rec.arrival_s);
    if (rec.output_tokens > 1) tpot.push_back(tpot_of(rec));
    last_finish = std::max(last_finish, rec.finish_s);
    out_tokens += rec.output_tokens;
    in_tokens += rec.input_tokens;
    r.preemptions += rec.preemptions;
  }
  r.duration_s = last_finish - first_arrival;
  const double arrival_span = n > 1 ? reqs.back().arrival_s - reqs.front().arrival_s : 0.0;
  r.request_rate = arrival_span > 0 ? static_cast<double>(n - 1) / arrival_span : 0.0;
  if (r.duration_s > 0) {
    r.requests_per_s = static_cast<double>(r.completed) / r.duration_s;
    r.output_tokens_per_s = static_cast<double>(out_tokens) / r.duration_s;
    r.total_tokens_per_s = static_cast<double>(out_tokens + in_tokens) / r.duration_s;
  }
  r.ttft = percentiles(ttft);
  r.tpot = percentiles(tpot);
  r.itl = percentiles(itl);
  r.e2e = percentiles(e2e);
  if (r.steps > 0) {
    r.mean_batch = batch_sum / static_cast<double>(r.steps);
    r.mean_step_tokens = tokens_sum / static_cast<double>(r.steps);
  }
  const double busy = t - first_arrival;
  r.kv_mean_use = busy > 0 ? kv_time_sum / busy : 0.0;
  const size_t stride = std::max<size_t>(1, (kv_all.size() + kKvUsePoints - 1) / kKvUsePoints);
  for (size_t i = 0; i < kv_all.size(); i += stride) r.kv_use.push_back(kv_all[i]);
  r.prefix_hit_tokens = kv.prefix_hit_positions();
  r.probes = cost_->probes() - probes0;
  r.host_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
  return r;
}

namespace {

// Share of `r`'s requests (rejected ones count as missing) that meet `slo`, and how many.
std::pair<double, int64_t> attainment(const ServeReport& r, const Slo& slo) {
  int64_t good = 0;
  for (const RequestRecord& rec : r.records) {
    if (rec.rejected || rec.finish_s < 0) continue;
    const double ttft = rec.first_token_s - rec.arrival_s;
    if ((slo.ttft_s <= 0 || ttft <= slo.ttft_s) && (slo.tpot_s <= 0 || tpot_of(rec) <= slo.tpot_s)) ++good;
  }
  return {r.requests > 0 ? static_cast<double>(good) / static_cast<double>(r.requests) : 0.0, good};
}

}  // namespace

void apply_slo(ServeReport& r, const Slo& slo) {
  const auto [share, good] = attainment(r, slo);
  r.slo = slo;
  r.slo_attainment = share;
  r.goodput_rps = r.duration_s > 0 ? static_cast<double>(good) / r.duration_s : 0.0;
}

double ServeSim::max_rate(const std::vector<RequestSpec>& lengths, const Slo& slo, uint64_t seed, ServeReport* report) {
  if (!slo.any()) throw UserError("max rate: the SLO bounds neither TTFT nor TPOT");
  // Rates beyond this are not a serving question (and with a TPOT bound alone, the batch cap can
  // keep every request within it at any rate): reported as reaching the cap.
  constexpr double kMaxRate = 4096;
  constexpr double kMinRate = 1.0 / 64;
  const auto meets = [&](double rate, ServeReport* out) {
    ServeReport r = run(with_arrivals(lengths, {.rate = rate, .process = ArrivalProcess::kPoisson, .cv = 1, .seed = seed}));
    apply_slo(r, slo);
    const bool ok = r.slo_attainment >= slo.attainment;
    if (out && ok) *out = std::move(r);
    return ok;
  };
  ServeReport best;
  double lo = 0, hi = 0;
  double rate = 1.0;
  if (meets(rate, &best)) {
    lo = rate;
    while (lo < kMaxRate && meets(lo * 2, &best)) lo *= 2;
    hi = lo * 2;
    if (lo >= kMaxRate) hi = lo;
  } else {
    hi = rate;
    while (hi > kMinRate && !meets(hi / 2, &best)) hi /= 2;
    lo = hi > kMinRate ? hi / 2 : 0.0;
    if (lo == 0) {
      if (report) *report = ServeReport{};
      return 0.0;
    }
  }
  while (hi > lo && (hi - lo) / hi > 0.03) {
    const double mid = 0.5 * (lo + hi);
    if (meets(mid, &best))
      lo = mid;
    else
      hi = mid;
  }
  if (report) *report = std::move(best);
  return lo;
}

}  // namespace ppu::serve
