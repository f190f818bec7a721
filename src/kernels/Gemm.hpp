// GEMM on the PPU: C[b] = alpha * op(A[b]) . op(B[b]) for b < batch, fp32 accumulation.
//
//   A: [batch, M, K] row-major, or [batch, K, M] with trans_a
//   B: [batch, K, N] row-major, or [batch, N, K] with trans_b
//   C: [batch, M, N] row-major, fp32, bf16 or fp16 (rounded RNE on store)
//   A and B share a dtype: bf16, fp16, or fp8 (e4m3/e5m2) on chips with an fp8 matrix unit.
//
//   GemmShape s{.m = 512, .n = 384, .k = 1000};
//   KernelTiming t = kernels::gemm(dev, s, a, b, c);
//
// Each block computes one [tile_m, tile_n] tile of C: it streams [tile_m, tile_k] and [tile_k,
// tile_n] tiles of A and B through `stages` SRAM buffers (loads run ahead of the matrix unit, the
// dependencies derived from the buffers) and stores C once. Blocks are ordered in groups of rows of
// tiles so that concurrently running blocks share A and B tiles in L2. The tile shape is chosen per
// chip and problem (choose_gemm_config) - like a BLAS library's heuristic - but the time always
// comes from the timing engine running the resulting programs.
//
// Split-K: when a problem's C tiles cannot fill the cores (a decode step: M = batch, a few tiles
// across N), choose_gemm_config may also split K over `split_k` blocks per tile, as cuBLASLt's
// split-K with a separate reduction does. Each block multiplies its share of the k-steps (the
// shares differ by at most one step) and stores fp32 partial sums to a workspace
// [split_k, batch, M, N]; a second kernel adds the parts of each element in split order (0, 1, ...),
// scales by alpha once and rounds into C. Every workspace element has one writer and the sum's
// order is fixed, so the result is the same for any host thread count; it differs from the unsplit
// kernel's by the order of the fp32 additions only (within the same accumulation bound).
#pragma once

#include <string>

#include "runtime/Device.hpp"

namespace ppu::kernels {

struct GemmShape {
  int64_t m = 0, n = 0, k = 0;
  int64_t batch = 1;
  bool trans_a = false, trans_b = false;
  float alpha = 1.0f;
};

struct GemmConfig {
  int tile_m = 128, tile_n = 128, tile_k = 64;
  int stages = 2;
  int group_m = 8;  // block ordering: this many rows of tiles are walked together
  // K split over this many blocks per C tile (1: none); 2 .. ceil(K / tile_k). See "Split-K" above.
  int split_k = 1;
  std::string describe() const;
};

// Picks a tile shape that fits the chip's SRAM and keeps the cores busy (wave quantization). With
// allow_split_k, a problem whose tiles are fewer than the cores also gets split-K configurations
// timed, and keeps one if it is faster than the best unsplit one by more than the autotune slack
// (3%). The split's second kernel is priced as a node of a captured graph (graph_node_latency, not
// launch_latency): split-K serves skinny GEMMs, i.e. decode steps, which serving engines launch as
// captured graphs; and the choice must not depend on how a kernel is launched, so that a run's
// numbers do not either. Cached; thread-safe.
GemmConfig choose_gemm_config(const ChipSpec& chip, const GemmShape& s, DType in_type, bool allow_split_k = true);

// fp32 elements of the workspace `cfg` needs for `s`: split_k x batch x M x N with split-K, else 0.
int64_t gemm_workspace_numel(const GemmShape& s, const GemmConfig& cfg);

// Builds the kernel (validates shapes and dtypes; throws UserError naming the mismatch). One kernel,
// so never split-K: without `config` the choice excludes it, and a config with split_k > 1 is a
// UserError (use make_gemm_kernels or gemm()).
Kernel make_gemm(const ChipSpec& chip, const GemmShape& s, const Buffer& a, const Buffer& b, const Buffer& c,
                 const GemmConfig* config = nullptr);

// The kernels of one GEMM with configuration `cfg`, in launch order: one kernel, or with split-K the
// partial products into `workspace` (fp32, gemm_workspace_numel(s, cfg) elements; may be null
// without split-K) and the reduce into C. Same errors as make_gemm, plus UserError for split_k
// outside 1 .. ceil(K / tile_k) or a missing or wrong-sized workspace.
std::vector<Kernel> make_gemm_kernels(const ChipSpec& chip, const GemmShape& s, const Buffer& a, const Buffer& b,
                                      const Buffer& c, const GemmConfig& cfg, const Buffer* workspace);

// Runs the GEMM on `stream`: `config`, or the chosen one (split-K allowed). A split-K workspace is
// allocated for the call and freed after it (DeviceOutOfMemory if the device is too full for it).
// Returns the timing of the whole GEMM: with split-K, both kernels' times and traffic added up.
KernelTiming gemm(Device& dev, const GemmShape& s, const Buffer& a, const Buffer& b, const Buffer& c,
                  Stream* stream = nullptr, const GemmConfig* config = nullptr);

// One launch for independent kernels (a grouped GEMM: every expert's GEMM in one grid), ordered
// largest SRAM need first as concat_kernels requires of block 0; a single part launches as it is.
KernelTiming launch_grouped(Device& dev, const std::string& name, std::vector<Kernel> parts, Stream* stream = nullptr);

// Scalar reference (double accumulation of fp32-converted inputs), for tests and --check.
// a, b, c hold the values as fp32 (already rounded to their dtypes).
void gemm_reference(const GemmShape& s, const std::vector<float>& a, const std::vector<float>& b, std::vector<float>& c);

}  // namespace ppu::kernels
