// One preset quantity object, {"value": 3.35, "unit": "TB/s", "source": "..."} (or "assumed"), parsed
// and checked the same way - dimension, unit and valid range - for every kind of preset file (chips,
// nodes, clusters); and the JSON reading all preset and config files share (overflowing numbers and
// duplicate keys are errors).
//
//   Quantity q = parse_quantity(j.at("link_bandwidth"), "link_bandwidth", Dimension::kBandwidth, "x.json");
//
// Not here: which fields a file must have (each loader's own field table).
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>

#include "arch/ChipSpec.hpp"

namespace ppu {

// Ranges shared by many fields of chip, node and cluster files (each field table names its own):
// wide enough for any real device, narrow enough that sizes fit 64-bit integers and no simulated time
// overflows (a rate or efficiency near zero makes one transfer take "forever").
inline constexpr ValueRange kBandwidthRange{1e6, 1e15,
                                            "from slower than any real link to 100 times today's fastest memory"};
inline constexpr ValueRange kFlopsRange{1e9, 1e18,
                                        "from a microcontroller's rate to 200 times today's largest FP8 peak"};
inline constexpr ValueRange kLatencyRange{1e-9, 1.0, "no launch, link or switch hop takes longer than a second"};
inline constexpr ValueRange kEfficiencyRange{0.01, 1.0,
                                             "a share of a peak rate; below 1% no device works, and near-zero "
                                             "shares make simulated times overflow"};
inline constexpr ValueRange kMemorySizeRange{1.0, 1e15,
                                             "sizes are counted in 64-bit bytes; 1 PB is thousands of times today's "
                                             "largest HBM"};

// Parses field `key` of dimension `dim`; throws UserError "<origin>: field '<key>': ..." on a wrong
// shape, unknown key, non-number, wrong unit, non-positive value, fraction above 1, non-whole count,
// a value (in SI units) outside `range` ("... 1e+19 is out of range; valid: 1 to 100000 (<why>)"), or
// a missing source/assumed (docs/presets.md, "Errors"). Loaders always pass their field's range;
// nullptr checks only the rules of the dimension.
Quantity parse_quantity(const nlohmann::json& j, std::string_view key, Dimension dim, std::string_view origin,
                        const ValueRange* range = nullptr);

// `text` parsed as JSON (any type). UserError "<origin>: not valid JSON: <parser message>" for a syntax
// error, "<origin>: not valid JSON: the number 1e999999 is beyond the range of a double (about 1.8e308)"
// (the number cut after 20 characters), and "<origin>: key '<k>' appears twice in one object; give each
// key once (...)", since a reader would silently keep only the last.
nlohmann::json parse_json_text(std::string_view text, std::string_view origin);

// A loaded quantity as a --json record (docs/json.md): {"value" (SI), "unit" (SI base unit),
// "as_written", "basis": "published"|"assumed", "source" (the citation or the reasoning)}; null when
// the quantity is absent.
nlohmann::json quantity_record(const Quantity& q);

// `text` as a JSON object: parse_json_text's errors, or UserError "<origin>: a <kind> file must be a
// JSON object".
nlohmann::json parse_preset_object(std::string_view text, std::string_view origin, std::string_view kind);

// A metadata field (name, notes, ...): a non-empty string; "" if absent and not required. UserError
// "<origin>: missing field '<key>' (a string)" or "... must be a non-empty string".
std::string preset_string(const nlohmann::json& j, const char* key, bool required, std::string_view origin);

}  // namespace ppu
