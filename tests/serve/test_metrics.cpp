// serve/Metrics: Prometheus's text format - every sample line "name{labels} value", HELP and TYPE
// before each family, cumulative histogram buckets ending at +Inf = count, sum and count.
#include <gtest/gtest.h>

#include <regex>
#include <sstream>

#include "serve/Metrics.hpp"

using namespace ppu::serve;

TEST(Metrics, HistogramIsCumulative) {
  Histogram h({0.1, 1, 10});
  for (const double v : {0.05, 0.1, 0.5, 5.0, 50.0}) h.observe(v);
  const std::string text = h.render("x_seconds", "help");
  EXPECT_NE(text.find("# HELP x_seconds help\n# TYPE x_seconds histogram\n"), std::string::npos);
  EXPECT_NE(text.find("x_seconds_bucket{le=\"0.1\"} 2\n"), std::string::npos);  // le: at most
  EXPECT_NE(text.find("x_seconds_bucket{le=\"1\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("x_seconds_bucket{le=\"10\"} 4\n"), std::string::npos);
  EXPECT_NE(text.find("x_seconds_bucket{le=\"+Inf\"} 5\n"), std::string::npos);
  EXPECT_NE(text.find("x_seconds_sum 55.65\n"), std::string::npos);
  EXPECT_NE(text.find("x_seconds_count 5\n"), std::string::npos);
}

TEST(Metrics, EveryLineIsPrometheusText) {
  Metrics m;
  m.count_request("chat", 200);
  m.count_request("chat", 200);
  m.count_request("completions", 429);
  m.observe_request({.prompt_tokens = 10, .generated_tokens = 4, .host_ttft_s = 0.2, .host_tpot_s = 0.05,
                     .sim_ttft_s = 0.001, .sim_tpot_s = -1});
  m.running = 3;
  const std::string text = m.render();
  const std::regex sample(R"(^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [-+0-9.e]+$)");
  const std::regex comment(R"(^# (HELP [a-z_]+ .+|TYPE [a-z_]+ (counter|gauge|histogram))$)");
  std::istringstream in(text);
  std::string line;
  int samples = 0;
  while (std::getline(in, line)) {
    const bool ok = std::regex_match(line, sample) || std::regex_match(line, comment);
    EXPECT_TRUE(ok) << line;
    samples += line[0] != '#';
  }
  EXPECT_GT(samples, 60);
  EXPECT_NE(text.find("ppu_requests_total{endpoint=\"chat\",status=\"200\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("ppu_requests_total{endpoint=\"completions\",status=\"429\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("ppu_prompt_tokens_total 10\n"), std::string::npos);
  EXPECT_NE(text.find("ppu_requests_running 3\n"), std::string::npos);
  EXPECT_NE(text.find("ppu_simulated_time_per_output_token_seconds_count 0\n"), std::string::npos);  // -1: not observed
  EXPECT_NE(text.find("ppu_time_per_output_token_seconds_count 1\n"), std::string::npos);
}
