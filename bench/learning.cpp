// Learning: does training on the emulated PPU learn? `ppu train` - the command users run - trains the
// `small` Qwen3 preset (21.4M parameters: Qwen3's tokenizer and 151,936-token vocabulary, 8 layers of
// width 128) from random weights on the default corpus (the project's docs and the King James
// Bible) on this host's cores; the bench then reads the validation loss against the training
// corpus's unigram entropy (the loss of the best model that ignores context) and asks the trained
// checkpoint for greedy continuations of a few prompts (`ppu run --raw`, temperature 0).
//
// Target (training issue): a validation loss at least 1.0 nat below the unigram entropy, within 30
// minutes of host time. The held-out documents are one in every twenty of the corpus (train/Data's
// spread split): text from the whole corpus that the model never trained on. Exit status 0 always (a
// measurement, not a test) unless `ppu train` itself fails (its error is printed; exit status 1).
//
//   bench_learning [--steps N] [--out DIR]   (defaults: 300 steps of 8 x 256 tokens, runs/learning)
//
// Progress (one line per step) goes to stderr; the report - markdown, as docs/learning.md keeps it -
// to stdout:   build/bench/bench_learning > docs/learning.md
#include <fmt/format.h>

#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

using nlohmann::json;

namespace {

constexpr double kTargetGapNats = 1.0, kTargetMinutes = 30.0;

// Single-quoted for the shell (the prompts and paths here hold no single quote of their own).
std::string shell_quoted(const std::string& s) { return "'" + s + "'"; }

// Runs `cmd` (stderr passed through), returning its stdout parsed as the one JSON document `--json`
// prints; null if the command failed or printed no document.
json run_json(const std::string& cmd) {
  std::string out;
  if (FILE* p = popen(cmd.c_str(), "r")) {
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    if (pclose(p) != 0) return nullptr;
  }
  const json doc = json::parse(out, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.contains("results") || doc["results"].empty()) return nullptr;
  return doc["results"][0];
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 300;
  std::string out = "runs/learning";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--steps" && i + 1 < argc) steps = std::max(1, std::atoi(argv[++i]));
    else if (a == "--out" && i + 1 < argc) out = argv[++i];
    else {
      std::cerr << "usage: bench_learning [--steps N] [--out DIR]\n";
      return 2;
    }
  }
  // The schedule: warmup over the first 5% of the steps, cosine decay to a tenth of the peak. The
  // peak learning rate is the one small models of this width train with (3e-3; GPT-3's smallest,
  // 125M, used 6e-4 and the rate grows as width shrinks). Micro-batches of 4 x 256 = 1024 rows: the
  // LM head's cross-entropy then fits one chunk and keeps its logits for the backward instead of
  // recomputing them (the head is ~90% of the step's FLOPs at this width).
  const std::string train_cmd =
      fmt::format("{} train --model small --steps {} --batch 8 --micro-batch 4 --seq-len 256 --lr 3e-3 --warmup {} --eval-every {} "
                  "--eval-batches 8 --seed 1 --out {} --json",
                  PPU_CLI, steps, std::max(1, steps / 20), std::max(1, steps / 8), shell_quoted(out));
  std::cerr << "bench_learning: " << train_cmd << "\n";
  const json r = run_json(train_cmd);
  if (r.is_null()) {
    std::cerr << "bench_learning: ppu train failed (its error is above)\n";
    return 1;
  }
  const double entropy = r.at("unigram_entropy_nats").get<double>(), host_min = r.at("host_s").get<double>() / 60.0;
  const double val = r.at("validation_loss").is_number() ? r.at("validation_loss").get<double>() : NAN;
  const double gap = entropy - val;

  std::cout << "# Learning: the `small` Qwen3 trained from scratch on this host\n\n"
            << "Regenerate: `build/bench/bench_learning > docs/learning.md` (20-25 minutes on two cores).\n\n"
            << fmt::format("`{}`\n\n", train_cmd.substr(train_cmd.find("train ")))
            << "| figure | measured | target |\n|---|---|---|\n"
            << fmt::format("| training | {} steps x {} sequences x {} tokens = {:.0f} tokens | |\n", r.at("steps").get<int64_t>(),
                           r.at("batch").get<int64_t>(), r.at("seq_len").get<int64_t>(), r.at("tokens").get<double>())
            << fmt::format("| unigram entropy of the training tokens | {:.3f} nats | |\n", entropy)
            << fmt::format("| final training loss | {:.3f} nats | |\n", r.at("final_loss").get<double>())
            << fmt::format("| validation loss (held-out documents, 1 in 20) | {:.3f} nats | |\n", val)
            << fmt::format("| unigram entropy - validation loss | {:.3f} nats | >= {:.1f} ({}) |\n", gap, kTargetGapNats,
                           gap >= kTargetGapNats ? "met" : "NOT met")
            << fmt::format("| host time | {:.1f} min ({:.0f} tokens/s) | <= {:.0f} min ({}) |\n", host_min,
                           r.at("host_tokens_per_s").get<double>(), kTargetMinutes, host_min <= kTargetMinutes ? "met" : "NOT met")
            << fmt::format("| simulated on the {} | {:.2f} s ({:.2f} ms per step) | |\n\n", r.at("chip").get<std::string>(),
                           r.at("simulated_s").get<double>(), 1e3 * r.at("simulated_step_s").get<double>());

  std::cout << "## Greedy samples\n\n"
            << fmt::format("`ppu run --model {} --raw --prompt <prompt> --gen 40` (temperature 0: the most likely token "
                           "each step).\n\n",
                           out);
  for (const std::string prompt : {"In the beginning", "And the LORD said unto Moses,", "Blessed are the",
                                   "The timing engine"}) {
    const json s = run_json(fmt::format("{} run --model {} --raw --prompt {} --gen 40 --json", PPU_CLI, shell_quoted(out),
                                        shell_quoted(prompt)));
    std::string text = s.is_null() ? std::string("(ppu run failed)") : s.at("text").get<std::string>();
    for (char& c : text)
      if (c == '\n') c = ' ';
    std::cout << fmt::format("- **{}**{}\n", prompt, text);
  }
  return 0;
}
