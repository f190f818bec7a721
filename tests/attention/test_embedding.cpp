// Tests of kernels/Embedding against embedding_reference on a functional device: exact equality
// (a lookup only moves data; with a different output dtype the store rounds once, RNE, so the
// expected value is round_to(out dtype, table value)), for hidden sizes of 1, 13, one chunk
// exactly and one column past it, token counts that leave partial blocks, repeated ids and the
// first and last rows; and each kind of invalid input.
#include <gtest/gtest.h>

#include "kernels/Embedding.hpp"
#include "kernels/KernelTestUtil.hpp"

namespace ppu {
namespace {

std::vector<int32_t> make_ids(int64_t tokens, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> ids(static_cast<size_t>(tokens));
  uint64_t x = seed;
  for (auto& id : ids) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;  // LCG (Knuth's MMIX constants)
    id = static_cast<int32_t>((x >> 33) % static_cast<uint64_t>(vocab));
  }
  if (tokens > 2) ids[0] = 0, ids[1] = static_cast<int32_t>(vocab - 1), ids[2] = 0;
  return ids;
}

void check_embedding(Device& dev, int64_t vocab, int64_t hidden, const std::vector<int32_t>& ids, DType table_t,
                     DType out_t, uint64_t seed) {
  const auto table = test::random_values(static_cast<size_t>(vocab * hidden), table_t, seed, -3.0f, 3.0f);
  Buffer tb = test::make_buffer(dev, table_t, table, "embed_tokens");
  const auto tokens = static_cast<int64_t>(ids.size());
  Buffer ob = dev.alloc(out_t, tokens * hidden, "hidden");
  kernels::embedding(dev, tb, ob, vocab, hidden, ids);
  const std::vector<float> got = dev.download(ob);
  const std::vector<float> ref = kernels::embedding_reference(table, vocab, hidden, ids);
  ASSERT_EQ(got.size(), ref.size());
  int failures = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (got[i] != round_to(out_t, ref[i]) && ++failures <= 5)
      ADD_FAILURE() << fmt::format("embedding {} tokens x {} of {} {}->{}: element {} is {}, expected {}", tokens,
                                   hidden, vocab, dtype_name(table_t), dtype_name(out_t), i, got[i], ref[i]);
  EXPECT_EQ(failures, 0);
  dev.free(ob);
  dev.free(tb);
}

TEST(Embedding, CopiesRowsExactly) {
  Device dev(load_chip("h100"));
  uint64_t seed = 10;
  for (DType t : test::kFloatTypes)
    for (int64_t hidden : {int64_t{1}, int64_t{13}, int64_t{1024}, int64_t{kernels::kEmbeddingChunkElems},
                           int64_t{kernels::kEmbeddingChunkElems + 1}})
      for (int64_t tokens : {1, 7, 301}) {
        const int64_t vocab = hidden > 1024 ? 40 : 1000;  // keeps the tables small
        ++seed;
        check_embedding(dev, vocab, hidden, make_ids(tokens, vocab, seed), t, t, seed);
      }
}

TEST(Embedding, ConvertsToOutputDtype) {
  Device dev(load_chip("h100"));
  check_embedding(dev, 500, 96, make_ids(40, 500, 1), DType::kBF16, DType::kF32, 20);
  check_embedding(dev, 500, 96, make_ids(40, 500, 2), DType::kF32, DType::kBF16, 21);
  check_embedding(dev, 500, 96, make_ids(40, 500, 3), DType::kBF16, DType::kF16, 22);
}

TEST(Embedding, RepeatedIds) {
  Device dev(load_chip("h100"));
  check_embedding(dev, 50, 64, std::vector<int32_t>(100, 49), DType::kBF16, DType::kBF16, 30);
}

TEST(Embedding, RejectsIdOutOfRange) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  Buffer t = dev.alloc(DType::kBF16, 151936 * 16, "embed_tokens");
  Buffer o = dev.alloc(DType::kBF16, 3 * 16, "hidden");
  test::expect_error(
      [&] {
        kernels::embedding(dev, t, o, 151936, 16, {9707, 151936, 3});
      },
      {"embedding", "token 1", "id 151936", "vocab size of 151936", "0 to 151935"});
  test::expect_error([&] { kernels::embedding(dev, t, o, 151936, 16, {0, 1, -5}); }, {"embedding", "token 2", "id -5"});
}

TEST(Embedding, RejectsMismatchedSizes) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  Buffer t = dev.alloc(DType::kBF16, 100 * 16, "embed_tokens");
  Buffer o = dev.alloc(DType::kBF16, 3 * 16, "hidden");
  test::expect_error(
      [&] {
        kernels::embedding(dev, t, o, 100, 16, {1, 2});
      },
      {"embedding", "output 'hidden'", "48 elements", "[2, 16] (tokens, hidden)", "needs 32"});
  test::expect_error(
      [&] {
        kernels::embedding(dev, t, o, 101, 16, {1, 2, 3});
      },
      {"embedding", "table 'embed_tokens'", "[101, 16] (vocab, hidden)"});
  test::expect_error([&] { kernels::embedding(dev, t, o, 100, 16, {}); },
                     {"embedding", "tokens (ids.size()) = 0", "must be positive"});
}

}  // namespace
}  // namespace ppu
