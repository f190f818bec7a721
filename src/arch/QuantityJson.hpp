// One preset quantity object, {"value": 3.35, "unit": "TB/s", "source": "..."} (or "assumed"), parsed
// and checked the same way for every kind of preset file (chips, nodes).
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

// Parses field `key` of dimension `dim`; throws UserError "<origin>: field '<key>': ..." on a wrong
// shape, unknown key, non-number, wrong unit, non-positive value, fraction above 1, non-whole count,
// or a missing source/assumed (docs/presets.md, "Errors").
Quantity parse_quantity(const nlohmann::json& j, std::string_view key, Dimension dim, std::string_view origin);

// A loaded quantity as a --json record (docs/json.md): {"value" (SI), "unit" (SI base unit),
// "as_written", "basis": "published"|"assumed", "source" (the citation or the reasoning)}; null when
// the quantity is absent.
nlohmann::json quantity_record(const Quantity& q);

// `text` as a JSON object; UserError "<origin>: not valid JSON: ..." or "<origin>: a <kind> file must
// be a JSON object".
nlohmann::json parse_preset_object(std::string_view text, std::string_view origin, std::string_view kind);

// A metadata field (name, notes, ...): a non-empty string; "" if absent and not required. UserError
// "<origin>: missing field '<key>' (a string)" or "... must be a non-empty string".
std::string preset_string(const nlohmann::json& j, const char* key, bool required, std::string_view origin);

}  // namespace ppu
