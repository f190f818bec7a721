// Tile ISA: the instructions one core runs for one block of a kernel, and the program that holds them.
//
// A core owns a software-managed SRAM. A program first allocates named SRAM buffers (2-D tiles,
// [rows, cols] row-major, one dtype each), then issues instructions that move strided 2-D tiles
// between global memory (HBM) and SRAM (DMA load/store, with dtype conversion), multiply tiles on
// the matrix unit (MMA: 16-bit or fp8 inputs with fp32 accumulation; int8 inputs with exact int32
// accumulation) and transform them on the vector unit (elementwise, broadcast, row reductions, exp,
// casts; fp32 buffers only, except Cast and the int32 add of integer partial sums). Compares
// produce 1/0 masks that a select consumes; argmax and iota carry column indices as exact fp32
// integers (below kMaxExactIndex), so sampling and masking need no integer type.
//
// Instructions name the buffers they read and write; the program derives every dependency from that
// (read-after-write, write-after-read, write-after-write), so neither the functional executor nor the
// timing engine needs the author to declare any. `sync()` is a full fence inside the block.
//
//   TileProgram p;
//   auto a = p.alloc(DType::kBF16, 128, 64, "a");
//   auto b = p.alloc(DType::kBF16, 64, 128, "b");
//   auto c = p.alloc(DType::kF32, 128, 128, "c");
//   p.fill(c, 128, 128, 0.0f);
//   p.load(a, {.arg = 0, .offset = 0, .row_stride = K, .rows = 128, .cols = 64});
//   p.load(b, {.arg = 1, .offset = 0, .row_stride = N, .rows = 64, .cols = 128});
//   p.mma(c, a, b, 128, 128, 64);
//   p.store({.arg = 2, .offset = 0, .row_stride = N, .rows = 128, .cols = 128}, c);
//
// Every instruction works on the top-left [rows, cols] of its buffers, so edge tiles need no padding;
// loads and stores may start at a row offset of the buffer, to assemble a tile from several regions.
// Extents and dtypes are checked as the program is built (UserError naming the instruction);
// tensor bounds are checked against the kernel's arguments by validate_program(); SRAM capacity
// against a chip by Kernel checks in the executors.
//
// Not here: what instructions cost (sim/TimingEngine) or compute (sim/FunctionalExecutor).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "arch/DType.hpp"

namespace ppu {

using BufferId = uint16_t;

enum class OpCode : uint8_t { kLoad, kStore, kMma, kUnary, kBinary, kReduce, kFill, kCast, kSync, kCount };
inline constexpr std::array<std::string_view, static_cast<size_t>(OpCode::kCount)> kOpCodeNames = {
    "load", "store", "mma", "unary", "binary", "reduce", "fill", "cast", "sync"};

enum class UnaryOp : uint8_t {
  kCopy, kNeg, kAbs, kExp, kLog, kSqrt, kRsqrt, kRecip, kSquare, kRelu, kSilu,
  kGelu,  // tanh approximation (GPT-2, Megatron)
  kSigmoid, kTanh,
  kScale,   // x * imm
  kAddImm,  // x + imm
  kCount
};
inline constexpr std::array<std::string_view, static_cast<size_t>(UnaryOp::kCount)> kUnaryOpNames = {
    "copy", "neg", "abs", "exp", "log", "sqrt", "rsqrt", "recip", "square", "relu", "silu", "gelu",
    "sigmoid", "tanh", "scale", "add_imm"};

enum class BinaryOp : uint8_t {
  kAdd, kSub, kMul, kDiv, kMax, kMin,
  kCmpGt,   // 1.0f where a > b, else 0.0f (NaN compares false)
  kCmpEq,   // 1.0f where a == b, else 0.0f (-0 == +0; NaN compares false)
  kSelect,  // masked move: dst = (a != 0) ? b : dst (NaN counts as nonzero); the one op that reads dst
  kCount
};
inline constexpr std::array<std::string_view, static_cast<size_t>(BinaryOp::kCount)> kBinaryOpNames = {
    "add", "sub", "mul", "div", "max", "min", "cmp_gt", "cmp_eq", "select"};

// How operand b of a binary op is read for element [r, c]: b[r,c], b[r,0] (one value per row) or
// b[0,c] (one value per column).
enum class Broadcast : uint8_t { kNone, kRow, kCol, kCount };
inline constexpr std::array<std::string_view, static_cast<size_t>(Broadcast::kCount)> kBroadcastNames = {
    "none", "row", "col"};

// kMax ignores NaNs (a row of only NaNs gives -inf). kArgMax writes the column of the row's maximum
// (its first occurrence; NaNs ignored; 0 if every element is NaN) plus an index base, as an exact
// integer in fp32 - the vector unit has no integer type, and integers below 2^24 are exact.
enum class ReduceOp : uint8_t { kSum, kMax, kArgMax, kCount };
inline constexpr std::array<std::string_view, static_cast<size_t>(ReduceOp::kCount)> kReduceOpNames = {
    "sum", "max", "argmax"};

// What a fill writes: one value, or each element's column index plus a base ("iota").
enum class FillOp : uint8_t { kConst, kIota, kCount };
inline constexpr std::array<std::string_view, static_cast<size_t>(FillOp::kCount)> kFillOpNames = {"const", "iota"};

// The deepest k one int8 mma instruction takes: k products of int8 values (each at most 2^14 in
// magnitude) stay below 2^31, so one instruction's int32 sum cannot overflow.
inline constexpr int kMmaInt8MaxK = 131071;

// Integers that index columns on the vector unit (argmax, iota) stay below this bound, so that fp32
// holds every one of them exactly.
inline constexpr int64_t kMaxExactIndex = int64_t{1} << 24;

// Execution units of a core. Instructions on one unit run in program order.
enum class Unit : uint8_t { kDmaIn, kDmaOut, kMatrix, kVector, kCount };
inline constexpr std::array<std::string_view, static_cast<size_t>(Unit::kCount)> kUnitNames = {
    "dma_in", "dma_out", "matrix", "vector"};

// A strided 2-D region of a kernel's tensor argument, in elements of that tensor's dtype:
// element [r, c] is at offset + r * row_stride + c.
struct TileRegion {
  uint16_t arg = 0;
  int64_t offset = 0;
  int64_t row_stride = 0;
  int32_t rows = 0;
  int32_t cols = 0;
};

struct SramBuffer {
  DType dtype;
  int32_t rows, cols;
  int64_t offset_bytes;  // within the core's SRAM (64-byte aligned)
  int64_t bytes;
  std::string name;
};

enum InstrFlags : uint8_t {
  kFlagTransA = 1,      // mma: buffer a holds A^T, i.e. [k, m]
  kFlagTransB = 2,      // mma: buffer b holds B^T, i.e. [n, k]
  kFlagAccumulate = 4,  // mma: c += a.b (else c = a.b); reduce: dst = op(dst, reduce(src)); store: dst += src
};

struct Instr {
  OpCode op = OpCode::kSync;
  uint8_t sub = 0;    // UnaryOp / BinaryOp / ReduceOp / FillOp
  uint8_t flags = 0;  // InstrFlags, or Broadcast for binary ops
  Unit unit = Unit::kVector;
  BufferId dst = 0, a = 0, b = 0;
  // Extents; mma: m = rows, n = cols, k; load/store: k = first buffer row; argmax, iota: k = index base.
  int32_t rows = 0, cols = 0, k = 0;
  float imm = 0.0f;
  TileRegion region;  // load: source; store: destination
};

// A std::array sized by kCount zero-fills missing initializers: the last name must be set.
static_assert(!kOpCodeNames.back().empty() && !kUnaryOpNames.back().empty() && !kBinaryOpNames.back().empty() &&
                  !kBroadcastNames.back().empty() && !kReduceOpNames.back().empty() && !kFillOpNames.back().empty() &&
                  !kUnitNames.back().empty(),
              "every enum value needs a name");

constexpr std::string_view opcode_name(OpCode o) { return kOpCodeNames[static_cast<size_t>(o)]; }
constexpr std::string_view unit_name(Unit u) { return kUnitNames[static_cast<size_t>(u)]; }

class TileProgram {
 public:
  // Allocates an SRAM buffer [rows, cols] of `dtype`. Throws UserError on non-positive extents.
  BufferId alloc(DType dtype, int rows, int cols, std::string_view name);

  // Loads the region into rows [buffer_row, buffer_row + src.rows) of `dst` (columns from 0), so a
  // tile can be assembled from several regions (e.g. gathered rows).
  void load(BufferId dst, const TileRegion& src, int buffer_row = 0);
  // The same load, as one part of a tile assembled from several regions (a paged KV tile, one region
  // per cache block): parts into rows of `dst` that do not overlap are in flight together, as a GPU
  // issues several async copies into one shared-memory tile. A part waits for the buffer's readers
  // before the round of parts began and its last full write, and for earlier parts of its round
  // whose rows it overlaps; any later reader or writer waits for all of the round's parts. A round
  // ends when the buffer is read: the next part starts another. (load() orders every write of a
  // buffer, even into disjoint rows.)
  void load_part(BufferId dst, const TileRegion& src, int buffer_row);
  // Stores rows [buffer_row, buffer_row + dst.rows) of `src` (columns from 0) into the region.
  void store(const TileRegion& dst, BufferId src, int buffer_row = 0);
  // Adds rows [buffer_row, buffer_row + dst.rows) of fp32 `src` into the region of an fp32 tensor
  // (a GPU's atomic reduction to global memory, red.add). Blocks of one kernel may add into the same
  // elements; the executors apply each block's additions in block order (functional: deterministic,
  // where a GPU's order varies from run to run), and no block of that kernel may read what it adds
  // into. Only in kernels with Kernel::accumulates set; timed at ChipSpec::atomic_bandwidth_per_core.
  void store_add(const TileRegion& dst, BufferId src, int buffer_row = 0);
  // c[m,n] (+)= A[m,k] . B[k,n]. a holds A ([m,k], or [k,m] if trans_a); b holds B ([k,n], or [n,k]
  // if trans_b). a and b share a 16-bit, fp8 or int8 dtype; c is fp32, or int32 for int8 inputs
  // (exact integer sums, wrapping modulo 2^32 as the hardware's does without saturation: no wrap
  // while k * 2^14 < 2^31, i.e. below 131072 products of int8 values per output).
  void mma(BufferId c, BufferId a, BufferId b, int m, int n, int k, bool trans_a = false, bool trans_b = false,
           bool accumulate = true);
  void unary(UnaryOp op, BufferId dst, BufferId src, int rows, int cols, float imm = 0.0f);
  // dst[r, c] = a[r, c] op b (b read as `bc` says). kSelect also reads dst (a masked move). fp32
  // buffers; or kAdd of int32 buffers without broadcast (wrapping two's-complement addition).
  void binary(BinaryOp op, BufferId dst, BufferId a, BufferId b, int rows, int cols, Broadcast bc = Broadcast::kNone);
  // dst[r, 0] = reduce over c < cols of src[r, c] (accumulate: combined with dst[r, 0]). kArgMax:
  // index_base + the column of the maximum; it cannot accumulate, and needs -kMaxExactIndex <=
  // index_base and index_base + cols <= kMaxExactIndex (index_base must be 0 for the other ops).
  void reduce(ReduceOp op, BufferId dst, BufferId src, int rows, int cols, bool accumulate = false,
              int32_t index_base = 0);
  void fill(BufferId dst, int rows, int cols, float value);
  // dst[r, c] = base + c (every row alike). Needs -kMaxExactIndex <= base and base + cols <=
  // kMaxExactIndex, so that every value is an exact fp32 integer.
  void iota(BufferId dst, int rows, int cols, int32_t base);
  void cast(BufferId dst, BufferId src, int rows, int cols);
  void sync();

  const std::vector<Instr>& instrs() const { return instrs_; }
  const std::vector<SramBuffer>& buffers() const { return buffers_; }
  int64_t sram_bytes() const { return sram_bytes_; }
  // Instructions instruction `i` must wait for (indices of earlier instructions).
  const uint32_t* deps_begin(size_t i) const { return deps_.data() + dep_offsets_[i]; }
  const uint32_t* deps_end(size_t i) const { return deps_.data() + dep_offsets_[i + 1]; }

  // Empties the program, keeping allocated storage (programs are rebuilt per block).
  void clear();
  // Adds `delta` to the argument index of every load and store (used to concatenate kernels).
  void offset_args(uint16_t delta);

 private:
  // part: a load_part into in.dst (pass it in neither list).
  void push(Instr in, std::initializer_list<BufferId> reads, std::initializer_list<BufferId> writes,
            bool part = false);
  Instr load_instr(BufferId dst, const TileRegion& src, int buffer_row) const;
  const SramBuffer& buf(BufferId id, const char* role) const;
  void check_extent(BufferId id, int rows, int cols, const char* role) const;
  void check_f32(BufferId id, const char* role) const;
  void check_index_range(int64_t base, int cols, const char* role) const;
  [[noreturn]] void fail(const std::string& msg) const;

  std::vector<SramBuffer> buffers_;
  std::vector<Instr> instrs_;
  std::vector<uint32_t> deps_;
  std::vector<uint32_t> dep_offsets_{0};
  // Per buffer: last writer (or UINT32_MAX) and readers since that write.
  std::vector<uint32_t> last_writer_;
  std::vector<std::vector<uint32_t>> readers_;
  // Per buffer: the load_part's of the current round (rows [row0, row1)), and the readers each of
  // them waits for (those of the content the round replaces).
  struct PartLoad {
    uint32_t instr;
    int32_t row0, row1;
  };
  std::vector<std::vector<PartLoad>> parts_;
  std::vector<std::vector<uint32_t>> part_waits_;
  uint32_t last_sync_ = UINT32_MAX;
  int64_t sram_bytes_ = 0;
};

}  // namespace ppu
