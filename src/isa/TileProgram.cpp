#include "isa/TileProgram.hpp"

#include <fmt/format.h>

#include "arch/Error.hpp"

namespace ppu {

namespace {
constexpr int64_t kSramAlign = 64;
}

void TileProgram::fail(const std::string& msg) const {
  throw UserError(fmt::format("tile program, instruction {}: {}", instrs_.size(), msg));
}

BufferId TileProgram::alloc(DType dtype, int rows, int cols, std::string_view name) {
  if (rows <= 0 || cols <= 0)
    fail(fmt::format("buffer '{}' has shape [{}, {}]; both extents must be positive", name, rows, cols));
  if (buffers_.size() >= 65535) fail("more than 65535 SRAM buffers in one program");
  SramBuffer b{dtype, rows, cols, sram_bytes_, int64_t{rows} * cols * dtype_size_bytes(dtype), std::string(name)};
  sram_bytes_ += (b.bytes + kSramAlign - 1) / kSramAlign * kSramAlign;
  buffers_.push_back(std::move(b));
  last_writer_.push_back(UINT32_MAX);
  if (readers_.size() < buffers_.size()) readers_.emplace_back();
  readers_[buffers_.size() - 1].clear();
  if (parts_.size() < buffers_.size()) parts_.emplace_back();
  parts_[buffers_.size() - 1].clear();
  if (part_waits_.size() < buffers_.size()) part_waits_.emplace_back();
  part_waits_[buffers_.size() - 1].clear();
  return static_cast<BufferId>(buffers_.size() - 1);
}

const SramBuffer& TileProgram::buf(BufferId id, const char* role) const {
  if (id >= buffers_.size()) fail(fmt::format("{} names buffer {}, but only {} are allocated", role, id, buffers_.size()));
  return buffers_[id];
}

void TileProgram::check_extent(BufferId id, int rows, int cols, const char* role) const {
  const SramBuffer& b = buf(id, role);
  if (rows <= 0 || cols <= 0 || rows > b.rows || cols > b.cols)
    fail(fmt::format("{} extent [{}, {}] does not fit buffer '{}' [{}, {}] (extents must be positive)", role, rows,
                     cols, b.name, b.rows, b.cols));
}

void TileProgram::check_f32(BufferId id, const char* role) const {
  const SramBuffer& b = buf(id, role);
  if (b.dtype != DType::kF32)
    fail(fmt::format("{} buffer '{}' is {}; the vector unit works on fp32 buffers (cast first)", role, b.name,
                     dtype_name(b.dtype)));
}

void TileProgram::push(Instr in, std::initializer_list<BufferId> reads, std::initializer_list<BufferId> writes,
                       bool part) {
  const auto idx = static_cast<uint32_t>(instrs_.size());
  const size_t start = deps_.size();
  auto add = [&](uint32_t d) {
    if (d == UINT32_MAX) return;
    for (size_t i = start; i < deps_.size(); ++i)
      if (deps_[i] == d) return;
    deps_.push_back(d);
  };
  add(last_sync_);
  for (BufferId r : reads) {
    add(last_writer_[r]);
    for (const PartLoad& pl : parts_[r]) add(pl.instr);
  }
  if (part) {
    // load_part: the first part after a read of the buffer starts a round; every part of a round
    // waits for the readers of what it replaces, and for the earlier parts of its round whose rows
    // it overlaps - not for the others, so the round's transfers are in flight together.
    const BufferId w = in.dst;
    if (!readers_[w].empty()) {
      part_waits_[w].swap(readers_[w]);
      readers_[w].clear();
      parts_[w].clear();  // the round's readers depend on them, and the new parts on those readers
    }
    add(last_writer_[w]);
    for (uint32_t r : part_waits_[w]) add(r);
    const int32_t row0 = in.k, row1 = in.k + in.rows;
    for (const PartLoad& pl : parts_[w])
      if (pl.row0 < row1 && row0 < pl.row1) add(pl.instr);
    parts_[w].push_back(PartLoad{idx, row0, row1});
  }
  for (BufferId w : writes) {
    add(last_writer_[w]);
    for (uint32_t r : readers_[w]) add(r);
    for (const PartLoad& pl : parts_[w]) add(pl.instr);
    for (uint32_t r : part_waits_[w]) add(r);
  }
  for (BufferId r : reads) readers_[r].push_back(idx);
  for (BufferId w : writes) {
    last_writer_[w] = idx;
    readers_[w].clear();
    parts_[w].clear();
    part_waits_[w].clear();
  }
  instrs_.push_back(in);
  dep_offsets_.push_back(static_cast<uint32_t>(deps_.size()));
}

Instr TileProgram::load_instr(BufferId dst, const TileRegion& src, int buffer_row) const {
  if (buffer_row < 0) fail(fmt::format("load destination row {} is negative", buffer_row));
  check_extent(dst, buffer_row + src.rows, src.cols, "load destination (rows counted from the buffer's row 0)");
  Instr in;
  in.op = OpCode::kLoad;
  in.unit = Unit::kDmaIn;
  in.dst = dst;
  in.rows = src.rows;
  in.cols = src.cols;
  in.k = buffer_row;
  in.region = src;
  return in;
}

void TileProgram::load(BufferId dst, const TileRegion& src, int buffer_row) {
  // A partial write still depends on earlier readers/writers of the buffer (WAR/WAW) like a full one.
  push(load_instr(dst, src, buffer_row), {}, {dst});
}

void TileProgram::load_part(BufferId dst, const TileRegion& src, int buffer_row) {
  push(load_instr(dst, src, buffer_row), {}, {}, /*part=*/true);
}

void TileProgram::store(const TileRegion& dst, BufferId src, int buffer_row) {
  if (buffer_row < 0) fail(fmt::format("store source row {} is negative", buffer_row));
  check_extent(src, buffer_row + dst.rows, dst.cols, "store source (rows counted from the buffer's row 0)");
  Instr in;
  in.op = OpCode::kStore;
  in.unit = Unit::kDmaOut;
  in.a = src;
  in.rows = dst.rows;
  in.cols = dst.cols;
  in.k = buffer_row;
  in.region = dst;
  push(in, {src}, {});
}

void TileProgram::store_add(const TileRegion& dst, BufferId src, int buffer_row) {
  check_f32(src, "store_add source");
  store(dst, src, buffer_row);
  instrs_.back().flags = kFlagAccumulate;
}

void TileProgram::mma(BufferId c, BufferId a, BufferId b, int m, int n, int k, bool trans_a, bool trans_b,
                      bool accumulate) {
  const SramBuffer& ba = buf(a, "mma operand a");
  const SramBuffer& bb = buf(b, "mma operand b");
  const SramBuffer& bc = buf(c, "mma accumulator");
  check_extent(c, m, n, "mma accumulator");
  if (trans_a) check_extent(a, k, m, "mma operand a (transposed, [k, m])");
  else check_extent(a, m, k, "mma operand a ([m, k])");
  if (trans_b) check_extent(b, n, k, "mma operand b (transposed, [n, k])");
  else check_extent(b, k, n, "mma operand b ([k, n])");
  if (ba.dtype != bb.dtype)
    fail(fmt::format("mma operands differ in dtype ({} and {}); both must be the same", dtype_name(ba.dtype),
                     dtype_name(bb.dtype)));
  if (ba.dtype == DType::kF32 || ba.dtype == DType::kI32)
    fail(fmt::format("mma operands are {}; the matrix unit takes bf16, fp16, fp8e4m3, fp8e5m2 or int8 (cast first)",
                     dtype_name(ba.dtype)));
  const DType acc_t = ba.dtype == DType::kI8 ? DType::kI32 : DType::kF32;
  if (bc.dtype != acc_t)
    fail(fmt::format("mma accumulator '{}' is {}; {} operands accumulate into an {} buffer", bc.name,
                     dtype_name(bc.dtype), dtype_name(ba.dtype), dtype_name(acc_t)));
  if (a == c || b == c) fail("mma accumulator must be a different buffer from its operands");
  if (ba.dtype == DType::kI8 && k > kMmaInt8MaxK)
    fail(fmt::format("int8 mma k = {} exceeds {}, past which one instruction's int32 sum could overflow; split k "
                     "over several accumulating instructions",
                     k, kMmaInt8MaxK));
  Instr in;
  in.op = OpCode::kMma;
  in.unit = Unit::kMatrix;
  in.dst = c;
  in.a = a;
  in.b = b;
  in.rows = m;
  in.cols = n;
  in.k = k;
  in.flags = static_cast<uint8_t>((trans_a ? kFlagTransA : 0) | (trans_b ? kFlagTransB : 0) |
                                  (accumulate ? kFlagAccumulate : 0));
  if (accumulate) push(in, {a, b, c}, {c});
  else push(in, {a, b}, {c});
}

void TileProgram::unary(UnaryOp op, BufferId dst, BufferId src, int rows, int cols, float imm) {
  check_f32(dst, "unary destination");
  check_f32(src, "unary source");
  check_extent(dst, rows, cols, "unary destination");
  check_extent(src, rows, cols, "unary source");
  Instr in;
  in.op = OpCode::kUnary;
  in.sub = static_cast<uint8_t>(op);
  in.dst = dst;
  in.a = src;
  in.rows = rows;
  in.cols = cols;
  in.imm = imm;
  push(in, {src}, {dst});
}

void TileProgram::binary(BinaryOp op, BufferId dst, BufferId a, BufferId b, int rows, int cols, Broadcast bc) {
  // The one integer vector op: int32 + int32 (wrapping), which adds integer matrix-unit partial sums
  // exactly (split-K of an int8 GEMM).
  const bool int_add = op == BinaryOp::kAdd && buf(dst, "binary destination").dtype == DType::kI32 &&
                       buf(a, "binary operand a").dtype == DType::kI32 &&
                       buf(b, "binary operand b").dtype == DType::kI32 && bc == Broadcast::kNone;
  if (!int_add) {
    check_f32(dst, "binary destination");
    check_f32(a, "binary operand a");
    check_f32(b, "binary operand b");
  }
  check_extent(dst, rows, cols, "binary destination");
  check_extent(a, rows, cols, "binary operand a");
  switch (bc) {
    case Broadcast::kNone: check_extent(b, rows, cols, "binary operand b"); break;
    case Broadcast::kRow: check_extent(b, rows, 1, "binary operand b (one value per row)"); break;
    case Broadcast::kCol: check_extent(b, 1, cols, "binary operand b (one value per column)"); break;
    case Broadcast::kCount: fail("invalid broadcast");
  }
  if (op >= BinaryOp::kCount) fail(fmt::format("invalid binary op {}", static_cast<int>(op)));
  Instr in;
  in.op = OpCode::kBinary;
  in.sub = static_cast<uint8_t>(op);
  in.flags = static_cast<uint8_t>(bc);
  in.dst = dst;
  in.a = a;
  in.b = b;
  in.rows = rows;
  in.cols = cols;
  if (op == BinaryOp::kSelect) push(in, {a, b, dst}, {dst});  // unselected elements keep dst
  else push(in, {a, b}, {dst});
}

void TileProgram::check_index_range(int64_t base, int cols, const char* role) const {
  if (base < -kMaxExactIndex || base + cols > kMaxExactIndex)
    fail(fmt::format("{} indices {} .. {} leave [-2^24, 2^24], where fp32 holds every integer exactly", role, base,
                     base + cols - 1));
}

void TileProgram::reduce(ReduceOp op, BufferId dst, BufferId src, int rows, int cols, bool accumulate,
                         int32_t index_base) {
  check_f32(dst, "reduce destination");
  check_f32(src, "reduce source");
  check_extent(src, rows, cols, "reduce source");
  check_extent(dst, rows, 1, "reduce destination");
  if (dst == src) fail("reduce destination must differ from its source");
  if (op >= ReduceOp::kCount) fail(fmt::format("invalid reduce op {}", static_cast<int>(op)));
  if (op == ReduceOp::kArgMax) {
    if (accumulate)
      fail("argmax cannot accumulate (dst holds an index, not the maximum); combine partial results with cmp_gt "
           "and select");
    check_index_range(index_base, cols, "argmax");
  } else if (index_base != 0) {
    fail(fmt::format("reduce {} takes no index base (got {}); only argmax does",
                     kReduceOpNames[static_cast<size_t>(op)], index_base));
  }
  Instr in;
  in.op = OpCode::kReduce;
  in.sub = static_cast<uint8_t>(op);
  in.flags = accumulate ? kFlagAccumulate : 0;
  in.dst = dst;
  in.a = src;
  in.rows = rows;
  in.cols = cols;
  in.k = index_base;
  if (accumulate) push(in, {src, dst}, {dst});
  else push(in, {src}, {dst});
}

void TileProgram::fill(BufferId dst, int rows, int cols, float value) {
  check_f32(dst, "fill destination");
  check_extent(dst, rows, cols, "fill destination");
  Instr in;
  in.op = OpCode::kFill;
  in.dst = dst;
  in.rows = rows;
  in.cols = cols;
  in.imm = value;
  push(in, {}, {dst});
}

void TileProgram::iota(BufferId dst, int rows, int cols, int32_t base) {
  check_f32(dst, "iota destination");
  check_extent(dst, rows, cols, "iota destination");
  check_index_range(base, cols, "iota");
  Instr in;
  in.op = OpCode::kFill;
  in.sub = static_cast<uint8_t>(FillOp::kIota);
  in.dst = dst;
  in.rows = rows;
  in.cols = cols;
  in.k = base;
  push(in, {}, {dst});
}

void TileProgram::cast(BufferId dst, BufferId src, int rows, int cols) {
  check_extent(dst, rows, cols, "cast destination");
  check_extent(src, rows, cols, "cast source");
  if (dst == src) fail("cast destination must differ from its source");
  Instr in;
  in.op = OpCode::kCast;
  in.dst = dst;
  in.a = src;
  in.rows = rows;
  in.cols = cols;
  push(in, {src}, {dst});
}

void TileProgram::sync() {
  const auto idx = static_cast<uint32_t>(instrs_.size());
  for (uint32_t i = (last_sync_ == UINT32_MAX ? 0 : last_sync_); i < idx; ++i) deps_.push_back(i);
  Instr in;
  in.op = OpCode::kSync;
  in.unit = Unit::kVector;
  instrs_.push_back(in);
  dep_offsets_.push_back(static_cast<uint32_t>(deps_.size()));
  last_sync_ = idx;
  for (auto& w : last_writer_) w = UINT32_MAX;
  for (size_t i = 0; i < buffers_.size(); ++i) {
    readers_[i].clear();
    parts_[i].clear();
    part_waits_[i].clear();
  }
}

void TileProgram::offset_args(uint16_t delta) {
  for (Instr& in : instrs_)
    if (in.op == OpCode::kLoad || in.op == OpCode::kStore) in.region.arg = static_cast<uint16_t>(in.region.arg + delta);
}

void TileProgram::clear() {
  buffers_.clear();
  instrs_.clear();
  deps_.clear();
  dep_offsets_.assign(1, 0);
  last_writer_.clear();
  last_sync_ = UINT32_MAX;
  sram_bytes_ = 0;
}

}  // namespace ppu
