// `ppu train`: real training on the emulated PPU - the corpus through the Qwen3 tokenizer into
// packed sequences (train/Data), optimizer steps (train/Trainer), one progress line per step (loss,
// gradient norm, learning rate, host tokens/s, simulated step time and MFU on the chip), held-out
// validation every --eval-every steps, and in --out: metrics.jsonl (one JSON object per step),
// loss.svg (the loss curve) and checkpoint/ (a Hugging Face model directory with the optimizer state
// beside it, train/Checkpoint), saved every --save-every steps and at the end. --resume DIR continues
// a run from DIR/checkpoint (or a checkpoint directory) bit-identically on the same layout.
// Parallel: --node N --tp T --dp K runs T x K emulated chips of N (Megatron tensor parallelism inside
// each group of T, data parallelism across the K groups, --zero 1 shards the optimizer state over
// K); checkpoints always hold the whole model, so any layout resumes any run. --dtype fp16 trains
// with fp16 activations and matrices and dynamic loss scaling (train/Trainer). --recompute none |
// selective | full recomputes activations in the backward (models/Qwen3 training_loss).
// --timing-only: one step per chip of --chip, without numbers; with --tp/--dp (and --zero 1) on a
// node of each chip (--node, or the smallest node preset of that chip with enough chips), the same
// Trainer on timing-only devices, one rank thread each.
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <algorithm>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "arch/Units.hpp"
#include "arch/NodeSpec.hpp"
#include "arch/NameSuggestions.hpp"
#include "ccl/Communicator.hpp"
#include "cli/Commands.hpp"
#include "models/Qwen3.hpp"
#include "models/Tokenizer.hpp"
#include "report/JsonDoc.hpp"
#include "report/Progress.hpp"
#include "report/LineChart.hpp"
#include "report/Table.hpp"
#include "train/Checkpoint.hpp"
#include "train/Data.hpp"
#include "train/Trainer.hpp"

namespace ppu::cli {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out.good()) throw UserError(fmt::format("cannot write '{}'", path.string()));
}

}  // namespace

namespace {

// The node presets built of `chip`, fewest chips first.
std::vector<NodeSpec> nodes_of(const ChipSpec& chip) {
  std::vector<NodeSpec> nodes;
  for (const auto& name : node_preset_names())
    if (NodeSpec n = load_node(name); n.chip.name == chip.name) nodes.push_back(n);
  std::stable_sort(nodes.begin(), nodes.end(), [](const NodeSpec& a, const NodeSpec& b) { return a.num_chips() < b.num_chips(); });
  return nodes;
}

// Bytes of training state per chip: per parameter the 16-bit weight, its fp32 gradient, fp32 master
// copy and two AdamW moments (18 bytes); under tensor parallelism the attention and MLP matrices are
// divided by tp (embeddings, LM head and norms replicated), and ZeRO-1 divides the 12 bytes of fp32
// optimizer state by `zero_dp`.
double training_state_bytes(const ModelConfig& cfg, int tp, int zero_dp) {
  const ModelParamCounts pc = param_counts(cfg);
  const double params = static_cast<double>(pc.attention + pc.mlp) / tp +
                        static_cast<double>(pc.embedding + pc.lm_head + pc.norms);
  return params * (6.0 + 12.0 / zero_dp);
}

// The smallest layout of a node of `chip` whose training state fits a chip with a fifth of its memory
// left for activations: TP (dividing the heads, key-value heads and MLP width) first, else ZeRO-1
// over DP; "" if none.
std::string training_split_for(const ModelConfig& cfg, const ChipSpec& chip) {
  const double capacity = 0.8 * chip.hbm_size.value;
  for (const NodeSpec& n : nodes_of(chip))
    for (int w = 2; w <= n.num_chips(); w *= 2) {
      const bool tp_ok = cfg.num_heads % w == 0 && cfg.num_kv_heads % w == 0 && cfg.intermediate_size % w == 0 && !cfg.is_moe();
      if (tp_ok && training_state_bytes(cfg, w, 1) <= capacity) return fmt::format("--node {} --tp {}", n.name, w);
      if (training_state_bytes(cfg, 1, w) <= capacity) return fmt::format("--node {} --dp {} --zero 1", n.name, w);
    }
  return "";
}

// Refuses, before any layer is built, a model whose training state (training_state_bytes) cannot
// fit one chip, suggesting the smallest split of a node of that chip that would hold it.
void check_training_state_fits(const ModelConfig& cfg, const ChipSpec& chip, int tp = 1, int zero_dp = 1) {
  const double params = training_state_bytes(cfg, tp, zero_dp) / (6.0 + 12.0 / zero_dp);
  const double bytes = training_state_bytes(cfg, tp, zero_dp);
  if (bytes <= chip.hbm_size.value) return;
  const std::string split = training_split_for(cfg, chip);
  throw DeviceOutOfMemory(
      fmt::format("{}: training state alone is {} per chip ({:.3g}B parameters on each chip x {:.3g} B: 16-bit weights, "
                  "fp32 gradients, and fp32 master weights and AdamW moments{}), and one {} holds {}: {}",
                  cfg.name, format_quantity(Dimension::kBytes, bytes), params / 1e9, 6.0 + 12.0 / zero_dp,
                  zero_dp > 1 ? fmt::format(" sharded over {} ranks", zero_dp) : std::string(), chip.name,
                  format_quantity(Dimension::kBytes, chip.hbm_size.value),
                  split.empty() ? "use a smaller model, or 'ppu simulate train' for sharded layouts on a cluster"
                                : fmt::format("split it, e.g. {} (or 'ppu simulate train' for a cluster)", split)),
      static_cast<int64_t>(bytes), 0, static_cast<int64_t>(chip.hbm_size.value));
}

// The ranks of a tp x dp layout on the first tp x dp chips of a node (one chip: no node): a device
// each (rank r = dp rank x tp + tp rank on chip r), a TP communicator per group of tp consecutive
// ranks and a DP communicator per TP rank (the ranks holding the same shard).
struct Ranks {
  std::vector<std::unique_ptr<Device>> devs;
  std::vector<std::unique_ptr<ccl::Communicator>> tp_comms, dp_comms;
  int tp = 1, dp = 1;

  Ranks(const std::optional<NodeSpec>& node, const ChipSpec& chip, int tp_, int dp_, ExecMode mode, int threads)
      : tp(tp_), dp(dp_) {
    for (int r = 0; r < tp * dp; ++r) devs.push_back(std::make_unique<Device>(chip, mode, threads));
    auto make_comm = [&](const std::vector<int>& ranks) {
      std::vector<Device*> ds;
      for (int r : ranks) ds.push_back(devs[static_cast<size_t>(r)].get());
      ccl::CommOptions co;
      co.rendezvous_timeout_s = 600;  // ranks wait for each other's forward and backward passes
      co.chips = ranks;
      return std::make_unique<ccl::Communicator>(*node, ds, co);
    };
    for (int d = 0; d < dp && tp > 1; ++d) {
      std::vector<int> ranks;
      for (int t = 0; t < tp; ++t) ranks.push_back(d * tp + t);
      tp_comms.push_back(make_comm(ranks));
    }
    for (int t = 0; t < tp && dp > 1; ++t) {
      std::vector<int> ranks;
      for (int d = 0; d < dp; ++d) ranks.push_back(d * tp + t);
      dp_comms.push_back(make_comm(ranks));
    }
  }
  // qo with rank r's TP place.
  Qwen3Options options(int r, Qwen3Options qo) const {
    if (tp > 1) {
      qo.tp_size = tp;
      qo.tp_rank = r % tp;
      qo.tp_comm = tp_comms[static_cast<size_t>(r / tp)].get();
    }
    return qo;
  }
  ccl::Communicator* dp_comm(int r) const { return dp > 1 ? dp_comms[static_cast<size_t>(r % tp)].get() : nullptr; }
};

// The heads, key-value heads and MLP width must split evenly over --tp (checked before anything is built).
void check_tp(const ModelConfig& cfg, int tp) {
  if (tp <= 1) return;
  nn::ParallelDegrees deg;
  deg.tp = tp;
  nn::check_split(split_dims(cfg), deg);
}

// --zero and --dp agree (0, or 1 with dp >= 2).
void check_zero(int zero, int dp) {
  if (zero != 0 && zero != 1)
    throw UserError(fmt::format("--zero {}: valid 0 (off) or 1 (optimizer state sharded over --dp)", zero));
  if (zero == 1 && dp < 2)
    throw UserError(fmt::format("--zero 1 with --dp {}: ZeRO-1 shards the optimizer state over the data-parallel ranks; "
                                "give --dp 2 or more (and --node), or leave --zero 0",
                                dp));
}

// --timing-only: one optimizer step of `o.batch` sequences of `o.seq_len` tokens, no numbers, on each
// chip of o.chip (a comma-separated list) - or with --tp/--dp on tp x dp chips of --node, or of the
// smallest node preset of each chip with enough chips - the same Trainer as real training, one rank
// thread each: simulated step time, tokens/s, MFU and the device memory the step needed (the
// busiest rank's), or that it does not fit.
int train_timing_only(const TrainRunOptions& o, const ModelConfig& cfg, nn::Recompute rc) {
  const int world = o.tp * o.dp;
  check_zero(o.zero, o.dp);
  check_tp(cfg, o.tp);
  std::vector<std::pair<ChipSpec, std::optional<NodeSpec>>> targets;
  if (!o.node.empty()) {
    const NodeSpec node = load_node(o.node);
    if (o.chip != TrainRunOptions{}.chip && !same_name_ignoring_case(o.chip, node.chip.name))
      throw UserError(fmt::format("--chip {} and --node {} ({} chips) disagree; give one of them (--chip a,b,c takes a "
                                  "node of each chip)",
                                  o.chip, node.name, node.chip.name));
    if (world > node.num_chips())
      throw UserError(fmt::format("--tp {} x --dp {} = {} chips: node '{}' has {}; valid: tp x dp up to {}", o.tp, o.dp,
                                  world, node.name, node.num_chips(), node.num_chips()));
    targets.emplace_back(node.chip, world > 1 ? std::optional<NodeSpec>(node) : std::nullopt);
  } else {
    for (const std::string& name : expand_chips(o.chip)) {
      const ChipSpec chip = load_chip(name);
      if (world == 1) {
        targets.emplace_back(chip, std::nullopt);
        continue;
      }
      std::optional<NodeSpec> pick;
      std::string have;
      for (const NodeSpec& n : nodes_of(chip)) {
        have += fmt::format("{}{} ({} chips)", have.empty() ? "" : ", ", n.name, n.num_chips());
        if (!pick && n.num_chips() >= world) pick = n;
      }
      if (!pick)
        throw UserError(fmt::format("--tp {} x --dp {} = {} chips of {}: no node preset of that chip has as many ({}); "
                                    "see ppu nodes",
                                    o.tp, o.dp, world, chip.name, have.empty() ? "none" : have));
      targets.emplace_back(chip, pick);
    }
  }
  Table t({"chip", "layout", "step time", "tokens/s", "MFU", "device memory", "host s"});
  nlohmann::json rows = nlohmann::json::array();
  AssumedMarks marks;
  Progress progress("train --timing-only", static_cast<int64_t>(targets.size()));
  for (const auto& [chip, node] : targets) {
    const auto wall0 = std::chrono::steady_clock::now();
    const std::string layout = world == 1 ? "1 chip"
                                          : fmt::format("{}: tp {} x dp {}{}", node->name, o.tp, o.dp,
                                                        o.zero == 1 ? ", ZeRO-1" : "");
    nlohmann::json row = {{"model", cfg.name}, {"chip", chip.name}, {"timing_only", true}, {"batch", o.batch},
                          {"seq_len", o.seq_len}, {"node", node ? json(node->name) : json()}, {"tp", o.tp},
                          {"dp", o.dp}, {"zero", o.zero}, {"recompute", nn::recompute_name(rc)},
                          {"out_of_memory", nullptr},
                          {"assumed_fields", AssumedMarks::among(chip, {"matrix_bf16", "hbm_bandwidth"})}};
    const std::string label = marks.mark(chip, chip.name, {"matrix_bf16", "hbm_bandwidth"});
    try {
      check_training_state_fits(cfg, chip, o.tp, o.zero == 1 ? o.dp : 1);
      Ranks ranks(node, chip, o.tp, o.dp, ExecMode::kTimingOnly, 1);
      Qwen3Options qo;
      qo.max_context = o.seq_len;
      train::TrainConfig tc;
      tc.steps = 1, tc.batch = o.batch, tc.micro_batch = o.micro_batch, tc.seq_len = o.seq_len, tc.lr = o.lr, tc.min_lr = 0;
      tc.warmup_steps = 0;
      tc.zero = o.zero;
      tc.recompute = rc;
      std::vector<int32_t> tokens(static_cast<size_t>(o.batch * (o.seq_len + 1)));
      for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((1000 + 7 * i) % static_cast<size_t>(cfg.vocab_size));
      // Every rank runs the step on its own thread (their collectives meet); rank 0's result is the
      // step's (the ranks' clocks agree after the last collective).
      std::vector<train::StepResult> results(static_cast<size_t>(world));
      std::vector<double> mfus(static_cast<size_t>(world));
      std::vector<std::string> errors(static_cast<size_t>(world));
      std::vector<int> oom(static_cast<size_t>(world), 0);
      std::vector<DeviceOutOfMemory> oom_error;
      std::mutex oom_mutex;
      auto rank = [&](int r) {
        try {
          Qwen3Model model(*ranks.devs[static_cast<size_t>(r)], cfg, Qwen3Weights::random(o.seed), ranks.options(r, qo));
          train::Trainer trainer(model, tc, ranks.dp_comm(r), r / o.tp);
          results[static_cast<size_t>(r)] = trainer.step(tokens);
          mfus[static_cast<size_t>(r)] = trainer.mfu(results[static_cast<size_t>(r)]);
        } catch (const DeviceOutOfMemory& e) {
          std::lock_guard<std::mutex> lock(oom_mutex);
          if (oom_error.empty()) oom_error.push_back(e);
        } catch (const std::exception& e) {
          errors[static_cast<size_t>(r)] = e.what();
        }
      };
      std::vector<std::thread> threads;
      for (int r = 1; r < world; ++r) threads.emplace_back(rank, r);
      rank(0);
      for (auto& th : threads) th.join();
      if (!oom_error.empty()) throw oom_error.front();
      for (int r = 0; r < world; ++r)
        if (!errors[static_cast<size_t>(r)].empty())
          throw UserError(fmt::format("rank {} (tp rank {}, dp rank {}) failed: {}", r, r % o.tp, r / o.tp,
                                      errors[static_cast<size_t>(r)]));
      const train::StepResult& r = results[0];
      int64_t peak = 0;
      for (const auto& d : ranks.devs) peak = std::max(peak, d->peak_bytes_in_use());
      const double host = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
      t.add_row({label, layout, format_quantity(Dimension::kTime, r.sim_s),
                 fmt::format("{:.0f}", static_cast<double>(r.tokens) / r.sim_s), fmt::format("{:.1f}%", 100 * mfus[0]),
                 format_quantity(Dimension::kBytes, static_cast<double>(peak)), fmt::format("{:.1f}", host)});
      row["simulated_step_s"] = r.sim_s;
      row["tokens_per_s"] = static_cast<double>(r.tokens) / r.sim_s;
      row["mfu"] = mfus[0];
      row["device_memory_peak_bytes"] = peak;
      row["host_s"] = host;
    } catch (const DeviceOutOfMemory& e) {
      t.add_row({label, layout, "does not fit", "", "", e.what(), ""});
      row["out_of_memory"] = e.what();
    }
    rows.push_back(row);
    progress.done(chip.name);
  }
  if (o.json) {
    print_json_document("train", rows);
  } else {
    std::cout << fmt::format("{} training step, timing only: {} sequences of {} tokens, bf16 weights with fp32 AdamW "
                             "state{}, recomputation {}\n",
                             cfg.name, o.batch, o.seq_len, o.zero == 1 ? " (ZeRO-1 over dp)" : "", nn::recompute_name(rc))
              << t.render() << marks.legend()
              << "MFU: 3 x forward FLOPs (causal attention) per token / (step time x the dense bf16 peak of the "
                 "layout's chips); device memory: the busiest chip's peak.\n";
  }
  return 0;
}

}  // namespace

std::string run_checkpoint_dir(const std::string& dir) {
  std::error_code ec;
  const fs::path ck = fs::path(dir) / "checkpoint";
  if (!fs::exists(fs::path(dir) / "config.json", ec) && fs::exists(ck / "config.json", ec)) return ck.string();
  return dir;
}

int cmd_train(const TrainRunOptions& o) {
  // --recompute: given, or none (a resumed run keeps its own unless given).
  const bool recompute_given = !o.recompute.empty();
  const nn::Recompute recompute =
      recompute_given ? nn::parse_recompute(o.recompute, "--recompute") : nn::Recompute::kNone;
  if (o.timing_only) return train_timing_only(o, load_model_config(o.model), recompute);
  // --node/--dp/--tp: tp x dp emulated chips of the node, rank r = dp_rank x tp + tp_rank on chip r;
  // rank 0 here, one host thread per other rank running the same steps (train/Trainer).
  std::optional<NodeSpec> node;
  if (!o.node.empty()) node = load_node(o.node);
  const int world = o.dp * o.tp;
  if (world > 1 && !node)
    throw UserError(fmt::format("--dp {} --tp {}: give the node whose chips run the {} ranks (--node; see ppu nodes)", o.dp,
                                o.tp, world));
  if (node && world > node->num_chips())
    throw UserError(fmt::format("--tp {} x --dp {} = {} chips: node '{}' has {}; valid: tp x dp up to {}", o.tp, o.dp, world,
                                node->name, node->num_chips(), node->num_chips()));
  if (node && o.chip != TrainRunOptions{}.chip && !same_name_ignoring_case(o.chip, node->chip.name))
    throw UserError(fmt::format("--chip {} and --node {} ({} chips) disagree; give one of them", o.chip, node->name,
                                node->chip.name));
  check_zero(o.zero, o.dp);
  DType act = DType::kBF16;
  if (same_name_ignoring_case(o.dtype, "fp16"))
    act = DType::kF16;
  else if (!same_name_ignoring_case(o.dtype, "bf16"))
    throw UserError(fmt::format("--dtype {}: valid bf16 or fp16 (activations and matrix inputs)", o.dtype));
  if (o.loss_scale < 0 && o.loss_scale != -1)
    throw UserError(fmt::format("--loss-scale {}: valid 0 (off) or a positive first scale (default: 65536 with fp16)",
                                o.loss_scale));
  // Dynamic loss scaling: on by default with fp16 (torch.amp.GradScaler's first scale), off with bf16.
  const double loss_scale = o.loss_scale >= 0 ? o.loss_scale : act == DType::kF16 ? 65536.0 : 0.0;
  const ChipSpec chip = node ? node->chip : load_chip(o.chip);
  const ModelConfig cfg = load_model_config(o.model);
  check_tp(cfg, o.tp);  // before the corpus is read
  check_training_state_fits(cfg, chip, o.tp, o.zero == 1 ? o.dp : 1);
  if (o.seq_len < 1 || o.seq_len > cfg.max_position_embeddings)  // before the corpus is read: fail fast
    throw UserError(fmt::format("--seq-len {}: valid 1 to model '{}''s context of {} positions", o.seq_len, cfg.name,
                                cfg.max_position_embeddings));
  const fs::path out = o.out.empty() ? fs::path("runs") / cfg.name : fs::path(o.out);
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) throw UserError(fmt::format("--out '{}': cannot create the directory ({})", out.string(), ec.message()));
  std::ostream& log = o.json ? std::cerr : std::cout;

  // Data (the corpus paths are checked before the tokenizer loads: a mistyped path fails fast).
  const std::vector<std::string> corpus = o.data.empty() ? train::default_corpus(PPU_SOURCE_DIR) : o.data;
  train::corpus_files(corpus);
  const std::string tokenizer_path = find_tokenizer(o.model, o.tokenizer);
  const models::Tokenizer tok = models::Tokenizer::from_file(tokenizer_path);
  train::DataOptions dopt;
  dopt.seq_len = o.seq_len;
  dopt.cache_path = (out / "corpus.tokens").string();
  const auto wall0 = std::chrono::steady_clock::now();
  const train::TokenDataset data = train::TokenDataset::load(corpus, tok, dopt);
  const train::DataStats& ds = data.stats();
  log << fmt::format("data: {} documents, {} training tokens ({} sequences of {}), {} validation tokens; token cache "
                     "{}; unigram entropy {:.3f} nats/token\n",
                     ds.documents, ds.train_tokens, ds.train_sequences, o.seq_len, ds.validation_tokens,
                     train::kCacheStateNames[static_cast<size_t>(ds.cache)], ds.train_unigram_entropy_nats);

  // A resumed run takes its model, schedule and data position from the checkpoint (any layout).
  const bool checkpoint = fs::is_directory(o.model);
  std::optional<train::TrainerState> resumed;
  std::string resume_dir;
  if (!o.resume.empty()) {
    resume_dir = run_checkpoint_dir(o.resume);
    resumed = train::read_trainer_state(resume_dir);
    if (o.steps <= resumed->step)
      throw UserError(fmt::format("--resume {}: the run has done {} steps already; give --steps above that to continue",
                                  o.resume, resumed->step));
    if (!resumed->data)
      throw UserError(fmt::format("--resume {}: the checkpoint has no data position to continue from", o.resume));
    const train::DataPosition& p = *resumed->data;
    if (p.seq_len != data.seq_len() || p.corpus_fingerprint != data.shard().corpus_fingerprint ||
        p.tokenizer_fingerprint != data.shard().tokenizer_fingerprint)
      throw UserError(fmt::format("--resume {}: the checkpoint was trained on other data (sequence length {} vs {}, or "
                                  "another corpus or tokenizer); give the same --data, --seq-len and --tokenizer",
                                  o.resume, p.seq_len, data.seq_len()));
  }
  train::TrainConfig tc;
  tc.steps = o.steps;
  tc.batch = o.batch;
  tc.micro_batch = o.micro_batch;
  tc.seq_len = o.seq_len;
  tc.lr = o.lr;
  tc.min_lr = o.min_lr >= 0 ? o.min_lr : o.lr / 10;
  tc.warmup_steps = o.warmup;
  tc.weight_decay = o.weight_decay;
  tc.clip = o.clip;
  tc.skip_nonfinite = o.skip_nonfinite;
  tc.loss_scale_init = loss_scale;
  tc.loss_scale_growth_interval = o.loss_scale_window;
  if (resumed) {
    tc = resumed->config;  // the run's own settings: the same batches and schedule as if never stopped
    tc.steps = o.steps;
    // A micro-batch that this invocation's --dp cannot use: each rank's whole share instead.
    if (tc.batch % o.dp != 0 || (tc.batch / o.dp) % std::max<int64_t>(1, tc.micro_batch) != 0) tc.micro_batch = 0;
  }
  tc.zero = o.zero;  // the layout is this invocation's, also when resuming

  if (recompute_given) tc.recompute = recompute;  // a resumed run keeps its own unless given (the same bits either way)

  // The ranks' devices and communicators: TP groups of consecutive ranks, DP groups of the ranks
  // holding the same TP shard.
  Ranks ranks(node, chip, o.tp, o.dp, ExecMode::kFunctional, o.threads);
  std::vector<std::unique_ptr<Device>>& devs = ranks.devs;
  Device& dev = *devs[0];
  auto options_of = [&](int r) {
    Qwen3Options qo;
    qo.max_context = o.seq_len;
    qo.act_dtype = act;
    qo.matmul_dtype = act;
    return ranks.options(r, qo);
  };
  auto dp_comm_of = [&](int r) { return ranks.dp_comm(r); };
  const Qwen3Weights weights = checkpoint ? Qwen3Weights::from_checkpoint(o.model) : Qwen3Weights::random(o.seed);

  const int64_t val_seqs = std::min<int64_t>(data.validation_sequences(), o.eval_batches * o.batch);
  std::vector<int32_t> val_tokens;
  for (int64_t i = 0; i < val_seqs; ++i) {
    const auto s = data.validation_sequence(i);
    val_tokens.insert(val_tokens.end(), s.begin(), s.end());
  }
  const int64_t first_step = resumed ? resumed->step : 0;
  const int64_t last_step = o.stop_after > 0 ? std::min(o.steps, first_step + o.stop_after) : o.steps;
  auto eval_due = [&](int64_t step) {
    return !val_tokens.empty() && ((o.eval_every > 0 && step % o.eval_every == 0) || step == last_step);
  };
  auto save_due = [&](int64_t step) { return (o.save_every > 0 && step % o.save_every == 0) || step == last_step; };
  const fs::path ck_dir = out / "checkpoint";

  Qwen3Model model(dev, cfg, weights, options_of(0));
  train::Trainer trainer(model, tc, dp_comm_of(0), 0);
  // The other ranks: the same batches and steps, silently; the TP ranks of DP group 0 join rank 0's
  // validation forwards, and every rank joins each checkpoint (its parts are gathered; rank 0 writes).
  std::vector<std::thread> rank_threads;
  std::vector<std::string> rank_errors(static_cast<size_t>(world));
  struct JoinRanks {  // joins the rank threads however this function leaves
    std::vector<std::thread>& t;
    ~JoinRanks() {
      for (auto& x : t)
        if (x.joinable()) x.join();
    }
  } join_ranks{rank_threads};
  for (int r = 1; r < world; ++r)
    rank_threads.emplace_back([&, r] {
      try {
        Qwen3Model m(*devs[static_cast<size_t>(r)], cfg, weights, options_of(r));
        train::Trainer t(m, tc, dp_comm_of(r), r / o.tp);
        std::optional<train::BatchIterator> it;
        if (resumed) {
          train::load_checkpoint(resume_dir, m, t);
          it.emplace(data, resumed->data->batch, resumed->data->seed, resumed->data->state);
        } else {
          it.emplace(data, o.batch, o.seed);
        }
        for (int64_t s = first_step; s < last_step; ++s) {
          const int64_t step = t.step(it->next()).step;
          if (r < o.tp && eval_due(step)) t.evaluate(val_tokens);
          if (save_due(step)) train::save_checkpoint(ck_dir.string(), m, t);
        }
      } catch (const std::exception& e) {
        rank_errors[static_cast<size_t>(r)] = e.what();
      }
    });
  std::optional<train::BatchIterator> batch_it;
  if (resumed) {
    train::load_checkpoint(resume_dir, model, trainer);
    const train::DataPosition& p = *resumed->data;
    batch_it.emplace(data, p.batch, p.seed, p.state);
    log << fmt::format("resumed {} at step {}\n", resume_dir, trainer.steps_done());
  } else {
    batch_it.emplace(data, o.batch, o.seed);
  }
  train::BatchIterator& batches = *batch_it;
  std::vector<train::StepResult> history = resumed ? resumed->metrics : std::vector<train::StepResult>{};
  auto save = [&] {
    train::CheckpointExtra ex;
    ex.tokenizer_path = tokenizer_path;
    ex.seed = o.seed;
    ex.data = train::data_position(batches, data);
    ex.metrics = history;
    train::save_checkpoint(ck_dir.string(), model, trainer, ex);
  };
  const std::string layout =
      world == 1 ? chip.display_name
                 : fmt::format("{} chips of {} (tp {} x dp {}{})", world, node->display_name, o.tp, o.dp,
                               o.zero == 1 ? ", ZeRO-1" : "");
  log << fmt::format("model: {} ({:.1f}M parameters, {}) on {}; {} steps of {} x {} tokens, micro-batch {}, lr {:.2g} "
                     "(warmup {}, cosine to {:.2g}), AdamW wd {}, clip {}, {}{}, recomputation {}\n",
                     cfg.name, static_cast<double>(param_counts(cfg).total()) / 1e6,
                     checkpoint ? "from " + o.model : fmt::format("random, seed {}", o.seed), layout, o.steps, o.batch,
                     o.seq_len, trainer.config().micro_batch, tc.lr,
                     tc.warmup_steps >= 0 ? tc.warmup_steps : std::min<int64_t>(100, tc.steps / 10), tc.min_lr,
                     tc.weight_decay, tc.clip, dtype_name(act),
                     tc.loss_scale_init > 0 ? fmt::format(" with dynamic loss scaling from {:g}", tc.loss_scale_init)
                                            : std::string(),
                     nn::recompute_name(tc.recompute));

  std::ofstream metrics(out / "metrics.jsonl", resumed ? std::ios::binary | std::ios::app : std::ios::binary);
  if (!metrics) throw UserError(fmt::format("cannot write '{}'", (out / "metrics.jsonl").string()));
  LineSeries train_curve{"train", "#1f77b4", {}}, val_curve{"validation", "#d62728", {}};
  for (const train::StepResult& r : history) train_curve.points.emplace_back(static_cast<double>(r.step), r.loss);
  double val_loss = std::nan(""), sim_total = 0, host_total = 0, last_loss = 0;
  int64_t skipped = 0;
  auto evaluate = [&](int64_t step) {
    val_loss = trainer.evaluate(val_tokens);
    val_curve.points.emplace_back(static_cast<double>(step), val_loss);
    log << fmt::format("step {:>5}  validation loss {:.4f} ({} sequences)\n", step, val_loss, val_seqs) << std::flush;
  };
  for (int64_t s = first_step; s < last_step; ++s) {
    const train::StepResult r = trainer.step(batches.next());
    sim_total += r.sim_s;
    host_total += r.host_s;
    last_loss = r.loss;
    skipped += r.skipped ? 1 : 0;
    train_curve.points.emplace_back(static_cast<double>(r.step), r.loss);
    const double mfu = trainer.mfu(r);
    const bool overflow = r.skipped && r.loss_scale > 0 && std::isfinite(r.loss);
    log << fmt::format("step {:>5}/{}  loss {:.4f}  grad norm {:.3f}  lr {:.2e}  host {:.0f} tok/s  sim {} per step  "
                       "MFU {:.1f}%{}{}\n",
                       r.step, o.steps, r.loss, r.grad_norm, r.lr, static_cast<double>(r.tokens) / r.host_s,
                       format_quantity(Dimension::kTime, r.sim_s), 100.0 * mfu,
                       r.loss_scale > 0 ? fmt::format("  scale {:g}", r.loss_scale) : std::string(),
                       overflow      ? "  (skipped: fp16 overflow, scale halved)"
                       : r.skipped ? "  (skipped: non-finite)"
                                   : "")
        << std::flush;  // a step takes seconds: `ppu train | tee log` shows each line as it comes
    json m = {{"step", r.step},
              {"loss", r.loss},
              {"grad_norm", r.grad_norm},
              {"lr", r.lr},
              {"tokens", r.tokens},
              {"host_s", r.host_s},
              {"host_tokens_per_s", static_cast<double>(r.tokens) / r.host_s},
              {"simulated_step_s", r.sim_s},
              {"mfu", mfu},
              {"skipped", r.skipped},
              {"recompute", nn::recompute_name(tc.recompute)},
              {"loss_scale", r.loss_scale > 0 ? json(r.loss_scale) : json()}};
    if (eval_due(r.step)) {
      evaluate(r.step);
      m["validation_loss"] = val_loss;
    }
    metrics << m.dump() << '\n';
    metrics.flush();
    history.push_back(r);
    if (save_due(r.step)) save();
  }
  LineChart chart{fmt::format("{} on {}: training loss", cfg.name, chip.display_name), "step", "loss (nats per token)", {}};
  chart.series = {train_curve, val_curve};
  if (!val_curve.points.empty() || !train_curve.points.empty()) {
    LineSeries unigram{"unigram entropy", "#2ca02c", {}};
    unigram.points = {{1.0, ds.train_unigram_entropy_nats}, {static_cast<double>(o.steps), ds.train_unigram_entropy_nats}};
    chart.series.push_back(unigram);
  }
  write_text(out / "loss.svg", chart.svg());
  for (auto& t : rank_threads) t.join();
  for (size_t r = 1; r < rank_errors.size(); ++r)
    if (!rank_errors[r].empty()) throw UserError(fmt::format("rank {} (tp rank {}, dp rank {}) failed: {}", r, static_cast<int>(r) % o.tp, static_cast<int>(r) / o.tp, rank_errors[r]));
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  const int64_t ran = last_step - first_step;
  const double tokens = static_cast<double>(ran) * static_cast<double>(tc.batch * tc.seq_len);
  json summary = {{"model", cfg.name},
                  {"chip", chip.name},
                  {"assumed_fields", AssumedMarks::among(chip, {"matrix_bf16", "hbm_bandwidth"})},
                  {"timing_only", false},
                  {"batch", tc.batch},
                  {"seq_len", tc.seq_len},
                  {"dp", o.dp},
                  {"tp", o.tp},
                  {"zero", o.zero},
                  {"recompute", nn::recompute_name(tc.recompute)},
                  {"dtype", std::string(dtype_name(act))},
                  {"steps", last_step},
                  {"steps_this_run", ran},
                  {"tokens", tokens},
                  {"final_loss", last_loss},
                  {"validation_loss", std::isfinite(val_loss) ? json(val_loss) : json()},
                  {"unigram_entropy_nats", ds.train_unigram_entropy_nats},
                  {"skipped_steps", skipped},
                  {"host_s", wall},
                  {"host_tokens_per_s", tokens / host_total},
                  {"simulated_s", sim_total},
                  {"simulated_step_s", sim_total / static_cast<double>(std::max<int64_t>(1, ran))},
                  {"out", out.string()}};
  if (o.json) {
    print_json_document("train", json::array({summary}));
  } else {
    std::cout << fmt::format("done: step {}; {} steps in {:.1f} s on this host ({:.0f} tokens/s); final loss {:.4f}, validation "
                             "loss {:.4f} (unigram entropy {:.3f}); simulated {} on the {} ({} per step)\n"
                             "wrote {}/metrics.jsonl, {}/loss.svg and {}/checkpoint (ppu run --model {})\n",
                             last_step, ran, wall, tokens / host_total, last_loss, val_loss, ds.train_unigram_entropy_nats,
                             format_quantity(Dimension::kTime, sim_total), chip.display_name,
                             format_quantity(Dimension::kTime, sim_total / static_cast<double>(std::max<int64_t>(1, ran))), out.string(),
                             out.string(), out.string(), out.string());
  }
  return 0;
}

}  // namespace ppu::cli
