// Tests of the valid range of every numeric field of chip, node and cluster files (the `range` column
// of chip_fields(), node_fields(), cluster_fields(), tier_fields(); docs/presets.md, "Valid ranges"),
// of JSON the parser cannot hold (numbers beyond a double, duplicate keys), and of bounded reads
// (read_input_file: regular files only, at most a size cap). Each case of issue 17's hostile-input
// sweep that used to crash, hang or print nonsense has its exact message here. Files are built by
// editing the built-in h100, h100-dgx and h100-24k presets.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>

#include "TestUtil.hpp"
#include "arch/ChipSpec.hpp"
#include "arch/ClusterSpec.hpp"
#include "arch/NodeSpec.hpp"
#include "arch/Presets.hpp"
#include "arch/QuantityJson.hpp"
#include "models/Safetensors.hpp"
#include "models/Tokenizer.hpp"

namespace ppu {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

std::string error_of(const std::function<void()>& f) { return test::error_message(f); }

// The text of built-in preset `kind`/`name` with field `path` ("cores", "tiers.0.nodes") set to the
// JSON number written as `number` (raw, so that numbers nlohmann cannot hold can be written).
std::string with_value(const char* kind, const char* name, const std::string& path, const std::string& number) {
  json j = json::parse(*builtin_preset(kind, name));
  json* at = &j;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string key = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    at = key[0] >= '0' && key[0] <= '9' ? &(*at)[std::stoul(key)] : &(*at)[key];
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  (*at)["value"] = "@NUMBER@";
  std::string text = j.dump(1);
  text.replace(text.find("\"@NUMBER@\""), 10, number);
  return text;
}

std::string chip_error(const std::string& field, const std::string& number) {
  return error_of([&] { parse_chip(with_value("chips", "h100", field, number), "x.json"); });
}
std::string node_error(const std::string& field, const std::string& number) {
  return error_of([&] { parse_node(with_value("nodes", "h100-dgx", field, number), "x.json"); });
}
std::string cluster_error(const std::string& field, const std::string& number) {
  return error_of([&] { parse_cluster(with_value("clusters", "h100-24k", field, number), "x.json"); });
}

const std::string kEfficiencyValid =
    "valid: 0.01 to 1 (a share of a peak rate; below 1% no device works, and near-zero shares make simulated times "
    "overflow)";
const std::string kBandwidthValid =
    "valid: 1 MB/s to 1000 TB/s (from slower than any real link to 100 times today's fastest memory)";

// Issue 17, case 1: a number beyond a double aborted with json.exception.out_of_range.406.
TEST(PresetRanges, NumbersBeyondADoubleAreInvalidJson) {
  EXPECT_EQ(chip_error("cores", "1e999999"),
            "x.json: not valid JSON: the number 1e999999 is beyond the range of a double (about 1.8e308)");
  EXPECT_EQ(chip_error("cores", std::string(5000, '9')),
            "x.json: not valid JSON: the number 99999999999999999999... is beyond the range of a double (about "
            "1.8e308)");
  EXPECT_EQ(node_error("chips", "1e999999"),
            "x.json: not valid JSON: the number 1e999999 is beyond the range of a double (about 1.8e308)");
  EXPECT_EQ(cluster_error("nodes", "-1e999999"),
            "x.json: not valid JSON: the number -1e999999 is beyond the range of a double (about 1.8e308)");
}

// Case 2: cores 1e19 or 1e308 was accepted, then bench gemm aborted sizing per-core state.
TEST(PresetRanges, ChipCores) {
  const std::string why = "(the timing engine keeps state per core; today's GPUs have about 150)";
  EXPECT_EQ(chip_error("cores", "1e19"), "x.json: field 'cores': 1e+19 is out of range; valid: 1 to 100000 " + why);
  EXPECT_EQ(chip_error("cores", "1e308"), "x.json: field 'cores': 1e+308 is out of range; valid: 1 to 100000 " + why);
  EXPECT_EQ(parse_chip(with_value("chips", "h100", "cores", "100000"), "x.json").num_cores(), 100000);
}

// Case 3: HBM efficiencies of 1e-308 deadlocked the timing engine.
TEST(PresetRanges, ChipHbmEfficiencies) {
  EXPECT_EQ(chip_error("hbm_read_efficiency", "1e-308"),
            "x.json: field 'hbm_read_efficiency': 1e-308 fraction is out of range; " + kEfficiencyValid);
  EXPECT_EQ(chip_error("hbm_write_efficiency", "1e-308"),
            "x.json: field 'hbm_write_efficiency': 1e-308 fraction is out of range; " + kEfficiencyValid);
  EXPECT_DOUBLE_EQ(parse_chip(with_value("chips", "h100", "hbm_read_efficiency", "0.01"), "x.json")
                       .hbm_read_efficiency.value,
                   0.01);
}

// Case 4: hbm_size 1e19 GB overflowed the byte count ("only -9.223e+06 TB of -9.223e+06 TB is free").
TEST(PresetRanges, ChipHbmSize) {
  const std::string valid =
      "valid: 1 B to 1000 TB (sizes are counted in 64-bit bytes; 1 PB is thousands of times today's largest HBM)";
  EXPECT_EQ(chip_error("hbm_size", "1e19"), "x.json: field 'hbm_size': 1e+19 GB is out of range; " + valid);
  EXPECT_EQ(chip_error("hbm_size", "1e308"), "x.json: field 'hbm_size': 1e+308 GB is out of range; " + valid);
  EXPECT_DOUBLE_EQ(parse_chip(with_value("chips", "h100", "hbm_size", "1e6"), "x.json").hbm_bytes(), 1e15);
}

// Case 5: node chips 1e6 / 1e8 ran out of memory, 2^31 / 1e308 overflowed a vector, 10000 took 21 s.
TEST(PresetRanges, NodeChips) {
  const std::string why =
      "(a node is one scale-up domain: the largest announced, NVL576, has 576 chips, and its link graph grows with "
      "the square of the count)";
  const std::pair<const char*, const char*> cases[] = {
      {"1e6", "1e+06"}, {"1e8", "1e+08"}, {"2147483648", "2.14748e+09"}, {"1e308", "1e+308"}, {"10000", "10000"},
      {"1025", "1025"}};
  for (const auto& [written, shown] : cases) {
    SCOPED_TRACE(written);
    EXPECT_EQ(node_error("chips", written),
              "x.json: field 'chips': " + std::string(shown) + " is out of range; valid: 1 to 1024 " + why);
  }
  EXPECT_EQ(parse_node(with_value("nodes", "h100-dgx", "chips", "1024"), "x.json").num_chips(), 1024);
}

// Case 6: chunk sizes of 1e19, 1e308 or 1e-308 MiB made a collective hang.
TEST(PresetRanges, NodeChunkSize) {
  const std::string valid =
      "valid: 64 KiB to 1 GiB (NCCL moves 128 KiB to 4 MiB per step; every chunk is simulated, so a 1 GiB collective "
      "in 1 KiB chunks would take minutes)";
  EXPECT_EQ(node_error("chunk_size", "1e19"), "x.json: field 'chunk_size': 1e+19 MiB is out of range; " + valid);
  EXPECT_EQ(node_error("chunk_size", "1e308"), "x.json: field 'chunk_size': 1e+308 MiB is out of range; " + valid);
  EXPECT_EQ(node_error("chunk_size", "1e-308"), "x.json: field 'chunk_size': 1e-308 MiB is out of range; " + valid);
  EXPECT_EQ(node_error("chunk_size", "0.03125"), "x.json: field 'chunk_size': 0.03125 MiB is out of range; " + valid);
  EXPECT_DOUBLE_EQ(parse_node(with_value("nodes", "h100-dgx", "chunk_size", "0.0625"), "x.json").chunk_size.value, 65536);
}

// Case 7: bandwidths of 1e308 broke FlowSim's finite-capacity check.
TEST(PresetRanges, NodeBandwidths) {
  EXPECT_EQ(node_error("link_bandwidth", "1e308"),
            "x.json: field 'link_bandwidth': 1e+308 GB/s is out of range; " + kBandwidthValid);
  EXPECT_EQ(node_error("switch_reduction_bandwidth", "1e308"),
            "x.json: field 'switch_reduction_bandwidth': 1e+308 GB/s is out of range; " + kBandwidthValid);
}

// Case 8: efficiencies of 1e-308 left FlowSim with flows that never finish.
TEST(PresetRanges, NodeEfficiencies) {
  EXPECT_EQ(node_error("link_efficiency", "1e-308"),
            "x.json: field 'link_efficiency': 1e-308 fraction is out of range; " + kEfficiencyValid);
  EXPECT_EQ(node_error("ll_efficiency", "1e-308"),
            "x.json: field 'll_efficiency': 1e-308 fraction is out of range; " + kEfficiencyValid);
}

// Case 10: a cluster of 1e308 nodes was rejected as "already holds all -2147483648 nodes".
TEST(PresetRanges, ClusterNodes) {
  EXPECT_EQ(cluster_error("nodes", "1e308"),
            "x.json: field 'nodes': 1e+308 is out of range; valid: 1 to 1000000 (the largest training clusters have "
            "tens of thousands)");
  EXPECT_EQ(cluster_error("tiers.0.nodes", "1e308"),
            "x.json: field 'tiers[0].nodes': 1e+308 is out of range; valid: 1 to 1000000 (nodes in one domain, at most "
            "a cluster's million)");
}

// The tables themselves: every field has a non-empty range with a reason, and every built-in preset
// lies inside (the presets load, so this holds; the check says which bound a new preset would break).
TEST(PresetRanges, EveryFieldHasARangeHoldingThePresets) {
  auto check = [](const auto& fields, const char* kind) {
    for (const auto& f : fields) {
      SCOPED_TRACE(std::string(kind) + "." + std::string(f.key));
      EXPECT_GT(f.range.min, 0.0);
      EXPECT_LT(f.range.min, f.range.max);
      EXPECT_FALSE(f.range.why.empty());
      if (f.dim == Dimension::kFraction) {
        EXPECT_EQ(f.range.max, 1.0);
      }
    }
  };
  check(chip_fields(), "chip");
  check(node_fields(), "node");
  check(cluster_fields(), "cluster");
  check(tier_fields(), "tier");
  for (const auto& n : chip_preset_names()) EXPECT_NO_THROW(load_chip(n)) << n;
  for (const auto& n : node_preset_names()) EXPECT_NO_THROW(load_node(n)) << n;
  for (const auto& n : cluster_preset_names()) EXPECT_NO_THROW(load_cluster(n)) << n;
}

// docs/presets.md, "Valid ranges", lists every field with the range the loader checks: one row
// "| `<kind>` | `<key>` | <min> to <max> | <why> |" per field.
TEST(PresetRanges, DocumentedInPresetsMd) {
  std::ifstream in(test::fixture("../../docs/presets.md"));
  ASSERT_TRUE(in.good());
  const std::string doc((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto check = [&](const auto& fields, const char* kind) {
    for (const auto& f : fields) {
      const std::string row = "| " + std::string(kind) + " | `" + std::string(f.key) + "` | " +
                              range_text(f.dim, f.range) + " | " + std::string(f.range.why) + " |";
      EXPECT_NE(doc.find(row), std::string::npos) << "docs/presets.md lacks the row\n" << row;
    }
  };
  check(chip_fields(), "chip");
  check(node_fields(), "node");
  check(cluster_fields(), "cluster");
  check(tier_fields(), "cluster tier");
}

TEST(PresetJson, DuplicateKeysAreRefused) {
  std::string text(*builtin_preset("chips", "h100"));
  text.insert(text.find('{') + 1, "\"notes\": \"first\", \"notes\": \"second\",");
  EXPECT_EQ(error_of([&] { parse_chip(text, "x.json"); }),
            "x.json: key 'notes' appears twice in one object; give each key once (a JSON reader would silently keep "
            "only the last)");
  // Inside a field's object too.
  text = std::string(*builtin_preset("nodes", "h100-dgx"));
  text.insert(text.find("\"chips\": {") + 10, "\"value\": 99999,");
  EXPECT_EQ(error_of([&] { parse_node(text, "x.json"); }),
            "x.json: key 'value' appears twice in one object; give each key once (a JSON reader would silently keep "
            "only the last)");
  // The same key in two different objects is fine.
  EXPECT_NO_THROW(parse_json_text(R"({"a": {"value": 1}, "b": {"value": 2}, "c": [{"x": 1}, {"x": 2}]})", "x.json"));
}

// Case 9: /dev/zero was read until memory ran out; a directory was "not valid JSON".
TEST(BoundedReads, OnlyRegularFilesUpToTheCap) {
  const fs::path dir = fs::path(test::temp_path("dir.json"));
  fs::create_directories(dir);
  EXPECT_EQ(error_of([] { load_chip("/dev/zero"); }), "/dev/zero: a chip file must be a regular file, not a character device");
  EXPECT_EQ(error_of([&] { load_chip(dir.string()); }),
            dir.string() + ": a chip file must be a regular file, not a directory");
  EXPECT_EQ(error_of([] { load_node("/dev/zero"); }), "/dev/zero: a node file must be a regular file, not a character device");
  EXPECT_EQ(error_of([] { load_cluster("/dev/zero"); }),
            "/dev/zero: a cluster file must be a regular file, not a character device");
  EXPECT_EQ(error_of([&] { models::Tokenizer::from_file(dir.string()); }),
            dir.string() + ": a tokenizer.json must be a regular file, not a directory");
  // A checkpoint directory whose index is a directory.
  const fs::path ckpt = fs::path(test::temp_path("ckpt"));
  fs::create_directories(ckpt / "model.safetensors.index.json");
  EXPECT_EQ(error_of([&] { CheckpointSet{ckpt.string()}; }),
            (ckpt / "model.safetensors.index.json").string() +
                ": a safetensors index must be a regular file, not a directory");
  const std::string missing = test::temp_path("missing.json");
  EXPECT_EQ(error_of([&] { load_chip(missing); }), missing + ": cannot open file (No such file or directory)");

  const std::string big = test::temp_path("big.json");
  {
    std::ofstream out(big, std::ios::binary);
    out << std::string(kPresetFileMaxBytes + 1, ' ');
  }
  EXPECT_EQ(error_of([&] { load_chip(big); }), big + ": a chip file is at most 16 MiB; this one is larger");
  {
    std::ofstream out(big, std::ios::binary | std::ios::trunc);
    out << std::string(kPresetFileMaxBytes, ' ');
  }
  // Exactly the cap is read (and then is not JSON).
  EXPECT_NE(error_of([&] { load_chip(big); }).find(big + ": not valid JSON"), std::string::npos);
  fs::remove(big);
}

}  // namespace
}  // namespace ppu
