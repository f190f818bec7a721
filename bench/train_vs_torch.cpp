// Training correctness against PyTorch: the tiny dense Qwen3 and tiny Qwen3-MoE checkpoints of the
// tests (tests/data/qwen3-tiny, qwen3-tiny-moe: vocabulary 512, hidden 64, 2 layers) trained for 200
// optimizer steps from the same initial weights on the same batches, once by the PPU trainer
// (src/train/Trainer: PPU kernels, bf16 weights, fp32 AdamW) and once by Debian's PyTorch under bf16
// autocast (bench/torch_train_losses.py, same recipe: AdamW, clipping, warmup + cosine), in the same
// run. The batches are sequences of a seeded Markov chain over the vocabulary (each token has four
// successors, probabilities 0.55/0.25/0.15/0.05), so the loss falls well below ln(512) and the two
// curves are compared where they move.
//
// Targets (training issue): the loss within 1% of PyTorch at every 10th step; and determinism: the
// losses bit-identical across two runs and across 1 and 2 host threads. Exit status 0 always (a
// measurement); a model the trainer cannot train yet is reported as skipped, with the reason.
//   bench_train_vs_torch [--steps N] [--markdown]
#include <fmt/format.h>

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "FidelityReport.hpp"
#include "report/Table.hpp"
#include "train/Trainer.hpp"

using namespace ppu;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kBatch = 8, kSeq = 64;
constexpr double kTolerance = 0.01;

// The Markov chain: successor lists and their probabilities, and its entropy rate (nats per token,
// the loss a perfect model reaches).
struct Chain {
  static constexpr int kSucc = 4;
  static constexpr double kProb[kSucc] = {0.55, 0.25, 0.15, 0.05};
  std::vector<std::array<int32_t, kSucc>> next;
  double entropy() const {
    double h = 0;
    for (double p : kProb) h -= p * std::log(p);
    return h;
  }
};

Chain make_chain(int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(vocab - 1));
  Chain c;
  c.next.resize(static_cast<size_t>(vocab));
  for (auto& s : c.next)
    for (auto& t : s) t = tok(rng);
  return c;
}

// steps x batch x (seq + 1) token ids: each sequence a walk of the chain from a random start.
std::vector<int32_t> make_batches(const Chain& c, int64_t steps, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> start(0, static_cast<int32_t>(c.next.size() - 1));
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(steps * kBatch * (kSeq + 1)));
  for (int64_t s = 0; s < steps * kBatch; ++s) {
    int32_t t = start(rng);
    for (int64_t i = 0; i <= kSeq; ++i) {
      out.push_back(t);
      double r = u(rng);
      int j = 0;
      while (j < Chain::kSucc - 1 && r >= Chain::kProb[j]) r -= Chain::kProb[j++];
      t = c.next[static_cast<size_t>(t)][static_cast<size_t>(j)];
    }
  }
  return out;
}

train::TrainConfig recipe(int64_t steps) {
  train::TrainConfig tc;
  tc.steps = steps, tc.batch = kBatch, tc.seq_len = kSeq;
  tc.lr = 1e-3, tc.min_lr = 1e-4, tc.warmup_steps = std::min<int64_t>(20, steps);
  return tc;
}

// The PPU trainer's loss per step (StepResult::loss: cross-entropy, plus the weighted load-balancing
// loss for MoE); empty and `why` set if it cannot train this model.
std::vector<double> train_ours(const std::string& dir, const std::vector<int32_t>& batches, int64_t steps, int threads,
                               std::string& why) {
  try {
    Device dev(load_chip("zhenwu-810e"), ExecMode::kFunctional, threads);
    Qwen3Options o;
    o.max_context = kSeq;
    Qwen3Model model(dev, load_model_config(dir), Qwen3Weights::from_checkpoint(dir), o);
    train::Trainer trainer(model, recipe(steps));
    std::vector<double> losses;
    const size_t per_step = static_cast<size_t>(kBatch * (kSeq + 1));
    for (int64_t s = 0; s < steps; ++s) {
      const std::vector<int32_t> step(batches.begin() + static_cast<std::ptrdiff_t>(s * per_step),
                                      batches.begin() + static_cast<std::ptrdiff_t>((s + 1) * per_step));
      losses.push_back(trainer.step(step).loss);
    }
    return losses;
  } catch (const UserError& e) {
    why = e.what();
    return {};
  }
}

// PyTorch's training loss per step, as the PPU trainer reports it: the mean cross-entropy, plus for
// MoE the load-balancing loss times router_aux_loss_coef (empty if PyTorch is not available; `why`
// says so).
std::vector<double> train_torch(const std::string& dir, const std::string& batches_file, int64_t steps, int threads,
                                std::string& why) {
  const train::TrainConfig tc = recipe(steps);
  const std::string cmd = fmt::format(
      "/usr/bin/python3 {}/bench/torch_train_losses.py --model {} --batches {} --steps {} --batch {} --seq {} --lr {} "
      "--min-lr {} --warmup {} --weight-decay {} --clip {} --threads {} 2>&1",
      PPU_SOURCE_DIR, dir, batches_file, steps, kBatch, kSeq, tc.lr, tc.min_lr, tc.warmup_steps, tc.weight_decay, tc.clip,
      threads);
  std::vector<double> losses;
  std::string tail;
  if (FILE* p = popen(cmd.c_str(), "r")) {
    char line[1024];
    while (std::fgets(line, sizeof line, p)) {
      int step = 0;
      double ce = 0, total = 0;
      if (std::sscanf(line, "step %d loss %lf total %lf", &step, &ce, &total) == 3) losses.push_back(total);
      else tail += line;
    }
    pclose(p);
  }
  if (static_cast<int64_t>(losses.size()) != steps) {
    why = "PyTorch run failed (apt-get install python3-torch; it runs with /usr/bin/python3): " +
          tail.substr(tail.size() > 400 ? tail.size() - 400 : 0);
    return {};
  }
  return losses;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t steps = 200;
  bool md = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--markdown") == 0) md = true;
    else if (std::strcmp(argv[i], "--steps") == 0 && i + 1 < argc) steps = std::max(10, std::atoi(argv[++i]));
  }
  const int threads = static_cast<int>(std::max(1u, std::min(2u, std::thread::hardware_concurrency())));
  const fs::path tmp = fs::temp_directory_path() / fmt::format("ppu-train-vs-torch-{}", ::getpid());
  fs::create_directories(tmp);
  const Chain chain = make_chain(512, 7);
  const std::vector<int32_t> batches = make_batches(chain, steps, 11);
  const std::string batches_file = (tmp / "batches.i32").string();
  std::ofstream(batches_file, std::ios::binary)
      .write(reinterpret_cast<const char*>(batches.data()), static_cast<std::streamsize>(batches.size() * 4));

  std::cout << fmt::format(
      "Training vs PyTorch: {} steps of {} x {} tokens from the same initial weights on the same batches (a Markov chain "
      "over 512 tokens, entropy rate {:.3f} nats); AdamW lr 1e-3 -> 1e-4 (20 warmup steps, cosine), clip 1.0, weight "
      "decay 0.1; PPU trainer on the zhenwu-810e (functional) vs Debian's PyTorch bf16 autocast, {} host threads. "
      "Target: every 10th step within {:.0f}%.\n\n",
      steps, kBatch, kSeq, chain.entropy(), threads, 100 * kTolerance);
  Table t({"model", "step", "PPU loss", "PyTorch loss", "error", "target", "ok"});
  bench::FidelityTally n;
  std::vector<std::string> notes;
  std::vector<double> dense_ours;
  for (const auto& [name, sub] : std::vector<std::pair<std::string, std::string>>{{"tiny dense", "qwen3-tiny"},
                                                                                  {"tiny MoE", "qwen3-tiny-moe"}}) {
    const std::string dir = std::string(PPU_SOURCE_DIR) + "/tests/data/" + sub;
    std::string why;
    const std::vector<double> ours = train_ours(dir, batches, steps, threads, why);
    if (ours.empty()) {
      notes.push_back(fmt::format("{}: skipped, the PPU trainer cannot train it yet: {}", name, why));
      continue;
    }
    if (sub == "qwen3-tiny") dense_ours = ours;
    const std::vector<double> ref = train_torch(dir, batches_file, steps, threads, why);
    if (ref.empty()) {
      notes.push_back(fmt::format("{}: no comparison: {}", name, why));
      continue;
    }
    for (int64_t s = 10; s <= steps; s += 10) {
      const double a = ours[static_cast<size_t>(s - 1)], b = ref[static_cast<size_t>(s - 1)];
      const double err = (a - b) / b;
      const bool ok = n.add(err, kTolerance);
      t.add_row({name, fmt::format("{}", s), fmt::format("{:.4f}", a), fmt::format("{:.4f}", b),
                 fmt::format("{:+.2f}%", 100 * err), fmt::format("±{:.0f}%", 100 * kTolerance), ok ? "yes" : "NO"});
    }
  }
  std::cout << (md ? t.render_markdown() : t.render())
            << fmt::format("\n{} of {} steps within target; worst |error| {:.2f}%\n", n.pass, n.total, 100 * n.worst);
  for (const auto& n : notes) std::cout << n << "\n";

  // Determinism: the dense run again (same threads), and with 1 host thread.
  if (!dense_ours.empty()) {
    const std::string dir = std::string(PPU_SOURCE_DIR) + "/tests/data/qwen3-tiny";
    std::string why;
    const auto again = train_ours(dir, batches, steps, threads, why);
    const auto one = train_ours(dir, batches, steps, 1, why);
    auto same = [&](const std::vector<double>& v) {
      return v.size() == dense_ours.size() && std::memcmp(v.data(), dense_ours.data(), v.size() * sizeof(double)) == 0;
    };
    std::cout << fmt::format("determinism (tiny dense, {} steps): second run {}; 1 vs {} host threads {}\n", steps,
                             same(again) ? "bit-identical" : "DIFFERS", threads, same(one) ? "bit-identical" : "DIFFERS");
  }
  fs::remove_all(tmp);
  return 0;
}
