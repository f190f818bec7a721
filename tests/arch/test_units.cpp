// Tests of arch/Units: the unit table of every dimension (as documented in docs/presets.md),
// valid_units listings, ratio vs fraction limits, and parse_size_bytes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "TestUtil.hpp"
#include "arch/QuantityJson.hpp"
#include "arch/Units.hpp"

namespace ppu {
namespace {

struct UnitCase {
  Dimension dim;
  std::vector<std::pair<std::string, double>> units;  // unit -> multiplier to the SI base
};

// The table of docs/presets.md ("Units"), written out independently of src/arch/Units.cpp.
const std::vector<UnitCase>& documented_units() {
  static const std::vector<UnitCase> t = {
      {Dimension::kCount, {{"count", 1}}},
      {Dimension::kFraction, {{"fraction", 1}, {"%", 0.01}}},
      {Dimension::kRatio, {{"ratio", 1}}},
      {Dimension::kBytes,
       {{"B", 1},
        {"KB", 1e3},
        {"MB", 1e6},
        {"GB", 1e9},
        {"TB", 1e12},
        {"KiB", 1024},
        {"MiB", 1024.0 * 1024},
        {"GiB", 1024.0 * 1024 * 1024},
        {"TiB", 1024.0 * 1024 * 1024 * 1024}}},
      {Dimension::kBandwidth,
       {{"B/s", 1}, {"KB/s", 1e3}, {"MB/s", 1e6}, {"GB/s", 1e9}, {"TB/s", 1e12}, {"GiB/s", 1024.0 * 1024 * 1024},
        {"Gb/s", 1e9 / 8}}},
      {Dimension::kFrequency, {{"Hz", 1}, {"kHz", 1e3}, {"MHz", 1e6}, {"GHz", 1e9}}},
      {Dimension::kFlops,
       {{"FLOPS", 1}, {"GFLOPS", 1e9}, {"TFLOPS", 1e12}, {"PFLOPS", 1e15}, {"OPS", 1}, {"GOPS", 1e9}, {"TOPS", 1e12}}},
      {Dimension::kTime, {{"s", 1}, {"ms", 1e-3}, {"us", 1e-6}, {"ns", 1e-9}}},
      {Dimension::kPower, {{"W", 1}, {"kW", 1e3}}},
  };
  return t;
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t next = s.find(", ", pos);
    if (next == std::string::npos) next = s.size();
    out.push_back(s.substr(pos, next - pos));
    pos = next + 2;
  }
  return out;
}

TEST(Units, EveryDocumentedUnitParsesWithItsMultiplier) {
  ASSERT_EQ(documented_units().size(), static_cast<size_t>(Dimension::kNum)) << "a dimension is missing here";
  for (const auto& c : documented_units()) {
    for (const auto& [unit, mult] : c.units) {
      const auto got = parse_unit(c.dim, unit);
      ASSERT_TRUE(got.has_value()) << dimension_name(c.dim) << ": '" << unit << "'";
      EXPECT_DOUBLE_EQ(*got, mult) << dimension_name(c.dim) << ": '" << unit << "'";
    }
  }
}

TEST(Units, UnitsOfOtherDimensionsAreRejected) {
  // Every documented unit is valid for its own dimension only (no unit name is shared).
  for (const auto& c : documented_units())
    for (const auto& other : documented_units()) {
      if (other.dim == c.dim) continue;
      for (const auto& [unit, mult] : other.units)
        EXPECT_FALSE(parse_unit(c.dim, unit).has_value())
            << "'" << unit << "' (a " << dimension_name(other.dim) << " unit) accepted as " << dimension_name(c.dim);
    }
  // Case matters: bits are not bytes, and misspellings are not units.
  EXPECT_FALSE(parse_unit(Dimension::kBandwidth, "gb/s").has_value());
  EXPECT_FALSE(parse_unit(Dimension::kBytes, "gib").has_value());
  EXPECT_FALSE(parse_unit(Dimension::kFrequency, "ghz").has_value());
  EXPECT_FALSE(parse_unit(Dimension::kBytes, "").has_value());
  EXPECT_FALSE(parse_unit(Dimension::kBandwidth, "GB").has_value());
  EXPECT_FALSE(parse_unit(Dimension::kTime, "sec").has_value());
}

TEST(Units, ValidUnitsListsExactlyTheAcceptedUnits) {
  for (const auto& c : documented_units()) {
    const auto listed = split_list(valid_units(c.dim));
    EXPECT_EQ(listed.size(), c.units.size()) << dimension_name(c.dim) << ": " << valid_units(c.dim);
    for (const auto& u : listed) EXPECT_TRUE(parse_unit(c.dim, u).has_value()) << dimension_name(c.dim) << " lists '" << u << "'";
    for (const auto& [unit, mult] : c.units)
      EXPECT_NE(std::find(listed.begin(), listed.end(), unit), listed.end())
          << dimension_name(c.dim) << " does not list '" << unit << "'";
  }
}

TEST(Units, BaseUnitHasMultiplierOne) {
  for (const auto& c : documented_units()) {
    const auto m = parse_unit(c.dim, std::string(base_unit(c.dim)));
    ASSERT_TRUE(m.has_value()) << dimension_name(c.dim);
    EXPECT_EQ(*m, 1.0) << dimension_name(c.dim);
  }
}

TEST(Units, FormatQuantityExampleFromHeader) {
  EXPECT_EQ(format_quantity(Dimension::kBytes, 8.0e10), "80 GB");
}

TEST(Units, RatioMayExceedOneFractionMayNot) {
  // Oversubscription 7:1 and PUE 1.2 are ratios; efficiencies are fractions (at most 1).
  const auto q = [](double v, const char* unit) { return nlohmann::json{{"value", v}, {"unit", unit}, {"assumed", "t"}}; };
  EXPECT_DOUBLE_EQ(parse_quantity(q(7, "ratio"), "oversubscription", Dimension::kRatio, "x.json").value, 7.0);
  EXPECT_DOUBLE_EQ(parse_quantity(q(0.5, "ratio"), "r", Dimension::kRatio, "x.json").value, 0.5);
  test::expect_error([&] { parse_quantity(q(1.2, "fraction"), "eff", Dimension::kFraction, "x.json"); }, {"at most 1"});
  test::expect_error([&] { parse_quantity(q(0, "ratio"), "pue", Dimension::kRatio, "x.json"); },
                     {"field 'pue'", "must be positive"});
  test::expect_error([&] { parse_quantity(q(1.2, "%"), "pue", Dimension::kRatio, "x.json"); },
                     {"unit '%' is not a ratio unit", "valid: ratio"});
  EXPECT_EQ(base_unit(Dimension::kRatio), "ratio");
  EXPECT_EQ(format_quantity(Dimension::kRatio, 1.067), "1.067");
}

TEST(ParseSizeBytes, AcceptsNumbersWithOptionalUnits) {
  EXPECT_EQ(parse_size_bytes("1GiB", "size"), int64_t{1} << 30);
  EXPECT_EQ(parse_size_bytes("512MB", "size"), int64_t{512'000'000});
  EXPECT_EQ(parse_size_bytes("4096", "size"), int64_t{4096});
  EXPECT_EQ(parse_size_bytes("1.5e9", "size"), int64_t{1'500'000'000});
  EXPECT_EQ(parse_size_bytes("2 KiB", "size"), int64_t{2048});
  EXPECT_EQ(parse_size_bytes("96GB", "size"), int64_t{96'000'000'000});
  EXPECT_EQ(parse_size_bytes("1B", "size"), int64_t{1});
  EXPECT_EQ(parse_size_bytes("0.5KB", "size"), int64_t{500});
}

TEST(ParseSizeBytes, RejectsWhatIsNotASize) {
  // Each error names what was being parsed and the offending text.
  for (const char* bad : {"abc", "0", "-5", "", "12XB", "GB", "inf", "1e30GB", "0.1", "5 GB/s"}) {
    SCOPED_TRACE(bad);
    test::expect_error([&] { parse_size_bytes(bad, "--memory"); }, {"--memory", std::string("'") + bad + "'"});
  }
  // An unknown unit's message lists the valid ones.
  test::expect_error([] { parse_size_bytes("12XB", "--memory"); }, {"KiB", "GiB", "MB"});
}

}  // namespace
}  // namespace ppu
