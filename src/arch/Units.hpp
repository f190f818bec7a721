// Physical quantities as they appear in preset files: {"value": 3.35, "unit": "TB/s"}.
//
// Each preset field has a Dimension; its value is converted to the SI base unit of that dimension
// (bytes, bytes/s, Hz, FLOP/s, seconds, watts, plain count, fraction, ratio). Decimal prefixes (KB, MB,
// GB = 1e9) and binary ones (KiB, MiB, GiB = 2^30) are both accepted; a unit of the wrong dimension
// is an error listing the valid ones.
//
//   parse_unit(Dimension::kBandwidth, "TB/s")  -> 1e12
//   parse_unit(Dimension::kBandwidth, "GB")    -> nullopt  (see valid_units(kBandwidth))
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ppu {

// kFraction is a share, at most 1 (an efficiency); kRatio a dimensionless quotient that may exceed 1
// (oversubscription 7:1, PUE 1.2). Both must be positive; a loader adds its own bounds (e.g. >= 1).
enum class Dimension : uint8_t { kCount, kFraction, kRatio, kBytes, kBandwidth, kFrequency, kFlops, kTime, kPower, kNum };

inline constexpr std::array<std::string_view, static_cast<size_t>(Dimension::kNum)> kDimensionNames = {
    "count", "fraction", "ratio", "bytes", "bandwidth", "frequency", "FLOP/s", "time", "power"};
static_assert(kDimensionNames.size() == static_cast<size_t>(Dimension::kNum));

constexpr std::string_view dimension_name(Dimension d) { return kDimensionNames[static_cast<size_t>(d)]; }

// Multiplier that converts `unit` to the SI base of `dim`; nullopt if the unit is not of that dimension.
std::optional<double> parse_unit(Dimension dim, std::string_view unit);
// "B, KB, KiB, ..." - the units accepted for `dim`, for error messages.
std::string valid_units(Dimension dim);
// The base unit's display name ("B", "B/s", "Hz", "FLOP/s", "s", "W", "count", "fraction", "ratio").
std::string_view base_unit(Dimension dim);

// The values one preset field accepts, both ends inclusive, in the SI base unit of its dimension, and
// why (shown in the error). Every numeric field of a chip, node or cluster file has one, checked at
// load before anything is sized from the value (docs/presets.md, "Valid ranges"). A range keeps the
// simulator's arithmetic finite: no count overflows an int, no size an int64 of bytes, no rate or
// fraction is so small that a simulated time overflows.
struct ValueRange {
  double min = 0.0;
  double max = 0.0;
  std::string_view why;
};

// "1 to 100000" (counts), "1 MB/s to 1000 TB/s": a range as error messages and docs write it.
std::string range_text(Dimension dim, const ValueRange& r);

// Human formatting with a suitable prefix: format_quantity(Dimension::kBytes, 8.0e10) = "80 GB".
std::string format_quantity(Dimension dim, double value_in_si);

// Parses a size such as "1GiB", "512MB", "4096", "1.5e9" into bytes. Throws UserError naming `what`.
int64_t parse_size_bytes(std::string_view text, std::string_view what);

}  // namespace ppu
