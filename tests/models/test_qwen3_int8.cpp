// W8A8 inference (Qwen3Options::matmul_dtype = int8) on the tiny fixtures, against the same model in
// bf16 fed the same tokens (teacher forcing with the bf16 model's greedy choices, so that one early
// disagreement does not change every later input).
//
// Metric and tolerance: relative RMS of the logits of every forward (prefill rows and six decode
// steps) below 5%, and the greedy tokens agreeing on at least 80% of the rows. Reasoning: symmetric
// int8 with per-row scales errs by at most half a step (|x|max / 254) per element, a relative RMS of
// about 0.3% per quantised GEMM input for roughly uniform rows; a Qwen3 layer has 4 quantised GEMM
// inputs (qkv, o, gate/up, down) and errors grow through the layers and the random-looking fixture
// weights, so the logits land at 1-3% (measured: see the assertion messages); tokens whose two best
// logits nearly tie may flip, so agreement is asserted at 80%, not 100%.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "TestUtil.hpp"
#include "models/ModelConfig.hpp"
#include "models/Qwen3.hpp"

namespace ppu {
namespace {

int32_t argmax_row(const std::vector<float>& logits, size_t row, size_t vocab) {
  const auto first = logits.begin() + static_cast<std::ptrdiff_t>(row * vocab);
  return static_cast<int32_t>(std::max_element(first, first + static_cast<std::ptrdiff_t>(vocab)) - first);
}

std::unique_ptr<Qwen3Model> tiny(Device& dev, const char* fixture, DType mm) {
  const std::string dir = test::fixture(fixture);
  Qwen3Options o;
  o.max_batch = 2;
  o.max_context = 32;
  o.matmul_dtype = mm;
  return std::make_unique<Qwen3Model>(dev, load_model_config(dir), Qwen3Weights::from_checkpoint(dir), o);
}

void compare_int8_with_bf16(const char* fixture) {
  Device d16(load_chip("zhenwu-810e"), ExecMode::kFunctional, 1), d8(load_chip("zhenwu-810e"), ExecMode::kFunctional, 1);
  auto m16 = tiny(d16, fixture, DType::kBF16);
  auto m8 = tiny(d8, fixture, DType::kI8);
  const auto vocab = static_cast<size_t>(m16->config().vocab_size);
  std::vector<std::vector<int32_t>> seqs = {{5, 17, 300, 42, 9, 77, 1, 8, 123, 456, 3}, {200, 3, 11, 12}};
  int agree = 0, rows = 0;
  double worst = 0;
  for (int step = 0; step < 7; ++step) {
    const ForwardResult r16 = m16->forward_slots(seqs, {0, 1});
    const ForwardResult r8 = m8->forward_slots(seqs, {0, 1});
    ASSERT_EQ(r16.logits.size(), r8.logits.size());
    const double e = test::rel_rms(r8.logits, r16.logits);
    worst = std::max(worst, e);
    EXPECT_LT(e, 0.05) << fixture << " step " << step;
    for (size_t b = 0; b < seqs.size(); ++b) {
      const int32_t t16 = argmax_row(r16.logits, b, vocab);
      agree += argmax_row(r8.logits, b, vocab) == t16;
      ++rows;
      seqs[b] = {t16};
    }
  }
  EXPECT_GE(agree * 10, rows * 8) << fixture << ": greedy tokens agree on " << agree << " of " << rows;
  EXPECT_GT(worst, 0.0) << "int8 must differ from bf16 somewhere, or the int8 path did not run";
  // The quantisation kernels ran (one per GEMM input) and the GEMMs were int8.
  bool quantized = false, w8a8 = false;
  for (const auto& rec : d8.records()) {
    quantized = quantized || rec.name.find("quantize_rows_int8") != std::string::npos;
    w8a8 = w8a8 || rec.name.find("gemm_w8a8") != std::string::npos;
  }
  EXPECT_TRUE(quantized && w8a8) << fixture;
  std::cout << fixture << ": logits relative RMS vs bf16 at most " << worst << ", greedy agreement " << agree << "/"
            << rows << "\n";
}

TEST(Qwen3Int8, DenseLogitsCloseToBf16) { compare_int8_with_bf16("qwen3-tiny"); }

TEST(Qwen3Int8, MoeLogitsCloseToBf16) { compare_int8_with_bf16("qwen3-tiny-moe"); }

TEST(Qwen3Int8, Int8KvCacheIsRefused) {
  Device dev(load_chip("h20"), ExecMode::kFunctional, 1);
  const std::string dir = test::fixture("qwen3-tiny");
  Qwen3Options o;
  o.matmul_dtype = DType::kI8;
  o.kv_dtype = DType::kI8;
  test::expect_error([&] { Qwen3Model m(dev, load_model_config(dir), Qwen3Weights::from_checkpoint(dir), o); },
                     {"KV cache dtype int8 is not supported", "W8A8"});
}

}  // namespace
}  // namespace ppu
