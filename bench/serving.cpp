// Fidelity benchmark: offline serving throughput (output tokens/s at full load) predicted from the
// model's forward in timing-only mode (models/Throughput.hpp) against TensorRT-LLM's published
// trtllm-bench figures for Llama-3.1-8B on one H100 with FP8 weights and KV cache.
//
//   bench_serving              # table
//   bench_serving --markdown   # the same as a markdown section (scripts/validate.sh -> docs/validation.md)
//
// Exit status is 0 even when a case misses its target: this prints measurements, it is not a test.
#include <fmt/format.h>

#include <chrono>
#include <cstring>

#include "FidelityReport.hpp"
#include "Reference.hpp"
#include "models/Throughput.hpp"
#include "report/Table.hpp"

using namespace ppu;

int main(int argc, char** argv) {
  const bool md = argc > 1 && std::strcmp(argv[1], "--markdown") == 0;
  Table t({"chip", "model", "in/out", "batch (limit)", "mean ctx", "decode step ms", "prefill ms/req",
           "predicted tok/s", "measured tok/s", "error", "target", "ok", "source"});
  bench::FidelityTally n;
  for (const auto& c : bench::serving_cases()) {
    const auto w0 = std::chrono::steady_clock::now();
    const ThroughputEstimate e =
        estimate_offline_throughput(load_chip(c.chip), load_model_config(c.model), c.input_len, c.output_len);
    n.sim_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
    const double err = (e.output_tokens_per_s - c.measured_tokens_per_s) / c.measured_tokens_per_s;
    const bool ok = n.add(err, c.tolerance);
    t.add_row({c.chip, c.model, fmt::format("{}/{}", c.input_len, c.output_len),
               fmt::format("{} ({})", e.batch, e.batch_limit), fmt::format("{:.0f}", e.mean_context),
               fmt::format("{:.2f}", 1e3 * e.decode_step_s), fmt::format("{:.2f}", 1e3 * e.prefill_s_per_request),
               fmt::format("{:.0f}", e.output_tokens_per_s), fmt::format("{:.0f}", c.measured_tokens_per_s),
               fmt::format("{:+.1f}%", 100 * err), fmt::format("±{:.0f}%", 100 * c.tolerance), ok ? "yes" : "NO",
               c.source});
  }
  const std::string how =
      "Steady state of in-flight batching (models/Throughput.hpp): FP8 weights, GEMM inputs and KV cache; the batch "
      "is what the KV cache holds when every admitted request reserves its whole sequence (TensorRT-LLM's "
      "GUARANTEED_NO_EVICT policy, 90% of the memory left after weights and activations), capped at 2048; the decode "
      "step runs that batch with contexts spread over the whole generation; prompts of the replacing requests are "
      "prefilled in their own pass and charged per output token.";
  bench::print_fidelity_table(md, how, t, n);
  return 0;
}
