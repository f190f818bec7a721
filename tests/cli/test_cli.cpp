// The `ppu` command as a user runs it: tables and --json documents, and clear errors with the right
// exit status (2 for a user's mistake, 3 for a simulated event such as device out-of-memory).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "arch/Presets.hpp"

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

TEST(Cli, ChipsTableAndJson) {
  CmdResult r = ppu("chips");
  EXPECT_EQ(r.status, 0) << r.out;
  for (const char* chip : {"zhenwu-810e", "a100-80g", "a800", "h20", "h100", "h800", "h200", "b200"})
    EXPECT_NE(r.out.find(chip), std::string::npos) << chip;
  r = ppu("chips --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.size(), 8u);
  for (const auto& c : j) {
    EXPECT_GT(c["matrix_bf16_flops_per_s"].get<double>(), 0);
    EXPECT_GT(c["hbm_bytes"].get<double>(), 0);
  }
}

TEST(Cli, ChipsShowEveryFieldWithUnitAndBasis) {
  CmdResult r = ppu("chips show zhenwu-810e --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["chip"], "zhenwu-810e");
  EXPECT_EQ(j["fields"]["hbm_size"]["basis"], "published");
  EXPECT_EQ(j["fields"]["hbm_bandwidth"]["basis"], "assumed");
  EXPECT_DOUBLE_EQ(j["fields"]["hbm_size"]["value"].get<double>(), 96e9);
  EXPECT_EQ(j["fields"]["hbm_size"]["unit"], "B");
  EXPECT_TRUE(j["fields"]["matrix_fp8"].is_null());
}

TEST(Cli, UserChipFileAndItsErrors) {
  auto j = nlohmann::json::parse(*ppu::builtin_preset("chips", "h100"));
  j["name"] = "my-chip";
  j["hbm_size"]["value"] = 160;
  const std::string good = temp_path("my-chip.json");
  std::ofstream(good) << j.dump(2);
  CmdResult r = ppu("chips show " + good + " --json");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_DOUBLE_EQ(nlohmann::json::parse(r.out)["fields"]["hbm_size"]["value"].get<double>(), 160e9);
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
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_TRUE(j["check"]["passed"].get<bool>());
  EXPECT_EQ(j["check"]["outputs_checked"].get<int>(), 96 * 80);
  EXPECT_GT(j["time_s"].get<double>(), 0);
  EXPECT_GT(j["tflops"].get<double>(), 0);
  EXPECT_LT(j["percent_of_peak"].get<double>(), 100);
}

TEST(Cli, BenchGemmAllChipsSideBySide) {
  CmdResult r = ppu("bench gemm 1024 1024 1024 --chip all --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j.size(), 8u);
}

TEST(Cli, BenchGemmBadInput) {
  CmdResult r = ppu("bench gemm 0 4 4");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("must be positive"), std::string::npos) << r.out;
  r = ppu("bench gemm 4 4 4 --dtype fp8 --chip zhenwu-810e");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("no fp8e4m3 matrix unit"), std::string::npos) << r.out;
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
  const auto j = nlohmann::json::parse(r.out);
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
