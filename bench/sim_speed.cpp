// Simulation speed: wall time of a timing-only GEMM on the h100 preset, and how it grows with the
// problem (the timing engine's cost is linear in the number of tile instructions).
//
// Target (issue): 8192^3 under 0.1 s of wall time.
#include <fmt/format.h>

#include <chrono>
#include <iostream>

#include "kernels/Gemm.hpp"
#include "report/Table.hpp"

using namespace ppu;

int main() {
  const ChipSpec chip = load_chip("h100");
  Table t({"M=N=K", "blocks", "instructions", "wall, first run", "wall, best of 3", "ns per instruction", "simulated time",
           "target"});
  for (long n : {1024L, 2048L, 4096L, 8192L, 16384L}) {
    double best = 1e9, first = 0;
    KernelTiming kt;
    for (int rep = 0; rep < 3; ++rep) {
      Device dev(chip, ExecMode::kTimingOnly);
      kernels::GemmShape s{n, n, n};
      Buffer a = dev.alloc(DType::kBF16, n * n, "A"), b = dev.alloc(DType::kBF16, n * n, "B"),
             c = dev.alloc(DType::kBF16, n * n, "C");
      const auto t0 = std::chrono::steady_clock::now();
      kt = kernels::gemm(dev, s, a, b, c);
      const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (rep == 0) first = wall;
      best = std::min(best, wall);
    }
    t.add_row({fmt::format("{}", n), fmt::format("{}", kt.blocks), fmt::format("{}", kt.instructions),
               fmt::format("{:.4f} s", first), fmt::format("{:.4f} s", best), fmt::format("{:.0f}", best / kt.instructions * 1e9),
               fmt::format("{:.3f} ms", kt.time_s * 1e3), n == 8192 ? "< 0.1 s" : ""});
  }
  std::cout << "Timing-only GEMM simulation on h100 (bf16)\n" << t.render()
            << "Cost grows linearly with the instruction count, i.e. with M*N*K / (tile_m*tile_n*tile_k).\n"
               "The first run of a size includes first-touch allocation of the engine's per-core state, and the\n"
               "smaller sizes include tile autotuning (several simulations, cached afterwards).\n";
  return 0;
}
