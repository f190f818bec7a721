// ChipSpec: one accelerator as data, loaded from a preset file (presets/chips/<name>.json) or a
// user's own file with the same schema (docs/presets.md).
//
//   ChipSpec h100 = load_chip("h100");                 // built-in preset by name
//   ChipSpec mine = load_chip("my-chip.json");         // any path ending in .json
//   double tflops = h100.matrix_flops_per_s(DType::kBF16) / 1e12;   // 989.4
//
// Every numeric field is a Quantity: its value in SI base units plus where the number comes from
// (a published source, or "assumed" with the reasoning). The loader rejects unknown fields, missing
// fields, wrong units, non-positive or unparsable values and values outside the field's valid range
// (ChipFieldInfo::range), naming the file and the field.
//
// Not here: how the numbers are used (sim/TimingEngine), nodes and clusters (later layers).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "arch/DType.hpp"
#include "arch/Units.hpp"

namespace ppu {

struct Quantity {
  double value = 0.0;      // SI base unit of `dim`
  Dimension dim = Dimension::kCount;
  std::string text;        // as written in the file, e.g. "3.35 TB/s"
  std::string source;      // non-empty if published
  std::string assumed;     // non-empty if assumed (the reasoning)
  bool present = false;    // optional fields may be absent
};

struct ChipSpec {
  std::string name;          // preset key, e.g. "h100"
  std::string display_name;  // "NVIDIA H100 SXM5 80GB"
  std::string vendor;
  std::string notes;
  std::string file;          // where it was loaded from ("<built-in>/h100.json" for presets)

  // --- published / architectural
  Quantity cores;                 // count: cores (SMs) that run blocks
  Quantity clock;                 // Hz: clock behind the matrix peak
  Quantity matrix_bf16;           // FLOP/s dense
  Quantity matrix_fp16;           // FLOP/s dense
  Quantity matrix_fp8;            // FLOP/s dense (optional: absent = no fp8)
  Quantity matrix_int8;           // OP/s dense, int8 x int8 -> int32 (optional: absent = no int8)
  Quantity vector_fp32;           // FLOP/s, non-matrix fp32 (an FMA counts 2: lanes x 2 x clock)
  Quantity special_function_rate; // results/s of exp, log, rsqrt, reciprocal... (optional: vector_fp32 / 8)
  Quantity sram_per_core;         // bytes of software-managed on-core storage
  Quantity l2_size;               // bytes
  Quantity l2_bandwidth;          // B/s, all cores together
  Quantity hbm_size;              // bytes
  Quantity hbm_bandwidth;         // B/s peak
  Quantity host_link_bandwidth;   // B/s per direction, achievable
  Quantity host_link_latency;     // s
  Quantity chip_links;            // count of chip-to-chip link ports
  Quantity chip_link_bandwidth;   // B/s per direction per link
  Quantity chip_link_latency;     // s
  Quantity power;                 // W (TDP)
  // --- micro-architectural (few, documented, calibrated once per chip)
  Quantity mma_efficiency;        // fraction of 16-bit matrix peak a steady tile loop sustains
  Quantity mma_efficiency_fp8;    // same for fp8 (required iff matrix_fp8 is present)
  Quantity mma_efficiency_int8;   // same for int8 (required iff matrix_int8 is present)
  Quantity mma_sync_fraction;     // fraction of the matrix peak that the previous generation's synchronous
                                  // warp-level MMA instructions reach (optional: 1; Hopper's mma.sync ~2/3)
  Quantity hbm_read_efficiency;   // fraction of peak HBM bandwidth for reads
  Quantity hbm_write_efficiency;  // fraction of peak HBM bandwidth for writes
  Quantity dma_latency;           // s from DMA issue to first byte
  Quantity dma_bandwidth_per_core;  // B/s: the most each DMA engine of a core (loads; stores) moves
  Quantity atomic_bandwidth_per_core;  // B/s of fp32 atomic additions into global memory one core
                                       // sustains (store_add; optional: dma_bandwidth_per_core)
  Quantity launch_latency;        // s: kernel launch to first block start
  Quantity block_latency;         // s: a block's dispatch onto a core (and its end)
  Quantity graph_node_latency;    // s: launch_latency of a kernel that follows another inside a captured
                                  // graph (a CUDA graph's per-node cost; optional: launch_latency)

  // Convenience accessors (SI units).
  int num_cores() const { return static_cast<int>(cores.value); }
  double clock_hz() const { return clock.value; }
  bool supports(DType matrix_input) const;
  // Dense matrix peak for MMA with inputs of type `t` (int8: integer operations per second, counted
  // as FLOPs are); 0 if unsupported (fp32 and int32 inputs: unsupported).
  double matrix_flops_per_s(DType t) const;
  // Steady-state efficiency of the matrix unit for inputs of type `t`.
  double mma_efficiency_for(DType t) const;
  // Transcendental results per second, all cores (special_function_rate, or a quarter of the fp32
  // lane rate when the preset does not say).
  double special_function_ops_per_s() const;
  // Fraction of the matrix peak that kernels marked Kernel::sync_mma reach (1 unless the preset says).
  double mma_sync_fraction_value() const { return mma_sync_fraction.present ? mma_sync_fraction.value : 1.0; }
  // Bytes per second of store_add one core sustains (atomic_bandwidth_per_core, else its DMA rate).
  double atomic_bandwidth_per_core_value() const {
    return atomic_bandwidth_per_core.present ? atomic_bandwidth_per_core.value : dma_bandwidth_per_core.value;
  }
  // Seconds from one kernel of a captured graph to the next one's first block, in place of
  // launch_latency (graph_node_latency, else launch_latency: no saving).
  double graph_node_latency_value() const {
    return graph_node_latency.present ? graph_node_latency.value : launch_latency.value;
  }
  double sram_bytes() const { return sram_per_core.value; }
  double hbm_bytes() const { return hbm_size.value; }
};

// One field of the schema: key in the file, dimension, whether required, description.
struct ChipFieldInfo {
  std::string_view key;
  Dimension dim;
  bool required;
  std::string_view description;
  Quantity ChipSpec::*member;
  ValueRange range;  // checked at load (docs/presets.md, "Valid ranges")
};
const std::vector<ChipFieldInfo>& chip_fields();

// The keys of `c`'s present fields that are assumed rather than published, in chip_fields() order.
std::vector<std::string> assumed_fields(const ChipSpec& c);
// The matrix peak field that serves inputs of type `t` ("matrix_bf16", "matrix_fp16", "matrix_fp8",
// "matrix_int8"), and the efficiency field that goes with it ("mma_efficiency", "mma_efficiency_fp8",
// "mma_efficiency_int8").
std::string_view matrix_field_for(DType t);
std::string_view mma_efficiency_field_for(DType t);
// The matrix input dtypes `c` supports, comma-separated, for error messages ("bf16, fp16, int8").
std::string matrix_dtypes_of(const ChipSpec& c);
// The chip presets (chip_preset_names()) whose matrix unit takes `t`, comma-separated, for an
// error refusing `t` on another chip ("a100-80g, a800, ..."); "none" if no preset has it.
std::string presets_supporting(DType t);
// Why `c` refuses matrix inputs of type `t`, for an error that goes on after "<where>: ". Names the
// chip and the dtype, says what its matrix unit takes and which chip presets have `t` (for FP8: any
// chip without matrix_fp8 has no FP8 unit at all, and FP8 requests are refused rather than emulated;
// docs/presets.md, "Input dtypes a chip lacks"), then what the chip's vendor recommends instead where
// that is published (the Zhenwu 810E: W8A8 INT8) and, with `flag` given and the chip able to run it,
// the option that asks for it ("--matmul-dtype int8"):
//   "zhenwu-810e has no fp8e4m3 matrix unit (no FP8 matrix unit at all: it takes bf16, fp16, int8); chips
//    with FP8: b200, h100, h20, h200, h800; for FP8 models on zhenwu-810e its vendor recommends W8A8
//    INT8 (Alibaba Cloud PPU SDK v1.5.3 release notes): --matmul-dtype int8"
std::string matrix_unit_refusal(const ChipSpec& c, DType t, std::string_view flag = {});

// Names of the built-in chip presets, sorted.
std::vector<std::string> chip_preset_names();

// Loads a preset by name, or a file if `name_or_path` ends in ".json" or contains '/'.
// Throws UserError: unknown name (listing the known ones), unreadable file (not a regular file, or above
// kPresetFileMaxBytes), or invalid content.
ChipSpec load_chip(std::string_view name_or_path);
// Parses chip JSON text; `origin` names the file in error messages.
ChipSpec parse_chip(std::string_view json_text, std::string_view origin);

}  // namespace ppu
