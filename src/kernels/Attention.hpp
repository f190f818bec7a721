// Causal grouped-query attention over a KV cache (flash attention on the tile ISA): one entry point
// for prefill, chunked prefill and decode.
//
//   q:        [q_tokens, q_heads, head_dim]      any dtype
//   k_cache:  [kv_capacity, kv_heads, head_dim]  any dtype (bf16 typically); positions [0, kv_len)
//   v_cache:  [kv_capacity, kv_heads, head_dim]  valid, kv_len = past_len + q_tokens
//   out:      [q_tokens, q_heads, head_dim]      any dtype
//
// q token t sits at position past_len + t and attends to cache positions 0 .. past_len + t; q head h
// reads kv head h / (q_heads / kv_heads). out = softmax(scale * q . k^T + causal mask) . v, scale =
// 1/sqrt(head_dim) unless given.
//
//   AttentionWorkspace ws = kernels::make_attention_workspace(dev);    // once per device
//   AttentionShape s{.q_tokens = 1, .q_heads = 32, .kv_heads = 8, .head_dim = 128,
//                    .kv_capacity = 40960, .past_len = 8191};
//   kernels::attention(dev, ws, s, q, k_cache, v_cache, out);           // decode step at 8191
//
// How it runs. A tile is a set of query rows that one region of q addresses; every block takes one
// tile (and one KV split of it, below) and walks the KV cache in steps of tile_kv positions, like
// FlashAttention-2:
//   S = Q . K^T (K tile [kv, d] as the transposed B operand), S *= scale, S += mask (diagonal
//   tiles only), m' = max(m, rowmax S), P = exp(S - m'), l = l * exp(m - m') + rowsum P,
//   O = O * exp(m - m') + cast(P) . V, m = m';   at the end O / l is stored, converted to out's dtype.
// The next tile's S = Q.K^T is issued before this tile's softmax, so the matrix unit overlaps the
// vector unit, and K/V tiles stream `stages` steps ahead. KV tiles wholly beyond a tile's causal
// limit are never visited; the last visited one is cut to the limit (instructions work on the
// top-left of their buffers), so only tiles crossing the diagonal need a mask.
//
// Two ways to fill a tile's rows (AttentionPacking):
//  * kTokens (prefill): up to tile_q consecutive tokens of one q head (row stride q_heads * head_dim).
//    Blocks are ordered so that the heads of one kv group run side by side and share K/V in L2.
//  * kHeads (decode, GQA packing): the q heads of one kv group for one token (contiguous in q), so a
//    decode step's matrix work has q_heads / kv_heads rows rather than one, and K/V are read once
//    per group. All rows share a position: no mask at all.
// kAuto takes kHeads when q_tokens <= q_heads / kv_heads (decode and short speculative chunks).
//
// Flash-decoding: when the tiles alone cannot fill the chip (a decode step has only kv_heads of
// them), each tile's KV range is cut into up to `splits` parts of about equal length, each run by
// its own block, which stores its unnormalised O with its m and l to a scratch buffer; a second
// kernel ("attention combine") merges the parts of each tile: M = max_s m_s, O = sum_s exp(m_s - M)
// O_s / sum_s exp(m_s - M) l_s. Tiles with one part store their result directly. The split count
// comes from a streaming estimate (choose_attention_config): a decode step of Qwen3-8B (8 groups)
// on h100 takes 4 splits at 8k positions and none below ~1.5k, where the combine's launch costs
// more than the shorter stream saves.
//
// Tile sizes (choose_attention_config; bytes for head_dim 128, 16-bit caches): a kTokens block
// holds Q [tile_q, D], `stages` K and V tiles [tile_kv, D], S fp32 and P [tile_q, tile_kv] twice
// (double-buffered so the matrix unit runs ahead), a mask tile, O fp32 [tile_q, D] and five row
// vectors. 64 x 64 with 3 stages is 209 KiB: two blocks fit the smallest core SRAM (420 KiB, a100),
// so one block's softmax overlaps the other's MMAs. 64 rows give 64 FLOPs per K/V byte; chips whose
// matrix unit needs more from its core's share of L2 (h100 ~82, b200 ~126) get 128 rows (128 x 32:
// 211 KiB on h100; 128 x 64 on b200's 740 KiB) when there are enough tiles to fill the chip. The
// kHeads layout (decode) has few rows (4 for a group of 4: 201 KiB with 128-position K/V tiles and
// 3 stages), so its SRAM goes to long K/V transfers in flight. Head_dim 256 halves tile_kv (or
// tile_q) until two blocks fit; any config is checked against the chip's SRAM when it runs.
//
// Causal mask: the workspace holds a "staircase" M[r, x] = 0 if x - r <= kAttentionMaskDiag, else
// -inf, shape [kAttentionMaskRows, kAttentionMaskCols], bf16. For a tile whose row 0 is at position
// p0 and whose KV tile starts at k0, the load of M at column offset kAttentionMaskDiag - (p0 - k0)
// gives mask[r, c] = 0 exactly when k0 + c <= p0 + r, for any offset a diagonal tile can have. The
// running max starts at -FLT_MAX, so rows that a tile or a split masks completely get exp(-inf) = 0
// weights rather than NaN.
//
// Numerics: the matrix unit takes 16-bit operands, so Q and K are converted on load to the matrix
// dtype of K (K's own dtype if bf16 or fp16, otherwise bf16: exact for fp8, a rounding for fp32 -
// like TF32 on GPUs, fp32 attention here runs with reduced operand precision), and P is rounded to
// the matrix dtype of V before P.V, as FlashAttention does; l sums the unrounded fp32 P. Everything
// else is fp32. tests/attention/test_attention.cpp derives the resulting error bound.
//
// out may be q itself (a tile's q rows are read only by its own blocks, before they store); it must
// not overlap the caches.
//
// Non-causal calls (AttentionShape::causal = false) visit every KV tile of every tile, with no mask.
//
// Not here: sliding-window masks, attention sinks, softcapping, ALiBi, batches of sequences with
// different lengths, or a cache in another layout (kv heads outermost). Paged caches (a block table
// into a shared K/V pool, and their writes) are in kernels/PagedAttention.hpp.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/Device.hpp"

namespace ppu::kernels {

struct AttentionShape {
  int64_t q_tokens = 0;  // new tokens: 1 for a decode step
  int64_t q_heads = 0;
  int64_t kv_heads = 0;     // divides q_heads
  int64_t head_dim = 0;     // 1 .. kAttentionMaxHeadDim
  int64_t kv_capacity = 0;  // positions the caches hold
  int64_t past_len = 0;     // cache positions before the first q token
  float scale = 0.0f;       // 0: 1 / sqrt(head_dim)
  // true: q token t sees positions 0 .. past_len + t. false: every q token sees all kv_len positions
  // (bidirectional / cross attention, and the non-causal FlashAttention benchmarks).
  bool causal = true;
  int64_t kv_len() const { return past_len + q_tokens; }
};

enum class AttentionPacking : uint8_t { kAuto, kTokens, kHeads, kCount };
inline constexpr std::array<std::string_view, static_cast<size_t>(AttentionPacking::kCount)> kAttentionPackingNames = {
    "auto", "tokens", "heads"};

// How a block orders its work.
//  * kPipelined (default): the next KV step's S = Q.K^T is issued before this step's softmax, so
//    the matrix unit overlaps the vector unit within a block; the chip's native matrix instructions.
//  * kFlashAttention2: as FlashAttention-2 runs on GPUs - each step's S, softmax and P.V in
//    sequence (a warp issues its MMAs and its softmax math in one stream), one block at a time per
//    core (the model's stand-in for FA2 overlapping little of the softmax with the MMAs of other
//    warps: the FlashAttention-3 paper's motivation), and the synchronous warp-level MMA
//    instructions (mma.sync), which on Hopper reach only ChipSpec::mma_sync_fraction of the
//    tensor-core peak. For comparing with FA2 measurements (bench/fidelity.cpp); on the A100 case it
//    underpredicts (docs/validation.md), as some overlap across warps does happen there.
enum class AttentionStyle : uint8_t { kPipelined, kFlashAttention2, kCount };
inline constexpr std::array<std::string_view, static_cast<size_t>(AttentionStyle::kCount)> kAttentionStyleNames = {
    "pipelined", "flash-attention-2"};

// Tiling of one attention call. Zero fields are chosen by choose_attention_config.
struct AttentionConfig {
  AttentionStyle style = AttentionStyle::kPipelined;
  AttentionPacking packing = AttentionPacking::kAuto;
  int tile_q = 0;   // rows of a tile (tokens or heads), 1 .. kAttentionMaxTileQ
  int tile_kv = 0;  // cache positions per step, 1 .. kAttentionMaxTileKv
  int stages = 0;   // K/V tiles in flight, 2 .. kAttentionMaxStages
  int splits = 0;   // most KV splits of one tile (1: no flash-decoding)
  std::string describe() const;
};

inline constexpr int kAttentionMaxHeadDim = 256;
inline constexpr int kAttentionMaxTileQ = 128;
inline constexpr int kAttentionMaxTileKv = 128;
inline constexpr int kAttentionMaxStages = 4;
// Staircase mask geometry: a load at column offset kAttentionMaskDiag - delta with delta in
// [-(tile_q - 1), tile_kv - 2] (the offsets of diagonal-crossing tiles) stays inside it.
inline constexpr int kAttentionMaskRows = kAttentionMaxTileQ;
inline constexpr int kAttentionMaskDiag = kAttentionMaxTileKv - 2;
inline constexpr int kAttentionMaskCols = kAttentionMaxTileQ + 2 * kAttentionMaxTileKv - 3;
// A KV split gets at least this many positions: below it the combine and the per-block Q load cost
// more than the extra parallelism brings.
inline constexpr int64_t kAttentionMinSplitPositions = 256;

// Device-resident constants of the attention kernels: the causal staircase mask (96 KiB). Build
// once per device; the same workspace serves every shape and config.
struct AttentionWorkspace {
  Buffer mask;  // [kAttentionMaskRows, kAttentionMaskCols] bf16, 0 or -inf
};
// Allocates and uploads the workspace (timed over the host link on stream `s`).
AttentionWorkspace make_attention_workspace(Device& dev, Stream* s = nullptr);
void free_attention_workspace(Device& dev, AttentionWorkspace& ws);

// Picks packing, tile sizes, pipeline depth and splits for `s` on `chip` (see "Tile sizes" above):
// the deepest pipeline (2-3 stages) whose SRAM lets two blocks share a core (one block if nothing
// fits twice), and the split count a streaming estimate finds fastest. Fields already set in
// `base` are kept. k_type and v_type are the caches' dtypes. Pure function of its arguments.
AttentionConfig choose_attention_config(const ChipSpec& chip, const AttentionShape& s, DType k_type, DType v_type,
                                        const AttentionConfig& base = {});

struct AttentionTiming {
  AttentionConfig config;               // as run (every field resolved)
  KernelTiming attention;               // the main kernel
  std::optional<KernelTiming> combine;  // the flash-decoding merge, when a tile was split
  double time_s() const { return attention.time_s + (combine ? combine->time_s : 0.0); }
};

// Runs attention (and the combine kernel if needed) on `stream`. Throws UserError naming
// "attention" if a size is not positive, q_heads is not a multiple of kv_heads, kv_len exceeds
// kv_capacity, head_dim exceeds kAttentionMaxHeadDim, scale is negative or not finite, a buffer's
// numel does not match its shape, the workspace is not one from make_attention_workspace, the
// chip has no matrix unit for the operand dtype, or `config` is out of range. The split scratch
// (a few hundred KiB for a decode step) is allocated for the call and freed after it; a device too
// full for it raises DeviceOutOfMemory.
//
// lse (optional, for training): [q_heads, q_tokens] fp32 (FlashAttention's softmax_lse layout for
// one sequence) receives each query row's log-sum-exp of its scaled, masked scores, lse = m +
// log(l) in natural log - what attention_backward (AttentionBackward.hpp) needs to recompute the
// softmax. Stored by the main kernel (unsplit tiles) or the combine (split ones); UserError naming
// "lse" if it is not fp32 or not q_heads * q_tokens elements.
AttentionTiming attention(Device& dev, const AttentionWorkspace& ws, const AttentionShape& s, const Buffer& q,
                          const Buffer& k_cache, const Buffer& v_cache, const Buffer& out, Stream* stream = nullptr,
                          const AttentionConfig* config = nullptr, const Buffer* lse = nullptr);

// Several independent sequences (a batch: each its own q, caches, out and past_len; same heads and
// head_dim) in one launch of the main kernel and one of the combine, as serving engines batch decode
// steps. One configuration serves the batch, chosen as for one sequence with the batch's heads.
// Same errors as attention(), naming the item.
struct AttentionBatchItem {
  AttentionShape shape;
  Buffer q, k_cache, v_cache, out;
};
// `style`: how each block orders its work (AttentionStyle), for every item.
AttentionTiming attention_batch(Device& dev, const AttentionWorkspace& ws, const std::vector<AttentionBatchItem>& items,
                                Stream* stream = nullptr, AttentionStyle style = AttentionStyle::kPipelined);

// Scalar reference in double: q [q_tokens, q_heads, head_dim] and the caches [kv_capacity, kv_heads,
// head_dim] as fp32 values (already rounded to their dtypes); returns [q_tokens, q_heads, head_dim]
// unrounded, with the exact (max-subtracted) softmax. Same preconditions as attention (PPU_CHECK).
std::vector<double> attention_reference(const AttentionShape& s, const std::vector<float>& q,
                                        const std::vector<float>& k_cache, const std::vector<float>& v_cache);

}  // namespace ppu::kernels
