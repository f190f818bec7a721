// Published training runs the cluster simulator is checked against, with their sources
// (docs/sources.md): Narayanan et al., SC'21 (arXiv:2104.04473) table 1, and The Llama 3 Herd of
// Models (arXiv:2407.21783) table 4.
#pragma once

#include <string>
#include <vector>

namespace ppu::bench {

struct TrainingCase {
  std::string model;    // model preset
  std::string cluster;  // cluster preset
  int gpus = 0, tp = 1, pp = 1, cp = 1;
  long global_batch = 0;  // sequences
  long seq_len = 0;
  double tflops_per_gpu = 0;  // published
  std::string source;
};

// Megatron-LM (Narayanan et al., SC'21), table 1: GPT on Selene (A100-80GB, 8 x 200 Gb/s HDR per
// node), sequence 2048, vocabulary 51,200, mixed precision, interleaved 1F1B, activation
// recomputation. TFLOPS counted with the paper's formula 96 B s l h^2 (1 + s/(6h) + V/(16 l h)),
// which includes the recomputed forward. [S]
inline const std::vector<TrainingCase>& megatron_cases() {
  static const std::vector<TrainingCase> cases = {
      {"gpt-1.7b", "a100-selene", 32, 1, 1, 1, 512, 2048, 137, "Megatron-LM SC'21 table 1 [S]"},
      {"gpt-3.6b", "a100-selene", 64, 2, 1, 1, 512, 2048, 138, "Megatron-LM SC'21 table 1 [S]"},
      {"gpt-7.5b", "a100-selene", 128, 4, 1, 1, 512, 2048, 142, "Megatron-LM SC'21 table 1 [S]"},
      {"gpt-18.4b", "a100-selene", 256, 8, 1, 1, 1024, 2048, 135, "Megatron-LM SC'21 table 1 [S]"},
      {"gpt-39.1b", "a100-selene", 512, 8, 2, 1, 1536, 2048, 138, "Megatron-LM SC'21 table 1 [S]"},
      {"gpt-76.1b", "a100-selene", 1024, 8, 4, 1, 1792, 2048, 140, "Megatron-LM SC'21 table 1 [S]"},
      {"gpt-145.6b", "a100-selene", 1536, 8, 8, 1, 2304, 2048, 148, "Megatron-LM SC'21 table 1 [S]"},
      {"gpt-310.1b", "a100-selene", 1920, 8, 16, 1, 2160, 2048, 155, "Megatron-LM SC'21 table 1 [S]"},
      {"gpt-529.6b", "a100-selene", 2520, 8, 35, 1, 2520, 2048, 163, "Megatron-LM SC'21 table 1 [S]"},
      {"gpt-1008b", "a100-selene", 3072, 8, 64, 1, 3072, 2048, 163, "Megatron-LM SC'21 table 1 [S]"},
  };
  return cases;
}

// Llama 3 405B on H100 (Llama 3 paper, table 4): 8 GPUs per server on NVLink, 400 Gb/s RoCE, BF16.
// Global batch = DP x batch per DP (16M tokens). [S]
inline const std::vector<TrainingCase>& llama3_cases() {
  static const std::vector<TrainingCase> cases = {
      {"llama3-405b", "h100-24k", 8192, 8, 16, 1, 64 * 32, 8192, 430, "Llama 3 paper table 4 [S]"},
      {"llama3-405b", "h100-24k", 16384, 8, 16, 1, 128 * 16, 8192, 400, "Llama 3 paper table 4 [S]"},
      {"llama3-405b", "h100-24k", 16384, 8, 16, 16, 8 * 16, 131072, 380, "Llama 3 paper table 4 [S]"},
  };
  return cases;
}

}  // namespace ppu::bench
