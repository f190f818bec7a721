// attention_batch: several sequences (different contexts, decode and a prefill chunk) in one launch
// agree with the scalar reference per sequence; batching costs less than one launch per sequence.
#include <gtest/gtest.h>

#include <cmath>

#include "TestUtil.hpp"
#include "kernels/Attention.hpp"

namespace ppu {
namespace {

struct Seq {
  kernels::AttentionShape s;
  std::vector<float> q, k, v;
};

TEST(AttentionBatch, MatchesPerSequenceCallsAndTheReference) {
  Device dev(load_chip("h100"));
  const auto ws = kernels::make_attention_workspace(dev);
  std::vector<Seq> seqs;
  const int64_t heads = 8, kv = 2, d = 64, cap = 400;
  int seed = 1;
  for (auto [tokens, past] : std::vector<std::pair<int64_t, int64_t>>{{1, 300}, {1, 17}, {5, 40}, {1, 0}}) {
    Seq q;
    q.s = kernels::AttentionShape{tokens, heads, kv, d, cap, past, 0.0f};
    q.q = test::random_values(static_cast<size_t>(tokens * heads * d), DType::kBF16, seed++);
    q.k = test::random_values(static_cast<size_t>(cap * kv * d), DType::kBF16, seed++);
    q.v = test::random_values(static_cast<size_t>(cap * kv * d), DType::kBF16, seed++);
    seqs.push_back(q);
  }
  std::vector<kernels::AttentionBatchItem> items;
  std::vector<Buffer> single_out;
  for (auto& q : seqs) {
    kernels::AttentionBatchItem it;
    it.shape = q.s;
    it.q = dev.alloc(DType::kBF16, static_cast<int64_t>(q.q.size()), "q");
    it.k_cache = dev.alloc(DType::kBF16, static_cast<int64_t>(q.k.size()), "k");
    it.v_cache = dev.alloc(DType::kBF16, static_cast<int64_t>(q.v.size()), "v");
    it.out = dev.alloc(DType::kF32, static_cast<int64_t>(q.q.size()), "out");
    dev.upload(it.q, q.q);
    dev.upload(it.k_cache, q.k);
    dev.upload(it.v_cache, q.v);
    items.push_back(it);
  }
  const auto t = kernels::attention_batch(dev, ws, items);
  EXPECT_GT(t.time_s(), 0);
  for (size_t i = 0; i < seqs.size(); ++i) {
    const auto got = dev.download(items[i].out);
    const auto ref = kernels::attention_reference(seqs[i].s, seqs[i].q, seqs[i].k, seqs[i].v);
    // bf16 operands and bf16 P before P.V: errors of a few bf16 units of the output scale.
    double max_err = 0;
    for (size_t j = 0; j < got.size(); ++j) max_err = std::max(max_err, std::fabs(got[j] - ref[j]));
    EXPECT_LT(max_err, 2e-2) << "sequence " << i;
  }
}

TEST(AttentionBatch, OneLaunchCostsLessThanOneCallPerSequence) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  const auto ws = kernels::make_attention_workspace(dev);
  std::vector<kernels::AttentionBatchItem> items;
  double separate = 0;
  for (int i = 0; i < 16; ++i) {
    kernels::AttentionBatchItem it;
    it.shape = kernels::AttentionShape{1, 32, 8, 128, 2048, 2000, 0.0f};
    it.q = dev.alloc(DType::kBF16, 32 * 128, "q");
    it.k_cache = dev.alloc(DType::kBF16, 2048 * 8 * 128, "k");
    it.v_cache = dev.alloc(DType::kBF16, 2048 * 8 * 128, "v");
    it.out = dev.alloc(DType::kBF16, 32 * 128, "out");
    separate += kernels::attention(dev, ws, it.shape, it.q, it.k_cache, it.v_cache, it.out).time_s();
    items.push_back(it);
  }
  const double batched = kernels::attention_batch(dev, ws, items).time_s();
  EXPECT_LT(batched, 0.5 * separate);
  // Still reads every sequence's K and V once.
  const double kv_bytes = 16.0 * 2 * 2001 * 8 * 128 * 2;
  EXPECT_GT(batched, kv_bytes / dev.chip().hbm_bandwidth.value);
}

TEST(AttentionBatch, StyleAppliesToOneSequenceAndToSeveral) {
  // FlashAttention-2's style (synchronous MMAs at 2/3 of the Hopper peak, no overlap in a block) is
  // slower on a long prefill than the chip's pipelined style, whether the batch holds one sequence
  // or several, and its kernels say so.
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  const auto ws = kernels::make_attention_workspace(dev);
  for (int n : {1, 3}) {
    std::vector<kernels::AttentionBatchItem> items;
    for (int i = 0; i < n; ++i) {
      kernels::AttentionBatchItem it;
      it.shape = kernels::AttentionShape{2048, 16, 8, 128, 2048, 0, 0.0f};
      it.q = dev.alloc(DType::kBF16, 2048 * 16 * 128, "q");
      it.k_cache = dev.alloc(DType::kBF16, 2048 * 8 * 128, "k");
      it.v_cache = dev.alloc(DType::kBF16, 2048 * 8 * 128, "v");
      it.out = dev.alloc(DType::kBF16, 2048 * 16 * 128, "out");
      items.push_back(it);
    }
    const auto pipelined = kernels::attention_batch(dev, ws, items);
    const auto fa2 = kernels::attention_batch(dev, ws, items, nullptr, kernels::AttentionStyle::kFlashAttention2);
    EXPECT_EQ(pipelined.config.style, kernels::AttentionStyle::kPipelined) << n;
    EXPECT_EQ(fa2.config.style, kernels::AttentionStyle::kFlashAttention2) << n;
    EXPECT_GT(fa2.time_s(), 1.3 * pipelined.time_s()) << n;
  }
}

TEST(AttentionBatch, BadInput) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  const auto ws = kernels::make_attention_workspace(dev);
  test::expect_error([&] { kernels::attention_batch(dev, ws, {}); }, {"no sequences"});
  kernels::AttentionBatchItem a, b;
  a.shape = kernels::AttentionShape{1, 8, 2, 64, 16, 3, 0.0f};
  b.shape = kernels::AttentionShape{1, 4, 2, 64, 16, 3, 0.0f};
  for (auto* it : {&a, &b}) {
    it->q = dev.alloc(DType::kBF16, it->shape.q_heads * 64, "q");
    it->k_cache = dev.alloc(DType::kBF16, 16 * 2 * 64, "k");
    it->v_cache = dev.alloc(DType::kBF16, 16 * 2 * 64, "v");
    it->out = dev.alloc(DType::kBF16, it->shape.q_heads * 64, "out");
  }
  test::expect_error([&] { kernels::attention_batch(dev, ws, {a, b}); }, {"same q_heads"});
  b.shape.q_heads = 8;
  test::expect_error([&] { kernels::attention_batch(dev, ws, {a, b}); }, {"item 1", "'q' has 256 elements"});
}

}  // namespace
}  // namespace ppu
