// Tests of kernels/Attention against attention_reference on a functional device - prefill, chunked
// prefill (past_len > 0 with several q tokens) and decode; GQA groups of 1, 2 and 8; head_dim 64,
// 128 and 256; fp32, bf16 and fp16 inputs and mixed dtypes; both packings, forced small tiles (many
// diagonal tiles, partial edge tiles, tile sizes off the MMA granularity) and forced KV splits
// (flash-decoding, including splits that mask some rows completely) - then timing-only properties
// and one test per kind of invalid input.
//
// Error metric, per output element (row i = (token, q head), column c): |out - ref| <=
// stored_bound(out dtype, ref, E) with E built from the kernel's roundings (first order, each term a
// worst case; u = 2^-24 the fp32 unit roundoff, u_qk and u_pv those of the matrix dtypes of K and V,
// p_j the exact softmax weights, l = sum_j exp(s_j - max s) >= 1, n = visible positions):
//  * operands: q and k reach the matrix unit in K's matrix dtype (rounding each by eps_q, eps_k:
//    u_qk, or 0 when already in it), v in V's (eps_v). Products of 16-bit values are exact in fp32
//    and the MMA sums D of them in fp32, so a score s_j = scale * q.k_j is off by
//    eta_j = scale * A_j * (eps_q + eps_k + gamma_D) + 2u|s_j|, A_j = sum_d |q_d k_jd|, gamma_D =
//    D u / (1 - D u), the 2u for the fp32 scale and its product.
//  * weights: P_j = exp(s_j - m) with m the running max (common to all j of a step, so it cancels
//    in O / l; the rescales exp(m_old - m_new) multiply O and l alike, and the split combine's
//    weights likewise, leaving one product rounding u on each side per step). s_j - m rounds by
//    u|s_j - m|, exp adds at most 4 ulp (8u). So every weight carries a relative perturbation
//    within rho = exp(max_j(eta_j + u (m - s_j + eta_j)) + 8u) - 1 + 2u (steps + 2), steps = KV tiles
//    visited + splits, and perturbing weights by rho moves the ratio by at most
//    rho / (1 - rho) * sum_j p_j |v_j - o| (the shift sum_j p_j rho_j (v_j - o) / (1 + mean rho)).
//  * P is rounded to V's matrix dtype for P.V while l sums the fp32 P: u_pv sum_j p_j |v_j|, plus
//    the absolute rounding of P values in that dtype's subnormal range (fp16 below 2^-14, error up
//    to 2^-25 each; also covers exp's flush to 0 below e^-87): slack_pv sum_j |v_j| / l.
//  * the fp32 sums of P.V (over n terms, in MMA then across steps) and of l: 2 gamma_n sum_j p_j|v_j|;
//    v's conversion eps_v sum_j p_j |v_j|; the final 1 / l and product: 2u |o|.
// E = rho / (1 - rho) sum_j p_j |v_j - o| + (u_pv + eps_v + 2 gamma_n + 2u) sum_j p_j |v_j|
//     + slack_pv sum_j |v_j| / l, the sums over the visible positions of row i, taken with a 1%
// margin. With bf16 caches the u_pv term dominates (2^-8 of the mean |v| under P); fp32 inputs are
// bounded like bf16 ones because the matrix unit rounds them to bf16 (see Attention.hpp).
//
// Inputs: q uniform in [-6, 6] and k in [-1, 1] give scores of standard deviation about 1.7 to 2.4
// (head_dim 64 to 256), so the softmax is peaked enough that a masking error (a future position
// weighted in) would exceed the bound by far; cache positions at and beyond kv_len hold NaN, so a
// read past the valid range poisons the result.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/Attention.hpp"
#include "attention/AttentionBound.hpp"
#include "kernels/KernelTestUtil.hpp"

namespace ppu {
namespace {

using kernels::AttentionConfig;
using kernels::AttentionPacking;
using kernels::AttentionShape;
using kernels::AttentionStyle;
using test::attention_bound;

struct Case {
  int64_t q_tokens, past_len, q_heads, kv_heads, head_dim;
  DType q_t, kv_t, out_t;
  AttentionConfig config{};   // zero fields: chosen
  int64_t spare = 7;          // cache positions beyond kv_len (NaN-filled)
  DType v_t = DType::kCount;  // kCount: same as kv_t
  bool causal = true;
};

std::string describe(const Case& c) {
  const DType v_t = c.v_t == DType::kCount ? c.kv_t : c.v_t;
  return fmt::format("q_tokens {} past {} heads {}/{} d {} q {} k {} v {} out {}{} (config: {})", c.q_tokens,
                     c.past_len, c.q_heads, c.kv_heads, c.head_dim, dtype_name(c.q_t), dtype_name(c.kv_t),
                     dtype_name(v_t), dtype_name(c.out_t), c.causal ? "" : " non-causal", c.config.describe());
}

// Runs one case on `dev` and compares with the reference. Returns the resolved config.
AttentionConfig check_attention(Device& dev, const kernels::AttentionWorkspace& ws, const Case& c, uint64_t seed,
                                bool in_place = false) {
  const DType v_t = c.v_t == DType::kCount ? c.kv_t : c.v_t;
  AttentionShape s;
  s.q_tokens = c.q_tokens;
  s.q_heads = c.q_heads;
  s.kv_heads = c.kv_heads;
  s.head_dim = c.head_dim;
  s.past_len = c.past_len;
  s.causal = c.causal;
  s.kv_capacity = s.kv_len() + c.spare;
  const int64_t d = c.head_dim;
  const auto q = test::random_values(static_cast<size_t>(s.q_tokens * s.q_heads * d), c.q_t, seed, -6.0f, 6.0f);
  auto k = test::random_values(static_cast<size_t>(s.kv_capacity * s.kv_heads * d), c.kv_t, seed + 1);
  auto v = test::random_values(static_cast<size_t>(s.kv_capacity * s.kv_heads * d), v_t, seed + 2);
  const auto valid = static_cast<size_t>(s.kv_len() * s.kv_heads * d);
  std::fill(k.begin() + static_cast<std::ptrdiff_t>(valid), k.end(), std::numeric_limits<float>::quiet_NaN());
  std::fill(v.begin() + static_cast<std::ptrdiff_t>(valid), v.end(), std::numeric_limits<float>::quiet_NaN());

  Buffer qb = test::make_buffer(dev, c.q_t, q, "q");
  Buffer kb = test::make_buffer(dev, c.kv_t, k, "k_cache");
  Buffer vb = test::make_buffer(dev, v_t, v, "v_cache");
  Buffer ob = in_place ? qb : dev.alloc(c.out_t, s.q_tokens * s.q_heads * d, "out");
  const auto t = kernels::attention(dev, ws, s, qb, kb, vb, ob, nullptr, &c.config);
  const std::vector<float> got = dev.download(ob);
  // The reference never reads past kv_len; give it zeros there (NaN * 0 would not be 0).
  std::fill(k.begin() + static_cast<std::ptrdiff_t>(valid), k.end(), 0.0f);
  std::fill(v.begin() + static_cast<std::ptrdiff_t>(valid), v.end(), 0.0f);
  const std::vector<double> ref = kernels::attention_reference(s, q, k, v);
  const int64_t steps = (s.kv_len() + t.config.tile_kv - 1) / t.config.tile_kv + t.config.splits;
  const std::vector<double> bound = attention_bound(s, q, k, v, ref, c.q_t, c.kv_t, v_t, c.out_t, steps);
  test::expect_within(
      got, ref, [&](size_t i) { return bound[i]; },
      describe(c) + (in_place ? " in place" : "") + " ran as " + t.config.describe());
  if (!in_place) dev.free(ob);
  for (Buffer* b : {&qb, &kb, &vb}) dev.free(*b);
  return t.config;
}

constexpr DType kF32 = DType::kF32, kBF16 = DType::kBF16, kF16 = DType::kF16;

TEST(Attention, MatchesReferencePrefillAndDecode) {
  Device dev(load_chip("h100"));
  auto ws = kernels::make_attention_workspace(dev);
  const Case cases[] = {
      {1, 0, 4, 2, 64, kBF16, kBF16, kBF16},      // decode at position 0
      {1, 599, 4, 2, 64, kBF16, kBF16, kBF16},    // decode, kv_len 600 (split in two)
      {1, 599, 8, 1, 128, kF32, kF32, kF32},      // decode, group of 8
      {1, 333, 2, 2, 128, kF16, kF16, kF16},      // decode, no grouping
      {3, 0, 2, 2, 128, kF32, kF32, kF32},        // tiny prefill
      {3, 200, 8, 1, 128, kF16, kF16, kF16},      // 3 tokens packed by heads (group of 8)
      {17, 0, 4, 2, 128, kBF16, kBF16, kBF16},    // prefill
      {17, 100, 4, 2, 128, kBF16, kBF16, kBF16},  // chunked prefill
      {17, 583, 2, 2, 64, kF16, kF16, kF16},      // chunked prefill, kv_len 600
      {130, 0, 4, 2, 64, kF16, kF16, kF16},       // prefill over three q tiles
      {130, 470, 8, 1, 64, kBF16, kBF16, kBF16},  // chunked prefill, kv_len 600
      {130, 17, 2, 2, 128, kF32, kF32, kF32},     // prefill, fp32
  };
  uint64_t seed = 5000;
  for (const Case& c : cases) check_attention(dev, ws, c, seed += 10);
}

TEST(Attention, MixedDtypes) {
  Device dev(load_chip("h100"));
  auto ws = kernels::make_attention_workspace(dev);
  Case a{17, 40, 4, 2, 64, kF32, kBF16, kF32};  // fp32 activations, bf16 cache
  Case b{5, 60, 4, 1, 128, kBF16, kF16, kF16};  // q converted to fp16 for K
  b.v_t = kBF16;                                // P rounded to bf16 for V
  Case c{1, 300, 8, 2, 64, kF16, kF32, kBF16};  // fp32 cache: rounded to bf16 on load
  uint64_t seed = 6000;
  for (const Case& x : {a, b, c}) check_attention(dev, ws, x, seed += 10);
}

// Small and odd tiles: many diagonal-crossing tiles (every mask offset), partial KV tiles, tile
// sizes off the MMA granularity, deep pipelines, and forced splits whose first parts cover only
// positions that the early rows of a tile may see and the late parts only diagonal tiles.
TEST(Attention, ForcedTilesAndSplits) {
  Device dev(load_chip("h100"));
  auto ws = kernels::make_attention_workspace(dev);
  const auto cfg = test::forced_attention_config;
  const auto kT = AttentionPacking::kTokens, kH = AttentionPacking::kHeads;
  std::vector<Case> cases;
  auto add = [&](Case c, AttentionConfig k) {
    c.config = k;
    cases.push_back(c);
  };
  add({130, 0, 4, 2, 64, kBF16, kBF16, kBF16}, cfg(kT, 16, 16, 2, 1));
  add({130, 0, 4, 2, 64, kBF16, kBF16, kBF16}, cfg(kT, 16, 16, 3, 4));
  add({17, 100, 4, 2, 128, kF16, kF16, kF32}, cfg(kT, 5, 24, 4, 3));
  add({130, 470, 8, 1, 64, kBF16, kBF16, kBF16}, cfg(kT, 128, 128, 2, 5));
  add({37, 11, 2, 2, 64, kF32, kF32, kF32}, cfg(kT, 7, 9, 2, 8));
  add({1, 599, 8, 1, 128, kBF16, kBF16, kBF16}, cfg(kH, 3, 40, 3, 7));  // group in chunks of 3 rows
  add({3, 200, 8, 1, 64, kF16, kF16, kF16}, cfg(kH, 8, 16, 2, 16));
  add({1, 599, 4, 2, 64, kBF16, kBF16, kBF16}, cfg(kT, 1, 64, 2, 1));   // decode one row per block
  add({17, 100, 4, 4, 64, kBF16, kBF16, kBF16}, cfg(kH, 1, 32, 2, 2));  // prefill packed by heads
  uint64_t seed = 7000;
  for (const Case& c : cases) {
    const AttentionConfig ran = check_attention(dev, ws, c, seed += 10);
    EXPECT_EQ(ran.packing, c.config.packing);
    EXPECT_EQ(ran.tile_q, c.config.tile_q);
    EXPECT_EQ(ran.tile_kv, c.config.tile_kv);
    EXPECT_EQ(ran.stages, c.config.stages);
    EXPECT_EQ(ran.splits, c.config.splits);
  }
}

// Non-causal: every q row sees all kv_len positions (a masking bug would drop the later ones, which
// the peaked softmax of these inputs makes far larger than the bound); both packings, splits, odd tiles.
TEST(Attention, NonCausal) {
  Device dev(load_chip("h100"));
  auto ws = kernels::make_attention_workspace(dev);
  std::vector<Case> cases = {
      {130, 0, 4, 2, 64, kBF16, kBF16, kBF16},    // self-attention, three q tiles
      {17, 100, 4, 2, 128, kF16, kF16, kF32},     // chunk seeing its whole context
      {1, 599, 8, 1, 128, kBF16, kBF16, kBF16},   // one token (kHeads, split)
      {37, 11, 2, 2, 64, kF32, kF32, kF32},       // fp32
  };
  for (Case& c : cases) c.causal = false;
  Case odd = cases[0];
  odd.config.packing = AttentionPacking::kTokens;
  odd.config.tile_q = 7;
  odd.config.tile_kv = 9;
  odd.config.stages = 2;
  odd.config.splits = 3;
  cases.push_back(odd);
  uint64_t seed = 7300;
  for (const Case& c : cases) check_attention(dev, ws, c, seed += 10);
}

// The FlashAttention-2 style orders the same instructions differently (scores step by step) and
// marks the kernel for synchronous MMAs, one block per core: the same numbers, a longer time on h100.
TEST(Attention, FlashAttention2StyleComputesTheSame) {
  Device dev(load_chip("h100"));
  auto ws = kernels::make_attention_workspace(dev);
  std::vector<Case> cases = {
      {130, 0, 4, 2, 64, kBF16, kBF16, kBF16},
      {17, 100, 4, 2, 128, kF16, kF16, kF32},
      {1, 599, 8, 1, 128, kBF16, kBF16, kBF16},
  };
  Case full = cases[0];
  full.causal = false;
  cases.push_back(full);
  uint64_t seed = 7400;
  for (Case& c : cases) {
    c.config.style = AttentionStyle::kFlashAttention2;
    EXPECT_EQ(check_attention(dev, ws, c, seed += 10).style, AttentionStyle::kFlashAttention2);
  }
  Device timed(load_chip("h100"), ExecMode::kTimingOnly);
  auto tws = kernels::make_attention_workspace(timed);
  AttentionShape s{.q_tokens = 2048, .q_heads = 16, .kv_heads = 16, .head_dim = 128, .kv_capacity = 2048};
  Buffer q = timed.alloc(kBF16, s.q_tokens * s.q_heads * s.head_dim, "q");
  Buffer k = timed.alloc(kBF16, s.kv_capacity * s.kv_heads * s.head_dim, "k");
  AttentionConfig fa2;
  fa2.style = AttentionStyle::kFlashAttention2;
  const auto native = kernels::attention(timed, tws, s, q, k, k, q);
  const auto old = kernels::attention(timed, tws, s, q, k, k, q, nullptr, &fa2);
  EXPECT_EQ(old.attention.resident_blocks, 1);
  EXPECT_GT(old.attention.time_s, 1.3 * native.attention.time_s);
}

// Timing-only: the non-causal call counts every (row, position) pair in its FLOPs and takes longer
// than the causal one, at most about twice as long.
TEST(Attention, NonCausalFlopsAndTime) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  auto ws = kernels::make_attention_workspace(dev);
  AttentionShape s{.q_tokens = 4096, .q_heads = 16, .kv_heads = 16, .head_dim = 128, .kv_capacity = 4096};
  Buffer q = dev.alloc(kBF16, s.q_tokens * s.q_heads * s.head_dim, "q");
  Buffer k = dev.alloc(kBF16, s.kv_capacity * s.kv_heads * s.head_dim, "k");
  Buffer v = dev.alloc(kBF16, s.kv_capacity * s.kv_heads * s.head_dim, "v");
  const auto causal = kernels::attention(dev, ws, s, q, k, v, q);
  s.causal = false;
  const auto full = kernels::attention(dev, ws, s, q, k, v, q);
  EXPECT_DOUBLE_EQ(full.attention.useful_flops, 4.0 * 128 * 16 * 4096.0 * 4096.0);
  EXPECT_NEAR(causal.attention.useful_flops / full.attention.useful_flops, 0.5, 0.001);
  // Twice the work, but without the causal case's diagonal masking and its uneven tiles.
  EXPECT_GT(full.attention.time_s, 1.1 * causal.attention.time_s);
  EXPECT_LT(full.attention.time_s, 2.2 * causal.attention.time_s);
}

// out = q: with and without splits, in both packings.
TEST(Attention, InPlaceOverQ) {
  Device dev(load_chip("h100"));
  auto ws = kernels::make_attention_workspace(dev);
  Case a{130, 40, 4, 2, 64, kBF16, kBF16, kBF16};
  Case b = a;
  b.config.splits = 3;
  Case c{1, 700, 8, 2, 128, kF16, kF16, kF16};
  Case d = c;
  d.config.splits = 1;
  uint64_t seed = 7500;
  for (const Case& x : {a, b, c, d}) check_attention(dev, ws, x, seed += 10, /*in_place=*/true);
}

// head_dim 256 on the chip with the smallest SRAM (420 KiB): the chosen tiles must fit.
TEST(Attention, HeadDim256OnSmallestSram) {
  Device dev(load_chip("a100-80g"));
  auto ws = kernels::make_attention_workspace(dev);
  check_attention(dev, ws, {70, 40, 4, 2, 256, kBF16, kBF16, kBF16}, 8000);
  check_attention(dev, ws, {1, 700, 4, 2, 256, kF32, kF32, kF32}, 8010);
}

// The choices the file header of Attention.hpp documents: decode packs a kv group's heads into one
// tile and splits a long cache (not a short one) across blocks; prefill packs tokens and does not
// split once the tiles fill the chip. Every choice runs (fits SRAM) on every chip.
TEST(Attention, ChosenConfigs) {
  for (const std::string& chip_name : chip_preset_names()) {
    Device dev(load_chip(chip_name), ExecMode::kTimingOnly);
    auto ws = kernels::make_attention_workspace(dev);
    for (int64_t d : {64, 128, 256}) {
      const std::string what = fmt::format("{} head_dim {}", chip_name, d);
      const AttentionShape decode{1, 32, 8, d, 8192, 8191};
      const auto c = kernels::choose_attention_config(dev.chip(), decode, kBF16, kBF16);
      EXPECT_EQ(c.packing, AttentionPacking::kHeads) << what;
      EXPECT_EQ(c.tile_q, 4) << what;
      EXPECT_GT(c.splits, 1) << what;
      const AttentionShape short_decode{1, 32, 8, d, 8192, 199};
      EXPECT_EQ(kernels::choose_attention_config(dev.chip(), short_decode, kBF16, kBF16).splits, 1) << what;
      const AttentionShape prefill{4096, 32, 8, d, 8192, 0};
      const auto p = kernels::choose_attention_config(dev.chip(), prefill, kBF16, kBF16);
      EXPECT_EQ(p.packing, AttentionPacking::kTokens) << what;
      EXPECT_EQ(p.splits, 1) << what;
      for (const AttentionShape& s : {decode, AttentionShape{300, 32, 8, d, 8192, 0}}) {
        Buffer q = dev.alloc(kBF16, s.q_tokens * s.q_heads * d, "q");
        Buffer k = dev.alloc(kBF16, s.kv_capacity * s.kv_heads * d, "k_cache");
        Buffer o = dev.alloc(kBF16, s.q_tokens * s.q_heads * d, "out");
        EXPECT_NO_THROW(kernels::attention(dev, ws, s, q, k, k, o)) << what;
        for (Buffer* b : {&q, &k, &o}) dev.free(*b);
      }
    }
  }
}

// --- timing-only properties (shapes of Qwen3-8B: 32 q heads, 8 kv heads, head_dim 128)

kernels::AttentionTiming timed_attention(Device& dev, const kernels::AttentionWorkspace& ws, const AttentionShape& s) {
  Buffer q = dev.alloc(kBF16, s.q_tokens * s.q_heads * s.head_dim, "q");
  Buffer k = dev.alloc(kBF16, s.kv_capacity * s.kv_heads * s.head_dim, "k_cache");
  Buffer v = dev.alloc(kBF16, s.kv_capacity * s.kv_heads * s.head_dim, "v_cache");
  Buffer o = dev.alloc(kBF16, s.q_tokens * s.q_heads * s.head_dim, "out");
  const auto t = kernels::attention(dev, ws, s, q, k, v, o);
  for (Buffer* b : {&q, &k, &v, &o}) dev.free(*b);
  return t;
}

// A decode step reads the whole valid cache once: it cannot beat HBM, and with GQA packing and
// flash-decoding it should not be far from it (the bound checked is loose: 3x).
TEST(AttentionTiming, DecodeIsBoundByCacheReads) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  auto ws = kernels::make_attention_workspace(dev);
  const AttentionShape s{1, 32, 8, 128, 8192, 8191};
  const auto t = timed_attention(dev, ws, s);
  const double kv_bytes = 2.0 * double(s.kv_len()) * double(s.kv_heads) * double(s.head_dim) * 2;
  const double hbm_s = kv_bytes / dev.chip().hbm_bandwidth.value;
  EXPECT_GE(t.time_s(), hbm_s);
  EXPECT_LE(t.time_s(), 3.0 * hbm_s) << t.config.describe();
  EXPECT_TRUE(t.combine.has_value());
  EXPECT_GE(t.attention.hbm_read_bytes + t.attention.l2_hit_bytes, kv_bytes);
}

// Prefill work grows with tokens^2 (each token attends to all before it): doubling the prompt from
// 2048 to 4096 tokens should cost close to 4x (3x to 4.5x: the first tiles of a prompt are cheap and
// per-tile overheads are linear).
TEST(AttentionTiming, PrefillGrowsQuadratically) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  auto ws = kernels::make_attention_workspace(dev);
  const double t1 = timed_attention(dev, ws, AttentionShape{2048, 32, 8, 128, 4096, 0}).time_s();
  const double t2 = timed_attention(dev, ws, AttentionShape{4096, 32, 8, 128, 4096, 0}).time_s();
  EXPECT_GT(t2 / t1, 3.0);
  EXPECT_LT(t2 / t1, 4.5);
}

// --- invalid input

struct Bufs {
  Buffer q, k, v, o;
};
Bufs alloc_for(Device& dev, const AttentionShape& s) {
  return {dev.alloc(kBF16, s.q_tokens * s.q_heads * s.head_dim, "q"),
          dev.alloc(kBF16, s.kv_capacity * s.kv_heads * s.head_dim, "k_cache"),
          dev.alloc(kBF16, s.kv_capacity * s.kv_heads * s.head_dim, "v_cache"),
          dev.alloc(kBF16, s.q_tokens * s.q_heads * s.head_dim, "out")};
}

TEST(Attention, RejectsHeadsNotDivisible) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  auto ws = kernels::make_attention_workspace(dev);
  const AttentionShape s{4, 6, 4, 64, 16, 0};
  Bufs b = alloc_for(dev, s);
  test::expect_error([&] { kernels::attention(dev, ws, s, b.q, b.k, b.v, b.o); },
                     {"attention", "q_heads = 6", "not a multiple of kv_heads = 4"});
}

TEST(Attention, RejectsKvLenBeyondCapacity) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  auto ws = kernels::make_attention_workspace(dev);
  const AttentionShape s{4, 4, 2, 64, 16, 13};
  Bufs b = alloc_for(dev, s);
  test::expect_error([&] { kernels::attention(dev, ws, s, b.q, b.k, b.v, b.o); },
                     {"attention", "13 + 4 = 17", "kv_capacity of 16"});
}

TEST(Attention, RejectsWrongNumel) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  auto ws = kernels::make_attention_workspace(dev);
  const AttentionShape s{4, 4, 2, 64, 16, 0};
  Bufs b = alloc_for(dev, s);
  Buffer small = dev.alloc(kBF16, 16 * 2 * 64 - 1, "short_cache");
  test::expect_error([&] { kernels::attention(dev, ws, s, b.q, b.k, small, b.o); },
                     {"attention", "v_cache 'short_cache'", "2047 elements",
                      "[16, 2, 64] (kv_capacity, kv_heads, head_dim)", "needs 2048"});
  test::expect_error([&] { kernels::attention(dev, ws, s, b.q, b.k, b.v, small); },
                     {"attention", "output 'short_cache'", "[4, 4, 64] (q_tokens, q_heads, head_dim)", "needs 1024"});
}

TEST(Attention, RejectsBadSizesScaleAndConfig) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  auto ws = kernels::make_attention_workspace(dev);
  AttentionShape s{4, 4, 2, 64, 16, 0};
  Bufs b = alloc_for(dev, s);
  AttentionShape zero = s;
  zero.q_tokens = 0;
  test::expect_error([&] { kernels::attention(dev, ws, zero, b.q, b.k, b.v, b.o); },
                     {"attention", "q_tokens = 0", "must be positive"});
  AttentionShape neg = s;
  neg.scale = -1.0f;
  test::expect_error([&] { kernels::attention(dev, ws, neg, b.q, b.k, b.v, b.o); }, {"attention", "scale = -1"});
  AttentionShape wide{1, 1, 1, 320, 4, 0};
  Bufs w = alloc_for(dev, wide);
  test::expect_error([&] { kernels::attention(dev, ws, wide, w.q, w.k, w.v, w.o); },
                     {"attention", "head_dim = 320", "at most 256"});
  AttentionConfig bad;
  bad.tile_kv = 129;
  test::expect_error([&] { kernels::attention(dev, ws, s, b.q, b.k, b.v, b.o, nullptr, &bad); },
                     {"attention", "tile_kv = 129", "1 to 128"});
  bad = AttentionConfig{};
  bad.stages = 1;
  test::expect_error([&] { kernels::attention(dev, ws, s, b.q, b.k, b.v, b.o, nullptr, &bad); },
                     {"attention", "stages = 1", "2 to 4"});
  kernels::AttentionWorkspace none;
  test::expect_error([&] { kernels::attention(dev, none, s, b.q, b.k, b.v, b.o); },
                     {"attention", "make_attention_workspace"});
}

}  // namespace
}  // namespace ppu
