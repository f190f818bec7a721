// Tests of kernels/AttentionBackward (and the forward's log-sum-exp output it consumes) on a
// functional device against attention_backward_reference, itself checked against finite differences
// - causal and not, GQA (4 q heads on 2 kv heads) and MHA, head_dim 64 and 128, batch 2, sequences
// that are not multiples of the tiles (and forced small tiles: many diagonal and partial tiles),
// bf16, fp16 and fp32 inputs, fp32 gradients, seq_q < seq_k, both styles - then timing-only
// properties and one test per kind of invalid input.
//
// Each case runs the forward kernel first (per sequence, with the lse output), so o and lse are what
// a training step would hand the backward. Error metric, per gradient element: |got - ref| <=
// stored_bound(gradient dtype, ref, E), E a first-order worst-case bound built from the kernels'
// roundings (u = 2^-24 the fp32 unit roundoff, u_m that of the matrix dtype, eps = u_m if the inputs
// are fp32 and rounded to bf16 on load, else 0; gamma_n = n u / (1 - n u)). Per visible pair (t, j)
// of a q head, with s = scale q_t.k_j, p = exp(s - lse_t), dP = dO_t.v_j, D_t = dO_t.o_t (all exact):
//  * S: the fp32 MMA over d exact products plus the scale and its product: eta = scale A_qk (2 eps +
//    eps^2 + gamma_d) + 2u|s|, A_qk = sum_c |q_c k_c|. The measured |lse_kernel - lse_ref| = dlse_t
//    and the rounding of s - lse perturb the exponent further; exp adds at most 4 ulp (8u), so
//    P = p (1 + theta), |theta| <= rho = expm1(eta + dlse + u(|s - lse| + eta + dlse) + 8u).
//  * dP - D: the fp32 MMA (A_dv (2 eps + eps^2 + gamma_d), A_dv = sum_c |dO_c v_c|) and D from the
//    forward's rounded o: dD_t = |dO_t.(o_kernel - o_ref)| + gamma_{d+1} sum_c |dO_c o_kernel_c|;
//    the subtraction rounds once more: e_y = (A_dv(..) + dD)(1 + u) + u|dP - D|.
//  * dS = P (dP - D): e_dS = |y| (rho p + f) + p (1 + rho) e_y + u (|dS| + that), f = e^-87 for exp's
//    flush to zero; rounded to the matrix dtype for its products: e1 = e_dS + u_m (|dS| + e_dS) + sub,
//    sub = half the matrix dtype's smallest subnormal (fp16 below 2^-14). P likewise:
//    eP = rho p + f + u_m (p (1 + rho) + f) + sub.
//  * dV_j = sum_t P_tj dO_t over every q head of the group: sum (eP + eps (p + eP)) |dO| +
//    gamma_N sum (p + eP) |dO| (N = the terms summed, any order); dK_j = scale sum_t dS_tj q_t and
//    dQ_t = scale sum_j dS_tj k_j: scale (sum (e1 + eps (|dS| + e1)) |x| + gamma_N sum (|dS| + e1)|x|)
//    (1 + 2u) + 2u |ref| (the fp32 scale, rounded from 1/sqrt(d), and its product), plus 2^-126 per
//    term for products the matrix unit may flush to zero.
// E is taken with a 1% margin. The u_m terms dominate: the gradients are good to about the matrix
// dtype's precision relative to the sums of |terms| (bf16: 2^-8), as in FlashAttention.
//
// Inputs: q uniform in [-3, 3], k, v and dO in [-1, 1] (seeded): scores of standard deviation
// about 1-1.4, so the softmax is neither flat nor one-hot and every term of the bound matters.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "kernels/AttentionBackward.hpp"
#include "kernels/KernelTestUtil.hpp"

namespace ppu {
namespace {

using kernels::AttentionBackwardConfig;
using kernels::AttentionBackwardShape;
using kernels::AttentionShape;
using kernels::AttentionStyle;

constexpr DType kF32 = DType::kF32, kBF16 = DType::kBF16, kF16 = DType::kF16;

DType matrix_type(DType t) { return t == kBF16 || t == kF16 ? t : kBF16; }

struct BwdCase {
  int64_t batch, seq_q, seq_k, q_heads, kv_heads, head_dim;
  bool causal;
  DType in_t = kBF16;
  DType grad_t = kBF16;
  AttentionBackwardConfig config{};  // zero fields: chosen
};

std::string describe(const BwdCase& c) {
  return fmt::format("batch {} seq {}/{} heads {}/{} d {}{} in {} grads {} (config: {})", c.batch, c.seq_q, c.seq_k,
                     c.q_heads, c.kv_heads, c.head_dim, c.causal ? " causal" : "", dtype_name(c.in_t),
                     dtype_name(c.grad_t), c.config.describe());
}

AttentionBackwardShape shape_of(const BwdCase& c) {
  AttentionBackwardShape s{.batch = c.batch, .seq_q = c.seq_q, .seq_k = c.seq_k, .q_heads = c.q_heads,
                           .kv_heads = c.kv_heads, .head_dim = c.head_dim};
  s.causal = c.causal;
  return s;
}

// The forward of sequence b as the forward kernel sees it (queries after seq_k - seq_q positions).
AttentionShape forward_shape(const AttentionBackwardShape& s) {
  AttentionShape f{.q_tokens = s.seq_q, .q_heads = s.q_heads, .kv_heads = s.kv_heads, .head_dim = s.head_dim,
                   .kv_capacity = s.seq_k, .past_len = s.seq_k - s.seq_q};
  f.causal = s.causal;
  return f;
}

// Error bounds of the file header for dq, dk, dv (flattened like the tensors).
struct Bounds {
  std::vector<double> dq, dk, dv;
};

Bounds backward_bounds(const AttentionBackwardShape& s, const std::vector<float>& q, const std::vector<float>& k,
                       const std::vector<float>& v, const std::vector<float>& d_o, const std::vector<float>& o_kernel,
                       const std::vector<float>& lse_kernel, const kernels::AttentionBackwardReference& ref,
                       DType in_t, DType grad_t) {
  const double u = test::kU32;
  const DType mt = matrix_type(in_t);
  const double u_m = unit_roundoff(mt), eps = in_t == mt ? 0.0 : u_m;
  const double sub = test::subnormal_slack(mt), flush = std::exp(-87.0), ftz = std::ldexp(1.0, -126);
  const int64_t d = s.head_dim, g = s.q_heads / s.kv_heads, off = s.seq_k - s.seq_q;
  const double scale = 1.0 / std::sqrt(double(d));
  auto gamma = [&](double n) { return n * u / (1 - n * u); };
  const double gamma_d = gamma(double(d)), gamma_d1 = gamma(double(d + 1));
  const double op_eps = 2 * eps + eps * eps;
  // Accumulated |terms| per gradient element: err (the perturbations) and mag (for gamma_N).
  std::vector<double> dq_err(q.size()), dq_mag(q.size()), dk_err(k.size()), dk_mag(k.size()), dv_err(k.size()),
      dv_mag(k.size());
  std::vector<double> dq_terms(q.size(), 0.0), kv_terms(k.size(), 0.0);
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.q_heads; ++h)
      for (int64_t t = 0; t < s.seq_q; ++t) {
        const int64_t kvh = h / g, visible = s.causal ? off + t + 1 : s.seq_k;
        const auto qi = static_cast<size_t>(((b * s.seq_q + t) * s.q_heads + h) * d);
        const auto li = static_cast<size_t>((b * s.q_heads + h) * s.seq_q + t);
        const double lse = ref.lse[li], dlse = std::fabs(double(lse_kernel[li]) - lse);
        double dD = 0, dmag = 0, D = 0;
        for (int64_t c = 0; c < d; ++c) {
          dD += double(d_o[qi + c]) * (double(o_kernel[qi + c]) - ref.o[qi + c]);
          dmag += std::fabs(double(d_o[qi + c]) * o_kernel[qi + c]);
          D += double(d_o[qi + c]) * ref.o[qi + c];
        }
        dD = std::fabs(dD) + gamma_d1 * dmag;
        for (int64_t j = 0; j < visible; ++j) {
          const auto kj = static_cast<size_t>(((b * s.seq_k + j) * s.kv_heads + kvh) * d);
          double qk = 0, a_qk = 0, dp = 0, a_dv = 0;
          for (int64_t c = 0; c < d; ++c) {
            qk += double(q[qi + c]) * k[kj + c];
            a_qk += std::fabs(double(q[qi + c]) * k[kj + c]);
            dp += double(d_o[qi + c]) * v[kj + c];
            a_dv += std::fabs(double(d_o[qi + c]) * v[kj + c]);
          }
          const double sc = qk * scale, p = std::exp(sc - lse);
          const double eta = scale * a_qk * (op_eps + gamma_d) + 2 * u * std::fabs(sc);
          const double rho = std::expm1(eta + dlse + u * (std::fabs(sc - lse) + eta + dlse) + 8 * u);
          const double y = dp - D, ds = p * y;
          const double e_y = (a_dv * (op_eps + gamma_d) + dD) * (1 + u) + u * std::fabs(y);
          const double e_ds0 = std::fabs(y) * (rho * p + flush) + p * (1 + rho) * e_y;
          const double e_ds = e_ds0 + u * (std::fabs(ds) + e_ds0);
          const double e1 = e_ds + u_m * (std::fabs(ds) + e_ds) + sub;
          const double e_p = rho * p + flush + u_m * (p * (1 + rho) + flush) + sub;
          const double ads = std::fabs(ds);
          for (int64_t c = 0; c < d; ++c) {
            const double aq = std::fabs(double(q[qi + c])), ak = std::fabs(double(k[kj + c]));
            const double ado = std::fabs(double(d_o[qi + c]));
            dq_err[qi + c] += (e1 + eps * (ads + e1)) * ak;
            dq_mag[qi + c] += (ads + e1) * ak;
            dk_err[kj + c] += (e1 + eps * (ads + e1)) * aq;
            dk_mag[kj + c] += (ads + e1) * aq;
            dv_err[kj + c] += (e_p + eps * (p + e_p)) * ado;
            dv_mag[kj + c] += (p + e_p) * ado;
            dq_terms[qi + c] += 1;
            kv_terms[kj + c] += 1;
          }
        }
      }
  Bounds out;
  auto finish = [&](const std::vector<double>& err, const std::vector<double>& mag, const std::vector<double>& terms,
                    const std::vector<double>& r, double sc, std::vector<double>& bound) {
    bound.resize(r.size());
    for (size_t i = 0; i < r.size(); ++i) {
      const double e = sc * (err[i] + gamma(terms[i]) * mag[i] + ftz * terms[i]) * (1 + 2 * u) +
                       (sc == 1.0 ? 0.0 : 2 * u * std::fabs(r[i]));
      bound[i] = test::stored_bound(grad_t, r[i], 1.01 * e);
    }
  };
  finish(dq_err, dq_mag, dq_terms, ref.dq, scale, out.dq);
  finish(dk_err, dk_mag, kv_terms, ref.dk, scale, out.dk);
  finish(dv_err, dv_mag, kv_terms, ref.dv, 1.0, out.dv);
  return out;
}

// Bound on |lse_kernel - lse_ref| of the forward for row (t, h) of one sequence: the weights'
// relative perturbation rho of tests/attention/test_attention.cpp (S errors, the subtraction, exp,
// and 2u per rescale), gamma_n for l's sum, 4 ulp for log and one rounding for m + log(l).
double lse_bound(const AttentionShape& s, const std::vector<float>& q, const std::vector<float>& k, int64_t t,
                 int64_t h, DType in_t, int64_t steps, double lse) {
  const double u = test::kU32;
  const DType mt = matrix_type(in_t);
  const double eps = in_t == mt ? 0.0 : unit_roundoff(mt);
  const int64_t d = s.head_dim, g = s.q_heads / s.kv_heads, n = s.causal ? s.past_len + t + 1 : s.kv_len();
  const double scale = 1.0 / std::sqrt(double(d)), gamma_d = double(d) * u / (1 - double(d) * u);
  const float* qr = q.data() + (t * s.q_heads + h) * d;
  std::vector<double> sc(static_cast<size_t>(n)), eta(static_cast<size_t>(n));
  double m = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    const float* kr = k.data() + (j * s.kv_heads + h / g) * d;
    double dot = 0, a = 0;
    for (int64_t c = 0; c < d; ++c) {
      dot += double(qr[c]) * kr[c];
      a += std::fabs(double(qr[c]) * kr[c]);
    }
    sc[static_cast<size_t>(j)] = dot * scale;
    eta[static_cast<size_t>(j)] = scale * a * (2 * eps + eps * eps + gamma_d) + 2 * u * std::fabs(dot * scale);
    m = std::max(m, dot * scale);
  }
  double worst = 0;
  for (size_t j = 0; j < sc.size(); ++j) worst = std::max(worst, eta[j] + u * (m - sc[j] + eta[j]));
  const double rho = std::expm1(worst + 8 * u) + 2 * u * double(steps + 2);
  const double gamma_n = double(n) * u / (1 - double(n) * u);
  return 1.01 * (-std::log1p(-(rho + gamma_n)) + 8 * u * (std::log(double(n)) + 1) + 2 * u * std::fabs(lse));
}

// Runs one case: forward (per sequence, with lse) then backward; checks lse, dq, dk and dv.
kernels::AttentionBackwardTiming check_backward(Device& dev, const kernels::AttentionWorkspace& ws, const BwdCase& c,
                                       uint64_t seed) {
  const AttentionBackwardShape s = shape_of(c);
  const int64_t d = s.head_dim, q_seq = s.seq_q * s.q_heads * d, kv_seq = s.seq_k * s.kv_heads * d;
  const auto q = test::random_values(static_cast<size_t>(s.batch * q_seq), c.in_t, seed, -3.0f, 3.0f);
  const auto k = test::random_values(static_cast<size_t>(s.batch * kv_seq), c.in_t, seed + 1);
  const auto v = test::random_values(static_cast<size_t>(s.batch * kv_seq), c.in_t, seed + 2);
  const auto d_o = test::random_values(static_cast<size_t>(s.batch * q_seq), c.in_t, seed + 3);
  Buffer qb = test::make_buffer(dev, c.in_t, q, "q"), kb = test::make_buffer(dev, c.in_t, k, "k");
  Buffer vb = test::make_buffer(dev, c.in_t, v, "v"), dob = test::make_buffer(dev, c.in_t, d_o, "dO");
  Buffer ob = dev.alloc(c.in_t, s.batch * q_seq, "o");
  Buffer lseb = dev.alloc(kF32, s.batch * s.q_heads * s.seq_q, "lse");
  const AttentionShape fs = forward_shape(s);
  int64_t fwd_steps = 0;
  for (int64_t b = 0; b < s.batch; ++b) {
    const Buffer lse_b = lseb.view(b * s.q_heads * s.seq_q, s.q_heads * s.seq_q);
    const auto ft = kernels::attention(dev, ws, fs, qb.view(b * q_seq, q_seq), kb.view(b * kv_seq, kv_seq),
                                       vb.view(b * kv_seq, kv_seq), ob.view(b * q_seq, q_seq), nullptr, nullptr, &lse_b);
    fwd_steps = (fs.kv_len() + ft.config.tile_kv - 1) / ft.config.tile_kv + ft.config.splits;
  }
  Buffer dqb = dev.alloc(c.grad_t, s.batch * q_seq, "dq"), dkb = dev.alloc(c.grad_t, s.batch * kv_seq, "dk");
  Buffer dvb = dev.alloc(c.grad_t, s.batch * kv_seq, "dv");
  const auto t = kernels::attention_backward(dev, ws, s, qb, kb, vb, ob, dob, lseb, dqb, dkb, dvb, nullptr, &c.config);
  const std::string what = describe(c) + " ran as " + t.config.describe();

  const auto o_got = dev.download(ob), lse_got = dev.download(lseb);
  const auto ref = kernels::attention_backward_reference(s, q, k, v, d_o);
  // The forward's lse output, sequence by sequence.
  int lse_failures = 0;
  for (int64_t b = 0; b < s.batch; ++b) {
    const std::vector<float> qs(q.begin() + b * q_seq, q.begin() + (b + 1) * q_seq);
    const std::vector<float> ks(k.begin() + b * kv_seq, k.begin() + (b + 1) * kv_seq);
    for (int64_t h = 0; h < s.q_heads; ++h)
      for (int64_t tq = 0; tq < s.seq_q; ++tq) {
        const auto i = static_cast<size_t>((b * s.q_heads + h) * s.seq_q + tq);
        const double bound = lse_bound(fs, qs, ks, tq, h, c.in_t, fwd_steps, ref.lse[i]);
        if (!(std::fabs(double(lse_got[i]) - ref.lse[i]) <= bound) && ++lse_failures <= 5)
          ADD_FAILURE() << what << ": lse of sequence " << b << " head " << h << " query " << tq << " is "
                        << lse_got[i] << ", reference " << ref.lse[i] << ", bound " << bound;
      }
  }
  EXPECT_EQ(lse_failures, 0) << what;
  const Bounds bounds = backward_bounds(s, q, k, v, d_o, o_got, lse_got, ref, c.in_t, c.grad_t);
  test::expect_within(dev.download(dqb), ref.dq, [&](size_t i) { return bounds.dq[i]; }, what + " dq");
  test::expect_within(dev.download(dkb), ref.dk, [&](size_t i) { return bounds.dk[i]; }, what + " dk");
  test::expect_within(dev.download(dvb), ref.dv, [&](size_t i) { return bounds.dv[i]; }, what + " dv");
  for (Buffer* b : {&qb, &kb, &vb, &dob, &ob, &lseb, &dqb, &dkb, &dvb}) dev.free(*b);
  return t;
}

// The reference's gradients against central differences of L = sum(dO * O) computed by its own
// forward, in double: step 2^-10 (added exactly to the bf16-valued inputs), error O(step^2).
TEST(AttentionBackward, ReferenceMatchesFiniteDifferences) {
  for (bool causal : {true, false}) {
    AttentionBackwardShape s{.batch = 2, .seq_q = 5, .seq_k = 7, .q_heads = 4, .kv_heads = 2, .head_dim = 8};
    s.causal = causal;
    const int64_t nq = s.batch * s.seq_q * s.q_heads * s.head_dim, nk = s.batch * s.seq_k * s.kv_heads * s.head_dim;
    std::vector<float> q = test::random_values(static_cast<size_t>(nq), kBF16, 31, -2.0f, 2.0f);
    std::vector<float> k = test::random_values(static_cast<size_t>(nk), kBF16, 32);
    std::vector<float> v = test::random_values(static_cast<size_t>(nk), kBF16, 33);
    const std::vector<float> d_o = test::random_values(static_cast<size_t>(nq), kBF16, 34);
    const auto ref = kernels::attention_backward_reference(s, q, k, v, d_o);
    auto loss = [&] {
      const auto r = kernels::attention_backward_reference(s, q, k, v, d_o);
      double l = 0;
      for (size_t i = 0; i < r.o.size(); ++i) l += r.o[i] * d_o[i];
      return l;
    };
    const float step = std::ldexp(1.0f, -10);
    auto check = [&](std::vector<float>& x, const std::vector<double>& grad, const char* name) {
      for (size_t i = 0; i < x.size(); ++i) {
        const float x0 = x[i];
        x[i] = x0 + step;
        const double up = loss();
        x[i] = x0 - step;
        const double down = loss();
        x[i] = x0;
        const double fd = (up - down) / (2.0 * step);
        ASSERT_NEAR(fd, grad[i], 1e-5 + 1e-4 * std::fabs(grad[i]))
            << name << "[" << i << "]" << (causal ? " causal" : " non-causal");
      }
    };
    check(q, ref.dq, "dq");
    check(k, ref.dk, "dk");
    check(v, ref.dv, "dv");
  }
}

// The cross product the issue asks for: causal and not x GQA (4/2) and MHA x head_dim 64 and 128,
// batch 2, bf16, sequences of 100 (not a multiple of any tile).
TEST(AttentionBackward, MatchesReferenceBf16) {
  Device dev(load_chip("h100"));
  auto ws = kernels::make_attention_workspace(dev);
  uint64_t seed = 9100;
  for (bool causal : {true, false})
    for (int64_t kv_heads : {2, 4})
      for (int64_t d : {64, 128}) check_backward(dev, ws, {2, 100, 100, 4, kv_heads, d, causal}, seed += 10);
}

// Forced small tiles: many query and key tiles, diagonal tiles at every offset, partial edge tiles
// on both sides, tiles off the MMA granularity; and seq_q < seq_k (queries at the end).
TEST(AttentionBackward, SmallTilesAndShorterQueries) {
  Device dev(load_chip("a100-80g"));
  auto ws = kernels::make_attention_workspace(dev);
  AttentionBackwardConfig small{.dkdv_tile_kv = 16, .dkdv_tile_q = 24, .dq_tile_q = 20, .dq_tile_kv = 12, .stages = 2};
  AttentionBackwardConfig odd{.dkdv_tile_kv = 37, .dkdv_tile_q = 5, .dq_tile_q = 7, .dq_tile_kv = 33, .stages = 4};
  uint64_t seed = 9300;
  check_backward(dev, ws, {2, 77, 77, 4, 2, 64, true, kBF16, kBF16, small}, seed += 10);
  check_backward(dev, ws, {2, 77, 77, 4, 2, 64, false, kBF16, kBF16, odd}, seed += 10);
  check_backward(dev, ws, {2, 41, 90, 4, 2, 64, true, kBF16, kBF16, small}, seed += 10);
  check_backward(dev, ws, {2, 41, 90, 2, 2, 128, false}, seed += 10);
  check_backward(dev, ws, {1, 1, 1, 2, 1, 64, true}, seed += 10);  // one query, one key
}

// Too few dK/dV items to fill the chip (one sequence, two kv heads): the items' steps are split
// over several blocks whose fp32 partial sums a combine kernel adds.
TEST(AttentionBackward, SplitDkDvParts) {
  Device dev(load_chip("h100"));
  auto ws = kernels::make_attention_workspace(dev);
  AttentionBackwardConfig small{.dkdv_tile_kv = 32, .dkdv_tile_q = 16, .dq_tile_q = 64, .dq_tile_kv = 32};
  uint64_t seed = 9400;
  for (bool causal : {true, false}) {
    const auto t = check_backward(dev, ws, {1, 200, 200, 4, 2, 64, causal, kBF16, kBF16, small}, seed += 10);
    EXPECT_TRUE(t.dkdv_combine.has_value());
    EXPECT_GT(t.dkdv.blocks, 2 * 7);  // more blocks than the 2 kv heads x 7 key tiles
  }
  const auto t = check_backward(dev, ws, {1, 150, 150, 4, 2, 64, true, kF16, kF32, small}, seed += 10);
  EXPECT_TRUE(t.dkdv_combine.has_value());
}

// fp16 and fp32 inputs (fp32 operands are rounded to bf16 for the matrix unit), fp32 gradients.
TEST(AttentionBackward, OtherDtypes) {
  Device dev(load_chip("h100"));
  auto ws = kernels::make_attention_workspace(dev);
  uint64_t seed = 9500;
  check_backward(dev, ws, {2, 70, 70, 4, 2, 64, true, kF16, kF16}, seed += 10);
  check_backward(dev, ws, {2, 70, 70, 4, 2, 128, false, kF32, kF32}, seed += 10);
  check_backward(dev, ws, {2, 70, 70, 4, 4, 64, true, kBF16, kF32}, seed += 10);
}

// The FlashAttention-2 style computes dQ inside the dK/dV kernel and adds it into an fp32
// accumulator with atomic adds (store_add), one block per q head: within the derived bound of the
// reference like the pipelined style (check_backward), and - unlike atomics on a GPU - the same
// bits on every run, however the executor's threads pick up the blocks. In timing it is slower
// (synchronous MMAs, one block per core, the adds at the core's atomic rate).
TEST(AttentionBackward, FlashAttention2StyleAtomicDqIsDeterministic) {
  Device dev(load_chip("h100"));
  auto ws = kernels::make_attention_workspace(dev);
  BwdCase c{2, 90, 90, 4, 2, 64, true};
  for (int style = 0; style < 2; ++style) {
    c.config.style = style ? AttentionStyle::kFlashAttention2 : AttentionStyle::kPipelined;
    EXPECT_EQ(check_backward(dev, ws, c, 9700).config.style, c.config.style);
  }
  BwdCase mha{1, 50, 70, 2, 2, 32, false};  // one q head per kv head, non-causal, seq_q < seq_k
  mha.config.style = AttentionStyle::kFlashAttention2;
  check_backward(dev, ws, mha, 9750);
  const AttentionBackwardShape s = shape_of(c);
  const int64_t nq = s.batch * s.seq_q * s.q_heads * s.head_dim, nk = s.batch * s.seq_k * s.kv_heads * s.head_dim;
  auto q = test::random_values(static_cast<size_t>(nq), kBF16, 1, -3.0f, 3.0f);
  auto k = test::random_values(static_cast<size_t>(nk), kBF16, 2);
  Buffer qb = test::make_buffer(dev, kBF16, q, "q"), kb = test::make_buffer(dev, kBF16, k, "k");
  Buffer vb = test::make_buffer(dev, kBF16, k, "v"), ob = test::make_buffer(dev, kBF16, q, "o");
  Buffer lse = test::make_buffer(dev, kF32, std::vector<float>(static_cast<size_t>(s.batch * s.q_heads * s.seq_q), 3.0f), "lse");
  // Small key tiles, so every q tile's dQ gets adds from several blocks.
  AttentionBackwardConfig cfg;
  cfg.style = AttentionStyle::kFlashAttention2;
  cfg.dkdv_tile_kv = 16;
  cfg.dkdv_tile_q = 16;
  std::vector<std::vector<float>> first;
  for (int run = 0; run < 4; ++run) {
    Buffer dq = dev.alloc(kF32, nq, "dq"), dk = dev.alloc(kF32, nk, "dk"), dv = dev.alloc(kF32, nk, "dv");
    const auto t = kernels::attention_backward(dev, ws, s, qb, kb, vb, ob, qb, lse, dq, dk, dv, nullptr, &cfg);
    EXPECT_GT(t.dkdv.atomic_bytes, 0.0);
    std::vector<std::vector<float>> got = {dev.download(dq), dev.download(dk), dev.download(dv)};
    if (run == 0) first = got;
    for (size_t i = 0; i < 3; ++i) EXPECT_EQ(got[i], first[i]) << "gradient " << i << ", run " << run;
    for (Buffer* b : {&dq, &dk, &dv}) dev.free(*b);
  }

  Device timed(load_chip("h100"), ExecMode::kTimingOnly);
  auto tws = kernels::make_attention_workspace(timed);
  AttentionBackwardShape big{.batch = 1, .seq_q = 2048, .seq_k = 2048, .q_heads = 16, .kv_heads = 16, .head_dim = 128};
  const int64_t n = big.seq_q * big.q_heads * big.head_dim;
  Buffer x = timed.alloc(kBF16, n, "x"), l = timed.alloc(kF32, big.q_heads * big.seq_q, "lse");
  Buffer g1 = timed.alloc(kBF16, n, "dq"), g2 = timed.alloc(kBF16, n, "dk"), g3 = timed.alloc(kBF16, n, "dv");
  AttentionBackwardConfig fa2;
  fa2.style = AttentionStyle::kFlashAttention2;
  const auto native = kernels::attention_backward(timed, tws, big, x, x, x, x, x, l, g1, g2, g3);
  const auto old = kernels::attention_backward(timed, tws, big, x, x, x, x, x, l, g1, g2, g3, nullptr, &fa2);
  EXPECT_EQ(old.dkdv.resident_blocks, 1);
  EXPECT_GT(old.time_s(), 1.2 * native.time_s());
}

// The forward's lse output alone, where the backward tests do not reach: decode steps packed by
// heads, with and without flash-decoding splits (the combine kernel stores lse), and chunked prefill.
TEST(AttentionBackward, ForwardLseInEveryPath) {
  Device dev(load_chip("h100"));
  auto ws = kernels::make_attention_workspace(dev);
  struct F {
    int64_t q_tokens, past, q_heads, kv_heads, d;
    int splits;
  };
  uint64_t seed = 9900;
  for (const F& f : {F{1, 599, 8, 2, 64, 0}, F{1, 599, 8, 2, 64, 1}, F{3, 300, 8, 1, 128, 3}, F{70, 50, 4, 2, 64, 2}}) {
    AttentionShape s{.q_tokens = f.q_tokens, .q_heads = f.q_heads, .kv_heads = f.kv_heads, .head_dim = f.d,
                     .kv_capacity = f.past + f.q_tokens, .past_len = f.past};
    const auto q = test::random_values(static_cast<size_t>(s.q_tokens * s.q_heads * f.d), kBF16, seed += 10, -3.0f, 3.0f);
    const auto k = test::random_values(static_cast<size_t>(s.kv_capacity * s.kv_heads * f.d), kBF16, seed + 1);
    Buffer qb = test::make_buffer(dev, kBF16, q, "q"), kb = test::make_buffer(dev, kBF16, k, "k");
    Buffer ob = dev.alloc(kBF16, s.q_tokens * s.q_heads * f.d, "o"), lse = dev.alloc(kF32, s.q_heads * s.q_tokens, "lse");
    kernels::AttentionConfig cfg;
    cfg.splits = f.splits;
    const auto t = kernels::attention(dev, ws, s, qb, kb, kb, ob, nullptr, &cfg, &lse);
    const auto got = dev.download(lse);
    const int64_t steps = (s.kv_len() + t.config.tile_kv - 1) / t.config.tile_kv + t.config.splits;
    // The reference lse: the backward reference on one sequence with these queries at the end.
    AttentionBackwardShape bs{.batch = 1, .seq_q = s.q_tokens, .seq_k = s.kv_len(), .q_heads = s.q_heads,
                              .kv_heads = s.kv_heads, .head_dim = f.d};
    const auto ref = kernels::attention_backward_reference(bs, q, k, k, q);
    for (int64_t h = 0; h < s.q_heads; ++h)
      for (int64_t tq = 0; tq < s.q_tokens; ++tq) {
        const auto i = static_cast<size_t>(h * s.q_tokens + tq);
        EXPECT_LE(std::fabs(double(got[i]) - ref.lse[i]), lse_bound(s, q, k, tq, h, kBF16, steps, ref.lse[i]))
            << t.config.describe() << " head " << h << " token " << tq;
      }
    for (Buffer* b : {&qb, &kb, &ob, &lse}) dev.free(*b);
  }
}

// Timing-only: FLOPs are 2.5x the forward's; causal is cheaper than full; the same call times the
// same; the chosen tiles fit every preset's SRAM (head_dim 256 included).
TEST(AttentionBackwardTiming, FlopsAndProperties) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  auto ws = kernels::make_attention_workspace(dev);
  AttentionBackwardShape s{.batch = 1, .seq_q = 4096, .seq_k = 4096, .q_heads = 8, .kv_heads = 2, .head_dim = 128};
  const int64_t nq = s.seq_q * s.q_heads * s.head_dim, nk = s.seq_k * s.kv_heads * s.head_dim;
  Buffer q = dev.alloc(kBF16, nq, "q"), k = dev.alloc(kBF16, nk, "k"), lse = dev.alloc(kF32, s.q_heads * s.seq_q, "lse");
  Buffer dq = dev.alloc(kBF16, nq, "dq"), dk = dev.alloc(kBF16, nk, "dk"), dv = dev.alloc(kBF16, nk, "dv");
  AttentionShape fs = forward_shape(s);
  for (bool causal : {true, false}) {
    s.causal = fs.causal = causal;
    const auto fwd = kernels::attention(dev, ws, fs, q, k, k, q);
    const auto a = kernels::attention_backward(dev, ws, s, q, k, k, q, q, lse, dq, dk, dv);
    const auto b = kernels::attention_backward(dev, ws, s, q, k, k, q, q, lse, dq, dk, dv);
    EXPECT_DOUBLE_EQ(a.flops(), 2.5 * fwd.attention.useful_flops);
    EXPECT_EQ(a.time_s(), b.time_s());
    // Five products against the forward's two, plus the dQ pass's recomputation: 2.5x to ~5x.
    EXPECT_GT(a.time_s(), 2.0 * fwd.time_s());
    EXPECT_LT(a.time_s(), 6.0 * fwd.time_s());
  }
  s.causal = true;
  const double causal_s = kernels::attention_backward(dev, ws, s, q, k, k, q, q, lse, dq, dk, dv).time_s();
  s.causal = false;
  const double full_s = kernels::attention_backward(dev, ws, s, q, k, k, q, q, lse, dq, dk, dv).time_s();
  EXPECT_GT(full_s, 1.5 * causal_s);
  EXPECT_LT(full_s, 2.5 * causal_s);

  for (const char* chip_name : {"a100-80g", "h100", "zhenwu-810e"}) {
    const ChipSpec chip = load_chip(chip_name);
    for (int64_t d : {64, 128, 256})
      for (DType t : {kBF16, kF32}) {
        const AttentionBackwardShape x{.batch = 1, .seq_q = 1000, .seq_k = 1000, .q_heads = 4, .kv_heads = 2, .head_dim = d};
        const auto c = kernels::choose_attention_backward_config(chip, x, t);
        const DType mt = matrix_type(t);
        EXPECT_LE(kernels::attention_backward_dkdv_sram_bytes(c, d, mt, true), chip.sram_bytes()) << chip_name << " d " << d;
        EXPECT_LE(kernels::attention_backward_dq_sram_bytes(c, d, mt, true), chip.sram_bytes()) << chip_name << " d " << d;
        EXPECT_GE(c.stages, 2);
      }
  }
}

// head_dim 256 on the smallest SRAM (a100, 420 KiB) runs with the tiles chosen for it.
TEST(AttentionBackward, HeadDim256OnSmallestSram) {
  Device dev(load_chip("a100-80g"));
  auto ws = kernels::make_attention_workspace(dev);
  check_backward(dev, ws, {1, 40, 40, 2, 1, 256, true}, 9800);
}

// --- invalid input -------------------------------------------------------------------------------

struct BwdBufs {
  Buffer q, k, v, o, d_o, lse, dq, dk, dv;
};

BwdBufs alloc_bwd(Device& dev, const AttentionBackwardShape& s, DType t = kBF16) {
  const int64_t nq = s.batch * s.seq_q * s.q_heads * s.head_dim, nk = s.batch * s.seq_k * s.kv_heads * s.head_dim;
  return {dev.alloc(t, nq, "q"),   dev.alloc(t, nk, "k"),   dev.alloc(t, nk, "v"),
          dev.alloc(t, nq, "o"),   dev.alloc(t, nq, "dO"),  dev.alloc(kF32, s.batch * s.q_heads * s.seq_q, "lse"),
          dev.alloc(t, nq, "dq"),  dev.alloc(t, nk, "dk"),  dev.alloc(t, nk, "dv")};
}

class AttentionBackwardErrors : public ::testing::Test {
 protected:
  Device dev{load_chip("h100"), ExecMode::kTimingOnly};
  kernels::AttentionWorkspace ws = kernels::make_attention_workspace(dev);
  AttentionBackwardShape s{.batch = 2, .seq_q = 16, .seq_k = 16, .q_heads = 4, .kv_heads = 2, .head_dim = 64};
  void run(const AttentionBackwardShape& x, const BwdBufs& b, const AttentionBackwardConfig* cfg = nullptr) {
    kernels::attention_backward(dev, ws, x, b.q, b.k, b.v, b.o, b.d_o, b.lse, b.dq, b.dk, b.dv, nullptr, cfg);
  }
};

TEST_F(AttentionBackwardErrors, RejectsBadSizes) {
  BwdBufs b = alloc_bwd(dev, s);
  AttentionBackwardShape x = s;
  x.seq_k = 0;
  test::expect_error([&] { run(x, b); }, {"attention_backward", "seq_k = 0", "positive"});
  x = s;
  x.q_heads = 5;
  test::expect_error([&] { run(x, b); }, {"attention_backward", "q_heads = 5", "not a multiple of kv_heads = 2"});
  x = s;
  x.head_dim = 320;
  test::expect_error([&] { run(x, b); }, {"attention_backward", "head_dim = 320", "at most 256"});
  x = s;
  x.scale = -1.0f;
  test::expect_error([&] { run(x, b); }, {"attention_backward", "scale = -1"});
  x = s;
  x.seq_q = 20;
  x.seq_k = 10;
  test::expect_error([&] { run(x, b); }, {"attention_backward", "seq_q = 20 > seq_k = 10", "causal"});
}

TEST_F(AttentionBackwardErrors, RejectsMismatchedShapes) {
  BwdBufs b = alloc_bwd(dev, s);
  Buffer small = dev.alloc(kBF16, 100, "small");
  Buffer small_lse = dev.alloc(kF32, 100, "small_lse");
  const std::pair<Buffer BwdBufs::*, const char*> args[] = {
      {&BwdBufs::q, "q"},     {&BwdBufs::k, "k"},   {&BwdBufs::v, "v"},   {&BwdBufs::o, "o"}, {&BwdBufs::d_o, "d_o"},
      {&BwdBufs::lse, "lse"}, {&BwdBufs::dq, "dq"}, {&BwdBufs::dk, "dk"}, {&BwdBufs::dv, "dv"}};
  for (const auto& [member, role] : args) {
    BwdBufs x = b;
    x.*member = member == &BwdBufs::lse ? small_lse : small;
    const bool kv = member == &BwdBufs::k || member == &BwdBufs::v || member == &BwdBufs::dk || member == &BwdBufs::dv;
    test::expect_error([&] { run(s, x); },
                       {"attention_backward", std::string(role) + " '", "has 100 elements",
                        member == &BwdBufs::lse ? "(batch, q_heads, seq_q)"
                        : kv                    ? "(batch, seq_k, kv_heads, head_dim)"
                                                : "(batch, seq_q, q_heads, head_dim)"});
  }
}

TEST_F(AttentionBackwardErrors, RejectsMismatchedDtypes) {
  BwdBufs b = alloc_bwd(dev, s);
  BwdBufs f16 = alloc_bwd(dev, s, kF16);
  BwdBufs x = b;
  x.d_o = f16.d_o;
  test::expect_error([&] { run(s, x); }, {"attention_backward", "d_o 'dO' is fp16 but q 'q' is bf16", "one dtype"});
  x = b;
  x.k = f16.k;
  test::expect_error([&] { run(s, x); }, {"attention_backward", "k 'k' is fp16"});
  x = b;
  x.lse = dev.alloc(kBF16, s.batch * s.q_heads * s.seq_q, "lse16");
  test::expect_error([&] { run(s, x); }, {"attention_backward", "lse 'lse16' is bf16", "valid: fp32"});
  x = b;
  x.dk = dev.alloc(DType::kF8E4M3, s.batch * s.seq_k * s.kv_heads * s.head_dim, "dk8");
  test::expect_error([&] { run(s, x); }, {"attention_backward", "dk 'dk8'", "valid: bf16, fp16, fp32"});
  BwdBufs fp8 = alloc_bwd(dev, s, DType::kF8E4M3);
  test::expect_error([&] { run(s, fp8); }, {"attention_backward", "q 'q'", "valid: bf16, fp16, fp32"});
}

TEST_F(AttentionBackwardErrors, RejectsOverlapsWorkspaceAndConfig) {
  BwdBufs b = alloc_bwd(dev, s);
  BwdBufs x = b;
  x.dq = b.q;
  test::expect_error([&] { run(s, x); }, {"attention_backward", "dq 'q' overlaps q 'q'"});
  x = b;
  x.dv = b.dk;
  test::expect_error([&] { run(s, x); }, {"attention_backward", "dk 'dk' overlaps dv 'dk'"});
  kernels::AttentionWorkspace none;
  test::expect_error(
      [&] { kernels::attention_backward(dev, none, s, b.q, b.k, b.v, b.o, b.d_o, b.lse, b.dq, b.dk, b.dv); },
      {"attention_backward", "make_attention_workspace"});
  AttentionBackwardConfig bad{.dkdv_tile_kv = 256};
  test::expect_error([&] { run(s, b, &bad); }, {"attention_backward", "dkdv_tile_kv = 256", "valid: 1 to 128"});
  bad = {};
  bad.stages = 1;
  test::expect_error([&] { run(s, b, &bad); }, {"attention_backward", "stages = 1", "valid: 2 to 4"});
}

TEST_F(AttentionBackwardErrors, ForwardRejectsBadLse) {
  const AttentionShape f = forward_shape(s);
  Buffer q = dev.alloc(kBF16, f.q_tokens * f.q_heads * f.head_dim, "q");
  Buffer k = dev.alloc(kBF16, f.kv_capacity * f.kv_heads * f.head_dim, "k");
  Buffer wrong = dev.alloc(kF32, 7, "lse7");
  test::expect_error([&] { kernels::attention(dev, ws, f, q, k, k, q, nullptr, nullptr, &wrong); },
                     {"attention", "lse 'lse7' has 7 elements", "(q_heads, q_tokens)"});
  Buffer half = dev.alloc(kBF16, f.q_tokens * f.q_heads, "lse16");
  test::expect_error([&] { kernels::attention(dev, ws, f, q, k, k, q, nullptr, nullptr, &half); },
                     {"attention", "lse 'lse16' is bf16", "valid: fp32"});
}

}  // namespace
}  // namespace ppu
