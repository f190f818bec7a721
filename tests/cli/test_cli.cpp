// The `ppu` command as a user runs it: tables and --json documents, and clear errors with the right
// exit status (2 for a user's mistake, 3 for a simulated event such as device out-of-memory).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

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

namespace {

TEST(Cli, ModelsTableAndJson) {
  CmdResult r = ppu("models --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
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
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["tokens"].size(), 4u);
  EXPECT_GT(j["prefill_time_s"].get<double>(), 0);
  EXPECT_GT(j["decode_time_per_token_s"].get<double>(), 0);
  EXPECT_TRUE(j["op_times"].contains("attention_s"));
  // Same seed, same tokens.
  CmdResult again = ppu("run --model tiny --prompt hello --gen 4 --json");
  EXPECT_EQ(nlohmann::json::parse(again.out)["tokens"], j["tokens"]);
}

TEST(Cli, RunCheckpointDirectoryAndTimingOnly) {
  const std::string dir = std::string(PPU_TEST_SOURCE_DIR) + "/tests/data/qwen3-tiny";
  CmdResult r = ppu("run --model " + dir + " --raw --prompt-len 12 --gen 3 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  r = ppu("run --model qwen3-8b --timing-only --chip h100 --prompt-len 128 --gen 2 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_TRUE(j["timing_only"].get<bool>());
  EXPECT_GT(j["weight_bytes"].get<double>(), 15e9);
}

TEST(Cli, RunBadInput) {
  CmdResult r = ppu("run --model qwen3-9000b");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("unknown model 'qwen3-9000b'"), std::string::npos) << r.out;
  r = ppu("run --model qwen3-8b --prompt hi");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("--random-weights"), std::string::npos) << r.out;
  // Qwen3-235B in bf16 (470 GB) does not fit a 96 GB PPU: a simulated out-of-memory event.
  r = ppu("run --model qwen3-235b-a22b --timing-only --chip zhenwu-810e --prompt-len 8 --gen 1");
  EXPECT_EQ(r.status, 3) << r.out;
  EXPECT_NE(r.out.find("out of memory"), std::string::npos) << r.out;
  r = ppu("run --model tiny --temperature -1 --prompt x");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("temperature -1"), std::string::npos) << r.out;
}

}  // namespace

namespace {

TEST(Cli, RunBatchesTable) {
  CmdResult r = ppu("run --model tiny --batch 1,3 --prompt-len 6 --gen 3 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["batches"].size(), 2u);
  const auto& b1 = j["batches"][0];
  const auto& b3 = j["batches"][1];
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
  const auto j = nlohmann::json::parse(r.out);
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
  auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.size(), 6u);
  for (const auto& c : j) EXPECT_EQ(c["chips"].get<int64_t>(), c["nodes"].get<int64_t>() * 8) << c["cluster"];

  r = ppu("clusters show zhenwu-10k --json");
  ASSERT_EQ(r.status, 0) << r.out;
  j = nlohmann::json::parse(r.out);
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
  EXPECT_EQ(nlohmann::json::parse(r.out)["chips"], 4096);
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
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["results"].size(), 3u);
  EXPECT_GT(j["results"][2]["busbw_bytes_per_s"].get<double>(), j["results"][0]["busbw_bytes_per_s"].get<double>());
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
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["cases"].size(), 2u);
  EXPECT_EQ(j["cases"][0]["batch"].get<int>(), 16);
  EXPECT_GT(j["cases"][0]["output_tokens_per_s"].get<double>(), j["cases"][1]["output_tokens_per_s"].get<double>());
  r = ppu("throughput --model qwen3-0.6b --chip h100 --io 64/128 --max-batch 4");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("output tokens/s"), std::string::npos) << r.out;
  r = ppu("throughput --io 128-2048");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("'128-2048' is not input/output token counts"), std::string::npos) << r.out;
  r = ppu("throughput --chip a100-80g");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("no fp8e4m3 matrix unit"), std::string::npos) << r.out;
  r = ppu("throughput --kv-dtype int4");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("--kv-dtype 'int4'"), std::string::npos) << r.out;
}

}  // namespace

namespace {

TEST(Cli, RunTensorParallelOnANode) {
  CmdResult r = ppu("run --model tiny --node zhenwu-8 --tp 2 --prompt hello --gen 4 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["tp"].get<int>(), 2);
  EXPECT_EQ(j["node"].get<std::string>(), "zhenwu-8");
  EXPECT_GT(j["op_times"]["tp all-reduce_s"].get<double>(), 0.0);
  // The same tokens as on one chip (greedy; shards compute the same logits within bf16 rounding).
  const auto one = nlohmann::json::parse(ppu("run --model tiny --prompt hello --gen 4 --json").out);
  EXPECT_EQ(j["tokens"], one["tokens"]);
  r = ppu("run --model tiny --node zhenwu-8 --tp 2 --sp --prompt hello --gen 4 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto s = nlohmann::json::parse(r.out);
  EXPECT_GT(s["op_times"]["tp reduce-scatter_s"].get<double>(), 0.0);
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
  const auto e = nlohmann::json::parse(r.out);
  EXPECT_GT(e["op_times"]["moe dispatch_s"].get<double>(), 0.0);
  EXPECT_EQ(e["tokens"], nlohmann::json::parse(ppu("run --model tiny-moe --prompt hello --gen 4 --json").out)["tokens"]);
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
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["layout"]["dp"], 4);
  EXPECT_GT(j["iteration_s"].get<double>(), 0);
  EXPECT_TRUE(j["memory"]["fits"].get<bool>());
  CmdResult flow = ppu("simulate train --model tiny --cluster h800-2k --chips 16 --tp 2 --pp 2 --seq-len 256 "
                       "--global-batch 32 --json --network flow");
  ASSERT_EQ(flow.status, 0) << flow.out;
  EXPECT_NEAR(nlohmann::json::parse(flow.out)["iteration_s"].get<double>(), j["iteration_s"].get<double>(),
              1e-3 * j["iteration_s"].get<double>());
  // Every degree given, DP too: the layout uses TP x PP x CP x DP of the cluster's chips; the
  // sequence defaults to 4096, or to the model's context where that is shorter.
  r = ppu("simulate train --model tiny --cluster h800-2k --tp 2 --pp 2 --dp 4 --global-batch 32 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  j = nlohmann::json::parse(r.out);
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

std::string train_args(const std::string& dir) {
  return " --model tiny --data " + dir + "/corpus --steps 3 --seq-len 16 --batch 2 --eval-every 0";
}

nlohmann::json last_json(const std::string& out) { return nlohmann::json::parse(out.substr(out.rfind("\n{") + 1)); }

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
  EXPECT_GT(j["sim_step_s"].get<double>(), 0.0);
  for (const char* f : {"/a/metrics.jsonl", "/a/loss.svg", "/a/checkpoint/config.json", "/a/checkpoint/model.safetensors"})
    EXPECT_TRUE(std::filesystem::exists(dir + f)) << f;
  r = ppu("run --model " + dir + "/a --prompt hi --gen 2 --json");
  EXPECT_EQ(r.status, 0) << r.out;
}

// --stop-after then --resume gives the uninterrupted run's weights byte for byte; data parallel over
// 2 chips of a node gives one chip's loss within rounding.
TEST(Cli, TrainResumesBitIdenticallyAndRunsDataParallel) {
  const std::string dir = train_dir("train-cli-b");
  CmdResult r = ppu("train" + train_args(dir) + " --out " + dir + "/whole --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const double loss = last_json(r.out)["final_loss"].get<double>();
  r = ppu("train" + train_args(dir) + " --out " + dir + "/b --stop-after 2");
  ASSERT_EQ(r.status, 0) << r.out;
  r = ppu("train" + train_args(dir) + " --out " + dir + "/b --resume " + dir + "/b");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("resumed"), std::string::npos) << r.out;
  const std::string wa = file_bytes(dir + "/whole/checkpoint/model.safetensors"), wb = file_bytes(dir + "/b/checkpoint/model.safetensors");
  EXPECT_TRUE(!wa.empty() && wa == wb) << "resumed weights differ from the uninterrupted run's";
  r = ppu("train" + train_args(dir) + " --out " + dir + "/dp --node zhenwu-8 --dp 2 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NEAR(last_json(r.out)["final_loss"].get<double>(), loss, 1e-3 * loss);
  EXPECT_NE(r.out.find("2 chips of"), std::string::npos) << r.out;
}

// --timing-only: one simulated step per chip, side by side, no corpus and no numbers.
TEST(Cli, TrainTimingOnlyComparesChips) {
  CmdResult r = ppu("train --model tiny --timing-only --chip zhenwu-810e,h20 --seq-len 64 --batch 2 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["chips"].size(), 2u);
  for (const auto& c : j["chips"]) {
    EXPECT_GT(c["step_s"].get<double>(), 0.0) << c;
    EXPECT_GT(c["mfu"].get<double>(), 0.0) << c;
    EXPECT_LT(c["mfu"].get<double>(), 1.0) << c;
  }
  r = ppu("train --model tiny --timing-only --chip nochip --seq-len 64");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("unknown chip 'nochip'"), std::string::npos) << r.out;
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
                           "--batch 3 with --dp 2"}}) {
    r = ppu("train " + b.args + " --out " + dir + "/bad");
    EXPECT_EQ(r.status, 2) << b.args << "\n" << r.out;
    EXPECT_NE(r.out.find(b.says), std::string::npos) << b.args << "\n" << r.out;
  }
}

}  // namespace
