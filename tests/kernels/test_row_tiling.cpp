// Tests of the row-wise kernels' shared structure: plan_row_tiling covers every element exactly
// once within its tile budget; every block program of the reduce, softmax and RMSNorm kernels fits
// every chip preset's SRAM and stays a few hundred instructions long, even for vocabulary rows; and
// timing-only devices run the kernels at sizes beyond this machine's memory with a positive time.
#include <gtest/gtest.h>

#include <algorithm>

#include "KernelTestUtil.hpp"
#include "kernels/KernelUtil.hpp"
#include "kernels/Reduce.hpp"
#include "kernels/RmsNorm.hpp"
#include "kernels/Softmax.hpp"

namespace ppu {
namespace {

using test::Shape;

TEST(RowTiling, CoversEveryElementOnceWithinTheTileBudget) {
  const int budget = 64;
  for (int64_t rows : {1, 2, 7, 63, 64, 65, 513, 1000, 40000})
    for (int64_t cols : {1, 3, 13, 63, 64, 65, 200}) {
      SCOPED_TRACE(fmt::format("[{}, {}]", rows, cols));
      const kernels::RowTiling t = kernels::plan_row_tiling(rows, cols, budget);
      ASSERT_GT(t.blocks, 0);
      EXPECT_LE(int64_t{t.tile_rows} * t.chunk_cols, budget);
      EXPECT_EQ(t.chunks, (cols + t.chunk_cols - 1) / t.chunk_cols);
      if (t.chunks > 1) {
        EXPECT_EQ(t.tile_rows, 1);
        EXPECT_EQ(t.tiles_per_block, 1);
      }
      EXPECT_LE(t.tiles_per_block, kernels::kRowMaxTilesPerBlock);
      // Rows: blocks and their row tiles partition [0, rows) in order, none empty.
      int64_t next_row = 0;
      for (int64_t b = 0; b < t.blocks; ++b) {
        const int nt = t.tiles_in_block(b);
        ASSERT_GE(nt, 1) << "block " << b;
        for (int i = 0; i < nt; ++i) {
          ASSERT_EQ(t.tile_row0(b, i), next_row);
          ASSERT_GE(t.tile_row_count(b, i), 1);
          next_row += t.tile_row_count(b, i);
        }
        if (nt < t.tiles_per_block) {
          EXPECT_EQ(t.tile_row_count(b, nt), 0);
        }
      }
      EXPECT_EQ(next_row, rows);
      // Columns: chunks partition [0, cols).
      int64_t next_col = 0;
      for (int64_t c = 0; c < t.chunks; ++c) {
        ASSERT_EQ(t.chunk_col0(c), next_col);
        ASSERT_GE(t.chunk_width(c), 1);
        next_col += t.chunk_width(c);
      }
      EXPECT_EQ(next_col, cols);
    }
}

TEST(RowTiling, ManyRowsGetSeveralTilesPerBlockFewRowsGetManyBlocks) {
  const kernels::RowTiling many = kernels::plan_row_tiling(140009, 3, kernels::kReduceTileElems);
  EXPECT_EQ(many.tile_rows, kernels::kRowMaxTileRows);
  EXPECT_EQ(many.tiles_per_block, 2);
  const kernels::RowTiling few = kernels::plan_row_tiling(300, 4096, kernels::kReduceTileElems);
  EXPECT_EQ(few.rows_per_block(), 1);
  EXPECT_EQ(few.blocks, 300);
}

// The kernels of this family, built for one shape with buffers of `t`.
std::vector<Kernel> row_kernels(Device& dev, Shape s, DType t, std::vector<Buffer>& bufs) {
  bufs.push_back(dev.alloc(t, s.rows * s.cols, "x"));
  bufs.push_back(dev.alloc(t, s.rows * s.cols, "y"));
  bufs.push_back(dev.alloc(t, s.cols, "w"));
  bufs.push_back(dev.alloc(t, s.rows, "r"));
  const Buffer &x = bufs[bufs.size() - 4], &y = bufs[bufs.size() - 3], &w = bufs[bufs.size() - 2],
               &r = bufs.back();
  return {kernels::make_row_reduce(kernels::RowReduceOp::kSum, x, r, s.rows, s.cols),
          kernels::make_row_reduce(kernels::RowReduceOp::kMean, x, r, s.rows, s.cols),
          kernels::make_softmax(x, y, s.rows, s.cols), kernels::make_rms_norm(x, w, y, s.rows, s.cols, 1e-6f)};
}

// Shapes that give each kernel its largest tiles: one full-width row per tile, the most rows per
// tile and tiles per block, chunked rows (a vocabulary, and one just past the chunk size).
const std::vector<Shape> kLargestTileShapes = {{1, kernels::kReduceTileElems}, {4096, kernels::kRmsNormTileElems},
                                               {200000, 64},                   {3, 151936},
                                               {3, kernels::kRmsNormTileElems + 1}};

TEST(RowKernels, EveryBlockProgramFitsEveryChipsSram) {
  int checked = 0;
  for (const std::string& name : chip_preset_names()) {
    const ChipSpec chip = load_chip(name);
    Device dev(chip, ExecMode::kTimingOnly);
    for (Shape s : kLargestTileShapes) {
      std::vector<Buffer> bufs;
      for (const Kernel& k : row_kernels(dev, s, DType::kF32, bufs)) {
        TileProgram first, last;
        k.build(0, first);
        k.build(k.grid - 1, last);
        EXPECT_NO_THROW(validate_program(k, 0, first, chip.sram_bytes())) << name << " " << k.name;
        EXPECT_NO_THROW(validate_program(k, k.grid - 1, last, chip.sram_bytes())) << name << " " << k.name;
        // The timing engine sizes a core's resident blocks by block 0's SRAM: no block may need more
        // (only the last block can hold fewer rows, hence fewer stages).
        EXPECT_LE(last.sram_bytes(), first.sram_bytes()) << name << " " << k.name;
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, static_cast<int>(chip_preset_names().size() * 4 * kLargestTileShapes.size()));
  EXPECT_GE(chip_preset_names().size(), 8u);
}

// "A few hundred instructions per block at most": a vocabulary row (151936) is the long case.
TEST(RowKernels, BlockProgramsStaySmall) {
  Device dev(load_chip("h100"), ExecMode::kTimingOnly);
  for (Shape s : kLargestTileShapes) {
    std::vector<Buffer> bufs;
    for (const Kernel& k : row_kernels(dev, s, DType::kBF16, bufs)) {
      TileProgram p;
      k.build(0, p);
      EXPECT_LE(p.instrs().size(), 300u) << k.name;
    }
  }
}

TEST(RowKernels, TimingOnlyDevicesRunThemWithPositiveTime) {
  for (const char* name : {"h100", "a100-80g", "zhenwu-810e"}) {
    Device dev(load_chip(name), ExecMode::kTimingOnly);
    // 2048 x 151936 bf16 logits are 622 MB: sized by the simulated HBM, not by this machine.
    for (Shape s : {Shape{2048, 151936}, Shape{8192, 4096}, Shape{140009, 3}}) {
      std::vector<Buffer> bufs;
      for (const Kernel& k : row_kernels(dev, s, DType::kBF16, bufs)) {
        const KernelTiming t = dev.launch(k);
        EXPECT_GT(t.time_s, 0.0) << name << " " << k.name;
        EXPECT_EQ(t.blocks, k.grid) << name << " " << k.name;
      }
      for (Buffer& b : bufs) dev.free(b);
    }
  }
}

}  // namespace
}  // namespace ppu
