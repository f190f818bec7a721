// Host speed of the functional path: batch-1 bf16 decode of a Qwen3-0.6B-shaped model (random
// weights) through the PPU kernels on this machine, against Debian's PyTorch running the same model
// shape in bf16 on the same machine in the same run (bench/torch_qwen3_decode.py), plus the fraction
// of this machine's memory-bandwidth roof (weight bytes per token / measured read bandwidth).
//
// Target (issue): at least 2x PyTorch. Exit status 0 always (a measurement, not a test).
//   bench_host_decode [steps]
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "models/Qwen3.hpp"

using namespace ppu;
using Clock = std::chrono::steady_clock;

// Read bandwidth of this host: two threads summing a 1 GiB buffer (best of 3).
double host_read_bandwidth() {
  const size_t n = size_t{1} << 28;  // 32-bit words
  std::vector<uint32_t> buf(n, 1u);
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    std::vector<double> part(2, 0);
    const auto t0 = Clock::now();
    std::vector<std::thread> th;
    for (int t = 0; t < 2; ++t)
      th.emplace_back([&, t] {
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        const size_t lo = n / 2 * t, hi = lo + n / 2;
        for (size_t i = lo; i < hi; i += 4) {
          s0 += buf[i];
          s1 += buf[i + 1];
          s2 += buf[i + 2];
          s3 += buf[i + 3];
        }
        part[static_cast<size_t>(t)] = static_cast<double>(s0 + s1 + s2 + s3);
      });
    for (auto& x : th) x.join();
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (part[0] + part[1] != static_cast<double>(n)) std::abort();
    best = std::max(best, n * 4.0 / s);
  }
  return best;
}

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 10;
  const int context = 16;
  Device dev(load_chip("zhenwu-810e"));
  Qwen3Options o;
  o.max_context = context + steps + 1;
  Qwen3Model m(dev, load_model_config("qwen3-0.6b"), Qwen3Weights::random(0), o);
  std::vector<int32_t> prompt(context, 5);
  m.forward(prompt);
  const auto t0 = Clock::now();
  for (int i = 0; i < steps; ++i) m.forward({7});
  const double ours = steps / std::chrono::duration<double>(Clock::now() - t0).count();

  double theirs = 0;
  const std::string cmd = fmt::format("/usr/bin/python3 {}/bench/torch_qwen3_decode.py --threads 2 --steps {} --context {} 2>&1",
                                      PPU_SOURCE_DIR, steps, context);
  if (FILE* p = popen(cmd.c_str(), "r")) {
    char line[512];
    while (fgets(line, sizeof line, p)) std::sscanf(line, "tokens_per_s %lf", &theirs);
    pclose(p);
  }
  const double bw = host_read_bandwidth();
  // Bytes a decode step must read: every weight once (bf16; the tied embedding read once as lm_head).
  const double bytes = static_cast<double>(m.weight_bytes()) - static_cast<double>(m.config().vocab_size) *
                                                                   static_cast<double>(m.config().hidden_size) * 2 *
                                                                   (m.config().tie_word_embeddings ? 0 : 1);
  const double roof = bw / bytes;
  std::cout << fmt::format("Qwen3-0.6B-shaped bf16 decode, batch 1, context {}, {} steps, this host (2 threads)\n",
                           context, steps)
            << fmt::format("  OpenPPU functional path : {:8.2f} tokens/s\n", ours);
  if (theirs > 0)
    std::cout << fmt::format("  PyTorch (Debian, bf16)  : {:8.2f} tokens/s\n  ratio                   : {:8.2f}x "
                             "(target >= 2x)\n",
                             theirs, ours / theirs);
  else
    std::cout << "  PyTorch                 : not available (apt-get install python3-torch; run with /usr/bin/python3)\n";
  std::cout << fmt::format("  memory roof             : {:.1f} GB/s read, {:.0f} MB per token -> {:.2f} tokens/s; "
                           "OpenPPU reaches {:.0f}% of it\n",
                           bw / 1e9, bytes / 1e6, roof, 100 * ours / roof);
  return 0;
}
