// The `ppu` subcommands, as plain functions over option structs (CLI11 parsing lives in main.cpp
// only, since it compiles slowly). Each prints a table, or one JSON document with --json, and returns
// the process exit code. User mistakes throw UserError (main prints it and exits 2).
#pragma once

#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "arch/ChipSpec.hpp"
#include "arch/DType.hpp"
#include "models/ModelConfig.hpp"
#include "models/Tokenizer.hpp"

namespace ppu::cli {

int cmd_chips_list(bool json);
int cmd_chips_show(const std::string& name_or_path, bool json);

// `ppu chips export NAME [--out FILE] [--force]`: the built-in preset's .json text, to stdout or to
// `out`; UserError for an unknown name and for an existing `out` without `force`.
struct ChipExportOptions {
  std::string name;
  std::string out;  // empty: stdout
  bool force = false;
};
int cmd_chips_export(const ChipExportOptions& o);

struct GemmBenchOptions {
  int64_t m = 0, n = 0, k = 0, batch = 1;
  std::string chip = "zhenwu-810e";  // or "all"
  std::string dtype = "bf16";
  std::string out_dtype = "bf16";
  bool trans_a = false, trans_b = false;
  bool check = false;
  std::string trace;
  bool json = false;
  int64_t seed = 1;
};
int cmd_bench_gemm(const GemmBenchOptions& o);

struct CopyBenchOptions {
  std::string size = "1GiB";
  std::string chip = "zhenwu-810e";  // or "all"
  std::string kernel = "copy";       // copy, mul, add, triad
  std::string dtype = "fp32";
  bool check = false;
  std::string trace;
  bool json = false;
};
int cmd_bench_copy(const CopyBenchOptions& o);

int cmd_models(bool json);
// `ppu models show NAME|PATH`: every field of one model config and the derived figures of the table.
int cmd_models_show(const std::string& name_or_path, bool json);

struct RunOptions {
  std::string model = "tiny";
  std::string prompt = "Why is the sky blue?";
  std::string chip = "zhenwu-810e";
  std::string tokenizer;
  int64_t gen = 32;
  int64_t prompt_len = 0;  // > 0: that many dummy tokens instead of --prompt (timing studies)
  bool timing_only = false;
  bool allow_random = false;
  bool raw = false;    // no chat template
  bool think = false;  // Qwen3 thinking mode
  double temperature = 0.0;
  int64_t top_k = 0;
  double top_p = 1.0;
  int64_t seed = 0;
  bool json = false;
  std::string trace;
  std::string batch = "1";            // comma-separated batch sizes; more than one value (or > 1): a table
  std::string node;                   // --node: a node preset whose chips run a split model
  int tp = 1;                         // --tp: tensor-parallel degree
  int ep = 1;                         // --ep: expert parallelism over this many chips (MoE); attention in ep / tp groups
  bool sp = false;                    // --sp: sequence parallelism with --tp
  bool no_graph = false;              // --no-graph: decode steps launch kernel by kernel, not as one captured graph
  std::string matmul_dtype = "bf16";  // weights and GEMM inputs: bf16, fp16, fp8e4m3 (FP8 inference)
};
int cmd_run(const RunOptions& o);

struct ThroughputCliOptions {
  std::string model = "llama3-8b";
  std::string chip = "h100";  // or a,b,c or "all": side by side
  std::string io = "128/2048";  // input/output tokens per request, comma-separated pairs
  std::string matmul_dtype = "auto";  // auto: the chip's fastest (fp8e4m3 where it has FP8, else bf16)
  std::string kv_dtype = "auto";      // auto: the matmul dtype
  int64_t max_batch = 2048;
  double kv_fraction = 0.9;
  bool json = false;
};
int cmd_throughput(const ThroughputCliOptions& o);
// "IN/OUT" (e.g. "128/2048") as the two whole numbers, or nullopt when it is not exactly that; the
// caller's message names its option (ranges are the estimate's or the simulation's to check).
std::optional<std::pair<int64_t, int64_t>> parse_io_pair(const std::string& text);
// A serving command's --matmul-dtype or --kv-dtype (`flag`): "auto" is the chip's fastest matrix dtype
// (FP8 where it has an FP8 unit, else BF16) for --matmul-dtype and `kv_auto` (the matmul dtype) for
// --kv-dtype. UserError for fp32, an unknown name, or a matmul dtype the chip's matrix unit lacks.
DType serving_dtype(const char* flag, const std::string& value, const ChipSpec& chip, DType kv_auto);

struct SimulateServeOptions {
  std::string model = "qwen3-8b";
  std::string chip = "zhenwu-810e";  // or a,b,c or "all": side by side
  std::string trace;                 // built-in trace name or a .csv/.jsonl file; empty: azure-conv unless --io
  std::string io;                    // "IN/OUT": every request that long instead of a trace's lengths
  double rate = 0;                   // requests/s of synthetic arrivals; 0: the trace's times (or all at 0 with --io)
  std::string arrival = "poisson";   // poisson or gamma
  double cv = 1.0;                   // gamma's coefficient of variation
  uint64_t seed = 0;
  int64_t requests = 0;              // the first N requests; 0: all of a trace, 1000 with --io
  double duration = 0;               // only requests arriving within this many seconds; 0: no limit
  std::string slo;                   // "ttft=2s,tpot=100ms": attainment, goodput and the highest rate under it
  int64_t search_requests = 500;     // requests per run of the max-rate search
  int64_t max_num_seqs = 256;
  int64_t max_batched_tokens = 8192;
  int64_t block_size = 16;
  bool no_chunked_prefill = false;
  bool no_prefix_caching = false;
  std::string admission = "on-demand";
  double kv_fraction = 0.9;
  int64_t max_model_len = 0;
  std::string matmul_dtype = "bf16";
  std::string kv_dtype = "auto";
  std::string node;                  // node preset or file: the model split over its chips (--tp, --ep)
  int tp = 1;                        // tensor-parallel degree (chips of --node)
  int ep = 1;                        // expert-parallel degree (MoE; attention in ep / tp data-parallel groups)
  std::string perfetto;              // trace file of steps and requests (one chip)
  bool json = false;
};
int cmd_simulate_serve(const SimulateServeOptions& o);

// `ppu serve`: the OpenAI-compatible server (serve/Server) over a functional engine on one emulated chip.
struct ServeOptions {
  std::string model = "tiny";        // preset (random weights), checkpoint or `ppu train` run directory
  std::string name;                  // the id clients name; empty: the preset's name or the directory's
  std::string chip = "zhenwu-810e";
  std::string tokenizer;             // tokenizer.json; empty: find_tokenizer
  std::string host = "127.0.0.1";
  int port = 8000;                   // 0: any free port
  std::string api_key;               // empty: $PPU_API_KEY, else none
  int64_t max_num_seqs = 16;         // requests running at once
  int64_t max_model_len = 2048;      // prompt + output per request
  int64_t block_size = 16;           // KV cache block size (positions; a power of two, 1 .. 1024)
  int64_t kv_blocks = 0;             // KV cache blocks; 0: max_num_seqs x max_model_len positions' worth
  bool no_prefix_caching = false;
  int64_t max_batched_tokens = 8192;
  int64_t max_waiting = 256;
  int64_t max_body = 8 << 20;
  double drain_timeout = 30;
  std::string matmul_dtype = "bf16";
  int64_t seed = 0;                  // random weights
  bool allow_random = false;
  bool quiet = false;                // no line per request
  std::string tools;                 // the agent's tools the server runs: "search=kb.sqlite,memory=mem.sqlite,code"
  int max_tool_rounds = 8;           // rounds of tool calls per request (the agent loop)
};
int cmd_serve(const ServeOptions& o);

// `ppu index FOLDER --out FILE`: a full-text search index of the folder's text files (serve/SearchIndex),
// refreshed in place when FILE exists.
struct IndexOptions {
  std::string folder;
  std::string out = "kb.sqlite";
  bool json = false;
};
int cmd_index(const IndexOptions& o);

// `ppu mcp --tools search=FILE,memory=FILE`: the agent's tools as an MCP server over stdio.
struct McpCliOptions {
  std::string tools;
  std::string user = "mcp";  // whose memories the memory tools use
};
int cmd_mcp(const McpCliOptions& o);

// Assumed figures made visible in tables: a value (or a chip's name, for results computed from its
// figures) gets a '*' when a field it rests on is assumed rather than published, and legend() names
// them. --json records carry the same as "assumed_fields" lists.
class AssumedMarks {
 public:
  // The assumed ones among `keys` (chip field keys), in the order given.
  static std::vector<std::string> among(const ChipSpec& c, std::initializer_list<std::string_view> keys);
  // `label` + "*" when any of `keys` is assumed for `c` (and noted for the legend), else `label`.
  std::string mark(const ChipSpec& c, const std::string& label, std::initializer_list<std::string_view> keys);
  // One line per marked chip, "* assumed, not published: zhenwu-810e matrix_bf16, hbm_bandwidth (...)";
  // empty when nothing was marked.
  std::string legend() const;

 private:
  std::map<std::string, std::vector<std::string>> noted_;  // chip -> its assumed fields that were marked
};

// The `show` commands wrap a table's source/reason column and a preset's notes at this many
// characters: one long source would otherwise widen the whole table to hundreds of characters.
inline constexpr size_t kShowTextWidth = 80;
// `text` wrapped at kShowTextWidth (report/Table's wrap_words), every line prefixed with `indent`
// and ending in '\n'; "" for empty text.
std::string wrap_text(const std::string& text, const std::string& indent = "");

// `list` as names: "all" -> `all`; "a,b,c" -> those names or paths; otherwise the single name or
// path. UserError naming `option` for an empty name ("a,,b").
std::vector<std::string> expand_names(const std::string& list, const char* option, const std::vector<std::string>& all);
// expand_names for --chip over the chip presets.
std::vector<std::string> expand_chips(const std::string& chip);
// A dtype named on the command line; UserError naming `option` and the valid names otherwise.
DType parse_dtype_option(const std::string& s, const char* option);

// `ppu compare`: the standard suite (kernels, inference, training) on each chip in its best dtype,
// the first chip's relative performance against each other, the PPU vendor's claims with a verdict
// each, and with --sweep the claims over a grid of chip fields (cli/CompareCommands.cpp,
// docs/compare.md).
struct CompareOptions {
  std::string chips = "zhenwu-810e,a800,h20";  // presets or chip .json files; the first is the baseline
  std::string suite;                           // kernels, inference, training, all; empty: all (inference with --sweep)
  std::string out;                             // folder for report.json and index.html; empty: nothing written
  bool json = false;
  std::string sweep;                           // CHIP.FIELD=LO:HI[,CHIP.FIELD=LO:HI], values in the preset's unit
  int sweep_points = 5;                        // grid points per axis (at least 2)
  std::string dtype = "auto";                  // auto: FP8 where a chip has it, else BF16 (INT8 W8A8 for inference)
};
int cmd_compare(const CompareOptions& o);
// The name of the largest cluster preset built of the chip preset `chip_name`, or nullopt.
std::optional<std::string> cluster_preset_of_chip(const std::string& chip_name);

int cmd_nodes_list(bool json);
int cmd_nodes_show(const std::string& name_or_path, bool json);

// `ppu clusters`: every cluster preset (chips, nodes, NICs, tiers); `ppu clusters show NAME|FILE`:
// every field with its unit and source, and the network tiers bottom up.
int cmd_clusters_list(bool json);
int cmd_clusters_show(const std::string& name_or_path, bool json);

// `ppu bench <collective>`: an nccl-tests style sweep of one collective on a node.
struct CollectiveBenchOptions {
  std::string collective = "allreduce";  // allreduce, reducescatter, allgather, broadcast, reduce, alltoall, sendrecv
  std::string node = "zhenwu-8";
  int ranks = 0;                         // 0: every chip of the node
  std::string sizes = "1M:1G";           // MIN:MAX doubling, or one size; K/M/G are powers of 2 (nccl-tests)
  std::string algo;                      // "" = the selector's choice
  std::string protocol;                  // "" = the selector's choice; simple, ll
  std::string dtype = "fp32";
  std::string op = "sum";
  int root = 0;
  bool check = false;                    // functional devices; check every output element
  std::string trace;
  bool json = false;
};
int cmd_bench_collective(const CollectiveBenchOptions& o);

// `ppu simulate train`: one training iteration of a model on a cluster - a given layout, or the
// planner's best (--search: the ranked table).
struct TrainCliOptions {
  std::string model = "qwen3-max";
  std::string cluster = "zhenwu-10k";  // or a,b,c: side by side
  std::string chip;                    // a,b,c or all: each chip's own cluster preset, side by side
  std::string tokens;                 // e.g. 36T: total training tokens -> days, chip-hours, energy
  int tp = 0, pp = 0, dp = 0, cp = 0, ep = 0;  // 0: not given (any given: that layout; none: search)
  int vp = 1;                         // interleaved chunks per chip
  int64_t micro_batch = 1;
  int64_t global_batch = 0;           // sequences; 0: about 4M tokens
  int64_t seq_len = 0;  // 0: 4096, or the model's context if shorter
  int64_t chips = 0;                  // 0: the whole cluster
  int zero = 1;
  std::string recompute = "auto";     // none, selective, full, auto (the least that fits)
  int recompute_layers = 0;           // with full: layers per stage recomputed (0: all)
  std::string order = "tp-cp-dp-pp";  // rank order, fastest first: Megatron's, or Llama 3's tp-cp-pp-dp
  bool no_sp = false;
  bool unfused_attention = false;
  std::string attention = "pipelined";  // the fused attention's style: pipelined, flash-attention-2
  bool no_overlap = false;            // DP gradient reduction after the backward, not under it
  bool overlap_tp = false;            // TP collectives pipelined with the GEMMs
  std::string grad_reduce = "fp32";   // fp32 or bf16/fp16 (2 bytes)
  std::string network = "analytical";  // analytical, flow
  bool search = false;
  int top = 15;
  bool json = false;
  std::string trace;
};
int cmd_simulate_train(const TrainCliOptions& o);

// ppu train: real training on the emulated PPU (cli/TrainModelCommand.cpp).
struct TrainRunOptions {
  std::string model = "tiny";            // preset, config.json, or a checkpoint directory (fine-tuning)
  std::string chip = "zhenwu-810e";
  std::vector<std::string> data;         // corpus files or folders; empty: train::default_corpus
  std::string tokenizer;                 // tokenizer.json; empty: find_tokenizer
  std::string out;                       // run directory; empty: runs/<model>
  int64_t steps = 300, seq_len = 256, batch = 8, micro_batch = 0;
  double lr = 3e-4, min_lr = -1;         // min_lr < 0: lr / 10
  int64_t warmup = -1;                   // -1: min(100, steps / 10)
  double weight_decay = 0.1, clip = 1.0;
  uint64_t seed = 1;
  int64_t eval_every = 50, eval_batches = 4;
  int64_t save_every = 0;                // checkpoint every N steps (0: at the end only)
  int64_t stop_after = 0;                // stop after N steps of this invocation (0: run to --steps), checkpointed
  std::string resume;                    // a run directory (its checkpoint/) or a checkpoint directory
  int threads = 0;                       // host threads of the functional executor (0: all cores)
  std::string node;                      // node preset whose chips run the data- and tensor-parallel ranks
  int dp = 1;                            // data-parallel degree (chips of --node)
  int tp = 1;                            // tensor-parallel degree (chips of --node per model replica)
  int zero = 0;                          // ZeRO stage over DP: 0 or 1 (optimizer state sharded; needs dp > 1)
  std::string recompute;                 // none, selective, full; empty: none (or the resumed run's)
  std::string dtype = "bf16";            // activations and matrix inputs: bf16 or fp16 (fp16: loss scaling on)
  double loss_scale = -1;                // initial dynamic loss scale (-1: 65536 with fp16, off with bf16; 0: off)
  int64_t loss_scale_window = 2000;      // good steps before the loss scale doubles
  bool skip_nonfinite = false;
  bool timing_only = false;              // one step per chip of --chip (comma-separated), simulated time only
  bool json = false;
};
int cmd_train(const TrainRunOptions& o);
// `dir`/checkpoint when `dir` is a training run's directory (no config.json of its own), else `dir`.
std::string run_checkpoint_dir(const std::string& dir);

// The tokenizer.json for `model`: the model directory's, then `given`, then $PPU_TOKENIZER, then the
// reference copy scripts/setup.sh installs beside the sources; UserError naming the model otherwise.
std::string find_tokenizer(const std::string& model, const std::string& given);
// The tokenizer for `model` (find_tokenizer), its load-time warnings printed as "warning: ..." on
// stderr. UserError when it has ids beyond the model's vocabulary (a prompt could hold an id the
// model has no embedding row for).
models::Tokenizer load_model_tokenizer(const std::string& model, const std::string& given, const ModelConfig& cfg);
// Prints "warning: ..." on stderr when the checkpoint's weights hold NaN or Inf values
// (CheckpointSet::nonfinite_report).
void warn_nonfinite_weights(const std::string& checkpoint);

}  // namespace ppu::cli
