// Attention backward for training, FlashAttention-2's algorithm on the tile ISA: given the forward's
// inputs, its output O and per-row log-sum-exp, and the output gradient dO, computes dQ, dK and dV
// without materialising the [seq_q, seq_k] attention matrix.
//
//   q, o, d_o, dq:    [batch, seq_q, q_heads, head_dim]   (the forward's q layout, batch outermost)
//   k, v, dk, dv:     [batch, seq_k, kv_heads, head_dim]  (the forward's cache layout)
//   lse:              [batch, q_heads, seq_q] fp32        (FlashAttention's softmax_lse layout)
//
// q, k, v, o and d_o share one dtype (bf16, fp16 or fp32); dq, dk, dv may each be any of those (fp32
// keeps the gradients unrounded). q head h reads kv head h / (q_heads / kv_heads); dk and dv of a kv
// head are summed over the q heads of its group (GQA). Causal: query t sits at position
// seq_k - seq_q + t (bottom-right aligned, as the forward with past_len = seq_k - seq_q) and sees
// keys 0 .. that position; this needs seq_q <= seq_k.
//
//   AttentionWorkspace ws = kernels::make_attention_workspace(dev);   // the forward's mask
//   // forward per sequence b, with lse: attention(dev, ws, s_b, q_b, k_b, v_b, o_b, ..., &lse_b)
//   AttentionBackwardShape s{.batch = 2, .seq_q = 4096, .seq_k = 4096, .q_heads = 32,
//                            .kv_heads = 8, .head_dim = 128};
//   kernels::attention_backward(dev, ws, s, q, k, v, o, d_o, lse, dq, dk, dv);
//
// How it runs (three kernels, and a fourth when dK/dV work is split; all deterministic):
//  1. "dot": D[b, h, t] = rowsum(dO * O), fp32 [batch, q_heads, seq_q] scratch (FA2's preprocessing).
//  2. "dkdv": one block per (batch, kv head, tile of tile_kv keys), ordered kv head by kv head with
//     the key tiles that see the most queries first. The block holds K_j, V_j and fp32 dK_j, dV_j
//     and walks every (q head of the group, query tile i) that sees its keys (causal: tiles at or
//     below the diagonal), Q_i, dO_i, lse_i, D_i streaming `stages` steps ahead:
//       S = Q_i K_j^T, P = exp(scale * S [+ mask] - lse_i)       (fp32; P cast for the MMA)
//       dV_j += P^T dO_i,   dP = dO_i V_j^T,   dS = P * (dP - D_i)  (dS cast for the MMA)
//       dK_j += dS^T Q_i;   at the end dK_j *= scale; both stored in dk/dv's dtypes.
//     When these items are too few to fill the chip twice over (GQA with few kv heads, one short
//     sequence), each item's steps are cut into parts of at least 8 steps (about total steps / (2
//     cores)), one block each, storing fp32 partial dK_j, dV_j to a scratch buffer; a combine kernel
//     adds the parts of each item in part order into dk and dv (FlashAttention-2 instead runs one
//     block per q head and sums each group's expanded dK/dV afterwards).
//  3. "dq": one block per (batch, q head, tile of tile_q queries), heads of a group side by side
//     (they share K/V in L2), heaviest tiles first; it holds Q_i, dO_i, lse_i, D_i and fp32 dQ_i
//     and walks the key tiles it sees (K_j, V_j streaming ahead), recomputing S, P, dP and dS as
//     above and accumulating dQ_i += dS K_j; at the end dQ_i *= scale.
// FlashAttention-2 itself accumulates dQ inside kernel 2 with fp32 atomic adds to global memory,
// whose order varies from run to run; here, in the pipelined style, every output element has
// exactly one writer, so the result does not depend on how blocks are scheduled (the functional
// executor runs blocks on several host threads). That is FA2's alternative of a second kernel
// looping over the key tiles of each query tile; its price is recomputing S = Q K^T and dP = dO V^T
// there: 7 matrix products per (query tile, key tile) instead of 5.
//
// Style (AttentionStyle): kPipelined issues the next step's S and dP products before this step's
// vector work, so the matrix unit overlaps the vector unit within a block, and runs kernels 1-3 as
// above. kFlashAttention2 runs FlashAttention-2's own algorithm, for comparing with FA2
// measurements: each step in sequence with one block per core and synchronous (mma.sync-class)
// MMAs, as the forward's FA2 style; one dK/dV block per q head (a group's per-head dK/dV summed
// by the combine kernel afterwards, as FA2 sums its expanded dK/dV); the fifth product
// dQ_i = dS K_j in the dK/dV kernel, added with store_add (atomic adds) into an fp32 accumulator
// that kernel 1 clears, followed by a fence (a GPU warp issues in order, so it starts the next step
// only once its adds have gone out, at the core's atomic rate, ChipSpec::atomic_bandwidth_per_core);
// kernel 3 is then a conversion: dq = scale * accumulator, in dq's dtype. The executors apply the
// adds in block order, so this style is deterministic too (a GPU's is not); its dQ sums the key
// tiles in another order than the pipelined style's, so the two agree within rounding, not bits.
// On H100 the FA2 style predicts FA2's published backward within a few percent
// (bench/fidelity.cpp).
//
// Numerics: the matrix unit takes 16-bit operands: bf16/fp16 inputs as they are, fp32 inputs
// rounded to bf16 on load (like TF32 on GPUs). P and dS are rounded to that dtype before their
// products, as FlashAttention does; everything else (S, dP, D, the accumulators) is fp32.
// tests/attention/test_attention_backward.cpp derives the resulting error bound.
//
// Not here: dropout, attention bias or ALiBi, sliding windows, softcapping, variable-length
// batches (every sequence has seq_q queries and seq_k keys), head_dim above kAttentionMaxHeadDim.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "kernels/Attention.hpp"

namespace ppu::kernels {

struct AttentionBackwardShape {
  int64_t batch = 1;
  int64_t seq_q = 0;     // queries per sequence
  int64_t seq_k = 0;     // keys per sequence (>= seq_q when causal)
  int64_t q_heads = 0;
  int64_t kv_heads = 0;  // divides q_heads
  int64_t head_dim = 0;  // 1 .. kAttentionMaxHeadDim
  float scale = 0.0f;    // 0: 1 / sqrt(head_dim)
  bool causal = true;
  // Query-key pairs one q head of one sequence attends over (causal: the lower-right triangle).
  double visible_pairs() const;
};

// Tiling of the backward. Zero fields are chosen by choose_attention_backward_config.
struct AttentionBackwardConfig {
  AttentionStyle style = AttentionStyle::kPipelined;
  int dkdv_tile_kv = 0;  // keys per dK/dV block, 1 .. kAttentionMaxTileKv
  int dkdv_tile_q = 0;   // queries per dK/dV step, 1 .. kAttentionMaxTileQ
  int dq_tile_q = 0;     // queries per dQ block, 1 .. kAttentionMaxTileQ
  int dq_tile_kv = 0;    // keys per dQ step, 1 .. kAttentionMaxTileKv
  int stages = 0;        // step inputs in flight, 2 .. kAttentionMaxStages
  std::string describe() const;
};

// SRAM bytes of one block of the dK/dV and of the dQ kernel for `c` (every tile field set), head
// dim `d` and matrix operands of `matrix_type`: what choose_attention_backward_config fits.
int64_t attention_backward_dkdv_sram_bytes(const AttentionBackwardConfig& c, int64_t d, DType matrix_type, bool causal);
int64_t attention_backward_dq_sram_bytes(const AttentionBackwardConfig& c, int64_t d, DType matrix_type, bool causal);

// Fills the zero fields of `base` for `s` on `chip` with inputs of dtype `in_type`: for each kernel
// the largest tile pair (block x step) of 128x64, 64x64, 64x32, 32x32, 32x16, 16x16 (cut to the
// sequence) whose block fits the core's SRAM with 3 stages (else 2) - one block per core, 3 stages
// to hide the DMA latency. Pure function of its arguments.
AttentionBackwardConfig choose_attention_backward_config(const ChipSpec& chip, const AttentionBackwardShape& s,
                                                         DType in_type, const AttentionBackwardConfig& base = {});

struct AttentionBackwardTiming {
  AttentionBackwardConfig config;            // as run
  KernelTiming dot, dkdv;                    // kernels 1 and 2
  std::optional<KernelTiming> dkdv_combine;  // the sum of split dK/dV parts, when items were split
  KernelTiming dq;                           // kernel 3 (FA2 style: the dQ conversion)
  double time_s() const { return dot.time_s + dkdv.time_s + (dkdv_combine ? dkdv_combine->time_s : 0.0) + dq.time_s; }
  // FLOPs as FlashAttention counts them: the five matrix products, 2.5x the forward's 4 d per
  // visible pair and q head (recomputation in the pipelined style's dQ kernel not counted).
  double flops() const { return dkdv.useful_flops + dq.useful_flops; }
};

// Runs the kernels on `stream` (the scratch - D, 4 bytes per query row and head; split dK/dV
// parts, 8 bytes per key, head_dim and part; FA2 style: the fp32 dQ accumulator, 4 bytes per
// element of dq - is allocated for the call and freed after it). Throws UserError naming "attention_backward" and the offending
// argument if a size is not positive, q_heads is not a multiple of kv_heads, head_dim exceeds
// kAttentionMaxHeadDim, causal with seq_q > seq_k, scale is negative or not finite, a buffer's numel
// does not match its shape, q/k/v/o/d_o do not share one of bf16, fp16, fp32, lse is not fp32, a
// gradient is not bf16, fp16 or fp32, a gradient buffer overlaps an input, the workspace is not one
// from make_attention_workspace, the chip lacks a matrix unit for the operands, or `config` is out
// of range. DeviceOutOfMemory if the scratch does not fit.
AttentionBackwardTiming attention_backward(Device& dev, const AttentionWorkspace& ws, const AttentionBackwardShape& s,
                                           const Buffer& q, const Buffer& k, const Buffer& v, const Buffer& o,
                                           const Buffer& d_o, const Buffer& lse, const Buffer& dq, const Buffer& dk,
                                           const Buffer& dv, Stream* stream = nullptr,
                                           const AttentionBackwardConfig* config = nullptr);

// Scalar reference in double: forward (softmax attention with the exact max-subtracted softmax) and
// its analytic gradient for a loss L with dL/dO = d_o. Inputs in the layouts above as fp32 values
// (already rounded to their dtypes). Same preconditions as attention_backward (PPU_CHECK).
struct AttentionBackwardReference {
  std::vector<double> o;       // [batch, seq_q, q_heads, head_dim]
  std::vector<double> lse;     // [batch, q_heads, seq_q]
  std::vector<double> dq;      // [batch, seq_q, q_heads, head_dim]
  std::vector<double> dk, dv;  // [batch, seq_k, kv_heads, head_dim], summed over each group's q heads
};
AttentionBackwardReference attention_backward_reference(const AttentionBackwardShape& s, const std::vector<float>& q,
                                                        const std::vector<float>& k, const std::vector<float>& v,
                                                        const std::vector<float>& d_o);

}  // namespace ppu::kernels
