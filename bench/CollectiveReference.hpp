// Published collective measurements the collectives benchmark compares against, with their sources
// (docs/sources.md; tags [P] primary, [W] web / user reports): the Azure sweeps are the NCCL tables of
// Azure/AI-benchmarking-guide (Azure_Results/ND_A100_v4_results.md and the ND H100 v5 results); the
// H100 ring figure is a user's NCCL_ALGO=RING run (NVIDIA/nccl issue #1455), the H800 one a user's
// 8-GPU run (NVIDIA/nccl issue #1374).
#pragma once

#include <string>
#include <vector>

namespace ppu::bench {

struct AllReduceCase {
  std::string node;        // node preset
  std::string algorithm;   // "" = the selector's choice; else forced (a case about that algorithm)
  double size_bytes;       // nccl-tests sizes: 1 MB = 2^20 bytes
  double measured_busbw_gb_s;
  double tolerance;        // relative error the issue asks for (0: shown, no target)
  std::string source;
};

// NCCL all-reduce bus bandwidth, one node of 8 GPUs, in place (Azure; H100 with NVLS) [P]. Targets:
// within 10% at 64 MB and above, within 25% below.
inline const std::vector<AllReduceCase>& allreduce_cases() {
  static const std::vector<AllReduceCase> cases = [] {
    std::vector<AllReduceCase> v;
    const double mib = 1 << 20;
    const double sizes[] = {1 * mib, 4 * mib, 16 * mib, 64 * mib, 256 * mib, 1024 * mib, 8192 * mib};
    const double h100[] = {43.70, 128.73, 234.45, 361.78, 423.38, 466.35, 478.87};
    const double a100[] = {36.22, 71.43, 109.22, 166.63, 213.87, 228.10, 231.58};
    for (int i = 0; i < 7; ++i)
      v.push_back({"h100-dgx", "", sizes[i], h100[i], sizes[i] >= 64 * mib ? 0.10 : 0.25,
                   "Azure nccl-tests all_reduce_perf, 8x H100 (NVLS) [P]"});
    for (int i = 0; i < 7; ++i)
      v.push_back({"a100-dgx", "", sizes[i], a100[i], sizes[i] >= 64 * mib ? 0.10 : 0.25,
                   "Azure nccl-tests all_reduce_perf, 8x A100 [P]"});
    // Context (no target): ring bus bandwidth on 8x H100 and all-reduce on 8x H800, sizes unstated.
    v.push_back({"h100-dgx", "ring", 8192 * mib, 367.5, 0, "users report H100 ring 365-370 GB/s for 2-8 GPUs [W]"});
    v.push_back({"h800-hgx", "", 8192 * mib, 215.0, 0, "users report H800 8-GPU all-reduce 215 GB/s [W]"});
    return v;
  }();
  return cases;
}

}  // namespace ppu::bench
