// The interactive decode-latency estimate (models/Latency.hpp): the documented formula exactly
// (ITL = decode step + (concurrency - 1) x prefill / (output - 1)), the captured-graph decode step
// faster than kernel by kernel, tensor parallelism's collectives in the step, and every bad input an
// error. The tiny preset keeps each estimate to milliseconds of host time; timing only.
#include <gtest/gtest.h>

#include "TestUtil.hpp"
#include "models/Latency.hpp"

namespace ppu {
namespace {

const NodeSpec& node() {
  static const NodeSpec n = load_node("h100-dgx");
  return n;
}

TEST(DecodeLatency, AtConcurrencyOneTheItlIsTheDecodeStep) {
  const LatencyEstimate e = estimate_decode_latency(node(), load_model_config("tiny"), 100, 41);
  EXPECT_GT(e.decode_step_s, 0);
  EXPECT_EQ(e.itl_s, e.decode_step_s);
  EXPECT_EQ(e.prefill_s, 0);
  EXPECT_EQ(e.mean_context, 100 + 41 / 2);
  EXPECT_GT(e.decode_op_s.at("sampling"), 0) << "the step samples on the device";
  EXPECT_GT(e.decode_op_s.at("lm head"), 0);
}

TEST(DecodeLatency, EachRequestWaitsThroughTheOtherRequestsPrefills) {
  LatencyOptions o;
  o.concurrency = 3;
  const LatencyEstimate e = estimate_decode_latency(node(), load_model_config("tiny"), 200, 11, o);
  EXPECT_GT(e.prefill_s, 0);
  EXPECT_DOUBLE_EQ(e.itl_s, e.decode_step_s + 2 * e.prefill_s / 10);
  // Contexts spread over the generation: 200 + (2b + 1) * 11 / 6 for b = 0, 1, 2.
  EXPECT_DOUBLE_EQ(e.mean_context, (201 + 205 + 209) / 3.0);
}

TEST(DecodeLatency, TheCapturedGraphStepIsFasterThanKernelByKernel) {
  LatencyOptions o;
  const LatencyEstimate graph = estimate_decode_latency(node(), load_model_config("tiny"), 64, 16, o);
  o.graph_decode = false;
  const LatencyEstimate plain = estimate_decode_latency(node(), load_model_config("tiny"), 64, 16, o);
  const ChipSpec& c = node().chip;
  // Every kernel but the step's first saves launch_latency - graph_node_latency; a tiny model's step
  // is dozens of kernels.
  EXPECT_GT(plain.decode_step_s - graph.decode_step_s, 10 * (c.launch_latency.value - c.graph_node_latency_value()));
}

TEST(DecodeLatency, TensorParallelStepsAllReduce) {
  LatencyOptions o;
  o.tp = 2;
  o.matmul_dtype = o.kv_dtype = DType::kBF16;
  const LatencyEstimate e = estimate_decode_latency(node(), load_model_config("tiny"), 32, 8, o);
  EXPECT_GT(e.decode_op_s.at("tp all-reduce"), 0);
  EXPECT_EQ(e.itl_s, e.decode_step_s);
}

TEST(DecodeLatency, BadInputsAreUserErrors) {
  const ModelConfig tiny = load_model_config("tiny");
  test::expect_error([&] { estimate_decode_latency(node(), tiny, 0, 8); }, {"input length 0", "at least 1"});
  test::expect_error([&] { estimate_decode_latency(node(), tiny, 8, 1); }, {"output length 1", "at least 2"});
  LatencyOptions o;
  o.concurrency = 0;
  test::expect_error([&] { estimate_decode_latency(node(), tiny, 8, 8, o); }, {"concurrency 0", "at least 1"});
  o.concurrency = 1;
  o.tp = 9;
  test::expect_error([&] { estimate_decode_latency(node(), tiny, 8, 8, o); },
                     {"tp 9", "'h100-dgx' has 8 chips", "valid: 1 to 8"});
  o.tp = 3;
  test::expect_error([&] { estimate_decode_latency(node(), tiny, 8, 8, o); }, {"TP degree of 3", "valid TP"});
  o.tp = 1;
  test::expect_error([&] { estimate_decode_latency(load_node("zhenwu-8"), tiny, 8, 8, o); }, {"fp8e4m3"});
}

}  // namespace
}  // namespace ppu
