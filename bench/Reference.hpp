// Published measurements the benchmarks compare against (sources named per table and gathered in
// docs/sources.md; tags [P] primary, [S] faithful secondary).
#pragma once

#include <string>
#include <vector>

namespace ppu::bench {

struct GemmCase {
  std::string chip;   // preset name
  std::string dtype;  // input dtype
  long m, n, k;
  double measured_tflops;
  double tolerance;   // relative error the issue asks for
  std::string source;
};

// GEMM: S. Bekman's maximum achievable matmul FLOPS and the Azure cuBLASLt sweeps.
inline const std::vector<GemmCase>& gemm_cases() {
  static const std::vector<GemmCase> cases = {
      // Maximum achievable matmul FLOPS, best shape (S. Bekman, ml-engineering, compute/accelerator) [S]
      {"a100-80g", "bf16", 1024, 10240, 5120, 271.2, 0.10, "Bekman ml-engineering, best shape [S]"},
      {"h100", "bf16", 2048, 2048, 13312, 794.5, 0.10, "Bekman ml-engineering, best shape [S]"},
      {"h100", "fp8e4m3", 1024, 9216, 14336, 1402.6, 0.15, "Bekman ml-engineering, best shape [S]"},
      // cuBLASLt square GEMMs (Azure AI-benchmarking-guide results) [P]
      {"a100-80g", "fp16", 1024, 1024, 1024, 119.4, 0.15, "Azure AI-benchmarking-guide, cuBLASLt [P]"},
      {"a100-80g", "fp16", 2048, 2048, 2048, 221.8, 0.15, "Azure AI-benchmarking-guide, cuBLASLt [P]"},
      {"a100-80g", "fp16", 4096, 4096, 4096, 228.0, 0.15, "Azure AI-benchmarking-guide, cuBLASLt [P]"},
      {"a100-80g", "fp16", 8192, 8192, 8192, 253.7, 0.15, "Azure AI-benchmarking-guide, cuBLASLt [P]"},
      {"a100-80g", "fp16", 16384, 16384, 16384, 256.5, 0.15, "Azure AI-benchmarking-guide, cuBLASLt [P]"},
      {"h100", "fp8e4m3", 1024, 1024, 1024, 274.1, 0.15, "Azure AI-benchmarking-guide, cuBLASLt [P]"},
      {"h100", "fp8e4m3", 2048, 2048, 2048, 1011.3, 0.15, "Azure AI-benchmarking-guide, cuBLASLt [P]"},
      {"h100", "fp8e4m3", 4096, 4096, 4096, 1216.9, 0.15, "Azure AI-benchmarking-guide, cuBLASLt [P]"},
      {"h100", "fp8e4m3", 8192, 8192, 8192, 1290.1, 0.15, "Azure AI-benchmarking-guide, cuBLASLt [P]"},
      {"h100", "fp8e4m3", 16384, 16384, 16384, 1377.3, 0.15, "Azure AI-benchmarking-guide, cuBLASLt [P]"},
  };
  return cases;
}

struct StreamCase {
  std::string chip;
  std::string kernel;  // copy, mul, add, triad
  double measured_tb_s;
  double tolerance;
  std::string source;
};

// BabelStream-style kernels (Azure AI-benchmarking-guide results) [P]. Copy and triad are the targets.
inline const std::vector<StreamCase>& stream_cases() {
  static const std::vector<StreamCase> cases = {
      {"a100-80g", "copy", 1.61, 0.05, "Azure BabelStream [P]"},  {"a100-80g", "mul", 1.61, 0.05, "Azure BabelStream [P]"},
      {"a100-80g", "add", 1.70, 0.05, "Azure BabelStream [P]"},   {"a100-80g", "triad", 1.70, 0.05, "Azure BabelStream [P]"},
      {"h100", "copy", 2.90, 0.05, "Azure BabelStream [P]"},      {"h100", "mul", 2.90, 0.05, "Azure BabelStream [P]"},
      {"h100", "add", 2.97, 0.05, "Azure BabelStream [P]"},       {"h100", "triad", 2.97, 0.05, "Azure BabelStream [P]"},
  };
  return cases;
}

struct AttentionCase {
  std::string chip;
  int batch, seqlen, heads, head_dim;
  bool causal;
  double measured_tflops;  // forward, FLOPs counted as 4 * batch * seqlen^2 * heads * head_dim (/2 if causal)
  double tolerance;
  std::string source;
};

// FlashAttention-2 forward, flash-attention's benchmarks/benchmark_flash_attention.py (model
// dim 2048, so heads = 2048 / head_dim; bf16/fp16) as the Azure AI-benchmarking-guide runs it: batch
// 2, sequence 8192, the non-causal case of its original script (Azure NDv5 and NDv4 results) [P].
inline const std::vector<AttentionCase>& attention_cases() {
  static const std::vector<AttentionCase> cases = {
      {"h100", 2, 8192, 16, 128, false, 327.9, 0.15, "Azure AI-benchmarking-guide, FA2 fwd [P]"},
      {"a100-80g", 2, 8192, 32, 64, false, 179.5, 0.15, "Azure AI-benchmarking-guide, FA2 fwd [P]"},
  };
  return cases;
}

struct AttentionBackwardCase {
  std::string chip;
  int batch, seqlen, heads, head_dim;
  bool causal;
  double fwd_measured, bwd_measured;  // TFLOPS; backward FLOPs counted as 2.5x the forward's
  double tolerance;                   // on the backward
  std::string source;
};

// FlashAttention-2 forward and backward on H100 SXM, bf16, head_dim 128, model dim 2048, batch 2,
// sequence 8192: the FA2 column of flash-attention's hopper/benchmark_attn.py as posted in
// Dao-AILab/flash-attention PR #1791 (the forward is shown beside the backward, the Azure forward
// case above is the one counted). Tolerance as the forward cases.
inline const std::vector<AttentionBackwardCase>& attention_backward_cases() {
  static const std::string src = "flash-attention PR #1791, FA2 on H100 [P]";
  static const std::vector<AttentionBackwardCase> cases = {
      {"h100", 2, 8192, 16, 128, false, 369.9, 290.6, 0.15, src},
      {"h100", 2, 8192, 16, 128, true, 284.1, 287.1, 0.15, src},
  };
  return cases;
}

struct ServingCase {
  std::string chip, model;  // presets
  int tp;                   // tensor-parallel degree of the measurement
  long input_len, output_len;
  double measured_tokens_per_s;  // output tokens/s of the whole TP group
  double tolerance;
  std::string source;
};

// TensorRT-LLM trtllm-bench (TensorRT-LLM docs, performance overview), offline at maximum load, FP8
// weights, DGX H100; Llama-3.1-8B TP1 (single chip; the multi-chip columns need tensor parallelism,
// the node issue) [P].
inline const std::vector<ServingCase>& serving_cases() {
  static const std::string src = "TensorRT-LLM perf overview, trtllm-bench FP8 [P]";
  static const std::vector<ServingCase> cases = {
      {"h100", "llama3-8b", 1, 128, 2048, 22714, 0.20, src}, {"h100", "llama3-8b", 1, 128, 4096, 14325, 0.20, src},
      {"h100", "llama3-8b", 1, 500, 2000, 17660, 0.20, src}, {"h100", "llama3-8b", 1, 1000, 1000, 15220, 0.20, src},
      {"h100", "llama3-8b", 1, 2048, 2048, 9305, 0.20, src}, {"h100", "llama3-8b", 1, 5000, 500, 3459, 0.20, src},
  };
  return cases;
}

struct DecodeLatencyCase {
  std::string node, model;  // presets: the node whose first `tp` chips run the model
  int tp;                   // tensor-parallel degree of the measurement
  std::string dtype;        // weights, GEMM inputs and KV cache
  long concurrency;         // requests kept running together
  long input_len, output_len;
  double measured_itl_ms;   // mean inter-token latency the client saw
  double tolerance;
  std::string source;
};

// Interactive decode latency: NVIDIA NIM for LLMs benchmarking guide, "Performance" page
// (docs.nvidia.com/nim/benchmarking/llm/1.0.0/performance), Llama-3.3-70b-instruct, NIM 1.8.0
// (TensorRT-LLM), 2 x H100 80G, fp8 TP2, AIPerf inter-token latency (ITL) at concurrency 1 and 5,
// for 500 input / 2000 output and 5000 input / 500 output tokens [P]. Llama 3.3 70B has Llama 3.1
// 70B's architecture (the llama3-70b preset). Target: 15% (the decode-latency issue).
inline const std::vector<DecodeLatencyCase>& decode_latency_cases() {
  static const std::string src = "NIM 1.8.0 perf tables, Llama-3.3-70B 2xH100 fp8 TP2 (AIPerf ITL) [P]";
  static const std::vector<DecodeLatencyCase> cases = {
      {"h100-dgx", "llama3-70b", 2, "fp8e4m3", 1, 500, 2000, 18.91, 0.15, src},
      {"h100-dgx", "llama3-70b", 2, "fp8e4m3", 1, 5000, 500, 18.58, 0.15, src},
      {"h100-dgx", "llama3-70b", 2, "fp8e4m3", 5, 5000, 500, 21.83, 0.15, src},
  };
  return cases;
}

}  // namespace ppu::bench
