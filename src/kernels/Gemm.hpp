// GEMM on the PPU: C[b] = alpha * op(A[b]) . op(B[b]) for b < batch, fp32 accumulation (int32 for
// int8 inputs).
//
//   A: [batch, M, K] row-major, or [batch, K, M] with trans_a
//   B: [batch, K, N] row-major, or [batch, N, K] with trans_b
//   C: [batch, M, N] row-major, fp32, bf16 or fp16 (rounded RNE on store); int32 too for int8 inputs
//   A and B share a dtype: bf16, fp16, fp8 (e4m3/e5m2) on chips with an fp8 matrix unit, or int8 on
//   chips with an int8 one (matrix_int8).
//
//   GemmShape s{.m = 512, .n = 384, .k = 1000};
//   KernelTiming t = kernels::gemm(dev, s, a, b, c);
//
// int8 (exact): the products are summed in int32 (K <= kMmaInt8MaxK, so no sum can overflow), and
// split-K parts are int32 too, added exactly; C gets the int32 sums, or their fp32 values (RNE above
// 2^24) times alpha, rounded into C. W8A8 (SmoothQuant's scheme; gemm_w8a8): C[b, i, j] =
// fp32(sum) * s_x[b, i] * s_w[b, j] * alpha, in that order, in fp32, rounded once into C - s_x the
// per-token activation scales and s_w the per-output-channel weight scales that kernels/Quantize
// produces with the int8 operands.
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

// W8A8 scales (fp32): x [batch, M], one per row of A (token); w [batch, N], one per column of C
// (output channel, a row of B^T).
struct GemmScales {
  const Buffer* x = nullptr;
  const Buffer* w = nullptr;
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

// Elements of the workspace `cfg` needs for `s`: split_k x batch x M x N with split-K, else 0; of
// gemm_workspace_dtype (int32 for int8 inputs, else fp32).
int64_t gemm_workspace_numel(const GemmShape& s, const GemmConfig& cfg);
DType gemm_workspace_dtype(DType in_type);

// Builds the kernel (validates shapes and dtypes; throws UserError naming the mismatch). One kernel,
// so never split-K: without `config` the choice excludes it, and a config with split_k > 1 is a
// UserError (use make_gemm_kernels or gemm()).
// `scales`: a W8A8 GEMM (int8 A and B; C fp32, bf16 or fp16).
Kernel make_gemm(const ChipSpec& chip, const GemmShape& s, const Buffer& a, const Buffer& b, const Buffer& c,
                 const GemmConfig* config = nullptr, const GemmScales* scales = nullptr);

// The kernels of one GEMM with configuration `cfg`, in launch order: one kernel, or with split-K the
// partial products into `workspace` (fp32, gemm_workspace_numel(s, cfg) elements; may be null
// without split-K) and the reduce into C. Same errors as make_gemm, plus UserError for split_k
// outside 1 .. ceil(K / tile_k) or a missing or wrong-sized workspace.
std::vector<Kernel> make_gemm_kernels(const ChipSpec& chip, const GemmShape& s, const Buffer& a, const Buffer& b,
                                      const Buffer& c, const GemmConfig& cfg, const Buffer* workspace,
                                      const GemmScales* scales = nullptr);

// Runs the GEMM on `stream`: `config`, or the chosen one (split-K allowed). A split-K workspace is
// allocated for the call and freed after it (DeviceOutOfMemory if the device is too full for it).
// Returns the timing of the whole GEMM: with split-K, both kernels' times and traffic added up.
KernelTiming gemm(Device& dev, const GemmShape& s, const Buffer& a, const Buffer& b, const Buffer& c,
                  Stream* stream = nullptr, const GemmConfig* config = nullptr, const GemmScales* scales = nullptr);

// W8A8 GEMM: C = (A . B) * s_x[row] * s_w[col] * alpha, A and B int8 (from kernels::quantize_rows_int8),
// s_x [batch, M] and s_w [batch, N] fp32. UserError naming "gemm_w8a8" for wrong dtypes or sizes, or
// a chip without an int8 matrix unit (listing the chips that have one).
KernelTiming gemm_w8a8(Device& dev, const GemmShape& s, const Buffer& a, const Buffer& s_x, const Buffer& b,
                       const Buffer& s_w, const Buffer& c, Stream* stream = nullptr, const GemmConfig* config = nullptr);

// One launch for independent kernels (a grouped GEMM: every expert's GEMM in one grid), ordered
// largest SRAM need first as concat_kernels requires of block 0; a single part launches as it is.
KernelTiming launch_grouped(Device& dev, const std::string& name, std::vector<Kernel> parts, Stream* stream = nullptr);

// Where A[bt][i][p] and B[bt][p][j] of shape `s` sit in their host arrays (trans_a / trans_b
// layouts), for the references below and tests.
inline size_t gemm_a_index(const GemmShape& s, int64_t bt, int64_t i, int64_t p) {
  return static_cast<size_t>(bt * s.m * s.k + (s.trans_a ? p * s.m + i : i * s.k + p));
}
inline size_t gemm_b_index(const GemmShape& s, int64_t bt, int64_t p, int64_t j) {
  return static_cast<size_t>(bt * s.k * s.n + (s.trans_b ? j * s.k + p : p * s.n + j));
}

// Scalar reference (double accumulation of fp32-converted inputs), for tests and --check.
// a, b, c hold the values as fp32 (already rounded to their dtypes).
void gemm_reference(const GemmShape& s, const std::vector<float>& a, const std::vector<float>& b, std::vector<float>& c);

// Integer reference of gemm_w8a8: int64 sums of the int8 values, then the kernel's fp32 epilogue
// (fp32(sum) * s_x * s_w * alpha, in that order); c unrounded to C's dtype. For K <= kMmaInt8MaxK the
// kernel's result rounded into C is bit-identical to this one rounded the same way.
void gemm_w8a8_reference(const GemmShape& s, const std::vector<int8_t>& a, const std::vector<float>& s_x,
                         const std::vector<int8_t>& b, const std::vector<float>& s_w, std::vector<float>& c);

}  // namespace ppu::kernels
