// The `ppu` subcommands, as plain functions over option structs (CLI11 parsing lives in main.cpp
// only, since it compiles slowly). Each prints a table, or one JSON document with --json, and returns
// the process exit code. User mistakes throw UserError (main prints it and exits 2).
#pragma once

#include <string>
#include <vector>

namespace ppu::cli {

int cmd_chips_list(bool json);
int cmd_chips_show(const std::string& name_or_path, bool json);

struct GemmBenchOptions {
  int64_t m = 0, n = 0, k = 0, batch = 1;
  std::string chip = "zhenwu-810e";  // or "all"
  std::string dtype = "bf16";
  std::string out_dtype = "bf16";
  bool trans_a = false, trans_b = false;
  bool check = false;
  std::string trace;
  bool json = false;
  int64_t seed = 1;
};
int cmd_bench_gemm(const GemmBenchOptions& o);

struct CopyBenchOptions {
  std::string size = "1GiB";
  std::string chip = "zhenwu-810e";  // or "all"
  std::string kernel = "copy";       // copy, mul, add, triad
  std::string dtype = "fp32";
  bool check = false;
  std::string trace;
  bool json = false;
};
int cmd_bench_copy(const CopyBenchOptions& o);

int cmd_models(bool json);

struct RunOptions {
  std::string model = "tiny";
  std::string prompt = "Why is the sky blue?";
  std::string chip = "zhenwu-810e";
  std::string tokenizer;
  int64_t gen = 32;
  int64_t prompt_len = 0;  // > 0: that many dummy tokens instead of --prompt (timing studies)
  bool timing_only = false;
  bool allow_random = false;
  bool raw = false;    // no chat template
  bool think = false;  // Qwen3 thinking mode
  double temperature = 0.0;
  int64_t top_k = 0;
  double top_p = 1.0;
  int64_t seed = 0;
  bool json = false;
  std::string trace;
  std::string batch = "1";
  std::string matmul_dtype = "bf16";  // weights and GEMM inputs: bf16, fp16, fp8e4m3 (FP8 inference)  // comma-separated batch sizes; more than one value (or > 1): a table
};
int cmd_run(const RunOptions& o);

// "all" -> every preset name; otherwise the single name or path.
std::vector<std::string> expand_chips(const std::string& chip);

}  // namespace ppu::cli
