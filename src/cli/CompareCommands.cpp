// `ppu compare` (see Commands.hpp): the vendor's claim ("overall above A800, comparable to H20") put to
// a test. A standard suite of workloads the project already runs - kernels, inference, training - on
// each chip in its best supported dtype, the baseline's relative performance against every other
// chip, a verdict per claim, and with --sweep the same claims over a grid of the PPU's unpublished
// figures. docs/compare.md describes the suite, the dtypes, the verdict rules and the sweep.
//
//   ppu compare --chips zhenwu-810e,a800,h20 --out report/      # report/report.json (+ index.html)
//   ppu compare --suite inference --sweep zhenwu-810e.matrix_bf16=90:160
//
// Every workload calls the library the matching command calls (kernels::gemm as `bench gemm`,
// estimate_offline_throughput as `throughput`, serve::ServeSim as `simulate serve`, the
// Communicator as `bench allreduce`, cluster::simulate_training as `simulate train` with a given
// layout); nothing here shells out to `ppu`. A workload that cannot run on one chip (no node preset, a simulated out-of-memory)
// records why and the others go on.
//
// Not here: the HTML page (report/CompareHtml), workloads of its own, a layout search (too slow for
// the suite's budget: each training workload holds one layout).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <exception>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <tuple>

#include "arch/ClusterSpec.hpp"
#include "arch/NameSuggestions.hpp"
#include "arch/NodeSpec.hpp"
#include "ccl/Communicator.hpp"
#include "cli/Commands.hpp"
#include "cluster/Network.hpp"
#include "cluster/Training.hpp"
#include "kernels/Attention.hpp"
#include "kernels/Elementwise.hpp"
#include "kernels/Gemm.hpp"
#include "models/AtomicFile.hpp"
#include "models/Latency.hpp"
#include "models/Throughput.hpp"
#include "report/CompareHtml.hpp"
#include "report/JsonDoc.hpp"
#include "report/Progress.hpp"
#include "report/Table.hpp"
#include "serve/ServeSim.hpp"
#include "sim/FunctionalExecutor.hpp"

namespace ppu::cli {

namespace {

using nlohmann::json;
namespace fs = std::filesystem;

const std::vector<std::string> kSuites = {"kernels", "inference", "training", "all"};

// Qwen3's pre-training budget: "pre-trained on 36 trillion tokens" (Qwen3 Technical Report,
// arXiv:2505.09388, section 3); the Qwen3-Max training days are for that many tokens.
constexpr double kQwen3MaxTokens = 36e12;

// One chip of the comparison: the spec (perhaps with a swept field), its dtype, and the node and
// cluster presets built of it (with the chip replaced by this spec), or why there are none.
struct CompareChip {
  ChipSpec chip;
  DType dtype = DType::kBF16;            // kernels (GEMM)
  DType inference_dtype = DType::kBF16;  // the models' weights and GEMM inputs (W8A8 for int8)
  std::optional<NodeSpec> node;
  std::optional<ClusterSpec> cluster;
};

// What one workload gave on one chip: `value` in the workload's unit, or `error` (value null).
// flops/bytes/time_s: kernels only (roofline points), else NaN (null in JSON).
struct Outcome {
  std::optional<double> value;
  std::string dtype;
  double flops = NAN, bytes = NAN, time_s = NAN;
  std::string bound, note, error;
};

struct Workload {
  std::string id, suite, group, title, metric, unit, better;  // better: "lower" or "higher"
  std::function<Outcome(const CompareChip&)> run;
  // Computed from another workload's outcome on the same chip (perf per watt from offline
  // throughput) instead of running: the other's index in the suite.
  int derived_from = -1;
  std::function<Outcome(const CompareChip&, const Outcome&)> derive = nullptr;
};

json num_or_null(double v) { return std::isfinite(v) ? json(v) : json(); }
json opt_or_null(const std::optional<double>& v) { return v ? json(*v) : json(); }

// The chip's fastest floating-point matrix dtype (kernels): FP8 where it has an FP8 unit, else BF16.
DType best_dtype(const ChipSpec& c) { return c.supports(DType::kF8E4M3) ? DType::kF8E4M3 : DType::kBF16; }
// Inference: FP8 where the chip has it, else INT8 (W8A8, the PPU vendor's recommendation for FP8
// models) where it has an INT8 unit, else BF16.
DType best_inference_dtype(const ChipSpec& c) {
  if (c.supports(DType::kF8E4M3)) return DType::kF8E4M3;
  return c.supports(DType::kI8) ? DType::kI8 : DType::kBF16;
}
// The KV cache dtype that goes with a matmul dtype: the same (FP8's recipe quantises the cache too),
// but BF16 with W8A8 INT8, whose activations and cache stay 16-bit.
DType kv_dtype_for(DType matmul) { return matmul == DType::kI8 ? DType::kBF16 : matmul; }

// A one-chip NodeSpec of `chip`: what estimate_decode_latency needs for a model on a single chip.
NodeSpec one_chip_node(const ChipSpec& chip) {
  NodeSpec n;
  n.name = chip.name;
  n.display_name = chip.display_name;
  n.chip_name = chip.name;
  n.chip = chip;
  n.chips.value = 1;
  n.chips.present = true;
  return n;
}

// The node preset for the 8-chip workloads: one built of this chip with 8 chips (chip-to-chip links
// before PCIe-only, then by name), else its smallest node of more than 8 chips (the first 8 used).
std::optional<NodeSpec> node_of(const ChipSpec& chip) {
  std::optional<NodeSpec> best;
  auto rank = [](const NodeSpec& n) { return std::make_tuple(n.num_chips() == 8 ? 0 : 1, n.has_links() ? 0 : 1, n.num_chips()); };
  for (const auto& name : node_preset_names()) {
    NodeSpec n = load_node(name);
    if (n.chip.name != chip.name || n.num_chips() < 8) continue;
    if (!best || rank(n) < rank(*best)) best = std::move(n);
  }
  if (best) best->chip = chip;
  return best;
}

Outcome failed(std::string why) {
  Outcome o;
  o.error = std::move(why);
  return o;
}

std::string no_node(const CompareChip& c) { return fmt::format("no node preset for {}", c.chip.name); }
std::string no_cluster(const CompareChip& c) { return fmt::format("no cluster preset for {}", c.chip.name); }

// --- kernels ---------------------------------------------------------------------------------------

Outcome gemm_outcome(const CompareChip& c, int64_t m, int64_t n, int64_t k) {
  Device dev(c.chip, ExecMode::kTimingOnly);
  kernels::GemmShape s{m, n, k, 1, false, false, 1.0f};
  Buffer a = dev.alloc(c.dtype, m * k, "A"), b = dev.alloc(c.dtype, k * n, "B"), out = dev.alloc(DType::kBF16, m * n, "C");
  const auto cfg = kernels::choose_gemm_config(c.chip, s, c.dtype);
  const KernelTiming kt = kernels::gemm(dev, s, a, b, out, nullptr, &cfg);
  Outcome o;
  o.dtype = dtype_name(c.dtype);
  o.value = kt.time_s;
  o.time_s = kt.time_s;
  o.flops = kt.useful_flops;
  o.bytes = kt.hbm_read_bytes + kt.hbm_write_bytes;
  o.bound = kt.bound(c.chip);
  return o;
}

// BabelStream copy (c = a) or triad (a = b + s * c) over fp32 arrays of `bytes` each; the value is
// the bandwidth with BabelStream's byte counting (2 or 3 arrays moved).
Outcome stream_outcome(const CompareChip& c, bool triad, int64_t bytes) {
  Device dev(c.chip, ExecMode::kTimingOnly);
  const int64_t n = bytes / 4;
  Buffer a = dev.alloc(DType::kF32, n, "a"), b = dev.alloc(DType::kF32, n, "b"), cc = dev.alloc(DType::kF32, n, "c");
  const KernelTiming kt = triad ? kernels::triad(dev, b, cc, a, 0.4f) : kernels::copy(dev, a, cc);
  const double moved = (triad ? 3.0 : 2.0) * static_cast<double>(n) * 4;
  Outcome o;
  o.dtype = "fp32";
  o.value = moved / kt.time_s;
  o.time_s = kt.time_s;
  o.flops = triad ? 2.0 * static_cast<double>(n) : NAN;  // a copy does no arithmetic: no roofline point
  o.bytes = moved;
  o.bound = kt.bound(c.chip);
  return o;
}

// Causal attention of Qwen3-32B's heads (64 query, 8 KV, head_dim 128) in BF16: a whole prompt of
// `q_tokens` (prefill) or one token after `past` cached ones (decode).
Outcome attention_outcome(const CompareChip& c, int64_t q_tokens, int64_t past) {
  Device dev(c.chip, ExecMode::kTimingOnly);
  const int64_t heads = 64, kv_heads = 8, d = 128, kv = past + q_tokens;
  kernels::AttentionShape s{.q_tokens = q_tokens, .q_heads = heads, .kv_heads = kv_heads, .head_dim = d,
                            .kv_capacity = kv, .past_len = past};
  Buffer q = dev.alloc(DType::kBF16, q_tokens * heads * d, "q"), out = dev.alloc(DType::kBF16, q_tokens * heads * d, "o");
  Buffer k = dev.alloc(DType::kBF16, kv * kv_heads * d, "k"), v = dev.alloc(DType::kBF16, kv * kv_heads * d, "v");
  auto ws = kernels::make_attention_workspace(dev);
  const auto t = kernels::attention(dev, ws, s, q, k, v, out);
  // Causal FLOPs: 4 x head_dim per (query, visible key) pair and head.
  double pairs = 0;
  for (int64_t i = 0; i < q_tokens; ++i) pairs += static_cast<double>(past + i + 1);
  Outcome o;
  o.dtype = "bf16";
  o.value = t.time_s();
  o.time_s = t.time_s();
  o.flops = 4.0 * d * heads * pairs;
  o.bytes = t.attention.hbm_read_bytes + t.attention.hbm_write_bytes +
            (t.combine ? t.combine->hbm_read_bytes + t.combine->hbm_write_bytes : 0.0);
  o.bound = t.attention.bound(c.chip);
  o.note = "BF16 on every chip (the model's attention dtype)";
  return o;
}

// All-reduce of `bytes` (BF16) over 8 chips of the chip's node: the bus bandwidth, as nccl-tests.
Outcome allreduce_outcome(const CompareChip& c, int64_t bytes) {
  if (!c.node) return failed(no_node(c));
  const int n = 8;
  std::vector<std::unique_ptr<Device>> devs;
  std::vector<Device*> ptrs;
  for (int r = 0; r < n; ++r) {
    devs.push_back(std::make_unique<Device>(c.chip, ExecMode::kTimingOnly));
    ptrs.push_back(devs.back().get());
  }
  ccl::Communicator comm(*c.node, ptrs);
  std::vector<Buffer> send, recv;
  for (auto* d : ptrs) {
    send.push_back(d->alloc(DType::kBF16, bytes / 2, "send"));
    recv.push_back(d->alloc(DType::kBF16, bytes / 2, "recv"));
  }
  const ccl::CollectiveResult r = comm.all_reduce(send, recv, {});
  Outcome o;
  o.dtype = "bf16";
  o.value = r.busbw_bytes_per_s;
  o.note = fmt::format("{} chips of {}, {}", n, c.node->name, ccl::algorithm_name(r.algorithm));
  return o;
}

// --- inference -------------------------------------------------------------------------------------

// Qwen3 decode on one chip at `concurrency` requests of 512 prompt + 128 output tokens (the
// steady-state estimate `ppu run`'s decode loop gives; models/Latency): the inter-token latency at
// batch 1, output tokens/s (concurrency / ITL, prefills included) above.
Outcome decode_outcome(const CompareChip& c, const std::string& model, int64_t concurrency) {
  LatencyOptions lo;
  lo.concurrency = concurrency;
  lo.matmul_dtype = c.inference_dtype;
  lo.kv_dtype = kv_dtype_for(c.inference_dtype);
  const LatencyEstimate e = estimate_decode_latency(one_chip_node(c.chip), load_model_config(model), 512, 128, lo);
  Outcome o;
  o.dtype = dtype_name(c.inference_dtype);
  o.value = concurrency == 1 ? e.itl_s : static_cast<double>(concurrency) / e.itl_s;
  return o;
}

ThroughputEstimate offline(const CompareChip& c) {
  ThroughputOptions to;
  to.matmul_dtype = c.inference_dtype;
  to.kv_dtype = kv_dtype_for(c.inference_dtype);
  return estimate_offline_throughput(c.chip, load_model_config("qwen3-8b"), 1000, 1000, to);
}

serve::ServeSimConfig serve_config(const CompareChip& c) {
  serve::ServeSimConfig sc;
  sc.matmul_dtype = c.inference_dtype;
  sc.kv_dtype = kv_dtype_for(c.inference_dtype);
  sc.max_model_len = 2048;
  return sc;
}

// `simulate serve`'s highest-rate search, kept small: 100 requests of 512/128 tokens per run. The
// TTFT bound is tight (500 ms) so that a whole burst of them cannot meet it on any chip: with a looser
// bound or fewer requests, a fast chip meets the SLO at any rate (all 100 prefilled at once within
// it), and the search returns its cap instead of a steady-state rate.
Outcome max_rate_outcome(const CompareChip& c) {
  serve::ServeSim sim(c.chip, load_model_config("qwen3-8b"), serve_config(c));
  const double rate = sim.max_rate(serve::fixed_lengths(100, 512, 128), serve::parse_slo("ttft=500ms,tpot=100ms"), 1);
  Outcome o;
  o.dtype = dtype_name(c.inference_dtype);
  o.value = rate;
  o.note = "Poisson arrivals, 100 requests of 512/128 tokens per run, SLO TTFT 500 ms and TPOT 100 ms for 90%";
  return o;
}

// Qwen3-235B-A22B on 8 chips of the node, TP 4 x EP 8 (two data-parallel attention groups): the
// model's 4 KV heads rule out TP 8, as KV heads are not replicated. 64 requests of 512/128 tokens
// arriving together, output tokens/s (`simulate serve --node --tp 4 --ep 8 --io 512/128`).
Outcome moe_node_outcome(const CompareChip& c) {
  if (!c.node) return failed(no_node(c));
  serve::ParallelLayout layout{c.node, 4, 8};
  serve::ServeSim sim(c.chip, load_model_config("qwen3-235b-a22b"), serve_config(c), layout);
  const serve::ServeReport r = sim.run(serve::fixed_lengths(64, 512, 128));
  Outcome o;
  o.dtype = dtype_name(c.inference_dtype);
  o.value = r.output_tokens_per_s;
  o.note = fmt::format("8 chips of {}, TP 4 x EP 8 (4 KV heads, not replicated: no TP 8)", c.node->name);
  return o;
}

// --- training --------------------------------------------------------------------------------------

// One iteration of `model` in layout `l` (the least recomputation that fits) on `chips` chips of the
// chip's cluster, BF16 mixed precision, analytical network (`simulate train --tp .. --ep ..`). A
// layout search would cost about a minute per chip (docs/validation.md), beyond the suite's budget,
// so each workload holds one layout for every chip. DeviceOutOfMemory when it does not fit.
cluster::TrainingResult training_run(const CompareChip& c, const std::string& model, cluster::Layout l, int64_t chips) {
  const ModelConfig m = load_model_config(model);
  const ClusterSpec& cl = *c.cluster;
  l.dp = static_cast<int>(std::max<int64_t>(1, chips / (int64_t{l.tp} * l.pp * l.cp)));
  if (l.global_batch == 0) l.global_batch = cluster::default_global_batch(l.seq_len, l.dp, l.micro_batch);
  cluster::check_layout(m, cl, l, chips);
  l = cluster::least_recomputation(m, c.chip, l);
  auto net = cluster::make_network(cl, cluster::NetworkKind::kAnalytical);
  cluster::WorkloadCache cache;
  cluster::TrainingResult r = cluster::simulate_training(m, cl, l, *net, cache, chips);
  if (!r.memory.fits())
    throw DeviceOutOfMemory(fmt::format("{} in {} needs {:.1f} GB per chip on {}, which has {:.1f} GB", model,
                                        l.describe(), r.memory.total() / 1e9, c.chip.name, r.memory.capacity / 1e9),
                            static_cast<int64_t>(r.memory.total()), 0, static_cast<int64_t>(r.memory.capacity));
  return r;
}

// Qwen3-32B on 8 chips of the chip's cluster (one node's worth): TP 8 within the node (64 query and
// 8 KV heads), 64 sequences of 4096 tokens per iteration.
Outcome train_node_outcome(const CompareChip& c) {
  if (!c.cluster) return failed(no_cluster(c));
  cluster::Layout l;
  l.tp = 8;
  l.seq_len = 4096;
  l.global_batch = 64;
  const cluster::TrainingResult r = training_run(c, "qwen3-32b", l, 8);
  Outcome o;
  o.dtype = "bf16";
  o.value = r.tokens_per_s;
  o.note = fmt::format("8 chips of {}, {}, 64 x 4096 tokens per iteration", c.cluster->name, r.layout.describe());
  return o;
}

// Qwen3-Max on the chip's whole cluster in the layout the full search picks on each of the 10k
// clusters (docs/validation.md, "Headline"): TP 8, EP 256, DP over the rest, ZeRO-1, sequence 4096,
// about 4M tokens per iteration; the days to train on 36T tokens.
Outcome train_days_outcome(const CompareChip& c) {
  if (!c.cluster) return failed(no_cluster(c));
  cluster::Layout l;
  l.tp = 8;
  l.ep = 256;
  l.seq_len = 4096;
  const cluster::TrainingResult r = training_run(c, "qwen3-max", l, c.cluster->num_chips());
  const cluster::TrainingBudget b = cluster::training_budget(r, *c.cluster, kQwen3MaxTokens);
  Outcome o;
  o.dtype = "bf16";
  o.value = b.days * 86400.0;
  o.note = fmt::format("{} ({} chips), {}, 36T tokens", c.cluster->name, c.cluster->num_chips(), r.layout.describe());
  return o;
}

// The standard suite, in table order. Sizes are chosen to keep `ppu compare` for three chips within
// two minutes of host time (docs/compare.md lists what each reuses).
std::vector<Workload> suite_workloads(const std::string& suite) {
  std::vector<Workload> all;
  auto add = [&](Workload w) { all.push_back(std::move(w)); };
  auto gemm = [&](std::string id, std::string title, int64_t m, int64_t n, int64_t k) {
    add({id, "kernels", "gemm", title, "time_s", "s", "lower", [=](const CompareChip& c) { return gemm_outcome(c, m, n, k); }});
  };
  gemm("gemm_2048", "GEMM 2048x2048x2048", 2048, 2048, 2048);
  gemm("gemm_4096", "GEMM 4096x4096x4096", 4096, 4096, 4096);
  gemm("gemm_qwen3_8b_prefill", "GEMM 4096x12288x4096 (Qwen3-8B MLP, 4096 tokens)", 4096, 12288, 4096);
  gemm("gemm_qwen3_8b_decode", "GEMM 64x12288x4096 (Qwen3-8B MLP, batch-64 decode)", 64, 12288, 4096);
  const int64_t stream_bytes = int64_t{256} << 20;
  add({"stream_copy", "kernels", "stream", "HBM stream copy (256 MiB fp32 arrays)", "bandwidth_bytes_per_s", "B/s",
       "higher", [=](const CompareChip& c) { return stream_outcome(c, false, stream_bytes); }});
  add({"stream_triad", "kernels", "stream", "HBM stream triad (256 MiB fp32 arrays)", "bandwidth_bytes_per_s", "B/s",
       "higher", [=](const CompareChip& c) { return stream_outcome(c, true, stream_bytes); }});
  add({"attention_prefill", "kernels", "attention", "Attention prefill, 4096 tokens (64/8 heads, d 128)", "time_s", "s",
       "lower", [](const CompareChip& c) { return attention_outcome(c, 4096, 0); }});
  add({"attention_decode", "kernels", "attention", "Attention decode, 1 token after 8192 (64/8 heads, d 128)", "time_s",
       "s", "lower", [](const CompareChip& c) { return attention_outcome(c, 1, 8191); }});
  add({"allreduce_8", "kernels", "collective", "All-reduce 256 MiB over 8 chips (bus bandwidth)", "bus_bandwidth_bytes_per_s",
       "B/s", "higher", [](const CompareChip& c) { return allreduce_outcome(c, int64_t{256} << 20); }});
  for (const auto& [model, label] : std::vector<std::pair<std::string, std::string>>{
           {"qwen3-8b", "Qwen3-8B"}, {"qwen3-32b", "Qwen3-32B"}, {"qwen3-30b-a3b", "Qwen3-30B-A3B"}}) {
    std::string id = model;
    std::replace(id.begin(), id.end(), '-', '_');
    std::replace(id.begin(), id.end(), '.', '_');
    add({"decode_latency_" + id, "inference", "latency", label + " batch-1 decode, time per output token (512/128)",
         "time_per_output_token_s", "s", "lower", [m = model](const CompareChip& c) { return decode_outcome(c, m, 1); }});
    add({"decode_batch64_" + id, "inference", "throughput", label + " batch-64 decode, output tokens/s (512/128)",
         "output_tokens_per_s", "tokens/s", "higher", [m = model](const CompareChip& c) { return decode_outcome(c, m, 64); }});
  }
  add({"offline_qwen3_8b", "inference", "throughput", "Qwen3-8B offline serving, output tokens/s (1000/1000)",
       "output_tokens_per_s", "tokens/s", "higher", [](const CompareChip& c) {
         Outcome o;
         o.dtype = dtype_name(c.inference_dtype);
         o.value = offline(c).output_tokens_per_s;
         return o;
       }});
  const int offline_index = static_cast<int>(all.size()) - 1;
  add({"serve_max_rate_qwen3_8b", "inference", "serving", "Qwen3-8B highest Poisson rate under an SLO", "requests_per_s",
       "req/s", "higher", max_rate_outcome});
  add({"node_qwen3_235b_a22b", "inference", "node", "Qwen3-235B-A22B on 8 chips (TP 4 x EP 8), output tokens/s",
       "output_tokens_per_s", "tokens/s", "higher", moe_node_outcome});
  Workload per_watt{"offline_tokens_per_joule", "inference", "efficiency", "Qwen3-8B offline output tokens per joule (TDP)",
                    "output_tokens_per_j", "tokens/J", "higher", nullptr};
  per_watt.derived_from = offline_index;
  per_watt.derive = [](const CompareChip& c, const Outcome& from) {
    Outcome o = from;
    if (from.value) o.value = *from.value / c.chip.power.value;
    o.note = fmt::format("offline tokens/s over the chip's {:.0f} W TDP", c.chip.power.value);
    return o;
  };
  add(per_watt);
  add({"train_qwen3_32b_node", "training", "training", "Qwen3-32B training on 8 chips (BF16), tokens/s", "tokens_per_s",
       "tokens/s", "higher", train_node_outcome});
  add({"train_qwen3_max_duration", "training", "training", "Qwen3-Max on 36T tokens, the chip's 10k cluster (BF16), duration",
       "training_duration_s", "s", "lower", train_days_outcome});
  if (suite == "all") return all;
  std::vector<Workload> out;
  std::vector<int> new_index(all.size(), -1);
  for (size_t i = 0; i < all.size(); ++i)
    if (all[i].suite == suite) {
      new_index[i] = static_cast<int>(out.size());
      out.push_back(all[i]);
    }
  for (auto& w : out)
    if (w.derived_from >= 0) w.derived_from = new_index[static_cast<size_t>(w.derived_from)];
  return out;
}

// The matrix dtype a suite's workloads run in on `c`: training is BF16 mixed precision everywhere.
DType suite_dtype(const std::string& suite, const CompareChip& c) {
  return suite == "inference" ? c.inference_dtype : suite == "training" ? DType::kBF16 : c.dtype;
}

// Runs `w` on `c`: a UserError or simulated event becomes the outcome's error (value null).
Outcome run_one(const Workload& w, const CompareChip& c) {
  Outcome o;
  try {
    o = w.run(c);
  } catch (const SimEvent& e) {
    o = failed(std::string("simulated event: ") + e.what());
  } catch (const UserError& e) {
    o = failed(e.what());
  }
  if (o.dtype.empty()) o.dtype = dtype_name(suite_dtype(w.suite, c));
  return o;
}

// outcomes[w][c] for every workload and chip, the independent (workload, chip) pairs spread over
// default_host_threads() threads (PPU_THREADS), derived workloads filled afterwards. Deterministic:
// each pair's result lands in its own slot.
std::vector<std::vector<Outcome>> run_suite(const std::vector<Workload>& ws, const std::vector<CompareChip>& chips,
                                            const std::string& progress_label) {
  std::vector<std::vector<Outcome>> out(ws.size(), std::vector<Outcome>(chips.size()));
  std::vector<std::pair<size_t, size_t>> tasks;
  // The suite's last workloads (serving, training) are its slowest: they start first, so the cheap
  // kernels fill the threads at the end.
  for (size_t w = ws.size(); w-- > 0;)
    if (ws[w].derived_from < 0)
      for (size_t c = 0; c < chips.size(); ++c) tasks.emplace_back(w, c);
  Progress progress(progress_label, static_cast<int64_t>(tasks.size()));
  std::mutex mu;
  std::exception_ptr error;  // anything but a user's mistake or a simulated event: a bug, rethrown
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i; (i = next.fetch_add(1)) < tasks.size();) {
      const auto [w, c] = tasks[i];
      try {
        Outcome o = run_one(ws[w], chips[c]);
        std::lock_guard<std::mutex> lock(mu);
        out[w][c] = std::move(o);
        progress.done(fmt::format("{} on {}", ws[w].id, chips[c].chip.name));
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (!error) error = std::current_exception();
        next = tasks.size();
      }
    }
  };
  const int threads = std::max(1, std::min<int>(default_host_threads(), static_cast<int>(tasks.size())));
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
  for (size_t w = 0; w < ws.size(); ++w)
    if (ws[w].derived_from >= 0)
      for (size_t c = 0; c < chips.size(); ++c)
        out[w][c] = ws[w].derive(chips[c], out[static_cast<size_t>(ws[w].derived_from)][c]);
  return out;
}

// Baseline performance over the other chip's on one workload (> 1: the baseline is better), or
// nullopt where either has no value.
std::optional<double> relative(const Workload& w, const Outcome& base, const Outcome& other) {
  if (!base.value || !other.value || !(*base.value > 0) || !(*other.value > 0)) return std::nullopt;
  return w.better == "lower" ? *other.value / *base.value : *base.value / *other.value;
}

struct ClaimDef {
  std::string claim, text, chip, test;
  bool (*holds)(double geomean);
};

const std::vector<ClaimDef>& claim_defs() {
  static const std::vector<ClaimDef> defs = {
      {"above_a800", "overall performance above A800", "a800",
       "geometric mean of relative performance over the suite's workloads > 1", [](double g) { return g > 1.0; }},
      // Within 25% either way, symmetric in log: 0.8 = 1 / 1.25.
      {"comparable_h20", "comparable to H20", "h20", "geometric mean of relative performance within 0.8 .. 1.25",
       [](double g) { return g >= 0.8 && g <= 1.25; }},
  };
  return defs;
}

// The claims are the PPU vendor's: tested only with the PPU (or a chip file derived from it) as the
// baseline, each against the chip it names when that chip is in the comparison.
bool is_ppu(const ChipSpec& c) {
  return c.name.rfind("zhenwu", 0) == 0 || c.display_name.find("Zhenwu") != std::string::npos;
}

json claims_json(const std::vector<Workload>& ws, const std::vector<std::vector<Outcome>>& out,
                 const std::vector<CompareChip>& chips) {
  json claims = json::array();
  if (chips.empty() || !is_ppu(chips[0].chip)) return claims;
  for (const ClaimDef& d : claim_defs()) {
    size_t ci = chips.size();
    for (size_t c = 1; c < chips.size(); ++c)
      if (chips[c].chip.name == d.chip) ci = c;
    if (ci == chips.size()) continue;
    double log_sum = 0;
    int n = 0, wins = 0, losses = 0;
    for (size_t w = 0; w < ws.size(); ++w)
      if (auto r = relative(ws[w], out[w][0], out[w][ci])) {
        log_sum += std::log(*r);
        ++n;
        wins += *r > 1;
        losses += *r < 1;
      }
    const double g = n ? std::exp(log_sum / n) : NAN;
    const std::string verdict = n == 0 ? "not_tested" : d.holds(g) ? "holds" : "does_not_hold";
    claims.push_back({{"claim", d.claim}, {"text", d.text}, {"chip", d.chip}, {"test", d.test}, {"geomean", num_or_null(g)},
                      {"wins", wins}, {"losses", losses}, {"workloads", n}, {"verdict", verdict}});
  }
  return claims;
}

// --- the sweep ---------------------------------------------------------------------------------------

// Chip fields a sweep may override: the unpublished rates and sizes the PPU's claims rest on.
const std::vector<std::string> kSweepable = {"matrix_bf16", "matrix_fp16", "matrix_fp8", "matrix_int8", "vector_fp32", "hbm_bandwidth",
                                             "hbm_size", "l2_bandwidth", "chip_link_bandwidth", "power"};

struct SweepAxis {
  std::string key, chip, field, unit;
  std::vector<double> values;  // in the preset's own unit
};

// The number and unit a quantity was written with ("120 TFLOPS" -> 120, "TFLOPS").
std::pair<double, std::string> as_written(const Quantity& q) {
  const size_t sp = q.text.find(' ');
  char* end = nullptr;
  const double v = std::strtod(q.text.c_str(), &end);
  if (sp == std::string::npos || end == q.text.c_str() || !(v > 0)) return {q.value, ""};
  return {v, q.text.substr(sp + 1)};
}

Quantity ChipSpec::*field_member(const std::string& field) {
  for (const auto& f : chip_fields())
    if (f.key == field) return f.member;
  return nullptr;
}

double parse_number(const std::string& text, const std::string& spec) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(v))
    throw UserError(fmt::format("--sweep '{}': '{}' is not a number; write CHIP.FIELD=LO:HI, e.g. "
                                "zhenwu-810e.matrix_bf16=90:160",
                                spec, text));
  return v;
}

std::vector<SweepAxis> parse_sweep(const std::string& text, int points, const std::vector<CompareChip>& chips) {
  if (points < 2)
    throw UserError(fmt::format("--sweep-points {}: a sweep needs at least 2 points per axis", points));
  std::vector<SweepAxis> axes;
  std::vector<std::string> chip_names;
  for (const auto& c : chips) chip_names.push_back(c.chip.name);
  for (size_t i = 0; i <= text.size();) {
    const size_t j = std::min(text.find(',', i), text.size());
    const std::string spec = text.substr(i, j - i);
    i = j + 1;
    const size_t eq = spec.find('='), colon = spec.find(':', eq == std::string::npos ? 0 : eq);
    const size_t dot = spec.rfind('.', eq);
    if (eq == std::string::npos || colon == std::string::npos || dot == std::string::npos || dot == 0)
      throw UserError(fmt::format("--sweep '{}': write CHIP.FIELD=LO:HI (two axes at most, separated by a comma), e.g. "
                                  "zhenwu-810e.matrix_bf16=90:160",
                                  spec));
    SweepAxis a;
    a.chip = spec.substr(0, dot);
    a.field = spec.substr(dot + 1, eq - dot - 1);
    a.key = a.chip + "." + a.field;
    const auto ci = std::find_if(chips.begin(), chips.end(), [&](const CompareChip& c) {
      return same_name_ignoring_case(c.chip.name, a.chip);
    });
    if (ci == chips.end())
      throw UserError(fmt::format("--sweep '{}': chip '{}' is not one of --chips; {}the chips compared: {}", spec, a.chip,
                                  did_you_mean(a.chip, chip_names), fmt::join(chip_names, ", ")));
    a.chip = ci->chip.name;
    a.key = a.chip + "." + a.field;
    if (std::find(kSweepable.begin(), kSweepable.end(), a.field) == kSweepable.end())
      throw UserError(fmt::format("--sweep '{}': '{}' is not a sweepable chip field; {}sweepable: {}", spec, a.field,
                                  did_you_mean(a.field, kSweepable), fmt::join(kSweepable, ", ")));
    const Quantity& q = ci->chip.*field_member(a.field);
    if (!q.present)
      throw UserError(fmt::format("--sweep '{}': {} has no {} (the preset leaves it out)", spec, a.chip, a.field));
    a.unit = as_written(q).second;
    const double lo = parse_number(spec.substr(eq + 1, colon - eq - 1), spec);
    const double hi = parse_number(spec.substr(colon + 1), spec);
    if (!(lo > 0) || !(hi > lo))
      throw UserError(fmt::format("--sweep '{}': the range {}:{} is empty or inverted; write LO:HI with 0 < LO < HI, in "
                                  "the preset's unit ({}: {})",
                                  spec, lo, hi, a.field, q.text));
    // Grid points rounded to 12 significant digits: 2.15, not 2.1500000000000004.
    for (int p = 0; p < points; ++p)
      a.values.push_back(std::stod(fmt::format("{:.12g}", lo + (hi - lo) * p / (points - 1))));
    for (const auto& other : axes)
      if (other.key == a.key) throw UserError(fmt::format("--sweep '{}': {} is swept twice", text, a.key));
    axes.push_back(std::move(a));
  }
  if (axes.size() > 2)
    throw UserError(fmt::format("--sweep '{}': {} axes; a sweep takes one or two", text, axes.size()));
  return axes;
}

// `c` with `field` set to `value` in its preset's unit (the SI value scaled as written), the basis
// marked as swept. matrix_bf16 stands for the matrix unit's speed: the other matrix rates (fp16,
// fp8, int8) scale with it, keeping the preset's ratios (the PPU's are assumed as multiples of its
// 16-bit peak); sweeping one of those moves it alone. A swept chip-to-chip link rate scales the
// node's and cluster's links alike (they are the chip's links).
void override_field(CompareChip& c, const std::string& field, double value) {
  Quantity& q = c.chip.*field_member(field);
  const auto [written, unit] = as_written(q);
  const double factor = value / written;
  auto scale = [&](Quantity& x) {
    const auto [v, u] = as_written(x);
    x.value *= factor;
    x.text = fmt::format("{:g} {}", v * factor, u);
    x.source.clear();
    x.assumed = fmt::format("swept by ppu compare --sweep ({})", field);
  };
  scale(q);
  if (field == "matrix_bf16")
    for (Quantity* other : {&c.chip.matrix_fp16, &c.chip.matrix_fp8, &c.chip.matrix_int8})
      if (other->present) scale(*other);
  auto rescale_node = [&](NodeSpec& n) {
    n.chip = c.chip;
    if (field == "chip_link_bandwidth" && n.link_bandwidth.present) n.link_bandwidth.value *= factor;
  };
  if (c.node) rescale_node(*c.node);
  if (c.cluster) rescale_node(c.cluster->node);
}

// --- output ----------------------------------------------------------------------------------------

std::string value_text(const Workload& w, const std::optional<double>& v) {
  if (!v) return "-";
  if (w.metric == "training_duration_s") return fmt::format("{:.1f} days", *v / 86400);
  if (w.unit == "s") return format_quantity(Dimension::kTime, *v);
  if (w.unit == "B/s") return fmt::format("{:.0f} GB/s", *v / 1e9);
  if (w.unit == "tokens/s") return fmt::format("{:.0f} tok/s", *v);
  if (w.unit == "req/s") return fmt::format("{:.2f} req/s", *v);
  return fmt::format("{:.3g} {}", *v, w.unit);
}

// Checks that `dir` can hold the report (created if missing) before any work: a UserError naming it
// and the OS error otherwise.
void check_out_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw UserError(fmt::format("--out {}: cannot create the folder ({})", dir, ec.message()));
  const fs::path probe = fs::path(dir) / ".ppu-compare-write-test";
  std::ofstream f(probe);
  if (!f) throw UserError(fmt::format("--out {}: cannot write in the folder ({})", dir, std::strerror(errno)));
  f.close();
  fs::remove(probe, ec);
}

}  // namespace

int cmd_compare(const CompareOptions& o) {
  const auto wall0 = std::chrono::steady_clock::now();
  std::string suite = o.suite.empty() ? (o.sweep.empty() ? "all" : "inference") : o.suite;
  if (std::find(kSuites.begin(), kSuites.end(), suite) == kSuites.end())
    throw UserError(fmt::format("--suite '{}' is not a suite; {}valid: {}", suite, did_you_mean(suite, kSuites),
                                fmt::join(kSuites, ", ")));
  std::optional<DType> forced;
  if (o.dtype != "auto") {
    forced = dtype_from_name(o.dtype);
    if (!forced || *forced == DType::kF32 || *forced == DType::kI32)
      throw UserError(fmt::format("--dtype '{}': valid: auto (each chip's best), bf16, fp16, fp8e4m3, fp8e5m2, int8", o.dtype));
  }
  std::vector<CompareChip> chips;
  for (const auto& name : expand_names(o.chips, "--chips", chip_preset_names())) {
    CompareChip c;
    c.chip = load_chip(name);
    for (const auto& other : chips)
      if (other.chip.name == c.chip.name)
        throw UserError(fmt::format("--chips {}: {} is named twice", o.chips, c.chip.name));
    c.dtype = forced ? *forced : best_dtype(c.chip);
    c.inference_dtype = forced ? *forced : best_inference_dtype(c.chip);
    if (!c.chip.supports(c.dtype))
      throw UserError(fmt::format("--dtype {}: {} has no {} matrix unit; chips with one: {} (or --dtype auto: each chip's "
                                  "best)",
                                  o.dtype, c.chip.name, o.dtype, presets_supporting(c.dtype)));
    c.node = node_of(c.chip);
    if (auto cl = cluster_preset_of_chip(c.chip.name)) {
      c.cluster = load_cluster(*cl);
      c.cluster->node.chip = c.chip;
    }
    chips.push_back(std::move(c));
  }
  if (chips.empty()) throw UserError("--chips: give at least one chip");
  const std::vector<SweepAxis> axes = o.sweep.empty() ? std::vector<SweepAxis>{} : parse_sweep(o.sweep, o.sweep_points, chips);
  if (!o.out.empty()) check_out_dir(o.out);

  const std::vector<Workload> ws = suite_workloads(suite);
  const auto out = run_suite(ws, chips, "compare");

  // The document (docs/schemas/compare.schema.json).
  json results = json::array();
  for (size_t w = 0; w < ws.size(); ++w) {
    json per_chip = json::array(), rel = json::array();
    for (size_t c = 0; c < chips.size(); ++c) {
      const Outcome& oc = out[w][c];
      per_chip.push_back({{"chip", chips[c].chip.name}, {"dtype", oc.dtype}, {"value", opt_or_null(oc.value)},
                          {"flops", num_or_null(oc.flops)}, {"bytes", num_or_null(oc.bytes)},
                          {"time_s", num_or_null(oc.time_s)}, {"bound", json_text_or_null(oc.bound)},
                          {"note", json_text_or_null(oc.note)}, {"error", json_text_or_null(oc.error)}});
      if (c > 0) rel.push_back({{"chip", chips[c].chip.name}, {"value", opt_or_null(relative(ws[w], out[w][0], oc))}});
    }
    results.push_back({{"workload", ws[w].id}, {"suite", ws[w].suite}, {"group", ws[w].group}, {"title", ws[w].title},
                       {"metric", ws[w].metric}, {"unit", ws[w].unit}, {"better", ws[w].better}, {"chips", per_chip},
                       {"relative_performance", rel}});
  }
  const json claims = claims_json(ws, out, chips);
  json chip_records = json::array(), sources = json::array();
  for (const auto& c : chips) {
    const std::string mf(matrix_field_for(c.dtype)), mf_inference(matrix_field_for(c.inference_dtype));
    chip_records.push_back({{"chip", c.chip.name}, {"display_name", c.chip.display_name},
                            {"dtype", std::string(dtype_name(c.dtype))},
                            {"inference_dtype", std::string(dtype_name(c.inference_dtype))},
                            {"matrix_peak_flops_per_s", c.chip.matrix_flops_per_s(c.dtype)},
                            {"hbm_bandwidth_bytes_per_s", c.chip.hbm_bandwidth.value}, {"tdp_w", c.chip.power.value},
                            {"node", c.node ? json(c.node->name) : json()},
                            {"cluster", c.cluster ? json(c.cluster->name) : json()},
                            {"assumed_fields", AssumedMarks::among(c.chip, {mf, mf_inference, "hbm_bandwidth", "hbm_size",
                                                                            "chip_link_bandwidth", "power"})}});
    std::vector<std::string> fields;
    for (const std::string& f : {mf, mf_inference, std::string("matrix_bf16"), std::string("vector_fp32"),
                                std::string("hbm_size"), std::string("hbm_bandwidth"), std::string("chip_links"),
                                std::string("chip_link_bandwidth"), std::string("power")})
      if (std::find(fields.begin(), fields.end(), f) == fields.end()) fields.push_back(f);
    for (const auto& f : fields) {
      const Quantity& q = c.chip.*field_member(f);
      if (!q.present) continue;
      const auto [v, unit] = as_written(q);
      const bool assumed = !q.assumed.empty();
      sources.push_back({{"chip", c.chip.name}, {"field", f}, {"value", v}, {"unit", json_text_or_null(unit)},
                         {"basis", assumed ? "assumed" : "published"}, {"source", assumed ? q.assumed : q.source}});
    }
  }

  json sweep = nullptr;
  if (!axes.empty()) {
    // Only the swept chips change from cell to cell; the others keep the results above.
    std::vector<std::vector<double>> grid = {{}};
    for (const auto& a : axes) {
      std::vector<std::vector<double>> next;
      for (const auto& g : grid)
        for (double v : a.values) {
          next.push_back(g);
          next.back().push_back(v);
        }
      grid = std::move(next);
    }
    json cells = json::array();
    Progress progress("sweep", static_cast<int64_t>(grid.size()));
    for (const auto& point : grid) {
      std::vector<CompareChip> cell_chips = chips;
      std::vector<size_t> swept;
      for (size_t a = 0; a < axes.size(); ++a)
        for (size_t c = 0; c < chips.size(); ++c)
          if (chips[c].chip.name == axes[a].chip) {
            override_field(cell_chips[c], axes[a].field, point[a]);
            if (std::find(swept.begin(), swept.end(), c) == swept.end()) swept.push_back(c);
          }
      std::vector<CompareChip> to_run;
      for (size_t c : swept) to_run.push_back(cell_chips[c]);
      const auto rerun = run_suite(ws, to_run, "sweep cell");
      auto cell_out = out;
      for (size_t w = 0; w < ws.size(); ++w)
        for (size_t i = 0; i < swept.size(); ++i) cell_out[w][swept[i]] = rerun[w][i];
      json cell_claims = json::array();
      for (const auto& cl : claims_json(ws, cell_out, cell_chips))
        cell_claims.push_back({{"claim", cl["claim"]}, {"geomean", cl["geomean"]}, {"verdict", cl["verdict"]}});
      cells.push_back({{"values", point}, {"claims", cell_claims}});
      std::string where;
      for (size_t a = 0; a < axes.size(); ++a) where += fmt::format("{}{}={:g}", a ? " " : "", axes[a].key, point[a]);
      progress.done(where);
    }
    json axes_j = json::array();
    for (const auto& a : axes)
      axes_j.push_back({{"key", a.key}, {"field", a.field}, {"chip", a.chip}, {"unit", json_text_or_null(a.unit)},
                        {"values", a.values}});
    sweep = {{"suite", suite}, {"axes", axes_j}, {"cells", cells}};
  }

  const double host_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  const json doc = json_document("compare", results,
                                 {{"suite", suite}, {"baseline", chips[0].chip.name}, {"chips", chip_records},
                                  {"claims", claims}, {"sweep", sweep}, {"sources", sources}, {"host_s", host_s}});
  if (!o.out.empty()) {
    const std::string html = report::compare_report_html(doc);
    for (const auto& [file, text] : {std::pair<std::string, std::string>{"report.json", doc.dump(2) + "\n"}, {"index.html", html}}) {
      try {
        write_file_atomically((fs::path(o.out) / file).string(), [&](std::ostream& os) { os << text; });
      } catch (const std::exception& e) {
        throw UserError(fmt::format("--out {}: cannot write {} ({})", o.out, file, e.what()));
      }
    }
  }
  if (o.json) {
    std::cout << doc.dump(2) << '\n';
    return 0;
  }

  // One table per suite: each chip's value, then the baseline's relative performance to each other.
  AssumedMarks marks;
  std::vector<std::string> notes;
  for (const std::string& s : kSuites) {
    if (s == "all" || std::none_of(ws.begin(), ws.end(), [&](const Workload& w) { return w.suite == s; })) continue;
    // Each chip's column names the dtype this suite runs in on it.
    std::vector<std::string> header = {"workload"};
    for (const auto& c : chips) {
      const DType t = suite_dtype(s, c);
      header.push_back(marks.mark(c.chip, fmt::format("{} ({})", c.chip.name, dtype_name(t)),
                                  {matrix_field_for(t), "hbm_bandwidth"}));
    }
    for (size_t c = 1; c < chips.size(); ++c) header.push_back(fmt::format("{} / {}", chips[0].chip.name, chips[c].chip.name));
    Table t(header);
    for (size_t w = 0; w < ws.size(); ++w) {
      if (ws[w].suite != s) continue;
      std::vector<std::string> row = {ws[w].title};
      for (size_t c = 0; c < chips.size(); ++c) {
        const Outcome& oc = out[w][c];
        row.push_back(oc.error.empty() ? value_text(ws[w], oc.value) : "error");
        if (!oc.error.empty()) notes.push_back(fmt::format("{} on {}: {}", ws[w].id, chips[c].chip.name, oc.error));
      }
      for (size_t c = 1; c < chips.size(); ++c) {
        const auto r = relative(ws[w], out[w][0], out[w][c]);
        row.push_back(r ? fmt::format("{:.2f}x", *r) : "-");
      }
      t.add_row(row);
    }
    std::cout << fmt::format("== {} ==\n", s) << t.render() << '\n';
  }
  for (const auto& n : notes) std::cout << "error: " << n << '\n';
  std::cout << marks.legend();
  std::cout << fmt::format("ratios: {}'s performance over the other chip's (> 1: {} is faster); each chip in its best "
                           "dtype (--dtype)\n",
                           chips[0].chip.name, chips[0].chip.name);
  if (claims.empty())
    std::cout << "claims: none tested (they are the PPU's: the first chip must be zhenwu-810e, and the chip a claim "
                 "names must be in --chips)\n";
  for (const auto& cl : claims) {
    const json g = cl["geomean"];
    std::cout << fmt::format("claim '{}' ({}): geometric mean {} over {} workloads ({} wins, {} losses) -> {}\n",
                             cl["text"].get<std::string>(), cl["test"].get<std::string>(),
                             g.is_null() ? "-" : fmt::format("{:.2f}", g.get<double>()), cl["workloads"].get<int>(),
                             cl["wins"].get<int>(), cl["losses"].get<int>(), cl["verdict"].get<std::string>());
  }
  if (!sweep.is_null()) {
    std::cout << fmt::format("\nsweep over {} cells ({} suite):\n", sweep["cells"].size(), suite);
    std::vector<std::string> sh;
    for (const auto& a : axes) sh.push_back(fmt::format("{} ({})", a.key, a.unit));
    for (const auto& cl : claims) sh.push_back(cl["claim"].get<std::string>());
    Table st(sh);
    for (const auto& cell : sweep["cells"]) {
      std::vector<std::string> row;
      for (const auto& v : cell["values"]) row.push_back(fmt::format("{:g}", v.get<double>()));
      for (const auto& cl : cell["claims"])
        row.push_back(cl["geomean"].is_null() ? "-"
                                              : fmt::format("{:.2f} {}", cl["geomean"].get<double>(),
                                                            cl["verdict"] == "holds" ? "holds" : "does not hold"));
      st.add_row(row);
    }
    std::cout << st.render();
  }
  if (!o.out.empty())
    std::cout << fmt::format("wrote {} and {}\n", (fs::path(o.out) / "report.json").string(),
                             (fs::path(o.out) / "index.html").string());
  std::cout << fmt::format("host time: {:.1f} s\n", host_s);
  return 0;
}

}  // namespace ppu::cli
