#include "kernels/RouterBackward.hpp"

#include <algorithm>
#include <cmath>

#include "kernels/KernelUtil.hpp"

namespace ppu::kernels {

namespace {

void check_router_sizes(const std::string& kname, int64_t tokens, int64_t experts, int64_t k) {
  expect_positive(kname, {{"tokens", tokens}, {"experts", experts}, {"k", k}});
  if (k > experts)
    throw UserError(fmt::format("{}: k = {} exceeds experts = {}; valid: 1 to {}", kname, k, experts, experts));
  if (experts > kRouterTileElems)
    throw UserError(fmt::format("{}: {} experts; at most {} (one router row per tile)", kname, experts, kRouterTileElems));
}

void expect_f32(const std::string& kname, std::initializer_list<std::pair<const char*, const Buffer*>> bufs) {
  for (const auto& [role, b] : bufs) expect_dtype_in(kname, role, *b, {DType::kF32});
}

// UserError if `out` overlaps any of `ins`.
void expect_disjoint(const std::string& kname, const char* out_role, const Buffer& out,
                     std::initializer_list<std::pair<const char*, const Buffer*>> ins) {
  for (const auto& [role, b] : ins)
    if (b->valid() && out.addr < b->addr + b->bytes && b->addr < out.addr + out.bytes)
      throw UserError(fmt::format("{}: {} '{}' overlaps {} '{}'; they must be disjoint buffers", kname, out_role, out.name,
                                  role, b->name));
}

// Loads column j of a row-major [tokens, k] tensor (argument `arg`), rows [r0, r0 + nr), into dst [nr, 1].
void load_column(TileProgram& p, BufferId dst, uint16_t arg, int64_t r0, int nr, int64_t k, int64_t j) {
  p.load(dst, TileRegion{arg, r0 * k + j, k, nr, 1});
}

}  // namespace

int64_t router_rows(int64_t experts) {
  return std::clamp<int64_t>(kRouterTileElems / std::max<int64_t>(1, experts), 1, kRouterMaxRows);
}

Kernel make_moe_router_backward(const Buffer& probs, const Buffer& ids, const Buffer& d_weights, const Buffer& d_probs,
                                const Buffer& d_logits, int64_t tokens, int64_t experts, int64_t k, bool norm_topk_prob) {
  const std::string kname = "moe_router_backward";
  check_router_sizes(kname, tokens, experts, k);
  const auto te = fmt::format("[{}, {}] (tokens, experts)", tokens, experts);
  const auto tk = fmt::format("[{}, {}] (tokens, k)", tokens, k);
  const bool has_dp = d_probs.valid();
  expect_numel(kname, "probs", probs, tokens * experts, te);
  expect_numel(kname, "ids", ids, tokens * k, tk);
  expect_numel(kname, "d_weights", d_weights, tokens * k, tk);
  if (has_dp) expect_numel(kname, "d_probs", d_probs, tokens * experts, te);
  expect_numel(kname, "output d_logits", d_logits, tokens * experts, te);
  expect_f32(kname, {{"probs", &probs}, {"ids", &ids}, {"d_weights", &d_weights}, {"output d_logits", &d_logits}});
  if (has_dp) expect_f32(kname, {{"d_probs", &d_probs}});
  expect_disjoint(kname, "output d_logits", d_logits,
                  {{"probs", &probs}, {"ids", &ids}, {"d_weights", &d_weights}, {"d_probs", &d_probs}});

  const int64_t R = router_rows(experts);
  Kernel kern;
  kern.name = fmt::format("{} {}x{} k={}{}", kname, tokens, experts, k, norm_topk_prob ? " renormalised" : "");
  kern.ops = {KernelOp::rows(OpClass::kSoftmax, RowDims{tokens, experts})};
  kern.timing_key = kern.name + (has_dp ? " +d_probs" : "");  // the programs depend on the shape alone
  kern.grid = ceil_div(tokens, R);
  kern.args = {probs.arg(), ids.arg(), d_weights.arg()};
  if (has_dp) kern.args.push_back(d_probs.arg());
  kern.args.push_back(d_logits.arg());
  const uint16_t kArgDp = 3, kArgOut = has_dp ? 4 : 3;
  kern.flops = double(tokens) * double(experts) * double(4 * k + 6);
  const int E = static_cast<int>(experts);
  kern.build = [=](int64_t block, TileProgram& p) {
    const int64_t r0 = block * R;
    const int nr = static_cast<int>(std::min<int64_t>(R, tokens - r0));
    const int rows = static_cast<int>(R);
    const BufferId P = p.alloc(DType::kF32, rows, E, "p"), I = p.alloc(DType::kF32, rows, E, "iota");
    const BufferId M = p.alloc(DType::kF32, rows, E, "mask"), X = p.alloc(DType::kF32, rows, E, "tmp");
    const BufferId D = p.alloc(DType::kF32, rows, E, "dP");
    std::vector<BufferId> id(static_cast<size_t>(k)), dw(static_cast<size_t>(k)), ps(static_cast<size_t>(k));
    for (int64_t j = 0; j < k; ++j) {
      id[static_cast<size_t>(j)] = p.alloc(DType::kF32, rows, 1, "id_j");
      dw[static_cast<size_t>(j)] = p.alloc(DType::kF32, rows, 1, "dw_j");
      ps[static_cast<size_t>(j)] = p.alloc(DType::kF32, rows, 1, "p_j");
    }
    const BufferId S = p.alloc(DType::kF32, rows, 1, "s"), C = p.alloc(DType::kF32, rows, 1, "c"),
                   Y = p.alloc(DType::kF32, rows, 1, "tmp_col");
    p.load(P, matrix_region(0, 0, experts, r0, 0, nr, E));
    if (has_dp) p.load(D, matrix_region(kArgDp, 0, experts, r0, 0, nr, E));
    else p.fill(D, nr, E, 0.0f);
    p.iota(I, nr, E, 0);
    // The chosen probabilities p_j = p[t, ids[t, j]]: a compare mask per choice, then a row sum.
    for (int64_t j = 0; j < k; ++j) {
      const auto js = static_cast<size_t>(j);
      load_column(p, id[js], 1, r0, nr, k, j);
      load_column(p, dw[js], 2, r0, nr, k, j);
      p.binary(BinaryOp::kCmpEq, M, I, id[js], nr, E, Broadcast::kRow);
      p.binary(BinaryOp::kMul, X, P, M, nr, E);
      p.reduce(ReduceOp::kSum, ps[js], X, nr, E);
    }
    if (norm_topk_prob) {  // dsel_j = (dw_j - sum_i dw_i p_i / s) / s, s = sum_i p_i
      p.unary(UnaryOp::kCopy, S, ps[0], nr, 1);
      p.binary(BinaryOp::kMul, C, dw[0], ps[0], nr, 1);
      for (size_t j = 1; j < static_cast<size_t>(k); ++j) {
        p.binary(BinaryOp::kAdd, S, S, ps[j], nr, 1);
        p.binary(BinaryOp::kMul, Y, dw[j], ps[j], nr, 1);
        p.binary(BinaryOp::kAdd, C, C, Y, nr, 1);
      }
      p.binary(BinaryOp::kDiv, C, C, S, nr, 1);
      for (size_t j = 0; j < static_cast<size_t>(k); ++j) {
        p.binary(BinaryOp::kSub, dw[j], dw[j], C, nr, 1);
        p.binary(BinaryOp::kDiv, dw[j], dw[j], S, nr, 1);
      }
    }
    // dP += dsel_j at each chosen column (the rows' choices are distinct, so no column gets two).
    for (size_t j = 0; j < static_cast<size_t>(k); ++j) {
      p.binary(BinaryOp::kCmpEq, M, I, id[j], nr, E, Broadcast::kRow);
      p.binary(BinaryOp::kMul, M, M, dw[j], nr, E, Broadcast::kRow);
      p.binary(BinaryOp::kAdd, D, D, M, nr, E);
    }
    // Softmax backward: dlogits = p * (dP - sum_e p dP).
    p.binary(BinaryOp::kMul, X, P, D, nr, E);
    p.reduce(ReduceOp::kSum, Y, X, nr, E);
    p.binary(BinaryOp::kSub, D, D, Y, nr, E, Broadcast::kRow);
    p.binary(BinaryOp::kMul, D, P, D, nr, E);
    p.store(matrix_region(kArgOut, 0, experts, r0, 0, nr, E), D);
  };
  return kern;
}

KernelTiming moe_router_backward(Device& dev, const Buffer& probs, const Buffer& ids, const Buffer& d_weights,
                                 const Buffer& d_probs, const Buffer& d_logits, int64_t tokens, int64_t experts,
                                 int64_t k, bool norm_topk_prob, Stream* s) {
  return dev.launch(
      make_moe_router_backward(probs, ids, d_weights, d_probs, d_logits, tokens, experts, k, norm_topk_prob), s);
}

Kernel make_moe_routing_stats(const Buffer& probs, const Buffer& ids, const Buffer& stats, int64_t tokens,
                              int64_t experts, int64_t k) {
  const std::string kname = "moe_routing_stats";
  check_router_sizes(kname, tokens, experts, k);
  expect_numel(kname, "probs", probs, tokens * experts, fmt::format("[{}, {}] (tokens, experts)", tokens, experts));
  expect_numel(kname, "ids", ids, tokens * k, fmt::format("[{}, {}] (tokens, k)", tokens, k));
  expect_numel(kname, "stats", stats, 2 * experts, fmt::format("[2, {}] (psum and count, experts)", experts));
  expect_f32(kname, {{"probs", &probs}, {"ids", &ids}, {"stats", &stats}});
  expect_disjoint(kname, "stats", stats, {{"probs", &probs}, {"ids", &ids}});

  const int64_t R = router_rows(experts);
  Kernel kern;
  kern.name = fmt::format("{} {}x{} k={}", kname, tokens, experts, k);
  kern.ops = {KernelOp::rows(OpClass::kSoftmax, RowDims{tokens, experts})};
  kern.timing_key = kern.name;
  kern.grid = ceil_div(tokens, R);
  kern.args = {probs.arg(), ids.arg(), stats.arg()};
  kern.accumulates = true;  // every block adds its rows into stats, in block order
  kern.flops = double(tokens) * double(experts) * double(2 * k + 2);
  const int E = static_cast<int>(experts);
  kern.build = [=](int64_t block, TileProgram& p) {
    const int64_t r0 = block * R;
    const int nr = static_cast<int>(std::min<int64_t>(R, tokens - r0));
    const int rows = static_cast<int>(R);
    const BufferId P = p.alloc(DType::kF32, rows, E, "p"), I = p.alloc(DType::kF32, rows, E, "iota");
    const BufferId M = p.alloc(DType::kF32, rows, E, "mask"), N = p.alloc(DType::kF32, rows, E, "count");
    const BufferId id = p.alloc(DType::kF32, rows, 1, "id_j");
    p.load(P, matrix_region(0, 0, experts, r0, 0, nr, E));
    p.iota(I, nr, E, 0);
    p.fill(N, nr, E, 0.0f);
    for (int64_t j = 0; j < k; ++j) {
      load_column(p, id, 1, r0, nr, k, j);
      p.binary(BinaryOp::kCmpEq, M, I, id, nr, E, Broadcast::kRow);
      p.binary(BinaryOp::kAdd, N, N, M, nr, E);
    }
    for (int r = 0; r < nr; ++r) {
      p.store_add(TileRegion{2, 0, experts, 1, E}, P, r);
      p.store_add(TileRegion{2, experts, experts, 1, E}, N, r);
    }
  };
  return kern;
}

KernelTiming moe_routing_stats(Device& dev, const Buffer& probs, const Buffer& ids, const Buffer& stats, int64_t tokens,
                               int64_t experts, int64_t k, Stream* s) {
  return dev.launch(make_moe_routing_stats(probs, ids, stats, tokens, experts, k), s);
}

Kernel make_moe_load_balancing_loss(const Buffer& stats, const Buffer& mask, const Buffer& loss, const Buffer& aux,
                                    int64_t experts, float scale) {
  const std::string kname = "moe_load_balancing_loss";
  expect_positive(kname, {{"experts", experts}, {"loss rows", loss.numel}});
  if (experts > kRouterTileElems)
    throw UserError(fmt::format("{}: {} experts; at most {}", kname, experts, kRouterTileElems));
  if (!std::isfinite(scale)) throw UserError(fmt::format("{}: scale {} is not finite", kname, scale));
  expect_numel(kname, "stats", stats, 2 * experts, fmt::format("[2, {}] (psum and count, experts)", experts));
  expect_numel(kname, "mask", mask, loss.numel, fmt::format("[{}] (the loss's rows)", loss.numel));
  expect_numel(kname, "output aux", aux, 1, "[1]");
  expect_f32(kname, {{"stats", &stats}, {"mask", &mask}, {"loss", &loss}, {"output aux", &aux}});
  expect_disjoint(kname, "loss", loss, {{"stats", &stats}, {"mask", &mask}, {"output aux", &aux}});
  expect_disjoint(kname, "output aux", aux, {{"stats", &stats}, {"mask", &mask}});

  const int64_t n = loss.numel, chunks = ceil_div(n, kLoadBalanceChunk);
  Kernel kern;
  kern.name = fmt::format("{} {} experts, {} rows", kname, experts, n);
  kern.ops = {KernelOp::elementwise(ElementwiseDims{n, 2, ElementwiseFn::kBackward})};
  kern.grid = 1;  // a scalar, then one pass over the rows
  kern.args = {stats.arg(), mask.arg(), loss.arg(), aux.arg()};
  kern.flops = 2.0 * double(experts) + 2.0 * double(n);
  const int E = static_cast<int>(experts);
  kern.build = [=](int64_t, TileProgram& p) {
    const BufferId S0 = p.alloc(DType::kF32, 1, E, "psum"), S1 = p.alloc(DType::kF32, 1, E, "count");
    const BufferId A = p.alloc(DType::kF32, 1, 1, "aux");
    const int cw = static_cast<int>(std::min<int64_t>(n, kLoadBalanceChunk));
    const BufferId Mk = p.alloc(DType::kF32, 1, cw, "mask"), L = p.alloc(DType::kF32, 1, cw, "loss");
    p.load(S0, TileRegion{0, 0, experts, 1, E});
    p.load(S1, TileRegion{0, experts, experts, 1, E});
    p.binary(BinaryOp::kMul, S0, S0, S1, 1, E);
    p.reduce(ReduceOp::kSum, A, S0, 1, E);
    p.unary(UnaryOp::kScale, A, A, 1, 1, scale);
    p.store(TileRegion{3, 0, 1, 1, 1}, A);
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t c0 = c * kLoadBalanceChunk;
      const int w = static_cast<int>(std::min<int64_t>(kLoadBalanceChunk, n - c0));
      p.load(Mk, TileRegion{1, c0, n, 1, w});
      p.load(L, TileRegion{2, c0, n, 1, w});
      p.binary(BinaryOp::kMul, Mk, Mk, A, 1, w, Broadcast::kRow);
      p.binary(BinaryOp::kAdd, L, L, Mk, 1, w);
      p.store(TileRegion{2, c0, n, 1, w}, L);
    }
  };
  return kern;
}

KernelTiming moe_load_balancing_loss(Device& dev, const Buffer& stats, const Buffer& mask, const Buffer& loss,
                                     const Buffer& aux, int64_t experts, float scale, Stream* s) {
  return dev.launch(make_moe_load_balancing_loss(stats, mask, loss, aux, experts, scale), s);
}

Kernel make_moe_load_balancing_backward(const Buffer& stats, const Buffer& d_probs, int64_t tokens, int64_t experts,
                                        float scale) {
  const std::string kname = "moe_load_balancing_backward";
  expect_positive(kname, {{"tokens", tokens}, {"experts", experts}});
  if (experts > kRouterTileElems)
    throw UserError(fmt::format("{}: {} experts; at most {}", kname, experts, kRouterTileElems));
  if (!std::isfinite(scale)) throw UserError(fmt::format("{}: scale {} is not finite", kname, scale));
  expect_numel(kname, "stats", stats, 2 * experts, fmt::format("[2, {}] (psum and count, experts)", experts));
  expect_numel(kname, "output d_probs", d_probs, tokens * experts,
               fmt::format("[{}, {}] (tokens, experts)", tokens, experts));
  expect_f32(kname, {{"stats", &stats}, {"output d_probs", &d_probs}});
  expect_disjoint(kname, "output d_probs", d_probs, {{"stats", &stats}});

  const int64_t R = router_rows(experts);
  Kernel kern;
  kern.name = fmt::format("{} {}x{}", kname, tokens, experts);
  kern.ops = {KernelOp::elementwise(ElementwiseDims{tokens * experts, 1, ElementwiseFn::kBackward})};
  kern.timing_key = kern.name;
  kern.grid = ceil_div(tokens, R);
  kern.args = {stats.arg(), d_probs.arg()};
  kern.flops = double(tokens) * double(experts);
  const int E = static_cast<int>(experts);
  kern.build = [=](int64_t block, TileProgram& p) {
    const int64_t r0 = block * R;
    const int nr = static_cast<int>(std::min<int64_t>(R, tokens - r0));
    const BufferId S1 = p.alloc(DType::kF32, 1, E, "count"), D = p.alloc(DType::kF32, static_cast<int>(R), E, "d_probs");
    p.load(S1, TileRegion{0, experts, experts, 1, E});
    p.unary(UnaryOp::kScale, S1, S1, 1, E, scale);
    p.fill(D, nr, E, 0.0f);
    p.binary(BinaryOp::kAdd, D, D, S1, nr, E, Broadcast::kCol);
    p.store(matrix_region(1, 0, experts, r0, 0, nr, E), D);
  };
  return kern;
}

KernelTiming moe_load_balancing_backward(Device& dev, const Buffer& stats, const Buffer& d_probs, int64_t tokens,
                                         int64_t experts, float scale, Stream* s) {
  return dev.launch(make_moe_load_balancing_backward(stats, d_probs, tokens, experts, scale), s);
}

std::vector<double> moe_router_backward_reference(const std::vector<float>& probs, const std::vector<int32_t>& ids,
                                                  const std::vector<float>& d_weights,
                                                  const std::vector<float>& d_probs, int64_t tokens, int64_t experts,
                                                  int64_t k, bool norm_topk_prob) {
  PPU_CHECK(static_cast<int64_t>(probs.size()) == tokens * experts && static_cast<int64_t>(ids.size()) == tokens * k &&
                static_cast<int64_t>(d_weights.size()) == tokens * k &&
                (d_probs.empty() || static_cast<int64_t>(d_probs.size()) == tokens * experts),
            "moe_router_backward_reference: sizes");
  std::vector<double> out(probs.size());
  std::vector<double> dP(static_cast<size_t>(experts));
  for (int64_t t = 0; t < tokens; ++t) {
    const float* pt = probs.data() + t * experts;
    double s = 0, c = 0;
    for (int64_t j = 0; j < k; ++j) s += pt[ids[static_cast<size_t>(t * k + j)]];
    for (int64_t j = 0; j < k; ++j)
      c += double(d_weights[static_cast<size_t>(t * k + j)]) * pt[ids[static_cast<size_t>(t * k + j)]] / s;
    for (int64_t e = 0; e < experts; ++e)
      dP[static_cast<size_t>(e)] = d_probs.empty() ? 0.0 : d_probs[static_cast<size_t>(t * experts + e)];
    for (int64_t j = 0; j < k; ++j) {
      const double dw = d_weights[static_cast<size_t>(t * k + j)];
      dP[static_cast<size_t>(ids[static_cast<size_t>(t * k + j)])] += norm_topk_prob ? (dw - c) / s : dw;
    }
    double dot = 0;
    for (int64_t e = 0; e < experts; ++e) dot += double(pt[e]) * dP[static_cast<size_t>(e)];
    for (int64_t e = 0; e < experts; ++e)
      out[static_cast<size_t>(t * experts + e)] = double(pt[e]) * (dP[static_cast<size_t>(e)] - dot);
  }
  return out;
}

std::vector<double> moe_routing_stats_reference(const std::vector<float>& probs, const std::vector<int32_t>& ids,
                                                int64_t tokens, int64_t experts, int64_t k) {
  PPU_CHECK(static_cast<int64_t>(probs.size()) == tokens * experts && static_cast<int64_t>(ids.size()) == tokens * k,
            "moe_routing_stats_reference: sizes");
  std::vector<double> st(static_cast<size_t>(2 * experts));
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t e = 0; e < experts; ++e) st[static_cast<size_t>(e)] += probs[static_cast<size_t>(t * experts + e)];
    for (int64_t j = 0; j < k; ++j) st[static_cast<size_t>(experts + ids[static_cast<size_t>(t * k + j)])] += 1.0;
  }
  return st;
}

}  // namespace ppu::kernels
