// `ppu simulate train` (see Commands.hpp): a training iteration on a cluster, for a given layout or
// the planner's best, with the time to train on a token budget.
#include <fmt/format.h>

#include <cmath>
#include <iostream>
#include <nlohmann/json.hpp>

#include "arch/ClusterSpec.hpp"
#include "arch/Error.hpp"
#include "arch/NameTable.hpp"
#include "cli/Commands.hpp"
#include "cluster/Planner.hpp"
#include "report/JsonDoc.hpp"
#include "report/Table.hpp"
#include "report/TraceWriter.hpp"

namespace ppu::cli {

namespace {

using nlohmann::json;
using namespace ppu::cluster;

// "36T", "1.5e12", "500B", "2M" tokens.
double parse_tokens(const std::string& text) {
  if (text.empty()) return 0;
  std::string s = text;
  double mult = 1;
  const char u = static_cast<char>(std::toupper(static_cast<unsigned char>(s.back())));
  if (u == 'K' || u == 'M' || u == 'B' || u == 'G' || u == 'T') {
    mult = u == 'K' ? 1e3 : u == 'M' ? 1e6 : (u == 'B' || u == 'G') ? 1e9 : 1e12;
    s.pop_back();
  }
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size() || !(v > 0))
    throw UserError(fmt::format("--tokens '{}': write a positive count with an optional K, M, B or T suffix, e.g. 36T", text));
  return v * mult;
}

Recompute parse_recompute(const std::string& s) {
  if (auto r = find_name<Recompute>(kRecomputeNames, s)) return *r;
  throw UserError(fmt::format("--recompute '{}'; valid: auto, {}", s, join_names(kRecomputeNames)));
}

kernels::AttentionStyle parse_attention(const std::string& s) {
  if (auto a = find_name<kernels::AttentionStyle>(kernels::kAttentionStyleNames, s)) return *a;
  throw UserError(fmt::format("--attention '{}'; valid: {}", s, join_names(kernels::kAttentionStyleNames)));
}

NetworkKind parse_network(const std::string& s) {
  if (s == "analytical") return NetworkKind::kAnalytical;
  if (s == "flow") return NetworkKind::kFlow;
  throw UserError(fmt::format("--network '{}'; valid: analytical, flow (SimGrid)", s));
}

std::string gb(double bytes) { return fmt::format("{:.1f}", bytes / 1e9); }

json memory_json(const MemoryUse& m) {
  return {{"weights_bytes", m.weights},     {"gradients_bytes", m.gradients}, {"optimizer_bytes", m.optimizer},
          {"activations_bytes", m.activations}, {"buffers_bytes", m.buffers}, {"reserve_bytes", m.reserve},
          {"total_bytes", m.total()},       {"capacity_bytes", m.capacity},   {"fits", m.fits()},
          {"shortfall_bytes", m.shortfall()}};
}

// One layout's simulated iteration as a --json record (docs/schemas/simulate-train.schema.json).
json result_json(const TrainingResult& r, const ModelConfig& m, const ClusterSpec& c, const std::string& network,
                 double tokens) {
  const Layout& l = r.layout;
  json breakdown = json::array();
  for (const auto& [part, s] : r.breakdown)
    breakdown.push_back({{"part", part}, {"time_s", s}, {"fraction", r.iteration_s > 0 ? s / r.iteration_s : 0.0}});
  json collectives = json::array();
  for (const auto& u : r.collectives)
    collectives.push_back({{"label", u.label}, {"collective", std::string(ccl::collective_name(u.collective))},
                           {"bytes", u.bytes}, {"group", u.group}, {"stride", u.stride}, {"time_s", u.time_s},
                           {"how", json_text_or_null(u.how)}});
  json j = {{"model", m.name}, {"cluster", c.name}, {"chip", c.node.chip.name}, {"network", network},
            {"assumed_fields", AssumedMarks::among(c.node.chip, {"matrix_bf16", "hbm_bandwidth"})}};
  j["layout"] = {{"tp", l.tp},
                 {"pp", l.pp},
                 {"dp", l.dp},
                 {"cp", l.cp},
                 {"ep", l.ep},
                 {"sp", l.sp && l.tp > 1},
                 {"virtual_stages", l.virtual_stages},
                 {"micro_batch", l.micro_batch},
                 {"global_batch", l.global_batch},
                 {"seq_len", l.seq_len},
                 {"zero", l.zero},
                 {"recompute", kRecomputeNames[static_cast<size_t>(l.recompute)]},
                 {"description", l.describe()}};
  j["chips"] = l.chips();
  j["micro_batches"] = r.micro_batches;
  j["iteration_s"] = r.iteration_s;
  j["breakdown"] = breakdown;
  j["tokens_per_s"] = r.tokens_per_s;
  j["model_flops_per_s_per_chip"] = r.tflops_per_chip * 1e12;
  j["mfu"] = r.mfu;
  j["hfu"] = r.hfu;
  j["memory"] = memory_json(r.memory);
  j["notes"] = r.notes;
  j["collectives"] = collectives;
  j["training"] = nullptr;
  if (tokens > 0) {
    const TrainingBudget b = training_budget(r, c, tokens);
    j["training"] = {{"tokens", tokens},           {"iterations", b.iterations},  {"duration_s", b.days * 86400.0},
                     {"chip_time_s", b.chip_hours * 3600.0}, {"power_w", b.power_w}, {"energy_j", b.energy_mwh * 3.6e9}};
  }
  return j;
}

void print_result(const TrainingResult& r, const ModelConfig& m, const ClusterSpec& c, const std::string& net, double tokens) {
  const Layout& l = r.layout;
  std::cout << fmt::format("{} on {} ({} chips of {}, {} network model)\n", m.name, c.name, l.chips(), c.num_chips(), net);
  std::cout << fmt::format("layout: {}; global batch {} x {} tokens = {:.2f}M tokens, {} micro-batches per pipeline\n\n",
                           l.describe(), l.global_batch, l.seq_len, l.global_batch * l.seq_len / 1e6, r.micro_batches);
  Table t({"part of the iteration", "seconds", "share"});
  for (const auto& [k, v] : r.breakdown)
    t.add_row({k, fmt::format("{:.3f}", v), fmt::format("{:.1f}%", 100 * v / r.iteration_s)});
  t.add_row({"iteration", fmt::format("{:.3f}", r.iteration_s), "100%"});
  std::cout << t.render() << "\n";
  std::cout << fmt::format("throughput: {:.0f} tokens/s; {:.1f} TFLOPS per chip (model FLOPs); MFU {:.1f}%, HFU {:.1f}%\n",
                           r.tokens_per_s, r.tflops_per_chip, 100 * r.mfu, 100 * r.hfu);
  std::cout << "  (MFU = model FLOPs / (iteration time x chips x dense bf16 peak), model FLOPs per token = 3 x (2 x matmul "
               "parameters + 4 x seq x attention width per layer); HFU adds the recomputed forward's FLOPs, counted alike)\n";
  const MemoryUse& mem = r.memory;
  std::cout << fmt::format("memory per chip (GB): weights {} + gradients {} + optimizer {} + activations {} + buffers {} + "
                           "reserve {} = {} of {}{}\n",
                           gb(mem.weights), gb(mem.gradients), gb(mem.optimizer), gb(mem.activations), gb(mem.buffers),
                           gb(mem.reserve), gb(mem.total()), gb(mem.capacity),
                           mem.fits() ? "" : fmt::format(" - DOES NOT FIT (short by {} GB)", gb(mem.shortfall())));
  if (tokens > 0) {
    const TrainingBudget b = training_budget(r, c, tokens);
    std::cout << fmt::format("training on {:.3g} tokens: {:.0f} iterations, {:.1f} days, {:.3g} chip-hours, {:.0f} MWh "
                             "({:.2f} MW: chips at TDP + {} W per node beyond them, PUE {})\n",
                             tokens, b.iterations, b.days, b.chip_hours, b.energy_mwh, b.power_w / 1e6,
                             c.node_power.value, c.pue.value);
  }
  for (const auto& u : r.collectives) std::cout << fmt::format("  {}: {}\n", u.label, u.how);
  for (const auto& n : r.notes) std::cout << "note: " << n << "\n";
}

}  // namespace

std::optional<std::string> cluster_preset_of_chip(const std::string& chip_name) {
  std::optional<std::string> best;
  int64_t best_chips = 0;
  for (const auto& name : cluster_preset_names()) {
    const ClusterSpec c = load_cluster(name);
    if (c.node.chip.name == chip_name && c.num_chips() > best_chips) best = c.name, best_chips = c.num_chips();
  }
  return best;
}

namespace {

// The clusters to simulate on: --cluster (one, or a comma-separated list), or with --chip the preset
// cluster built of each chip (the largest one where there are several).
std::vector<ClusterSpec> clusters_of(const TrainCliOptions& o) {
  std::vector<ClusterSpec> out;
  if (o.chip.empty()) {
    for (const auto& name : expand_names(o.cluster, "--cluster", cluster_preset_names())) out.push_back(load_cluster(name));
    return out;
  }
  if (o.cluster != TrainCliOptions{}.cluster)
    throw UserError(fmt::format("--chip {} and --cluster {}: give one of them (--chip takes each chip's own cluster)",
                                o.chip, o.cluster));
  for (const auto& chip : expand_chips(o.chip)) {
    const std::string name = load_chip(chip).name;
    if (const auto best = cluster_preset_of_chip(name)) {
      out.push_back(load_cluster(*best));
      continue;
    }
    std::string have;
    for (const auto& cn : cluster_preset_names()) {
      const ClusterSpec c = load_cluster(cn);
      have += fmt::format("{}{} ({})", have.empty() ? "" : ", ", c.node.chip.name, c.name);
    }
    throw UserError(fmt::format("--chip {}: no cluster preset is built of {}; chips with a cluster: {} (or give "
                                "--cluster FILE, see docs/clusters.md)",
                                o.chip, name, have));
  }
  return out;
}

// One cluster: the given layout, or the planner's search. Appends its records (and the search
// summary) to `records` / `searches` and prints the human report unless --json. Returns the exit
// code: 3 (a simulated out-of-memory) when no layout fits, or the given one does not.
int simulate_on(const TrainCliOptions& o, const ModelConfig& m, const ClusterSpec& c, json& records, json& searches) {
  const double tokens = parse_tokens(o.tokens);
  const NetworkKind nk = parse_network(o.network);
  if (o.grad_reduce != "fp32" && o.grad_reduce != "bf16" && o.grad_reduce != "fp16")
    throw UserError(fmt::format("--grad-reduce '{}'; valid: fp32, bf16, fp16", o.grad_reduce));
  const int grad_bytes = o.grad_reduce == "fp32" ? 4 : 2;
  auto net = make_network(c, nk);
  WorkloadCache cache;
  const bool given = o.tp > 0 || o.pp > 0 || o.dp > 0 || o.cp > 0 || o.ep > 0;
  if (given && o.search)
    throw UserError("--search finds the layout itself: leave out --tp/--pp/--dp/--cp/--ep, or drop --search");
  if (given) {
    Layout l;
    l.tp = std::max(1, o.tp);
    l.pp = std::max(1, o.pp);
    l.cp = std::max(1, o.cp);
    l.ep = std::max(1, o.ep);
    const int64_t tpc = int64_t{l.tp} * l.pp * l.cp;
    // Every degree given (DP too): the layout says how many of the cluster's chips it uses.
    const int64_t chips = o.chips > 0 ? o.chips : o.dp > 0 ? tpc * o.dp : c.num_chips();
    l.dp = o.dp > 0 ? o.dp : static_cast<int>(std::max<int64_t>(1, chips / tpc));
    l.sp = !o.no_sp;
    l.virtual_stages = o.vp;
    l.micro_batch = o.micro_batch;
    l.seq_len = o.seq_len;
    l.global_batch = o.global_batch > 0 ? o.global_batch : default_global_batch(o.seq_len, l.dp, l.micro_batch);
    l.zero = o.zero;
    l.unfused_attention = o.unfused_attention;
    l.attention_style = parse_attention(o.attention);
    l.overlap_grad_reduce = !o.no_overlap;
    l.overlap_tp_comm = o.overlap_tp;
    l.grad_reduce_bytes = grad_bytes;
    if (o.order != "tp-cp-dp-pp" && o.order != "tp-cp-pp-dp")
      throw UserError(fmt::format("--order '{}'; valid: tp-cp-dp-pp (Megatron), tp-cp-pp-dp (Llama 3)", o.order));
    l.pp_inside_dp = o.order == "tp-cp-pp-dp";
    if (o.recompute == "auto") {
      check_layout(m, c, l, chips);
      l = least_recomputation(m, c.node.chip, l);
    } else {
      l.recompute = parse_recompute(o.recompute);
      l.recompute_layers = o.recompute_layers;
    }
    const TrainingResult r = simulate_training(m, c, l, *net, cache, chips);
    if (!o.trace.empty()) {
      TraceWriter w;
      write_training_trace(r, w);
      w.write_file(o.trace);
    }
    records.push_back(result_json(r, m, c, net->name(), tokens));
    if (!o.json) {
      print_result(r, m, c, net->name(), tokens);
      if (!o.trace.empty()) std::cout << "trace: " << o.trace << "\n";
    }
    if (r.memory.fits()) return 0;
    // The layout was simulated and reported, but the chips could not hold it: a simulated
    // out-of-memory, the same status as a search where nothing fits.
    std::cerr << fmt::format("simulated event: {} needs {} GB per chip on {}, which has {} GB\n", l.describe(),
                             gb(r.memory.total()), c.node.chip.name, gb(r.memory.capacity));
    return 3;
  }
  PlanOptions p;
  p.global_batch = o.global_batch;
  p.seq_len = o.seq_len;
  p.chips = o.chips;
  p.grad_reduce_bytes = grad_bytes;
  p.attention_style = parse_attention(o.attention);
  p.progress = [&](const std::string& s) { std::cerr << fmt::format("search ({}): {}\n", c.name, s); };
  const Plan plan = plan_training(m, c, p, *net, cache);
  searches.push_back({{"model", m.name}, {"cluster", c.name}, {"layouts_considered", plan.considered},
                      {"layouts_that_fit", plan.ranked.size()}, {"explanation", plan.explanation},
                      {"wall_s", plan.wall_s},
                      {"closest_memory", plan.ranked.empty() ? memory_json(plan.closest_miss) : json()}});
  if (plan.ranked.empty()) {
    if (!o.json) std::cout << plan.explanation << "\n";
    return 3;  // no layout fits the chips' memory: a simulated out-of-memory, the status of a SimEvent
  }
  const TrainingResult& best = plan.ranked.front();
  if (!o.trace.empty()) {
    TraceWriter w;
    write_training_trace(best, w);
    w.write_file(o.trace);
  }
  // The ranked layouts, fastest first (the first is the winner).
  for (size_t i = 0; i < plan.ranked.size() && static_cast<int>(i) < o.top; ++i)
    records.push_back(result_json(plan.ranked[i], m, c, net->name(), tokens));
  if (o.json) return 0;
  if (o.search) {
    Table t({"rank", "layout", "iteration s", "tokens/s", "TFLOPS/chip", "MFU", "memory GB"});
    for (size_t i = 0; i < plan.ranked.size() && static_cast<int>(i) < o.top; ++i) {
      const TrainingResult& r = plan.ranked[i];
      t.add_row({std::to_string(i + 1), r.layout.describe(), fmt::format("{:.3f}", r.iteration_s),
                 fmt::format("{:.0f}", r.tokens_per_s), fmt::format("{:.1f}", r.tflops_per_chip),
                 fmt::format("{:.1f}%", 100 * r.mfu), gb(r.memory.total())});
    }
    std::cout << fmt::format("{} layouts that fit, of {} considered ({:.1f} s); the fastest {}:\n", plan.ranked.size(),
                             plan.considered, plan.wall_s, std::min<size_t>(plan.ranked.size(), static_cast<size_t>(o.top)));
    std::cout << t.render() << "\n";
  }
  std::cout << "winner: " << plan.explanation << "\n\n";
  print_result(best, m, c, net->name(), tokens);
  if (!o.trace.empty()) std::cout << "trace: " << o.trace << "\n";
  return 0;
}

}  // namespace

int cmd_simulate_train(const TrainCliOptions& opts) {
  const ModelConfig m = load_model_config(opts.model);
  TrainCliOptions o = opts;
  if (o.seq_len == 0) o.seq_len = std::min<int64_t>(4096, m.max_position_embeddings);
  const std::vector<ClusterSpec> clusters = clusters_of(o);
  if (clusters.size() > 1 && !o.trace.empty()) throw UserError("--trace needs a single cluster");
  parse_tokens(o.tokens);  // a bad value is reported before any simulation
  json records = json::array(), searches = json::array();
  int rc = 0;
  std::vector<size_t> first_record;  // each cluster's first (best) record
  for (const ClusterSpec& c : clusters) {
    if (clusters.size() > 1 && !o.json) std::cout << fmt::format("=== {} ({} x {})\n", c.name, c.num_chips(), c.node.chip.name);
    first_record.push_back(records.size());
    rc = std::max(rc, simulate_on(o, m, c, records, searches));
    if (clusters.size() > 1 && !o.json) std::cout << "\n";
  }
  if (o.json) {
    print_json_document("simulate train", records, searches.empty() ? json::object() : json{{"searches", searches}});
    return rc;
  }
  if (clusters.size() > 1) {
    Table t({"cluster", "chip", "layout", "iteration s", "tokens/s", "TFLOPS/chip", "MFU", "memory GB", "days"});
    AssumedMarks marks;
    for (size_t i = 0; i < clusters.size(); ++i) {
      const bool none = first_record[i] >= records.size() ||
                        records[first_record[i]]["cluster"] != clusters[i].name;
      if (none) {
        t.add_row({clusters[i].name, marks.mark(clusters[i].node.chip, clusters[i].node.chip.name, {"matrix_bf16", "hbm_bandwidth"}),
                   "no layout fits", "", "", "", "", "", ""});
        continue;
      }
      const json& r = records[first_record[i]];
      t.add_row({clusters[i].name, marks.mark(clusters[i].node.chip, clusters[i].node.chip.name, {"matrix_bf16", "hbm_bandwidth"}),
                 r["layout"]["description"].get<std::string>(),
                 fmt::format("{:.3f}", r["iteration_s"].get<double>()), fmt::format("{:.0f}", r["tokens_per_s"].get<double>()),
                 fmt::format("{:.1f}", r["model_flops_per_s_per_chip"].get<double>() / 1e12),
                 fmt::format("{:.1f}%", 100 * r["mfu"].get<double>()), gb(r["memory"]["total_bytes"].get<double>()),
                 r["training"].is_null() ? "-" : fmt::format("{:.1f}", r["training"]["duration_s"].get<double>() / 86400)});
    }
    std::cout << fmt::format("{} side by side (each cluster's best layout)\n", m.name) << t.render() << marks.legend();
  }
  return rc;
}

}  // namespace ppu::cli
