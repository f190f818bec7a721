#include "models/Throughput.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "models/Qwen3.hpp"
#include "runtime/Device.hpp"

namespace ppu {

ThroughputEstimate estimate_offline_throughput(const ChipSpec& chip, const ModelConfig& cfg, int64_t input_len,
                                               int64_t output_len, const ThroughputOptions& opt) {
  if (input_len < 1 || output_len < 1)
    throw UserError(fmt::format("throughput estimate: input length {} and output length {} must both be at least 1",
                                input_len, output_len));
  if (!(opt.kv_memory_fraction > 0 && opt.kv_memory_fraction <= 1))
    throw UserError(fmt::format("throughput estimate: kv_memory_fraction {}; valid: above 0, at most 1",
                                opt.kv_memory_fraction));
  if (opt.max_batch < 1)
    throw UserError(fmt::format("throughput estimate: max_batch {} must be at least 1", opt.max_batch));
  const int64_t context = input_len + output_len;
  Qwen3Options mo;
  mo.act_dtype = opt.act_dtype;
  mo.matmul_dtype = opt.matmul_dtype;
  mo.kv_dtype = opt.kv_dtype;
  mo.max_context = context;

  ThroughputEstimate e;
  // Probe: weights, KV bytes per token and the activation peak of a prefill batch like the one the
  // estimate runs (a first guess of its size: requests whose whole caches fit the free memory).
  {
    Device dev(chip, ExecMode::kTimingOnly);
    Qwen3Model probe(dev, cfg, Qwen3Weights::random(0), mo);
    e.weight_bytes = static_cast<double>(probe.weight_bytes());
    e.kv_bytes_per_token = static_cast<double>(probe.kv_cache_bytes()) / static_cast<double>(context);
    const double free0 = static_cast<double>(dev.capacity_bytes() - dev.bytes_in_use());
    const auto guess = static_cast<int64_t>(std::clamp(
        std::floor(opt.kv_memory_fraction * free0 / (static_cast<double>(context) * e.kv_bytes_per_token)), 1.0,
        static_cast<double>(opt.max_batch)));
    const int64_t m = std::min<int64_t>(guess, (guess + output_len - 1) / output_len);
    const int64_t before = dev.bytes_in_use();
    probe.forward(std::vector<int32_t>(static_cast<size_t>(std::min<int64_t>(m * input_len, context)), 0));
    e.activation_bytes = static_cast<double>(dev.peak_bytes_in_use() - before);
  }
  const double free = static_cast<double>(chip.hbm_bytes()) - e.weight_bytes - e.activation_bytes;
  e.kv_budget_bytes = opt.kv_memory_fraction * std::max(0.0, free);
  const double per_request = static_cast<double>(context) * e.kv_bytes_per_token;
  const auto fits = static_cast<int64_t>(std::floor(e.kv_budget_bytes / per_request));
  if (fits < 1)
    throw DeviceOutOfMemory(
        fmt::format("throughput estimate: {} on {}: weights {:.2f} GB and activations {:.2f} GB leave {:.2f} GB for the "
                    "KV cache; one request of {} tokens needs {:.2f} GB",
                    cfg.name, chip.name, e.weight_bytes / 1e9, e.activation_bytes / 1e9, e.kv_budget_bytes / 1e9,
                    context, per_request / 1e9),
        static_cast<int64_t>(per_request), static_cast<int64_t>(e.weight_bytes + e.activation_bytes),
        static_cast<int64_t>(chip.hbm_bytes()));
  e.batch = std::min(fits, opt.max_batch);
  e.batch_limit = fits <= opt.max_batch ? "KV cache memory" : "max_batch";

  Device dev(chip, ExecMode::kTimingOnly);
  mo.max_batch = e.batch;
  Qwen3Model model(dev, cfg, Qwen3Weights::random(0), mo);
  // Decode step: request b is (b + 1/2) / batch of the way through its output.
  double ctx_sum = 0;
  for (int64_t b = 0; b < e.batch; ++b) {
    const int64_t done = (2 * b + 1) * output_len / (2 * e.batch);
    model.assume_past(static_cast<size_t>(b), input_len + done);
    ctx_sum += static_cast<double>(input_len + done);
  }
  e.mean_context = ctx_sum / static_cast<double>(e.batch);
  const auto before = model.op_times();
  e.decode_step_s = model.forward_batch(std::vector<std::vector<int32_t>>(static_cast<size_t>(e.batch), {0})).sim_time_s;
  for (const auto& [kind, s] : model.op_times()) {
    const auto it = before.find(kind);
    e.decode_op_s[kind] = s - (it == before.end() ? 0.0 : it->second);
  }
  // Prefill of the requests that replace the finished ones.
  e.prefill_batch = std::clamp<int64_t>((e.batch + output_len - 1) / output_len, 1, e.batch);
  for (int64_t b = 0; b < e.prefill_batch; ++b) model.assume_past(static_cast<size_t>(b), 0);
  const double t_pre =
      model
          .forward_batch(std::vector<std::vector<int32_t>>(static_cast<size_t>(e.prefill_batch),
                                                           std::vector<int32_t>(static_cast<size_t>(input_len), 0)))
          .sim_time_s;
  e.prefill_s_per_request = t_pre / static_cast<double>(e.prefill_batch);
  const double step = e.decode_step_s + static_cast<double>(e.batch) / static_cast<double>(output_len) *
                                            e.prefill_s_per_request;
  e.output_tokens_per_s = static_cast<double>(e.batch) / step;
  return e;
}

}  // namespace ppu
