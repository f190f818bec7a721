// `ppu train`: real training on the emulated PPU - the corpus through the Qwen3 tokenizer into
// packed sequences (train/Data), optimizer steps (train/Trainer), one progress line per step (loss,
// gradient norm, learning rate, host tokens/s, simulated step time and MFU on the chip), held-out
// validation every --eval-every steps, and in --out: metrics.jsonl (one JSON object per step),
// loss.svg (the loss curve) and checkpoint/ (a Hugging Face model directory with the optimizer state
// beside it, train/Checkpoint), saved every --save-every steps and at the end. --resume DIR continues
// a run from DIR/checkpoint (or a checkpoint directory) bit-identically.
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <memory>
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

// Refuses, before any layer is built, a model whose training state cannot fit one chip: per
// parameter the bf16 weight, its fp32 gradient, fp32 master copy and two AdamW moments (18 bytes),
// none of it sharded (every data-parallel rank holds a whole replica; no ZeRO here).
void check_training_state_fits(const ModelConfig& cfg, const ChipSpec& chip) {
  const double params = static_cast<double>(param_counts(cfg).total());
  const double bytes = params * 18.0;
  if (bytes <= chip.hbm_size.value) return;
  throw DeviceOutOfMemory(
      fmt::format("{}: training state alone is {} ({:.3g}B parameters x 18 B: bf16 weights, fp32 gradients, master "
                  "weights and AdamW moments), and one {} holds {}; every data-parallel rank holds all of it here "
                  "(no ZeRO sharding): use a smaller model, or 'ppu simulate train' for sharded layouts on a cluster",
                  cfg.name, format_quantity(Dimension::kBytes, bytes), params / 1e9, chip.name,
                  format_quantity(Dimension::kBytes, chip.hbm_size.value)),
      static_cast<int64_t>(bytes), 0, static_cast<int64_t>(chip.hbm_size.value));
}

// --timing-only: one optimizer step of `o.batch` sequences of `o.seq_len` tokens on each chip of
// o.chip (a comma-separated list), no numbers: simulated step time, tokens/s and MFU side by side,
// and the device memory the step needed (or that it does not fit).
int train_timing_only(const TrainRunOptions& o, const ModelConfig& cfg) {
  const std::vector<std::string> chips = expand_chips(o.chip);
  Table t({"chip", "step time", "tokens/s", "MFU", "device memory", "host s"});
  nlohmann::json rows = nlohmann::json::array();
  AssumedMarks marks;
  Progress progress("train --timing-only", static_cast<int64_t>(chips.size()));
  for (const std::string& name : chips) {
    const ChipSpec chip = load_chip(name);
    const auto wall0 = std::chrono::steady_clock::now();
    nlohmann::json row = {{"model", cfg.name}, {"chip", chip.name}, {"timing_only", true}, {"batch", o.batch},
                          {"seq_len", o.seq_len}, {"out_of_memory", nullptr},
                          {"assumed_fields", AssumedMarks::among(chip, {"matrix_bf16", "hbm_bandwidth"})}};
    const std::string label = marks.mark(chip, chip.name, {"matrix_bf16", "hbm_bandwidth"});
    try {
      check_training_state_fits(cfg, chip);
      Device dev(chip, ExecMode::kTimingOnly);
      Qwen3Options qo;
      qo.max_context = o.seq_len;
      Qwen3Model model(dev, cfg, Qwen3Weights::random(o.seed), qo);
      train::TrainConfig tc;
      tc.steps = 1, tc.batch = o.batch, tc.micro_batch = o.micro_batch, tc.seq_len = o.seq_len, tc.lr = o.lr, tc.min_lr = 0;
      tc.warmup_steps = 0;
      train::Trainer trainer(model, tc);
      std::vector<int32_t> tokens(static_cast<size_t>(o.batch * (o.seq_len + 1)));
      for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((1000 + 7 * i) % static_cast<size_t>(cfg.vocab_size));
      const train::StepResult r = trainer.step(tokens);
      const double host = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
      t.add_row({label, format_quantity(Dimension::kTime, r.sim_s), fmt::format("{:.0f}", static_cast<double>(r.tokens) / r.sim_s),
                 fmt::format("{:.1f}%", 100 * trainer.mfu(r)),
                 format_quantity(Dimension::kBytes, static_cast<double>(dev.peak_bytes_in_use())), fmt::format("{:.1f}", host)});
      row["simulated_step_s"] = r.sim_s;
      row["tokens_per_s"] = static_cast<double>(r.tokens) / r.sim_s;
      row["mfu"] = trainer.mfu(r);
      row["device_memory_peak_bytes"] = dev.peak_bytes_in_use();
      row["host_s"] = host;
    } catch (const DeviceOutOfMemory& e) {
      t.add_row({label, "does not fit", "", "", e.what(), ""});
      row["out_of_memory"] = e.what();
    }
    rows.push_back(row);
    progress.done(chip.name);
  }
  if (o.json) {
    print_json_document("train", rows);
  } else {
    std::cout << fmt::format("{} training step, timing only: {} sequences of {} tokens, bf16 weights with fp32 AdamW "
                             "state, no recomputation\n",
                             cfg.name, o.batch, o.seq_len)
              << t.render() << marks.legend()
              << "MFU: 3 x forward FLOPs (causal attention) per token / (step time x the chip's dense bf16 peak).\n";
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
  if (o.timing_only) return train_timing_only(o, load_model_config(o.model));
  // --node/--dp: data parallelism over dp emulated chips of the node (rank 0 here, one host thread per
  // other rank running the same steps; gradients all-reduced by the collective library).
  std::optional<NodeSpec> node;
  if (!o.node.empty()) node = load_node(o.node);
  if (o.dp > 1 && !node) throw UserError(fmt::format("--dp {}: give the node whose chips run the ranks (--node; see ppu nodes)", o.dp));
  if (node && o.dp > node->num_chips())
    throw UserError(fmt::format("--dp {}: node '{}' has {} chips", o.dp, node->name, node->num_chips()));
  if (node && o.chip != TrainRunOptions{}.chip && !same_name_ignoring_case(o.chip, node->chip.name))
    throw UserError(fmt::format("--chip {} and --node {} ({} chips) disagree; give one of them", o.chip, node->name,
                                node->chip.name));
  if (o.dp > 1 && !o.resume.empty())
    throw UserError("--resume with --dp is not supported yet: resume on one chip, or start the data-parallel run afresh");
  const ChipSpec chip = node ? node->chip : load_chip(o.chip);
  const ModelConfig cfg = load_model_config(o.model);
  check_training_state_fits(cfg, chip);
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

  // Model and trainer (a resumed run takes its model, schedule and data position from the checkpoint).
  Device dev(chip, ExecMode::kFunctional, o.threads);
  std::vector<std::unique_ptr<Device>> peers;
  std::unique_ptr<ccl::Communicator> dp_comm;
  if (o.dp > 1) {
    std::vector<Device*> ranks = {&dev};
    for (int r = 1; r < o.dp; ++r) {
      peers.push_back(std::make_unique<Device>(chip, ExecMode::kFunctional, o.threads));
      ranks.push_back(peers.back().get());
    }
    ccl::CommOptions co;
    co.rendezvous_timeout_s = 600;  // ranks wait for each other's backward passes
    dp_comm = std::make_unique<ccl::Communicator>(*node, ranks, co);
  }
  Qwen3Options qo;
  qo.max_context = o.seq_len;
  const bool checkpoint = fs::is_directory(o.model);
  std::optional<train::TrainerState> resumed;
  std::string resume_dir;
  if (!o.resume.empty()) {
    resume_dir = run_checkpoint_dir(o.resume);
    resumed = train::read_trainer_state(resume_dir);
  }
  Qwen3Model model(dev, cfg, checkpoint ? Qwen3Weights::from_checkpoint(o.model) : Qwen3Weights::random(o.seed), qo);
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
  if (resumed) {
    if (o.steps <= resumed->step)
      throw UserError(fmt::format("--resume {}: the run has done {} steps already; give --steps above that to continue",
                                  o.resume, resumed->step));
    const int64_t steps = o.steps;
    tc = resumed->config;  // the run's own settings: the same batches and schedule as if never stopped
    tc.steps = steps;
  }
  train::Trainer trainer(model, tc, dp_comm.get(), 0);
  // The other data-parallel ranks: the same weights, batches and steps, silently.
  std::vector<std::thread> rank_threads;
  std::vector<std::string> rank_errors(static_cast<size_t>(std::max(1, o.dp)));
  struct JoinRanks {  // joins the rank threads however this function leaves
    std::vector<std::thread>& t;
    ~JoinRanks() {
      for (auto& x : t)
        if (x.joinable()) x.join();
    }
  } join_ranks{rank_threads};
  for (int r = 1; r < o.dp; ++r)
    rank_threads.emplace_back([&, r] {
      try {
        Device& d = *peers[static_cast<size_t>(r - 1)];
        Qwen3Model m(d, cfg, checkpoint ? Qwen3Weights::from_checkpoint(o.model) : Qwen3Weights::random(o.seed), qo);
        train::Trainer t(m, tc, dp_comm.get(), r);
        train::BatchIterator it(data, o.batch, o.seed);
        const int64_t last = o.stop_after > 0 ? std::min(o.steps, o.stop_after) : o.steps;
        for (int64_t s = 0; s < last; ++s) t.step(it.next());
      } catch (const std::exception& e) {
        rank_errors[static_cast<size_t>(r)] = e.what();
      }
    });
  std::optional<train::BatchIterator> batch_it;
  if (resumed) {
    train::load_checkpoint(resume_dir, model, trainer);
    if (!resumed->data)
      throw UserError(fmt::format("--resume {}: the checkpoint has no data position to continue from", o.resume));
    const train::DataPosition& p = *resumed->data;
    if (p.seq_len != data.seq_len() || p.corpus_fingerprint != data.shard().corpus_fingerprint ||
        p.tokenizer_fingerprint != data.shard().tokenizer_fingerprint)
      throw UserError(fmt::format("--resume {}: the checkpoint was trained on other data (sequence length {} vs {}, or "
                                  "another corpus or tokenizer); give the same --data, --seq-len and --tokenizer",
                                  o.resume, p.seq_len, data.seq_len()));
    batch_it.emplace(data, p.batch, p.seed, p.state);
    log << fmt::format("resumed {} at step {}\n", resume_dir, trainer.steps_done());
  } else {
    batch_it.emplace(data, o.batch, o.seed);
  }
  train::BatchIterator& batches = *batch_it;
  const fs::path ck_dir = out / "checkpoint";
  std::vector<train::StepResult> history = resumed ? resumed->metrics : std::vector<train::StepResult>{};
  auto save = [&] {
    train::CheckpointExtra ex;
    ex.tokenizer_path = tokenizer_path;
    ex.seed = o.seed;
    ex.data = train::data_position(batches, data);
    ex.metrics = history;
    train::save_checkpoint(ck_dir.string(), model, trainer, ex);
  };
  const int64_t val_seqs = std::min<int64_t>(data.validation_sequences(), o.eval_batches * o.batch);
  std::vector<int32_t> val_tokens;
  for (int64_t i = 0; i < val_seqs; ++i) {
    const auto s = data.validation_sequence(i);
    val_tokens.insert(val_tokens.end(), s.begin(), s.end());
  }
  log << fmt::format("model: {} ({:.1f}M parameters, {}) on {}; {} steps of {} x {} tokens, micro-batch {}, lr {:.2g} "
                     "(warmup {}, cosine to {:.2g}), AdamW wd {}, clip {}\n",
                     cfg.name, static_cast<double>(param_counts(cfg).total()) / 1e6,
                     checkpoint ? "from " + o.model : fmt::format("random, seed {}", o.seed),
                     o.dp > 1 ? fmt::format("{} chips of {} (data parallel)", o.dp, node->display_name) : chip.display_name,
                     o.steps,
                     o.batch, o.seq_len, trainer.config().micro_batch, tc.lr, tc.warmup_steps >= 0 ? tc.warmup_steps : std::min<int64_t>(100, tc.steps / 10),
                     tc.min_lr, tc.weight_decay, tc.clip);

  std::ofstream metrics(out / "metrics.jsonl", resumed ? std::ios::binary | std::ios::app : std::ios::binary);
  if (!metrics) throw UserError(fmt::format("cannot write '{}'", (out / "metrics.jsonl").string()));
  LineSeries train_curve{"train", "#1f77b4", {}}, val_curve{"validation", "#d62728", {}};
  for (const train::StepResult& r : history) train_curve.points.emplace_back(static_cast<double>(r.step), r.loss);
  double val_loss = std::nan(""), sim_total = 0, host_total = 0, last_loss = 0;
  int64_t skipped = 0;
  auto evaluate = [&](int64_t step) {
    if (val_tokens.empty()) return;
    val_loss = trainer.evaluate(val_tokens);
    val_curve.points.emplace_back(static_cast<double>(step), val_loss);
    log << fmt::format("step {:>5}  validation loss {:.4f} ({} sequences)\n", step, val_loss, val_seqs);
  };
  const int64_t first_step = trainer.steps_done();
  const int64_t last_step = o.stop_after > 0 ? std::min(o.steps, first_step + o.stop_after) : o.steps;
  for (int64_t s = first_step; s < last_step; ++s) {
    const train::StepResult r = trainer.step(batches.next());
    sim_total += r.sim_s;
    host_total += r.host_s;
    last_loss = r.loss;
    skipped += r.skipped ? 1 : 0;
    train_curve.points.emplace_back(static_cast<double>(r.step), r.loss);
    const double mfu = trainer.mfu(r);
    log << fmt::format("step {:>5}/{}  loss {:.4f}  grad norm {:.3f}  lr {:.2e}  host {:.0f} tok/s  sim {} per step  "
                       "MFU {:.1f}%{}\n",
                       r.step, o.steps, r.loss, r.grad_norm, r.lr, static_cast<double>(r.tokens) / r.host_s,
                       format_quantity(Dimension::kTime, r.sim_s), 100.0 * mfu, r.skipped ? "  (skipped: non-finite)" : "");
    json m = {{"step", r.step},
              {"loss", r.loss},
              {"grad_norm", r.grad_norm},
              {"lr", r.lr},
              {"tokens", r.tokens},
              {"host_s", r.host_s},
              {"host_tokens_per_s", static_cast<double>(r.tokens) / r.host_s},
              {"simulated_step_s", r.sim_s},
              {"mfu", mfu},
              {"skipped", r.skipped}};
    if ((o.eval_every > 0 && r.step % o.eval_every == 0) || r.step == last_step) {
      evaluate(r.step);
      m["validation_loss"] = val_loss;
    }
    metrics << m.dump() << '\n';
    metrics.flush();
    history.push_back(r);
    if ((o.save_every > 0 && r.step % o.save_every == 0) || r.step == last_step) save();
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
    if (!rank_errors[r].empty()) throw UserError(fmt::format("data-parallel rank {} failed: {}", r, rank_errors[r]));
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
