#include "arch/ChipSpec.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <set>

#include "arch/Error.hpp"
#include "arch/Presets.hpp"
#include "arch/QuantityJson.hpp"

namespace ppu {

using json = nlohmann::json;

namespace {

// The ranges of the chip-only fields (the shared ones are in QuantityJson.hpp); docs/presets.md, "Valid ranges".
constexpr ValueRange kChipCoresRange{1, 1e5, "the timing engine keeps state per core; today's GPUs have about 150"};
constexpr ValueRange kChipClockRange{1e6, 1e11, "from slower than any accelerator to 50 times today's clocks"};
constexpr ValueRange kChipLinksRange{1, 1024, "link ports on one chip; an H100 has 18"};
constexpr ValueRange kChipPowerRange{1, 1e6, "per chip; today's boards draw up to about 1 kW"};

}  // namespace

const std::vector<ChipFieldInfo>& chip_fields() {
  static const std::vector<ChipFieldInfo> fields = {
      {"cores", Dimension::kCount, true, "cores (SMs) that run thread blocks", &ChipSpec::cores, kChipCoresRange},
      {"clock", Dimension::kFrequency, true, "clock behind the matrix peak", &ChipSpec::clock, kChipClockRange},
      {"matrix_bf16", Dimension::kFlops, true, "dense BF16 matrix peak", &ChipSpec::matrix_bf16, kFlopsRange},
      {"matrix_fp16", Dimension::kFlops, true, "dense FP16 matrix peak", &ChipSpec::matrix_fp16, kFlopsRange},
      {"matrix_fp8", Dimension::kFlops, false, "dense FP8 matrix peak (absent: no FP8)", &ChipSpec::matrix_fp8,
       kFlopsRange},
      {"matrix_int8", Dimension::kFlops, false,
       "dense INT8 matrix peak, int8 x int8 -> int32 (TOPS; absent: no INT8)", &ChipSpec::matrix_int8, kFlopsRange},
      {"vector_fp32", Dimension::kFlops, true, "non-matrix FP32 peak", &ChipSpec::vector_fp32, kFlopsRange},
      {"special_function_rate", Dimension::kFlops, false,
       "transcendental results (exp, log, rsqrt, reciprocal) per second, all cores; absent: vector_fp32 / 8",
       &ChipSpec::special_function_rate, kFlopsRange},
      {"sram_per_core", Dimension::kBytes, true, "software-managed on-core storage per core", &ChipSpec::sram_per_core,
       kMemorySizeRange},
      {"l2_size", Dimension::kBytes, true, "L2 cache capacity", &ChipSpec::l2_size, kMemorySizeRange},
      {"l2_bandwidth", Dimension::kBandwidth, true, "L2 bandwidth, all cores together", &ChipSpec::l2_bandwidth,
       kBandwidthRange},
      {"hbm_size", Dimension::kBytes, true, "device memory capacity", &ChipSpec::hbm_size, kMemorySizeRange},
      {"hbm_bandwidth", Dimension::kBandwidth, true, "peak device memory bandwidth", &ChipSpec::hbm_bandwidth,
       kBandwidthRange},
      {"host_link_bandwidth", Dimension::kBandwidth, true, "achievable host link bandwidth per direction",
       &ChipSpec::host_link_bandwidth, kBandwidthRange},
      {"host_link_latency", Dimension::kTime, true, "host link transfer latency", &ChipSpec::host_link_latency,
       kLatencyRange},
      {"chip_links", Dimension::kCount, true, "chip-to-chip link ports", &ChipSpec::chip_links, kChipLinksRange},
      {"chip_link_bandwidth", Dimension::kBandwidth, true, "bandwidth per link per direction",
       &ChipSpec::chip_link_bandwidth, kBandwidthRange},
      {"chip_link_latency", Dimension::kTime, true, "chip-to-chip link latency", &ChipSpec::chip_link_latency,
       kLatencyRange},
      {"power", Dimension::kPower, true, "board power (TDP)", &ChipSpec::power, kChipPowerRange},
      {"mma_efficiency", Dimension::kFraction, true, "sustained fraction of the 16-bit matrix peak",
       &ChipSpec::mma_efficiency, kEfficiencyRange},
      {"mma_efficiency_fp8", Dimension::kFraction, false, "sustained fraction of the FP8 matrix peak",
       &ChipSpec::mma_efficiency_fp8, kEfficiencyRange},
      {"mma_efficiency_int8", Dimension::kFraction, false, "sustained fraction of the INT8 matrix peak",
       &ChipSpec::mma_efficiency_int8, kEfficiencyRange},
      {"mma_sync_fraction", Dimension::kFraction, false,
       "fraction of the matrix peak reached by the previous generation's synchronous MMA instructions; absent: 1",
       &ChipSpec::mma_sync_fraction, kEfficiencyRange},
      {"hbm_read_efficiency", Dimension::kFraction, true, "achievable fraction of HBM peak for reads",
       &ChipSpec::hbm_read_efficiency, kEfficiencyRange},
      {"hbm_write_efficiency", Dimension::kFraction, true, "achievable fraction of HBM peak for writes",
       &ChipSpec::hbm_write_efficiency, kEfficiencyRange},
      {"dma_latency", Dimension::kTime, true, "DMA issue to first byte", &ChipSpec::dma_latency, kLatencyRange},
      {"dma_bandwidth_per_core", Dimension::kBandwidth, true,
       "most each of a core's two DMA engines (loads, stores) moves", &ChipSpec::dma_bandwidth_per_core,
       kBandwidthRange},
      {"atomic_bandwidth_per_core", Dimension::kBandwidth, false,
       "fp32 atomic additions into global memory one core sustains (a GPU SM's red.add rate); absent: "
       "dma_bandwidth_per_core",
       &ChipSpec::atomic_bandwidth_per_core, kBandwidthRange},
      {"launch_latency", Dimension::kTime, true, "kernel launch to first block", &ChipSpec::launch_latency,
       kLatencyRange},
      {"block_latency", Dimension::kTime, true, "block dispatch onto a core and retirement", &ChipSpec::block_latency,
       kLatencyRange},
      {"graph_node_latency", Dimension::kTime, false,
       "launch of a kernel that follows another inside a captured graph (CUDA graph node), in place of "
       "launch_latency; absent: launch_latency",
       &ChipSpec::graph_node_latency, kLatencyRange},
  };
  return fields;
}

bool ChipSpec::supports(DType t) const { return matrix_flops_per_s(t) > 0.0; }

double ChipSpec::matrix_flops_per_s(DType t) const {
  switch (t) {
    case DType::kBF16: return matrix_bf16.value;
    case DType::kF16: return matrix_fp16.value;
    case DType::kF8E4M3:
    case DType::kF8E5M2: return matrix_fp8.present ? matrix_fp8.value : 0.0;
    case DType::kI8: return matrix_int8.present ? matrix_int8.value : 0.0;
    default: return 0.0;
  }
}

std::vector<std::string> assumed_fields(const ChipSpec& c) {
  std::vector<std::string> out;
  for (const auto& f : chip_fields()) {
    const Quantity& q = c.*(f.member);
    if (q.present && !q.assumed.empty()) out.emplace_back(f.key);
  }
  return out;
}

std::string_view matrix_field_for(DType t) {
  if (dtype_is_fp8(t)) return "matrix_fp8";
  if (t == DType::kI8) return "matrix_int8";
  return t == DType::kF16 ? "matrix_fp16" : "matrix_bf16";
}

std::string_view mma_efficiency_field_for(DType t) {
  if (dtype_is_fp8(t)) return "mma_efficiency_fp8";
  if (t == DType::kI8) return "mma_efficiency_int8";
  return "mma_efficiency";
}

double ChipSpec::mma_efficiency_for(DType t) const {
  if (dtype_is_fp8(t)) return mma_efficiency_fp8.value;
  if (t == DType::kI8) return mma_efficiency_int8.value;
  return mma_efficiency.value;
}

std::string matrix_dtypes_of(const ChipSpec& c) {
  std::string out;
  for (DType t : {DType::kBF16, DType::kF16, DType::kF8E4M3, DType::kF8E5M2, DType::kI8})
    if (c.supports(t)) out += fmt::format("{}{}", out.empty() ? "" : ", ", dtype_name(t));
  return out;
}

std::string presets_supporting(DType t) {
  std::string out;
  for (const std::string& name : chip_preset_names())
    if (load_chip(name).supports(t)) out += fmt::format("{}{}", out.empty() ? "" : ", ", name);
  return out.empty() ? "none" : out;
}

namespace {

// What a chip's vendor publishes as the way to run FP8 models on a chip with no FP8 matrix unit.
struct Fp8Advice {
  std::string_view chip;    // preset name
  std::string_view advice;  // after "for FP8 models on <chip> "
  DType instead;            // the matrix dtype the advice asks for
};
constexpr Fp8Advice kFp8Advice[] = {
    {"zhenwu-810e", "its vendor recommends W8A8 INT8 (Alibaba Cloud PPU SDK v1.5.3 release notes)", DType::kI8},
};

}  // namespace

std::string matrix_unit_refusal(const ChipSpec& c, DType t, std::string_view flag) {
  const bool fp8 = dtype_is_fp8(t);
  const bool no_fp8_at_all = fp8 && !c.supports(DType::kF8E4M3) && !c.supports(DType::kF8E5M2);
  std::string out = fmt::format("{} has no {} matrix unit ({}it takes {}); chips with {}: {}", c.name, dtype_name(t),
                                no_fp8_at_all ? "no FP8 matrix unit at all: " : "", matrix_dtypes_of(c),
                                fp8 ? "FP8" : dtype_name(t), presets_supporting(fp8 ? DType::kF8E4M3 : t));
  if (fp8)
    for (const Fp8Advice& a : kFp8Advice) {
      if (a.chip != c.name) continue;
      out += fmt::format("; for FP8 models on {} {}", c.name, a.advice);
      if (!flag.empty() && c.supports(a.instead)) out += fmt::format(": {} {}", flag, dtype_name(a.instead));
    }
  return out;
}

double ChipSpec::special_function_ops_per_s() const {
  return special_function_rate.present ? special_function_rate.value : vector_fp32.value / 8.0;
}

namespace {

const char* const kMetaKeys[] = {"name", "display_name", "vendor", "notes"};

std::string valid_field_list() {
  std::string out;
  for (const char* m : kMetaKeys) out += fmt::format("{}{}", out.empty() ? "" : ", ", m);
  for (const auto& f : chip_fields()) out += fmt::format(", {}", f.key);
  return out;
}

}  // namespace

Quantity parse_quantity(const json& j, std::string_view key, Dimension dim, std::string_view origin,
                        const ValueRange* range) {
  struct {
    std::string_view key;
    Dimension dim;
  } f{key, dim};
  auto err = [&](const std::string& what) {
    return UserError(fmt::format("{}: field '{}': {}", origin, f.key, what));
  };
  const std::string shape = "write it as {\"value\": <number>, \"unit\": \"<unit>\", \"source\": \"...\"} "
                            "or with \"assumed\": \"<reason>\" instead of \"source\"";
  if (!j.is_object()) throw err("must be an object; " + shape);
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    if (k != "value" && k != "unit" && k != "source" && k != "assumed")
      throw err(fmt::format("unknown key '{}'; valid keys: value, unit, source, assumed", k));
  }
  Quantity q;
  q.dim = f.dim;
  q.present = true;
  if (!j.contains("value")) throw err("missing 'value'; " + shape);
  const json& v = j.at("value");
  double x = 0.0;
  if (v.is_number()) {
    x = v.get<double>();
  } else if (v.is_string()) {
    const std::string s = v.get<std::string>();
    char* end = nullptr;
    x = std::strtod(s.c_str(), &end);
    if (s.empty() || end != s.c_str() + s.size())
      throw err(fmt::format("value '{}' is not a number", s));
  } else {
    throw err(fmt::format("value {} is not a number", v.dump()));
  }
  if (!std::isfinite(x)) throw err(fmt::format("value {} is not finite", x));
  if (!j.contains("unit") || !j.at("unit").is_string())
    throw err(fmt::format("missing 'unit' (a string); valid units for {}: {}", dimension_name(f.dim),
                          valid_units(f.dim)));
  const std::string unit = j.at("unit").get<std::string>();
  auto mult = parse_unit(f.dim, unit);
  if (!mult)
    throw err(fmt::format("unit '{}' is not a {} unit; valid: {}", unit, dimension_name(f.dim), valid_units(f.dim)));
  if (x <= 0.0) throw err(fmt::format("value {} must be positive", x));
  q.value = x * *mult;
  if (f.dim == Dimension::kFraction && q.value > 1.0)
    throw err(fmt::format("value {} {} is a fraction and must be at most 1", x, unit));
  if (f.dim == Dimension::kCount && q.value != std::floor(q.value))
    throw err(fmt::format("value {} must be a whole number", x));
  // `!(a <= b)` so that an overflow to inf (1e308 GB) or an underflow to 0 (1e-308 ns) fails too.
  if (range != nullptr && !(range->min <= q.value && q.value <= range->max)) {
    const bool plain = f.dim == Dimension::kCount;
    throw err(fmt::format("{:g}{}{} is out of range; valid: {} ({})", x, plain ? "" : " ", plain ? "" : unit,
                          range_text(f.dim, *range), range->why));
  }
  q.text = fmt::format("{} {}", v.is_string() ? v.get<std::string>() : v.dump(), unit);
  auto text_of = [&](const char* key) -> std::string {
    if (!j.contains(key)) return {};
    if (!j.at(key).is_string() || j.at(key).get<std::string>().empty())
      throw err(fmt::format("'{}' must be a non-empty string", key));
    return j.at(key).get<std::string>();
  };
  q.source = text_of("source");
  q.assumed = text_of("assumed");
  if (q.source.empty() && q.assumed.empty())
    throw err("needs a \"source\" (where the number is published) or \"assumed\" (why this value)");
  return q;
}

json parse_json_text(std::string_view text, std::string_view origin) {
  // Duplicate keys are invisible once parsed (the last one wins), so each object's keys are collected
  // as the parser meets them; the first repeat is reported after the parse.
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  const json::parser_callback_t cb = [&](int, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start: open_objects.emplace_back(); break;
      case json::parse_event_t::object_end: open_objects.pop_back(); break;
      case json::parse_event_t::key:
        if (!open_objects.empty() && !open_objects.back().insert(parsed.get<std::string>()).second &&
            duplicate.empty())
          duplicate = parsed.get<std::string>();
        break;
      default: break;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text.begin(), text.end(), cb);
  } catch (const json::out_of_range& e) {
    // 406: a number beyond a double ("1e999999", 5000 digits). The parser's message quotes the whole
    // number; the first 20 characters are enough to find it.
    const std::string what = e.what();
    const size_t at = what.find('\'');
    std::string number = at == std::string::npos ? what : what.substr(at + 1, what.rfind('\'') - at - 1);
    if (number.size() > 20) number = number.substr(0, 20) + "...";
    throw UserError(fmt::format("{}: not valid JSON: the number {} is beyond the range of a double (about 1.8e308)",
                                origin, number));
  } catch (const json::exception& e) {
    throw UserError(fmt::format("{}: not valid JSON: {}", origin, e.what()));
  }
  if (!duplicate.empty())
    throw UserError(fmt::format("{}: key '{}' appears twice in one object; give each key once (a JSON reader "
                                "would silently keep only the last)",
                                origin, duplicate));
  return j;
}

json parse_preset_object(std::string_view text, std::string_view origin, std::string_view kind) {
  const json j = parse_json_text(text, origin);
  if (!j.is_object()) throw UserError(fmt::format("{}: a {} file must be a JSON object", origin, kind));
  return j;
}

json quantity_record(const Quantity& q) {
  if (!q.present) return nullptr;
  const bool assumed = !q.assumed.empty();
  return {{"value", q.value}, {"unit", std::string(base_unit(q.dim))}, {"as_written", q.text},
          {"basis", assumed ? "assumed" : "published"}, {"source", assumed ? q.assumed : q.source}};
}

std::string preset_string(const json& j, const char* key, bool required, std::string_view origin) {
  if (!j.contains(key)) {
    if (required) throw UserError(fmt::format("{}: missing field '{}' (a string)", origin, key));
    return {};
  }
  if (!j.at(key).is_string() || j.at(key).get<std::string>().empty())
    throw UserError(fmt::format("{}: field '{}' must be a non-empty string", origin, key));
  return j.at(key).get<std::string>();
}

ChipSpec parse_chip(std::string_view text, std::string_view origin) {
  const json j = parse_preset_object(text, origin, "chip");
  ChipSpec c;
  c.file = std::string(origin);
  auto meta = [&](const char* key, bool required) { return preset_string(j, key, required, origin); };
  c.name = meta("name", true);
  c.display_name = meta("display_name", true);
  c.vendor = meta("vendor", true);
  c.notes = meta("notes", false);
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    bool known = false;
    for (const char* m : kMetaKeys) known = known || k == m;
    for (const auto& f : chip_fields()) known = known || k == f.key;
    if (!known) throw UserError(fmt::format("{}: unknown field '{}'; valid fields: {}", origin, k, valid_field_list()));
  }
  for (const auto& f : chip_fields()) {
    if (!j.contains(std::string(f.key))) {
      if (f.required)
        throw UserError(fmt::format("{}: missing field '{}' ({}, in {} units such as {})", origin, f.key,
                                    f.description, dimension_name(f.dim), valid_units(f.dim)));
      continue;
    }
    c.*(f.member) = parse_quantity(j.at(std::string(f.key)), f.key, f.dim, origin, &f.range);
  }
  if (c.matrix_fp8.present != c.mma_efficiency_fp8.present)
    throw UserError(fmt::format("{}: fields 'matrix_fp8' and 'mma_efficiency_fp8' go together: give both or neither",
                                origin));
  if (c.matrix_int8.present != c.mma_efficiency_int8.present)
    throw UserError(fmt::format(
        "{}: fields 'matrix_int8' and 'mma_efficiency_int8' go together: give both or neither", origin));
  if (c.graph_node_latency.present && c.graph_node_latency.value > c.launch_latency.value)
    throw UserError(fmt::format("{}: field 'graph_node_latency' ({}) exceeds 'launch_latency' ({}); a kernel inside a "
                                "captured graph is launched at most as slowly as on its own",
                                origin, c.graph_node_latency.text, c.launch_latency.text));
  return c;
}

std::vector<std::string> chip_preset_names() { return builtin_preset_names("chips"); }

ChipSpec load_chip(std::string_view name_or_path) {
  const PresetText p = preset_text("chips", "chip", name_or_path);
  return parse_chip(p.text, p.origin);
}

}  // namespace ppu
