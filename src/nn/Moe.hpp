// Moe: a mixture-of-experts feed-forward block (Qwen3-MoE): a router, top-k routed SwiGLU experts
// run as grouped GEMMs, and expert parallelism.
//
//   p = softmax(h . Wr^T) [T, E]; top-k per token (renormalised when norm_topk_prob); per expert e:
//   the rows routed to e -> SwiGLU_e -> rows of a [T*k, hidden] buffer; y = sum_j p_tj * that row.
//
// Splits: without EP every rank holds every expert, split by width under TP (a partial sum over the
// TP group). With EP (ep ranks, a multiple of tp) rank r holds experts [r * E/ep, (r+1) * E/ep) whole;
// attention runs data-parallel in ep / tp groups of tp ranks; each rank dispatches its share of its
// group's tokens to the experts' owners (all-gather of counts, all-to-all-v of rows and expert ids),
// the owners run their experts and send the rows back (all-to-all-v), the sender combines, and the
// group all-gathers the combined rows.
//
// Routing: the top-k choice is made on the host from the router probabilities read back (so the
// expert programs know their rows, as embedding lookups know their token ids); that read-back is not
// charged. In timing-only mode there are no probabilities: routing is balanced (token t, choice j ->
// expert (t*k + j) mod E), and every rank of an EP group is assumed to route like this one.
//
// Training (training_forward) records the same block on an nn::Graph as differentiable ops: the
// router linear, Graph::moe_route (softmax, top-k, renormalisation), Graph::gather_rows (dispatch),
// Graph::grouped_linear for the experts' gate/up/down with Graph::swiglu between, and
// Graph::combine; the caller adds Graph::add_load_balancing_loss over every layer's route.
//
// Not here: shared experts; expert or tensor parallelism in training (training_forward refuses them).
#pragma once

#include <string>
#include <vector>

#include "nn/Context.hpp"
#include "nn/Graph.hpp"
#include "nn/Linear.hpp"
#include "nn/SelfAttention.hpp"

namespace ppu::nn {

// The top-k experts of each of `rows` tokens from their router probabilities p [rows, experts]
// (host values): choice [rows * k] by decreasing probability, ties to the lower expert index; weight
// [rows * k] the chosen probabilities, divided by their sum when norm_topk_prob (the sum in double,
// as the inference forward always did).
void route_top_k(const std::vector<float>& p, int64_t rows, int64_t experts, int64_t k, bool norm_topk_prob,
                 std::vector<int32_t>& choice, std::vector<float>& weight);

struct MoeSpec {
  int64_t hidden = 0, experts = 0, top_k = 0, expert_ffn = 0;
  bool norm_topk_prob = true;
  DType weight_dtype = DType::kBF16;
};

class Moe {
 public:
  Moe() = default;
  Moe(Device& dev, const MoeSpec& spec, const std::string& prefix, const ParallelGroups& groups);

  // Adds the block's output for rows h [T, hidden] to the residual x - or, if `out` is given,
  // writes it to out [T, hidden] instead and returns whether that is a partial sum over the TP group
  // (to be reduced by the caller). `tap` (may be empty) sees the router's probabilities and choices.
  bool forward(Context& ctx, const Buffer& h, const Buffer& x, int64_t T, const Tap& tap = {},
               const Buffer& out = Buffer{});
  // The block on rows h [T, hidden] (matmul dtype) recorded on `g` for training: returns its output
  // [T, hidden] fp32 (to be added to the residual stream) and appends this layer's route to `routes`
  // (for Graph::add_load_balancing_loss). UserError under expert or tensor parallelism.
  VarPtr training_forward(Graph& g, const VarPtr& h, int64_t T, std::vector<MoeRoute>& routes) const;

  Linear router;                                    // [experts, hidden], replicated
  std::vector<Parameter> gate, up, down;            // per expert (all E; empty where another rank holds it)

 private:
  // This rank's experts on rows grouped by expert (counts[e] rows of local expert e): xin -> out,
  // one grouped launch per stage.
  void expert_ffn(Context& ctx, const Buffer& xin, const std::vector<int64_t>& counts, const Buffer& out);
  void expert_parallel(Context& ctx, const Buffer& h, const Buffer& y, int64_t T, const std::vector<int32_t>& choice,
                       const Buffer& w);
  MoeSpec spec_;
  int64_t ffn_ = 0;                   // each expert's width on this rank
  int64_t expert0_ = 0, local_ = 0;   // the experts this rank holds: [expert0_, expert0_ + local_)
};

}  // namespace ppu::nn
