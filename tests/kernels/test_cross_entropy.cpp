// Tests of kernels/CrossEntropy: the backward against fp64 central finite differences of the double
// reference forward (tiny shapes), forward and backward against the double references (up to
// Qwen3's 151,936-column vocabulary, fp32 and bf16, in place), ignored rows, bit-identical results
// for 1 and 3 host threads, timing-only runs, SRAM fit on every chip, and each invalid input.
//
// Error bounds (u = 2^-24, the vector unit's fp32 arithmetic; exp and log are Highway polynomials
// of a few ulp, taken as 4 u each). For a row with span R = max - min, k column chunks of at most
// w columns (k = 1, w = vocab for whole rows):
//  * s = sum exp(x - m): each term is off by (R + 4) u (x - m rounds with |x - m| <= R, then exp),
//    by (R + 5) u more per rescale (at most k - 1: exp(m_old - m_new) and the product), and the
//    sums add at most w - 1 + k roundings: rel(s) <= u ((R + 5) k + w + k);
//  * lse = m + log(s): |lse - ref| <= E_lse = rel(s) + 4 u |log s| + u |lse|;
//  * loss = lse - x_t: E_lse + u |loss|.
//  * dlogits = scale (exp(x - lse') - onehot) with the kernel's lse': relative to p = exp(x - lse),
//    p' is off by p (E_lse + u (|x - lse| + 4)); the subtraction and the scaling add 2 u |p - onehot|;
//    2^-126 covers p in fp32's subnormal range. All with a 1% margin; stored_bound adds the
//    rounding to a bf16 dlogits.
// Finite differences: L = (1/n) sum over the n rows not ignored of the reference loss, in double,
// h = 2^-10. Central differences err by h^2/6 max|d^3 L / dx^3| <= scale h^2 / (36 sqrt 3) (the
// third derivative of lse - x_t in one logit is p (1 - p) (1 - 2p), at most 1 / (6 sqrt 3)), plus
// double roundoff: each evaluation is within (vocab + 8 + 4 (|lse| + |loss|)) 2^-53 of exact,
// divided by h. The kernel's own bound is added to that.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "KernelTestUtil.hpp"
#include "kernels/CrossEntropy.hpp"

namespace ppu {
namespace {

using test::Shape;

constexpr int kTile = kernels::kCrossEntropyTileElems;
constexpr int32_t kIgnore = kernels::kCrossEntropyIgnore;

// center + uniform(-4, 4) + a ramp of height 8 along the row (rising on even rows, falling on odd
// ones, so that a chunked row's running maximum both grows chunk after chunk and stays), rounded.
std::vector<float> ce_logits(Shape s, DType t, uint64_t seed, float center = 0.0f) {
  std::vector<float> x = test::random_values(static_cast<size_t>(s.rows * s.cols), DType::kF32, seed, -4.0f, 4.0f);
  for (int64_t r = 0; r < s.rows; ++r)
    for (int64_t c = 0; c < s.cols; ++c) {
      const float ramp = (r % 2 == 0 ? 8.0f : -8.0f) * static_cast<float>(c) / static_cast<float>(s.cols);
      float& v = x[static_cast<size_t>(r * s.cols + c)];
      v = round_to(t, center + v + ramp);
    }
  return x;
}

// Seeded target ids in [0, vocab); every `ignore_every`-th row from row 1 ignored (0: none).
std::vector<int32_t> ce_targets(Shape s, uint64_t seed, int ignore_every) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> dist(0, s.cols - 1);
  std::vector<int32_t> t(static_cast<size_t>(s.rows));
  for (int64_t r = 0; r < s.rows; ++r)
    t[static_cast<size_t>(r)] =
        ignore_every > 0 && r % ignore_every == 1 ? kIgnore : static_cast<int32_t>(dist(rng));
  return t;
}

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

int64_t rows_not_ignored(const std::vector<int32_t>& t) {
  return static_cast<int64_t>(std::count_if(t.begin(), t.end(), [](int32_t id) { return id != kIgnore; }));
}

// E_lse of every row (see the file comment), from the reference's lse.
std::vector<double> lse_bounds(const std::vector<float>& x, Shape s, const std::vector<double>& lse_ref) {
  const auto k = static_cast<double>(test::chunks_of(s.cols, kTile));
  const auto w = static_cast<double>(std::min<int64_t>(s.cols, kTile));
  std::vector<double> e(static_cast<size_t>(s.rows));
  for (int64_t r = 0; r < s.rows; ++r) {
    const float* row = x.data() + r * s.cols;
    const double hi = *std::max_element(row, row + s.cols), lo = *std::min_element(row, row + s.cols);
    const double rel_s = test::kU32 * ((hi - lo + 5) * k + w + k);
    const double l = lse_ref[static_cast<size_t>(r)];
    e[static_cast<size_t>(r)] = 1.01 * (rel_s + 4 * test::kU32 * std::fabs(l - hi) + test::kU32 * std::fabs(l));
  }
  return e;
}

struct CeResult {
  std::vector<float> loss, lse, dlogits;
};

// Forward, then the backward with `scale` (into a new `out` buffer, or in place), on `dev`.
CeResult run_cross_entropy(Device& dev, Shape s, DType in, DType out, const std::vector<float>& x,
                           const std::vector<int32_t>& targets, float scale, bool in_place) {
  Buffer xb = test::make_buffer(dev, in, x, "logits");
  Buffer loss = dev.alloc(DType::kF32, s.rows, "loss"), lse = dev.alloc(DType::kF32, s.rows, "lse");
  kernels::cross_entropy(dev, xb, loss, lse, s.rows, s.cols, targets);
  Buffer db = in_place ? xb : dev.alloc(out, s.rows * s.cols, "dlogits");
  kernels::cross_entropy_backward(dev, xb, lse, db, s.rows, s.cols, targets, scale);
  CeResult r{dev.download(loss), dev.download(lse), dev.download(db)};
  if (!in_place) dev.free(db);
  dev.free(xb);
  dev.free(loss);
  dev.free(lse);
  return r;
}

void check_forward(const CeResult& got, const std::vector<float>& x, Shape s, const std::vector<int32_t>& targets,
                   const std::string& what) {
  const kernels::CrossEntropyReference ref = kernels::cross_entropy_reference(to_double(x), s.rows, s.cols, targets);
  const std::vector<double> e_lse = lse_bounds(x, s, ref.lse);
  test::expect_within(got.lse, ref.lse, [&](size_t r) { return e_lse[r]; }, what + " lse");
  test::expect_within(
      got.loss, ref.loss, [&](size_t r) { return e_lse[r] + test::kU32 * std::fabs(ref.loss[r]); }, what + " loss");
}

// Bound on the kernel's dlogits element i against the exact gradient `ref` (see the file comment);
// lse and e_lse per row from the reference and lse_bounds.
double grad_bound(const std::vector<float>& x, Shape s, const std::vector<int32_t>& targets, const std::vector<double>& lse,
                  const std::vector<double>& e_lse_rows, double scale, DType out, size_t i, double ref) {
  const auto r = static_cast<int64_t>(i) / s.cols, c = static_cast<int64_t>(i) % s.cols;
  if (targets[static_cast<size_t>(r)] == kIgnore) return 0.0;  // exact zeros
  const double l = lse[static_cast<size_t>(r)];
  const double p = std::exp(double(x[i]) - l);
  const double onehot = c == targets[static_cast<size_t>(r)] ? 1.0 : 0.0;
  const double e_lse = e_lse_rows[static_cast<size_t>(r)];
  const double e = std::fabs(scale) * (1.01 * p * (e_lse + test::kU32 * (std::fabs(double(x[i]) - l) + 4)) +
                                       2 * test::kU32 * std::fabs(p - onehot) + std::ldexp(1.0, -126));
  return test::stored_bound(out, ref, e);
}

void check_backward(const CeResult& got, const std::vector<float>& x, Shape s, const std::vector<int32_t>& targets,
                    float scale, DType out, const std::string& what) {
  const std::vector<double> xd = to_double(x);
  const std::vector<double> lse = kernels::cross_entropy_reference(xd, s.rows, s.cols, targets).lse;
  const std::vector<double> e_lse = lse_bounds(x, s, lse);
  const std::vector<double> ref = kernels::cross_entropy_backward_reference(xd, s.rows, s.cols, targets, scale);
  test::expect_within(
      got.dlogits, ref, [&](size_t i) { return grad_bound(x, s, targets, lse, e_lse, scale, out, i, ref[i]); },
      what + " dlogits");
}

std::string describe(Shape s, DType in, DType out, bool in_place) {
  return fmt::format("cross_entropy {}{}", test::describe(s, in, out), in_place ? " in place" : "");
}

TEST(CrossEntropy, GradientMatchesCentralDifferences) {
  Device dev(load_chip("h100"));
  struct Case {
    Shape s;
    DType in, out;
    bool in_place;
  };
  const Case cases[] = {{{1, 1}, DType::kF32, DType::kF32, false},
                        {{5, 7}, DType::kF32, DType::kF32, false},
                        {{4, 13}, DType::kBF16, DType::kF32, false},
                        {{4, 13}, DType::kBF16, DType::kBF16, true},
                        {{3, kTile + 5}, DType::kF32, DType::kF32, false},
                        {{3, kTile + 5}, DType::kBF16, DType::kBF16, true}};
  const double h = std::ldexp(1.0, -10);
  uint64_t seed = 2000;
  for (const Case& cs : cases) {
    const Shape s = cs.s;
    const std::string what = "finite differences " + describe(s, cs.in, cs.out, cs.in_place);
    const std::vector<float> x = ce_logits(s, cs.in, ++seed);
    const std::vector<int32_t> targets = ce_targets(s, ++seed, 2);  // rows 1, 3, ... ignored
    const auto n = std::max<int64_t>(1, rows_not_ignored(targets));
    const float scale = 1.0f / static_cast<float>(n);
    const CeResult got = run_cross_entropy(dev, s, cs.in, cs.out, x, targets, scale, cs.in_place);
    const std::vector<double> lse = kernels::cross_entropy_reference(to_double(x), s.rows, s.cols, targets).lse;
    const std::vector<double> e_lse = lse_bounds(x, s, lse);
    // Every column of short rows; of long rows, the target and a spread of others in every chunk.
    std::vector<int64_t> cols;
    for (int64_t c = 0; c < s.cols; c += s.cols > 64 ? 997 : 1) cols.push_back(c);
    int checked = 0;
    for (int64_t r = 0; r < s.rows; ++r) {
      const int32_t t = targets[static_cast<size_t>(r)];
      std::vector<int64_t> rc = cols;
      if (t != kIgnore) rc.push_back(t);
      std::vector<double> row(x.begin() + r * s.cols, x.begin() + (r + 1) * s.cols);
      auto mean_loss = [&] { return kernels::cross_entropy_reference(row, 1, s.cols, {t}).loss[0] * scale; };
      for (int64_t c : rc) {
        const double x0 = row[static_cast<size_t>(c)];
        row[static_cast<size_t>(c)] = x0 + h;
        const double up = mean_loss();
        row[static_cast<size_t>(c)] = x0 - h;
        const double down = mean_loss();
        row[static_cast<size_t>(c)] = x0;
        const double fd = (up - down) / (2 * h);
        const size_t i = static_cast<size_t>(r * s.cols + c);
        const double l = lse[static_cast<size_t>(r)];
        const double fd_err = scale * (h * h / (36 * std::sqrt(3.0)) +
                                       std::ldexp(1.0, -53) * (double(s.cols) + 8 + 4 * (std::fabs(l) + std::fabs(l - x0))) / h);
        const double bound = grad_bound(x, s, targets, lse, e_lse, scale, cs.out, i, fd) + fd_err;
        EXPECT_LE(std::fabs(double(got.dlogits[i]) - fd), bound)
            << what << ": row " << r << " column " << c << " got " << got.dlogits[i] << ", finite difference " << fd;
        ++checked;
      }
    }
    EXPECT_GT(checked, 0) << what;
  }
}

TEST(CrossEntropy, MatchesReferenceEveryShapeAndDtype) {
  Device dev(load_chip("h100"));
  // {20011, 13}: tiles of 32 whole rows, two per block; {600, 257}: tiles of 2 rows.
  const std::vector<Shape> shapes = {{1, 1},    {7, 13},        {33, 100},          {600, 257},  {20011, 13},
                                     {2, kTile}, {3, kTile + 1}, {3, 2 * kTile + 7}, {4, 151936}};
  uint64_t seed = 2100;
  for (DType t : {DType::kF32, DType::kBF16})
    for (Shape s : shapes) {
      const std::vector<float> x = ce_logits(s, t, ++seed);
      const std::vector<int32_t> targets = ce_targets(s, ++seed, 3);
      const float scale = 1.0f / static_cast<float>(std::max<int64_t>(1, rows_not_ignored(targets)));
      const std::string what = describe(s, t, t, false);
      const CeResult got = run_cross_entropy(dev, s, t, t, x, targets, scale, false);
      check_forward(got, x, s, targets, what);
      check_backward(got, x, s, targets, scale, t, what);
    }
}

TEST(CrossEntropy, InPlaceAndMixedDtypes) {
  Device dev(load_chip("zhenwu-810e"));
  const std::pair<DType, DType> pairs[] = {{DType::kF32, DType::kF32}, {DType::kBF16, DType::kBF16}};
  uint64_t seed = 2200;
  for (auto [in, out] : pairs)
    for (Shape s : {Shape{600, 257}, Shape{3, 151936}}) {
      const std::vector<float> x = ce_logits(s, in, ++seed);
      const std::vector<int32_t> targets = ce_targets(s, ++seed, 4);
      const CeResult got = run_cross_entropy(dev, s, in, out, x, targets, 0.125f, true);
      check_backward(got, x, s, targets, 0.125f, out, describe(s, in, out, true));
    }
  for (Shape s : {Shape{7, 13}, Shape{3, 2 * kTile + 7}}) {  // bf16 logits, fp32 gradient
    const std::vector<float> x = ce_logits(s, DType::kBF16, ++seed);
    const std::vector<int32_t> targets = ce_targets(s, ++seed, 0);
    const CeResult got = run_cross_entropy(dev, s, DType::kBF16, DType::kF32, x, targets, 1.0f, false);
    check_forward(got, x, s, targets, describe(s, DType::kBF16, DType::kF32, false));
    check_backward(got, x, s, targets, 1.0f, DType::kF32, describe(s, DType::kBF16, DType::kF32, false));
  }
}

// Logits around +-1e4 overflow exp in fp32: only the max-subtracted form gets them right.
TEST(CrossEntropy, StableForLargeLogits) {
  Device dev(load_chip("h100"));
  uint64_t seed = 2300;
  for (float center : {1e4f, -1e4f})
    for (Shape s : {Shape{7, 13}, Shape{2, 151936}}) {
      const std::vector<float> x = ce_logits(s, DType::kF32, ++seed, center);
      const std::vector<int32_t> targets = ce_targets(s, ++seed, 0);
      const CeResult got = run_cross_entropy(dev, s, DType::kF32, DType::kF32, x, targets, 0.5f, false);
      check_forward(got, x, s, targets, describe(s, DType::kF32, DType::kF32, false) + " large");
      check_backward(got, x, s, targets, 0.5f, DType::kF32, describe(s, DType::kF32, DType::kF32, false) + " large");
    }
}

// Ignored rows give loss 0 and a zero gradient exactly, even when their logits are NaN, also when
// a whole tile of short rows, or a vocabulary row, is ignored; the other rows are unaffected.
TEST(CrossEntropy, IgnoredRowsGiveExactZeros) {
  Device dev(load_chip("h100"));
  uint64_t seed = 2400;
  for (Shape s : {Shape{20011, 13}, Shape{3, kTile + 7}}) {  // 32-row tiles, two per block; chunked rows
    std::vector<float> x = ce_logits(s, DType::kBF16, ++seed);
    std::vector<int32_t> targets = ce_targets(s, ++seed, 0);
    std::vector<int64_t> ignored = {1};
    if (s.cols == 13)
      for (int64_t r = 32; r < 64; ++r) ignored.push_back(r);  // block 0's second tile, whole
    for (int64_t r : ignored) {
      targets[static_cast<size_t>(r)] = kIgnore;
      std::fill(x.begin() + r * s.cols, x.begin() + (r + 1) * s.cols, NAN);
    }
    const CeResult got = run_cross_entropy(dev, s, DType::kBF16, DType::kBF16, x, targets, 0.25f, false);
    const std::string what = describe(s, DType::kBF16, DType::kBF16, false);
    for (int64_t r : ignored) {
      EXPECT_EQ(got.loss[static_cast<size_t>(r)], 0.0f) << what << " row " << r;
      for (int64_t c = 0; c < s.cols; ++c)
        ASSERT_EQ(got.dlogits[static_cast<size_t>(r * s.cols + c)], 0.0f) << what << " row " << r << " col " << c;
      std::fill(x.begin() + r * s.cols, x.begin() + (r + 1) * s.cols, 0.0f);  // for the reference below
    }
    std::vector<float> loss_kept = got.loss, lse_kept = got.lse;
    const kernels::CrossEntropyReference ref = kernels::cross_entropy_reference(to_double(x), s.rows, s.cols, targets);
    for (int64_t r : ignored) lse_kept[static_cast<size_t>(r)] = static_cast<float>(ref.lse[static_cast<size_t>(r)]);
    check_forward(CeResult{loss_kept, lse_kept, {}}, x, s, targets, what + " other rows");
    check_backward(got, x, s, targets, 0.25f, DType::kBF16, what + " other rows");
  }
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(CrossEntropy, BitIdenticalForOneAndThreeHostThreads) {
  Device one(load_chip("h100"), ExecMode::kFunctional, 1), three(load_chip("h100"), ExecMode::kFunctional, 3);
  uint64_t seed = 2500;
  for (Shape s : {Shape{600, 257}, Shape{6, 151936}}) {
    const std::vector<float> x = ce_logits(s, DType::kBF16, ++seed);
    const std::vector<int32_t> targets = ce_targets(s, ++seed, 5);
    const CeResult a = run_cross_entropy(one, s, DType::kBF16, DType::kF32, x, targets, 0.01f, false);
    const CeResult b = run_cross_entropy(three, s, DType::kBF16, DType::kF32, x, targets, 0.01f, false);
    EXPECT_TRUE(same_bits(a.loss, b.loss)) << s.rows << "x" << s.cols;
    EXPECT_TRUE(same_bits(a.lse, b.lse)) << s.rows << "x" << s.cols;
    EXPECT_TRUE(same_bits(a.dlogits, b.dlogits)) << s.rows << "x" << s.cols;
  }
}

TEST(CrossEntropy, TimingOnlyRunsWithPositiveTime) {
  for (const char* chip : {"h100", "a100-80g"}) {
    Device dev(load_chip(chip), ExecMode::kTimingOnly);
    // 1024 x 151936 bf16 logits are 311 MB: sized by the simulated HBM, not by this machine.
    for (Shape s : {Shape{8, 151936}, Shape{1024, 151936}, Shape{20011, 64}}) {
      const std::vector<int32_t> targets = ce_targets(s, 2600, 7);
      Buffer x = dev.alloc(DType::kBF16, s.rows * s.cols, "logits");
      Buffer loss = dev.alloc(DType::kF32, s.rows, "loss"), lse = dev.alloc(DType::kF32, s.rows, "lse");
      const KernelTiming f = kernels::cross_entropy(dev, x, loss, lse, s.rows, s.cols, targets);
      const KernelTiming b = kernels::cross_entropy_backward(dev, x, lse, x, s.rows, s.cols, targets, 1e-3f);
      EXPECT_GT(f.time_s, 0.0) << chip << " " << f.name;
      EXPECT_GT(b.time_s, 0.0) << chip << " " << b.name;
      // The backward reads and writes the logits; the forward only reads them.
      EXPECT_GT(b.hbm_write_bytes, f.hbm_write_bytes) << chip << " " << b.name;
      for (Buffer* buf : {&x, &loss, &lse}) dev.free(*buf);
    }
  }
}

// The largest tiles (whole rows filling a tile, several tiles per block; chunked rows) fit every
// chip's SRAM, and no block needs more than block 0 (which here is an ignored row).
TEST(CrossEntropy, EveryBlockProgramFitsEveryChipsSram) {
  for (const std::string& name : chip_preset_names()) {
    const ChipSpec chip = load_chip(name);
    Device dev(chip, ExecMode::kTimingOnly);
    for (Shape s : {Shape{100000, 512}, Shape{3, kTile}, Shape{3, 151936}}) {
      std::vector<int32_t> targets = ce_targets(s, 2700, 0);
      targets[0] = kIgnore;
      Buffer x = dev.alloc(DType::kBF16, s.rows * s.cols, "logits");
      Buffer loss = dev.alloc(DType::kF32, s.rows, "loss"), lse = dev.alloc(DType::kF32, s.rows, "lse");
      for (const Kernel& k : {kernels::make_cross_entropy(x, loss, lse, s.rows, s.cols, targets),
                              kernels::make_cross_entropy_backward(x, lse, x, s.rows, s.cols, targets, 1.0f)}) {
        TileProgram first, other;
        k.build(0, first);
        EXPECT_NO_THROW(validate_program(k, 0, first, chip.sram_bytes())) << name << " " << k.name;
        for (int64_t b : {int64_t{1}, k.grid - 1}) {
          other.clear();
          k.build(b, other);
          EXPECT_NO_THROW(validate_program(k, b, other, chip.sram_bytes())) << name << " " << k.name;
          EXPECT_LE(other.sram_bytes(), first.sram_bytes()) << name << " " << k.name << " block " << b;
        }
        EXPECT_LE(first.instrs().size(), 400u) << k.name;
      }
      for (Buffer* buf : {&x, &loss, &lse}) dev.free(*buf);
    }
  }
}

// --- invalid inputs

struct Bufs {
  Device dev{load_chip("h100"), ExecMode::kTimingOnly};
  Buffer logits = dev.alloc(DType::kBF16, 7 * 13, "logits");
  Buffer loss = dev.alloc(DType::kF32, 7, "loss");
  Buffer lse = dev.alloc(DType::kF32, 7, "lse");
  std::vector<int32_t> targets = {0, 12, kIgnore, 3, 4, 5, 6};
};

TEST(CrossEntropy, RejectsTargetOutsideVocabulary) {
  Bufs b;
  b.targets[3] = 13;
  test::expect_error([&] { kernels::make_cross_entropy(b.logits, b.loss, b.lse, 7, 13, b.targets); },
                     {"cross_entropy", "row 3", "target id 13", "0 to 12", "-1 to ignore"});
}

TEST(CrossEntropy, RejectsNegativeTargetOtherThanIgnore) {
  Bufs b;
  b.targets[5] = -2;
  test::expect_error([&] { kernels::make_cross_entropy_backward(b.logits, b.lse, b.logits, 7, 13, b.targets, 1.0f); },
                     {"cross_entropy_backward", "row 5", "target id -2", "0 to 12"});
}

TEST(CrossEntropy, RejectsTargetCountOtherThanRows) {
  Bufs b;
  b.targets.pop_back();
  test::expect_error([&] { kernels::make_cross_entropy(b.logits, b.loss, b.lse, 7, 13, b.targets); },
                     {"cross_entropy", "6 target ids for 7 rows"});
}

TEST(CrossEntropy, RejectsLogitsDtype) {
  Bufs b;
  Buffer x = b.dev.alloc(DType::kF16, 7 * 13, "half_logits");
  test::expect_error([&] { kernels::make_cross_entropy(x, b.loss, b.lse, 7, 13, b.targets); },
                     {"cross_entropy", "logits 'half_logits' is fp16", "valid: fp32, bf16"});
}

TEST(CrossEntropy, RejectsLogitsNumel) {
  Bufs b;
  test::expect_error([&] { kernels::make_cross_entropy(b.logits, b.loss, b.lse, 7, 14, b.targets); },
                     {"cross_entropy", "logits 'logits' has 91 elements", "[7, 14] (rows, vocab)", "needs 98"});
}

TEST(CrossEntropy, RejectsLossNumel) {
  Bufs b;
  Buffer loss = b.dev.alloc(DType::kF32, 6, "short_loss");
  test::expect_error([&] { kernels::make_cross_entropy(b.logits, loss, b.lse, 7, 13, b.targets); },
                     {"cross_entropy", "loss 'short_loss' has 6 elements", "needs 7"});
}

TEST(CrossEntropy, RejectsLseDtype) {
  Bufs b;
  Buffer lse = b.dev.alloc(DType::kBF16, 7, "bf16_lse");
  test::expect_error([&] { kernels::make_cross_entropy_backward(b.logits, lse, b.logits, 7, 13, b.targets, 1.0f); },
                     {"cross_entropy_backward", "lse 'bf16_lse' is bf16", "valid: fp32"});
}

TEST(CrossEntropy, RejectsDlogitsDtype) {
  Bufs b;
  Buffer d = b.dev.alloc(DType::kF8E4M3, 7 * 13, "fp8_grad");
  test::expect_error([&] { kernels::make_cross_entropy_backward(b.logits, b.lse, d, 7, 13, b.targets, 1.0f); },
                     {"cross_entropy_backward", "dlogits 'fp8_grad'", "valid: fp32, bf16"});
}

TEST(CrossEntropy, RejectsDlogitsNumel) {
  Bufs b;
  Buffer d = b.dev.alloc(DType::kF32, 7 * 12, "grad");
  test::expect_error([&] { kernels::make_cross_entropy_backward(b.logits, b.lse, d, 7, 13, b.targets, 1.0f); },
                     {"cross_entropy_backward", "dlogits 'grad' has 84 elements", "needs 91"});
}

TEST(CrossEntropy, RejectsNonFiniteScale) {
  Bufs b;
  test::expect_error(
      [&] { kernels::make_cross_entropy_backward(b.logits, b.lse, b.logits, 7, 13, b.targets, INFINITY); },
      {"cross_entropy_backward", "scale = inf", "finite"});
}

TEST(CrossEntropy, RejectsZeroRows) {
  Bufs b;
  test::expect_error([&] { kernels::make_cross_entropy(b.logits, b.loss, b.lse, 0, 13, {}); },
                     {"cross_entropy", "rows = 0", "must be positive"});
}

TEST(CrossEntropy, RejectsZeroVocab) {
  Bufs b;
  test::expect_error([&] { kernels::make_cross_entropy(b.logits, b.loss, b.lse, 7, 0, b.targets); },
                     {"cross_entropy", "vocab = 0", "must be positive"});
}

TEST(CrossEntropy, RejectsVocabBeyondExactIndices) {
  Bufs b;
  const int64_t vocab = kMaxExactIndex;
  Buffer x = b.dev.alloc(DType::kBF16, vocab, "huge_logits");
  test::expect_error([&] { kernels::make_cross_entropy(x, b.loss, b.lse, 1, vocab, {0}); },
                     {"cross_entropy", "vocab = 16777216", "smaller than 2^24"});
}

}  // namespace
}  // namespace ppu
