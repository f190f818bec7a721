// Qwen3Model's paged KV cache (Qwen3Options::kv_block_size, forward_paged): the same sequences
// through block tables give the contiguous forward's logits bit for bit - prefill, decode, chunks,
// scattered and out-of-order tables, block sizes 1, 4 and 16, a prompt prefix read from blocks
// another sequence wrote, tensor (and sequence) and expert parallelism over 2 chips - and every kind of bad input is a
// UserError naming it.
//
// Why bit for bit: the paged attention runs the contiguous kernel's instructions on the same values
// (kernels/PagedAttention.hpp), and the paged K/V writes are the contiguous kernels split at block
// boundaries; nothing else in the forward differs. Fixture: tests/data/qwen3-tiny.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include "Qwen3TestUtil.hpp"
#include "TestUtil.hpp"
#include "arch/NodeSpec.hpp"
#include "arch/Presets.hpp"
#include "models/Qwen3.hpp"

namespace ppu {
namespace {

using test::error_message;

const std::vector<std::vector<int32_t>> kPrompts = {
    {5, 17, 300, 42, 9, 77, 1, 8, 123, 456, 3, 14, 15}, {200, 3}, {11, 12, 13, 14, 99, 100, 101}};

Qwen3Options contiguous(int64_t batch, int64_t context) {
  Qwen3Options o;
  o.max_batch = batch;
  o.max_context = context;
  return o;
}

Qwen3Options paged(int64_t batch, int64_t context, int64_t block_size, int64_t blocks) {
  Qwen3Options o = contiguous(batch, context);
  o.kv_block_size = block_size;
  o.kv_blocks = blocks;
  return o;
}

std::unique_ptr<Qwen3Model> tiny(Device& dev, const Qwen3Options& o) {
  const std::string dir = test::fixture("qwen3-tiny");
  return std::make_unique<Qwen3Model>(dev, load_model_config(dir), Qwen3Weights::from_checkpoint(dir), o);
}

// Block tables that do not follow the positions: sequence b's k-th block is a scattered id, distinct
// across sequences, never in order (so that a wrong addressing shows).
std::vector<std::vector<int32_t>> scattered_tables(size_t seqs, int64_t blocks_each, int64_t pool) {
  std::vector<std::vector<int32_t>> t(seqs);
  int64_t next = 0;
  for (int64_t k = 0; k < blocks_each; ++k)
    for (size_t b = 0; b < seqs; ++b) t[b].push_back(static_cast<int32_t>((pool - 1) - (next++ * 7) % pool));
  return t;
}

int32_t argmax_row(const std::vector<float>& logits, size_t row, size_t vocab) {
  const auto first = logits.begin() + static_cast<std::ptrdiff_t>(row * vocab);
  return static_cast<int32_t>(std::max_element(first, first + static_cast<std::ptrdiff_t>(vocab)) - first);
}

class PagedBlockSize : public ::testing::TestWithParam<int64_t> {};

TEST_P(PagedBlockSize, ForwardEqualsContiguousBitForBit) {
  const int64_t bs = GetParam(), context = 40, per_seq = (context + bs - 1) / bs;
  Device dc(load_chip("zhenwu-810e"), ExecMode::kFunctional, 1), dp(load_chip("zhenwu-810e"), ExecMode::kFunctional, 1);
  auto c = tiny(dc, contiguous(3, context));
  int64_t pool = 3 * per_seq + 5;  // spare blocks; not a multiple of 7, so that 7k mod pool are distinct
  if (pool % 7 == 0) ++pool;
  auto p = tiny(dp, paged(3, context, bs, pool));
  EXPECT_TRUE(p->paged());
  EXPECT_EQ(p->kv_cache_bytes(), 2 * 2 * pool * bs * 2 * 32 * 2);  // K+V x layers x positions x kv heads x d x bf16
  const auto tables = scattered_tables(3, per_seq, pool);
  const auto vocab = static_cast<size_t>(c->config().vocab_size);
  // Prefill all three (in slots 2, 0, 1: the slot order does not matter), then chunks and decodes.
  std::vector<std::vector<int32_t>> seqs = kPrompts;
  ForwardResult rc = c->forward_slots(seqs, {0, 1, 2});
  ForwardResult rp = p->forward_paged(seqs, tables, {0, 0, 0});
  ASSERT_EQ(rp.rows, 3);
  ASSERT_EQ(rp.logits, rc.logits) << "prefill";
  std::vector<int64_t> past = {13, 2, 7};
  for (int step = 0; step < 6; ++step) {
    // Sequence 1 gets a chunk of 3 forced tokens at step 2 (a chunked prefill mixed with decodes).
    for (size_t b = 0; b < 3; ++b) seqs[b] = {argmax_row(rc.logits, b, vocab)};
    if (step == 2) seqs[1] = {seqs[1][0], 40, 41};
    rc = c->forward_slots(seqs, {0, 1, 2});
    rp = p->forward_paged(seqs, tables, past);
    ASSERT_EQ(rp.logits, rc.logits) << "step " << step;
    for (size_t b = 0; b < 3; ++b) past[b] += static_cast<int64_t>(seqs[b].size());
  }
  // One sequence alone, continuing (a batch of 1 is the same path).
  rc = c->forward_slots({{7}}, {2});
  rp = p->forward_paged({{7}}, {tables[2]}, {past[2]});
  EXPECT_EQ(rp.logits, rc.logits);
}

INSTANTIATE_TEST_SUITE_P(BlockSizes, PagedBlockSize, ::testing::Values(1, 4, 16),
                         [](const ::testing::TestParamInfo<int64_t>& i) { return fmt::format("block{}", i.param); });

TEST(PagedForward, APrefixReadFromBlocksAnotherSequenceWrote) {
  // Sequence A (13 tokens) writes blocks 5, 2, 9, 0 (block size 4). B's prompt starts with A's first
  // 8 tokens: its table shares A's first two blocks and it computes from position 8 on, into its
  // own blocks - what a prefix-cache hit does. Its logits equal a contiguous model's that computed
  // those 8 positions itself (an 8-token prefill), then B's suffix.
  const int64_t bs = 4;
  Device dc(load_chip("zhenwu-810e"), ExecMode::kFunctional, 1), dp(load_chip("zhenwu-810e"), ExecMode::kFunctional, 1);
  auto c = tiny(dc, contiguous(2, 32));
  auto p = tiny(dp, paged(2, 32, bs, 12));
  const std::vector<int32_t>& a = kPrompts[0];
  const std::vector<int32_t> b_suffix = {60, 61, 62, 63, 64};
  const std::vector<int32_t> ta = {5, 2, 9, 0}, tb = {5, 2, 7, 11};
  ASSERT_EQ(p->forward_paged({a}, {ta}, {0}).logits, c->forward_slots({a}, {0}).logits);
  c->forward_slots({{a.begin(), a.begin() + 8}}, {1});
  EXPECT_EQ(p->forward_paged({b_suffix}, {tb}, {8}).logits, c->forward_slots({b_suffix}, {1}).logits);
  // A goes on decoding over its own blocks, unaffected by B; both continue in one batch.
  EXPECT_EQ(p->forward_paged({{77}, {78}}, {ta, tb}, {13, 13}).logits, c->forward_slots({{77}, {78}}, {0, 1}).logits);
}

class PagedTensorParallel : public ::testing::TestWithParam<bool> {};

TEST_P(PagedTensorParallel, RanksGiveTheContiguousLogits) {
  // 2 TP shards (one kv head each), with and without sequence parallelism: the paged forward on
  // each rank equals the contiguous one on the same rank bit for bit (the same kernels and
  // collectives; each rank's pools hold its kv head).
  const NodeSpec node = load_node("zhenwu-8");
  const std::string dir = test::fixture("qwen3-tiny");
  std::vector<std::vector<float>> cont(2), pag(2);
  const auto errors = test::on_ranks(node, 2, [&](int r, Device& dev, ccl::Communicator& comm) {
    auto build = [&](Qwen3Options o) {
      o.tp_size = 2;
      o.tp_rank = r;
      o.tp_comm = &comm;
      o.sequence_parallel = GetParam();
      return std::make_unique<Qwen3Model>(dev, load_model_config(dir), Qwen3Weights::from_checkpoint(dir), o);
    };
    auto c = build(contiguous(2, 24));
    auto p = build(paged(2, 24, 4, 16));
    const std::vector<std::vector<int32_t>> t = {{3, 8, 1, 14, 6, 10}, {15, 0, 2, 9, 4, 12}};
    c->forward_slots({kPrompts[0], kPrompts[1]}, {0, 1});
    cont[static_cast<size_t>(r)] = c->forward_slots({{4}, {5, 6}}, {0, 1}).logits;
    p->forward_paged({kPrompts[0], kPrompts[1]}, t, {0, 0});
    pag[static_cast<size_t>(r)] = p->forward_paged({{4}, {5, 6}}, t, {13, 2}).logits;
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(errors[static_cast<size_t>(r)], "") << "rank " << r;
    EXPECT_FALSE(pag[static_cast<size_t>(r)].empty());
    EXPECT_EQ(pag[static_cast<size_t>(r)], cont[static_cast<size_t>(r)]) << "rank " << r;
  }
}

INSTANTIATE_TEST_SUITE_P(Tp2, PagedTensorParallel, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "sp" : "no_sp"; });

TEST(PagedForward, ExpertParallelRanksGiveTheContiguousLogits) {
  // The tiny MoE on 2 expert-parallel ranks, each with its own sequences (attention data-parallel):
  // each rank's paged forward equals its contiguous one bit for bit.
  const NodeSpec node = load_node("zhenwu-8");
  const std::string dir = test::fixture("qwen3-tiny-moe");
  std::vector<std::vector<float>> cont(2), pag(2);
  const auto errors = test::on_ranks(node, 2, [&](int r, Device& dev, ccl::Communicator& comm) {
    auto build = [&](Qwen3Options o) {
      o.ep_size = 2;
      o.ep_rank = r;
      o.ep_comm = &comm;
      return std::make_unique<Qwen3Model>(dev, load_model_config(dir), Qwen3Weights::from_checkpoint(dir), o);
    };
    auto c = build(contiguous(1, 24));
    auto p = build(paged(1, 24, 4, 8));
    const std::vector<int32_t>& prompt = kPrompts[r == 0 ? 0 : 2];
    const std::vector<int32_t> table = {7, 1, 5, 3, 0, 6};
    c->forward_slots({prompt}, {0});
    cont[static_cast<size_t>(r)] = c->forward_slots({{4, 9}}, {0}).logits;
    p->forward_paged({prompt}, {table}, {0});
    pag[static_cast<size_t>(r)] = p->forward_paged({{4, 9}}, {table}, {static_cast<int64_t>(prompt.size())}).logits;
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(errors[static_cast<size_t>(r)], "") << "rank " << r;
    EXPECT_FALSE(pag[static_cast<size_t>(r)].empty());
    EXPECT_EQ(pag[static_cast<size_t>(r)], cont[static_cast<size_t>(r)]) << "rank " << r;
  }
}

TEST(PagedForward, BadOptionsAreUserErrors) {
  Device dev(load_chip("zhenwu-810e"), ExecMode::kFunctional, 1);
  const std::string dir = test::fixture("qwen3-tiny");
  const ModelConfig cfg = load_model_config(dir);
  auto build = [&](Qwen3Options o) { Qwen3Model m(dev, cfg, Qwen3Weights::random(0), o); };
  EXPECT_EQ(error_message([&] { build(paged(1, 16, 16, 0)); }),
            fmt::format("model '{}': kv_block_size 16 and kv_blocks 0; valid: both 0 (contiguous slots) or both positive "
                        "(a paged KV cache)",
                        cfg.name));
  EXPECT_EQ(error_message([&] { build(paged(1, 16, 0, 4)); }),
            fmt::format("model '{}': kv_block_size 0 and kv_blocks 4; valid: both 0 (contiguous slots) or both positive "
                        "(a paged KV cache)",
                        cfg.name));
  EXPECT_EQ(error_message([&] { build(paged(1, 16, 12, 4)); }),
            fmt::format("model '{}': kv_block_size 12; valid: a power of two from 1 to 1024 (16 is vLLM's default)",
                        cfg.name));
  EXPECT_EQ(error_message([&] { build(paged(1, 16, 2048, 4)); }),
            fmt::format("model '{}': kv_block_size 2048; valid: a power of two from 1 to 1024 (16 is vLLM's default)",
                        cfg.name));
  EXPECT_EQ(error_message([&] { build(paged(1, 16, 16, int64_t{1} << 31)); }),
            fmt::format("model '{}': kv_blocks 2147483648; valid: 1 to 2147483647 (block ids are int32)", cfg.name));
  Qwen3Options slots = paged(2, 16, 16, 4);
  slots.slot_capacity = {8, 8};
  test::expect_error([&] { build(slots); }, {"slot_capacity is for contiguous slots"});
  Device timing(load_chip("zhenwu-810e"), ExecMode::kTimingOnly);
  Qwen3Options unfused = paged(1, 16, 16, 4);
  unfused.attention_impl = Qwen3Options::AttentionImpl::kUnfused;
  EXPECT_EQ(error_message([&] { Qwen3Model m(timing, cfg, Qwen3Weights::random(0), unfused); }),
            fmt::format("model '{}': unfused attention reads a contiguous KV cache; a paged one (kv_block_size 16) needs "
                        "the fused kernel (attention_impl kFused)",
                        cfg.name));
  // Timing only, paged: a forward runs and is timed; assume_past is refused (there is no slot).
  Qwen3Model t(timing, cfg, Qwen3Weights::random(0), paged(1, 16, 16, 4));
  EXPECT_GT(t.forward_paged({{1, 2, 3}}, {{2}}, {0}).sim_time_s, 0);
  test::expect_error([&] { t.assume_past(0, 4); }, {"assume_past is for contiguous slots"});
}

TEST(PagedForward, BadCallsAreUserErrorsNamingTheSequence) {
  Device dev(load_chip("zhenwu-810e"), ExecMode::kFunctional, 1);
  auto c = tiny(dev, contiguous(1, 16));
  auto p = tiny(dev, paged(2, 16, 4, 6));
  const std::string name = p->config().name;
  EXPECT_EQ(error_message([&] { c->forward_paged({{1}}, {{0}}, {0}); }),
            fmt::format("forward_paged: model '{}' keeps contiguous per-slot KV caches; give it a paged one "
                        "(Qwen3Options::kv_block_size and kv_blocks) or use forward_slots",
                        name));
  const std::string use_paged = fmt::format(
      "forward: model '{}' keeps a paged KV cache (Qwen3Options::kv_block_size 4); use forward_paged with each "
      "sequence's block table",
      name);
  EXPECT_EQ(error_message([&] { p->forward({1, 2}); }), use_paged);
  EXPECT_EQ(error_message([&] { p->forward_slots({{1}}, {0}); }), use_paged);
  EXPECT_EQ(error_message([&] { p->forward_batch({{1}}); }), use_paged);
  EXPECT_EQ(error_message([&] { p->forward_paged({{1}}, {{0}, {1}}, {0}); }),
            "forward_paged: 1 sequences, 2 block tables and 1 past lengths; give one of each per sequence");
  EXPECT_EQ(error_message([&] { p->forward_paged({}, {}, {}); }),
            "forward_paged: 0 sequences; this model was built for 1 to 2 (Qwen3Options::max_batch)");
  EXPECT_EQ(error_message([&] { p->forward_paged({{1}, {2}, {3}}, {{0}, {1}, {2}}, {0, 0, 0}); }),
            "forward_paged: 3 sequences; this model was built for 1 to 2 (Qwen3Options::max_batch)");
  EXPECT_EQ(error_message([&] { p->forward_paged({{1}, {}}, {{0}, {1}}, {0, 0}); }),
            "forward_paged: sequence 1 has no tokens");
  EXPECT_EQ(error_message([&] { p->forward_paged({{1}}, {{0}}, {-1}); }),
            "forward_paged: sequence 0 has past length -1; valid: 0 or more");
  EXPECT_EQ(error_message([&] { p->forward_paged({{1, 2}}, {{0, 1, 2, 3}}, {15}); }),
            "forward_paged: sequence 0: 2 tokens after 15 already in the cache exceed the context of 16 positions");
  EXPECT_EQ(error_message([&] { p->forward_paged({{1, 2}}, {{0}}, {3}); }),
            "forward_paged: sequence 0: its block table has 1 entries but positions 0 .. 4 need 2 blocks of 4");
  EXPECT_EQ(error_message([&] { p->forward_paged({{1}}, {{0, 6}}, {4}); }),
            "forward_paged: sequence 0: block table entry 1 is block 6; the pool has blocks 0 .. 5 (Qwen3Options::"
            "kv_blocks)");
  EXPECT_EQ(error_message([&] { p->forward_paged({{1}, {2}}, {{0, 3}, {1, 3}}, {4, 5}); }),
            "forward_paged: sequences 0 and 1 both write block 3");
  // Reading a block another sequence writes is not a write conflict (only blocks from past on are).
  EXPECT_NO_THROW(p->forward_paged({{1, 2, 3, 4, 5}}, {{0, 1}}, {0}));
  EXPECT_NO_THROW(p->forward_paged({{1}, {2}}, {{0, 2}, {0, 3}}, {4, 4}));
  test::expect_error([&] { p->forward_paged({{1, 100000}}, {{0}}, {0}); }, {"100000"});
}

}  // namespace
}  // namespace ppu
