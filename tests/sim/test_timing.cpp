// Tests of sim/TimingEngine: properties of the documented model (sim/TimingEngine.hpp), never
// hard-coded times, so that calibrating a preset does not break them. Every bound is computed
// from the chip's own fields:
//  * determinism; time >= launch latency;
//  * a matrix-only kernel takes at least flops / (peak * mma_efficiency) and approaches it as the
//    grid grows to full waves; waves quantize (cores + 1 blocks take about twice as long as cores);
//  * MMA extents are rounded up to the documented granularity;
//  * HBM traffic never exceeds hbm_bandwidth x efficiency; a single core never exceeds its DMA cap;
//  * independent instructions on different units overlap, dependent ones serialize;
//  * errors: fp8 on a chip without fp8, invalid programs, negative grids.
// Kernels are built by hand; tensor arguments carry a device address and no data.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "TestUtil.hpp"
#include "arch/ChipSpec.hpp"
#include "sim/TimingEngine.hpp"

namespace ppu {
namespace {

const ChipSpec& h100() {
  static const ChipSpec c = load_chip("h100");
  return c;
}

double launch(const ChipSpec& c) { return c.launch_latency.value; }

// Each block: `iters` accumulating MMAs of [m, k] x [k, n] on SRAM tiles (no DMA).
Kernel mma_kernel(int64_t grid, int iters, int m, int n, int k, DType t = DType::kBF16) {
  Kernel kk;
  kk.name = "mma_only";
  kk.grid = grid;
  kk.build = [=](int64_t, TileProgram& p) {
    const auto a = p.alloc(t, m, k, "a");
    const auto b = p.alloc(t, k, n, "b");
    const auto c = p.alloc(DType::kF32, m, n, "c");
    for (int i = 0; i < iters; ++i) p.mma(c, a, b, m, n, k);
  };
  kk.flops = 2.0 * m * n * k * iters * static_cast<double>(grid);
  return kk;
}

constexpr uint64_t kSrcAddr = 0x1'0000'0000ull, kDstAddr = 0x8'0000'0000ull;

// Each block streams `tiles` tiles of [1, tile_elems] fp32 from its own range of `src` (load) and/or
// to its own range of `dst` (store), alternating two SRAM buffers.
Kernel stream_kernel(int64_t grid, int tiles, int tile_elems, bool load, bool store) {
  Kernel k;
  k.name = "stream";
  k.grid = grid;
  const int64_t numel = grid * tiles * static_cast<int64_t>(tile_elems);
  k.args = {TensorArg{DType::kF32, numel, nullptr, kSrcAddr, "src"},
            TensorArg{DType::kF32, numel, nullptr, kDstAddr, "dst"}};
  k.build = [=](int64_t blk, TileProgram& p) {
    const BufferId buf[2] = {p.alloc(DType::kF32, 1, tile_elems, "x0"), p.alloc(DType::kF32, 1, tile_elems, "x1")};
    for (int t = 0; t < tiles; ++t) {
      const int64_t off = (blk * tiles + t) * static_cast<int64_t>(tile_elems);
      const TileRegion r0{0, off, tile_elems, 1, tile_elems};
      const TileRegion r1{1, off, tile_elems, 1, tile_elems};
      if (load) p.load(buf[t % 2], r0);
      if (store) p.store(r1, buf[t % 2]);
    }
  };
  return k;
}

void expect_same_timing(const KernelTiming& a, const KernelTiming& b) {
  EXPECT_EQ(a.time_s, b.time_s);
  EXPECT_EQ(a.instructions, b.instructions);
  EXPECT_EQ(a.matrix_busy_s, b.matrix_busy_s);
  EXPECT_EQ(a.vector_busy_s, b.vector_busy_s);
  EXPECT_EQ(a.hbm_read_bytes, b.hbm_read_bytes);
  EXPECT_EQ(a.hbm_write_bytes, b.hbm_write_bytes);
  EXPECT_EQ(a.l2_hit_bytes, b.l2_hit_bytes);
  EXPECT_EQ(a.hbm_busy_s, b.hbm_busy_s);
  ASSERT_EQ(a.trace.size(), b.trace.size());
  for (size_t i = 0; i < a.trace.size(); ++i) {
    EXPECT_EQ(a.trace[i].start_s, b.trace[i].start_s) << "event " << i;
    EXPECT_EQ(a.trace[i].end_s, b.trace[i].end_s) << "event " << i;
    EXPECT_EQ(a.trace[i].core, b.trace[i].core) << "event " << i;
    EXPECT_EQ(a.trace[i].block, b.trace[i].block) << "event " << i;
  }
}

// ---------------------------------------------------------------------------------------------

TEST(TimingEngine, DeterministicAcrossRunsAndEngines) {
  const int C = h100().num_cores();
  for (const Kernel& k : {mma_kernel(2 * C + 5, 8, 64, 64, 64), stream_kernel(C + 7, 4, 4096, true, true)}) {
    SCOPED_TRACE(k.name);
    TimingEngine e1(h100()), e2(h100());
    const KernelTiming a = e1.run(k, 100000);
    const KernelTiming b = e1.run(k, 100000);
    const KernelTiming c = e2.run(k, 100000);
    expect_same_timing(a, b);
    expect_same_timing(a, c);
    // Tracing observes; it does not change the simulated time.
    EXPECT_EQ(e1.run(k, 0).time_s, a.time_s);
    EXPECT_EQ(e1.run(k, 3).time_s, a.time_s);
  }
}

TEST(TimingEngine, TimeIsAtLeastLaunchAndBlockLatency) {
  for (const auto& name : chip_preset_names()) {
    const ChipSpec chip = load_chip(name);
    Kernel k;
    k.name = "tiny";
    k.grid = 1;
    k.build = [](int64_t, TileProgram& p) {
      const auto x = p.alloc(DType::kF32, 1, 1, "x");
      p.fill(x, 1, 1, 0.0f);
    };
    const KernelTiming t = TimingEngine(chip).run(k);
    EXPECT_GE(t.time_s, chip.launch_latency.value + chip.block_latency.value) << name;
    EXPECT_EQ(t.launch_s, chip.launch_latency.value) << name;
    EXPECT_EQ(t.bound(chip).rfind("latency", 0), 0u) << name << ": a one-element kernel is latency-bound, got "
                                                     << t.bound(chip);
  }
}

TEST(TimingEngine, EveryDispatchPaysBlockLatency) {
  // Blocks that do almost nothing: the time is dominated by dispatch, block_latency per block on
  // each of the cores x resident slots.
  const ChipSpec& chip = h100();
  Kernel k;
  k.name = "empty_blocks";
  k.build = [](int64_t, TileProgram& p) {
    const auto x = p.alloc(DType::kF32, 1, 1, "x");
    p.fill(x, 1, 1, 0.0f);
  };
  TimingEngine eng(chip);
  k.grid = 1;
  const int slots = chip.num_cores() * eng.run(k).resident_blocks;
  for (int per_slot : {1, 10, 40}) {
    k.grid = int64_t{slots} * per_slot;
    const KernelTiming t = eng.run(k);
    EXPECT_GE(t.time_s, launch(chip) + per_slot * chip.block_latency.value) << per_slot << " blocks per slot";
    // Dispatch (and retirement) dominate: well under the time of 3 block latencies per block.
    EXPECT_LT(t.time_s, launch(chip) + 3.0 * per_slot * chip.block_latency.value + 1e-6) << per_slot << " blocks per slot";
  }
}

TEST(TimingEngine, BookkeepingCountsWhatTheKernelDid) {
  const ChipSpec& chip = h100();
  const int C = chip.num_cores();
  const Kernel k = mma_kernel(3 * C + 1, 5, 17, 33, 65);  // odd extents: matrix_flops is unrounded
  const KernelTiming t = TimingEngine(chip).run(k);
  EXPECT_EQ(t.blocks, 3 * C + 1);
  EXPECT_EQ(t.cores, C);
  EXPECT_DOUBLE_EQ(t.waves, (3.0 * C + 1) / C);
  EXPECT_EQ(t.instructions, (3 * C + 1) * 5);
  EXPECT_DOUBLE_EQ(t.matrix_flops, 2.0 * 17 * 33 * 65 * 5 * (3 * C + 1));
  EXPECT_EQ(t.useful_flops, k.flops);
  EXPECT_EQ(t.hbm_read_bytes + t.hbm_write_bytes + t.l2_hit_bytes, 0.0);
  EXPECT_EQ(t.name, "mma_only");
}

TEST(TimingEngine, MatrixKernelRespectsPeakAndApproachesItWithFullWaves) {
  const ChipSpec& chip = h100();
  const int C = chip.num_cores();
  const double rate = chip.matrix_flops_per_s(DType::kBF16) * chip.mma_efficiency_for(DType::kBF16);
  std::map<int64_t, double> efficiency;
  for (int64_t grid : {int64_t{1}, int64_t{7}, int64_t{C}, int64_t{2 * C}, int64_t{C + 1}, int64_t{8 * C}}) {
    const Kernel k = mma_kernel(grid, 64, 128, 128, 64);
    const KernelTiming t = TimingEngine(chip).run(k);
    // The chip cannot beat its sustained peak, and one block cannot beat one core's share.
    EXPECT_GE(t.time_s, launch(chip) + k.flops / rate) << "grid " << grid;
    const double per_block = k.flops / grid;
    EXPECT_GE(t.time_s, launch(chip) + per_block / (rate / C)) << "grid " << grid;
    EXPECT_LE(t.matrix_utilization(chip), 1.0 + 1e-9) << "grid " << grid;
    efficiency[grid] = k.flops / rate / t.time_s;
  }
  EXPECT_LT(efficiency[C + 1], efficiency[C]) << "a partial second wave wastes cores";
  EXPECT_GT(efficiency[8 * C], efficiency[C]) << "fixed costs are amortised over more waves";
  EXPECT_GT(efficiency[8 * C], 0.9) << "eight full waves of 21 us blocks should reach the sustained peak";
  EXPECT_LT(efficiency[1], 1.0 / C * 1.01) << "one block uses one core";
  const Kernel big = mma_kernel(8 * C, 64, 128, 128, 64);
  EXPECT_EQ(TimingEngine(chip).run(big).bound(chip), "matrix unit");
}

TEST(TimingEngine, DoublingTheGridBeyondOneWaveDoublesTheTime) {
  const ChipSpec& chip = h100();
  const int C = chip.num_cores();
  TimingEngine eng(chip);
  const double t2 = eng.run(mma_kernel(2 * C, 32, 128, 128, 64)).time_s - launch(chip);
  const double t4 = eng.run(mma_kernel(4 * C, 32, 128, 128, 64)).time_s - launch(chip);
  EXPECT_NEAR(t4 / t2, 2.0, 0.1);
}

TEST(TimingEngine, WaveQuantization) {
  for (const char* name : {"h100", "zhenwu-810e"}) {
    const ChipSpec chip = load_chip(name);
    const int C = chip.num_cores();
    TimingEngine eng(chip);
    const double full = eng.run(mma_kernel(C, 32, 128, 128, 64)).time_s - launch(chip);
    const double plus_one = eng.run(mma_kernel(C + 1, 32, 128, 128, 64)).time_s - launch(chip);
    const double minus_one = eng.run(mma_kernel(C - 1, 32, 128, 128, 64)).time_s - launch(chip);
    EXPECT_NEAR(plus_one / full, 2.0, 0.2) << name << ": cores + 1 equal blocks need a second wave";
    EXPECT_NEAR(minus_one / full, 1.0, 0.02) << name << ": cores - 1 blocks fit one wave";
  }
}

TEST(TimingEngine, BlocksPerCoreFollowSram) {
  // A core holds as many blocks as its SRAM fits, at most kMaxResidentBlocks; those all start in
  // the first dispatch, and only later blocks wait for a free slot.
  const ChipSpec& chip = h100();
  const int C = chip.num_cores();
  TimingEngine eng(chip);
  auto first_start = [](const KernelTiming& t) {
    std::map<int64_t, double> first;
    for (const TraceEvent& e : t.trace)
      if (!first.count(e.block) || e.start_s < first[e.block]) first[e.block] = e.start_s;
    return first;
  };
  const double dispatch = launch(chip) + chip.block_latency.value;
  // A leading sync completes the moment its block starts, so it marks the block's start time.
  Kernel small = mma_kernel(2 * C, 16, 128, 128, 64);  // 96 KiB per block
  small.build = [inner = small.build](int64_t b, TileProgram& p) {
    p.sync();
    inner(b, p);
  };
  const double small_need = 128.0 * 64 * 2 * 2 + 128.0 * 128 * 4;
  const KernelTiming ts = eng.run(small, 1'000'000);
  const int expect_resident =
      static_cast<int>(std::clamp(std::floor(chip.sram_bytes() / small_need), 1.0, double(kMaxResidentBlocks)));
  EXPECT_EQ(ts.resident_blocks, expect_resident);
  const auto fs = first_start(ts);
  ASSERT_EQ(static_cast<int64_t>(fs.size()), small.grid);
  for (const auto& [blk, t0] : fs) {
    if (blk < int64_t{C} * expect_resident) {
      EXPECT_NEAR(t0, dispatch, 1e-12) << "block " << blk << " fits in the first dispatch";
    } else {
      EXPECT_GT(t0, dispatch) << "block " << blk;
    }
  }
  // A block that needs more than half the SRAM leaves no room for a second one.
  Kernel big = small;
  big.build = [&chip, inner = small.build](int64_t b, TileProgram& p) {
    inner(b, p);
    p.alloc(DType::kF32, 1, static_cast<int>(chip.sram_bytes() / 2 / 4), "pad");
  };
  const KernelTiming tb = eng.run(big, 1'000'000);
  EXPECT_EQ(tb.resident_blocks, 1);
  for (const auto& [blk, t0] : first_start(tb)) {
    if (blk >= C) {
      EXPECT_GT(t0, dispatch + 1e-6) << "block " << blk << " waits for a core";
    }
  }
  EXPECT_GE(tb.time_s, ts.time_s * (1 - 1e-9)) << "fewer resident blocks never make a kernel faster here";
}

TEST(TimingEngine, MmaExtentsRoundUpToTheGranularity) {
  const ChipSpec& chip = h100();
  TimingEngine eng(chip);
  auto time_of = [&](int m, int n, int k, DType t) { return eng.run(mma_kernel(1, 16, m, n, k, t)).time_s; };
  static_assert(kMmaGranMN == 16 && kMmaGranK16 == 16 && kMmaGranK8 == 32, "cases below assume these");
  // 17 rounds up to 32 in every dimension: the same work as 32^3, more than 16^3.
  EXPECT_DOUBLE_EQ(time_of(17, 17, 17, DType::kBF16), time_of(32, 32, 32, DType::kBF16));
  EXPECT_LT(time_of(16, 16, 16, DType::kBF16), time_of(17, 17, 17, DType::kBF16));
  EXPECT_DOUBLE_EQ(time_of(1, 1, 1, DType::kF16), time_of(16, 16, 16, DType::kF16));
  // fp8 fragments are 32 deep in k.
  EXPECT_DOUBLE_EQ(time_of(16, 16, 16, DType::kF8E4M3), time_of(16, 16, 32, DType::kF8E4M3));
  EXPECT_LT(time_of(16, 16, 32, DType::kF8E4M3), time_of(16, 16, 33, DType::kF8E4M3));
}

TEST(TimingEngine, Fp8UsesTheFp8PeakAndEfficiency) {
  const ChipSpec& chip = h100();
  const int C = chip.num_cores();
  const Kernel k = mma_kernel(4 * C, 32, 128, 128, 128, DType::kF8E4M3);
  const KernelTiming t = TimingEngine(chip).run(k);
  const double rate = chip.matrix_flops_per_s(DType::kF8E4M3) * chip.mma_efficiency_for(DType::kF8E4M3);
  EXPECT_GE(t.time_s, launch(chip) + k.flops / rate);
  EXPECT_GT(k.flops / rate / t.time_s, 0.8);
  // Faster than the same kernel in bf16 by about the ratio of sustained rates.
  const KernelTiming t16 = TimingEngine(chip).run(mma_kernel(4 * C, 32, 128, 128, 128, DType::kBF16));
  const double rate16 = chip.matrix_flops_per_s(DType::kBF16) * chip.mma_efficiency_for(DType::kBF16);
  EXPECT_NEAR((t16.time_s - launch(chip)) / (t.time_s - launch(chip)), rate / rate16, 0.1 * rate / rate16);
}

TEST(TimingEngine, Fp8OnAChipWithoutFp8IsAnError) {
  const ChipSpec chip = load_chip("zhenwu-810e");
  ASSERT_FALSE(chip.supports(DType::kF8E4M3));
  for (DType t : {DType::kF8E4M3, DType::kF8E5M2}) {
    test::expect_error([&] { TimingEngine(chip).run(mma_kernel(3, 1, 16, 16, 32, t)); },
                       {"mma_only", "zhenwu-810e", std::string(dtype_name(t)), "bf16", "fp16"});
  }
  EXPECT_NO_THROW(TimingEngine(chip).run(mma_kernel(3, 1, 16, 16, 32, DType::kBF16)));
}

TEST(TimingEngine, HbmStreamNeverExceedsBandwidthTimesEfficiency) {
  for (const char* name : {"h100", "a100-80g", "zhenwu-810e"}) {
    const ChipSpec chip = load_chip(name);
    const int C = chip.num_cores();
    TimingEngine eng(chip);
    const double hbm = chip.hbm_bandwidth.value;
    // Reads only: each tile is read once, so nothing hits in L2.
    const KernelTiming r = eng.run(stream_kernel(4 * C, 8, 16384, true, false));
    const double read_bytes = 4.0 * C * 8 * 16384 * 4;
    EXPECT_EQ(r.hbm_read_bytes, read_bytes) << name;
    EXPECT_EQ(r.l2_hit_bytes, 0.0) << name;
    const double read_bw = read_bytes / (r.time_s - launch(chip));
    EXPECT_LE(read_bw, hbm * chip.hbm_read_efficiency.value * (1 + 1e-9)) << name;
    const double achievable = std::min(hbm * chip.hbm_read_efficiency.value, C * chip.dma_bandwidth_per_core.value);
    EXPECT_GT(read_bw, 0.5 * achievable) << name << ": a full-chip stream should get most of the bandwidth";
    EXPECT_LE(r.hbm_utilization(chip), 1.0 + 1e-9) << name;
    EXPECT_EQ(r.bound(chip), "HBM bandwidth") << name;
    // Writes only.
    const KernelTiming w = eng.run(stream_kernel(4 * C, 8, 16384, false, true));
    EXPECT_EQ(w.hbm_write_bytes, read_bytes) << name;
    EXPECT_LE(read_bytes / (w.time_s - launch(chip)), hbm * chip.hbm_write_efficiency.value * (1 + 1e-9)) << name;
    // Copy: reads and writes share the bus; their costs together stay within the peak.
    const KernelTiming c = eng.run(stream_kernel(4 * C, 8, 16384, true, true));
    const double cost = c.hbm_read_bytes / chip.hbm_read_efficiency.value + c.hbm_write_bytes / chip.hbm_write_efficiency.value;
    EXPECT_NEAR(c.hbm_cost_bytes, cost, 1e-9 * cost) << name;  // summed in a different order
    EXPECT_LE(cost / (c.time_s - launch(chip)), hbm * (1 + 1e-9)) << name;
    EXPECT_LE(c.hbm_busy_s, c.time_s) << name;
  }
}

TEST(TimingEngine, OneCoreIsLimitedByItsDmaEngines) {
  const ChipSpec& chip = h100();
  const KernelTiming t = TimingEngine(chip).run(stream_kernel(1, 16, 16384, true, false));
  const double bytes = 16.0 * 16384 * 4;
  EXPECT_GE(t.time_s, launch(chip) + chip.dma_latency.value + bytes / chip.dma_bandwidth_per_core.value);
  // ... and at most a few times slower than that cap (the engine streams back to back).
  EXPECT_LT(t.time_s - launch(chip), 3.0 * (chip.dma_latency.value + bytes / chip.dma_bandwidth_per_core.value));
}

TEST(TimingEngine, OneCoreReadsPlusWritesAreLimitedPerDmaEngine) {
  // dma_bandwidth_per_core caps each of a core's two DMA engines (loads, stores): a core that reads
  // and writes at once moves up to twice it, never more, and each direction alone stays under it.
  // One block reads 64 tiles and, independently, writes 64 other tiles, so both engines are busy.
  const ChipSpec& chip = h100();
  constexpr int kTiles = 64, kElems = 16384;
  Kernel k;
  k.name = "read_and_write";
  k.grid = 1;
  k.args = {TensorArg{DType::kF32, int64_t{kTiles} * kElems, nullptr, kSrcAddr, "src"},
            TensorArg{DType::kF32, int64_t{kTiles} * kElems, nullptr, kDstAddr, "dst"}};
  k.build = [](int64_t, TileProgram& p) {
    const BufferId in[2] = {p.alloc(DType::kF32, 1, kElems, "in0"), p.alloc(DType::kF32, 1, kElems, "in1")};
    const auto out = p.alloc(DType::kF32, 1, kElems, "out");
    for (int t = 0; t < kTiles; ++t) {
      p.load(in[t % 2], TileRegion{0, int64_t{t} * kElems, kElems, 1, kElems});
      p.store(TileRegion{1, int64_t{t} * kElems, kElems, 1, kElems}, out);
    }
  };
  const KernelTiming t = TimingEngine(chip).run(k);
  const double moved = t.hbm_read_bytes + t.hbm_write_bytes + t.l2_hit_bytes;
  EXPECT_EQ(moved, 2.0 * kTiles * kElems * 4);
  const double busy = t.time_s - launch(chip) - chip.block_latency.value;
  const double per_direction = moved / 2 / busy;
  EXPECT_LE(per_direction, chip.dma_bandwidth_per_core.value * (1 + 1e-9))
      << "one engine moved " << per_direction / 1e9 << " GB/s, more than dma_bandwidth_per_core = "
      << chip.dma_bandwidth_per_core.value / 1e9 << " GB/s";
  // Both engines worked concurrently: the total exceeds what one engine alone could move.
  EXPECT_GT(moved / busy, 1.2 * chip.dma_bandwidth_per_core.value);
}

TEST(TimingEngine, StoreAddRunsAtTheCoresAtomicRate) {
  // store_add (atomic adds into global memory) goes through the store engine at
  // atomic_bandwidth_per_core - per core, so a full chip of such blocks is no slower per block -
  // and a plain store of the same bytes at the DMA rate. Without the preset field: the DMA rate.
  const ChipSpec& chip = h100();
  ASSERT_TRUE(chip.atomic_bandwidth_per_core.present);
  ASSERT_LT(chip.atomic_bandwidth_per_core.value, chip.dma_bandwidth_per_core.value);
  static constexpr int kTiles = 16, kElems = 16384;
  auto kernel = [&](bool add, int64_t grid) {
    Kernel k;
    k.name = add ? "adds" : "stores";
    k.grid = grid;
    k.accumulates = add;
    k.args = {TensorArg{DType::kF32, int64_t{kTiles} * kElems, nullptr, kDstAddr, "dst"}};
    k.build = [add](int64_t, TileProgram& p) {
      const auto b = p.alloc(DType::kF32, 1, kElems, "b");
      for (int t = 0; t < kTiles; ++t) {
        const TileRegion r{0, int64_t{t} * kElems, kElems, 1, kElems};
        if (add) p.store_add(r, b);
        else p.store(r, b);
      }
    };
    return k;
  };
  const double bytes = double{kTiles} * kElems * 4;
  const KernelTiming a = TimingEngine(chip).run(kernel(true, 1));
  EXPECT_EQ(a.atomic_bytes, bytes);
  EXPECT_EQ(a.hbm_write_bytes, 0.0);
  const double body = a.time_s - launch(chip) - chip.block_latency.value;
  const double ideal = chip.dma_latency.value + bytes / chip.atomic_bandwidth_per_core.value;
  EXPECT_GE(body, bytes / chip.atomic_bandwidth_per_core.value);
  EXPECT_LT(body, 1.05 * ideal);
  const KernelTiming s = TimingEngine(chip).run(kernel(false, 1));
  EXPECT_EQ(s.atomic_bytes, 0.0);
  EXPECT_LT(s.time_s, 0.6 * a.time_s);
  // Every core adding at once: the same time per wave (the limit is per core).
  const KernelTiming full = TimingEngine(chip).run(kernel(true, chip.num_cores()));
  EXPECT_NEAR(full.time_s, a.time_s, 1e-3 * a.time_s);
  ChipSpec plain = chip;
  plain.atomic_bandwidth_per_core = {};
  const KernelTiming p = TimingEngine(plain).run(kernel(true, 1));
  EXPECT_NEAR(p.time_s - launch(chip) - chip.block_latency.value,
              chip.dma_latency.value + bytes / chip.dma_bandwidth_per_core.value, 0.05 * body);
}

TEST(TimingEngine, AnEngineStreamsTransfersBackToBack) {
  // Independent loads issue at once; each waits dma_latency from issue, so the latencies overlap
  // and the engine moves one transfer after another: about dma_latency + n x transfer time,
  // rather than n x (dma_latency + transfer time).
  const ChipSpec& chip = h100();
  constexpr int kLoads = 32, kElems = 2048;  // 8 KiB each, all resident in SRAM at once
  Kernel k;
  k.name = "independent_loads";
  k.grid = 1;
  k.args = {TensorArg{DType::kF32, int64_t{kLoads} * kElems, nullptr, kSrcAddr, "src"}};
  k.build = [](int64_t, TileProgram& p) {
    for (int i = 0; i < kLoads; ++i) {
      const auto b = p.alloc(DType::kF32, 1, kElems, "b");
      p.load(b, TileRegion{0, int64_t{i} * kElems, kElems, 1, kElems});
    }
  };
  const KernelTiming t = TimingEngine(chip).run(k);
  const double body = t.time_s - launch(chip) - chip.block_latency.value;
  const double transfer = kElems * 4.0 / chip.dma_bandwidth_per_core.value;  // at least this long each
  const double lat = chip.dma_latency.value;
  EXPECT_GE(body, lat + kLoads * transfer * (1 - 1e-9));
  EXPECT_LT(body, 0.5 * kLoads * (lat + transfer)) << "latencies of queued transfers must overlap";
}

TEST(TimingEngine, RepeatedTilesHitInL2) {
  // Every block loads the same 64 KiB tile: only the first touch goes to HBM.
  const ChipSpec& chip = h100();
  const int C = chip.num_cores();
  Kernel k;
  k.name = "same_tile";
  k.grid = 2 * C;
  k.args = {TensorArg{DType::kF32, 16384, nullptr, kSrcAddr, "src"}};
  k.build = [](int64_t, TileProgram& p) {
    const auto x = p.alloc(DType::kF32, 1, 16384, "x");
    const auto y = p.alloc(DType::kF32, 1, 16384, "y");
    p.load(x, TileRegion{0, 0, 16384, 1, 16384});
    p.load(y, TileRegion{0, 0, 16384, 1, 16384});
  };
  const KernelTiming t = TimingEngine(chip).run(k);
  const double tile = 16384.0 * 4;
  EXPECT_EQ(t.hbm_read_bytes, tile);
  EXPECT_EQ(t.l2_hit_bytes, (4.0 * C - 1) * tile);
  EXPECT_LE(t.l2_utilization(chip), 1.0 + 1e-9);
}

TEST(TimingEngine, IndependentUnitsOverlapDependentOnesSerialize) {
  const ChipSpec& chip = h100();
  TimingEngine eng(chip);
  const int tile_rows = 128, tile_cols = 64;  // bf16 [128, 64] = 16 KiB per load
  auto make = [&](bool loads, bool mmas, bool dependent) {
    Kernel k;
    k.name = "overlap";
    k.grid = 1;
    k.args = {TensorArg{DType::kBF16, 64 * tile_rows * tile_cols, nullptr, kSrcAddr, "a"}};
    k.build = [=](int64_t, TileProgram& p) {
      const auto in = p.alloc(DType::kBF16, tile_rows, tile_cols, "in");
      const auto a = p.alloc(DType::kBF16, tile_rows, tile_cols, "a");
      const auto b = p.alloc(DType::kBF16, tile_cols, 128, "b");
      const auto c = p.alloc(DType::kF32, tile_rows, 128, "c");
      if (loads)
        for (int i = 0; i < 64; ++i)
          p.load(in, TileRegion{0, int64_t{i} * tile_rows * tile_cols, tile_cols, tile_rows, tile_cols});
      if (mmas)
        for (int i = 0; i < 256; ++i) p.mma(c, dependent ? in : a, b, tile_rows, 128, tile_cols);
    };
    return eng.run(k).time_s;
  };
  const double fixed = launch(chip) + chip.block_latency.value;
  const double t_load = make(true, false, false), t_mma = make(false, true, false);
  const double t_both = make(true, true, false), t_dep = make(true, true, true);
  // The two phases are of comparable length, so overlap is visible.
  ASSERT_GT(std::min(t_load, t_mma) - fixed, 0.2 * (std::max(t_load, t_mma) - fixed));
  EXPECT_LT(t_both, 1.02 * std::max(t_load, t_mma)) << "independent DMA and MMA overlap";
  EXPECT_GE(t_both, std::max(t_load, t_mma) * (1 - 1e-9));
  EXPECT_GT(t_dep, 1.3 * std::max(t_load, t_mma)) << "MMAs that read the last load wait for it";
}

TEST(TimingEngine, VectorKernelRespectsVectorPeak) {
  const ChipSpec& chip = h100();
  const int C = chip.num_cores();
  Kernel k;
  k.name = "vector";
  k.grid = 4 * C;
  k.build = [](int64_t, TileProgram& p) {
    const auto x = p.alloc(DType::kF32, 128, 256, "x");
    const auto y = p.alloc(DType::kF32, 128, 256, "y");
    for (int i = 0; i < 64; ++i) p.binary(BinaryOp::kAdd, y, x, y, 128, 256);
  };
  const KernelTiming t = TimingEngine(chip).run(k);
  // One lane operation per element; vector_fp32 counts an FMA as two FLOPs per lane and clock.
  const double elem_ops = 4.0 * C * 64 * 128 * 256;
  EXPECT_GE(t.time_s, launch(chip) + elem_ops / (chip.vector_fp32.value / 2));
  EXPECT_EQ(t.bound(chip), "vector unit");
}

// Transcendentals run at the chip's special-function rate, simple ops at its lane rate; an
// instruction needing both takes the longer (exp: a multiply on the lanes, exp2 on the SFU).
TEST(TimingEngine, SpecialFunctionsRunAtTheirOwnRate) {
  for (const char* name : {"h100", "a100-80g", "zhenwu-810e"}) {
    const ChipSpec chip = load_chip(name);
    auto busy = [&](UnaryOp op) {
      Kernel k;
      k.name = "unary";
      k.grid = 1;
      k.build = [op](int64_t, TileProgram& p) {
        const auto x = p.alloc(DType::kF32, 64, 512, "x");
        for (int i = 0; i < 8; ++i) p.unary(op, x, x, 64, 512);
      };
      return TimingEngine(chip).run(k).vector_busy_s;
    };
    const double cores = chip.num_cores(), elems = 8.0 * 64 * 512;
    const double lane = chip.vector_fp32.value / 2 / cores, sfu = chip.special_function_ops_per_s() / cores;
    EXPECT_NEAR(busy(UnaryOp::kNeg), elems / lane, 1e-12) << name;
    EXPECT_NEAR(busy(UnaryOp::kExp), elems * std::max(1 / lane, 1 / sfu), 1e-12) << name;
    EXPECT_NEAR(busy(UnaryOp::kRsqrt), elems / sfu, 1e-12) << name;
  }
  // Presets without the field: a quarter of the lane rate.
  const ChipSpec z = load_chip("zhenwu-810e");
  EXPECT_FALSE(z.special_function_rate.present);
  EXPECT_DOUBLE_EQ(z.special_function_ops_per_s(), z.vector_fp32.value / 8);
}

// Kernels marked sync_mma run their MMAs at mma_sync_fraction of the rate (Hopper: ~2/3; chips
// without the field: unchanged); max_resident_blocks caps the blocks a core holds.
TEST(TimingEngine, SyncMmaAndResidencyCap) {
  for (const char* name : {"h100", "a100-80g"}) {
    const ChipSpec chip = load_chip(name);
    Kernel k = mma_kernel(4 * chip.num_cores(), 64, 128, 128, 64);
    const KernelTiming base = TimingEngine(chip).run(k);
    k.sync_mma = true;
    const KernelTiming sync = TimingEngine(chip).run(k);
    EXPECT_NEAR(sync.matrix_busy_s, base.matrix_busy_s / chip.mma_sync_fraction_value(), 1e-9 * base.matrix_busy_s)
        << name;
    EXPECT_EQ(chip.mma_sync_fraction.present, std::string(name) == "h100") << name;
    k.sync_mma = false;
    EXPECT_EQ(base.resident_blocks, 2) << name;
    k.max_resident_blocks = 1;
    const KernelTiming one = TimingEngine(chip).run(k);
    EXPECT_EQ(one.resident_blocks, 1) << name;
    EXPECT_NEAR(one.matrix_busy_s, base.matrix_busy_s, 1e-9 * base.matrix_busy_s) << name;
  }
}

// The sampling ops: compares, select and iota cost one lane operation per element like an add;
// argmax two (a compare and an index blend), as documented in docs/architecture.md.
TEST(TimingEngine, SamplingOpsCostAsDocumented) {
  const ChipSpec& chip = h100();
  auto busy = [&](const std::function<void(TileProgram&, BufferId, BufferId, BufferId)>& op) {
    Kernel k;
    k.name = "vector_op";
    k.grid = 1;
    k.build = [&](int64_t, TileProgram& p) {
      const auto x = p.alloc(DType::kF32, 64, 512, "x");
      const auto y = p.alloc(DType::kF32, 64, 512, "y");
      const auto r = p.alloc(DType::kF32, 64, 1, "r");
      for (int i = 0; i < 16; ++i) op(p, x, y, r);
    };
    return TimingEngine(chip).run(k).vector_busy_s;
  };
  const double add = busy([](TileProgram& p, BufferId x, BufferId y, BufferId) { p.binary(BinaryOp::kAdd, y, x, y, 64, 512); });
  EXPECT_GT(add, 0.0);
  for (BinaryOp op : {BinaryOp::kCmpGt, BinaryOp::kCmpEq, BinaryOp::kSelect})
    EXPECT_EQ(busy([op](TileProgram& p, BufferId x, BufferId y, BufferId) { p.binary(op, y, x, y, 64, 512); }), add)
        << kBinaryOpNames[static_cast<size_t>(op)];
  EXPECT_EQ(busy([](TileProgram& p, BufferId, BufferId y, BufferId) { p.iota(y, 64, 512, 0); }), add);
  EXPECT_EQ(busy([](TileProgram& p, BufferId x, BufferId, BufferId r) { p.reduce(ReduceOp::kMax, r, x, 64, 512); }), add);
  EXPECT_EQ(busy([](TileProgram& p, BufferId x, BufferId, BufferId r) { p.reduce(ReduceOp::kArgMax, r, x, 64, 512); }),
            2 * add);
}

TEST(TimingEngine, TraceEventsAreConsistent) {
  const ChipSpec& chip = h100();
  const int C = chip.num_cores();
  Kernel k = stream_kernel(C + 3, 3, 1024, true, true);
  const auto inner = k.build;
  k.build = [inner](int64_t blk, TileProgram& p) {
    inner(blk, p);
    const auto a = p.alloc(DType::kBF16, 32, 32, "a");
    const auto c = p.alloc(DType::kF32, 32, 32, "c");
    p.mma(c, a, a, 32, 32, 32);
    p.mma(c, a, a, 32, 32, 32);
    p.sync();
    p.unary(UnaryOp::kExp, c, c, 32, 32);
  };
  TimingEngine eng(chip);
  const KernelTiming full = eng.run(k, 1'000'000);
  EXPECT_FALSE(full.trace_truncated);
  EXPECT_EQ(static_cast<int64_t>(full.trace.size()), full.instructions) << "one event per instruction";
  std::map<std::pair<int, int>, std::vector<std::pair<double, double>>> busy;  // (core, unit) -> intervals
  for (const TraceEvent& e : full.trace) {
    EXPECT_LE(0.0, e.start_s);
    EXPECT_LE(e.start_s, e.end_s);
    EXPECT_LE(e.end_s, full.time_s * (1 + 1e-12));
    EXPECT_GE(e.core, 0);
    EXPECT_LT(e.core, C);
    EXPECT_GE(e.block, 0);
    EXPECT_LT(e.block, k.grid);
    switch (e.op) {
      case OpCode::kLoad: EXPECT_EQ(e.unit, Unit::kDmaIn); EXPECT_EQ(e.bytes, 4096.0); break;
      case OpCode::kStore: EXPECT_EQ(e.unit, Unit::kDmaOut); EXPECT_EQ(e.bytes, 4096.0); break;
      case OpCode::kMma: EXPECT_EQ(e.unit, Unit::kMatrix); break;
      default: EXPECT_EQ(e.unit, Unit::kVector); break;
    }
    if (e.unit == Unit::kMatrix || (e.unit == Unit::kVector && e.op != OpCode::kSync))
      busy[{e.core, static_cast<int>(e.unit)}].push_back({e.start_s, e.end_s});
  }
  // A compute unit runs one instruction at a time.
  for (auto& [key, iv] : busy) {
    std::sort(iv.begin(), iv.end());
    for (size_t i = 1; i < iv.size(); ++i)
      EXPECT_LE(iv[i - 1].second, iv[i].first * (1 + 1e-12)) << "core " << key.first << " unit " << key.second;
  }
  const KernelTiming part = eng.run(k, 10);
  EXPECT_EQ(part.trace.size(), 10u);
  EXPECT_TRUE(part.trace_truncated);
  EXPECT_TRUE(eng.run(k, 0).trace.empty());
}

TEST(TimingEngineErrors, InvalidProgramsAndGrids) {
  const ChipSpec& chip = h100();
  TimingEngine eng(chip);
  Kernel oob = stream_kernel(4, 2, 1024, true, false);
  oob.args[0].numel -= 1;  // the last block's last tile now ends one element past the tensor
  test::expect_error([&] { eng.run(oob); }, {"kernel 'stream'", "block 3", "outside tensor 'src'"});
  Kernel big = mma_kernel(1, 1, 16, 16, 16);
  big.build = [](int64_t, TileProgram& p) { p.alloc(DType::kF32, 1024, 1024, "huge"); };
  test::expect_error([&] { eng.run(big); }, {"kernel 'mma_only'", "SRAM"});
  Kernel neg = mma_kernel(1, 1, 16, 16, 16);
  neg.grid = -1;
  test::expect_error([&] { eng.run(neg); }, {"kernel 'mma_only'", "grid -1"});
}

// Issue 17, part 5: a rate or latency that would keep the event loop from finishing is a UserError
// naming the chip field, not an abort or a hang. Chip files cannot hold such values (their valid
// ranges); a ChipSpec built in code can.
TEST(TimingEngineErrors, ZeroDenormalOrNonFiniteRatesNameTheField) {
  auto error_with = [](const std::function<void(ChipSpec&)>& edit) {
    ChipSpec chip = h100();
    edit(chip);
    TimingEngine eng(chip);
    return test::error_message([&] { eng.run(mma_kernel(1, 1, 16, 16, 16)); });
  };
  EXPECT_EQ(error_with([](ChipSpec& c) { c.vector_fp32.value = 0; }),
            "chip 'h100': the timing engine's rate from field 'vector_fp32' is 0; it needs a positive, finite, normal "
            "rate (at a zero or denormal one an instruction never finishes)");
  EXPECT_EQ(error_with([](ChipSpec& c) { c.l2_bandwidth.value = 1e-310; }),
            "chip 'h100': the timing engine's rate from field 'l2_bandwidth' is 1e-310; it needs a positive, finite, "
            "normal rate (at a zero or denormal one an instruction never finishes)");
  EXPECT_EQ(error_with([](ChipSpec& c) { c.dma_bandwidth_per_core.value = INFINITY; }),
            "chip 'h100': the timing engine's rate from field 'dma_bandwidth_per_core' is inf; it needs a positive, "
            "finite, normal rate (at a zero or denormal one an instruction never finishes)");
  EXPECT_EQ(error_with([](ChipSpec& c) { c.hbm_write_efficiency.value = 0; }),
            "chip 'h100': the timing engine's rate from fields 'hbm_bandwidth' x 'hbm_write_efficiency' is 0; it "
            "needs a positive, finite, normal rate (at a zero or denormal one an instruction never finishes)");
  EXPECT_EQ(error_with([](ChipSpec& c) { c.dma_latency.value = NAN; }),
            "chip 'h100': field 'dma_latency' is nan s; the timing engine needs a finite, non-negative latency");
}

// A normal but tiny rate: the rate passes, the instruction's duration overflows a double.
TEST(TimingEngineErrors, AnInstructionLongerThanADoubleCountsNamesTheRate) {
  ChipSpec chip = h100();
  chip.matrix_bf16.value = 1e-300;  // 1e-300 x mma_efficiency / 132 cores per core: still normal
  EXPECT_EQ(test::error_message([&] { TimingEngine(chip).run(mma_kernel(1, 1, 128, 128, 128)); }),
            "kernel 'mma_only': a matrix instruction of block 0 (instruction 0) would take longer than a double can "
            "count on chip 'h100'; fields 'matrix_bf16' x 'mma_efficiency' too small for its work");
  chip = h100();
  chip.hbm_bandwidth.value = 1e-305;  // 4 KiB loads at ~1e-305 B/s: ~4e308 s
  EXPECT_EQ(test::error_message([&] { TimingEngine(chip).run(stream_kernel(1, 2, 1024, true, false)); }),
            "kernel 'stream': block 0 never finished: its DMA transfers would take longer than a double can count on "
            "chip 'h100'; fields 'hbm_bandwidth', 'l2_bandwidth', 'dma_bandwidth_per_core' or "
            "'atomic_bandwidth_per_core' too small for its work");
}

}  // namespace
}  // namespace ppu
