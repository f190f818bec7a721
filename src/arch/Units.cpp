#include "arch/Units.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <utility>
#include <vector>

#include "arch/Error.hpp"

namespace ppu {
namespace {

using UnitTable = std::vector<std::pair<std::string_view, double>>;

const UnitTable& units_of(Dimension d) {
  static const UnitTable count = {{"count", 1.0}};
  static const UnitTable fraction = {{"fraction", 1.0}, {"%", 0.01}};
  static const UnitTable ratio = {{"ratio", 1.0}};
  static const UnitTable bytes = {{"B", 1.0},          {"KB", 1e3},         {"MB", 1e6},
                                  {"GB", 1e9},         {"TB", 1e12},        {"KiB", 1024.0},
                                  {"MiB", 1048576.0},  {"GiB", 1073741824.0}, {"TiB", 1099511627776.0}};
  static const UnitTable bw = {{"B/s", 1.0},   {"KB/s", 1e3},  {"MB/s", 1e6},         {"GB/s", 1e9},
                               {"TB/s", 1e12}, {"GiB/s", 1073741824.0}, {"Gb/s", 1e9 / 8}};
  static const UnitTable freq = {{"Hz", 1.0}, {"kHz", 1e3}, {"MHz", 1e6}, {"GHz", 1e9}};
  // Operations per second; "OPS" units for rates of non-FLOP results (special functions).
  static const UnitTable flops = {{"FLOPS", 1.0}, {"GFLOPS", 1e9}, {"TFLOPS", 1e12}, {"PFLOPS", 1e15},
                                  {"OPS", 1.0},   {"GOPS", 1e9},   {"TOPS", 1e12}};
  static const UnitTable time = {{"s", 1.0}, {"ms", 1e-3}, {"us", 1e-6}, {"ns", 1e-9}};
  static const UnitTable power = {{"W", 1.0}, {"kW", 1e3}};
  switch (d) {
    case Dimension::kCount: return count;
    case Dimension::kFraction: return fraction;
    case Dimension::kRatio: return ratio;
    case Dimension::kBytes: return bytes;
    case Dimension::kBandwidth: return bw;
    case Dimension::kFrequency: return freq;
    case Dimension::kFlops: return flops;
    case Dimension::kTime: return time;
    case Dimension::kPower: return power;
    case Dimension::kNum: break;
  }
  return count;
}

}  // namespace

std::optional<double> parse_unit(Dimension dim, std::string_view unit) {
  for (const auto& [name, mult] : units_of(dim))
    if (name == unit) return mult;
  return std::nullopt;
}

std::string valid_units(Dimension dim) {
  std::string out;
  for (const auto& [name, mult] : units_of(dim)) {
    if (!out.empty()) out += ", ";
    out += name;
  }
  return out;
}

std::string_view base_unit(Dimension dim) { return units_of(dim).front().first; }

namespace {

// `v` in the largest unit of `dim` that writes it as a whole number ("1 KiB", "1 PB/s"), else "<v> <base>".
std::string bound_text(Dimension dim, double v) {
  if (dim == Dimension::kCount) return fmt::format("{}", static_cast<int64_t>(v));  // bounds are whole numbers
  if (dim == Dimension::kFraction || dim == Dimension::kRatio) return fmt::format("{:g}", v);
  std::string best = fmt::format("{:g} {}", v, base_unit(dim));
  double best_mult = 0.0;
  const std::string units = valid_units(dim);
  for (size_t at = 0; at < units.size();) {
    size_t end = units.find(", ", at);
    if (end == std::string::npos) end = units.size();
    const std::string unit = units.substr(at, end - at);
    at = end + 2;
    const auto mult = parse_unit(dim, unit);
    if (!mult || *mult <= best_mult || v < *mult) continue;
    const double n = v / *mult;
    if (std::fabs(n - std::round(n)) > 1e-9 * n) continue;
    best = fmt::format("{:g} {}", std::round(n), unit);
    best_mult = *mult;
  }
  return best;
}

}  // namespace

std::string range_text(Dimension dim, const ValueRange& r) {
  return fmt::format("{} to {}", bound_text(dim, r.min), bound_text(dim, r.max));
}

std::string format_quantity(Dimension dim, double v) {
  auto pick = [&](std::initializer_list<std::pair<const char*, double>> opts) {
    const char* name = nullptr;
    double mult = 1.0;
    for (const auto& [n, m] : opts) {
      if (name == nullptr || std::fabs(v) >= m) {
        name = n;
        mult = m;
      }
    }
    return fmt::format("{:.4g} {}", v / mult, name);
  };
  switch (dim) {
    case Dimension::kCount: return fmt::format("{:.6g}", v);
    case Dimension::kFraction: return fmt::format("{:.3g}", v);
    case Dimension::kRatio: return fmt::format("{:.4g}", v);
    case Dimension::kBytes: return pick({{"B", 1}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}});
    case Dimension::kBandwidth: return pick({{"B/s", 1}, {"MB/s", 1e6}, {"GB/s", 1e9}, {"TB/s", 1e12}});
    case Dimension::kFrequency: return pick({{"Hz", 1}, {"MHz", 1e6}, {"GHz", 1e9}});
    case Dimension::kFlops: return pick({{"FLOP/s", 1}, {"GFLOPS", 1e9}, {"TFLOPS", 1e12}, {"PFLOPS", 1e15}});
    case Dimension::kTime: {
      double a = std::fabs(v);
      if (a >= 1.0 || a == 0.0) return fmt::format("{:.4g} s", v);
      if (a >= 1e-3) return fmt::format("{:.4g} ms", v * 1e3);
      if (a >= 1e-6) return fmt::format("{:.4g} us", v * 1e6);
      return fmt::format("{:.4g} ns", v * 1e9);
    }
    case Dimension::kPower: return fmt::format("{:.4g} W", v);
    case Dimension::kNum: break;
  }
  return fmt::format("{}", v);
}

int64_t parse_size_bytes(std::string_view text, std::string_view what) {
  std::string s(text);
  auto fail = [&]() -> int64_t {
    throw UserError(fmt::format("{}: cannot read '{}' as a size; give a positive number with an optional unit "
                                "({}), e.g. 1GiB or 512MB",
                                what, text, valid_units(Dimension::kBytes)));
  };
  if (s.empty()) return fail();
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (end == s.c_str()) return fail();
  std::string unit(end);
  while (!unit.empty() && unit.front() == ' ') unit.erase(unit.begin());
  double mult = 1.0;
  if (!unit.empty()) {
    auto m = parse_unit(Dimension::kBytes, unit);
    if (!m) return fail();
    mult = *m;
  }
  double bytes = v * mult;
  if (!(bytes >= 1.0) || !std::isfinite(bytes) || bytes > 9.2e18)
    throw UserError(fmt::format("{}: size '{}' must be at least 1 byte and finite", what, text));
  return static_cast<int64_t>(std::llround(bytes));
}

}  // namespace ppu
