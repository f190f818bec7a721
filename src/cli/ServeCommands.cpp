// `ppu simulate serve`: request-level serving simulation (serve/ServeSim) on one or more chips side
// by side, or on a node's chips with the model split (--node --tp --ep) - latency percentiles,
// throughput, goodput under an SLO and the highest rate meeting it.
// `ppu serve`: the OpenAI-compatible server (serve/Server) on a functional engine.
#include <fmt/format.h>
#include <pthread.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <thread>

#include "Commands.hpp"
#include "arch/NameSuggestions.hpp"
#include "arch/NameTable.hpp"
#include "arch/Presets.hpp"
#include "arch/Units.hpp"
#include "models/ModelConfig.hpp"
#include "report/JsonDoc.hpp"
#include "report/Table.hpp"
#include "report/TraceWriter.hpp"
#include "models/Tokenizer.hpp"
#include "serve/Engine.hpp"
#include "serve/ServeSim.hpp"
#include "serve/Server.hpp"
#include "serve/Tools.hpp"

namespace ppu::cli {

namespace {

using nlohmann::json;
using serve::RequestSpec;
using ppu::UserError;

std::string ms(double s) { return fmt::format("{:.1f}", 1e3 * s); }

// The workload the options describe, and a line saying what it is.
std::pair<std::vector<RequestSpec>, std::string> workload(const SimulateServeOptions& o) {
  if (!o.trace.empty() && !o.io.empty()) throw UserError("--trace and --io: give one (a trace's lengths, or fixed ones)");
  if (o.requests < 0) throw UserError(fmt::format("--requests {}; valid: 0 (all) or more", o.requests));
  if (!(o.duration >= 0) || !std::isfinite(o.duration))
    throw UserError(fmt::format("--duration {}; valid: 0 (no limit) or a positive number of seconds", o.duration));
  std::vector<RequestSpec> reqs;
  std::string what;
  if (!o.io.empty()) {
    const auto io = parse_io_pair(o.io);
    if (!io) throw UserError(fmt::format("--io '{}' is not input/output token counts (e.g. 1024/256)", o.io));
    const auto [in, out] = *io;
    reqs = serve::fixed_lengths(o.requests > 0 ? o.requests : 1000, in, out);
    what = fmt::format("{} requests of {} input and {} output tokens", reqs.size(), in, out);
  } else {
    const std::string name = o.trace.empty() ? "azure-conv" : o.trace;
    reqs = serve::load_trace(name);
    if (o.requests > 0 && static_cast<size_t>(o.requests) < reqs.size()) reqs.resize(static_cast<size_t>(o.requests));
    what = fmt::format("trace {}: {} requests", name, reqs.size());
  }
  if (o.rate > 0 || o.arrival != "poisson") {
    const auto proc = o.arrival == "poisson" ? serve::ArrivalProcess::kPoisson
                      : o.arrival == "gamma" ? serve::ArrivalProcess::kGamma
                                             : throw UserError(fmt::format("--arrival '{}'; valid: poisson, gamma", o.arrival));
    if (!(o.rate > 0)) throw UserError(fmt::format("--arrival {} needs --rate (requests per second, above 0)", o.arrival));
    reqs = serve::with_arrivals(std::move(reqs), {.rate = o.rate, .process = proc, .cv = o.cv, .seed = o.seed});
    what += proc == serve::ArrivalProcess::kPoisson ? fmt::format(", Poisson arrivals at {:g}/s", o.rate)
                                                    : fmt::format(", gamma arrivals at {:g}/s (cv {:g})", o.rate, o.cv);
  } else if (o.rate < 0 || !std::isfinite(o.rate)) {
    throw UserError(fmt::format("--rate {}; valid: a positive number of requests per second", o.rate));
  } else {
    what += o.io.empty() ? ", the trace's arrival times" : ", all arriving at once (offline)";
  }
  if (o.duration > 0) {
    size_t keep = 0;
    while (keep < reqs.size() && reqs[keep].arrival_s < o.duration) ++keep;
    if (keep == 0) throw UserError(fmt::format("--duration {:g} s: no request arrives that early", o.duration));
    reqs.resize(keep);
    what += fmt::format(", the {} arriving within {:g} s", keep, o.duration);
  }
  return {std::move(reqs), what};
}

// The parallel layout the options give (--node, --tp, --ep; the same meaning and checks as `ppu run
// --node --tp --ep`), and the chips to serve on: --chip's list, or the node's chip (--chip then must
// name it or be left at its default).
std::pair<serve::ParallelLayout, std::vector<ChipSpec>> layout_and_chips(const SimulateServeOptions& o,
                                                                         const ModelConfig& cfg) {
  serve::ParallelLayout layout;
  layout.tp = o.tp;
  layout.ep = o.ep;
  std::vector<ChipSpec> specs;
  if (!o.node.empty()) {
    layout.node = load_node(o.node);
    if (o.chip != SimulateServeOptions{}.chip) {
      const std::vector<std::string> chips = expand_chips(o.chip);
      if (chips.size() != 1 || !same_name_ignoring_case(chips[0], layout.node->chip.name))
        throw UserError(fmt::format("--chip {} and --node {} ({} chips) disagree; give one of them", o.chip,
                                    layout.node->name, layout.node->chip.name));
    }
    specs.push_back(layout.node->chip);
  } else {
    for (const auto& c : expand_chips(o.chip)) specs.push_back(load_chip(c));  // every name checked before any work
  }
  layout.check(cfg);
  return {std::move(layout), std::move(specs)};
}

// "zhenwu-16: 16 chips, TP 4, EP 16" for a layout on a node; the chip's name otherwise.
std::string layout_label(const serve::ParallelLayout& l, const ChipSpec& chip) {
  if (!l.node) return chip.name;
  return fmt::format("{}: {} chip{}, TP {}, EP {}", l.node->name, l.world(), l.world() > 1 ? "s" : "", l.tp, l.ep);
}

}  // namespace

int cmd_simulate_serve(const SimulateServeOptions& o) {
  const ModelConfig cfg = load_model_config(o.model);
  const auto [layout, specs] = layout_and_chips(o, cfg);
  if (!o.perfetto.empty() && specs.size() > 1) throw UserError("--perfetto needs a single --chip");
  const auto admission = find_name<serve::Admission>(serve::kAdmissionNames, o.admission);
  if (!admission)
    throw UserError(fmt::format("--admission '{}'; valid: {}", o.admission, join_names(serve::kAdmissionNames)));
  std::optional<serve::Slo> slo;
  if (!o.slo.empty()) slo = serve::parse_slo(o.slo);
  if (o.search_requests < 1) throw UserError(fmt::format("--search-requests {}; valid: at least 1", o.search_requests));
  const auto [reqs, what] = workload(o);

  Table lat({"chip", "done", "rejected", "req/s", "output tok/s", "TTFT p50/p90/p99 ms", "TPOT p50/p90/p99 ms",
             "ITL p50/p99 ms", "E2E p50/p99 s", "batch", "KV peak/mean", "preempted"});
  Table slo_t({"chip", "SLO met", "goodput req/s", "max rate under the SLO (req/s)"});
  json rows = json::array();
  AssumedMarks marks;
  std::string notes;
  for (const ChipSpec& chip : specs) {
    serve::ServeSimConfig c;
    c.scheduler.max_num_seqs = o.max_num_seqs;
    c.scheduler.max_batched_tokens = o.max_batched_tokens;
    c.scheduler.chunked_prefill = !o.no_chunked_prefill;
    c.scheduler.admission = *admission;
    c.block_size = o.block_size;
    c.prefix_caching = !o.no_prefix_caching;
    c.kv_memory_fraction = o.kv_fraction;
    c.max_model_len = o.max_model_len;
    c.matmul_dtype = serving_dtype("--matmul-dtype", o.matmul_dtype, chip, DType::kBF16);
    c.kv_dtype = serving_dtype("--kv-dtype", o.kv_dtype, chip, c.matmul_dtype);
    const std::string label = layout_label(layout, chip);
    std::cerr << fmt::format("simulate serve: {} on {}: {}\n", cfg.name, label, what);
    serve::ServeSim sim(chip, cfg, c, layout);
    TraceWriter tw;
    serve::ServeReport r = sim.run(reqs, o.perfetto.empty() ? nullptr : &tw);
    if (!o.perfetto.empty()) tw.write_file(o.perfetto);
    double max_rate = -1;
    serve::ServeReport at_max;
    if (slo) {
      serve::apply_slo(r, *slo);
      std::vector<RequestSpec> lengths(reqs.begin(), reqs.begin() + static_cast<std::ptrdiff_t>(std::min<size_t>(
                                                                        reqs.size(), static_cast<size_t>(o.search_requests))));
      max_rate = sim.max_rate(lengths, *slo, o.seed, &at_max);
    }
    lat.add_row({marks.mark(chip, label, {"matrix_bf16", "hbm_bandwidth"}), fmt::format("{}", r.completed),
                 fmt::format("{}", r.rejected), fmt::format("{:.2f}", r.requests_per_s),
                 fmt::format("{:.0f}", r.output_tokens_per_s),
                 fmt::format("{}/{}/{}", ms(r.ttft.p50), ms(r.ttft.p90), ms(r.ttft.p99)),
                 fmt::format("{}/{}/{}", ms(r.tpot.p50), ms(r.tpot.p90), ms(r.tpot.p99)),
                 fmt::format("{}/{}", ms(r.itl.p50), ms(r.itl.p99)), fmt::format("{:.1f}/{:.1f}", r.e2e.p50, r.e2e.p99),
                 fmt::format("{:.1f}", r.mean_batch), fmt::format("{:.0f}%/{:.0f}%", 100 * r.kv_peak_use, 100 * r.kv_mean_use),
                 fmt::format("{}", r.preemptions)});
    if (slo)
      slo_t.add_row({label, fmt::format("{:.1f}%", 100 * r.slo_attainment), fmt::format("{:.2f}", r.goodput_rps),
                     max_rate > 0 ? fmt::format("{:.2f}", max_rate) : "below 1/64"});
    if (!r.first_rejection.empty()) notes += fmt::format("{}: rejected {}: first: {}\n", label, r.rejected, r.first_rejection);
    notes += fmt::format("{}: KV cache {} blocks of {} positions ({:.1f} GB{}; weights {:.1f} GB, activations {:.1f} GB{}); {} "
                         "steps priced by {} timing-only forwards{}; host {:.1f} s\n",
                         label, r.kv_blocks, r.block_size,
                         static_cast<double>(r.kv_blocks * r.block_size) * r.kv_bytes_per_token / 1e9,
                         r.chips > 1 ? fmt::format(" over {} chips", r.chips) : "", r.weight_bytes / 1e9,
                         r.activation_bytes / 1e9, r.chips > 1 ? " per chip" : "", r.steps, r.probes,
                         r.chips > 1 ? " of the split model" : "", r.host_s);
    if (r.dp_groups > 1)
      notes += fmt::format("{}: attention in {} data-parallel groups of {} chip{}: a step's requests spread over them (decodes "
                           "round-robin, prefill chunks to the least-loaded group), timed as its busiest group, the MoE "
                           "experts at the groups' mean share (docs/serving.md)\n",
                           label, r.dp_groups, r.tp, r.tp > 1 ? "s" : "");
    json row = r.to_json();
    row["matmul_dtype"] = std::string(dtype_name(c.matmul_dtype));
    row["kv_dtype"] = std::string(dtype_name(c.kv_dtype));
    row["workload"] = what;
    row["assumed_fields"] = AssumedMarks::among(chip, {"matrix_bf16", "hbm_bandwidth"});
    row["max_rate_per_s"] = slo ? json(max_rate) : json();
    rows.push_back(std::move(row));
  }
  if (o.json) {
    print_json_document("simulate serve", rows);
    return 0;
  }
  std::cout << fmt::format("{} - serving simulation ({}; scheduler: up to {} requests and {} tokens per step, {} admission, "
                           "chunked prefill {})\n\n",
                           cfg.name, what, o.max_num_seqs, o.max_batched_tokens, o.admission,
                           o.no_chunked_prefill ? "off" : "on");
  std::cout << lat.render();
  if (const auto l = marks.legend(); !l.empty()) std::cout << l;
  if (slo) {
    std::cout << fmt::format("\nSLO: TTFT <= {}, TPOT <= {}, met by {:.0f}% of requests (max rate: Poisson arrivals of the "
                             "first {} requests' lengths)\n",
                             slo->ttft_s > 0 ? format_quantity(Dimension::kTime, slo->ttft_s) : "any",
                             slo->tpot_s > 0 ? format_quantity(Dimension::kTime, slo->tpot_s) : "any", 100 * slo->attainment,
                             std::min<int64_t>(o.search_requests, static_cast<int64_t>(reqs.size())));
    std::cout << slo_t.render();
  }
  std::cout << '\n' << notes;
  std::cout << "TTFT: arrival to first token; TPOT: (last token - first token) / (output tokens - 1) per request; ITL: every "
               "gap between two tokens of a request; E2E: arrival to last token. Steps are timed from the model's own kernels "
               "in timing-only mode, cached by shape (docs/serving.md).\n";
  if (!o.perfetto.empty()) std::cout << fmt::format("Perfetto trace: {}\n", o.perfetto);
  return 0;
}

namespace {

std::string tool_names(const serve::ToolSet& tools) {
  std::string out;
  for (const serve::ToolDef& d : tools.definitions()) out += (out.empty() ? "" : ", ") + d.name;
  return out;
}

}  // namespace

int cmd_serve(const ServeOptions& given) {
  // SIGINT and SIGTERM are taken by one thread (sigwait) that drains the server; every thread made
  // from here on inherits the blocked mask. A client gone mid-write must not kill the process.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  ServeOptions o = given;
  o.model = run_checkpoint_dir(o.model);  // a `ppu train` run directory stands for its checkpoint
  const ModelConfig cfg = load_model_config(o.model);
  const ChipSpec chip = load_chip(o.chip);
  const bool has_checkpoint = std::filesystem::is_directory(o.model);
  if (!has_checkpoint && param_counts(cfg).total() > 1000000000 && !o.allow_random)
    throw UserError(fmt::format("--model {}: a preset has no weights; serving it means random weights of {:.1f}B "
                                "parameters - add --random-weights to do that anyway, or give a checkpoint directory",
                                o.model, static_cast<double>(param_counts(cfg).total()) / 1e9));
  if (o.max_model_len < 2 || o.max_model_len > cfg.max_position_embeddings)
    throw UserError(fmt::format("--max-model-len {}; valid: 2 to the model's context, {}", o.max_model_len,
                                cfg.max_position_embeddings));
  if (o.block_size < 1 || o.block_size > 1024 || (o.block_size & (o.block_size - 1)) != 0)
    throw UserError(fmt::format("--block-size {}; valid: a power of two from 1 to 1024 (16: vLLM's default)",
                                o.block_size));
  // A paged KV cache: by default as many positions as max_num_seqs requests of max_model_len (the
  // last generated token is never written to the cache); fewer blocks oversubscribe it (requests
  // are then preempted and recomputed when it runs out), more let shared prefixes stay cached.
  const int64_t blocks_per_request = (o.max_model_len - 1 + o.block_size - 1) / o.block_size;
  if (o.kv_blocks == 0) o.kv_blocks = o.max_num_seqs * blocks_per_request;
  if (o.kv_blocks < blocks_per_request)
    throw UserError(fmt::format("--kv-blocks {}: {} positions in blocks of {}; one request of --max-model-len {} needs {} "
                                "blocks - give at least that many, or a smaller --max-model-len",
                                o.kv_blocks, o.kv_blocks * o.block_size, o.block_size, o.max_model_len,
                                blocks_per_request));
  if (o.api_key.empty())
    if (const char* k = std::getenv("PPU_API_KEY")) o.api_key = k;
  const auto dtype = dtype_from_name(o.matmul_dtype);
  if (!dtype || *dtype == DType::kF32 || *dtype == DType::kI32)
    throw UserError(fmt::format("--matmul-dtype '{}': valid: bf16, fp16, fp8e4m3, fp8e5m2, int8 (W8A8)", o.matmul_dtype));
  const models::Tokenizer tok = load_model_tokenizer(o.model, o.tokenizer, cfg);
  if (has_checkpoint) warn_nonfinite_weights(o.model);

  Device dev(chip, ExecMode::kFunctional);
  Qwen3Options qo;
  qo.matmul_dtype = *dtype;
  qo.max_batch = o.max_num_seqs;
  qo.max_context = o.max_model_len - 1;  // the last generated token is never written to the cache
  qo.kv_block_size = o.block_size;
  qo.kv_blocks = o.kv_blocks;
  const Qwen3Weights weights = has_checkpoint ? Qwen3Weights::from_checkpoint(o.model) : Qwen3Weights::random(o.seed);
  Qwen3Model model(dev, cfg, weights, qo);
  serve::Engine engine(model, {.max_batched_tokens = o.max_batched_tokens,
                               .chunked_prefill = true,
                               .prefix_caching = !o.no_prefix_caching});

  serve::ServerOptions so;
  std::shared_ptr<serve::ToolSet> tools;
  if (!o.tools.empty()) {
    tools = std::make_shared<serve::ToolSet>(serve::parse_tool_spec(o.tools));
    so.tools.definitions = tools->definitions();
    so.tools.call = [tools](std::string_view name, const nlohmann::json& args, std::string_view user) {
      return tools->call(name, args, user);
    };
  }
  so.max_tool_rounds = o.max_tool_rounds;
  so.host = o.host;
  so.port = o.port;
  so.api_key = o.api_key;
  std::filesystem::path given_path(given.model);
  if (given_path.filename().empty()) given_path = given_path.parent_path();  // "runs/tiny/"
  so.model_name = !o.name.empty() ? o.name : has_checkpoint ? given_path.filename().string() : cfg.name;
  so.chip_name = chip.name;
  so.max_waiting = o.max_waiting;
  so.max_body_bytes = o.max_body;
  so.drain_timeout_s = o.drain_timeout;
  if (!o.quiet) so.log = [](const std::string& line) { std::cerr << "serve: " << line << '\n'; };
  serve::Server server(engine, tok, so);
  const int port = server.start();
  std::cout << fmt::format("serving {} ({}) on an emulated {}: {} requests at once, {} tokens of context each, a paged "
                           "KV cache of {} blocks of {} positions{}\n"
                           "listening on http://{}:{}/v1{}{}\nCtrl-C or SIGTERM finishes the requests in flight and stops.\n",
                           so.model_name, has_checkpoint ? "trained weights" : "random weights: the text is noise",
                           chip.display_name, o.max_num_seqs, o.max_model_len, o.kv_blocks, o.block_size,
                           o.no_prefix_caching ? "" : " (prefix caching on)", o.host, port,
                           so.api_key.empty() ? "" : " (API key required)",
                           tools ? fmt::format("\ntools run for the model (requests that name them): {}", tool_names(*tools)) : "")
            << std::flush;
  std::thread watcher([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    std::cerr << fmt::format("serve: signal {}: draining (at most {:g} s)\n", sig, o.drain_timeout);
    const int64_t cut = server.drain();
    if (cut > 0) std::cerr << fmt::format("serve: {} requests still running at the drain timeout were cancelled\n", cut);
  });
  server.wait();
  watcher.join();
  std::cerr << "serve: stopped\n";
  return 0;
}

}  // namespace ppu::cli
