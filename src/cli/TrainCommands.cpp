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

json result_json(const TrainingResult& r, const ClusterSpec& c, double tokens) {
  json j;
  const Layout& l = r.layout;
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
                 {"describe", l.describe()}};
  j["chips"] = l.chips();
  j["micro_batches"] = r.micro_batches;
  j["iteration_s"] = r.iteration_s;
  j["breakdown_s"] = r.breakdown;
  j["tokens_per_s"] = r.tokens_per_s;
  j["tflops_per_chip"] = r.tflops_per_chip;
  j["mfu"] = r.mfu;
  j["hfu"] = r.hfu;
  j["memory"] = memory_json(r.memory);
  j["notes"] = r.notes;
  j["collectives"] = r.comm_how;
  if (tokens > 0) {
    const TrainingBudget b = training_budget(r, c, tokens);
    j["training"] = {{"tokens", tokens},   {"iterations", b.iterations}, {"days", b.days},
                     {"chip_hours", b.chip_hours}, {"power_w", b.power_w}, {"energy_mwh", b.energy_mwh}};
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
  for (const auto& [k, how] : r.comm_how) std::cout << fmt::format("  {}: {}\n", k, how);
  for (const auto& n : r.notes) std::cout << "note: " << n << "\n";
}

}  // namespace

int cmd_simulate_train(const TrainCliOptions& opts) {
  const ModelConfig m = load_model_config(opts.model);
  TrainCliOptions o = opts;
  if (o.seq_len == 0) o.seq_len = std::min<int64_t>(4096, m.max_position_embeddings);
  const ClusterSpec c = load_cluster(o.cluster);
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
    l.global_batch = o.global_batch > 0
                         ? o.global_batch
                         : std::max<int64_t>(1, ((int64_t{4} << 20) / o.seq_len + l.dp * l.micro_batch - 1) /
                                                    (l.dp * l.micro_batch)) * l.dp * l.micro_batch;
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
    if (o.json) {
      json j = result_json(r, c, tokens);
      j["model"] = m.name;
      j["cluster"] = c.name;
      j["network"] = net->name();
      std::cout << j.dump(2) << "\n";
    } else {
      print_result(r, m, c, net->name(), tokens);
      if (!o.trace.empty()) std::cout << "trace: " << o.trace << "\n";
    }
    return 0;
  }
  PlanOptions p;
  p.global_batch = o.global_batch;
  p.seq_len = o.seq_len;
  p.chips = o.chips;
  p.grad_reduce_bytes = grad_bytes;
  p.attention_style = parse_attention(o.attention);
  if (!o.json) p.progress = [](const std::string& s) { std::cerr << "search: " << s << "\n"; };
  const Plan plan = plan_training(m, c, p, *net, cache);
  if (plan.ranked.empty()) {
    if (o.json) {
      std::cout << json{{"model", m.name}, {"cluster", c.name}, {"fits", false}, {"explanation", plan.explanation},
                        {"closest_memory", memory_json(plan.closest_miss)}}
                       .dump(2)
                << "\n";
    } else {
      std::cout << plan.explanation << "\n";
    }
    return 1;
  }
  const TrainingResult& best = plan.ranked.front();
  if (!o.trace.empty()) {
    TraceWriter w;
    write_training_trace(best, w);
    w.write_file(o.trace);
  }
  if (o.json) {
    json j;
    j["model"] = m.name;
    j["cluster"] = c.name;
    j["network"] = net->name();
    j["layouts_considered"] = plan.considered;
    j["explanation"] = plan.explanation;
    j["search_wall_s"] = plan.wall_s;
    j["best"] = result_json(best, c, tokens);
    j["ranked"] = json::array();
    for (size_t i = 0; i < plan.ranked.size() && static_cast<int>(i) < o.top; ++i)
      j["ranked"].push_back(result_json(plan.ranked[i], c, tokens));
    std::cout << j.dump(2) << "\n";
    return 0;
  }
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

}  // namespace ppu::cli
