// Interactive decode latency, as a serving engine shows it at a fixed concurrency: `concurrency`
// requests of `input_len` prompt tokens and `output_len` generated tokens each are kept running (a
// new one starts as one finishes) on a model split over `tp` chips of a node (tensor parallel). The
// figure is the inter-token latency (ITL) a client measures: the mean time between two tokens of
// one request, (request latency - time to first token) / (output_len - 1), as NVIDIA NIM's AIPerf and
// genai-perf report it. The estimate comes from the model's own forward in timing-only mode (the same
// kernels as every other prediction), in steady state:
//
//   decode step = one forward of `concurrency` sequences, one token each, sampled on the device
//                 (greedy), with contexts spread evenly over input_len .. input_len + output_len
//                 (requests at every stage of generation), launched as one captured graph as
//                 TensorRT-LLM and vLLM replay their decode steps (LatencyOptions::graph_decode);
//   prefill     = one request's prompt in a pass of its own, launched kernel by kernel;
//   ITL         = decode step + (concurrency - 1) x prefill / (output_len - 1): every request sees the
//                 other requests' prompts prefilled once each during its output_len - 1 intervals
//                 (each slot turns over once per output_len steps).
//
//   LatencyEstimate e = estimate_decode_latency(load_node("h100-dgx"), load_model_config("llama3-70b"),
//                                               500, 2000, {.tp = 2});   // FP8 weights and KV cache
//   e.itl_s, e.decode_step_s, e.decode_op_s ...
//
// Not modelled: the engine's host work between steps (scheduling, detokenising, streaming),
// chunked prefill inside decode steps, speculative decoding, and the kernel fusions of a tuned
// engine (fused QKV, norm + residual, all-reduce + norm): each operation runs as the model's own
// kernels.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "arch/NodeSpec.hpp"
#include "models/ModelConfig.hpp"

namespace ppu {

struct LatencyOptions {
  int tp = 1;                           // tensor-parallel degree: chips 0 .. tp - 1 of the node
  int64_t concurrency = 1;              // requests decoded together (the batch)
  DType matmul_dtype = DType::kF8E4M3;  // FP8 weights and GEMM inputs (TensorRT-LLM's FP8 checkpoints)
  DType kv_dtype = DType::kF8E4M3;      // FP8 KV cache (the FP8 recipe quantizes it too)
  DType act_dtype = DType::kBF16;
  bool graph_decode = true;  // decode steps as captured graphs (Device::begin_graph)
};

struct LatencyEstimate {
  double mean_context = 0;                    // mean cached positions of the decode step's sequences
  double decode_step_s = 0;                   // one token for each of `concurrency` sequences, sampling included
  double prefill_s = 0;                       // one request's prompt (0 when concurrency is 1: not needed)
  double itl_s = 0;                           // inter-token latency, see the header
  std::map<std::string, double> decode_op_s;  // the decode step's time by operation kind (rank 0)
};

// Throws UserError for lengths below 1 (output_len below 2: an ITL needs two tokens), concurrency
// below 1, tp below 1 or beyond the node's chips, a split the model does not allow
// (nn::check_split), or a chip without the requested matrix dtype; DeviceOutOfMemory (a SimEvent)
// if the weights and caches do not fit a chip.
LatencyEstimate estimate_decode_latency(const NodeSpec& node, const ModelConfig& cfg, int64_t input_len,
                                        int64_t output_len, const LatencyOptions& opt = {});

}  // namespace ppu
