// ppu: the OpenPPU command line. See README.md for examples; `ppu --help` for every option.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <iostream>
#include <limits>

#include "arch/Error.hpp"
#include "arch/NameSuggestions.hpp"
#include "arch/NameTable.hpp"
#include "cli/Commands.hpp"

namespace {

// An integer option's check: a whole number from `min` to `max` ("--gen: must be at least 1, not 0";
// "--zero: must be 0 to 3, not 7"). CLI::PositiveNumber and CLI::NonNegativeNumber would print their
// bound, DBL_MAX, in 300 digits.
CLI::Validator integer_range(int64_t min, int64_t max) {
  const bool open = max == std::numeric_limits<int64_t>::max();
  const std::string range = open ? fmt::format("at least {}", min) : fmt::format("{} to {}", min, max);
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        int64_t v = 0;
        if (!CLI::detail::lexical_cast(text, v))
          return fmt::format("'{}' is not a whole number; give one {}", text, (open ? "of " : "from ") + range);
        return v < min || v > max ? fmt::format("must be {}, not {}", range, v) : std::string();
      },
      open ? fmt::format(">= {}", min) : fmt::format("{}..{}", min, max));
}
CLI::Validator at_least(int64_t min) { return integer_range(min, std::numeric_limits<int64_t>::max()); }

// A command line CLI11 could not parse. --help and --version print as CLI11 does (exit 0); anything
// else is a user's mistake: "error: ..." on stderr and exit 2, as for a UserError. A word where a
// command belongs is named with the commands valid there, the nearest first ("did you mean ...?").
int parse_failure(const CLI::App& app, const CLI::ParseError& e) {
  if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);
  // The deepest command the parse reached and its own commands.
  const CLI::App* at = &app;
  std::string path = app.get_name();
  while (!at->get_subcommands().empty()) {
    at = at->get_subcommands().front();
    path += " " + at->get_name();
  }
  std::vector<std::string> commands;
  for (const CLI::App* sc : at->get_subcommands([](const CLI::App*) { return true; }))
    commands.push_back(sc->get_name());
  const std::vector<std::string> left = at->remaining();
  std::string message = e.what();
  if (!commands.empty() && !left.empty() && !left.front().starts_with("-"))
    message = fmt::format("{}: '{}' is not a command; {}valid: {}", path, left.front(),
                          ppu::did_you_mean(left.front(), commands), ppu::join_names(commands));
  else if (!commands.empty() && at->get_require_subcommand_min() > 0)
    message = fmt::format("{}: a command is required; valid: {}", path, ppu::join_names(commands));
  std::cerr << "error: " << message << "\nRun '" << path << " --help' for more information.\n";
  return 2;
}

// A preset family's commands: `ppu NOUNs [--json]` lists them, `ppu NOUNs show NAME [--json]` prints
// one. CLI11 binds the flag and the name by reference, so the object must outlive parsing.
struct PresetCommands {
  CLI::App* list = nullptr;
  CLI::App* show = nullptr;
  bool json = false;
  std::string name;
  // Dispatch after parsing: the show or the list command.
  int run(int (*list_fn)(bool), int (*show_fn)(const std::string&, bool)) const {
    return show->parsed() ? show_fn(name, json) : list_fn(json);
  }
};

// `name_help` describes show's NAME; empty: a preset name or a path to a NOUN .json file.
void add_preset_commands(CLI::App& app, PresetCommands& pc, const std::string& noun, const std::string& list_help,
                         const std::string& show_help, const std::string& name_help = "") {
  pc.list = app.add_subcommand(noun + "s", list_help);
  pc.list->add_flag("--json", pc.json, "One JSON document on stdout");
  pc.show = pc.list->add_subcommand("show", show_help);
  pc.show->add_option(noun, pc.name,
                      name_help.empty() ? fmt::format("Preset name or path to a {} .json file", noun) : name_help)
      ->required();
  pc.show->add_flag("--json", pc.json, "One JSON document on stdout");
}

}  // namespace

int main(int argc, char** argv) {
  using namespace ppu::cli;
  CLI::App app{"OpenPPU: a software PPU (AI accelerator) - chip presets, tile programs, functional and timing "
               "simulation",
               "ppu"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "ppu 0.1.0");

  PresetCommands chips, nodes, clusters, models;
  add_preset_commands(app, chips, "chip", "Chip presets: a table, or every field of one chip",
                      "Every field of a chip with its unit and source");
  ChipExportOptions ce;
  auto* chips_export =
      chips.list->add_subcommand("export", "Write a chip preset's .json file, to start a chip of your own");
  chips_export->add_option("chip", ce.name, "Chip preset name (ppu chips)")->required();
  chips_export->add_option("--out", ce.out, "Write to this file (default: stdout)");
  chips_export->add_flag("--force", ce.force, "Replace --out if it exists");

  auto* bench = app.add_subcommand("bench", "Run a kernel on a simulated chip and report its predicted time");
  bench->require_subcommand(1);

  GemmBenchOptions g;
  auto* bg = bench->add_subcommand("gemm", "C = A.B: simulated time, TFLOPS, % of peak, what bounds it");
  bg->add_option("M", g.m, "Rows of A and C")->required();
  bg->add_option("N", g.n, "Columns of B and C")->required();
  bg->add_option("K", g.k, "Inner dimension")->required();
  bg->add_option("--chip", g.chip, "Chip preset or chip .json file; a,b,c or 'all' side by side")->capture_default_str();
  bg->add_option("--dtype", g.dtype, "Input dtype: bf16, fp16, fp8e4m3, fp8e5m2, int8 (int32 accumulation)")
      ->capture_default_str();
  bg->add_option("--out-dtype", g.out_dtype, "Output dtype: bf16, fp16, fp32; int32 too for --dtype int8")
      ->capture_default_str();
  bg->add_option("--batch", g.batch, "Batch count")->capture_default_str();
  bg->add_flag("--transa", g.trans_a, "A is stored transposed ([K, M])");
  bg->add_flag("--transb", g.trans_b, "B is stored transposed ([N, K])");
  bg->add_flag("--check", g.check, "Also compute the numbers and check them against a reference");
  bg->add_option("--seed", g.seed, "Seed of the random inputs for --check")->capture_default_str();
  bg->add_option("--trace", g.trace, "Write a Perfetto/Chrome trace (cores, units, DMA, HBM) to this file");
  bg->add_flag("--json", g.json, "One JSON document on stdout");

  CopyBenchOptions c;
  auto* bc = bench->add_subcommand("copy", "HBM-bound BabelStream kernels: achieved bandwidth");
  bc->add_option("size", c.size, "Bytes per array, e.g. 1GiB, 512MB")->capture_default_str();
  bc->add_option("--chip", c.chip, "Chip preset or chip .json file; a,b,c or 'all' side by side")->capture_default_str();
  bc->add_option("--kernel", c.kernel, "copy, mul, add or triad")->capture_default_str();
  bc->add_option("--dtype", c.dtype, "Element dtype")->capture_default_str();
  bc->add_flag("--check", c.check, "Also compute the numbers and check them");
  bc->add_option("--trace", c.trace, "Write a Perfetto/Chrome trace to this file");
  bc->add_flag("--json", c.json, "One JSON document on stdout");

  add_preset_commands(app, nodes, "node", "Node presets (chips and how they are linked): a table, or one node's links",
                      "Every field of a node with its source, and its link graph");
  add_preset_commands(app, clusters, "cluster",
                      "Cluster presets (nodes, scale-out NICs, network tiers): a table, or one cluster",
                      "Every field of a cluster with its unit and source, and its tiers");

  TrainCliOptions tr;
  auto* simulate = app.add_subcommand("simulate", "Simulate work on a cluster: training, serving");
  auto* train = simulate->add_subcommand(
      "train", "One training iteration on a cluster: the best layout (or the one given), time breakdown, MFU, memory, "
               "days and energy for a token budget");
  train->add_option("--model", tr.model, "Model preset or config")->capture_default_str();
  train->add_option("--cluster", tr.cluster, "Cluster preset or cluster .json file; a,b,c side by side")->capture_default_str();
  train->add_option("--chip", tr.chip, "Instead of --cluster: each chip's own cluster preset (a,b,c or 'all'), side by side");
  train->add_option("--tokens", tr.tokens, "Training tokens (e.g. 36T): days, chip-hours and energy to train");
  train->add_option("--tp", tr.tp, "Tensor-parallel degree (giving any degree fixes the layout)")->check(at_least(1));
  train->add_option("--pp", tr.pp, "Pipeline-parallel degree")->check(at_least(1));
  train->add_option("--dp", tr.dp, "Data-parallel degree (default: the chips left)")->check(at_least(1));
  train->add_option("--cp", tr.cp, "Context-parallel degree")->check(at_least(1));
  train->add_option("--ep", tr.ep, "Expert-parallel degree (MoE)")->check(at_least(1));
  train->add_option("--vp", tr.vp, "Interleaved pipeline: model chunks per chip")->capture_default_str()
      ->check(at_least(1));
  train->add_option("--micro-batch", tr.micro_batch, "Sequences per micro-batch")->capture_default_str()
      ->check(at_least(1));
  train->add_option("--global-batch", tr.global_batch, "Sequences per iteration (default: about 4M tokens)")
      ->check(at_least(1));
  train->add_option("--seq-len", tr.seq_len, "Tokens per sequence (default: 4096, or the model's context if shorter)")
      ->check(at_least(1));
  train->add_option("--chips", tr.chips, "Use this many of the cluster's chips (default: all, or TP x PP x CP x DP when --dp is given)")
      ->check(at_least(1));
  train->add_option("--zero", tr.zero, "ZeRO stage 0-3 of the data-parallel optimizer")->capture_default_str()
      ->check(integer_range(0, 3));
  train->add_option("--recompute", tr.recompute, "Activation recomputation: auto, none, selective, full")->capture_default_str();
  train->add_option("--recompute-layers", tr.recompute_layers, "With full recomputation: layers per stage (0: all)")
      ->capture_default_str()->check(at_least(0));
  train->add_option("--order", tr.order, "Rank order, fastest first: tp-cp-dp-pp (Megatron) or tp-cp-pp-dp (Llama 3)")
      ->capture_default_str();
  train->add_flag("--no-sp", tr.no_sp, "No sequence parallelism with TP");
  train->add_flag("--unfused-attention", tr.unfused_attention, "Attention as separate kernels (Megatron-LM 2021)");
  train->add_option("--attention", tr.attention, "Fused attention style: pipelined, flash-attention-2")->capture_default_str();
  train->add_flag("--no-overlap", tr.no_overlap, "Reduce gradients after the backward instead of under it");
  train->add_flag("--overlap-tp", tr.overlap_tp, "Overlap TP collectives with the GEMMs next to them");
  train->add_option("--grad-reduce", tr.grad_reduce, "Gradient reduction dtype: fp32, bf16, fp16")->capture_default_str();
  train->add_option("--network", tr.network, "Network model: analytical or flow (SimGrid)")->capture_default_str();
  train->add_flag("--search", tr.search, "Print the ranked table of layouts that fit");
  train->add_option("--top", tr.top, "Rows of the --search table")->capture_default_str()->check(at_least(1));
  train->add_flag("--json", tr.json, "One JSON document on stdout");
  train->add_option("--trace", tr.trace, "Write a Perfetto trace of one iteration to this file");
  SimulateServeOptions sv;
  auto* srv = simulate->add_subcommand(
      "serve", "Requests served by a continuous-batching engine on a chip or split over a node's chips (--node --tp "
               "--ep): TTFT/TPOT/ITL/E2E percentiles, throughput, goodput and the highest rate under an SLO; chips side "
               "by side");
  srv->add_option("--model", sv.model, "Model preset or config.json")->capture_default_str();
  srv->add_option("--chip", sv.chip, "Chip preset or chip .json file; a,b,c or 'all' side by side")->capture_default_str();
  srv->add_option("--trace", sv.trace, "Requests to replay: azure-conv, azure-code, or a .csv/.jsonl file (default azure-conv)");
  srv->add_option("--io", sv.io, "Instead of a trace: every request IN/OUT tokens long, e.g. 1024/256");
  srv->add_option("--rate", sv.rate, "Synthetic arrivals at this many requests/s (a trace keeps its lengths)");
  srv->add_option("--arrival", sv.arrival, "Arrival process with --rate: poisson or gamma")->capture_default_str();
  srv->add_option("--cv", sv.cv, "Gamma arrivals: coefficient of variation of the gaps (1: Poisson)")->capture_default_str();
  srv->add_option("--seed", sv.seed, "Seed of the synthetic arrivals")->capture_default_str();
  srv->add_option("--requests", sv.requests, "Use the first N requests (default: the whole trace; 1000 with --io)");
  srv->add_option("--duration", sv.duration, "Only requests arriving within this many seconds");
  srv->add_option("--slo", sv.slo, "Service-level objective, e.g. ttft=2s,tpot=100ms[,attainment=0.9]: goodput and the "
                                   "highest Poisson rate meeting it");
  srv->add_option("--search-requests", sv.search_requests, "Requests per run of the highest-rate search")
      ->capture_default_str()->check(at_least(1));
  srv->add_option("--max-num-seqs", sv.max_num_seqs, "Requests running at once")->capture_default_str()->check(at_least(1));
  srv->add_option("--max-batched-tokens", sv.max_batched_tokens, "Tokens one step computes at most")
      ->capture_default_str()->check(at_least(1));
  srv->add_option("--block-size", sv.block_size, "KV positions per cache block")->capture_default_str()
      ->check(integer_range(1, 4096));
  srv->add_flag("--no-chunked-prefill", sv.no_chunked_prefill, "A prompt is prefilled in one step");
  srv->add_flag("--no-prefix-caching", sv.no_prefix_caching, "Do not share cached prompt prefixes");
  srv->add_option("--admission", sv.admission, "KV admission: on-demand (vLLM, preempts) or reserve (TensorRT-LLM)")
      ->capture_default_str();
  srv->add_option("--kv-fraction", sv.kv_fraction, "Share of the free memory given to the KV cache")->capture_default_str();
  srv->add_option("--max-model-len", sv.max_model_len, "Longest request (prompt + output); default: the model's context")
      ->check(at_least(0));
  srv->add_option("--matmul-dtype", sv.matmul_dtype, "Weights and GEMM inputs: bf16, fp16, fp8e4m3, int8 (W8A8), auto (each chip's fastest float)")
      ->capture_default_str();
  srv->add_option("--kv-dtype", sv.kv_dtype, "KV cache dtype: auto (the matmul dtype; bf16 for int8), bf16, fp16, fp8e4m3")
      ->capture_default_str();
  srv->add_option("--node", sv.node,
                  "Node preset (ppu nodes) or node .json file whose chips run the split model (with --tp/--ep)");
  srv->add_option("--tp", sv.tp, "Tensor-parallel degree: the model split over this many chips of --node")
      ->capture_default_str()
      ->check(at_least(1));
  srv->add_option("--ep", sv.ep,
                  "Expert-parallel degree (MoE): experts spread over this many chips of --node, attention in "
                  "ep / tp data-parallel groups of --tp chips")
      ->capture_default_str()
      ->check(at_least(1));
  srv->add_option("--perfetto", sv.perfetto, "Write a Perfetto trace (steps, requests, KV use) to this file");
  srv->add_flag("--json", sv.json, "One JSON document on stdout");
  simulate->require_subcommand(1);

  ServeOptions so;
  auto* serve_cmd = app.add_subcommand(
      "serve", "OpenAI-compatible server (chat, completions, streaming, metrics) on an emulated chip, real numbers");
  serve_cmd->add_option("--model", so.model, "Model preset (random weights), checkpoint or ppu train run directory")
      ->capture_default_str();
  serve_cmd->add_option("--served-model-name", so.name, "The model id clients send (default: the preset or directory name)");
  serve_cmd->add_option("--chip", so.chip, "Chip preset or chip .json file")->capture_default_str();
  serve_cmd->add_option("--tokenizer", so.tokenizer, "tokenizer.json (default: the model directory's, else Qwen3's)");
  serve_cmd->add_option("--host", so.host, "Address to listen on (0.0.0.0: every interface)")->capture_default_str();
  serve_cmd->add_option("--port", so.port, "TCP port (0: any free one)")->capture_default_str()->check(integer_range(0, 65535));
  serve_cmd->add_option("--api-key", so.api_key, "Require 'Authorization: Bearer KEY' on /v1/ (default: $PPU_API_KEY)");
  serve_cmd->add_option("--max-num-seqs", so.max_num_seqs, "Requests running at once")
      ->capture_default_str()->check(integer_range(1, 4096));
  serve_cmd->add_option("--max-model-len", so.max_model_len, "Prompt + output tokens per request")
      ->capture_default_str()->check(at_least(2));
  serve_cmd->add_option("--max-batched-tokens", so.max_batched_tokens, "Tokens one step computes at most")
      ->capture_default_str()->check(at_least(1));
  serve_cmd->add_option("--block-size", so.block_size, "KV cache block size in positions (a power of two, 1 to 1024)")
      ->capture_default_str()->check(integer_range(1, 1024));
  serve_cmd->add_option("--kv-blocks", so.kv_blocks,
                        "KV cache blocks shared by all requests (0: enough for --max-num-seqs requests of "
                        "--max-model-len)")
      ->capture_default_str()->check(at_least(0));
  serve_cmd->add_flag("--no-prefix-caching", so.no_prefix_caching, "Do not share cached prompt prefixes between requests");
  serve_cmd->add_option("--max-waiting", so.max_waiting, "Requests queued beyond the running ones; more get 429")
      ->capture_default_str()->check(at_least(0));
  serve_cmd->add_option("--max-body", so.max_body, "Largest request body in bytes; larger get 413")
      ->capture_default_str()->check(at_least(1024));
  serve_cmd->add_option("--drain-timeout", so.drain_timeout, "On SIGTERM, seconds to let requests in flight finish")
      ->capture_default_str();
  serve_cmd->add_option("--matmul-dtype", so.matmul_dtype, "Weights and GEMM inputs: bf16, fp16, fp8e4m3, int8 (W8A8)")->capture_default_str();
  serve_cmd->add_option("--seed", so.seed, "Seed of the random weights (presets)")->capture_default_str();
  serve_cmd->add_flag("--random-weights", so.allow_random, "Serve a preset above 1B parameters with random weights");
  serve_cmd->add_flag("--quiet", so.quiet, "No line per finished request on stderr");
  serve_cmd->add_option("--tools", so.tools,
                        "Tools the server runs for the model (the agent loop), e.g. search=kb.sqlite,memory=mem.sqlite,code");
  serve_cmd->add_option("--max-tool-rounds", so.max_tool_rounds, "Rounds of tool calls one request may make")
      ->capture_default_str()
      ->check(integer_range(1, 64));

  IndexOptions ix;
  auto* index_cmd = app.add_subcommand("index", "Full-text search index of a folder (the agent's search tool; SQLite FTS5)");
  index_cmd->add_option("folder", ix.folder, "Folder of text files to index")->required();
  index_cmd->add_option("--out", ix.out, "Index file (created, or refreshed: only changed files are read again)")
      ->capture_default_str();
  index_cmd->add_flag("--json", ix.json, "One JSON document on stdout");
  McpCliOptions mcp;
  auto* mcp_cmd = app.add_subcommand("mcp", "The agent's tools (search, memory, code) as an MCP server over stdio");
  mcp_cmd->add_option("--tools", mcp.tools, "Tools and their files, e.g. search=kb.sqlite,memory=mem.sqlite,code")->required();
  mcp_cmd->add_option("--user", mcp.user, "Whose memories the memory tools read and write")->capture_default_str();

  CollectiveBenchOptions cb;
  std::vector<CLI::App*> coll_cmds;
  for (const char* name : {"allreduce", "reducescatter", "allgather", "broadcast", "reduce", "alltoall", "sendrecv"}) {
    auto* sc = bench->add_subcommand(name, fmt::format("nccl-tests style {} sweep on a node: time, algbw, busbw, algorithm", name));
    sc->add_option("--node", cb.node, "Node preset or node .json file")->capture_default_str();
    sc->add_option("--ranks", cb.ranks, "Ranks (default: every chip of the node)")->check(at_least(1));
    sc->add_option("--sizes", cb.sizes, "MIN:MAX doubling (as nccl-tests -f 2) or one size; K/M/G are powers of 2")
        ->capture_default_str();
    sc->add_option("--algo", cb.algo, "ring, tree, direct, halving_doubling, nvls, hierarchical, pairwise (default: fastest)");
    sc->add_option("--protocol", cb.protocol, "simple or ll (default: fastest)");
    sc->add_option("--dtype", cb.dtype, "Element dtype")->capture_default_str();
    sc->add_option("--op", cb.op, "Reduction: sum, max, min")->capture_default_str();
    sc->add_option("--root", cb.root, "Root rank (broadcast, reduce)")->capture_default_str();
    sc->add_flag("--check", cb.check, "Run functionally and check every output element");
    sc->add_option("--trace", cb.trace, "Write a Perfetto trace (per-chip lanes, one lane per link direction)");
    sc->add_flag("--json", cb.json, "One JSON document on stdout");
    coll_cmds.push_back(sc);
  }

  add_preset_commands(app, models, "model",
                      "Model presets (Qwen3 family, Llama 3, GPT, tiny test models): a table, or one model",
                      "Every field of a model config with its parameter count, weight and KV-cache bytes",
                      "Preset name, config.json, or a directory holding one");

  RunOptions r;
  auto* run = app.add_subcommand("run", "Generate text with a model on a simulated chip; report simulated time");
  run->add_option("--model", r.model, "Preset name or Hugging Face model directory")->capture_default_str();
  run->add_option("--prompt", r.prompt, "User message (chat template applied unless --raw)")->capture_default_str();
  run->add_option("--chip", r.chip, "Chip preset or chip .json file; a,b,c or 'all' side by side")->capture_default_str();
  run->add_option("--gen", r.gen, "Tokens to generate at most")->capture_default_str()->check(at_least(1));
  run->add_option("--prompt-len", r.prompt_len, "Use this many dummy prompt tokens (timing studies)")->check(at_least(0));
  run->add_flag("--timing-only", r.timing_only, "No numbers, only simulated time (any model size)");
  run->add_flag("--random-weights", r.allow_random, "Run a large preset functionally with random weights");
  run->add_option("--tokenizer", r.tokenizer, "tokenizer.json to use");
  run->add_flag("--raw", r.raw, "Send the prompt as is, without the chat template");
  run->add_flag("--think", r.think, "Qwen3 thinking mode (default: off)");
  run->add_option("--temperature", r.temperature, "0 = greedy")->capture_default_str();
  run->add_option("--top-k", r.top_k, "0 = no limit")->capture_default_str();
  run->add_option("--top-p", r.top_p, "1 = no limit")->capture_default_str();
  run->add_option("--seed", r.seed, "Seed for sampling and random weights")->capture_default_str();
  run->add_option("--trace", r.trace, "Write a Perfetto trace of the run");
  run->add_option("--matmul-dtype", r.matmul_dtype, "Weights and GEMM inputs: bf16, fp16, fp8e4m3 (FP8 inference), int8 (W8A8: per-channel weight and per-token activation scales)")
      ->capture_default_str();
  run->add_option("--batch", r.batch, "Batch sizes, e.g. 1,8,64: sequences decoded together (a table per size)")
      ->capture_default_str();
  run->add_option("--node", r.node, "Node preset (ppu nodes) whose chips run the split model (with --tp)");
  run->add_option("--tp", r.tp, "Tensor-parallel degree: the model split over this many chips of --node")
      ->capture_default_str()
      ->check(at_least(1));
  run->add_option("--ep", r.ep,
                  "Expert-parallel degree (MoE): experts spread over this many chips of --node, attention in "
                  "ep / tp data-parallel groups of --tp chips")
      ->capture_default_str()
      ->check(at_least(1));
  run->add_flag("--sp", r.sp, "Sequence parallelism with --tp: norms on 1/tp of the tokens, reduce-scatter + all-gather");
  run->add_flag("--no-graph", r.no_graph,
                "Launch decode kernels one by one instead of one captured graph per step (as CUDA graphs)");
  run->add_flag("--json", r.json, "One JSON document on stdout");

  TrainRunOptions tro;
  auto* trn = app.add_subcommand("train", "Train a model for real on the emulated PPU: loss, grad norm, simulated step time and MFU");
  trn->add_option("--model", tro.model, "Model preset, config.json, or a checkpoint directory to fine-tune")->capture_default_str();
  trn->add_option("--chip", tro.chip, "Chip preset or chip .json file")->capture_default_str();
  trn->add_option("--data", tro.data, "Corpus files or folders (default: the project's docs and the King James Bible)");
  trn->add_option("--tokenizer", tro.tokenizer, "tokenizer.json to use");
  trn->add_option("--out", tro.out, "Run directory for metrics.jsonl and loss.svg (default: runs/<model>)");
  trn->add_option("--steps", tro.steps, "Optimizer steps")->capture_default_str()->check(at_least(1));
  trn->add_option("--seq-len", tro.seq_len, "Tokens per sequence")->capture_default_str()->check(at_least(1));
  trn->add_option("--batch", tro.batch, "Sequences per optimizer step")->capture_default_str()->check(at_least(1));
  trn->add_option("--micro-batch", tro.micro_batch, "Sequences per forward/backward (0: the whole batch)")
      ->capture_default_str()
      ->check(at_least(0));
  trn->add_option("--lr", tro.lr, "Peak learning rate")->capture_default_str();
  trn->add_option("--min-lr", tro.min_lr, "Learning rate at the end of the cosine decay (default: lr / 10)");
  trn->add_option("--warmup", tro.warmup, "Warmup steps (default: min(100, steps / 10))");
  trn->add_option("--weight-decay", tro.weight_decay, "AdamW weight decay (matrices only)")->capture_default_str();
  trn->add_option("--clip", tro.clip, "Global gradient-norm clipping (0: none)")->capture_default_str();
  trn->add_option("--seed", tro.seed, "Seed for the initial weights and the data order")->capture_default_str();
  trn->add_option("--eval-every", tro.eval_every, "Validation loss every N steps (0: at the end only)")->capture_default_str()
      ->check(at_least(0));
  trn->add_option("--eval-batches", tro.eval_batches, "Validation batches per evaluation")->capture_default_str()
      ->check(at_least(1));
  trn->add_option("--threads", tro.threads, "Host threads (0: all cores)")->capture_default_str()
      ->check(at_least(0));
  trn->add_option("--node", tro.node, "Node preset (ppu nodes) whose chips run the parallel ranks (with --dp / --tp)");
  trn->add_option("--dp", tro.dp, "Data-parallel degree: chips of --node, each on 1/dp of every batch, gradients all-reduced")
      ->capture_default_str()
      ->check(at_least(1));
  trn->add_option("--tp", tro.tp, "Tensor-parallel degree (Megatron): heads and MLP split over tp chips of --node")
      ->capture_default_str()
      ->check(at_least(1));
  trn->add_option("--zero", tro.zero, "ZeRO stage: 1 shards the fp32 optimizer state over --dp (gradients reduce-scattered)")
      ->capture_default_str();
  trn->add_option("--recompute", tro.recompute,
                  "Activation recomputation: none, selective (the attention core) or full (every layer); default none, "
                  "or the resumed run's");
  trn->add_option("--dtype", tro.dtype, "Activations and matrix inputs: bf16, or fp16 with dynamic loss scaling")
      ->capture_default_str();
  trn->add_option("--loss-scale", tro.loss_scale, "First dynamic loss scale (default: 65536 with fp16, off with bf16; 0: off)");
  trn->add_option("--loss-scale-window", tro.loss_scale_window, "Good steps in a row before the loss scale doubles")
      ->capture_default_str();
  trn->add_option("--save-every", tro.save_every, "Checkpoint every N steps (0: at the end only), in --out/checkpoint")
      ->capture_default_str()->check(at_least(0));
  trn->add_option("--resume", tro.resume, "Continue a run: its directory (or a checkpoint directory)");
  trn->add_option("--stop-after", tro.stop_after, "Stop after N steps of this invocation (checkpointed; --resume continues)")
      ->check(at_least(0));
  trn->add_flag("--timing-only", tro.timing_only,
                "No numbers: one step per chip of --chip (comma-separated) - simulated step time, tokens/s, MFU, memory");
  trn->add_flag("--skip-nonfinite", tro.skip_nonfinite, "Skip steps whose loss or gradients are not finite instead of stopping");
  trn->add_flag("--json", tro.json, "Progress on stderr, one JSON summary on stdout");

  ThroughputCliOptions tp;
  auto* thr = app.add_subcommand(
      "throughput", "Offline serving throughput at full load (in-flight batching, as trtllm-bench measures it)");
  thr->add_option("--model", tp.model, "Model preset or config.json")->capture_default_str();
  thr->add_option("--chip", tp.chip, "Chip preset or chip .json file; a,b,c or 'all' side by side")->capture_default_str();
  thr->add_option("--io", tp.io, "Input/output tokens per request, e.g. 128/2048,1000/1000")->capture_default_str();
  thr->add_option("--matmul-dtype", tp.matmul_dtype, "Weights and GEMM inputs: auto (each chip's fastest float), bf16, fp16, fp8e4m3, int8 (W8A8)")->capture_default_str();
  thr->add_option("--kv-dtype", tp.kv_dtype, "KV cache dtype: auto (the matmul dtype; bf16 for int8), bf16, fp16, fp8e4m3")->capture_default_str();
  thr->add_option("--max-batch", tp.max_batch, "Most requests in flight")->capture_default_str()
      ->check(at_least(1));
  thr->add_option("--kv-fraction", tp.kv_fraction, "Share of the free memory given to the KV cache")->capture_default_str();
  thr->add_flag("--json", tp.json, "One JSON document on stdout");

  CompareOptions cmp;
  auto* cmp_cmd = app.add_subcommand(
      "compare", "Check the vendor's claim: a standard suite on each chip in its best dtype, ratios, a verdict per "
                 "claim, and a sweep of unpublished figures");
  cmp_cmd->add_option("--chips", cmp.chips, "Chip presets or chip .json files, a,b,c; the first is the baseline")
      ->capture_default_str();
  cmp_cmd->add_option("--suite", cmp.suite, "kernels, inference, training or all (default all; inference with --sweep)");
  cmp_cmd->add_option("--out", cmp.out, "Folder for report.json and index.html (default: nothing written)");
  cmp_cmd->add_option("--sweep", cmp.sweep, "CHIP.FIELD=LO:HI[,CHIP.FIELD=LO:HI] in the preset's unit, e.g. "
                                            "zhenwu-810e.matrix_bf16=90:160");
  cmp_cmd->add_option("--sweep-points", cmp.sweep_points, "Grid points per sweep axis (at least 2)")->capture_default_str();
  cmp_cmd->add_option("--dtype", cmp.dtype, "Matrix dtype for every chip: auto (FP8 where a chip has it, else INT8 W8A8 for inference and BF16 "
                                        "for kernels), bf16, fp16, fp8e4m3, int8")
      ->capture_default_str();
  cmp_cmd->add_flag("--json", cmp.json, "One JSON document on stdout (the report.json of --out)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return parse_failure(app, e);
  }
  try {
    if (chips_export->parsed()) return cmd_chips_export(ce);
    if (chips.list->parsed()) return chips.run(cmd_chips_list, cmd_chips_show);
    if (nodes.list->parsed()) return nodes.run(cmd_nodes_list, cmd_nodes_show);
    if (clusters.list->parsed()) return clusters.run(cmd_clusters_list, cmd_clusters_show);
    for (auto* sc : coll_cmds)
      if (sc->parsed()) {
        cb.collective = sc->get_name();
        return cmd_bench_collective(cb);
      }
    if (models.list->parsed()) return models.run(cmd_models, cmd_models_show);
    if (run->parsed()) return cmd_run(r);
    if (train->parsed()) return cmd_simulate_train(tr);
    if (srv->parsed()) return cmd_simulate_serve(sv);
    if (serve_cmd->parsed()) return cmd_serve(so);
    if (index_cmd->parsed()) return cmd_index(ix);
    if (mcp_cmd->parsed()) return cmd_mcp(mcp);
    if (thr->parsed()) return cmd_throughput(tp);
    if (cmp_cmd->parsed()) return cmd_compare(cmp);
    if (trn->parsed()) return cmd_train(tro);
    if (bg->parsed()) return cmd_bench_gemm(g);
    if (bc->parsed()) return cmd_bench_copy(c);
  } catch (const ppu::UserError& e) {
    std::cerr << "error: " << e.what() << '\n';
    return 2;
  } catch (const ppu::SimEvent& e) {
    std::cerr << "simulated event: " << e.what() << '\n';
    return 3;
  }
  return 0;
}
