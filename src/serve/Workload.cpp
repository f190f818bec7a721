#include "serve/Workload.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <random>
#include <sstream>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "arch/Error.hpp"
#include "arch/Presets.hpp"
#include "arch/QuantityJson.hpp"

#ifndef PPU_SOURCE_DIR
#define PPU_SOURCE_DIR "."
#endif

namespace ppu::serve {

namespace {

// A trace is a user's own data and may be long (a day of a busy service): capped far above the
// shipped hour-long traces (720 KB) so that /dev/zero or a mistyped multi-GB file is refused.
constexpr uint64_t kTraceFileMaxBytes = uint64_t{512} << 20;
// Lengths beyond any model's context are a mistake in the file, not a request.
constexpr int64_t kMaxTraceTokens = int64_t{1} << 24;

struct Builtin {
  const char* name;
  const char* file;
  const char* description;
};
constexpr Builtin kBuiltins[] = {
    {"azure-conv", "data/traces/azure-llm-inference-2023/AzureLLMInferenceTrace_conv.csv",
     "Azure LLM inference, conversation service, 2023-11-16, one hour, 19,366 requests (Splitwise, ISCA 2024)"},
    {"azure-code", "data/traces/azure-llm-inference-2023/AzureLLMInferenceTrace_code.csv",
     "Azure LLM inference, coding service, 2023-11-16, one hour, 8,819 requests (Splitwise, ISCA 2024)"},
};

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
int64_t days_from_civil(int64_t y, int64_t m, int64_t d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const int64_t yoe = y - era * 400;
  const int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

bool parse_double(const std::string& s, double& out) {
  if (s.empty()) return false;
  const char* end = s.data() + s.size();
  const auto r = std::from_chars(s.data(), end, out);
  return r.ec == std::errc() && r.ptr == end && std::isfinite(out);
}

// Seconds: a plain number, or "YYYY-MM-DD HH:MM:SS[.frac]" (also with 'T').
bool parse_time(const std::string& s, double& out) {
  if (parse_double(s, out)) return true;
  int y, mo, d, h, mi;
  double sec;
  char sep;
  std::istringstream in(s);
  char dash1, dash2, colon1, colon2;
  if (!(in >> y >> dash1 >> mo >> dash2 >> d)) return false;
  if (dash1 != '-' || dash2 != '-') return false;
  in.get(sep);
  if (sep != ' ' && sep != 'T') return false;
  if (!(in >> h >> colon1 >> mi >> colon2 >> sec) || colon1 != ':' || colon2 != ':') return false;
  in >> std::ws;
  if (!in.eof()) return false;
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h < 0 || h > 23 || mi < 0 || mi > 59 || !(sec >= 0 && sec < 61)) return false;
  out = static_cast<double>(days_from_civil(y, mo, d)) * 86400.0 + h * 3600.0 + mi * 60.0 + sec;
  return true;
}

int64_t parse_tokens(const std::string& s, const std::string& where, const std::string& field) {
  int64_t v = 0;
  const char* end = s.data() + s.size();
  const auto r = std::from_chars(s.data(), end, v);
  if (r.ec != std::errc() || r.ptr != end || v < 1 || v > kMaxTraceTokens)
    throw UserError(fmt::format("{}: {} '{}' must be a whole number of tokens, 1 .. {}", where, field, s, kMaxTraceTokens));
  return v;
}

int column_of(const std::vector<std::string>& header, std::initializer_list<const char*> names) {
  for (size_t i = 0; i < header.size(); ++i)
    for (const char* n : names)
      if (lower(header[i]) == n) return static_cast<int>(i);
  return -1;
}

constexpr std::initializer_list<const char*> kArrivalNames = {"timestamp", "arrival", "arrival_s", "time"};
constexpr std::initializer_list<const char*> kInputNames = {"contexttokens", "input_tokens", "prompt_tokens", "input_len"};
constexpr std::initializer_list<const char*> kOutputNames = {"generatedtokens", "output_tokens", "completion_tokens",
                                                             "output_len"};

std::vector<std::string> split_csv_line(const std::string& line) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : line) {
    if (c == ',') {
      out.push_back(trim(cur));
      cur.clear();
    } else if (c != '\r') {
      cur += c;
    }
  }
  out.push_back(trim(cur));
  return out;
}

std::vector<RequestSpec> finish(std::vector<RequestSpec> reqs, const std::string& where) {
  if (reqs.empty()) throw UserError(fmt::format("{}: the trace holds no requests", where));
  std::stable_sort(reqs.begin(), reqs.end(), [](const RequestSpec& a, const RequestSpec& b) { return a.arrival_s < b.arrival_s; });
  const double t0 = reqs.front().arrival_s;
  for (auto& r : reqs) r.arrival_s -= t0;
  return reqs;
}

}  // namespace

std::vector<TraceInfo> builtin_traces() {
  std::vector<TraceInfo> out;
  for (const auto& b : kBuiltins) out.push_back({b.name, b.description});
  return out;
}

std::vector<RequestSpec> parse_trace(const std::string& text, bool jsonl, const std::string& where) {
  std::vector<RequestSpec> reqs;
  std::istringstream in(text);
  std::string line;
  int64_t lineno = 0;
  if (jsonl) {
    while (std::getline(in, line)) {
      ++lineno;
      if (trim(line).empty()) continue;
      const std::string at = fmt::format("{} line {}", where, lineno);
      const nlohmann::json j = parse_json_text(line, at);
      if (!j.is_object()) throw UserError(fmt::format("{}: each line must be a JSON object", at));
      const auto field = [&](std::initializer_list<const char*> names, const char* what) -> const nlohmann::json& {
        for (const char* n : names)
          if (j.contains(n)) return j.at(n);
        throw UserError(fmt::format("{}: missing {} (one of: {})", at, what, fmt::join(names, ", ")));
      };
      const nlohmann::json& a = field({"arrival_s", "arrival", "timestamp", "time"}, "the arrival time in seconds");
      RequestSpec r;
      if (!a.is_number() || !std::isfinite(a.get<double>()))
        throw UserError(fmt::format("{}: the arrival time must be a finite number of seconds", at));
      r.arrival_s = a.get<double>();
      const auto tokens = [&](std::initializer_list<const char*> names, const char* what) {
        const nlohmann::json& v = field(names, what);
        if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > kMaxTraceTokens)
          throw UserError(fmt::format("{}: {} {} must be a whole number of tokens, 1 .. {}", at, what, v.dump(), kMaxTraceTokens));
        return v.get<int64_t>();
      };
      r.input_tokens = tokens({"input_tokens", "prompt_tokens", "input_len", "ContextTokens"}, "the input length");
      r.output_tokens = tokens({"output_tokens", "completion_tokens", "output_len", "GeneratedTokens"}, "the output length");
      reqs.push_back(r);
    }
    return finish(std::move(reqs), where);
  }
  std::vector<std::string> header;
  int ca = -1, ci = -1, co = -1;
  while (std::getline(in, line)) {
    ++lineno;
    if (trim(line).empty()) continue;
    const auto cells = split_csv_line(line);
    if (header.empty()) {
      header = cells;
      ca = column_of(header, kArrivalNames);
      ci = column_of(header, kInputNames);
      co = column_of(header, kOutputNames);
      const auto need = [&](int c, std::initializer_list<const char*> names, const char* what) {
        if (c < 0)
          throw UserError(fmt::format("{} line {}: no {} column in the header '{}'; name it one of: {}", where, lineno, what,
                                      trim(line), fmt::join(names, ", ")));
      };
      need(ca, kArrivalNames, "arrival time");
      need(ci, kInputNames, "input length");
      need(co, kOutputNames, "output length");
      continue;
    }
    const std::string at = fmt::format("{} line {}", where, lineno);
    if (cells.size() != header.size())
      throw UserError(fmt::format("{}: {} fields; the header has {}", at, cells.size(), header.size()));
    RequestSpec r;
    if (!parse_time(cells[static_cast<size_t>(ca)], r.arrival_s))
      throw UserError(fmt::format("{}: {} '{}' is not a time (seconds, or YYYY-MM-DD HH:MM:SS.frac)", at,
                                  header[static_cast<size_t>(ca)], cells[static_cast<size_t>(ca)]));
    r.input_tokens = parse_tokens(cells[static_cast<size_t>(ci)], at, header[static_cast<size_t>(ci)]);
    r.output_tokens = parse_tokens(cells[static_cast<size_t>(co)], at, header[static_cast<size_t>(co)]);
    reqs.push_back(r);
  }
  if (header.empty()) throw UserError(fmt::format("{}: empty; a trace needs a header line and one request per line", where));
  return finish(std::move(reqs), where);
}

std::vector<RequestSpec> load_trace(const std::string& name_or_path) {
  for (const auto& b : kBuiltins)
    if (name_or_path == b.name) {
      const std::string path = fmt::format("{}/{}", PPU_SOURCE_DIR, b.file);
      return parse_trace(read_input_file(path, "trace file", kTraceFileMaxBytes), false, path);
    }
  const bool is_path = name_or_path.find('/') != std::string::npos || name_or_path.find('.') != std::string::npos;
  if (!is_path) {
    std::vector<std::string> names;
    for (const auto& b : kBuiltins) names.emplace_back(b.name);
    throw UserError(fmt::format("unknown trace '{}'; built-in traces: {} (or give a path to a .csv or .jsonl file)", name_or_path,
                                fmt::join(names, ", ")));
  }
  const bool jsonl = name_or_path.size() >= 6 && lower(name_or_path.substr(name_or_path.size() - 6)) == ".jsonl";
  return parse_trace(read_input_file(name_or_path, "trace file", kTraceFileMaxBytes), jsonl, name_or_path);
}

std::vector<RequestSpec> with_arrivals(std::vector<RequestSpec> reqs, const ArrivalOptions& opt) {
  if (!(opt.rate > 0) || !std::isfinite(opt.rate))
    throw UserError(fmt::format("arrival rate {} requests/s; valid: a finite number above 0", opt.rate));
  if (opt.process == ArrivalProcess::kGamma && (!(opt.cv > 0) || !std::isfinite(opt.cv)))
    throw UserError(fmt::format("arrival cv {}; valid: a finite number above 0 (1: Poisson)", opt.cv));
  std::mt19937_64 rng(opt.seed);
  // Gaps of mean 1/rate: exponential, or gamma with shape 1/cv^2 and scale cv^2/rate.
  const double shape = 1.0 / (opt.cv * opt.cv);
  std::exponential_distribution<double> expo(opt.rate);
  std::gamma_distribution<double> gamma(shape, 1.0 / (shape * opt.rate));
  double t = 0;
  for (auto& r : reqs) {
    t += opt.process == ArrivalProcess::kPoisson ? expo(rng) : gamma(rng);
    r.arrival_s = t;
  }
  return reqs;
}

std::vector<RequestSpec> fixed_lengths(int64_t n, int64_t input_tokens, int64_t output_tokens) {
  if (n < 1 || input_tokens < 1 || output_tokens < 1)
    throw UserError(fmt::format("fixed-length workload: {} requests of {} input and {} output tokens; each must be at least 1",
                                n, input_tokens, output_tokens));
  return std::vector<RequestSpec>(static_cast<size_t>(n), RequestSpec{0.0, input_tokens, output_tokens});
}

}  // namespace ppu::serve
