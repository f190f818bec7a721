// Metrics: what `ppu serve` reports at GET /metrics, in Prometheus's text exposition format (version
// 0.0.4): counters, gauges and histograms with HELP and TYPE lines, names prefixed "ppu_".
//
//   Metrics m;
//   m.count_request("chat", 200);
//   m.observe_request({.prompt_tokens = 12, .generated_tokens = 16, .host_ttft_s = 0.02, ...});
//   std::string text = m.render();
//
// Host times are this machine's wall clock (the emulator's speed); simulated ones are the chip's
// (serve/Server's ppu_timing). Not thread-safe: the server guards one Metrics with a mutex.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace ppu::serve {

// A cumulative histogram over fixed upper bounds (seconds), plus +Inf.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double v);
  // "# HELP", "# TYPE name histogram", name_bucket{le=...} lines, name_sum, name_count.
  std::string render(const std::string& name, const std::string& help) const;
  int64_t count() const { return count_; }

 private:
  std::vector<double> bounds_;
  std::vector<int64_t> counts_;  // per bound, not cumulative; the last is +Inf
  double sum_ = 0;
  int64_t count_ = 0;
};

struct RequestTimes {
  int64_t prompt_tokens = 0, generated_tokens = 0;
  // Negative: not known (no token; one token has no TPOT).
  double host_ttft_s = -1, host_tpot_s = -1, sim_ttft_s = -1, sim_tpot_s = -1;
};

struct Metrics {
  Metrics();
  // One answered request of `endpoint` ("chat", "completions") with HTTP `status`.
  void count_request(const std::string& endpoint, int status);
  // A finished generation's tokens and times.
  void observe_request(const RequestTimes& t);
  std::string render() const;

  std::map<std::pair<std::string, int>, int64_t> requests;
  int64_t prompt_tokens = 0, generated_tokens = 0, steps = 0;
  double sim_clock_s = 0;
  int64_t running = 0, waiting = 0, kv_blocks_used = 0, kv_blocks_total = 0;
  Histogram host_ttft, host_tpot, sim_ttft, sim_tpot;
};

}  // namespace ppu::serve
