// Fidelity benchmark: interactive decode latency (inter-token latency at a small, fixed concurrency)
// predicted from the model's forward in timing-only mode (models/Latency.hpp) against NVIDIA NIM's
// published AIPerf measurements for Llama-3.3-70B (Llama 3.1 70B's architecture) on two H100s, FP8,
// tensor parallel 2. Each case also shows the prediction with the decode step launched kernel by
// kernel (no captured graph), to show what the graph launch is worth.
//
//   bench_decode_latency              # table
//   bench_decode_latency --markdown   # the same as a markdown section (scripts/validate.sh -> docs/validation.md)
//
// Exit status is 0 even when a case misses its target: this prints measurements, it is not a test.
#include <fmt/format.h>

#include <chrono>
#include <cstring>

#include "FidelityReport.hpp"
#include "Reference.hpp"
#include "models/Latency.hpp"
#include "report/Table.hpp"

using namespace ppu;

int main(int argc, char** argv) {
  const bool md = argc > 1 && std::strcmp(argv[1], "--markdown") == 0;
  Table t({"node", "model", "TP", "dtype", "concurrency", "in/out", "mean ctx", "decode step ms", "prefill ms",
           "predicted ITL ms", "kernel by kernel ms", "measured ITL ms", "error", "target", "ok", "source"});
  bench::FidelityTally n;
  for (const auto& c : bench::decode_latency_cases()) {
    const auto w0 = std::chrono::steady_clock::now();
    const NodeSpec node = load_node(c.node);
    const ModelConfig cfg = load_model_config(c.model);
    LatencyOptions o;
    o.tp = c.tp;
    o.concurrency = c.concurrency;
    o.matmul_dtype = o.kv_dtype = *dtype_from_name(c.dtype);
    const LatencyEstimate e = estimate_decode_latency(node, cfg, c.input_len, c.output_len, o);
    o.graph_decode = false;
    const LatencyEstimate plain = estimate_decode_latency(node, cfg, c.input_len, c.output_len, o);
    n.sim_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
    const double err = (1e3 * e.itl_s - c.measured_itl_ms) / c.measured_itl_ms;
    const bool ok = n.add(err, c.tolerance);
    t.add_row({c.node, c.model, fmt::format("{}", c.tp), c.dtype, fmt::format("{}", c.concurrency),
               fmt::format("{}/{}", c.input_len, c.output_len), fmt::format("{:.0f}", e.mean_context),
               fmt::format("{:.2f}", 1e3 * e.decode_step_s),
               e.prefill_s > 0 ? fmt::format("{:.1f}", 1e3 * e.prefill_s) : "-", fmt::format("{:.2f}", 1e3 * e.itl_s),
               fmt::format("{:.2f}", 1e3 * plain.itl_s), fmt::format("{:.2f}", c.measured_itl_ms),
               fmt::format("{:+.1f}%", 100 * err), fmt::format("±{:.0f}%", 100 * c.tolerance), ok ? "yes" : "NO",
               c.source});
  }
  const std::string how =
      "Steady state at a fixed concurrency (models/Latency.hpp): FP8 weights, GEMM inputs and KV cache; one decode "
      "step of `concurrency` sequences with contexts spread over the generation, sampled on the device and launched "
      "as one captured graph (the first kernel pays launch_latency, the others graph_node_latency; GEMMs whose tiles "
      "leave cores idle split K); ITL = decode step + (concurrency - 1) x one prompt's prefill / (output - 1), the "
      "other requests' prefills each request waits through. \"kernel by kernel\": the same with every kernel "
      "launched on its own.";
  bench::print_fidelity_table(md, how, t, n);
  return 0;
}
