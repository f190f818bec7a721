// Training kernels of a mixture-of-experts router (Qwen3-MoE): the router's backward through the
// top-k renormalisation and the softmax over experts, and the auxiliary load-balancing loss (its
// routing statistics, its value and its gradient).
//
// The forward (nn/Moe, nn::Graph::moe_route) is p = softmax(logits) [T, E] per token, a top-k choice
// ids [T, k] made on the host from the read-back p, and the combine weights
//   w[t, j] = p[t, ids[t, j]] / s_t  with s_t = sum_j p[t, ids[t, j]]   (norm_topk_prob)
//   w[t, j] = p[t, ids[t, j]]                                           (otherwise)
// Given dL/dw [T, k] (from kernels::gather_combine_backward) and optionally dL/dp [T, E] reaching
// the probabilities by another path (the load-balancing loss), the router backward computes
//   dsel[t, j] = (dw[t, j] - sum_i dw[t, i] w[t, i]) / s_t             (renormalisation; else dw)
//   dP[t, e]   = d_probs[t, e] + sum_j [ids[t, j] == e] dsel[t, j]     (top-k: only the chosen)
//   dlogits    = p * (dP - sum_e p dP)                                 (softmax, per row)
// The top-k choice itself has no gradient (a piecewise-constant function of the logits).
//
// Load-balancing loss: Switch Transformer (Fedus, Zoph, Shazeer 2021, arXiv:2101.03961, section
// 2.2, eqs. 4-6) defines aux = alpha * E * sum_e f_e * P_e with f_e the fraction of tokens routed
// to expert e and P_e the mean router probability of e. Hugging Face's Qwen3-MoE
// (transformers/models/qwen3_moe/modeling_qwen3_moe.py, load_balancing_loss_func) counts all k
// choices of a token in f_e and concatenates the router logits of every layer before taking the
// means, so with N = layers x tokens rows in all:
//   aux = E * sum_e (count_e / N) (psum_e / N),   count_e = #(row, j) routed to e, psum_e = sum_rows p[., e]
// and the model's loss adds router_aux_loss_coef * aux. f_e is piecewise constant, so
//   d aux / d p[row, e] = E count_e / N^2   for every row of every layer.
// The kernels: moe_routing_stats adds a layer's psum and count rows into stats [2, E] (fp32, call
// once per layer after zeroing it); moe_load_balancing_loss turns stats into scale * sum_e psum_e
// count_e (scale = coef E / N^2) and adds it to the per-row losses where a mask is 1;
// moe_load_balancing_backward writes scale' * count_e into every row of a layer's dL/dp
// (scale' = coef E / N^2 x dL/daux).
//
//   kernels::moe_router_backward(dev, probs, ids, d_w, d_probs, d_logits, T, E, k, true);
//
// Layouts (row-major, fp32): probs, d_probs, d_logits [T, E]; ids, d_w [T, k] (ids: expert numbers
// as exact fp32 integers, distinct within a row, as the host's top-k choice uploads them); stats
// [2, E]; mask and loss [rows]; aux [1]. A block takes router_rows(E) tokens; the chosen columns are
// picked with iota / compare masks on the vector unit, so no element-sized DMA is needed. Column sums
// (moe_routing_stats) go through store_add in a Kernel::accumulates kernel: the same bits whatever
// the host threads.
//
// Not here: the forward top-k (host), auxiliary-loss-free balancing (DeepSeek-V3's bias), the router
// z-loss, an attention mask in the load-balancing means (every row counts), expert parallelism.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/Device.hpp"

namespace ppu::kernels {

// A block's tile holds at most this many elements per [rows, E] buffer (fp32: 32 KiB; the router
// backward holds five such tiles, 160 KiB, below the smallest core SRAM of 420 KiB).
inline constexpr int kRouterTileElems = 8192;
inline constexpr int kRouterMaxRows = 16;      // tokens per block at most
inline constexpr int kLoadBalanceChunk = 4096; // loss elements per tile in moe_load_balancing_loss

// Tokens per block for E experts: min(16, 8192 / E), at least 1.
int64_t router_rows(int64_t experts);

// Builds the router backward. d_probs may be an empty Buffer (no other gradient reached p).
// UserError naming "moe_router_backward" if a size is not positive, k > experts (or experts >
// kRouterTileElems), a buffer's numel is not its shape's, a buffer is not fp32, or d_logits
// overlaps an input.
Kernel make_moe_router_backward(const Buffer& probs, const Buffer& ids, const Buffer& d_weights, const Buffer& d_probs,
                                const Buffer& d_logits, int64_t tokens, int64_t experts, int64_t k, bool norm_topk_prob);
KernelTiming moe_router_backward(Device& dev, const Buffer& probs, const Buffer& ids, const Buffer& d_weights,
                                 const Buffer& d_probs, const Buffer& d_logits, int64_t tokens, int64_t experts,
                                 int64_t k, bool norm_topk_prob, Stream* s = nullptr);

// stats[0, e] += sum over tokens of probs[t, e]; stats[1, e] += #{(t, j): ids[t, j] == e}.
// UserError naming "moe_routing_stats" for bad sizes or dtypes (as above).
Kernel make_moe_routing_stats(const Buffer& probs, const Buffer& ids, const Buffer& stats, int64_t tokens,
                              int64_t experts, int64_t k);
KernelTiming moe_routing_stats(Device& dev, const Buffer& probs, const Buffer& ids, const Buffer& stats, int64_t tokens,
                               int64_t experts, int64_t k, Stream* s = nullptr);

// aux[0] = scale * sum_e stats[0, e] stats[1, e]; loss[i] += mask[i] * aux[0] (in place).
// UserError naming "moe_load_balancing_loss" for bad sizes or dtypes, or a non-finite scale.
Kernel make_moe_load_balancing_loss(const Buffer& stats, const Buffer& mask, const Buffer& loss, const Buffer& aux,
                                    int64_t experts, float scale);
KernelTiming moe_load_balancing_loss(Device& dev, const Buffer& stats, const Buffer& mask, const Buffer& loss,
                                     const Buffer& aux, int64_t experts, float scale, Stream* s = nullptr);

// d_probs[t, e] = scale * stats[1, e] for every t < tokens (overwritten).
// UserError naming "moe_load_balancing_backward" for bad sizes or dtypes, or a non-finite scale.
Kernel make_moe_load_balancing_backward(const Buffer& stats, const Buffer& d_probs, int64_t tokens, int64_t experts,
                                        float scale);
KernelTiming moe_load_balancing_backward(Device& dev, const Buffer& stats, const Buffer& d_probs, int64_t tokens,
                                         int64_t experts, float scale, Stream* s = nullptr);

// References in double from fp32 host values (ids as integers; d_probs may be empty).
std::vector<double> moe_router_backward_reference(const std::vector<float>& probs, const std::vector<int32_t>& ids,
                                                  const std::vector<float>& d_weights,
                                                  const std::vector<float>& d_probs, int64_t tokens, int64_t experts,
                                                  int64_t k, bool norm_topk_prob);
// [2 * E]: psum then count.
std::vector<double> moe_routing_stats_reference(const std::vector<float>& probs, const std::vector<int32_t>& ids,
                                                int64_t tokens, int64_t experts, int64_t k);

}  // namespace ppu::kernels
