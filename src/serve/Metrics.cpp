#include "serve/Metrics.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <iterator>

#include "arch/Error.hpp"

namespace ppu::serve {

namespace {

// Seconds, 1 ms to 60 s: TTFT and TPOT both fall in it on the host and on the chip.
const std::vector<double> kTimeBounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};

void header(std::string& out, const std::string& name, const char* type, const std::string& help) {
  fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

void scalar(std::string& out, const std::string& name, const char* type, const std::string& help, double v) {
  header(out, name, type, help);
  fmt::format_to(std::back_inserter(out), "{} {}\n", name, v);
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {
  PPU_CHECK(std::is_sorted(bounds_.begin(), bounds_.end()), "histogram bounds must ascend");
}

void Histogram::observe(double v) {
  const auto i = static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  ++counts_[i];
  sum_ += v;
  ++count_;
}

std::string Histogram::render(const std::string& name, const std::string& help) const {
  std::string out;
  header(out, name, "histogram", help);
  int64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    fmt::format_to(std::back_inserter(out), "{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], cum);
  }
  fmt::format_to(std::back_inserter(out), "{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, count_, name,
                 sum_, name, count_);
  return out;
}

Metrics::Metrics() : host_ttft(kTimeBounds), host_tpot(kTimeBounds), sim_ttft(kTimeBounds), sim_tpot(kTimeBounds) {}

void Metrics::count_request(const std::string& endpoint, int status) { ++requests[{endpoint, status}]; }

void Metrics::observe_request(const RequestTimes& t) {
  prompt_tokens += t.prompt_tokens;
  generated_tokens += t.generated_tokens;
  if (t.host_ttft_s >= 0) host_ttft.observe(t.host_ttft_s);
  if (t.host_tpot_s >= 0) host_tpot.observe(t.host_tpot_s);
  if (t.sim_ttft_s >= 0) sim_ttft.observe(t.sim_ttft_s);
  if (t.sim_tpot_s >= 0) sim_tpot.observe(t.sim_tpot_s);
}

std::string Metrics::render() const {
  std::string out;
  header(out, "ppu_requests_total", "counter", "Requests answered, by endpoint and HTTP status.");
  for (const auto& [key, n] : requests)
    fmt::format_to(std::back_inserter(out), "ppu_requests_total{{endpoint=\"{}\",status=\"{}\"}} {}\n", key.first,
                   key.second, n);
  scalar(out, "ppu_prompt_tokens_total", "counter", "Prompt tokens of finished requests.", static_cast<double>(prompt_tokens));
  scalar(out, "ppu_generation_tokens_total", "counter", "Tokens generated for finished requests.",
         static_cast<double>(generated_tokens));
  scalar(out, "ppu_requests_running", "gauge", "Requests in the running batch.", static_cast<double>(running));
  scalar(out, "ppu_requests_waiting", "gauge", "Requests queued for the running batch.", static_cast<double>(waiting));
  scalar(out, "ppu_kv_blocks_used", "gauge", "KV cache blocks in use.", static_cast<double>(kv_blocks_used));
  scalar(out, "ppu_kv_blocks_total", "gauge", "KV cache blocks in all.", static_cast<double>(kv_blocks_total));
  scalar(out, "ppu_engine_steps_total", "counter", "Engine steps (forward passes of the running batch).",
         static_cast<double>(steps));
  scalar(out, "ppu_simulated_seconds_total", "counter", "The simulated chip's clock: the sum of every step's simulated time.",
         sim_clock_s);
  out += host_ttft.render("ppu_time_to_first_token_seconds", "Time to first token on this host (wall clock).");
  out += host_tpot.render("ppu_time_per_output_token_seconds", "Mean time between output tokens on this host.");
  out += sim_ttft.render("ppu_simulated_time_to_first_token_seconds", "Time to first token on the simulated chip.");
  out += sim_tpot.render("ppu_simulated_time_per_output_token_seconds",
                         "Mean time between output tokens on the simulated chip.");
  return out;
}

}  // namespace ppu::serve
