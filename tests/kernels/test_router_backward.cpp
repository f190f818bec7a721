// Tests of the MoE router's training kernels (kernels/RouterBackward): the router backward (top-k
// renormalisation and softmax over experts) and the load-balancing loss (routing statistics, value,
// gradient), on functional devices: (1) gradients against central finite differences of a double
// forward on tiny shapes, the router and the load-balancing loss chained as the model chains them;
// (2) against the double references on larger shapes (a partial block, many experts, k = 1);
// (3) bit-identical results with 1 and 3 host threads; (4) timing-only runs; (5) bad input.
//
// Error metrics, u = 2^-24 (fp32, the vector unit):
//  * Finite differences: L(logits) = sum dw * w(softmax(logits)) + coef * aux(softmax(logits)) in
//    double, dL/dx_i ~ (L(x + h e_i) - L(x - h e_i)) / 2h with h = 1e-4 (truncation h^2/6 |L'''| <
//    1e-8 for these smooth maps of O(1) inputs; rounding 2^-52 |L| / h < 1e-10). The kernels read
//    fp32 probabilities (one rounding of the double softmax, u relative) and do O(k + E) fp32 ops per
//    output, so they are within ~100 u ~ 6e-6 of the exact gradient: tolerance 1e-5 max(1, |fd|).
//  * References: the router backward's output p (dP - p.dP) is a sum of E + 2k fp32 terms of size
//    at most |p| (|dP| + sum |p dP|); a bound (2E + 4k + 8) u (that magnitude) covers recursive
//    summation and the divisions (checked at twice the bound). Statistics: psum is a sum of
//    `tokens` fp32 values (tokens u sum |p|, doubled); counts are exact integers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "KernelTestUtil.hpp"
#include "kernels/RouterBackward.hpp"

namespace ppu {
namespace {

// A route: distinct experts per token, a deterministic pseudo-random choice.
std::vector<int32_t> choices(int64_t tokens, int64_t experts, int64_t k, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids;
  std::vector<int32_t> all(static_cast<size_t>(experts));
  for (int64_t t = 0; t < tokens; ++t) {
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    ids.insert(ids.end(), all.begin(), all.begin() + k);
  }
  return ids;
}

std::vector<double> softmax_rows(const std::vector<double>& x, int64_t rows, int64_t cols) {
  std::vector<double> p(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double m = -1e300, s = 0;
    for (int64_t c = 0; c < cols; ++c) m = std::max(m, x[size_t(r * cols + c)]);
    for (int64_t c = 0; c < cols; ++c) s += p[size_t(r * cols + c)] = std::exp(x[size_t(r * cols + c)] - m);
    for (int64_t c = 0; c < cols; ++c) p[size_t(r * cols + c)] /= s;
  }
  return p;
}

std::vector<float> to_float(const std::vector<double>& v) { return {v.begin(), v.end()}; }
std::vector<float> ids_as_float(const std::vector<int32_t>& v) { return {v.begin(), v.end()}; }

// (1) The router backward and the load-balancing loss's gradient, chained as nn::Graph chains them,
// against finite differences of the whole double forward in the logits (routes held fixed).
void check_chain(bool norm, int64_t tokens, int64_t experts, int64_t k, uint64_t seed) {
  Device dev(load_chip("h100"));
  const std::string what = fmt::format("router {}x{} k={}{}", tokens, experts, k, norm ? " renormalised" : "");
  const auto x0 = test::random_values(size_t(tokens * experts), DType::kF32, seed, -2.0f, 2.0f);
  std::vector<double> x(x0.begin(), x0.end());
  const std::vector<int32_t> ids = choices(tokens, experts, k, seed + 1);
  const auto dw = test::random_values(size_t(tokens * k), DType::kF32, seed + 2);
  const double coef = 0.25, scale = coef * double(experts) / double(tokens * tokens);  // one layer: N = tokens
  std::vector<double> count(static_cast<size_t>(experts));
  for (int32_t e : ids) count[size_t(e)] += 1;
  auto loss = [&] {
    const std::vector<double> p = softmax_rows(x, tokens, experts);
    double l = 0;
    for (int64_t t = 0; t < tokens; ++t) {
      double s = 0;
      for (int64_t j = 0; j < k; ++j) s += p[size_t(t * experts + ids[size_t(t * k + j)])];
      for (int64_t j = 0; j < k; ++j) {
        const double pj = p[size_t(t * experts + ids[size_t(t * k + j)])];
        l += double(dw[size_t(t * k + j)]) * (norm ? pj / s : pj);
      }
      for (int64_t e = 0; e < experts; ++e) l += scale * count[size_t(e)] * p[size_t(t * experts + e)];
    }
    return l;
  };
  std::vector<double> fd(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    constexpr double h = 1e-4;
    const double keep = x[i];
    x[i] = keep + h;
    const double up = loss();
    x[i] = keep - h;
    const double down = loss();
    x[i] = keep;
    fd[i] = (up - down) / (2 * h);
  }
  const std::vector<float> p = to_float(softmax_rows(x, tokens, experts));
  Buffer pb = test::make_buffer(dev, DType::kF32, p, "probs"), ib = test::make_buffer(dev, DType::kF32, ids_as_float(ids), "ids");
  Buffer dwb = test::make_buffer(dev, DType::kF32, dw, "d_w");
  Buffer stats = test::make_buffer(dev, DType::kF32, std::vector<float>(size_t(2 * experts), 0.0f), "stats");
  Buffer dp = dev.alloc(DType::kF32, tokens * experts, "d_probs"), dl = dev.alloc(DType::kF32, tokens * experts, "d_logits");
  kernels::moe_routing_stats(dev, pb, ib, stats, tokens, experts, k);
  kernels::moe_load_balancing_backward(dev, stats, dp, tokens, experts, static_cast<float>(scale));
  kernels::moe_router_backward(dev, pb, ib, dwb, dp, dl, tokens, experts, k, norm);
  test::expect_within(
      dev.download(dl), fd, [&](size_t i) { return 1e-5 * std::max(1.0, std::fabs(fd[i])); }, what + " vs finite differences");
}

TEST(RouterBackward, MatchesFiniteDifferences) {
  check_chain(true, 5, 8, 2, 11);
  check_chain(false, 5, 8, 2, 12);
  check_chain(true, 3, 6, 1, 13);   // k = 1 renormalised: w = 1, only the load-balancing term moves the logits
  check_chain(true, 4, 5, 5, 14);   // k = E
}

// The load-balancing loss's value against its definition, the masked rows untouched.
TEST(RouterBackward, LoadBalancingLossValue) {
  Device dev(load_chip("h100"));
  const int64_t T = 37, E = 8, K = 2, layers = 2, N = layers * T;
  Buffer stats = test::make_buffer(dev, DType::kF32, std::vector<float>(2 * E, 0.0f), "stats");
  std::vector<double> psum(E), count(E);
  for (int64_t l = 0; l < layers; ++l) {
    const auto x = test::random_values(size_t(T * E), DType::kF32, 30 + uint64_t(l), -2.0f, 2.0f);
    const std::vector<float> p = to_float(softmax_rows({x.begin(), x.end()}, T, E));
    const std::vector<int32_t> ids = choices(T, E, K, 40 + uint64_t(l));
    Buffer pb = test::make_buffer(dev, DType::kF32, p, "p"), ib = test::make_buffer(dev, DType::kF32, ids_as_float(ids), "ids");
    kernels::moe_routing_stats(dev, pb, ib, stats, T, E, K);
    const auto ref = kernels::moe_routing_stats_reference(p, ids, T, E, K);
    for (int64_t e = 0; e < E; ++e) psum[size_t(e)] += ref[size_t(e)], count[size_t(e)] += ref[size_t(E + e)];
  }
  const double coef = 0.001, scale = coef * double(E) / double(N * N);
  double aux = 0;
  for (int64_t e = 0; e < E; ++e) aux += scale * psum[size_t(e)] * count[size_t(e)];
  // Balanced routing gives aux = coef * K (each f_e = K / E, P_e = 1 / E): this one is near it.
  EXPECT_NEAR(aux / coef, double(K), 0.5);
  const int64_t rows = 5000;  // two chunks of kLoadBalanceChunk
  std::vector<float> mask(rows, 1.0f), loss0 = test::random_values(rows, DType::kF32, 50, 0.0f, 8.0f);
  mask[3] = mask[4097] = 0.0f;
  Buffer mb = test::make_buffer(dev, DType::kF32, mask, "mask"), lb = test::make_buffer(dev, DType::kF32, loss0, "loss");
  Buffer ab = dev.alloc(DType::kF32, 1, "aux");
  kernels::moe_load_balancing_loss(dev, stats, mb, lb, ab, E, static_cast<float>(scale));
  // psum: a sum of N fp32 terms; the product and its sum over E: (2N + E + 2) u relative, doubled.
  const double bound = 2 * double(2 * N + E + 2) * test::kU32 * aux;
  EXPECT_NEAR(dev.download(ab)[0], aux, bound);
  const std::vector<float> got = dev.download(lb);
  for (int64_t i = 0; i < rows; ++i)
    ASSERT_NEAR(got[size_t(i)], loss0[size_t(i)] + mask[size_t(i)] * aux, bound + 8 * test::kU32 * 8.0) << "row " << i;
  EXPECT_EQ(got[3], loss0[3]);
}

// (2) References on larger shapes: a partial block, many experts (fewer rows per block), k = 1.
void check_reference(Device& dev, int64_t T, int64_t E, int64_t K, bool norm, bool with_dp, uint64_t seed) {
  const std::string what = fmt::format("router backward {}x{} k={}{}{}", T, E, K, norm ? " norm" : "", with_dp ? " +dp" : "");
  const auto x = test::random_values(size_t(T * E), DType::kF32, seed, -3.0f, 3.0f);
  const std::vector<float> p = to_float(softmax_rows({x.begin(), x.end()}, T, E));
  const std::vector<int32_t> ids = choices(T, E, K, seed + 1);
  const auto dw = test::random_values(size_t(T * K), DType::kF32, seed + 2);
  const std::vector<float> dpv = with_dp ? test::random_values(size_t(T * E), DType::kF32, seed + 3) : std::vector<float>{};
  Buffer pb = test::make_buffer(dev, DType::kF32, p, "p"), ib = test::make_buffer(dev, DType::kF32, ids_as_float(ids), "ids");
  Buffer dwb = test::make_buffer(dev, DType::kF32, dw, "dw"), out = dev.alloc(DType::kF32, T * E, "dl");
  Buffer dpb = with_dp ? test::make_buffer(dev, DType::kF32, dpv, "dp") : Buffer{};
  kernels::moe_router_backward(dev, pb, ib, dwb, dpb, out, T, E, K, norm);
  const auto ref = kernels::moe_router_backward_reference(p, ids, dw, dpv, T, E, K, norm);
  // The magnitude each output is a rounded sum of: |p| (|dP| + sum_e |p dP|), with |dP| <= |d_probs|
  // + |dw| (1 + 1 / s)... bounded per row by the largest such term.
  std::vector<double> bound(ref.size());
  for (int64_t t = 0; t < T; ++t) {
    double s = 0, big = 0;
    for (int64_t j = 0; j < K; ++j) s += p[size_t(t * E + ids[size_t(t * K + j)])];
    for (int64_t j = 0; j < K; ++j) big += std::fabs(dw[size_t(t * K + j)]) * (norm ? 2.0 / s : 1.0);
    double dmax = big;
    if (with_dp)
      for (int64_t e = 0; e < E; ++e) dmax = std::max(dmax, big + std::fabs(dpv[size_t(t * E + e)]));
    for (int64_t e = 0; e < E; ++e)
      bound[size_t(t * E + e)] = 2 * double(2 * E + 4 * K + 8) * test::kU32 * (std::fabs(p[size_t(t * E + e)]) * 2 * dmax) + 1e-30;
  }
  test::expect_within(dev.download(out), ref, [&](size_t i) { return bound[i]; }, what);
  for (Buffer* b : {&pb, &ib, &dwb, &out}) dev.free(*b);
  if (with_dp) dev.free(dpb);
}

TEST(RouterBackward, MatchesReference) {
  Device dev(load_chip("h100"));
  check_reference(dev, 1, 1, 1, true, false, 100);
  check_reference(dev, 37, 8, 2, true, true, 110);    // a partial block of 5 tokens
  check_reference(dev, 33, 128, 8, true, false, 120); // Qwen3-30B-A3B's router shape
  check_reference(dev, 20, 600, 4, false, true, 130); // 13 tokens per block
  check_reference(dev, 17, 7, 1, false, false, 140);
}

TEST(RouterBackward, StatsMatchReference) {
  Device dev(load_chip("h100"));
  const int64_t T = 301, E = 60, K = 4;
  const auto x = test::random_values(size_t(T * E), DType::kF32, 200, -3.0f, 3.0f);
  const std::vector<float> p = to_float(softmax_rows({x.begin(), x.end()}, T, E));
  const std::vector<int32_t> ids = choices(T, E, K, 201);
  Buffer pb = test::make_buffer(dev, DType::kF32, p, "p"), ib = test::make_buffer(dev, DType::kF32, ids_as_float(ids), "ids");
  Buffer st = test::make_buffer(dev, DType::kF32, std::vector<float>(2 * E, 0.0f), "stats");
  kernels::moe_routing_stats(dev, pb, ib, st, T, E, K);
  kernels::moe_routing_stats(dev, pb, ib, st, T, E, K);  // accumulates: twice the sums
  auto ref = kernels::moe_routing_stats_reference(p, ids, T, E, K);
  for (double& v : ref) v *= 2;
  test::expect_within(
      dev.download(st), ref, [&](size_t i) { return i < size_t(E) ? 2 * double(2 * T) * test::kU32 * ref[i] : 0.0; },
      "routing stats");
}

// (3) The same bits with 1 and 3 host threads.
std::vector<std::vector<float>> run_all(int threads) {
  Device dev(load_chip("h100"), ExecMode::kFunctional, threads);
  const int64_t T = 3000, E = 64, K = 4;
  const auto x = test::random_values(size_t(T * E), DType::kF32, 300, -3.0f, 3.0f);
  const std::vector<float> p = to_float(softmax_rows({x.begin(), x.end()}, T, E));
  Buffer pb = test::make_buffer(dev, DType::kF32, p, "p");
  Buffer ib = test::make_buffer(dev, DType::kF32, ids_as_float(choices(T, E, K, 301)), "ids");
  Buffer dwb = test::make_buffer(dev, DType::kF32, test::random_values(size_t(T * K), DType::kF32, 302), "dw");
  Buffer st = test::make_buffer(dev, DType::kF32, std::vector<float>(2 * E, 0.0f), "stats");
  Buffer dp = dev.alloc(DType::kF32, T * E, "dp"), dl = dev.alloc(DType::kF32, T * E, "dl");
  kernels::moe_routing_stats(dev, pb, ib, st, T, E, K);
  kernels::moe_load_balancing_backward(dev, st, dp, T, E, 1e-3f);
  kernels::moe_router_backward(dev, pb, ib, dwb, dp, dl, T, E, K, true);
  return {dev.download(st), dev.download(dp), dev.download(dl)};
}

TEST(RouterBackward, BitIdenticalAcrossThreads) {
  const auto a = run_all(1), b = run_all(3);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_EQ(0, std::memcmp(a[i].data(), b[i].data(), a[i].size() * sizeof(float))) << "output " << i;
}

// (4) Timing only: every kernel runs and takes time.
TEST(RouterBackward, TimingOnly) {
  Device dev(load_chip("zhenwu-810e"), ExecMode::kTimingOnly);
  const int64_t T = 4096, E = 128, K = 8;
  Buffer p = dev.alloc(DType::kF32, T * E, "p"), ids = dev.alloc(DType::kF32, T * K, "ids"),
         dw = dev.alloc(DType::kF32, T * K, "dw"), st = dev.alloc(DType::kF32, 2 * E, "stats"),
         dl = dev.alloc(DType::kF32, T * E, "dl"), mask = dev.alloc(DType::kF32, T, "mask"),
         loss = dev.alloc(DType::kF32, T, "loss"), aux = dev.alloc(DType::kF32, 1, "aux");
  EXPECT_GT(kernels::moe_routing_stats(dev, p, ids, st, T, E, K).time_s, 0);
  EXPECT_GT(kernels::moe_load_balancing_loss(dev, st, mask, loss, aux, E, 1e-9f).time_s, 0);
  EXPECT_GT(kernels::moe_load_balancing_backward(dev, st, dl, T, E, 1e-9f).time_s, 0);
  EXPECT_GT(kernels::moe_router_backward(dev, p, ids, dw, Buffer{}, dl, T, E, K, true).time_s, 0);
}

// (5) One test per kind of bad input.
TEST(RouterBackward, BadInputIsRefused) {
  Device dev(load_chip("h100"));
  Buffer p = dev.alloc(DType::kF32, 4 * 8, "p"), ids = dev.alloc(DType::kF32, 4 * 2, "ids"),
         dw = dev.alloc(DType::kF32, 4 * 2, "dw"), dl = dev.alloc(DType::kF32, 4 * 8, "dl"),
         st = dev.alloc(DType::kF32, 16, "stats"), bf = dev.alloc(DType::kBF16, 4 * 8, "p16");
  test::expect_error([&] { kernels::make_moe_router_backward(p, ids, dw, Buffer{}, dl, 4, 8, 9, true); },
                     {"moe_router_backward", "k = 9 exceeds experts = 8"});
  test::expect_error([&] { kernels::make_moe_router_backward(p, ids, dw, Buffer{}, dl, 4, 8, 3, true); },
                     {"moe_router_backward", "ids 'ids' has 8 elements", "[4, 3] (tokens, k)"});
  test::expect_error([&] { kernels::make_moe_router_backward(bf, ids, dw, Buffer{}, dl, 4, 8, 2, true); },
                     {"moe_router_backward", "probs 'p16' is bf16", "valid: fp32"});
  test::expect_error([&] { kernels::make_moe_router_backward(p, ids, dw, Buffer{}, p, 4, 8, 2, true); },
                     {"moe_router_backward", "output d_logits 'p' overlaps probs 'p'"});
  test::expect_error([&] { kernels::make_moe_routing_stats(p, ids, dw, 4, 8, 2); },
                     {"moe_routing_stats", "stats 'dw' has 8 elements", "[2, 8]"});
  test::expect_error([&] { kernels::make_moe_load_balancing_loss(st, dw, dl, ids.view(0, 1), 8, 1.0f); },
                     {"moe_load_balancing_loss", "mask 'dw' has 8 elements", "[32] (the loss's rows)"});
  test::expect_error([&] { kernels::make_moe_load_balancing_backward(st, dl, 4, 8, NAN); },
                     {"moe_load_balancing_backward", "scale nan is not finite"});
  test::expect_error([&] { kernels::make_moe_load_balancing_backward(st, dl, 0, 8, 1.0f); },
                     {"moe_load_balancing_backward", "tokens = 0"});
}

}  // namespace
}  // namespace ppu
