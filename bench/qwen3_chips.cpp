// Qwen3-0.6B (shape from its published config, no weights needed) on every chip preset, timing only:
// prefill of a 1024-token prompt (time to first token) and one decode step at that context (time
// per output token) launched as a captured graph, as serving engines replay decode steps, and the
// next one launched kernel by kernel (eager); batch 1, bf16 weights and activations.
//
// There are no published measurements for this exact case on these chips; the table is the side-by-
// side prediction the issue asks for. Decode at batch 1 reads every weight once per token, so its
// time is printed beside the HBM roof (weight + KV bytes / peak bandwidth).
#include <fmt/format.h>

#include <iostream>

#include "models/Qwen3.hpp"
#include "report/Table.hpp"

using namespace ppu;

int main(int argc, char** argv) {
  const std::string model = argc > 1 ? argv[1] : "qwen3-0.6b";
  const int64_t prompt_len = 1024;
  Table t({"chip", "prefill 1024 tok", "prefill tok/s", "decode / token", "decode tok/s", "eager decode",
           "HBM roof / token", "decode vs roof"});
  for (const auto& name : chip_preset_names()) {
    Device dev(load_chip(name), ExecMode::kTimingOnly);
    Qwen3Options o;
    o.max_context = prompt_len + 8;
    Qwen3Model m(dev, load_model_config(model), Qwen3Weights::random(0), o);
    const double prefill = m.forward(std::vector<int32_t>(prompt_len, 100)).sim_time_s;
    double decode = 0;
    {
      GraphScope graph(dev);
      decode = m.forward({7}).sim_time_s;
    }
    const double eager = m.forward({8}).sim_time_s;
    const double roof = (static_cast<double>(m.weight_bytes()) +
                         static_cast<double>(m.kv_cache_bytes()) * (prompt_len + 1) / static_cast<double>(o.max_context)) /
                        dev.chip().hbm_bandwidth.value;
    t.add_row({name, fmt::format("{:.2f} ms", prefill * 1e3), fmt::format("{:.0f}", prompt_len / prefill),
               fmt::format("{:.3f} ms", decode * 1e3), fmt::format("{:.0f}", 1.0 / decode),
               fmt::format("{:.3f} ms", eager * 1e3), fmt::format("{:.3f} ms", roof * 1e3),
               fmt::format("{:.1f}x", decode / roof)});
  }
  std::cout << fmt::format("{} timing-only prediction, batch 1, prompt {} tokens\n", model, prompt_len) << t.render()
            << "decode is far above the HBM roof at this size: each of ~300 kernels per token pays a launch (a graph\n"
               "node's, or a whole launch eager) and its own fixed costs; there is no kernel fusion yet.\n";
  return 0;
}
