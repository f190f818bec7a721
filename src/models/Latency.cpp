#include "models/Latency.hpp"

#include <fmt/format.h>

#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "ccl/Communicator.hpp"
#include "models/Qwen3.hpp"
#include "runtime/Device.hpp"

namespace ppu {

LatencyEstimate estimate_decode_latency(const NodeSpec& node, const ModelConfig& cfg, int64_t input_len,
                                        int64_t output_len, const LatencyOptions& opt) {
  if (input_len < 1 || output_len < 2)
    throw UserError(
        fmt::format("decode latency estimate: input length {} must be at least 1 and output length {} at "
                    "least 2 (an inter-token latency needs two tokens)",
                    input_len, output_len));
  if (opt.concurrency < 1)
    throw UserError(fmt::format("decode latency estimate: concurrency {} must be at least 1", opt.concurrency));
  if (opt.tp < 1 || opt.tp > node.num_chips())
    throw UserError(fmt::format("decode latency estimate: tp {}; node '{}' has {} chips (valid: 1 to {})", opt.tp,
                                node.name, node.num_chips(), node.num_chips()));
  const int64_t B = opt.concurrency;
  Qwen3Options mo;
  mo.act_dtype = opt.act_dtype;
  mo.matmul_dtype = opt.matmul_dtype;
  mo.kv_dtype = opt.kv_dtype;
  mo.max_context = input_len + output_len;
  mo.max_batch = B;
  mo.tp_size = opt.tp;

  // One device per rank (kernel timings shared: the ranks run the same kernels), and the
  // communicator of their TP group.
  std::vector<std::unique_ptr<Device>> devices;
  std::vector<Device*> ranks;
  const auto cache = std::make_shared<TimingCache>();
  for (int r = 0; r < opt.tp; ++r) {
    devices.push_back(std::make_unique<Device>(node.chip, ExecMode::kTimingOnly));
    devices.back()->share_timing_cache(cache);
    ranks.push_back(devices.back().get());
  }
  std::unique_ptr<ccl::Communicator> comm;
  if (opt.tp > 1) comm = std::make_unique<ccl::Communicator>(node, ranks);

  LatencyEstimate e;
  double ctx_sum = 0;
  for (int64_t b = 0; b < B; ++b) ctx_sum += static_cast<double>(input_len + (2 * b + 1) * output_len / (2 * B));
  e.mean_context = ctx_sum / static_cast<double>(B);
  // Every rank runs the same passes (their collectives meet); rank 0 reports.
  std::mutex mu;
  std::exception_ptr error;
  auto run_rank = [&](int r) {
    try {
      Qwen3Options ro = mo;
      ro.tp_rank = r;
      ro.tp_comm = comm.get();
      Device& dev = *ranks[static_cast<size_t>(r)];
      Qwen3Model model(dev, cfg, Qwen3Weights::random(0), ro);
      Sampler sampler(SamplerOptions{});
      // Decode step: request b is (b + 1/2) / B of the way through its output.
      for (int64_t b = 0; b < B; ++b)
        model.assume_past(static_cast<size_t>(b), input_len + (2 * b + 1) * output_len / (2 * B));
      const auto before = model.op_times();
      double step = 0;
      {
        GraphScope graph(dev, opt.graph_decode);
        step =
            model.forward_sampled(std::vector<std::vector<int32_t>>(static_cast<size_t>(B), {0}), sampler).sim_time_s;
      }
      std::map<std::string, double> ops;
      for (const auto& [kind, s] : model.op_times()) {
        const auto it = before.find(kind);
        ops[kind] = s - (it == before.end() ? 0.0 : it->second);
      }
      // A new request's prompt, in slot 0 (only needed when other requests wait for it).
      double prefill = 0;
      if (B > 1) {
        model.assume_past(0, 0);
        prefill = model.forward_sampled({std::vector<int32_t>(static_cast<size_t>(input_len), 0)}, sampler).sim_time_s;
      }
      if (r == 0) {
        e.decode_step_s = step;
        e.decode_op_s = std::move(ops);
        e.prefill_s = prefill;
      }
    } catch (...) {
      const std::lock_guard<std::mutex> lock(mu);
      if (!error) error = std::current_exception();
    }
  };
  {
    std::vector<std::thread> threads;
    for (int r = 1; r < opt.tp; ++r) threads.emplace_back(run_rank, r);
    run_rank(0);
    for (auto& t : threads) t.join();
  }
  if (error) std::rethrow_exception(error);
  e.itl_s = e.decode_step_s + static_cast<double>(B - 1) * e.prefill_s / static_cast<double>(output_len - 1);
  return e;
}

}  // namespace ppu
