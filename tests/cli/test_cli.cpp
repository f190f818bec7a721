// The `ppu` command as a user runs it: tables and --json documents, and clear errors with the right
// exit status (2 for a user's mistake, 3 for a simulated event such as device out-of-memory).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "TestUtil.hpp"
#include "arch/Presets.hpp"
#include "models/ModelConfig.hpp"

namespace {

struct CmdResult {
  int status;
  std::string out;  // stdout and stderr together
};

CmdResult ppu(const std::string& args) {
  const std::string cmd = std::string(PPU_BINARY) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  EXPECT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int st = pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

std::string temp_path(const std::string& name) { return ::testing::TempDir() + "/" + name; }

// A --json document's results list (docs/json.md), and its first result; both check the envelope.
// `out` holds stderr too: progress lines of a slow run come before the document, which starts with
// a line "{".
nlohmann::json results_of(const std::string& out) {
  const size_t start = out.rfind("{\n", 0) == 0 ? 0 : out.find("\n{\n") + 1;
  const auto doc = nlohmann::json::parse(out.substr(start));
  EXPECT_EQ(doc.value("schema_version", 0), 1) << out.substr(0, 200);
  EXPECT_TRUE(doc.contains("command")) << out.substr(0, 200);
  return doc.at("results");
}
nlohmann::json first_result(const std::string& out) { return results_of(out).at(0); }

// The simulated time of one op of a run record's op_times list (0 when it is not there).
double op_time(const nlohmann::json& run, const std::string& op) {
  for (const auto& o : run["op_times"])
    if (o["op"] == op) return o["time_s"].get<double>();
  return 0.0;
}

TEST(Cli, ChipsTableAndJson) {
  CmdResult r = ppu("chips");
  EXPECT_EQ(r.status, 0) << r.out;
  for (const char* chip : {"zhenwu-810e", "a100-80g", "a800", "h20", "h100", "h800", "h200", "b200"})
    EXPECT_NE(r.out.find(chip), std::string::npos) << chip;
  r = ppu("chips --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = results_of(r.out);
  ASSERT_EQ(j.size(), 8u);
  for (const auto& c : j) {
    EXPECT_GT(c["matrix_bf16_flops_per_s"].get<double>(), 0);
    EXPECT_GT(c["hbm_bytes"].get<double>(), 0);
  }
}

// Assumed figures are marked where they are shown: '*' in tables with a legend, assumed_fields in JSON.
TEST(Cli, AssumedFiguresAreMarked) {
  CmdResult r = ppu("chips");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("120.0*"), std::string::npos) << r.out;  // the PPU's assumed BF16 peak
  EXPECT_NE(r.out.find("2.60*"), std::string::npos) << r.out;   // and HBM bandwidth
  EXPECT_NE(r.out.find("989.4 "), std::string::npos) << r.out;  // H100's published peak is not marked
  EXPECT_NE(r.out.find("* assumed, not published"), std::string::npos) << r.out;
  for (const auto& c : results_of(ppu("chips --json").out)) {
    const auto& a = c["assumed_fields"];
    const bool bf16 = std::find(a.begin(), a.end(), "matrix_bf16") != a.end();
    EXPECT_EQ(bf16, c["chip"] == "zhenwu-810e") << c["chip"] << " " << a;
  }
  r = ppu("bench gemm 512 512 512 --chip zhenwu-810e,h100");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("zhenwu-810e* "), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("h100*"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("* assumed, not published: zhenwu-810e matrix_bf16, hbm_bandwidth"), std::string::npos) << r.out;
  r = ppu("models");
  EXPECT_NE(r.out.find("qwen3-max*"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("* qwen3-max: assumed, not published: "), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("qwen3-32b*"), std::string::npos) << r.out;
}

TEST(Cli, ChipsShowEveryFieldWithUnitAndBasis) {
  CmdResult r = ppu("chips show zhenwu-810e --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = first_result(r.out);
  EXPECT_EQ(j["chip"], "zhenwu-810e");
  EXPECT_EQ(j["fields"]["hbm_size"]["basis"], "published");
  EXPECT_EQ(j["fields"]["hbm_bandwidth"]["basis"], "assumed");
  EXPECT_DOUBLE_EQ(j["fields"]["hbm_size"]["value"].get<double>(), 96e9);
  EXPECT_EQ(j["fields"]["hbm_size"]["unit"], "B");
  EXPECT_TRUE(j["fields"]["matrix_fp8"].is_null());
}

// Long sources and notes wrap within their column (and paragraphs) instead of widening the table.
TEST(Cli, ShowCommandsWrapLongSources) {
  for (const char* cmd : {"chips show zhenwu-810e", "nodes show h100-dgx", "clusters show h800-2k", "models show qwen3-max"}) {
    const CmdResult r = ppu(cmd);
    ASSERT_EQ(r.status, 0) << r.out;
    size_t longest = 0, start = 0;
    for (size_t nl = r.out.find('\n'); nl != std::string::npos; start = nl + 1, nl = r.out.find('\n', start))
      longest = std::max(longest, nl - start);
    EXPECT_LE(longest, 160u) << cmd << "\n" << r.out;
  }
  // A wrapped source goes on below its row, the other cells blank.
  const std::string out = ppu("chips show zhenwu-810e").out;
  const size_t row = out.find("\ncores ");
  ASSERT_NE(row, std::string::npos) << out;
  const size_t next = out.find('\n', row + 1);
  EXPECT_EQ(out.compare(next + 1, 30, std::string(30, ' ')), 0) << out.substr(row, 400);
}

// INT8: bench gemm times int8 x int8 -> int32 and checks it exactly; a chip without matrix_int8
// refuses it naming the chips that have it; the models take --matmul-dtype int8 (W8A8) with a bf16
// KV cache, and refuse an int8 KV cache.
TEST(Cli, Int8GemmAndW8A8Inference) {
  CmdResult r = ppu("bench gemm 67 45 1100 --dtype int8 --out-dtype int32 --chip zhenwu-810e --check --json");
  ASSERT_EQ(r.status, 0) << r.out;
  auto row = first_result(r.out);
  EXPECT_EQ(row["dtype"], "int8");
  EXPECT_EQ(row["peak_flops_per_s"].get<double>(), 240e12);
  EXPECT_EQ(row["check"]["max_abs_error"].get<double>(), 0.0) << "int32 sums of int8 values are exact";
  EXPECT_TRUE(row["check"]["passed"].get<bool>());
  auto j = nlohmann::json::parse(*ppu::builtin_preset("chips", "a800"));
  j["name"] = "no-int8";
  j.erase("matrix_int8");
  j.erase("mma_efficiency_int8");
  const std::string file = temp_path("no-int8.json");
  std::ofstream(file) << j.dump(2);
  r = ppu("bench gemm 64 64 64 --dtype int8 --chip " + file);
  EXPECT_EQ(r.status, 2);
  for (const char* want : {"no-int8 has no int8 matrix unit", "chips with int8: a100-80g, a800, b200, h100, h20, h200, "
                                                              "h800, zhenwu-810e"})
    EXPECT_NE(r.out.find(want), std::string::npos) << want << "\n" << r.out;
  r = ppu("throughput --model qwen3-0.6b --chip zhenwu-810e --io 64/128 --max-batch 8 --matmul-dtype int8 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  row = first_result(r.out);
  EXPECT_EQ(row["matmul_dtype"], "int8");
  EXPECT_EQ(row["kv_dtype"], "bf16");
  r = ppu("throughput --model qwen3-0.6b --chip zhenwu-810e --io 64/128 --max-batch 8 --matmul-dtype int8 "
          "--kv-dtype int8");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("--kv-dtype int8: an int8 KV cache is not supported"), std::string::npos) << r.out;
  r = ppu("run --model tiny --chip h20 --matmul-dtype int8 --gen 2 --prompt-len 4 --timing-only");
  EXPECT_EQ(r.status, 0) << r.out;
  r = ppu("run --model tiny --matmul-dtype int32");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("valid: bf16, fp16, fp8e4m3, fp8e5m2, int8 (W8A8)"), std::string::npos) << r.out;
}

TEST(Cli, UserChipFileAndItsErrors) {
  auto j = nlohmann::json::parse(*ppu::builtin_preset("chips", "h100"));
  j["name"] = "my-chip";
  j["hbm_size"]["value"] = 160;
  const std::string good = temp_path("my-chip.json");
  std::ofstream(good) << j.dump(2);
  CmdResult r = ppu("chips show " + good + " --json");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_DOUBLE_EQ(first_result(r.out)["fields"]["hbm_size"]["value"].get<double>(), 160e9);
  r = ppu("bench gemm 256 256 256 --chip " + good);
  EXPECT_EQ(r.status, 0) << r.out;

  j["hbm_bandwidth"]["unit"] = "GB";
  const std::string bad = temp_path("bad-chip.json");
  std::ofstream(bad) << j.dump(2);
  r = ppu("chips show " + bad);
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find(bad), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("hbm_bandwidth"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("TB/s"), std::string::npos) << r.out;  // lists the valid units
}

TEST(Cli, UnknownChipListsTheKnownOnes) {
  CmdResult r = ppu("bench gemm 64 64 64 --chip h1000");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("unknown chip 'h1000'"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("zhenwu-810e"), std::string::npos) << r.out;
}

TEST(Cli, BenchGemmJsonAndCheck) {
  CmdResult r = ppu("bench gemm 96 80 200 --chip zhenwu-810e --check --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = first_result(r.out);
  EXPECT_TRUE(j["check"]["passed"].get<bool>());
  EXPECT_EQ(j["check"]["outputs_checked"].get<int>(), 96 * 80);
  EXPECT_GT(j["time_s"].get<double>(), 0);
  EXPECT_GT(j["achieved_flops_per_s"].get<double>(), 0);
  EXPECT_LT(j["fraction_of_peak"].get<double>(), 1);
}

TEST(Cli, BenchGemmAllChipsSideBySide) {
  CmdResult r = ppu("bench gemm 1024 1024 1024 --chip all --json");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(results_of(r.out).size(), 8u);
  // A list of chips: those chips, in that order.
  r = ppu("bench gemm 256 256 256 --chip h20,zhenwu-810e --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = results_of(r.out);
  ASSERT_EQ(j.size(), 2u);
  EXPECT_EQ(j[0]["chip"], "h20");
  EXPECT_EQ(j[1]["chip"], "zhenwu-810e");
  r = ppu("bench gemm 256 256 256 --chip h20,,a800");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("an empty name in the list"), std::string::npos) << r.out;
}

TEST(Cli, BenchGemmBadInput) {
  CmdResult r = ppu("bench gemm 0 4 4");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("must be positive"), std::string::npos) << r.out;
  // FP8 on the PPU is refused (not emulated): the chip, no FP8 unit, the chips that have one, and the
  // vendor's W8A8 INT8 advice with this command's option (docs/presets.md, "Input dtypes a chip lacks").
  r = ppu("bench gemm 4 4 4 --dtype fp8 --chip zhenwu-810e");
  EXPECT_EQ(r.status, 2);
  for (const char* want : {"bench gemm: --dtype fp8e4m3: zhenwu-810e has no fp8e4m3 matrix unit",
                           "no FP8 matrix unit at all", "chips with FP8: b200, h100, h20, h200, h800",
                           "vendor recommends W8A8 INT8", ": --dtype int8"})
    EXPECT_NE(r.out.find(want), std::string::npos) << want << "\n" << r.out;
  r = ppu("bench gemm 4 4 4 --dtype int4");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("valid: fp32, bf16"), std::string::npos) << r.out;
  r = ppu("bench gemm 4 4");
  EXPECT_NE(r.status, 0);
}

TEST(Cli, BenchCopyCheckAndTrace) {
  const std::string trace = temp_path("copy-trace.json");
  CmdResult r = ppu("bench copy 3MiB --chip a100-80g --kernel triad --check --json --trace " + trace);
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = first_result(r.out);
  EXPECT_EQ(j["check"]["mismatches"].get<int>(), 0);
  EXPECT_LT(j["bandwidth_bytes_per_s"].get<double>(), 2.039e12);
  std::ifstream in(trace);
  const auto t = nlohmann::json::parse(in);
  ASSERT_TRUE(t.contains("traceEvents"));
  bool dma = false, core_lane = false;
  for (const auto& e : t["traceEvents"]) {
    if (e.value("name", "") == "load") dma = true;
    if (e.value("name", "") == "thread_name" && e["args"]["name"].get<std::string>().find("core 0") == 0) core_lane = true;
  }
  EXPECT_TRUE(dma);
  EXPECT_TRUE(core_lane);
}

TEST(Cli, BenchCopyBadSizeAndOutOfMemory) {
  CmdResult r = ppu("bench copy lots");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("cannot read 'lots' as a size"), std::string::npos) << r.out;
  // Three 40 GB arrays do not fit an 80 GB A100: a simulated out-of-memory, not a crash.
  r = ppu("bench copy 40GB --chip a100-80g");
  EXPECT_EQ(r.status, 3) << r.out;
  EXPECT_NE(r.out.find("out of memory"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("'c'"), std::string::npos) << r.out;
}

}  // namespace

namespace {

TEST(Cli, ModelsTableAndJson) {
  CmdResult r = ppu("models --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = results_of(r.out);
  bool qwen06 = false, max_assumed = false;
  for (const auto& m : j) {
    if (m["model"] == "qwen3-0.6b") qwen06 = m["params"].get<double>() > 0.5e9 && m["params"].get<double>() < 0.7e9;
    if (m["model"] == "qwen3-max") max_assumed = m["assumed"].get<bool>();
  }
  EXPECT_TRUE(qwen06);
  EXPECT_TRUE(max_assumed);
  EXPECT_EQ(ppu("models").status, 0);
}

TEST(Cli, RunTinyModelFunctionally) {
  CmdResult r = ppu("run --model tiny --prompt hello --gen 4 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = first_result(r.out);
  EXPECT_EQ(j["tokens"].size(), 4u);
  EXPECT_GT(j["time_to_first_token_s"].get<double>(), 0);
  EXPECT_GT(j["time_per_output_token_s"].get<double>(), 0);
  EXPECT_GT(op_time(j, "attention"), 0);
  // Random weights: no text is decoded from them, the ids are reported.
  EXPECT_EQ(j["weights"], "random");
  EXPECT_TRUE(j["text"].is_null());
  // Same seed, same tokens.
  CmdResult again = ppu("run --model tiny --prompt hello --gen 4 --json");
  EXPECT_EQ(first_result(again.out)["tokens"], j["tokens"]);
  r = ppu("run --model tiny --prompt hello --gen 4");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("random weights (no checkpoint), so no text: generated token ids"), std::string::npos) << r.out;
}

TEST(Cli, RunCheckpointDirectoryAndTimingOnly) {
  const std::string dir = std::string(PPU_TEST_SOURCE_DIR) + "/tests/data/qwen3-tiny";
  CmdResult r = ppu("run --model " + dir + " --raw --prompt-len 12 --gen 3 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(first_result(r.out)["weights"], "checkpoint");
  r = ppu("run --model qwen3-8b --timing-only --chip h100 --prompt-len 128 --gen 2 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = first_result(r.out);
  EXPECT_TRUE(j["timing_only"].get<bool>());
  EXPECT_GT(j["weight_bytes"].get<double>(), 15e9);
  // Timing only computes no tokens: none are reported and no text is printed.
  EXPECT_TRUE(j["tokens"].is_null());
  EXPECT_TRUE(j["weights"].is_null());
  // The record says how decode steps were launched, and --no-graph (kernel by kernel) is slower.
  EXPECT_TRUE(j["graph_decode"].get<bool>());
  r = ppu("run --model qwen3-8b --timing-only --chip h100 --prompt-len 128 --gen 2 --no-graph --json");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_FALSE(first_result(r.out)["graph_decode"].get<bool>());
  EXPECT_GT(first_result(r.out)["time_per_output_token_s"].get<double>(), j["time_per_output_token_s"].get<double>());
  r = ppu("run --model tiny --timing-only --prompt hello --gen 8");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(r.out.rfind("\ntiny on ", 0), 0u) << "timing-only output starts with text:\n" << r.out;
  // Side by side: one row per chip.
  r = ppu("run --model tiny --timing-only --chip zhenwu-810e,h20 --prompt-len 8 --gen 2 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto two = results_of(r.out);
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[1]["chip"], "h20");
  EXPECT_GT(two[1]["output_tokens_per_s"].get<double>(), 0);
  r = ppu("run --model tiny --timing-only --chip zhenwu-810e,h20 --node zhenwu-8 --prompt-len 8");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("a node fixes the chip"), std::string::npos) << r.out;
}

TEST(Cli, RunBadInput) {
  CmdResult r = ppu("run --model qwen3-9000b");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("unknown model 'qwen3-9000b'"), std::string::npos) << r.out;
  r = ppu("run --model qwen3-8b --prompt hi");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("--random-weights"), std::string::npos) << r.out;
  // Qwen3-235B in bf16 (470 GB) does not fit a 96 GB PPU: a simulated out-of-memory event, raised
  // before any layer is built, with the numbers and a split that fits (which then runs).
  r = ppu("run --model qwen3-235b-a22b --timing-only --chip zhenwu-810e --prompt-len 8 --gen 1");
  EXPECT_EQ(r.status, 3) << r.out;
  EXPECT_NE(r.out.find("qwen3-235b-a22b: the bf16 weights alone are 470.2 GB, and one zhenwu-810e holds 96 GB; try "
                       "--node zhenwu-8 --tp 4 --ep 8"),
            std::string::npos) << r.out;
  r = ppu("run --model llama3-405b --timing-only --chip h100 --prompt-len 8 --gen 1");
  EXPECT_EQ(r.status, 3) << r.out;
  EXPECT_NE(r.out.find("try --matmul-dtype fp8e4m3 --node h100-dgx --tp 8"), std::string::npos) << r.out;
  r = ppu("run --model llama3-70b --timing-only --node zhenwu-8 --tp 2 --prompt-len 8 --gen 1 --json");
  EXPECT_EQ(r.status, 0) << r.out;
  // --gen 1: no decode step, so no per-token figures (not 0 s and infinite tokens/s).
  EXPECT_TRUE(first_result(r.out)["time_per_output_token_s"].is_null()) << r.out;
  r = ppu("run --model llama3-70b --timing-only --node zhenwu-8 --tp 2 --prompt-len 8 --gen 1");
  EXPECT_NE(r.out.find("no decode step"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("inf"), std::string::npos) << r.out;
  r = ppu("run --model tiny --temperature -1 --prompt x");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("temperature -1"), std::string::npos) << r.out;
}

}  // namespace

namespace {

TEST(Cli, RunBatchesTable) {
  CmdResult r = ppu("run --model tiny --batch 1,3 --prompt-len 6 --gen 3 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = results_of(r.out);
  ASSERT_EQ(j.size(), 2u);
  const auto& b1 = j[0];
  const auto& b3 = j[1];
  EXPECT_EQ(b3["batch"].get<int>(), 3);
  // Three sequences per step deliver more tokens per second than one.
  EXPECT_GT(b3["output_tokens_per_s"].get<double>(), b1["output_tokens_per_s"].get<double>());
  r = ppu("run --model tiny --batch 2,x");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("'x' is not a batch size"), std::string::npos) << r.out;
  r = ppu("run --model tiny --batch 0");
  EXPECT_EQ(r.status, 2);
}

}  // namespace

namespace {

TEST(Cli, NodesTableShowAndErrors) {
  CmdResult r = ppu("nodes");
  ASSERT_EQ(r.status, 0) << r.out;
  for (const char* n : {"zhenwu-8", "zhenwu-16", "zhenwu-8-pcie", "a100-dgx", "h100-dgx", "h20-hgx"})
    EXPECT_NE(r.out.find(n), std::string::npos) << n;
  r = ppu("nodes show zhenwu-8 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = first_result(r.out);
  EXPECT_EQ(j["topology"], "full_mesh");
  EXPECT_EQ(j["fields"]["link_bandwidth"]["basis"], "assumed");
  EXPECT_GE(j["resources"].size(), 8u * 7u);  // one resource per direction of every chip pair
  r = ppu("nodes show nope");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("unknown node 'nope'"), std::string::npos) << r.out;
}

TEST(Cli, ClustersTableShowAndErrors) {
  CmdResult r = ppu("clusters");
  ASSERT_EQ(r.status, 0) << r.out;
  for (const char* n : {"a100-selene", "h100-24k", "h800-2k", "zhenwu-10k", "a800-10k", "h20-10k", "1280 x zhenwu-8",
                        "8 x 400 Gb/s", "pod 384 7:1"})
    EXPECT_NE(r.out.find(n), std::string::npos) << n << "\n" << r.out;
  r = ppu("clusters --json");
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = results_of(r.out);
  ASSERT_EQ(j.size(), 7u);
  // Every preset gives each chip its own NIC (8-chip nodes with 8, zhenwu-10k-16's 16-chip nodes with 16).
  for (const auto& c : j)
    EXPECT_EQ(c["chips"].get<int64_t>(), c["nodes"].get<int64_t>() * c["nics_per_node"].get<int64_t>()) << c["cluster"];

  r = ppu("clusters show zhenwu-10k --json");
  ASSERT_EQ(r.status, 0) << r.out;
  j = first_result(r.out);
  EXPECT_EQ(j["chips"], 10240);
  EXPECT_EQ(j["chip"], "zhenwu-810e");
  EXPECT_EQ(j["fields"]["nic_bandwidth"]["unit"], "B/s");
  EXPECT_DOUBLE_EQ(j["fields"]["nic_bandwidth"]["value"].get<double>(), 50e9);
  EXPECT_EQ(j["fields"]["nic_bandwidth"]["as_written"], "400 Gb/s");
  EXPECT_EQ(j["fields"]["nic_bandwidth"]["basis"], "assumed");
  EXPECT_EQ(j["fields"]["pue"]["unit"], "ratio");
  ASSERT_EQ(j["tiers"].size(), 2u);
  EXPECT_EQ(j["tiers"][0]["fields"]["nodes"]["value"], 128);
  EXPECT_TRUE(j["tiers"][1]["bandwidth_leaving_bytes_per_s"].is_null());  // nothing leaves the top tier

  r = ppu("clusters show h100-24k");
  ASSERT_EQ(r.status, 0) << r.out;
  for (const char* s : {"Llama 3 paper", "tiers[1].oversubscription (pod)", "7:1", "not rail-optimised", "aggregation"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s << "\n" << r.out;

  // A user's file, and a broken one: exit 2 naming the file, the field and what is valid.
  auto f = nlohmann::json::parse(*ppu::builtin_preset("clusters", "h800-2k"));
  f["nodes"]["value"] = 512;
  const std::string good = temp_path("my-cluster.json");
  std::ofstream(good) << f.dump(2);
  r = ppu("clusters show " + good + " --json");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(first_result(r.out)["chips"], 4096);
  f["tiers"][0]["oversubscription"]["value"] = 0.5;
  const std::string bad = temp_path("bad-cluster.json");
  std::ofstream(bad) << f.dump(2);
  r = ppu("clusters show " + bad);
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find(bad), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("tiers[0].oversubscription"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("ratio >= 1"), std::string::npos) << r.out;

  r = ppu("clusters show nope");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("unknown cluster 'nope'"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("zhenwu-10k"), std::string::npos) << r.out;
}

TEST(Cli, BenchCollectives) {
  CmdResult r = ppu("bench allreduce --node h100-dgx --sizes 1M:4M --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = results_of(r.out);
  ASSERT_EQ(j.size(), 3u);
  EXPECT_GT(j[2]["bus_bandwidth_bytes_per_s"].get<double>(), j[0]["bus_bandwidth_bytes_per_s"].get<double>());
  r = ppu("bench alltoall --node zhenwu-8 --ranks 3 --sizes 96K --check --dtype bf16");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("#wrong"), std::string::npos) << r.out;
  r = ppu("bench reducescatter --node zhenwu-16 --sizes 1M --algo ring --check");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("ring"), std::string::npos) << r.out;
  r = ppu("bench allreduce --node zhenwu-8 --ranks 9 --sizes 1M");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("9 ranks do not fit node 'zhenwu-8'"), std::string::npos) << r.out;
  r = ppu("bench allreduce --node zhenwu-8 --algo nvls --sizes 1M");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("'nvls' needs a switch"), std::string::npos) << r.out;
  r = ppu("bench broadcast --node zhenwu-8 --sizes 8G:1G");
  EXPECT_EQ(r.status, 2);
}

}  // namespace

namespace {

TEST(Cli, ThroughputTableJsonAndBadInput) {
  CmdResult r = ppu("throughput --model qwen3-0.6b --chip h100 --io 64/128,256/128 --max-batch 16 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = results_of(r.out);
  ASSERT_EQ(j.size(), 2u);
  EXPECT_EQ(j[0]["batch"].get<int>(), 16);
  EXPECT_GT(j[0]["output_tokens_per_s"].get<double>(), j[1]["output_tokens_per_s"].get<double>());
  // Side by side; auto picks each chip's fastest dtype (A800 has no FP8 unit: BF16 there).
  r = ppu("throughput --model qwen3-0.6b --chip h100,a800 --io 64/128 --max-batch 16 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto two = results_of(r.out);
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[0]["matmul_dtype"], "fp8e4m3");
  EXPECT_EQ(two[1]["matmul_dtype"], "bf16");
  EXPECT_EQ(two[1]["kv_dtype"], "bf16");
  r = ppu("throughput --model qwen3-0.6b --chip h100 --io 64/128 --max-batch 4");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("output tokens/s"), std::string::npos) << r.out;
  r = ppu("throughput --io 128-2048");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("'128-2048' is not input/output token counts"), std::string::npos) << r.out;
  r = ppu("throughput --chip a100-80g --matmul-dtype fp8e4m3");
  EXPECT_EQ(r.status, 2);
  for (const char* want : {"--matmul-dtype fp8e4m3: a100-80g has no fp8e4m3 matrix unit (no FP8 matrix unit at all",
                           "chips with FP8: b200, h100", "; or use --matmul-dtype bf16, or auto"})
    EXPECT_NE(r.out.find(want), std::string::npos) << want << "\n" << r.out;
  EXPECT_EQ(r.out.find("W8A8"), std::string::npos) << "no vendor advice is published for the A100\n" << r.out;
  // The PPU's refusal, in throughput and in run, ends with its vendor's advice as this option.
  for (const char* cmd : {"throughput --model qwen3-0.6b --chip zhenwu-810e --matmul-dtype fp8e4m3",
                          "run --model tiny --chip zhenwu-810e --matmul-dtype fp8e4m3 --timing-only"}) {
    r = ppu(cmd);
    EXPECT_EQ(r.status, 2) << cmd;
    for (const char* want : {"--matmul-dtype fp8e4m3: zhenwu-810e has no fp8e4m3 matrix unit (no FP8 matrix unit at all",
                             "chips with FP8: b200, h100, h20, h200, h800",
                             "vendor recommends W8A8 INT8 (Alibaba Cloud PPU SDK v1.5.3 release notes): --matmul-dtype int8"})
      EXPECT_NE(r.out.find(want), std::string::npos) << cmd << ": " << want << "\n" << r.out;
  }
  r = ppu("throughput --kv-dtype int4");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("--kv-dtype 'int4'"), std::string::npos) << r.out;
}

}  // namespace

namespace {

TEST(Cli, RunTensorParallelOnANode) {
  CmdResult r = ppu("run --model tiny --node zhenwu-8 --tp 2 --prompt hello --gen 4 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = first_result(r.out);
  EXPECT_EQ(j["tp"].get<int>(), 2);
  EXPECT_EQ(j["node"].get<std::string>(), "zhenwu-8");
  EXPECT_GT(op_time(j, "tp all-reduce"), 0.0);
  // The same tokens as on one chip (greedy; shards compute the same logits within bf16 rounding).
  const auto one = first_result(ppu("run --model tiny --prompt hello --gen 4 --json").out);
  EXPECT_EQ(j["tokens"], one["tokens"]);
  r = ppu("run --model tiny --node zhenwu-8 --tp 2 --sp --prompt hello --gen 4 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto s = first_result(r.out);
  EXPECT_GT(op_time(s, "tp reduce-scatter"), 0.0);
  EXPECT_EQ(s["tokens"], one["tokens"]);
  r = ppu("run --model tiny --node zhenwu-8 --tp 3 --prompt x");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("TP degree of 3 does not divide the 4 attention heads"), std::string::npos) << r.out;
  r = ppu("run --model tiny --tp 2 --prompt x");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("--node"), std::string::npos) << r.out;
  r = ppu("run --model tiny --node zhenwu-8 --tp 16 --prompt x");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("node 'zhenwu-8' has 8"), std::string::npos) << r.out;
  // Expert parallelism: 4 chips, 2 attention groups of 2; the same greedy tokens as one chip.
  r = ppu("run --model tiny-moe --node zhenwu-8 --tp 2 --ep 4 --prompt hello --gen 4 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto e = first_result(r.out);
  EXPECT_GT(op_time(e, "moe dispatch"), 0.0);
  EXPECT_EQ(e["tokens"], first_result(ppu("run --model tiny-moe --prompt hello --gen 4 --json").out)["tokens"]);
  r = ppu("run --model tiny-moe --node zhenwu-8 --tp 2 --ep 3 --prompt x");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("--ep 3 must be a multiple of --tp 2"), std::string::npos) << r.out;
  r = ppu("run --model tiny --node zhenwu-8 --ep 2 --prompt x");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("needs an MoE model"), std::string::npos) << r.out;
  r = ppu("run --model tiny --node zhenwu-8 --chip h100 --prompt x");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("disagree"), std::string::npos) << r.out;
}

TEST(Cli, SimulateTrainLayoutSearchJsonTraceAndErrors) {
  // A given layout on part of a cluster: breakdown, memory, the training budget, a trace.
  const std::string trace = temp_path("train_trace.json");
  CmdResult r = ppu("simulate train --model tiny --cluster h800-2k --chips 16 --tp 2 --pp 2 --seq-len 256 "
                    "--global-batch 32 --tokens 1B --trace " + trace);
  ASSERT_EQ(r.status, 0) << r.out;
  for (const char* s : {"TP2 PP2 DP4", "pipeline bubble", "tp comm", "memory per chip", "days", "MWh"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s << "\n" << r.out;
  std::ifstream f(trace);
  ASSERT_TRUE(f.good());
  const auto t = nlohmann::json::parse(f);
  EXPECT_GT(t["traceEvents"].size(), 8u);
  // JSON for tools; the analytical and the flow network agree on this layout.
  r = ppu("simulate train --model tiny --cluster h800-2k --chips 16 --tp 2 --pp 2 --seq-len 256 --global-batch 32 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = first_result(r.out);
  EXPECT_EQ(j["layout"]["dp"], 4);
  EXPECT_GT(j["iteration_s"].get<double>(), 0);
  // Structured records: each part of the iteration and each collective call.
  double parts = 0;
  for (const auto& p : j["breakdown"]) parts += p["time_s"].get<double>();
  EXPECT_NEAR(parts, j["iteration_s"].get<double>(), 1e-9 * parts);
  bool tp_gather = false;  // sequence parallel: TP all-gathers and reduce-scatters over the 2 TP ranks
  for (const auto& c : j["collectives"])
    tp_gather = tp_gather || (c["label"] == "tp all-gather" && c["collective"] == "allgather" && c["group"] == 2 &&
                              c["stride"] == 1 && c["bytes"].get<double>() > 0);
  EXPECT_TRUE(tp_gather) << j["collectives"];
  EXPECT_TRUE(j["memory"]["fits"].get<bool>());
  CmdResult flow = ppu("simulate train --model tiny --cluster h800-2k --chips 16 --tp 2 --pp 2 --seq-len 256 "
                       "--global-batch 32 --json --network flow");
  ASSERT_EQ(flow.status, 0) << flow.out;
  EXPECT_NEAR(first_result(flow.out)["iteration_s"].get<double>(), j["iteration_s"].get<double>(),
              1e-3 * j["iteration_s"].get<double>());
  // Every degree given, DP too: the layout uses TP x PP x CP x DP of the cluster's chips; the
  // sequence defaults to 4096, or to the model's context where that is shorter.
  r = ppu("simulate train --model tiny --cluster h800-2k --tp 2 --pp 2 --dp 4 --global-batch 32 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  j = first_result(r.out);
  EXPECT_EQ(j["layout"]["dp"], 4);
  EXPECT_EQ(j["chips"], 16);
  EXPECT_EQ(j["layout"]["seq_len"].get<int64_t>(), std::min<int64_t>(4096, ppu::load_model_config("tiny").max_position_embeddings));
  // The planner: a ranked table and an explanation.
  r = ppu("simulate train --model tiny --cluster h800-2k --chips 16 --seq-len 256 --global-batch 64 --search --top 5");
  ASSERT_EQ(r.status, 0) << r.out;
  for (const char* s : {"rank", "is fastest", "runner-up"}) EXPECT_NE(r.out.find(s), std::string::npos) << s << "\n" << r.out;
  // Bad input: each names the value and what is valid (exit status 2).
  struct Bad {
    const char* args;
    const char* says;
  };
  for (const Bad& b : {Bad{"--model tiny --cluster h800-2k --tp 3", "valid TP: 1, 2"},
                       Bad{"--model tiny --cluster h800-2k --chips 16 --tp 2 --dp 3", "must equal the chip count"},
                       Bad{"--model tiny --cluster h800-2k --chips 16 --pp 3 --tp 2", "valid PP: 1, 2"},
                       Bad{"--model tiny --cluster h800-2k --chips 16 --tp 2 --global-batch 7", "multiple of DP x micro-batch"},
                       Bad{"--model tiny --cluster h800-2k --chips 16 --tp 2 --ep 2", "dense"},
                       Bad{"--model tiny --cluster nowhere", "a100-selene"},
                       Bad{"--model tiny --cluster h800-2k --tokens 12Q", "--tokens"},
                       Bad{"--model tiny --cluster h800-2k --network ns3", "analytical, flow"},
                       Bad{"--model tiny --cluster h800-2k --chips 99999 --tp 2", "has 2048"},
                       Bad{"--model tiny --cluster h800-2k --tp 2 --dp 2048", "4096 chips asked for"},
                       Bad{"--model tiny --cluster h800-2k --tp 2 --search", "--search finds the layout"}}) {
    r = ppu(std::string("simulate train ") + b.args);
    EXPECT_EQ(r.status, 2) << b.args << "\n" << r.out;
    EXPECT_NE(r.out.find(b.says), std::string::npos) << b.args << "\n" << r.out;
  }
}

}  // namespace

namespace {

// `ppu train` end to end on a small corpus: progress lines, the run directory's files, a JSON summary,
// resume after --stop-after giving the same final weights as one uninterrupted run, `ppu run` on the
// run directory, and the errors for bad corpora and options.
void write_text_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

// A small corpus in a fresh directory for one test; returns the directory.
std::string train_dir(const std::string& name) {
  const std::string dir = temp_path(name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir + "/corpus");
  std::string text;
  for (int i = 0; i < 60; ++i) text += "In the beginning was the word, and the word was with the machine. ";
  for (int d = 0; d < 4; ++d) write_text_file(dir + "/corpus/doc" + std::to_string(d) + ".txt", text);
  return dir;
}

// Side by side: --chip takes each chip's own cluster preset, --cluster a list; records in that order.
TEST(Cli, SimulateTrainSideBySide) {
  const std::string layout = " --model tiny --chips 16 --tp 2 --pp 2 --seq-len 256 --global-batch 32";
  CmdResult r = ppu("simulate train --chip h800,zhenwu-810e" + layout + " --json");
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = results_of(r.out);
  ASSERT_EQ(j.size(), 2u);
  EXPECT_EQ(j[0]["cluster"], "h800-2k");
  EXPECT_EQ(j[1]["cluster"], "zhenwu-10k");
  EXPECT_EQ(j[1]["chip"], "zhenwu-810e");
  r = ppu("simulate train --cluster zhenwu-10k,h800-2k" + layout);
  ASSERT_EQ(r.status, 0) << r.out;
  for (const char* s : {"=== zhenwu-10k", "=== h800-2k", "side by side", "TP2 PP2 DP4"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s << "\n" << r.out;
  r = ppu("simulate train --chip h200" + layout);
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("no cluster preset is built of h200; chips with a cluster: a100-80g (a100-selene)"),
            std::string::npos) << r.out;
  r = ppu("simulate train --chip h800 --cluster h800-2k" + layout);
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("give one of them"), std::string::npos) << r.out;
}

std::string train_args(const std::string& dir) {
  return " --model tiny --data " + dir + "/corpus --steps 3 --seq-len 16 --batch 2 --eval-every 0";
}

// The JSON summary after the progress lines (stdout and stderr are captured together).
nlohmann::json last_json(const std::string& out) {
  return nlohmann::json::parse(out.substr(out.rfind("\n{") + 1))["results"].at(0);
}

std::string file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), {});
}

// `ppu train` end to end: progress lines, the run directory's files, a JSON summary, `ppu run` on it.
TEST(Cli, TrainWritesItsRunDirectory) {
  const std::string dir = train_dir("train-cli-a");
  CmdResult r = ppu("train" + train_args(dir) + " --out " + dir + "/a --json");
  ASSERT_EQ(r.status, 0) << r.out;
  for (const char* s : {"data: 4 documents", "step     1/3  loss", "grad norm", "MFU"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s << "\n" << r.out;
  const nlohmann::json j = last_json(r.out);
  EXPECT_EQ(j["steps"].get<int>(), 3);
  EXPECT_TRUE(std::isfinite(j["final_loss"].get<double>()));
  EXPECT_GT(j["simulated_step_s"].get<double>(), 0.0);
  for (const char* f : {"/a/metrics.jsonl", "/a/loss.svg", "/a/checkpoint/config.json", "/a/checkpoint/model.safetensors"})
    EXPECT_TRUE(std::filesystem::exists(dir + f)) << f;
  r = ppu("run --model " + dir + "/a --prompt hi --gen 2 --json");
  EXPECT_EQ(r.status, 0) << r.out;
}

// A Qwen3-MoE model trains on one chip (router, experts, load-balancing loss) and its checkpoint
// runs; MoE with tensor parallelism is refused, saying what is supported.
TEST(Cli, TrainMoeModel) {
  const std::string dir = train_dir("train-cli-moe");
  const std::string args = " --model tiny-moe --data " + dir + "/corpus --steps 2 --seq-len 16 --batch 2 --eval-every 0";
  CmdResult r = ppu("train" + args + " --out " + dir + "/m --json");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("step     2/2  loss"), std::string::npos) << r.out;
  EXPECT_TRUE(std::isfinite(last_json(r.out)["final_loss"].get<double>()));
  r = ppu("run --model " + dir + "/m --prompt hi --gen 2 --json");
  EXPECT_EQ(r.status, 0) << r.out;
  r = ppu("train" + args + " --out " + dir + "/tp --node zhenwu-8 --tp 2");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("mixture-of-experts training runs on one chip for now (got tp 2, ep 1)"), std::string::npos)
      << r.out;
}

// --stop-after then --resume gives the uninterrupted run's weights byte for byte - also when the
// first part recomputes every layer (--recompute full: the same bits) and the resumed part keeps it
// from the checkpoint; data parallel over 2 chips of a node gives one chip's loss within rounding.
TEST(Cli, TrainResumesBitIdenticallyAndRunsDataParallel) {
  const std::string dir = train_dir("train-cli-b");
  CmdResult r = ppu("train" + train_args(dir) + " --out " + dir + "/whole --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const double loss = last_json(r.out)["final_loss"].get<double>();
  EXPECT_EQ(last_json(r.out)["recompute"], "none");
  r = ppu("train" + train_args(dir) + " --out " + dir + "/b --stop-after 2 --recompute full");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("recomputation full"), std::string::npos) << r.out;
  r = ppu("train" + train_args(dir) + " --out " + dir + "/b --resume " + dir + "/b --json");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("resumed"), std::string::npos) << r.out;
  EXPECT_EQ(last_json(r.out)["recompute"], "full") << "the resumed run keeps its recomputation";
  const std::string wa = file_bytes(dir + "/whole/checkpoint/model.safetensors"), wb = file_bytes(dir + "/b/checkpoint/model.safetensors");
  EXPECT_TRUE(!wa.empty() && wa == wb) << "resumed weights differ from the uninterrupted run's";
  r = ppu("train" + train_args(dir) + " --out " + dir + "/dp --node zhenwu-8 --dp 2 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NEAR(last_json(r.out)["final_loss"].get<double>(), loss, 1e-3 * loss);
  EXPECT_NE(r.out.find("2 chips of"), std::string::npos) << r.out;
}

// Tensor x data parallel with ZeRO-1 over 4 chips of a node gives one chip's losses within rounding
// (1e-3, as data parallelism; train/test_parallel_training measures the layouts), its checkpoint holds
// the whole model (it resumes on one chip); fp16 reports its loss scale, and a scale that overflows
// is skipped and halved.
TEST(Cli, TrainTensorParallelZeroAndFp16) {
  const std::string dir = train_dir("train-cli-d");
  CmdResult r = ppu("train" + train_args(dir) + " --out " + dir + "/one --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const double loss = last_json(r.out)["final_loss"].get<double>();
  r = ppu("train" + train_args(dir) + " --out " + dir + "/tp --node zhenwu-8 --tp 2 --dp 2 --zero 1 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NEAR(last_json(r.out)["final_loss"].get<double>(), loss, 1e-3 * loss);
  EXPECT_NE(r.out.find("4 chips of"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("tp 2 x dp 2, ZeRO-1"), std::string::npos) << r.out;
  r = ppu("train --model tiny --data " + dir + "/corpus --steps 4 --seq-len 16 --batch 2 --eval-every 0 --out " + dir +
          "/tp --resume " + dir + "/tp");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("step     4/4"), std::string::npos) << r.out;
  r = ppu("train" + train_args(dir) + " --out " + dir + "/f16 --dtype fp16 --loss-scale 1e30");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("scale 1e+30  (skipped: fp16 overflow, scale halved)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("scale 5e+29"), std::string::npos) << r.out;
  const std::string m = file_bytes(dir + "/f16/metrics.jsonl");
  const nlohmann::json first = nlohmann::json::parse(m.substr(0, m.find('\n')));
  EXPECT_NEAR(first["loss_scale"].get<double>(), 1e30, 1e23) << m;  // the scale is an fp32
  EXPECT_TRUE(first["skipped"].get<bool>()) << m;
}

// --timing-only: one simulated step per chip, side by side, no corpus and no numbers.
TEST(Cli, TrainTimingOnlyComparesChips) {
  CmdResult r = ppu("train --model tiny --timing-only --chip zhenwu-810e,h20 --seq-len 64 --batch 2 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const nlohmann::json j = results_of(r.out);
  ASSERT_EQ(j.size(), 2u);
  for (const auto& c : j) {
    EXPECT_GT(c["simulated_step_s"].get<double>(), 0.0) << c;
    EXPECT_GT(c["mfu"].get<double>(), 0.0) << c;
    EXPECT_LT(c["mfu"].get<double>(), 1.0) << c;
  }
  // A model whose training state cannot fit one chip is refused before any layer is built.
  r = ppu("train --model qwen3-8b --timing-only --chip zhenwu-810e --seq-len 64 --batch 1");
  EXPECT_EQ(r.status, 0) << r.out;  // side by side: a row that says so
  EXPECT_NE(r.out.find("qwen3-8b: training state alone is 147.4 GB"), std::string::npos) << r.out;
  r = ppu("train --model qwen3-8b --steps 1");
  EXPECT_EQ(r.status, 3) << r.out;
  EXPECT_NE(r.out.find("one zhenwu-810e holds 96 GB"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("data:"), std::string::npos) << "refused after reading the corpus:\n" << r.out;
  EXPECT_NE(r.out.find("split it, e.g. --node zhenwu-8 --tp 4"), std::string::npos) << r.out;
  r = ppu("train --model tiny --timing-only --chip nochip --seq-len 64");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("unknown chip 'nochip'"), std::string::npos) << r.out;
}

// --timing-only with --tp/--dp/--zero: the same Trainer on timing-only ranks, on a node of each chip
// (the smallest preset with enough chips) or of --node; full recomputation makes the step longer and
// the busiest chip's memory smaller than none on the same layout.
TEST(Cli, TrainTimingOnlyParallelLayouts) {
  const std::string args = "train --model tiny --timing-only --seq-len 128 --batch 4 --tp 2 --dp 2 --zero 1 --json";
  CmdResult r = ppu(args + " --chip zhenwu-810e,h20");
  ASSERT_EQ(r.status, 0) << r.out;
  const nlohmann::json none = results_of(r.out);
  ASSERT_EQ(none.size(), 2u);
  EXPECT_EQ(none[0]["node"], "zhenwu-8");
  EXPECT_EQ(none[1]["node"], "h20-hgx");
  for (const auto& c : none) {
    EXPECT_EQ(c["tp"], 2);
    EXPECT_EQ(c["dp"], 2);
    EXPECT_EQ(c["zero"], 1);
    EXPECT_EQ(c["recompute"], "none");
    EXPECT_GT(c["simulated_step_s"].get<double>(), 0.0) << c;
    EXPECT_GT(c["mfu"].get<double>(), 0.0) << c;
  }
  r = ppu(args + " --node zhenwu-8 --recompute full");
  ASSERT_EQ(r.status, 0) << r.out;
  const nlohmann::json full = results_of(r.out);
  ASSERT_EQ(full.size(), 1u);
  EXPECT_EQ(full[0]["recompute"], "full");
  EXPECT_GT(full[0]["simulated_step_s"].get<double>(), none[0]["simulated_step_s"].get<double>());
  EXPECT_LT(full[0]["device_memory_peak_bytes"].get<int64_t>(), none[0]["device_memory_peak_bytes"].get<int64_t>());
  r = ppu("train --model tiny --timing-only --seq-len 64 --batch 2 --node zhenwu-8 --tp 2");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("zhenwu-8: tp 2 x dp 1"), std::string::npos) << r.out;
}

TEST(Cli, TrainRefusesBadInput) {
  const std::string dir = train_dir("train-cli-c");
  std::filesystem::create_directories(dir + "/empty");
  write_text_file(dir + "/bad.txt", "caf\xe9 au lait");
  CmdResult r = ppu("train" + train_args(dir) + " --out " + dir + "/a");
  ASSERT_EQ(r.status, 0) << r.out;  // a checkpoint of tiny with 3 steps, for the --resume cases
  struct Bad {
    std::string args, says;
  };
  for (const Bad& b : {Bad{"--model tiny --data " + dir + "/empty --steps 1", "no file to read"},
                       Bad{"--model tiny --data " + dir + "/nowhere --steps 1", "nowhere"},
                       Bad{"--model tiny --data " + dir + "/bad.txt --steps 1", "not valid UTF-8"},
                       Bad{"--model tiny --data " + dir + "/corpus --seq-len 100000 --steps 1", "--seq-len 100000"},
                       Bad{"--model tiny --data " + dir + "/corpus --seq-len 16 --batch 4 --micro-batch 3 --steps 1",
                           "--micro-batch 3"},
                       Bad{"--model tiny-moe --data " + dir + "/corpus --seq-len 16 --batch 2 --steps 4 --resume " + dir + "/a",
                           "another model"},
                       Bad{"--model tiny --data " + dir + "/corpus --seq-len 16 --batch 2 --steps 2 --resume " + dir + "/a",
                           "done 3 steps already"},
                       Bad{"--model tiny --data " + dir + "/corpus --seq-len 16 --batch 2 --steps 2 --dp 2", "give the node"},
                       Bad{"--model tiny --data " + dir + "/corpus --seq-len 16 --batch 3 --steps 2 --node zhenwu-8 --dp 2",
                           "--batch 3 with --dp 2"},
                       Bad{"--model tiny --data " + dir + "/corpus --seq-len 16 --batch 2 --steps 2 --node zhenwu-8 --tp 4",
                           "TP degree of 4 does not divide the 2 key/value heads"},
                       Bad{"--model tiny --data " + dir + "/corpus --seq-len 16 --batch 4 --steps 2 --node zhenwu-8 --tp 2 --dp 8",
                           "--tp 2 x --dp 8 = 16 chips: node 'zhenwu-8' has 8"},
                       Bad{"--model tiny --data " + dir + "/corpus --seq-len 16 --batch 2 --steps 2 --zero 1", "--zero 1 with --dp 1"},
                       Bad{"--model tiny --data " + dir + "/corpus --seq-len 16 --batch 2 --steps 2 --zero 2", "--zero 2: valid 0"},
                       Bad{"--model tiny --data " + dir + "/corpus --seq-len 16 --batch 2 --steps 2 --dtype fp8", "--dtype fp8: valid"},
                       Bad{"--model tiny --data " + dir + "/corpus --seq-len 16 --batch 2 --steps 2 --recompute ful",
                           "--recompute 'ful' is not a recomputation mode; use none, selective (the attention core) or full"},
                       Bad{"--model tiny --timing-only --seq-len 16 --batch 2 --recompute attention",
                           "--recompute 'attention' is not a recomputation mode"},
                       Bad{"--model tiny --timing-only --seq-len 16 --batch 2 --chip h20 --tp 2 --dp 16",
                           "--tp 2 x --dp 16 = 32 chips of h20: no node preset of that chip has as many (h20-hgx (8 chips))"},
                       Bad{"--model tiny --timing-only --seq-len 16 --batch 2 --chip h20 --node zhenwu-8 --tp 2",
                           "--chip h20 and --node zhenwu-8 (zhenwu-810e chips) disagree"},
                       Bad{"--model tiny --data " + dir + "/corpus --seq-len 16 --batch 2 --steps 2 --loss-scale -3",
                           "--loss-scale -3: valid"}}) {
    r = ppu("train " + b.args + " --out " + dir + "/bad");
    EXPECT_EQ(r.status, 2) << b.args << "\n" << r.out;
    EXPECT_NE(r.out.find(b.says), std::string::npos) << b.args << "\n" << r.out;
  }
}

}  // namespace

namespace {

// A command line `ppu` refuses as a user's mistake (exit 2) with a message holding each of `says`,
// and none of CLI11's raw texts (its bare "A subcommand is required", DBL_MAX's 300 digits).
struct Refused {
  std::string args;
  std::vector<std::string> says;
};
void expect_refused(std::initializer_list<Refused> cases) {
  for (const Refused& c : cases) {
    const CmdResult r = ppu(c.args);
    EXPECT_EQ(r.status, 2) << c.args << "\n" << r.out;
    for (const auto& s : c.says) EXPECT_NE(r.out.find(s), std::string::npos) << c.args << "\n" << r.out;
    EXPECT_EQ(r.out.find("A subcommand is required"), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find("179769"), std::string::npos) << r.out;
  }
}

// A mistyped command names what was not recognised, suggests the nearest valid ones and lists them all.
TEST(Cli, MistypedCommandsSuggestTheNearest) {
  expect_refused({
      {"serv", {"error: ppu: 'serv' is not a command; did you mean 'serve'? valid: chips, bench, nodes, clusters, "
                "simulate, serve, index, mcp, models, run",
                "Run 'ppu --help'"}},
      {"xyzzy", {"error: ppu: 'xyzzy' is not a command; valid: chips, bench"}},
      {"chisp", {"ppu: 'chisp' is not a command; did you mean 'chips'? valid: chips, bench"}},
      {"bench gem 64 64 64",
       {"ppu bench: 'gem' is not a command; did you mean 'gemm'? valid: gemm, copy, allreduce", "sendrecv",
        "Run 'ppu bench --help'"}},
      {"simulate trian", {"ppu simulate: 'trian' is not a command; did you mean 'train'? valid: train"}},
      {"chips shw h100", {"ppu chips: 'shw' is not a command; did you mean 'show'? valid: show, export"}},
      {"models sho tiny", {"ppu models: 'sho' is not a command; did you mean 'show'? valid: show"}},
      {"simulate", {"ppu simulate: a command is required; valid: train"}},
      {"", {"ppu: a command is required; valid: chips, bench"}},
  });
  // Nothing close: no "did you mean".
  EXPECT_EQ(ppu("xyzzy").out.find("did you mean"), std::string::npos);
}

TEST(Cli, PresetNamesIgnoreCase) {
  CmdResult r = ppu("chips show H100 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(first_result(r.out)["chip"], "h100");
  EXPECT_EQ(ppu("bench gemm 64 64 64 --chip ZHENWU-810E").status, 0);
  EXPECT_EQ(ppu("nodes show Zhenwu-8").status, 0);
  EXPECT_EQ(ppu("clusters show H800-2K").status, 0);
  r = ppu("models show QWEN3-0.6B --json");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(first_result(r.out)["model"], "qwen3-0.6b");  // the preset's own name, not as typed
  r = ppu("run --model TINY --prompt-len 4 --gen 1 --node ZHENWU-8 --tp 2 --chip Zhenwu-810e --json");
  EXPECT_EQ(r.status, 0) << r.out;  // --chip and --node's chip agree whatever the case
}

TEST(Cli, UnknownPresetsSuggestTheNearest) {
  expect_refused({
      {"chips show zhenwu", {"unknown chip 'zhenwu'; did you mean 'zhenwu-810e'? known chips: a100-80g"}},
      {"bench gemm 64 64 64 --chip h10", {"unknown chip 'h10'; did you mean 'h100' or 'h20'? known chips:"}},
      {"nodes show zhenwu-9", {"unknown node 'zhenwu-9'; did you mean 'zhenwu-8'? known nodes:"}},
      {"clusters show h100-24", {"unknown cluster 'h100-24'; did you mean 'h100-24k'? known clusters:"}},
      {"run --model qwen3-8 --timing-only", {"unknown model 'qwen3-8'; did you mean 'qwen3-8b'? known models:"}},
      {"models show llama3-7b", {"unknown model 'llama3-7b'; did you mean 'llama3-70b' or 'llama3-8b'?"}},
  });
  const CmdResult r = ppu("chips show nothing-like-it");
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.out.find("did you mean"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("known chips: a100-80g"), std::string::npos) << r.out;
}

TEST(Cli, ModelsShowTableAndJson) {
  CmdResult r = ppu("models show qwen3-30b-a3b");
  ASSERT_EQ(r.status, 0) << r.out;
  for (const char* s : {"qwen3-30b-a3b (qwen3_moe)", "<built-in>/models/qwen3-30b-a3b.json", "source: ",
                        "num_experts_per_tok", "moe_intermediate_size", "768", "rope_theta", "dtype",
                        "parameters 30.5B (3.35B active per token)", "bf16 weights", "KV cache per token (bf16)"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s << "\n" << r.out;

  r = ppu("models show qwen3-30b-a3b --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto doc = nlohmann::json::parse(r.out);
  EXPECT_EQ(doc["command"], "models show");
  ASSERT_EQ(doc["results"].size(), 1u);
  const auto& m = doc["results"][0];
  const ppu::ModelConfig cfg = ppu::load_model_config("qwen3-30b-a3b");
  const auto pc = ppu::param_counts(cfg);
  EXPECT_EQ(m["model"], "qwen3-30b-a3b");
  EXPECT_EQ(m["params"].get<int64_t>(), pc.total());
  EXPECT_EQ(m["active_params"].get<int64_t>(), pc.active());
  EXPECT_DOUBLE_EQ(m["bf16_weight_bytes"].get<double>(), static_cast<double>(ppu::weight_bytes(cfg, ppu::DType::kBF16)));
  EXPECT_DOUBLE_EQ(m["kv_bytes_per_token"].get<double>(),
                   static_cast<double>(ppu::kv_cache_bytes_per_token(cfg, ppu::DType::kBF16)));
  EXPECT_FALSE(m["assumed"].get<bool>());       // a published shape, as in `models --json`
  EXPECT_TRUE(m["assumed_reason"].is_null());  // null, never ""
  const auto& f = m["fields"];
  EXPECT_EQ(f["family"], "qwen3_moe");
  EXPECT_EQ(f["num_layers"].get<int64_t>(), 48);
  EXPECT_EQ(f["num_experts"].get<int64_t>(), 128);
  EXPECT_EQ(f["num_experts_per_tok"].get<int64_t>(), 8);
  EXPECT_TRUE(f["intermediate_size"].is_null());   // not used by an all-MoE model
  EXPECT_TRUE(f["rope_scaling_type"].is_null());   // no RoPE scaling
  // A dense model without RoPE: the MoE and RoPE fields are null, the rest present.
  const auto gpt = first_result(ppu("models show gpt-1.7b --json").out)["fields"];
  EXPECT_EQ(gpt["positions"], "learned");
  EXPECT_TRUE(gpt["rope_theta"].is_null());
  EXPECT_TRUE(gpt["num_experts_per_tok"].is_null());
  EXPECT_GT(gpt["intermediate_size"].get<int64_t>(), 0);
  // A checkpoint directory, like --model.
  r = ppu("models show " + std::string(PPU_TEST_SOURCE_DIR) + "/tests/data/qwen3-tiny --json");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(first_result(r.out)["model"], "qwen3-tiny");
  r = ppu("models show");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("model is required"), std::string::npos) << r.out;
}

TEST(Cli, ChipsExportWritesThePresetFile) {
  const std::string preset(*ppu::builtin_preset("chips", "h100"));
  CmdResult r = ppu("chips export h100");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(r.out, preset);  // stdout: the file itself, nothing else

  // Named by this process: other build trees may run this test at the same time under the same TempDir.
  const std::string file = temp_path("exported-h100-" + std::to_string(getpid()) + ".json");
  std::filesystem::remove(file);
  r = ppu("chips export H100 --out " + file);
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("wrote chip 'h100' to " + file), std::string::npos) << r.out;
  EXPECT_EQ(ppu::read_text_file(file), preset);
  EXPECT_EQ(ppu("chips show " + file).status, 0);  // a valid chip file as it is

  // An existing file is kept unless --force.
  std::ofstream(file) << "mine";
  r = ppu("chips export zhenwu-810e --out " + file);
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("--out " + file + ": the file exists; give another path, or add --force"), std::string::npos)
      << r.out;
  EXPECT_EQ(ppu::read_text_file(file), "mine");
  r = ppu("chips export zhenwu-810e --out " + file + " --force");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(ppu::read_text_file(file), std::string(*ppu::builtin_preset("chips", "zhenwu-810e")));

  r = ppu("chips export h10");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("unknown chip 'h10'; did you mean 'h100' or 'h20'?"), std::string::npos) << r.out;
  r = ppu("chips export h100 --out " + temp_path("no-such-dir") + "/chip.json");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("no-such-dir/chip.json: cannot create file"), std::string::npos) << r.out;
  EXPECT_EQ(ppu("chips export").status, 2);
  std::filesystem::remove(file);
}

// Integer options out of range say the range in words, never CLI11's 300-digit DBL_MAX.
TEST(Cli, OutOfRangeIntegersSayTheRange) {
  expect_refused({
      {"run --gen 0", {"error: --gen: must be at least 1, not 0"}},
      {"run --prompt-len -3", {"--prompt-len: must be at least 0, not -3"}},
      {"run --gen x", {"--gen: 'x' is not a whole number; give one of at least 1"}},
      {"run --tp 0 --node zhenwu-8", {"--tp: must be at least 1, not 0"}},
      {"bench allreduce --ranks 0", {"--ranks: must be at least 1, not 0"}},
      {"train --steps 0", {"--steps: must be at least 1, not 0"}},
      {"train --eval-batches 0", {"--eval-batches: must be at least 1, not 0"}},
      {"simulate train --zero 7", {"--zero: must be 0 to 3, not 7"}},
      {"simulate train --zero 1.5", {"--zero: '1.5' is not a whole number; give one from 0 to 3"}},
      {"simulate train --micro-batch 0 --tp 1", {"--micro-batch: must be at least 1, not 0"}},  // was SIGFPE
      {"simulate train --tp 0", {"--tp: must be at least 1, not 0"}},
      {"throughput --max-batch 0", {"--max-batch: must be at least 1, not 0"}},
  });
}

// Issue 17: hostile inputs that crashed, hung or printed nonsense are each one clear error line, exit 2.
TEST(Cli, HostileInputsAreClearErrors) {
  auto write = [](const std::string& name, const std::string& text) {
    const std::string path = temp_path(name);
    std::ofstream(path) << text;
    return path;
  };
  // A preset with field `key` set to the raw JSON number `number`.
  auto preset_with = [&](const char* kind, const char* name, const std::string& key, const std::string& number) {
    auto j = nlohmann::json::parse(*ppu::builtin_preset(kind, name));
    j[key]["value"] = "@N@";
    std::string text = j.dump(2);
    text.replace(text.find("\"@N@\""), 5, number);
    return write(std::string(kind) + "-" + key + "-" + number + ".json", text);
  };
  auto expect_error_line = [](const std::string& args, const std::string& message) {
    const CmdResult r = ppu(args);
    EXPECT_EQ(r.status, 2) << args << "\n" << r.out;
    EXPECT_EQ(r.out, "error: " + message + "\n") << args;
  };
  const std::string overflow = "the number 1e999999 is beyond the range of a double (about 1.8e308)";
  std::string f = preset_with("chips", "h100", "cores", "1e999999");
  expect_error_line("chips show " + f, f + ": not valid JSON: " + overflow);
  f = preset_with("nodes", "h100-dgx", "chips", "1e999999");
  expect_error_line("nodes show " + f, f + ": not valid JSON: " + overflow);
  f = preset_with("clusters", "h100-24k", "nodes", "1e999999");
  expect_error_line("clusters show " + f, f + ": not valid JSON: " + overflow);
  const std::string model = temp_path("overflow-model");
  std::filesystem::create_directories(model);
  std::ofstream(model + "/config.json") << R"({"model_type": "qwen3", "hidden_size": 1e999999})";
  expect_error_line("run --model " + model + " --timing-only", model + "/config.json: not valid JSON: " + overflow);

  f = preset_with("chips", "h100", "cores", "1e19");
  expect_error_line("bench gemm 256 256 256 --chip " + f,
                    f + ": field 'cores': 1e+19 is out of range; valid: 1 to 100000 (the timing engine keeps state per "
                        "core; today's GPUs have about 150)");
  f = preset_with("nodes", "h100-dgx", "chips", "10000");
  expect_error_line("nodes show " + f,
                    f + ": field 'chips': 10000 is out of range; valid: 1 to 1024 (a node is one scale-up domain: the "
                        "largest announced, NVL576, has 576 chips, and its link graph grows with the square of the "
                        "count)");
  expect_error_line("bench gemm 256 256 256 --chip /dev/zero",
                    "/dev/zero: a chip file must be a regular file, not a character device");
  expect_error_line("bench gemm 256 256 256 --chip " + model,
                    model + ": a chip file must be a regular file, not a directory");
  expect_error_line("run --model tiny --sp --timing-only",
                    "--sp needs --tp 2 or more (it splits the norms' tokens over the tensor-parallel chips); got --tp 1");
}

// The exit statuses README.md "Exit codes" lists: 0 done, 2 a user's mistake (CLI11's parse errors
// included, not its 100+ codes), 3 a simulated event. (1, a failed --check, has no input that causes
// it: the kernels agree with their references.)
TEST(Cli, ExitCodes) {
  EXPECT_EQ(ppu("--help").status, 0);
  EXPECT_EQ(ppu("--version").status, 0);
  EXPECT_EQ(ppu("bench gemm --help").status, 0);
  EXPECT_EQ(ppu("chips").status, 0);
  expect_refused({
      {"bench gemm 4 4", {"error: K is required", "Run 'ppu bench gemm --help'"}},
      {"bench gemm 4 4 4 --nope", {"error: The following argument was not expected: --nope"}},
      {"bench gemm 4 4 4 5", {"error: The following argument was not expected: 5"}},
      {"run --seed abc", {"error: Could not convert: --seed = abc"}},
      {"chips show", {"error: chip is required"}},
      {"bench gemm 0 4 4", {"error: bench gemm: M=0 N=4 K=4 batch=1; every size must be positive"}},  // a UserError
  });
  EXPECT_EQ(ppu("bench copy 40GB --chip a100-80g").status, 3);
  // No layout of a trillion-parameter model fits 8 chips: a simulated out-of-memory too.
  const CmdResult r = ppu("simulate train --model qwen3-max --cluster h800-2k --chips 8");
  EXPECT_EQ(r.status, 3) << r.out;
  EXPECT_NE(r.out.find("no layout fits"), std::string::npos) << r.out;
  // A given layout that does not fit is still reported (and in --json), with the same status.
  const std::string big = "simulate train --model qwen3-32b --cluster h800-2k --tp 1 --pp 1 --dp 8 --recompute none";
  const CmdResult g = ppu(big);
  EXPECT_EQ(g.status, 3) << g.out;
  EXPECT_NE(g.out.find("DOES NOT FIT"), std::string::npos) << g.out;
  EXPECT_NE(g.out.find("simulated event: TP1 PP1 DP8"), std::string::npos) << g.out;
  const CmdResult gj = ppu(big + " --json");
  EXPECT_EQ(gj.status, 3) << gj.out;
  EXPECT_FALSE(first_result(gj.out)["memory"]["fits"].get<bool>()) << gj.out;
}

}  // namespace

namespace {

// `ppu simulate serve`: the table, side-by-side JSON, a trace file, the Perfetto output, and every
// kind of bad input as one clear error line.
TEST(Cli, SimulateServeTableJsonTraceAndErrors) {
  CmdResult r = ppu("simulate serve --model tiny --chip h100 --io 64/16 --requests 40 --rate 200");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("TTFT p50/p90/p99 ms"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("40 requests of 64 input and 16 output tokens, Poisson arrivals at 200/s"), std::string::npos)
      << r.out;
  r = ppu("simulate serve --model tiny --chip h100,a800 --io 64/16 --requests 40 --rate 200 --slo ttft=1s,tpot=50ms "
          "--search-requests 30 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = results_of(r.out);
  ASSERT_EQ(j.size(), 2u);
  EXPECT_EQ(j[0]["chip"], "h100");
  EXPECT_EQ(j[1]["chip"], "a800");
  for (const auto& row : j) {
    EXPECT_EQ(row["completed"].get<int>(), 40);
    EXPECT_GT(row["max_rate_per_s"].get<double>(), 0.0);
    EXPECT_LE(row["ttft"]["p50_s"].get<double>(), row["ttft"]["p99_s"].get<double>());
  }
  // A trace file of our own, and a Perfetto trace of the run.
  const std::string trace = temp_path("serve_trace.jsonl");
  std::ofstream(trace) << "{\"arrival_s\": 0, \"input_tokens\": 30, \"output_tokens\": 4}\n"
                          "{\"arrival_s\": 0.001, \"input_tokens\": 50, \"output_tokens\": 3}\n";
  const std::string perfetto = temp_path("serve_perfetto.json");
  r = ppu("simulate serve --model tiny --chip h100 --trace " + trace + " --perfetto " + perfetto + " --json");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(first_result(r.out)["completed"].get<int>(), 2);
  std::ifstream pf(perfetto);
  const auto events = nlohmann::json::parse(pf);
  EXPECT_GT(events["traceEvents"].size(), 4u);
  const std::string bad_trace = temp_path("serve_bad.csv");
  std::ofstream(bad_trace) << "time,input_len,output_len\n0,12,x\n";
  expect_refused({
      {"simulate serve --model tiny --trace " + bad_trace,
       {"serve_bad.csv line 2: output_len 'x' must be a whole number of tokens, 1 .. 16777216"}},
      {"simulate serve --model tiny --trace azure-chat", {"unknown trace 'azure-chat'; built-in traces: azure-conv, azure-code"}},
      {"simulate serve --model tiny --io 64-16", {"--io '64-16' is not input/output token counts (e.g. 1024/256)"}},
      {"simulate serve --model tiny --io 64/16 --trace azure-conv", {"--trace and --io: give one"}},
      {"simulate serve --model tiny --io 64/16 --arrival gamma", {"--arrival gamma needs --rate"}},
      {"simulate serve --model tiny --io 64/16 --arrival weibull --rate 1", {"--arrival 'weibull'; valid: poisson, gamma"}},
      {"simulate serve --model tiny --io 64/16 --rate -2", {"--rate -2; valid: a positive number of requests per second"}},
      {"simulate serve --model tiny --io 64/16 --slo ttft=2", {"'2' needs a unit, s or ms"}},
      {"simulate serve --model tiny --io 64/16 --admission lazy", {"--admission 'lazy'; valid: on-demand, reserve"}},
      {"simulate serve --model tiny --io 64/16 --kv-fraction 1.5", {"kv memory fraction 1.5; valid: above 0, at most 1"}},
      {"simulate serve --model tiny --io 64/16 --max-num-seqs 0", {"--max-num-seqs: must be at least 1, not 0"}},
      {"simulate serve --model tiny --io 64/16 --block-size 0", {"--block-size: must be 1 to 4096, not 0"}},
      {"simulate serve --model tiny --io 64/16 --duration -1", {"--duration -1; valid: 0 (no limit)"}},
      {"simulate serve --model tiny --io 64/16 --chip h100,a800 --perfetto x.json", {"--perfetto needs a single --chip"}},
  });
  // A request longer than the cache can ever hold: rejected and named, the rest served.
  r = ppu("simulate serve --model tiny --chip h100 --io 3000/16 --requests 2 --max-model-len 2048 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(first_result(r.out)["rejected"].get<int>(), 2);
  EXPECT_NE(first_result(r.out)["first_rejection"].get<std::string>().find("exceeds the model's context of 2048"),
            std::string::npos);
}

}  // namespace

namespace {

// `ppu simulate serve --node --tp --ep`: tiny-moe split over four chips of a node (JSON record and
// table line), and one error per kind of bad layout, each naming the option and what is valid.
TEST(Cli, SimulateServeOnANodeWithTensorAndExpertParallelism) {
  CmdResult r = ppu("simulate serve --model tiny-moe --node h100-dgx --tp 2 --ep 4 --io 64/16 --requests 30 --rate 100 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto row = first_result(r.out);
  EXPECT_EQ(row["chip"], "h100");
  EXPECT_EQ(row["node"], "h100-dgx");
  EXPECT_EQ(row["tp"], 2);
  EXPECT_EQ(row["ep"], 4);
  EXPECT_EQ(row["chips"], 4);
  EXPECT_EQ(row["dp_groups"], 2);
  EXPECT_EQ(row["completed"].get<int>(), 30);
  r = ppu("simulate serve --model tiny-moe --node h100-dgx --chip h100 --ep 2 --io 64/16 --requests 10 --rate 100");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("h100-dgx: 2 chips, TP 1, EP 2"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("attention in 2 data-parallel groups of 1 chip"), std::string::npos) << r.out;
  expect_refused({
      {"simulate serve --model tiny-moe --io 64/16 --tp 2", {"--tp 2 --ep 1: give the node whose chips run the shards"}},
      {"simulate serve --model tiny-moe --io 64/16 --node h100-dgx --tp 2 --ep 3",
       {"--ep 3 must be a multiple of --tp 2 (attention runs in ep / tp groups of tp chips)"}},
      {"simulate serve --model tiny --io 64/16 --node h100-dgx --ep 2",
       {"--ep 2: model 'tiny' is dense; expert parallelism needs an MoE model (valid: --ep 1)"}},
      {"simulate serve --model tiny-moe --io 64/16 --node h100-dgx --ep 16",
       {"--tp 1 --ep 16: 16 chips asked for; node 'h100-dgx' has 8"}},
      {"simulate serve --model tiny-moe --io 64/16 --node h100-dgx --tp 4",
       {"a TP degree of 4 does not divide the 2 key/value heads; valid TP: 1, 2"}},
      {"simulate serve --model tiny-moe --io 64/16 --node h100-dgx --chip a800 --tp 2",
       {"--chip a800 and --node h100-dgx (h100 chips) disagree; give one of them"}},
      {"simulate serve --model tiny-moe --io 64/16 --node dgx-9000 --tp 2", {"dgx-9000"}},
      {"simulate serve --model tiny-moe --io 64/16 --node h100-dgx --tp 0", {"--tp: must be at least 1, not 0"}},
      {"simulate serve --model tiny-moe --io 64/16 --node h100-dgx --ep 0", {"--ep: must be at least 1, not 0"}},
  });
}

}  // namespace

namespace {

// A tokenizer with more ids than the model has embedding rows is refused before anything runs
// (issue 17: an id beyond the model's vocabulary was accepted without a word).
TEST(Cli, TokenizerLargerThanTheModelsVocabularyIsRefused) {
  // vocab_size 512; the Qwen3 tokenizer has 151,669 ids.
  const std::string model = std::string(PPU_TEST_SOURCE_DIR) + "/tests/data/qwen3-tiny";
  for (const std::string& cmd : {"run --model " + model + " --prompt hi --gen 1", "serve --model " + model + " --port 0"}) {
    const CmdResult r = ppu(cmd);
    EXPECT_EQ(r.status, 2) << cmd << "\n" << r.out;
    EXPECT_NE(r.out.find("the tokenizer has ids up to 151668, but the model qwen3-tiny has 512 embedding rows"),
              std::string::npos)
        << r.out;
  }
}

// `ppu index` and `ppu mcp`: a missing folder, a bad --tools list and a missing index are refused
// with the name and what is valid (exit 2); an index builds and a second run reads nothing again.
TEST(Cli, IndexAndMcpErrors) {
  const std::string dir = std::string(PPU_TEST_SOURCE_DIR) + "/presets/models";
  const std::string kb = ppu::test::temp_path("cli-index.sqlite");
  for (const char* s : {"", "-wal", "-shm"}) std::filesystem::remove(kb + s);
  CmdResult r = ppu("index " + dir + " --out " + kb + " --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto row = first_result(r.out);
  EXPECT_GT(row["added"].get<int>(), 10);
  r = ppu("index " + dir + " --out " + kb + " --json");
  EXPECT_EQ(first_result(r.out)["bytes_read"], 0);
  expect_refused({
      {"index /no/such/folder --out " + kb, {"/no/such/folder: no such folder to index"}},
      {"index", {"folder is required"}},
      {"mcp --tools code=x.sqlite", {"'code=x.sqlite': code takes no file"}},
      {"mcp --tools browser=x", {"'browser=x' is not a tool; valid: search=INDEX.sqlite"}},
      {"mcp --tools search=/no/such.sqlite", {"/no/such.sqlite: no such index file", "ppu index"}},
      {"mcp", {"--tools is required"}},
  });
}

}  // namespace

namespace {

// `ppu compare` (docs/compare.md) on the kernels suite: one record per workload with a value for
// every chip, each ratio the baseline's performance over the other's computed from those values
// (relative 1e-12), the claims' geometric means recomputed from the ratios, and the report written
// to --out equal to the --json document (host_s aside).
TEST(Cli, CompareKernelsSuite) {
  const std::string dir = ppu::test::temp_path("cli-compare");
  std::filesystem::remove_all(dir);
  CmdResult r = ppu("compare --chips zhenwu-810e,a800,h20 --suite kernels --json --out " + dir);
  ASSERT_EQ(r.status, 0) << r.out;
  const size_t start = r.out.find("\n{\n") == std::string::npos ? 0 : r.out.find("\n{\n") + 1;
  const auto doc = nlohmann::json::parse(r.out.substr(start));
  EXPECT_EQ(doc["command"], "compare");
  EXPECT_EQ(doc["suite"], "kernels");
  EXPECT_EQ(doc["baseline"], "zhenwu-810e");
  ASSERT_EQ(doc["chips"].size(), 3u);
  EXPECT_EQ(doc["chips"][2]["dtype"], "fp8e4m3");  // H20 has an FP8 unit: its best dtype
  EXPECT_EQ(doc["chips"][1]["dtype"], "bf16");     // A800 has none
  ASSERT_GE(doc["results"].size(), 8u);
  std::map<std::string, std::pair<double, int>> logs;  // chip -> (sum of log ratios, count)
  for (const auto& w : doc["results"]) {
    EXPECT_EQ(w["suite"], "kernels") << w["workload"];
    ASSERT_EQ(w["chips"].size(), 3u);
    const auto& base = w["chips"][0];
    for (const auto& c : w["chips"]) {
      ASSERT_TRUE(c["value"].is_number()) << w["workload"] << " " << c.dump();
      EXPECT_GT(c["value"].get<double>(), 0) << w["workload"];
      EXPECT_TRUE(c["error"].is_null());
    }
    for (size_t i = 1; i < 3; ++i) {
      const double b = base["value"], o = w["chips"][i]["value"];
      const double want = w["better"] == "lower" ? o / b : b / o;
      const auto& rel = w["relative_performance"][i - 1];
      EXPECT_EQ(rel["chip"], w["chips"][i]["chip"]);
      EXPECT_NEAR(rel["value"].get<double>(), want, 1e-12 * want) << w["workload"];
      logs[rel["chip"]].first += std::log(want);
      logs[rel["chip"]].second += 1;
    }
    if (w["group"] == "gemm") {  // roofline points: achieved FLOP/s below the chip's peak
      for (size_t i = 0; i < 3; ++i) {
        const auto& c = w["chips"][i];
        EXPECT_LE(c["flops"].get<double>() / c["time_s"].get<double>(),
                  doc["chips"][i]["matrix_peak_flops_per_s"].get<double>() * (1 + 1e-9))
            << w["workload"];
      }
    }
  }
  ASSERT_EQ(doc["claims"].size(), 2u);
  for (const auto& cl : doc["claims"]) {
    const auto& [sum, n] = logs[cl["chip"]];
    EXPECT_EQ(cl["workloads"], n);
    const double g = std::exp(sum / n);
    EXPECT_NEAR(cl["geomean"].get<double>(), g, 1e-9 * g);
    const bool holds = cl["claim"] == "above_a800" ? g > 1 : g >= 0.8 && g <= 1.25;
    EXPECT_EQ(cl["verdict"], holds ? "holds" : "does_not_hold");
  }
  EXPECT_TRUE(doc["sweep"].is_null());
  bool assumed_source = false;
  for (const auto& s : doc["sources"]) assumed_source |= s["chip"] == "zhenwu-810e" && s["basis"] == "assumed";
  EXPECT_TRUE(assumed_source);
  std::ifstream f(dir + "/report.json");
  ASSERT_TRUE(f) << dir;
  auto written = nlohmann::json::parse(f);
  auto shown = doc;
  written.erase("host_s");
  shown.erase("host_s");
  EXPECT_EQ(written, shown);
}

// A sweep re-runs the swept chip at each grid point: with HBM bandwidth doubled the PPU's stream
// workloads get faster and so its geometric mean against H20 grows; the cells are the grid in order.
TEST(Cli, CompareSweep) {
  CmdResult r = ppu("compare --chips zhenwu-810e,h20 --suite kernels --sweep zhenwu-810e.hbm_bandwidth=1.5:3 "
                    "--sweep-points 2 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto doc = nlohmann::json::parse(r.out.substr(r.out.find("\n{\n") == std::string::npos ? 0 : r.out.find("\n{\n") + 1));
  const auto& sw = doc["sweep"];
  ASSERT_EQ(sw["axes"].size(), 1u);
  EXPECT_EQ(sw["axes"][0]["unit"], "TB/s");
  ASSERT_EQ(sw["cells"].size(), 2u);
  EXPECT_EQ(sw["cells"][0]["values"][0], 1.5);
  EXPECT_EQ(sw["cells"][1]["values"][0], 3.0);
  const double lo = sw["cells"][0]["claims"][0]["geomean"], hi = sw["cells"][1]["claims"][0]["geomean"];
  EXPECT_EQ(sw["cells"][0]["claims"][0]["claim"], "comparable_h20");
  EXPECT_GT(hi, lo * 1.05);
  // The baseline's own run (2.6 TB/s as the preset has it) lies between the two cells.
  const double mid = doc["claims"][0]["geomean"];
  EXPECT_GT(mid, lo);
  EXPECT_LT(mid, hi);
}

// Every bad input names what is wrong and what is valid, exit 2, before any workload runs.
TEST(Cli, CompareBadInput) {
  const std::string file = ppu::test::temp_path("cli-compare-file");
  std::ofstream(file) << "x";
  expect_refused({
      {"compare --chips zhenwu-810e,h2O", {"unknown chip 'h2O'", "did you mean", "h20", "a800"}},
      {"compare --suite infrence", {"--suite 'infrence' is not a suite", "did you mean 'inference'",
                                    "valid: kernels, inference, training, all"}},
      {"compare --chips zhenwu-810e,a800 --dtype fp8e4m3",
       {"--dtype fp8e4m3: zhenwu-810e has no fp8e4m3 matrix unit; chips with one:", "h20", "h100"}},
      {"compare --sweep zhenwu-810e.matrix_bf16", {"--sweep 'zhenwu-810e.matrix_bf16': write CHIP.FIELD=LO:HI"}},
      {"compare --sweep zhenwu-810e.matrix_bf16=a:160", {"'a' is not a number"}},
      {"compare --sweep h100.matrix_bf16=90:160", {"chip 'h100' is not one of --chips", "zhenwu-810e, a800, h20"}},
      {"compare --sweep zhenwu-810e.cores=32:64",
       {"'cores' is not a sweepable chip field", "sweepable: matrix_bf16, matrix_fp16", "hbm_bandwidth",
        "chip_link_bandwidth"}},
      {"compare --sweep zhenwu-810e.matrix_bf16=160:90",
       {"the range 160:90 is empty or inverted", "0 < LO < HI", "120 TFLOPS"}},
      {"compare --sweep zhenwu-810e.matrix_bf16=90:90", {"the range 90:90 is empty or inverted"}},
      {"compare --sweep zhenwu-810e.matrix_bf16=90:160 --sweep-points 1",
       {"--sweep-points 1: a sweep needs at least 2 points per axis"}},
      {"compare --suite kernels --out " + file + "/sub", {"--out " + file + "/sub: cannot create the folder", "Not a directory"}},
  });
}

}  // namespace

namespace {

// A chip file of the user's own has no node or cluster preset: the 8-chip workload records why (value
// and ratio null) and the others go on; with a baseline that is not the PPU no claim is made.
TEST(Cli, CompareChipFileWithoutNode) {
  const std::string file = ppu::test::temp_path("cli-compare-chip.json");
  auto chip = nlohmann::json::parse(ppu::builtin_preset("chips", "h20").value());
  chip["name"] = "my-h20";
  std::ofstream(file) << chip.dump(2);
  CmdResult r = ppu("compare --chips " + file + ",a800 --suite kernels --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto doc = nlohmann::json::parse(r.out.substr(r.out.find("\n{\n") == std::string::npos ? 0 : r.out.find("\n{\n") + 1));
  EXPECT_EQ(doc["baseline"], "my-h20");
  EXPECT_TRUE(doc["claims"].empty());
  EXPECT_TRUE(doc["chips"][0]["node"].is_null());
  bool saw = false;
  for (const auto& w : doc["results"]) {
    if (w["workload"] != "allreduce_8") {
      EXPECT_TRUE(w["chips"][0]["value"].is_number()) << w["workload"];
      continue;
    }
    saw = true;
    EXPECT_TRUE(w["chips"][0]["value"].is_null());
    EXPECT_EQ(w["chips"][0]["error"], "no node preset for my-h20");
    EXPECT_TRUE(w["chips"][1]["value"].is_number());
    EXPECT_TRUE(w["relative_performance"][0]["value"].is_null());
  }
  EXPECT_TRUE(saw);
}

}  // namespace
