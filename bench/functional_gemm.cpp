// Functional-executor speed: bf16 GEMM 2048^3 run through the PPU tile program on this host's cores,
// beside oneDNN's bf16 matmul (AVX512-BF16 where the CPU has it) and OpenBLAS sgemm (fp32), all in
// the same process with the same thread count.
//
// Target (issue): ours >= 0.5 x oneDNN. Prints GFLOP/s of each and the ratios, best of several runs
// (the machine is shared and noisy; ratios within one run are what count).
//
//   bench_functional_gemm [N] [reps]
#include <cblas.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <dnnl.hpp>
#include <iostream>
#include <random>

#include "kernels/Gemm.hpp"
#include "report/Table.hpp"
#include "sim/FunctionalExecutor.hpp"
#include "sim/Mma.hpp"

using namespace ppu;
using Clock = std::chrono::steady_clock;

template <class F>
double best_of(int reps, F f) {
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atol(argv[1]) : 2048;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 5;
  const double flops = 2.0 * n * n * n;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<float> af(static_cast<size_t>(n * n)), bf(static_cast<size_t>(n * n)), cf(static_cast<size_t>(n * n));
  for (auto& x : af) x = round_to(DType::kBF16, dist(rng));
  for (auto& x : bf) x = round_to(DType::kBF16, dist(rng));

  // --- ours: the tile program through the functional executor
  Device dev(load_chip("h100"), ExecMode::kFunctional);
  Buffer a = dev.alloc(DType::kBF16, n * n, "A"), b = dev.alloc(DType::kBF16, n * n, "B"),
         c = dev.alloc(DType::kBF16, n * n, "C");
  dev.upload(a, af);
  dev.upload(b, bf);
  kernels::GemmShape s{n, n, n};
  const auto cfg = kernels::choose_gemm_config(dev.chip(), s, DType::kBF16);
  const Kernel k = kernels::make_gemm(dev.chip(), s, a, b, c, &cfg);
  const int threads = dev.executor().threads();
  const double t_ours = best_of(reps, [&] { dev.executor().run(k, dev.chip().sram_bytes()); });
  const double t_launch = best_of(std::max(1, reps / 2), [&] { dev.launch(k); });

  // --- oneDNN bf16 matmul, f32 accumulate, bf16 output
  using namespace dnnl;
  engine eng(engine::kind::cpu, 0);
  stream strm(eng);
  memory::desc ad({n, n}, memory::data_type::bf16, memory::format_tag::ab);
  memory::desc bd({n, n}, memory::data_type::bf16, memory::format_tag::ab);
  memory::desc cd({n, n}, memory::data_type::bf16, memory::format_tag::ab);
  matmul::primitive_desc pd(matmul::desc(ad, bd, cd), eng);  // oneDNN 2.x API
  matmul mm(pd);
  memory am(ad, eng), bm(bd, eng), cm(cd, eng);
  convert_from_f32(DType::kBF16, af.data(), am.get_data_handle(), n * n);
  convert_from_f32(DType::kBF16, bf.data(), bm.get_data_handle(), n * n);
  auto run_dnnl = [&] {
    mm.execute(strm, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
    strm.wait();
  };
  run_dnnl();
  const double t_dnnl = best_of(reps, run_dnnl);
  const std::string impl = pd.impl_info_str();

  // --- OpenBLAS sgemm (fp32)
  auto run_blas = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(n), static_cast<int>(n), static_cast<int>(n),
                1.0f, af.data(), static_cast<int>(n), bf.data(), static_cast<int>(n), 0.0f, cf.data(), static_cast<int>(n));
  };
  run_blas();
  const double t_blas = best_of(reps, run_blas);

  // Agreement check between ours and oneDNN (both bf16 outputs of fp32 accumulations).
  std::vector<float> ours = dev.download(c), theirs(static_cast<size_t>(n * n));
  convert_to_f32(DType::kBF16, cm.get_data_handle(), theirs.data(), n * n);
  double max_rel = 0;
  for (size_t i = 0; i < ours.size(); ++i)
    max_rel = std::max(max_rel, std::fabs(double(ours[i]) - theirs[i]) / (std::fabs(double(theirs[i])) + 1.0));

  Table t({"implementation", "dtype", "time", "GFLOP/s", "vs oneDNN"});
  auto row = [&](const std::string& name, const char* dt, double sec) {
    t.add_row({name, dt, fmt::format("{:.1f} ms", sec * 1e3), fmt::format("{:.1f}", flops / sec / 1e9),
               fmt::format("{:.2f}x", t_dnnl / sec)});
  };
  row(fmt::format("OpenPPU functional executor ({})", cfg.describe()), "bf16", t_ours);
  row("OpenPPU launch (functional + timing engine)", "bf16", t_launch);
  row(fmt::format("oneDNN matmul [{}]", impl), "bf16", t_dnnl);
  row("OpenBLAS sgemm", "fp32", t_blas);
  std::cout << fmt::format("GEMM {}^3 on this host, {} threads for OpenPPU (AVX512-BF16 micro-kernels: {}), best of {}\n",
                           n, threads, mma_has_avx512bf16() ? "yes" : "no", reps)
            << t.render()
            << fmt::format("OpenPPU / oneDNN = {:.2f} (target >= 0.50); OpenPPU / OpenBLAS sgemm = {:.2f}; max "
                           "relative difference to oneDNN {:.2g}\n",
                           t_dnnl / t_ours, t_blas / t_ours, max_rel);
  return 0;
}
