// Planner: searches parallel layouts of a model on a cluster, keeps those that fit in memory, times
// them (cluster/Training) and ranks them by iteration time.
//
//   PlanOptions p; p.global_batch = 1024; p.seq_len = 4096;
//   Plan plan = plan_training(load_model_config("qwen3-235b-a22b"), load_cluster("h800-2k"), p, *net, cache);
//   plan.ranked.front();        // the fastest layout that fits
//   plan.explanation;           // why it won (against the runner-up and the alternatives' best)
//
// The space: TP within a node (divisors of the heads up to the node's chip count), PP over valid
// stage splits, CP for sequences of 16K tokens and more, EP (MoE) over multiples of TP that divide
// the experts, micro-batches 1, 2, 4 (dividing the per-replica batch), interleaving 1 or 2 chunks,
// ZeRO-1 (ZeRO-3 when nothing fits otherwise), and the least recomputation that fits (none, then
// full recomputation of 1, 2, ... layers per stage, then of all; selective equals none with a fused
// attention). DP takes the remaining chips. Memory is
// checked first (cheap); only layouts that fit are timed, with workloads shared between layouts of
// the same TP/EP/CP/micro-batch and extracted on all host threads. Every fitting layout is timed at
// its smallest micro-batch; larger micro-batches only for the three fastest of those (a workload
// costs more host time the larger its micro-batch).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "cluster/Training.hpp"

namespace ppu::cluster {

struct PlanOptions {
  int64_t global_batch = 0;   // sequences per iteration; 0: about 4M tokens, rounded to the layouts
  int64_t seq_len = 4096;
  int64_t chips = 0;          // chips to use; 0: the whole cluster
  int max_layouts = 0;        // 0: no limit; else time at most this many (the most promising by memory headroom)
  int threads = 0;            // workload extraction threads; 0: default_host_threads() (PPU_THREADS or the cores)
  int grad_reduce_bytes = 4;
  kernels::AttentionStyle attention_style = kernels::AttentionStyle::kPipelined;
  // Called with a line per stage of the search, and every few seconds while workloads are timed (with
  // an estimate of the time left); from the searching threads, one call at a time.
  std::function<void(const std::string&)> progress;
};

struct Plan {
  std::vector<TrainingResult> ranked;     // fitting layouts, fastest first
  int64_t considered = 0;                 // layouts enumerated
  int64_t rejected_memory = 0;            // of those, did not fit at any recomputation level
  MemoryUse closest_miss;                 // when nothing fits: the layout that came closest
  Layout closest_layout;
  std::string explanation;
  double wall_s = 0;
};

Plan plan_training(const ModelConfig& m, const ClusterSpec& c, const PlanOptions& p, NetworkModel& net,
                   WorkloadCache& cache);

}  // namespace ppu::cluster
