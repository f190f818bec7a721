// Tests of arch/ChipSpec: the built-in presets (all load, every number has provenance, the numbers
// agree with the published relations between them), and the loader's errors for each kind of
// mistake in a chip file (docs/presets.md, "Errors"). Malformed files are made by mutating the
// built-in h100 preset with nlohmann::json and writing it under GoogleTest's temp directory.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "TestUtil.hpp"
#include "arch/ChipSpec.hpp"
#include "arch/Presets.hpp"
#include "kernels/Gemm.hpp"
#include "runtime/Device.hpp"

namespace ppu {
namespace {

using json = nlohmann::json;

bool near_rel(double a, double b, double rel) { return std::fabs(a - b) <= rel * std::fabs(b); }

// The built-in chips docs/presets.md lists.
const std::vector<std::string> kDocumentedChips = {"a100-80g", "a800", "b200", "h100", "h20", "h200", "h800",
                                                   "zhenwu-810e"};

TEST(ChipPresets, DocumentedChipsAreBuiltIn) {
  const auto names = chip_preset_names();
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  for (const auto& n : kDocumentedChips)
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n << " is documented but not built in";
}

TEST(ChipPresets, EveryPresetLoadsWithProvenanceForEveryField) {
  for (const auto& n : chip_preset_names()) {
    SCOPED_TRACE(n);
    const ChipSpec c = load_chip(n);
    EXPECT_EQ(c.name, n) << "a preset's name field equals its file name (docs/presets.md)";
    EXPECT_FALSE(c.display_name.empty());
    EXPECT_FALSE(c.vendor.empty());
    EXPECT_NE(c.file.find(n), std::string::npos);
    for (const auto& f : chip_fields()) {
      const Quantity& q = c.*(f.member);
      if (!q.present) {
        EXPECT_FALSE(f.required) << "required field " << f.key << " missing";
        continue;
      }
      EXPECT_EQ(q.dim, f.dim) << f.key;
      EXPECT_GT(q.value, 0.0) << f.key;
      EXPECT_TRUE(std::isfinite(q.value)) << f.key;
      EXPECT_FALSE(q.source.empty() && q.assumed.empty()) << f.key << " has neither source nor assumed";
      EXPECT_FALSE(q.text.empty()) << f.key;
      if (f.dim == Dimension::kFraction) {
        EXPECT_LE(q.value, 1.0) << f.key;
      }
      if (f.dim == Dimension::kCount) {
        EXPECT_EQ(q.value, std::floor(q.value)) << f.key;
      }
    }
    EXPECT_EQ(c.matrix_fp8.present, c.mma_efficiency_fp8.present);
    EXPECT_TRUE(c.supports(DType::kBF16));
    EXPECT_TRUE(c.supports(DType::kF16));
    EXPECT_FALSE(c.supports(DType::kF32)) << "fp32 inputs are not a matrix-unit type";
    EXPECT_EQ(c.supports(DType::kF8E4M3), c.matrix_fp8.present);
    EXPECT_EQ(c.supports(DType::kF8E5M2), c.matrix_fp8.present);
    EXPECT_EQ(c.matrix_int8.present, c.mma_efficiency_int8.present);
    EXPECT_EQ(c.supports(DType::kI8), c.matrix_int8.present);
    EXPECT_FALSE(c.supports(DType::kI32)) << "int32 is the accumulator, not a matrix input";
  }
}

// The INT8 peaks of the table (dense TOPS, no sparsity), and the pairing rule.
TEST(ChipPresets, Int8PeaksAndPairing) {
  const std::map<std::string, double> tops = {{"a100-80g", 624}, {"a800", 624},  {"h100", 1979}, {"h800", 1979},
                                              {"h200", 1979},    {"h20", 296},   {"b200", 4500}, {"zhenwu-810e", 240}};
  for (const auto& [name, t] : tops) {
    const ChipSpec c = load_chip(name);
    EXPECT_DOUBLE_EQ(c.matrix_flops_per_s(DType::kI8), t * 1e12) << name;
    EXPECT_EQ(matrix_field_for(DType::kI8), "matrix_int8");
    EXPECT_EQ(mma_efficiency_field_for(DType::kI8), "mma_efficiency_int8");
    EXPECT_EQ(c.mma_efficiency_for(DType::kI8), c.mma_efficiency_int8.value) << name;
  }
  EXPECT_FALSE(load_chip("zhenwu-810e").matrix_int8.assumed.empty());
  nlohmann::json j = nlohmann::json::parse(preset_text("chips", "chip", "h100").text);
  j.erase("mma_efficiency_int8");
  test::expect_error([&] { parse_chip(j.dump(), "half.json"); },
                     {"half.json: fields 'matrix_int8' and 'mma_efficiency_int8' go together: give both or neither"});
}

// Which fields docs/presets.md ("Built-in chips") says are published for each chip; every other
// field is assumed. Fields whose column is ambiguous are left out of the comparison.
TEST(ChipPresets, PublishedAndAssumedMatchTheDocs) {
  const std::set<std::string> a100 = {"cores",   "clock",     "matrix_bf16",   "matrix_fp16",         "vector_fp32",
                                      "l2_size", "hbm_size",  "hbm_bandwidth", "host_link_bandwidth", "chip_links",
                                      "chip_link_bandwidth", "power", "special_function_rate"};
  std::set<std::string> h100 = a100;
  h100.insert("matrix_fp8");
  const std::set<std::string> a800 = {"cores",    "clock",         "matrix_bf16",         "matrix_fp16", "vector_fp32",
                                      "l2_size",  "hbm_size",      "hbm_bandwidth",       "chip_link_bandwidth",
                                      "power",    "special_function_rate"};
  const std::set<std::string> h800 = {"matrix_bf16", "matrix_fp16",   "matrix_fp8",          "vector_fp32", "l2_size",
                                      "hbm_size",    "hbm_bandwidth", "chip_link_bandwidth", "power",
                                      "special_function_rate"};
  std::set<std::string> h20 = h800;
  h20.insert("cores");
  std::set<std::string> h200 = h20;
  h200.insert("clock");
  std::set<std::string> b200 = h200;
  b200.erase("special_function_rate");  // the per-SM rate is assumed to carry over from Hopper
  const std::map<std::string, std::set<std::string>> published = {
      {"a100-80g", a100}, {"a800", a800}, {"h100", h100}, {"h800", h800}, {"h20", h20},
      {"h200", h200},     {"b200", b200}, {"zhenwu-810e", {"cores", "hbm_size", "chip_links", "power"}}};
  // Every NVIDIA preset's INT8 peak is from its data sheet; the PPU's is assumed (2x its 16-bit one).
  std::map<std::string, std::set<std::string>> with_int8 = published;
  for (auto& [chip, pub] : with_int8)
    if (chip != "zhenwu-810e") pub.insert("matrix_int8");
  // The 810E's link bandwidth is derived from a published total over a published link count.
  const std::set<std::pair<std::string, std::string>> ambiguous = {{"zhenwu-810e", "chip_link_bandwidth"}};
  for (const auto& [chip, pub] : with_int8) {
    const ChipSpec c = load_chip(chip);
    for (const auto& f : chip_fields()) {
      const Quantity& q = c.*(f.member);
      if (!q.present || ambiguous.count({chip, std::string(f.key)})) continue;
      const bool is_pub = pub.count(std::string(f.key)) > 0;
      if (is_pub) {
        EXPECT_FALSE(q.source.empty()) << chip << "." << f.key << " is published per the docs but has no source";
      } else {
        // (A fitted value may also name its measurement as a source: both are allowed.)
        EXPECT_FALSE(q.assumed.empty()) << chip << "." << f.key << " is assumed per the docs but has no reasoning";
      }
    }
  }
}

TEST(ChipPresets, TensorPeakIsCoresTimesClockTimesFlopPerClock) {
  // Dense 16-bit tensor FLOP per clock per SM: Ampere GA100 2048 (1024 FMA), Hopper GH100 4096.
  const std::map<std::string, double> flop_per_clock = {
      {"a100-80g", 2048}, {"a800", 2048}, {"h100", 4096}, {"h200", 4096}, {"h800", 4096}};
  for (const auto& [chip, fpc] : flop_per_clock) {
    const ChipSpec c = load_chip(chip);
    const double derived = c.num_cores() * c.clock_hz() * fpc;
    EXPECT_TRUE(near_rel(derived, c.matrix_bf16.value, 0.01))
        << chip << ": " << c.num_cores() << " cores x " << c.clock_hz() << " Hz x " << fpc << " = " << derived
        << " but matrix_bf16 = " << c.matrix_bf16.value;
  }
  // The 810E's assumed numbers are stated to be consistent: 64 x 1.5 GHz x 1250 = 120 TFLOPS.
  const ChipSpec z = load_chip("zhenwu-810e");
  EXPECT_TRUE(near_rel(z.num_cores() * z.clock_hz() * 1250, z.matrix_bf16.value, 0.01));
}

TEST(ChipPresets, PeakRatiosArePublishedOnes) {
  for (const auto& n : kDocumentedChips) {
    const ChipSpec c = load_chip(n);
    // Every chip here runs fp16 and bf16 at the same dense rate.
    EXPECT_TRUE(near_rel(c.matrix_fp16.value, c.matrix_bf16.value, 1e-9)) << n;
    // Hopper and Blackwell run dense fp8 at twice the 16-bit rate.
    if (c.matrix_fp8.present) {
      EXPECT_TRUE(near_rel(c.matrix_fp8.value, 2 * c.matrix_bf16.value, 0.01)) << n;
    }
    EXPECT_EQ(c.matrix_flops_per_s(DType::kBF16), c.matrix_bf16.value);
    EXPECT_EQ(c.matrix_flops_per_s(DType::kF32), 0.0);
    EXPECT_EQ(c.mma_efficiency_for(DType::kBF16), c.mma_efficiency.value);
    if (c.matrix_fp8.present) {
      EXPECT_EQ(c.mma_efficiency_for(DType::kF8E5M2), c.mma_efficiency_fp8.value);
    }
    // The matrix unit is faster than the vector unit, and L2 holds less than HBM.
    EXPECT_GT(c.matrix_bf16.value, c.vector_fp32.value) << n;
    EXPECT_LT(c.l2_size.value, c.hbm_size.value) << n;
  }
  // Chips without fp8 (docs/presets.md).
  for (const char* n : {"a100-80g", "a800", "zhenwu-810e"}) EXPECT_FALSE(load_chip(n).supports(DType::kF8E4M3)) << n;
}

TEST(ChipPresets, LinkBandwidthTimesLinksIsThePublishedBidirectionalTotal) {
  // NVIDIA quotes NVLink per GPU as a bidirectional total (GB/s); T-Head quotes 700 GB/s for the 810E.
  const std::map<std::string, double> total_gb_s = {{"a100-80g", 600}, {"a800", 400}, {"h100", 900},  {"h800", 400},
                                                    {"h20", 900},      {"h200", 900}, {"b200", 1800}, {"zhenwu-810e", 700}};
  for (const auto& [chip, total] : total_gb_s) {
    const ChipSpec c = load_chip(chip);
    EXPECT_TRUE(near_rel(2 * c.chip_links.value * c.chip_link_bandwidth.value, total * 1e9, 0.01))
        << chip << ": 2 x " << c.chip_links.value << " links x " << c.chip_link_bandwidth.value << " B/s";
  }
}

TEST(ChipPresets, DmaEnginesTogetherCanSaturateHbm) {
  // The presets' stated design rule: cores x dma_bandwidth_per_core exceeds the HBM bandwidth, so a
  // full-chip kernel is limited by HBM and not by the per-core engines.
  for (const auto& n : chip_preset_names()) {
    const ChipSpec c = load_chip(n);
    EXPECT_GT(c.num_cores() * c.dma_bandwidth_per_core.value, c.hbm_bandwidth.value) << n;
  }
}

// The micro-architectural fields (docs/presets.md: calibrated once per chip, so a derived chip may
// lag its base's calibration); the rest are architectural.
bool is_calibrated_field(std::string_view key) {
  static const std::set<std::string_view> k = {"mma_efficiency", "mma_efficiency_fp8",     "hbm_read_efficiency",
                                               "hbm_write_efficiency", "dma_latency", "dma_bandwidth_per_core",
                                               "launch_latency",       "block_latency", "l2_bandwidth"};
  return k.count(key) > 0;
}

// Architectural fields of two chips on the same die are the same, except `differ`; `rel` allows
// for datasheet rounding (989 vs 989.4 TFLOPS).
void expect_same_die(const std::string& a_name, const std::string& b_name, const std::set<std::string>& differ,
                     double rel) {
  const ChipSpec a = load_chip(a_name), b = load_chip(b_name);
  for (const auto& f : chip_fields()) {
    if (differ.count(std::string(f.key)) || is_calibrated_field(f.key)) continue;
    const Quantity& qa = a.*(f.member);
    const Quantity& qb = b.*(f.member);
    EXPECT_EQ(qa.present, qb.present) << a_name << " vs " << b_name << ": " << f.key;
    EXPECT_TRUE(near_rel(qb.value, qa.value, rel))
        << a_name << " vs " << b_name << ": " << f.key << " " << qa.value << " vs " << qb.value;
  }
}

TEST(ChipPresets, DerivedChipsEqualTheirBaseExceptWhereTheyDiffer) {
  // A800: an A100 80GB with NVLink cut from 12 to 8 links' worth; nothing else changes.
  expect_same_die("a100-80g", "a800", {"chip_links"}, 0.0);
  // H800: the H100 die with the link count cut.
  expect_same_die("h100", "h800", {"chip_links"}, 0.002);
  // H200: the H100 compute die with more and faster HBM.
  expect_same_die("h100", "h200", {"hbm_size", "hbm_bandwidth"}, 0.002);
  const ChipSpec a100 = load_chip("a100-80g"), a800 = load_chip("a800");
  EXPECT_LT(a800.chip_links.value, a100.chip_links.value);
}

// The B200's L2 and per-core DMA rates (presets/chips/b200.json) are H100's scaled by the per-SM
// matrix rate. With the earlier 15 TB/s and 100 GB/s a 4096^3 BF16 GEMM came out L2-bound at 46% of
// the peak, far below what the chip measures: S. Bekman's best B200 BF16 matmul is 77.6% of 2250
// TFLOPS, and Azure's GB200 runs a 4096^3 FP8 GEMM at 57% of its peak. The GEMM must now be limited
// by the tensor cores and land between 60% and 80% of the peak (above the best measured matmul, or
// far below the GB200 point, would be as implausible as before).
TEST(ChipPresets, B200Gemm4096IsBoundByItsTensorCores) {
  const ChipSpec chip = load_chip("b200");
  Device dev(chip, ExecMode::kTimingOnly);
  const int64_t n = 4096;
  Buffer a = dev.alloc(DType::kBF16, n * n, "A"), b = dev.alloc(DType::kBF16, n * n, "B"),
         c = dev.alloc(DType::kBF16, n * n, "C");
  const KernelTiming t = kernels::gemm(dev, kernels::GemmShape{n, n, n}, a, b, c);
  const double fraction = 2.0 * n * n * n / t.time_s / chip.matrix_bf16.value;
  EXPECT_EQ(t.bound(chip), "matrix unit") << fraction;
  EXPECT_GE(fraction, 0.60);
  EXPECT_LE(fraction, 0.80);
  EXPECT_LT(t.l2_utilization(chip), t.matrix_utilization(chip));
}

// ---------------------------------------------------------------------------------------------
// Malformed chip files

json h100_json() {
  const auto text = builtin_preset("chips", "h100");
  EXPECT_TRUE(text.has_value());
  return json::parse(text.value_or("{}"));
}

// Writes `j` (or `raw` text if given) to a temp file and expects load_chip to fail with a message
// that starts with the path and contains every one of `parts`.
void expect_file_error(const std::string& file, const std::string& text, std::initializer_list<std::string> parts) {
  const std::string path = test::temp_path(file);
  test::write_file(path, text);
  try {
    (void)load_chip(path);
    ADD_FAILURE() << "loading " << file << " should fail";
  } catch (const UserError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << "message does not start with the file: " << msg;
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg << "\nmissing: " << p;
  }
}

void expect_mutation_error(const std::function<void(json&)>& mutate, std::initializer_list<std::string> parts) {
  json j = h100_json();
  mutate(j);
  expect_file_error("chip.json", j.dump(2), parts);
}

TEST(ChipFile, ValidMutatedCopyLoads) {
  // The baseline for every malformed case: the h100 text itself loads from a file, and a value
  // given as a numeric string or in another unit is converted.
  json j = h100_json();
  j["name"] = "my-h100";
  j["clock"]["value"] = "1.83";
  j["clock"]["unit"] = "GHz";
  j["mma_efficiency"] = {{"value", 83}, {"unit", "%"}, {"assumed", "test"}};
  j["hbm_size"] = {{"value", 80}, {"unit", "GB"}, {"source", "s"}, {"assumed", "both may be given"}};
  const std::string path = test::temp_path("chip.json");
  test::write_file(path, j.dump());
  const ChipSpec c = load_chip(path);
  EXPECT_EQ(c.name, "my-h100");
  EXPECT_EQ(c.file, path);
  EXPECT_DOUBLE_EQ(c.clock_hz(), 1.83e9);
  EXPECT_DOUBLE_EQ(c.mma_efficiency.value, 0.83);
  EXPECT_EQ(c.hbm_size.value, 80e9);
  const ChipSpec ref = load_chip("h100");
  EXPECT_EQ(c.matrix_bf16.value, ref.matrix_bf16.value);
  // parse_chip names the origin it is given.
  test::expect_error([&] { parse_chip("[1]", "my-origin.json"); }, {"my-origin.json", "must be a JSON object"});
}

TEST(ChipFile, UnknownTopLevelField) {
  expect_mutation_error([](json& j) { j["clock_speed"] = {{"value", 1}, {"unit", "GHz"}, {"source", "x"}}; },
                        {"unknown field 'clock_speed'", "valid fields", "name", "clock", "matrix_bf16", "block_latency"});
}

TEST(ChipFile, UnknownKeyInsideField) {
  expect_mutation_error([](json& j) { j["clock"]["note"] = "x"; },
                        {"field 'clock'", "unknown key 'note'", "value, unit, source, assumed"});
}

TEST(ChipFile, MissingRequiredField) {
  expect_mutation_error([](json& j) { j.erase("clock"); }, {"missing field 'clock'", "frequency", "Hz", "GHz"});
  expect_mutation_error([](json& j) { j.erase("hbm_bandwidth"); }, {"missing field 'hbm_bandwidth'", "TB/s"});
}

TEST(ChipFile, MissingOrEmptyMetaField) {
  expect_mutation_error([](json& j) { j.erase("name"); }, {"missing field 'name'"});
  expect_mutation_error([](json& j) { j["vendor"] = ""; }, {"field 'vendor'", "non-empty string"});
  expect_mutation_error([](json& j) { j["display_name"] = 3; }, {"field 'display_name'", "non-empty string"});
}

TEST(ChipFile, WrongUnitForDimension) {
  expect_mutation_error([](json& j) { j["hbm_bandwidth"]["unit"] = "GB"; },
                        {"field 'hbm_bandwidth'", "unit 'GB'", "bandwidth", "B/s", "GB/s", "TB/s", "Gb/s"});
  expect_mutation_error([](json& j) { j["hbm_size"]["unit"] = "GB/s"; }, {"field 'hbm_size'", "unit 'GB/s'", "GiB"});
  expect_mutation_error([](json& j) { j["clock"]["unit"] = "ghz"; }, {"field 'clock'", "unit 'ghz'", "GHz"});
  expect_mutation_error([](json& j) { j["clock"].erase("unit"); }, {"field 'clock'", "missing 'unit'", "MHz"});
  expect_mutation_error([](json& j) { j["clock"]["unit"] = 5; }, {"field 'clock'", "missing 'unit'", "MHz"});
}

TEST(ChipFile, NegativeAndZeroValues) {
  expect_mutation_error([](json& j) { j["power"]["value"] = -5; }, {"field 'power'", "must be positive"});
  expect_mutation_error([](json& j) { j["power"]["value"] = 0; }, {"field 'power'", "value 0 must be positive"});
  expect_mutation_error([](json& j) { j["cores"]["value"] = "-1"; }, {"field 'cores'", "must be positive"});
}

TEST(ChipFile, UnparsableAndNonNumberValues) {
  expect_mutation_error([](json& j) { j["clock"]["value"] = "12x"; }, {"field 'clock'", "'12x' is not a number"});
  expect_mutation_error([](json& j) { j["clock"]["value"] = ""; }, {"field 'clock'", "is not a number"});
  expect_mutation_error([](json& j) { j["clock"]["value"] = true; }, {"field 'clock'", "value true is not a number"});
  expect_mutation_error([](json& j) { j["clock"]["value"] = json::array({1}); }, {"field 'clock'", "is not a number"});
  expect_mutation_error([](json& j) { j["clock"]["value"] = nullptr; }, {"field 'clock'", "is not a number"});
  expect_mutation_error([](json& j) { j["clock"]["value"] = "inf"; }, {"field 'clock'", "not finite"});
  expect_mutation_error([](json& j) { j["clock"].erase("value"); }, {"field 'clock'", "missing 'value'"});
  expect_mutation_error([](json& j) { j["clock"] = 1830; }, {"field 'clock'", "must be an object", "\"value\""});
}

TEST(ChipFile, FractionAboveOne) {
  expect_mutation_error([](json& j) { j["mma_efficiency"]["value"] = 1.2; },
                        {"field 'mma_efficiency'", "1.2", "at most 1"});
  expect_mutation_error([](json& j) { j["hbm_read_efficiency"] = {{"value", 120}, {"unit", "%"}, {"assumed", "x"}}; },
                        {"field 'hbm_read_efficiency'", "at most 1"});
}

TEST(ChipFile, NonIntegerCount) {
  expect_mutation_error([](json& j) { j["cores"]["value"] = 64.5; }, {"field 'cores'", "64.5", "whole number"});
  expect_mutation_error([](json& j) { j["chip_links"]["value"] = "7.25"; }, {"field 'chip_links'", "whole number"});
}

TEST(ChipFile, MissingOrEmptyProvenance) {
  expect_mutation_error([](json& j) { j["cores"].erase("source"); }, {"field 'cores'", "\"source\"", "\"assumed\""});
  expect_mutation_error([](json& j) { j["cores"]["source"] = ""; }, {"field 'cores'", "'source' must be a non-empty string"});
  expect_mutation_error([](json& j) { j["l2_bandwidth"]["assumed"] = 7; },
                        {"field 'l2_bandwidth'", "'assumed' must be a non-empty string"});
}

TEST(ChipFile, InvalidJsonAndWrongTopLevel) {
  std::string text = h100_json().dump();
  text.resize(text.size() / 2);
  expect_file_error("truncated.json", text, {"not valid JSON"});
  expect_file_error("array.json", "[1, 2]", {"must be a JSON object"});
  expect_file_error("empty.json", "", {"not valid JSON"});
}

TEST(ChipFile, Fp8FieldsGoTogether) {
  expect_mutation_error([](json& j) { j.erase("mma_efficiency_fp8"); }, {"'matrix_fp8'", "'mma_efficiency_fp8'", "both or neither"});
  expect_mutation_error([](json& j) { j.erase("matrix_fp8"); }, {"'matrix_fp8'", "'mma_efficiency_fp8'", "both or neither"});
  // Neither: a chip without fp8.
  json j = h100_json();
  j.erase("matrix_fp8");
  j.erase("mma_efficiency_fp8");
  const std::string path = test::temp_path("nofp8.json");
  test::write_file(path, j.dump());
  const ChipSpec c = load_chip(path);
  EXPECT_FALSE(c.supports(DType::kF8E4M3));
  EXPECT_EQ(c.matrix_flops_per_s(DType::kF8E5M2), 0.0);
}

TEST(ChipFile, GraphNodeLatencyIsOptionalAndAtMostTheLaunchLatency) {
  expect_mutation_error([](json& j) { j["graph_node_latency"]["value"] = 4; },
                        {"'graph_node_latency' (4 us)", "exceeds 'launch_latency' (3 us)"});
  json j = h100_json();
  j.erase("graph_node_latency");
  const std::string path = test::temp_path("nograph.json");
  test::write_file(path, j.dump());
  const ChipSpec c = load_chip(path);
  EXPECT_FALSE(c.graph_node_latency.present);
  EXPECT_DOUBLE_EQ(c.graph_node_latency_value(), c.launch_latency.value) << "absent: no saving";
}

TEST(ChipPresets, GraphNodesLaunchFasterThanKernels) {
  for (const auto& n : chip_preset_names()) {
    const ChipSpec c = load_chip(n);
    EXPECT_TRUE(c.graph_node_latency.present) << n;
    EXPECT_LT(c.graph_node_latency_value(), c.launch_latency.value) << n;
  }
}

// FP8 on a chip without an FP8 matrix unit is refused, not emulated (docs/presets.md, "Input dtypes a
// chip lacks"): the message names the chip, says it has no FP8 unit at all, lists exactly the presets
// that have one, and for the Zhenwu 810E gives its vendor's W8A8 INT8 advice with the option that
// asks for it - only when the caller names its option and the chip can run int8.
TEST(ChipPresets, Fp8RefusalNamesTheChipTheChipsWithFp8AndTheVendorAdvice) {
  std::string with_fp8;
  for (const auto& n : chip_preset_names())
    if (load_chip(n).matrix_fp8.present) with_fp8 += (with_fp8.empty() ? "" : ", ") + n;
  EXPECT_EQ(with_fp8, "b200, h100, h20, h200, h800");
  const ChipSpec z = load_chip("zhenwu-810e");
  ASSERT_FALSE(z.supports(DType::kF8E4M3));
  const std::string m = matrix_unit_refusal(z, DType::kF8E4M3, "--matmul-dtype");
  for (const std::string& want : {std::string("zhenwu-810e has no fp8e4m3 matrix unit (no FP8 matrix unit at all"),
                                  "chips with FP8: " + with_fp8, std::string("its vendor recommends W8A8 INT8"),
                                  std::string("PPU SDK v1.5.3 release notes"), std::string(": --matmul-dtype int8")})
    EXPECT_NE(m.find(want), std::string::npos) << m << "\nmissing: " << want;
  // e5m2 is FP8 too; without a flag no option is named.
  const std::string e5 = matrix_unit_refusal(z, DType::kF8E5M2);
  EXPECT_NE(e5.find("zhenwu-810e has no fp8e5m2 matrix unit"), std::string::npos) << e5;
  EXPECT_NE(e5.find("W8A8 INT8"), std::string::npos) << e5;
  EXPECT_EQ(e5.find("--"), std::string::npos) << e5;
  // A copy of the PPU without an INT8 unit still hears the advice but is not sent to an option it
  // would refuse.
  json j = json::parse(builtin_preset("chips", "zhenwu-810e").value_or("{}"));
  j.erase("matrix_int8");
  j.erase("mma_efficiency_int8");
  const ChipSpec no_int8 = parse_chip(j.dump(), "no-int8.json");
  const std::string n = matrix_unit_refusal(no_int8, DType::kF8E4M3, "--matmul-dtype");
  EXPECT_NE(n.find("W8A8 INT8"), std::string::npos) << n;
  EXPECT_EQ(n.find("--matmul-dtype"), std::string::npos) << n;
  // Another chip without FP8 gets no advice: none is published for it.
  const std::string a = matrix_unit_refusal(load_chip("a100-80g"), DType::kF8E4M3, "--matmul-dtype");
  EXPECT_NE(a.find("a100-80g has no fp8e4m3 matrix unit (no FP8 matrix unit at all"), std::string::npos) << a;
  EXPECT_NE(a.find("chips with FP8: " + with_fp8), std::string::npos) << a;
  EXPECT_EQ(a.find("W8A8"), std::string::npos) << a;
}

TEST(ChipFile, UnknownChipNameListsTheKnownOnes) {
  std::vector<std::string> parts = {"unknown chip 'h1000'", "known chips"};
  for (const auto& n : chip_preset_names()) parts.push_back(n);
  try {
    (void)load_chip("h1000");
    ADD_FAILURE() << "expected an error";
  } catch (const UserError& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

TEST(ChipFile, UnreadableFileIsNamed) {
  const std::string path = test::temp_path("does-not-exist.json");
  test::expect_error([&] { (void)load_chip(path); }, {path, "cannot open file"});
  // A name that ends in .json is a path, not a preset name.
  test::expect_error([] { (void)load_chip("h100.json"); }, {"h100.json", "cannot open file"});
}

}  // namespace
}  // namespace ppu
