// Workload: the requests a serving simulation replays - arrival times with prompt and output
// lengths - from a trace file, a built-in trace, or a synthetic arrival process.
//
// Traces:
//  * built-in by name: "azure-conv" and "azure-code", Microsoft's Azure LLM inference traces of
//    November 2023 (one hour each of a conversation service, 19,366 requests, and a coding service,
//    8,819; Patel et al., "Splitwise: Efficient Generative LLM Inference Using Phase Splitting", ISCA
//    2024; CC BY 4.0), shipped in data/traces/;
//  * a CSV file with a header naming an arrival column (TIMESTAMP, arrival, arrival_s, time:
//    seconds, or "YYYY-MM-DD HH:MM:SS[.frac]" as the Azure files write it), an input-length column
//    (ContextTokens, input_tokens, prompt_tokens, input_len) and an output-length column
//    (GeneratedTokens, output_tokens, completion_tokens, output_len), in any order, case-insensitive;
//  * a JSONL file (.jsonl): one object per line with the same keys (arrival in seconds).
// Arrivals are made relative to the first request and sorted (stable: equal times keep file order).
//
// Synthetic arrivals (with_arrivals): a Poisson process at `rate` requests/s, or a gamma renewal
// process with coefficient of variation `cv` (cv 1 is Poisson; above 1 burstier), seeded.
//
//   auto reqs = load_trace("azure-conv");                       // real arrivals and lengths
//   reqs = with_arrivals(reqs, {.rate = 4.0, .seed = 1});       // same lengths, Poisson at 4/s
//   reqs = fixed_lengths(1000, 1024, 256);                      // 1000 requests, all arriving at 0
//
// Errors are UserErrors naming the file, the line and the field (a missing column, a length below
// 1, a time that is not a number or not finite, an empty trace).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ppu::serve {

struct RequestSpec {
  double arrival_s = 0;
  int64_t input_tokens = 1;
  int64_t output_tokens = 1;
};

// Names load_trace accepts besides paths, with a one-line description each.
struct TraceInfo {
  std::string name, description;
};
std::vector<TraceInfo> builtin_traces();

std::vector<RequestSpec> load_trace(const std::string& name_or_path);
// Parses trace text (CSV with a header, or JSONL when `jsonl`); `where` names it in errors.
std::vector<RequestSpec> parse_trace(const std::string& text, bool jsonl, const std::string& where);

enum class ArrivalProcess : uint8_t { kPoisson, kGamma };
struct ArrivalOptions {
  double rate = 1.0;  // requests per second, > 0
  ArrivalProcess process = ArrivalProcess::kPoisson;
  double cv = 1.0;    // gamma only: coefficient of variation of the gaps, > 0
  uint64_t seed = 0;
};
// The same requests (lengths, order) with new arrival times from the process, the first at its
// first gap after 0. UserError for a rate or cv that is not positive and finite.
std::vector<RequestSpec> with_arrivals(std::vector<RequestSpec> reqs, const ArrivalOptions& opt);
// `n` requests of the given lengths, all arriving at 0 (an offline batch, as trtllm-bench runs).
std::vector<RequestSpec> fixed_lengths(int64_t n, int64_t input_tokens, int64_t output_tokens);

}  // namespace ppu::serve
