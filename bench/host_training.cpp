// Host speed of training on the emulated PPU: optimizer steps of the `tiny` Qwen3 (hidden 64, 2
// layers, the Qwen3 tokenizer's 151,936-token vocabulary) through the PPU kernels on this machine -
// forward, backward (nn::Graph), AdamW - against Debian's PyTorch training the same model shape on
// the same batches' shape, on the same cores in the same run (bench/torch_train_step.py), in bf16
// autocast and in fp32; the reference is whichever of the two PyTorch runs faster.
//
// Target (training issue): at least 1.0x PyTorch. Exit status 0 always (a measurement, not a test).
//   bench_host_training [steps] [--ours-only]     (defaults: 5 timed steps after one warmup step)
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "train/Trainer.hpp"

using namespace ppu;
using Clock = std::chrono::steady_clock;

namespace {

constexpr int64_t kBatch = 4, kSeq = 64;

// Best tokens/s of PyTorch over `steps` timed steps; 0 if PyTorch is not available.
double torch_tokens_per_s(int threads, int steps, const char* dtype) {
  const std::string cmd = fmt::format("/usr/bin/python3 {}/bench/torch_train_step.py --threads {} --steps {} --batch {} "
                                      "--seq {} --dtype {} 2>&1",
                                      PPU_SOURCE_DIR, threads, steps, kBatch, kSeq, dtype);
  double v = 0;
  if (FILE* p = popen(cmd.c_str(), "r")) {
    char line[512];
    while (std::fgets(line, sizeof line, p))
      if (std::sscanf(line, "tokens_per_s %lf", &v) == 1) break;
    pclose(p);
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 5;
  bool ours_only = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--ours-only") ours_only = true;
    else steps = std::max(1, std::atoi(argv[i]));
  }
  const int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  Device dev(load_chip("zhenwu-810e"), ExecMode::kFunctional, threads);
  Qwen3Options o;
  o.max_context = kSeq;
  Qwen3Model model(dev, load_model_config("tiny"), Qwen3Weights::random(1), o);
  train::TrainConfig tc;
  tc.steps = steps + 1, tc.batch = kBatch, tc.seq_len = kSeq;
  train::Trainer trainer(model, tc);
  std::vector<int32_t> tokens(static_cast<size_t>(kBatch * (kSeq + 1)));
  double ours = 0, sim = 0;
  for (int s = 0; s <= steps; ++s) {
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((s * 7919 + i * 104729) % 151936);
    const auto t0 = Clock::now();
    const train::StepResult r = trainer.step(tokens);
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    if (s > 0) ours = std::max(ours, static_cast<double>(r.tokens) / dt), sim = r.sim_s;
  }
  std::cout << fmt::format("Training host speed: tiny Qwen3 (vocab 151,936), {} x {} tokens per step, {} host threads, "
                           "best of {} steps\n",
                           kBatch, kSeq, threads, steps)
            << fmt::format("  OpenPPU (PPU kernels, bf16 weights, fp32 AdamW): {:8.1f} tokens/s   (simulated on the "
                           "zhenwu-810e: {:.3f} ms per step)\n",
                           ours, 1e3 * sim);
  if (ours_only) return 0;
  const double bf16 = torch_tokens_per_s(threads, steps, "bf16"), fp32 = torch_tokens_per_s(threads, steps, "fp32");
  if (bf16 <= 0 && fp32 <= 0) {
    std::cout << "  PyTorch: not available (apt-get install python3-torch; run with /usr/bin/python3)\n";
    return 0;
  }
  const double ref = std::max(bf16, fp32);
  std::cout << fmt::format("  PyTorch bf16 autocast:                            {:8.1f} tokens/s\n", bf16)
            << fmt::format("  PyTorch fp32:                                     {:8.1f} tokens/s\n", fp32)
            << fmt::format("  ratio OpenPPU / PyTorch (the faster): {:.2f}x   target >= 1.0x\n", ours / ref);
  return 0;
}
