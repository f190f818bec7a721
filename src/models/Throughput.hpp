// Offline serving throughput at full load, as `trtllm-bench throughput` measures it: many requests of
// `input_len` prompt tokens and `output_len` generated tokens, run with in-flight batching until
// done; the figure is output tokens per second. The estimate comes from the model's own forward on
// the chip in timing-only mode (the same kernels as every other prediction), in steady state:
//
//   batch B     = min(max_batch, KV budget / ((input_len + output_len) x KV bytes per token)):
//                 the scheduler admits a request only if the cache can hold its whole sequence
//                 (TensorRT-LLM's default GUARANTEED_NO_EVICT policy); KV budget =
//                 kv_memory_fraction x (HBM - weights - activation peak), as TensorRT-LLM sizes its
//                 cache from the memory free after loading the engine;
//   decode step = one forward of B sequences, one token each, whose contexts are spread evenly over
//                 input_len .. input_len + output_len (requests at every stage of generation);
//   prefill     = every step, B / output_len requests finish and as many start: their prompts are
//                 run as a batch of ceil(B / output_len) sequences and charged pro rata;
//   throughput  = B / (decode step + B / output_len x prefill time per request).
//
//   ThroughputEstimate e = estimate_offline_throughput(load_chip("h100"), load_model_config("llama3-8b"),
//                                                      128, 2048, {});   // FP8 weights and KV cache
//   e.output_tokens_per_s, e.batch, e.decode_step_s ...
//
// Not modelled: chunked-prefill interleaving inside decode steps (prefill runs as its own pass, a
// few percent of the time at these shapes), speculative decoding, CUDA-graph replay of the decode
// step (launch latency is charged per kernel here; models/Latency.hpp's interactive estimate replays
// it), scheduler overheads between steps, and the sampling kernels.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "arch/ChipSpec.hpp"
#include "models/ModelConfig.hpp"

namespace ppu {

struct ThroughputOptions {
  DType matmul_dtype = DType::kF8E4M3;  // FP8 weights and GEMM inputs (TensorRT-LLM's FP8 checkpoints)
  DType kv_dtype = DType::kF8E4M3;      // FP8 KV cache (the FP8 recipe quantizes it too)
  DType act_dtype = DType::kBF16;
  double kv_memory_fraction = 0.9;      // TensorRT-LLM's kv_cache_free_gpu_mem_fraction default
  int64_t max_batch = 2048;             // the scheduler's cap on concurrent requests
};

struct ThroughputEstimate {
  int64_t batch = 0;                  // concurrent requests in steady state
  std::string batch_limit;            // "KV cache memory" or "max_batch"
  double weight_bytes = 0;
  double activation_bytes = 0;        // peak activations of the probe (prefill of a batch)
  double kv_bytes_per_token = 0;      // all layers, K and V
  double kv_budget_bytes = 0;
  double mean_context = 0;            // mean cached positions of the decode step's sequences
  double decode_step_s = 0;           // one token for each of `batch` sequences
  int64_t prefill_batch = 0;          // requests prefilled together
  double prefill_s_per_request = 0;
  double output_tokens_per_s = 0;
  std::map<std::string, double> decode_op_s;  // the decode step's time by operation kind
};

// Throws UserError for lengths below 1, a context beyond the model's, or a chip without the
// requested matrix dtype; DeviceOutOfMemory (a SimEvent) if not even one request fits beside the
// weights.
ThroughputEstimate estimate_offline_throughput(const ChipSpec& chip, const ModelConfig& cfg, int64_t input_len,
                                               int64_t output_len, const ThroughputOptions& opt = {});

}  // namespace ppu
