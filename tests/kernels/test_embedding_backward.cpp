// Tests of kernels/EmbeddingBackward: the gradient against fp64 central finite differences of
// L = sum(dy * embedding(table)) (tiny shapes), accumulation onto a table against the double
// reference (repeated ids, rows longer than a chunk, every dx dtype), bit-identical results for 1
// and 3 host threads equal to the documented fp32 order, the zeroing kernel, timing-only runs, SRAM
// fit on every chip, and each invalid input.
//
// Error bounds (u = 2^-24): a table row touched by m tokens gets m fp32 additions in token order,
// so |got - ref| <= m u (|table| + sum of the m |dx|) (recursive summation), with a 1% margin;
// rows no token touches must come back bit for bit. Finite differences: L is linear in the table,
// so central differences (h = 1/2) have no truncation error; each evaluation of L in double sums
// tokens * hidden products, within (tokens * hidden + 1) 2^-53 sum |dy * table| of exact, and the
// difference divides two such errors by 2h. The kernel's zeroed table makes its first addition
// exact: (m - 1) u sum |dx|.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "KernelTestUtil.hpp"
#include "kernels/EmbeddingBackward.hpp"

namespace ppu {
namespace {

// Seeded ids in [0, vocab) skewed towards small ids (vocab * U^4, U uniform in [0, 1)), so that
// some ids repeat many times, as frequent tokens do.
std::vector<int32_t> skewed_ids(int64_t tokens, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(0.0, 1.0);
  std::vector<int32_t> ids(static_cast<size_t>(tokens));
  for (auto& id : ids) id = static_cast<int32_t>(std::min<double>(double(vocab) * std::pow(dist(rng), 4), double(vocab - 1)));
  return ids;
}

// dtable (uploaded as `table`), then the backward of dx (values already rounded to dx_type).
std::vector<float> run_backward(Device& dev, DType dx_type, const std::vector<float>& dx, const std::vector<float>& table,
                                int64_t vocab, int64_t hidden, const std::vector<int32_t>& ids, bool zero_first) {
  Buffer dxb = test::make_buffer(dev, dx_type, dx, "dx");
  Buffer tb = test::make_buffer(dev, DType::kF32, table, "dtable");
  if (zero_first) kernels::embedding_grad_zero(dev, tb);
  kernels::embedding_backward(dev, dxb, tb, vocab, hidden, ids);
  std::vector<float> out = dev.download(tb);
  dev.free(dxb);
  dev.free(tb);
  return out;
}

// Per row of the table: how many tokens have its id.
std::vector<int64_t> counts(const std::vector<int32_t>& ids, int64_t vocab) {
  std::vector<int64_t> n(static_cast<size_t>(vocab), 0);
  for (int32_t id : ids) ++n[static_cast<size_t>(id)];
  return n;
}

// Per element of the table: the sum of |dx| over the tokens with that row's id.
std::vector<double> abs_sums(const std::vector<float>& dx, int64_t vocab, int64_t hidden,
                             const std::vector<int32_t>& ids) {
  std::vector<double> s(static_cast<size_t>(vocab * hidden), 0.0);
  for (size_t t = 0; t < ids.size(); ++t)
    for (int64_t c = 0; c < hidden; ++c)
      s[static_cast<size_t>(ids[t] * hidden + c)] += std::fabs(dx[t * static_cast<size_t>(hidden) + static_cast<size_t>(c)]);
  return s;
}

// L = sum over tokens t and columns c of dy[t, c] * table[ids[t], c], in double.
double objective(const std::vector<double>& table, int64_t hidden, const std::vector<int32_t>& ids,
                 const std::vector<float>& dy) {
  double l = 0;
  for (size_t t = 0; t < ids.size(); ++t)
    for (int64_t c = 0; c < hidden; ++c)
      l += double(dy[t * static_cast<size_t>(hidden) + static_cast<size_t>(c)]) *
           table[static_cast<size_t>(ids[t] * hidden + c)];
  return l;
}

TEST(EmbeddingBackward, GradientMatchesCentralDifferences) {
  Device dev(load_chip("h100"));
  struct Case {
    int64_t vocab, hidden;
    std::vector<int32_t> ids;
    DType dx_type;
  };
  std::vector<int32_t> many(40);  // 40 tokens over 6 ids: long runs of one id
  for (size_t t = 0; t < many.size(); ++t) many[t] = static_cast<int32_t>((t * t) % 6);
  const Case cases[] = {{11, 5, {3, 0, 3, 7, 3, 10, 0, 3, 3}, DType::kF32},
                        {11, 5, {3, 0, 3, 7, 3, 10, 0, 3, 3}, DType::kBF16},
                        {6, 3, many, DType::kF16},
                        {1, 1, {0}, DType::kF32}};
  const double h = 0.5;
  uint64_t seed = 3000;
  for (const Case& cs : cases) {
    const std::string what = fmt::format("embedding_backward {} tokens into [{}, {}] {}", cs.ids.size(), cs.vocab,
                                         cs.hidden, dtype_name(cs.dx_type));
    const auto tokens = static_cast<int64_t>(cs.ids.size());
    const std::vector<float> dy = test::random_values(static_cast<size_t>(tokens * cs.hidden), cs.dx_type, ++seed);
    const std::vector<float> table = test::random_values(static_cast<size_t>(cs.vocab * cs.hidden), DType::kF32, ++seed);
    // Garbage in the device table: the zeroing kernel must clear it.
    const std::vector<float> garbage(table.size(), NAN);
    const std::vector<float> got = run_backward(dev, cs.dx_type, dy, garbage, cs.vocab, cs.hidden, cs.ids, true);
    const std::vector<int64_t> n = counts(cs.ids, cs.vocab);
    const std::vector<double> sums = abs_sums(dy, cs.vocab, cs.hidden, cs.ids);
    std::vector<double> t(table.begin(), table.end());
    double abs_l = 0;
    for (size_t i = 0; i < cs.ids.size(); ++i)
      for (int64_t c = 0; c < cs.hidden; ++c)
        abs_l += std::fabs(double(dy[i * static_cast<size_t>(cs.hidden) + static_cast<size_t>(c)]) *
                           (std::fabs(t[static_cast<size_t>(cs.ids[i] * cs.hidden + c)]) + h));
    const double fd_err = 2 * (double(tokens * cs.hidden) + 1) * std::ldexp(1.0, -53) * abs_l / (2 * h);
    for (size_t i = 0; i < t.size(); ++i) {
      const double x0 = t[i];
      t[i] = x0 + h;
      const double up = objective(t, cs.hidden, cs.ids, dy);
      t[i] = x0 - h;
      const double down = objective(t, cs.hidden, cs.ids, dy);
      t[i] = x0;
      const double fd = (up - down) / (2 * h);
      const int64_t m = n[i / static_cast<size_t>(cs.hidden)];
      const double bound = 1.01 * double(std::max<int64_t>(m - 1, 0)) * test::kU32 * sums[i] + fd_err;
      EXPECT_LE(std::fabs(double(got[i]) - fd), bound)
          << what << ": element " << i << " got " << got[i] << ", finite difference " << fd;
    }
  }
}

TEST(EmbeddingBackward, AccumulatesOntoTableLikeReference) {
  Device dev(load_chip("h100"));
  struct Case {
    int64_t vocab, hidden, tokens;
    DType dx_type;
  };
  const Case cases[] = {{20000, 257, 3000, DType::kF32},
                        {64, 2 * kernels::kEmbeddingBackwardChunkElems + 808, 40, DType::kBF16},  // 3 chunks
                        {5, 3, 200, DType::kF16},  // ids repeated far past a block's 32 rows
                        {1, 1, 1, DType::kF32}};
  uint64_t seed = 3100;
  for (const Case& cs : cases) {
    const std::string what = fmt::format("embedding_backward {} tokens into [{}, {}] {}", cs.tokens, cs.vocab,
                                         cs.hidden, dtype_name(cs.dx_type));
    const std::vector<int32_t> ids = skewed_ids(cs.tokens, cs.vocab, ++seed);
    const std::vector<float> dx = test::random_values(static_cast<size_t>(cs.tokens * cs.hidden), cs.dx_type, ++seed);
    const std::vector<float> table =
        test::random_values(static_cast<size_t>(cs.vocab * cs.hidden), DType::kF32, ++seed, -4.0f, 4.0f);
    const std::vector<float> got = run_backward(dev, cs.dx_type, dx, table, cs.vocab, cs.hidden, ids, false);
    const std::vector<double> ref = kernels::embedding_backward_reference(dx, table, cs.vocab, cs.hidden, ids);
    const std::vector<int64_t> n = counts(ids, cs.vocab);
    const std::vector<double> sums = abs_sums(dx, cs.vocab, cs.hidden, ids);
    test::expect_within(
        got, ref,
        [&](size_t i) {
          const auto m = double(n[i / static_cast<size_t>(cs.hidden)]);
          return 1.01 * m * test::kU32 * (std::fabs(table[i]) + sums[i]);
        },
        what);
    int64_t untouched = 0;
    for (int64_t v = 0; v < cs.vocab; ++v) {
      if (n[static_cast<size_t>(v)] > 0) continue;
      ++untouched;
      EXPECT_EQ(0, std::memcmp(got.data() + v * cs.hidden, table.data() + v * cs.hidden,
                               static_cast<size_t>(cs.hidden) * sizeof(float)))
          << what << ": untouched row " << v << " changed";
    }
    if (cs.vocab == 20000) {
      EXPECT_GT(untouched, 0) << what;
    }
  }
}

// Same bits with 1 and 3 host threads, and the same bits as adding in fp32 in token order on the
// host: the order the header documents.
TEST(EmbeddingBackward, BitIdenticalForOneAndThreeHostThreadsInTokenOrder) {
  Device one(load_chip("h100"), ExecMode::kFunctional, 1), three(load_chip("h100"), ExecMode::kFunctional, 3);
  const int64_t vocab = 1000, hidden = 512, tokens = 4096;
  const std::vector<int32_t> ids = skewed_ids(tokens, vocab, 3200);
  const std::vector<float> dx = test::random_values(static_cast<size_t>(tokens * hidden), DType::kBF16, 3201);
  const std::vector<float> table = test::random_values(static_cast<size_t>(vocab * hidden), DType::kF32, 3202);
  const std::vector<float> a = run_backward(one, DType::kBF16, dx, table, vocab, hidden, ids, false);
  const std::vector<float> b = run_backward(three, DType::kBF16, dx, table, vocab, hidden, ids, false);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
  std::vector<float> host = table;
  for (size_t t = 0; t < ids.size(); ++t)
    for (int64_t c = 0; c < hidden; ++c)
      host[static_cast<size_t>(ids[t] * hidden + c)] += dx[t * static_cast<size_t>(hidden) + static_cast<size_t>(c)];
  EXPECT_EQ(0, std::memcmp(a.data(), host.data(), a.size() * sizeof(float)));
  EXPECT_LT(counts(ids, vocab)[0], tokens);
  EXPECT_GT(counts(ids, vocab)[0], kernels::kEmbeddingBackwardMaxRowsPerBlock);  // one id beyond a block's share
}

TEST(EmbeddingBackward, ZeroKernelClearsEveryElement) {
  Device dev(load_chip("h100"));
  for (int64_t n : {int64_t{1}, int64_t{kernels::kEmbeddingGradZeroTileElems} + 3, int64_t{5'000'011}}) {
    Buffer b = test::make_buffer(dev, DType::kF32, std::vector<float>(static_cast<size_t>(n), NAN), "dtable");
    kernels::embedding_grad_zero(dev, b);
    const std::vector<float> got = dev.download(b);
    EXPECT_TRUE(std::all_of(got.begin(), got.end(), [](float v) { return v == 0.0f && !std::signbit(v); })) << n;
    dev.free(b);
  }
}

TEST(EmbeddingBackward, TimingOnlyRunsWithPositiveTime) {
  for (const char* chip : {"h100", "a100-80g"}) {
    Device dev(load_chip(chip), ExecMode::kTimingOnly);
    const int64_t vocab = 151936, hidden = 4096, tokens = 8192;  // a 2.5 GB fp32 table
    Buffer dx = dev.alloc(DType::kBF16, tokens * hidden, "dx"), dt = dev.alloc(DType::kF32, vocab * hidden, "dtable");
    const KernelTiming z = kernels::embedding_grad_zero(dev, dt);
    const KernelTiming b = kernels::embedding_backward(dev, dx, dt, vocab, hidden, skewed_ids(tokens, vocab, 3300));
    EXPECT_GT(z.time_s, 0.0) << chip;
    EXPECT_GT(b.time_s, 0.0) << chip;
    // Zeroing writes the whole table; the backward only the touched rows.
    EXPECT_GT(z.hbm_write_bytes, b.hbm_write_bytes) << chip;
    dev.free(dx);
    dev.free(dt);
  }
}

TEST(EmbeddingBackward, EveryBlockProgramFitsEveryChipsSram) {
  for (const std::string& name : chip_preset_names()) {
    const ChipSpec chip = load_chip(name);
    Device dev(chip, ExecMode::kTimingOnly);
    const int64_t vocab = 151936, hidden = 8192;
    for (int64_t tokens : {int64_t{1}, int64_t{4096}, int64_t{65536}}) {
      // Every block allocates the same rings (sized by the longest group), however few rows it sums.
      Buffer dx = dev.alloc(DType::kBF16, tokens * hidden, "dx"), dt = dev.alloc(DType::kF32, vocab * hidden, "dt");
      for (const Kernel& k : {kernels::make_embedding_backward(dx, dt, vocab, hidden, skewed_ids(tokens, vocab, 3400)),
                              kernels::make_embedding_grad_zero(dt)}) {
        TileProgram first, last;
        k.build(0, first);
        k.build(k.grid - 1, last);
        EXPECT_NO_THROW(validate_program(k, 0, first, chip.sram_bytes())) << name << " " << k.name;
        EXPECT_NO_THROW(validate_program(k, k.grid - 1, last, chip.sram_bytes())) << name << " " << k.name;
        EXPECT_LE(last.sram_bytes(), first.sram_bytes()) << name << " " << k.name;
      }
      dev.free(dx);
      dev.free(dt);
    }
  }
}

// --- invalid inputs

struct Bufs {
  Device dev{load_chip("h100"), ExecMode::kTimingOnly};
  Buffer dx = dev.alloc(DType::kBF16, 3 * 8, "dx");
  Buffer dtable = dev.alloc(DType::kF32, 10 * 8, "dembed");
  std::vector<int32_t> ids = {4, 9, 4};
};

TEST(EmbeddingBackward, RejectsIdOutsideVocabulary) {
  Bufs b;
  b.ids[1] = 10;
  test::expect_error([&] { kernels::make_embedding_backward(b.dx, b.dtable, 10, 8, b.ids); },
                     {"embedding_backward", "token 1 has id 10", "vocab size of 10", "0 to 9"});
}

TEST(EmbeddingBackward, RejectsNegativeId) {
  Bufs b;
  b.ids[2] = -1;
  test::expect_error([&] { kernels::make_embedding_backward(b.dx, b.dtable, 10, 8, b.ids); },
                     {"embedding_backward", "token 2 has id -1", "0 to 9"});
}

TEST(EmbeddingBackward, RejectsNonFp32Table) {
  Bufs b;
  Buffer t = b.dev.alloc(DType::kBF16, 10 * 8, "bf16_table");
  test::expect_error([&] { kernels::make_embedding_backward(b.dx, t, 10, 8, b.ids); },
                     {"embedding_backward", "dtable 'bf16_table' is bf16", "valid: fp32"});
}

TEST(EmbeddingBackward, RejectsFp8Gradient) {
  Bufs b;
  Buffer dx = b.dev.alloc(DType::kF8E4M3, 3 * 8, "fp8_dx");
  test::expect_error([&] { kernels::make_embedding_backward(dx, b.dtable, 10, 8, b.ids); },
                     {"embedding_backward", "dx 'fp8_dx'", "valid: fp32, bf16, fp16"});
}

TEST(EmbeddingBackward, RejectsDxNumel) {
  Bufs b;
  b.ids.push_back(0);
  test::expect_error([&] { kernels::make_embedding_backward(b.dx, b.dtable, 10, 8, b.ids); },
                     {"embedding_backward", "dx 'dx' has 24 elements", "[4, 8] (tokens, hidden)", "needs 32"});
}

TEST(EmbeddingBackward, RejectsTableNumel) {
  Bufs b;
  test::expect_error([&] { kernels::make_embedding_backward(b.dx, b.dtable, 11, 8, b.ids); },
                     {"embedding_backward", "dtable 'dembed' has 80 elements", "[11, 8] (vocab, hidden)", "needs 88"});
}

TEST(EmbeddingBackward, RejectsNoTokens) {
  Bufs b;
  test::expect_error([&] { kernels::make_embedding_backward(b.dx, b.dtable, 10, 8, {}); },
                     {"embedding_backward", "tokens (ids.size()) = 0", "must be positive"});
}

TEST(EmbeddingBackward, RejectsZeroHidden) {
  Bufs b;
  test::expect_error([&] { kernels::make_embedding_backward(b.dx, b.dtable, 10, 0, b.ids); },
                     {"embedding_backward", "hidden = 0", "must be positive"});
}

TEST(EmbeddingBackward, ZeroKernelRejectsNonFp32Table) {
  Bufs b;
  test::expect_error([&] { kernels::make_embedding_grad_zero(b.dx); },
                     {"embedding_grad_zero", "dtable 'dx' is bf16", "valid: fp32"});
}

}  // namespace
}  // namespace ppu
