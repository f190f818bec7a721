// serve/Workload: trace parsing (the Azure CSV format, generic CSV, JSONL), the built-in traces, and
// the synthetic arrival processes' statistics.
#include <gtest/gtest.h>

#include <cmath>

#include "TestUtil.hpp"
#include "serve/Workload.hpp"

using namespace ppu::serve;
using ppu::test::error_message;

TEST(Workload, AzureCsvTimesBecomeSecondsFromTheFirstRequest) {
  const auto r = parse_trace(
      "TIMESTAMP,ContextTokens,GeneratedTokens\n"
      "2023-11-16 18:15:46.5000000,374,44\n"
      "2023-11-16 18:15:50.0000000,396,109\n"
      "2023-11-16 23:59:59.5,10,1\n"
      "2023-11-17 00:00:00.5,20,2\n",
      false, "t.csv");
  ASSERT_EQ(r.size(), 4u);
  EXPECT_DOUBLE_EQ(r[0].arrival_s, 0.0);
  EXPECT_NEAR(r[1].arrival_s, 3.5, 1e-6);
  EXPECT_EQ(r[1].input_tokens, 396);
  EXPECT_EQ(r[1].output_tokens, 109);
  EXPECT_NEAR(r[3].arrival_s - r[2].arrival_s, 1.0, 1e-6);  // across midnight
}

TEST(Workload, GenericCsvColumnsInAnyOrderAndSortedByArrival) {
  const auto r = parse_trace("output_tokens, arrival_s ,input_tokens\n5,2.0,10\n6,1.0,11\r\n7,1.0,12\n", false, "t.csv");
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].input_tokens, 11);  // stable: equal times keep file order
  EXPECT_EQ(r[1].input_tokens, 12);
  EXPECT_EQ(r[2].input_tokens, 10);
  EXPECT_DOUBLE_EQ(r[2].arrival_s, 1.0);
}

TEST(Workload, JsonlLines) {
  const auto r = parse_trace("{\"arrival_s\": 0.5, \"input_tokens\": 8, \"output_tokens\": 2}\n\n"
                             "{\"arrival_s\": 1.5, \"prompt_tokens\": 9, \"completion_tokens\": 3}\n",
                             true, "t.jsonl");
  ASSERT_EQ(r.size(), 2u);
  EXPECT_DOUBLE_EQ(r[1].arrival_s, 1.0);
  EXPECT_EQ(r[1].input_tokens, 9);
  EXPECT_EQ(r[1].output_tokens, 3);
}

TEST(Workload, BuiltinAzureTracesLoadWithTheirPublishedShape) {
  const auto conv = load_trace("azure-conv");
  ASSERT_EQ(conv.size(), 19366u);
  double in = 0, out = 0;
  for (const auto& q : conv) {
    in += static_cast<double>(q.input_tokens);
    out += static_cast<double>(q.output_tokens);
  }
  EXPECT_NEAR(in / 19366, 1154.7, 0.1);
  EXPECT_NEAR(out / 19366, 211.1, 0.1);
  EXPECT_GT(conv.back().arrival_s, 3500);  // an hour
  EXPECT_LT(conv.back().arrival_s, 3700);
  EXPECT_EQ(load_trace("azure-code").size(), 8819u);
}

TEST(Workload, BadTracesNameTheLineAndField) {
  EXPECT_EQ(error_message([] { parse_trace("a,b,c\n1,2,3\n", false, "t.csv"); }),
            "t.csv line 1: no arrival time column in the header 'a,b,c'; name it one of: timestamp, arrival, arrival_s, "
            "time");
  EXPECT_EQ(error_message([] { parse_trace("time,input_len,output_len\n1,0,3\n", false, "t.csv"); }),
            "t.csv line 2: input_len '0' must be a whole number of tokens, 1 .. 16777216");
  EXPECT_EQ(error_message([] { parse_trace("time,input_len,output_len\nsoon,5,3\n", false, "t.csv"); }),
            "t.csv line 2: time 'soon' is not a time (seconds, or YYYY-MM-DD HH:MM:SS.frac)");
  EXPECT_EQ(error_message([] { parse_trace("time,input_len,output_len\n1,5\n", false, "t.csv"); }),
            "t.csv line 2: 2 fields; the header has 3");
  EXPECT_EQ(error_message([] { parse_trace("time,input_len,output_len\n", false, "t.csv"); }),
            "t.csv: the trace holds no requests");
  EXPECT_EQ(error_message([] { parse_trace("", false, "t.csv"); }),
            "t.csv: empty; a trace needs a header line and one request per line");
  EXPECT_EQ(error_message([] { parse_trace("{\"arrival_s\": 1, \"input_tokens\": 2}\n", true, "t.jsonl"); }),
            "t.jsonl line 1: missing the output length (one of: output_tokens, completion_tokens, output_len, "
            "GeneratedTokens)");
  EXPECT_EQ(error_message([] { parse_trace("[1]\n", true, "t.jsonl"); }), "t.jsonl line 1: each line must be a JSON object");
  ppu::test::expect_error([] { load_trace("azure-chat"); },
                          {"unknown trace 'azure-chat'; built-in traces: azure-conv, azure-code"});
  ppu::test::expect_error([] { load_trace("/nonexistent/trace.csv"); }, {"/nonexistent/trace.csv", "cannot open"});
}

TEST(Workload, PoissonAndGammaArrivalsHaveTheirRateAndVariation) {
  const auto base = fixed_lengths(20000, 10, 5);
  for (const double cv : {1.0, 2.0, 0.5}) {
    const auto r = with_arrivals(base, {.rate = 4.0,
                                        .process = cv == 1.0 ? ArrivalProcess::kPoisson : ArrivalProcess::kGamma,
                                        .cv = cv,
                                        .seed = 3});
    double sum = 0, sq = 0, prev = 0;
    for (const auto& q : r) {
      const double gap = q.arrival_s - prev;
      prev = q.arrival_s;
      sum += gap;
      sq += gap * gap;
    }
    const double n = static_cast<double>(r.size()), mean = sum / n;
    const double sd = std::sqrt(sq / n - mean * mean);
    EXPECT_NEAR(mean, 0.25, 0.25 * 0.03) << "cv " << cv;  // ~4 standard errors at n = 20000
    EXPECT_NEAR(sd / mean, cv, cv * 0.06) << "cv " << cv;
    EXPECT_EQ(r[123].input_tokens, 10);
  }
  // Seeded: the same seed gives the same times.
  EXPECT_EQ(with_arrivals(base, {.rate = 2, .seed = 9})[500].arrival_s,
            with_arrivals(base, {.rate = 2, .seed = 9})[500].arrival_s);
  EXPECT_EQ(error_message([&] { with_arrivals(base, {.rate = 0}); }),
            "arrival rate 0 requests/s; valid: a finite number above 0");
  EXPECT_EQ(error_message([&] { with_arrivals(base, {.rate = 1, .process = ArrivalProcess::kGamma, .cv = -1}); }),
            "arrival cv -1; valid: a finite number above 0 (1: Poisson)");
  EXPECT_EQ(error_message([] { fixed_lengths(0, 1, 1); }),
            "fixed-length workload: 0 requests of 1 input and 1 output tokens; each must be at least 1");
}
