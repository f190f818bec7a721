#include "sim/TimingEngine.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

#include "arch/Error.hpp"
#include "sim/QuadHeap.hpp"

namespace ppu {

double KernelTiming::matrix_utilization(const ChipSpec& chip) const {
  return time_s > 0 ? matrix_busy_s / (chip.num_cores() * time_s) : 0.0;
}
double KernelTiming::hbm_utilization(const ChipSpec& chip) const {
  return time_s > 0 ? hbm_cost_bytes / (chip.hbm_bandwidth.value * time_s) : 0.0;
}
double KernelTiming::l2_utilization(const ChipSpec& chip) const {
  return time_s > 0 ? l2_hit_bytes / (chip.l2_bandwidth.value * time_s) : 0.0;
}

std::string KernelTiming::bound(const ChipSpec& chip) const {
  struct C {
    const char* name;
    double u;
  };
  const double vec = time_s > 0 ? vector_busy_s / (chip.num_cores() * time_s) : 0.0;
  C cands[] = {{"matrix unit", matrix_utilization(chip)},
               {"HBM bandwidth", hbm_utilization(chip)},
               {"L2 bandwidth", l2_utilization(chip)},
               {"vector unit", vec}};
  const C* best = &cands[0];
  for (const C& c : cands)
    if (c.u > best->u) best = &c;
  if (best->u < 0.5) return "latency (launch, DMA latency, too few blocks)";
  return best->name;
}

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

int64_t round_up(int64_t x, int64_t g) { return (x + g - 1) / g * g; }

// Work per element of one vector instruction: fp32 lane operations (an add, multiply, max or FMA
// each takes one lane for one issue; chip.vector_fp32 counts an FMA as 2 FLOPs, so a core does
// vector_fp32 / 2 / cores lane operations per second) and special-function results (exp, log,
// rsqrt, reciprocal, tanh: chip.special_function_ops_per_s()). The two pipes run side by side
// (different warps of a GPU issue to both), so an instruction takes the longer of the two.
struct VectorWork {
  double lane = 1.0, sfu = 0.0;
};

VectorWork vector_op_work(const Instr& in) {
  if (in.op == OpCode::kUnary) {
    switch (static_cast<UnaryOp>(in.sub)) {
      case UnaryOp::kExp:                              // x * log2(e), then exp2
      case UnaryOp::kLog: return {1.0, 1.0};           // log2, then * ln(2)
      case UnaryOp::kSqrt:
      case UnaryOp::kRsqrt:
      case UnaryOp::kRecip: return {0.0, 1.0};
      case UnaryOp::kTanh: return {0.0, 1.0};          // one tanh.approx
      case UnaryOp::kSigmoid: return {2.0, 2.0};       // 1 / (1 + exp(-x))
      case UnaryOp::kSilu: return {3.0, 2.0};          // x * sigmoid(x)
      case UnaryOp::kGelu: return {7.0, 1.0};          // 0.5 x (1 + tanh(c (x + 0.044715 x^3)))
      default: return {1.0, 0.0};
    }
  }
  if (in.op == OpCode::kBinary && static_cast<BinaryOp>(in.sub) == BinaryOp::kDiv) return {1.0, 1.0};  // a * (1 / b)
  // Arg-max tracks an index beside the running maximum: a compare and a blend per element.
  if (in.op == OpCode::kReduce && static_cast<ReduceOp>(in.sub) == ReduceOp::kArgMax) return {2.0, 0.0};
  return {1.0, 0.0};
}

// Processor-sharing bandwidth pool tracked in virtual time: every active flow gets the same rate
// r(t) = min(capacity / n, cap), so a flow of cost S admitted when the virtual clock read V0
// finishes when it reaches V0 + S. O(log n) per event.
struct Pool {
  double capacity = 0, cap = 0;
  int n = 0;
  double v = 0, t = 0;
  double busy_s = 0;
  // 16 bytes: the admission sequence number (ties), core and engine packed in one key.
  struct End {
    double finish_v;
    uint64_t key;  // seq << 24 | core << 4 | engine
    int32_t core() const { return static_cast<int32_t>((key >> 4) & 0xFFFFF); }
    int8_t engine() const { return static_cast<int8_t>(key & 0xF); }
    struct Less {
      bool operator()(const End& a, const End& b) const {
        // The same order as `finish_v != ... ? finish_v < ... : key < ...`, evaluated without
        // branches (bitwise, not short-circuit), which the heap's unpredictable compares favour.
        return (a.finish_v < b.finish_v) | ((a.finish_v == b.finish_v) & (a.key < b.key));
      }
    };
  };
  QuadHeap<End, End::Less> heap;

  // rate() and next_time() change only when a flow is added or popped (advance() runs only then),
  // so both are computed there once instead of on every turn of the event loop: the same values.
  double rate_ = 0, next_ = kInf;

  double rate() const { return rate_; }
  void advance(double now) {
    if (n > 0) {
      v += rate_ * (now - t);
      busy_s += now - t;
    }
    t = now;
  }
  double next_time() const { return next_; }
  void refresh() {
    rate_ = n > 0 ? std::min(capacity / n, cap) : 0.0;
    next_ = n == 0 ? kInf : t + std::max(0.0, heap.top().finish_v - v) / rate_;
  }
  void add(double now, double cost, uint64_t seq, int32_t core, int8_t engine) {
    advance(now);
    heap.push({v + cost, (seq << 24) | (static_cast<uint64_t>(core) << 4) | static_cast<uint64_t>(engine & 0xF)});
    ++n;
    refresh();
  }
  End pop(double now) {
    advance(now);
    End e = heap.top();
    heap.pop();
    --n;
    refresh();
    return e;
  }
};

// LRU over tiles: key = hash of (address, rows, cols, stride). Entries live in a vector as an
// intrusive doubly-linked list (front = most recent), indexed by an open-addressing hash table with
// linear probing and backward-shift deletion: no allocation per access.
struct L2Lru {
  double capacity = 0, used = 0;
  static constexpr uint32_t kNil = UINT32_MAX;
  struct Entry {
    uint64_t key;
    double bytes;
    uint32_t prev, next;
  };
  std::vector<Entry> entries;
  std::vector<uint32_t> free_list;
  std::vector<uint32_t> table;  // entry index or kNil
  uint32_t head = kNil, tail = kNil;
  size_t live = 0;

  size_t slot_of(uint64_t key) const { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 20) & (table.size() - 1); }
  size_t find_slot(uint64_t key) const {
    size_t i = slot_of(key);
    while (table[i] != kNil && entries[table[i]].key != key) i = (i + 1) & (table.size() - 1);
    return i;
  }
  void unlink(uint32_t e) {
    Entry& x = entries[e];
    (x.prev != kNil ? entries[x.prev].next : head) = x.next;
    (x.next != kNil ? entries[x.next].prev : tail) = x.prev;
  }
  void push_front(uint32_t e) {
    entries[e].prev = kNil;
    entries[e].next = head;
    if (head != kNil) entries[head].prev = e;
    head = e;
    if (tail == kNil) tail = e;
  }
  void erase_slot(size_t i) {  // backward-shift deletion keeps probe chains intact
    const size_t mask = table.size() - 1;
    size_t j = i;
    for (;;) {
      j = (j + 1) & mask;
      if (table[j] == kNil) break;
      const size_t home = slot_of(entries[table[j]].key);
      if (((j - home) & mask) >= ((j - i) & mask)) {
        table[i] = table[j];
        i = j;
      }
    }
    table[i] = kNil;
  }
  void grow() {
    std::vector<uint32_t> old;
    old.swap(table);
    table.assign(old.empty() ? 1024 : old.size() * 2, kNil);
    for (uint32_t e : old)
      if (e != kNil) table[find_slot(entries[e].key)] = e;
  }

  // Returns true on a hit; inserts/refreshes either way.
  bool touch(uint64_t key, double bytes) {
    if (table.empty()) grow();
    const size_t i = find_slot(key);
    if (table[i] != kNil) {
      const uint32_t e = table[i];
      unlink(e);
      push_front(e);
      return true;
    }
    if (bytes > capacity) return false;
    uint32_t e;
    if (!free_list.empty()) {
      e = free_list.back();
      free_list.pop_back();
    } else {
      e = static_cast<uint32_t>(entries.size());
      entries.push_back({});
    }
    entries[e].key = key;
    entries[e].bytes = bytes;
    push_front(e);
    table[i] = e;
    ++live;
    used += bytes;
    while (used > capacity) {
      const uint32_t victim = tail;
      used -= entries[victim].bytes;
      unlink(victim);
      erase_slot(find_slot(entries[victim].key));
      free_list.push_back(victim);
      --live;
    }
    if (live * 2 > table.size()) grow();
    return false;
  }
};

uint64_t mix(uint64_t h, uint64_t x) {
  h ^= x + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  return h;
}

enum class EvKind : uint8_t { kComputeDone, kDmaReady, kBlockStart };

// 16 bytes, so the event heap stays cache-friendly. Ties in time are broken by the packed payload
// (kind, core, slot, engine, instruction): deterministic, independent of insertion order.
struct Event {
  double time;
  uint64_t payload;
  Event(double t, EvKind kind, int32_t core, uint32_t instr, int slot, int engine)
      : time(t),
        payload(static_cast<uint64_t>(kind) << 62 | static_cast<uint64_t>(core & 0xFFFFF) << 42 |
                static_cast<uint64_t>(slot & 0x3) << 40 | static_cast<uint64_t>(engine & 0x3) << 38 | instr) {}
  EvKind kind() const { return static_cast<EvKind>(payload >> 62); }
  int32_t core() const { return static_cast<int32_t>((payload >> 42) & 0xFFFFF); }
  int slot() const { return static_cast<int>((payload >> 40) & 0x3); }
  int engine() const { return static_cast<int>((payload >> 38) & 0x3); }
  uint32_t instr() const { return static_cast<uint32_t>(payload & 0xFFFFFFFFu); }
  struct Less {
    bool operator()(const Event& a, const Event& b) const {
      // time, then payload; bitwise so that it compiles without branches (see Pool::End::Less).
      return (a.time < b.time) | ((a.time == b.time) & (a.payload < b.payload));
    }
  };
};

struct Transfer {
  uint32_t instr;
  int8_t slot;
  double ready;  // issue + latency
};

// FIFO of an engine's transfers: a vector and a read position (no allocation once warm, unlike a
// deque's chunks); storage is reclaimed whenever the queue drains or is mostly consumed.
struct TransferQueue {
  std::vector<Transfer> v;
  size_t head = 0;
  bool empty() const { return head == v.size(); }
  size_t size() const { return v.size() - head; }
  const Transfer& front() const { return v[head]; }
  void clear() {
    v.clear();
    head = 0;
  }
  void push_back(const Transfer& t) {
    if (head == v.size()) {
      clear();
    } else if (head >= 64 && head * 2 >= v.size()) {
      v.erase(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(head));
      head = 0;
    }
    v.push_back(t);
  }
  void pop_front() { ++head; }
};

// What the event loop needs of one instruction, computed when its block starts (while the freshly
// built program is in cache): 32 bytes per instruction instead of the Instr, its SRAM buffers and
// the kernel's arguments, which a core's event would otherwise fetch from scattered memory.
struct InstrRec {
  double amount;        // matrix and vector: duration in s; load and store: bytes
  uint64_t extra;       // load and store: the tile's L2 key; matrix: its FLOPs (a double's bits)
  uint32_t succ_begin;  // successors: Slot::succ[succ_begin, the next record's succ_begin)
  uint32_t pending;     // dependencies not completed yet: the instruction may issue at 0
  OpCode op;
  Unit unit;
  DType dtype;          // matrix: the inputs' dtype
  bool accumulate;      // a store_add
};

// One resident block on a core: its progress (its program is only needed while the records are built).
struct Slot {
  int64_t block = -1;
  bool active = false;
  std::vector<InstrRec> rec;   // one per instruction, plus a sentinel closing the last successor range
  std::vector<uint32_t> succ;  // the instructions that depend on each one (ranges named by rec)
  std::vector<uint32_t> order;  // instruction indices grouped by unit, program order within a unit
  uint32_t head[static_cast<int>(Unit::kCount)] = {};  // next of each unit's range in order
  uint32_t end[static_cast<int>(Unit::kCount)] = {};
  int64_t remaining = 0;
  std::vector<double> issue_time;  // only kept when tracing
};

struct Core {
  Slot slots[kMaxResidentBlocks];
  bool busy[2] = {};            // matrix, vector
  TransferQueue dma[2];         // engine 0: dma_in, 1: dma_out (shared by the resident blocks)
  bool flow_active[2] = {};
};

// Per-thread storage the simulation reuses from run to run: the cores' state and the one program
// every block is built into (the same memory each time, so building stays in cache).
struct SimStorage {
  std::vector<Core> cores;
  TileProgram prog;
};

class Sim {
 public:
  Sim(const ChipSpec& chip, const Kernel& k, size_t trace_limit, SimStorage& storage)
      : chip_(chip), k_(k), trace_limit_(trace_limit), cores_(storage.cores), prog_(storage.prog) {
    const int cores_n = chip.num_cores();
    // Reused storage (records, queues keep their capacity): reset the state of every core.
    cores_.resize(static_cast<size_t>(cores_n));
    for (Core& c : cores_) {
      c.busy[0] = c.busy[1] = false;
      c.flow_active[0] = c.flow_active[1] = false;
      c.dma[0].clear();
      c.dma[1].clear();
      for (Slot& sl : c.slots) {
        sl.active = false;
        sl.block = -1;
        sl.remaining = 0;
      }
    }
    const int cores = cores_n;
    hbm_.capacity = chip.hbm_bandwidth.value;
    hbm_.cap = chip.dma_bandwidth_per_core.value;
    l2pool_.capacity = chip.l2_bandwidth.value;
    l2pool_.cap = chip.dma_bandwidth_per_core.value;
    // store_add: each core's atomic reductions at most atomic_bandwidth_per_core (the limit is per
    // core - a GPU SM's red.add throughput - so the pool's total is never the bound).
    atomic_.cap = chip.atomic_bandwidth_per_core_value();
    atomic_.capacity = atomic_.cap * cores_n;
    l2_.capacity = chip.l2_size.value;
    for (int t = 0; t < static_cast<int>(DType::kCount); ++t) {
      const auto dt = static_cast<DType>(t);
      mma_rate_[t] = chip.matrix_flops_per_s(dt) / cores * chip.mma_efficiency_for(dt);
    }
    lane_rate_ = chip.vector_fp32.value / 2.0 / cores;
    sfu_rate_ = chip.special_function_ops_per_s() / cores;
    sync_mma_ = k.sync_mma ? chip.mma_sync_fraction_value() : 1.0;
    check_rates();
    res_.name = k.name;
    res_.cores = cores;
    res_.blocks = k.grid;
    res_.waves = static_cast<double>(k.grid) / cores;
    res_.launch_s = chip.launch_latency.value;
    res_.useful_flops = k.flops;
  }

  KernelTiming run() {
    const double t0 = chip_.launch_latency.value;
    // Residency: as many blocks per core as SRAM holds (block 0's program stands for all), at most
    // kMaxResidentBlocks. Blocks go round-robin over the cores first, as GPU block schedulers do.
    if (k_.grid > 0) {
      prog_.clear();
      k_.build(0, prog_);
      validate_program(k_, 0, prog_, chip_.sram_bytes());
      block0_sram_ = prog_.sram_bytes();
      const double need = std::max<double>(1.0, static_cast<double>(prog_.sram_bytes()));
      const int most = k_.max_resident_blocks > 0 ? std::min(k_.max_resident_blocks, kMaxResidentBlocks) : kMaxResidentBlocks;
      resident_ = static_cast<int>(std::clamp(std::floor(chip_.sram_bytes() / need), 1.0, double(most)));
    }
    res_.resident_blocks = resident_;
    const auto ncores = static_cast<int64_t>(cores_.size());
    const int64_t first = std::min<int64_t>(k_.grid, ncores * resident_);
    for (int64_t i = 0; i < first; ++i)
      push(Event(t0 + chip_.block_latency.value, EvKind::kBlockStart, static_cast<int32_t>(i % ncores), 0,
                 static_cast<int>(i / ncores), 0));
    next_block_ = first;
    double end = k_.grid > 0 ? 0.0 : t0;
    for (;;) {
      const double tc = events_.empty() ? kInf : events_.top().time;
      const double th = hbm_.next_time();
      const double tl = l2pool_.next_time();
      const double ta = atomic_.next_time();
      if (tc == kInf && th == kInf && tl == kInf && ta == kInf) break;
      if (ta < tc && ta < th && ta < tl) {
        now_ = ta;
        flow_done(atomic_.pop(now_));
      } else if (tc <= th && tc <= tl) {
        Event e = events_.top();
        events_.pop();
        now_ = e.time;
        handle(e);
      } else if (th <= tl) {
        now_ = th;
        flow_done(hbm_.pop(now_));
      } else {
        now_ = tl;
        flow_done(l2pool_.pop(now_));
      }
      end = std::max(end, now_);
    }
    for (const Core& c : cores_)
      for (const Slot& sl : c.slots) {
        if (sl.remaining == 0) continue;
        // A transfer whose bytes / bandwidth overflows a double never ends: the input's fault. Any
        // other unfinished block is a dependency bug of ours.
        if (!c.dma[0].empty() || !c.dma[1].empty())
          throw UserError(fmt::format("kernel '{}': block {} never finished: its DMA transfers would take longer than "
                                      "a double can count on chip '{}'; fields 'hbm_bandwidth', 'l2_bandwidth', "
                                      "'dma_bandwidth_per_core' or 'atomic_bandwidth_per_core' too small for its work",
                                      k_.name, sl.block, chip_.name));
        PPU_CHECK(false, fmt::format("kernel '{}': block {} deadlocked in the timing engine", k_.name, sl.block));
      }
    res_.time_s = end;
    res_.hbm_busy_s = hbm_.busy_s;
    res_.l2_busy_s = l2pool_.busy_s;
    return std::move(res_);
  }

 private:
  void push(const Event& e) { events_.push(e); }

  // The event loop divides work by these rates and adds these latencies: a zero, denormal, infinite
  // or NaN one would make an instruction never finish (or finish at no time) and the loop end with
  // blocks left. Chip files cannot hold such values (their valid ranges); a ChipSpec built in code
  // can, and gets this error naming the field instead.
  void check_rates() const {
    auto rate = [&](double per_core, std::string_view fields) {
      if (!(std::isnormal(per_core) && per_core > 0))
        throw UserError(fmt::format("chip '{}': the timing engine's rate from {} is {:g}; it needs a positive, "
                                    "finite, normal rate (at a zero or denormal one an instruction never finishes)",
                                    chip_.name, fields, per_core));
    };
    auto latency = [&](std::string_view key, double v) {
      if (!(std::isfinite(v) && v >= 0))
        throw UserError(fmt::format("chip '{}': field '{}' is {:g} s; the timing engine needs a finite, non-negative "
                                    "latency",
                                    chip_.name, key, v));
    };
    rate(mma_rate_[static_cast<int>(DType::kBF16)], "fields 'matrix_bf16' x 'mma_efficiency'");
    rate(mma_rate_[static_cast<int>(DType::kF16)], "fields 'matrix_fp16' x 'mma_efficiency'");
    if (chip_.matrix_fp8.present)
      rate(mma_rate_[static_cast<int>(DType::kF8E4M3)], "fields 'matrix_fp8' x 'mma_efficiency_fp8'");
    rate(lane_rate_, "field 'vector_fp32'");
    rate(sfu_rate_, chip_.special_function_rate.present
                        ? "field 'special_function_rate'"
                        : "field 'vector_fp32' (no special_function_rate: vector_fp32 / 8)");
    rate(sync_mma_, "field 'mma_sync_fraction'");
    rate(hbm_.capacity * chip_.hbm_read_efficiency.value, "fields 'hbm_bandwidth' x 'hbm_read_efficiency'");
    rate(hbm_.capacity * chip_.hbm_write_efficiency.value, "fields 'hbm_bandwidth' x 'hbm_write_efficiency'");
    rate(l2pool_.capacity, "field 'l2_bandwidth'");
    rate(hbm_.cap, "field 'dma_bandwidth_per_core'");
    rate(atomic_.cap, "field 'atomic_bandwidth_per_core'");
    latency("launch_latency", chip_.launch_latency.value);
    latency("block_latency", chip_.block_latency.value);
    latency("dma_latency", chip_.dma_latency.value);
  }

  void start_block(int32_t ci, int si) {
    Slot& s = cores_[static_cast<size_t>(ci)].slots[si];
    s.block = next_block_started_++;
    s.active = true;
    prog_.clear();
    k_.build(s.block, prog_);
    validate_program(k_, s.block, prog_, chip_.sram_bytes());
    if (static_cast<double>(prog_.sram_bytes()) * resident_ > chip_.sram_bytes())
      throw UserError(fmt::format("kernel '{}': block {} needs {} bytes of SRAM, more than block 0 ({} bytes); the "
                                  "timing engine sizes block residency from block 0, so no block may need more",
                                  k_.name, s.block, prog_.sram_bytes(), block0_sram_));
    const size_t n = prog_.instrs().size();
    if (trace_limit_ > 0) s.issue_time.assign(n, 0.0);
    build_records(s, prog_);
    s.remaining = static_cast<int64_t>(n);
    res_.instructions += s.remaining;
    if (s.remaining == 0) {
      finish_block(ci, si);
      return;
    }
    try_issue(ci);
  }

  void finish_block(int32_t ci, int si) {
    cores_[static_cast<size_t>(ci)].slots[si].active = false;
    if (next_block_ < k_.grid) {
      ++next_block_;
      push(Event(now_ + chip_.block_latency.value, EvKind::kBlockStart, ci, 0, si, 0));
    }
  }

  // Fills s.rec, s.succ and s.order for the block's program `prog`. The amounts are the same
  // expressions, in the same floating-point order, that issue() and start_flow() evaluated per
  // instruction before they were precomputed here.
  void build_records(Slot& s, const TileProgram& prog) const {
    const auto& ins = prog.instrs();
    const auto n = static_cast<uint32_t>(ins.size());
    s.rec.resize(n + 1);
    // Successor counts go to rec[d + 1].succ_begin, and per-unit counts to end[]; prefix sums turn
    // them into starts, and filling through rec[d].succ_begin++ leaves each one at the end of d's
    // range, i.e. the start of d + 1's; then one shift down by a record restores the starts.
    for (uint32_t i = 0; i <= n; ++i) s.rec[i].succ_begin = 0;
    uint32_t per_unit[static_cast<int>(Unit::kCount)] = {};
    for (uint32_t i = 0; i < n; ++i) {
      const Instr& in = ins[i];
      InstrRec& r = s.rec[i];
      r.pending = static_cast<uint32_t>(prog.deps_end(i) - prog.deps_begin(i));
      for (const uint32_t* d = prog.deps_begin(i); d != prog.deps_end(i); ++d) ++s.rec[*d + 1].succ_begin;
      ++per_unit[static_cast<int>(in.unit)];
      r.op = in.op;
      r.unit = in.unit;
      r.dtype = DType::kF32;
      r.accumulate = false;
      r.amount = 0;
      r.extra = 0;
      switch (in.op) {
        case OpCode::kLoad:
        case OpCode::kStore: {
          const TensorArg& t = k_.args[in.region.arg];
          r.amount = static_cast<double>(in.rows) * in.cols * dtype_size_bytes(t.dtype);
          r.extra = mix(mix(mix(t.device_addr + static_cast<uint64_t>(in.region.offset) * dtype_size_bytes(t.dtype),
                                static_cast<uint64_t>(in.rows)),
                            static_cast<uint64_t>(in.cols)),
                        static_cast<uint64_t>(in.region.row_stride));
          r.accumulate = in.op == OpCode::kStore && (in.flags & kFlagAccumulate);
          break;
        }
        case OpCode::kSync: break;
        case OpCode::kMma: {
          const DType dt = prog.buffers()[in.a].dtype;
          const int64_t gk = dtype_size_bytes(dt) == 1 ? kMmaGranK8 : kMmaGranK16;
          const double flops =
              2.0 * round_up(in.rows, kMmaGranMN) * round_up(in.cols, kMmaGranMN) * round_up(in.k, gk);
          const double rate = mma_rate_[static_cast<int>(dt)];
          r.dtype = dt;
          r.amount = flops / (rate * sync_mma_);  // unused (issue() throws) when the rate is 0
          r.extra = std::bit_cast<uint64_t>(2.0 * in.rows * in.cols * in.k);
          break;
        }
        default: {
          const VectorWork w = vector_op_work(in);
          r.amount = static_cast<double>(in.rows) * in.cols * std::max(w.lane / lane_rate_, w.sfu / sfu_rate_);
          break;
        }
      }
    }
    for (uint32_t i = 1; i <= n; ++i) s.rec[i].succ_begin += s.rec[i - 1].succ_begin;
    s.succ.resize(s.rec[n].succ_begin);
    for (uint32_t i = 0; i < n; ++i)
      for (const uint32_t* d = prog.deps_begin(i); d != prog.deps_end(i); ++d) s.succ[s.rec[*d].succ_begin++] = i;
    for (uint32_t i = n; i > 0; --i) s.rec[i].succ_begin = s.rec[i - 1].succ_begin;
    s.rec[0].succ_begin = 0;
    uint32_t at = 0;
    for (int u = 0; u < static_cast<int>(Unit::kCount); ++u) {
      s.head[u] = s.end[u] = at;
      at += per_unit[u];
    }
    s.order.resize(n);
    for (uint32_t i = 0; i < n; ++i) s.order[s.end[static_cast<int>(ins[i].unit)]++] = i;
  }

  static bool deps_done(const Slot& s, uint32_t i) { return s.rec[i].pending == 0; }

  void record(const Slot& s, int32_t ci, uint32_t i, double start, double end, double bytes, bool hit) {
    if (trace_limit_ == 0) return;
    if (res_.trace.size() >= trace_limit_) {
      res_.trace_truncated = true;
      return;
    }
    const InstrRec& r = s.rec[i];
    res_.trace.push_back({start, end, ci, r.unit, r.op, s.block, bytes, hit});
  }

  void complete(int32_t ci, int si, uint32_t i) {
    Slot& s = cores_[static_cast<size_t>(ci)].slots[si];
    InstrRec* r = s.rec.data();
    for (uint32_t j = r[i].succ_begin; j != r[i + 1].succ_begin; ++j) --r[s.succ[j]].pending;
    if (--s.remaining == 0) finish_block(ci, si);
  }

  // The resident block whose head instruction on unit `u` may issue now, oldest block first; -1 if none.
  int ready_slot(const Core& c, int u) const {
    int best = -1;
    for (int si = 0; si < resident_; ++si) {
      const Slot& s = c.slots[si];
      if (!s.active || s.head[u] >= s.end[u]) continue;
      if (!deps_done(s, s.order[s.head[u]])) continue;
      if (best < 0 || s.block < c.slots[best].block) best = si;
    }
    return best;
  }

  void try_issue(int32_t ci) {
    Core& c = cores_[static_cast<size_t>(ci)];
    bool progress = true;
    while (progress) {
      progress = false;
      for (int u = 0; u < static_cast<int>(Unit::kCount); ++u) {
        const bool compute = u == static_cast<int>(Unit::kMatrix) || u == static_cast<int>(Unit::kVector);
        for (;;) {
          if (compute && c.busy[u - 2]) break;
          const int si = ready_slot(c, u);
          if (si < 0) break;
          Slot& s = c.slots[si];
          const uint32_t i = s.order[s.head[u]++];
          issue(ci, c, si, i);
          progress = true;
        }
      }
    }
  }

  void issue(int32_t ci, Core& c, int si, uint32_t i) {
    Slot& s = c.slots[si];
    const InstrRec& r = s.rec[i];
    if (trace_limit_ > 0) s.issue_time[i] = now_;
    switch (r.op) {
      case OpCode::kLoad:
      case OpCode::kStore: {
        const int e = r.op == OpCode::kLoad ? 0 : 1;
        c.dma[e].push_back({i, static_cast<int8_t>(si), now_ + chip_.dma_latency.value});
        if (!c.flow_active[e] && c.dma[e].size() == 1)
          push(Event(c.dma[e].front().ready, EvKind::kDmaReady, ci, 0, 0, e));
        return;
      }
      case OpCode::kSync:
        record(s, ci, i, now_, now_, 0, false);
        complete(ci, si, i);
        return;
      case OpCode::kMma: {
        const DType dt = r.dtype;
        if (!(mma_rate_[static_cast<int>(dt)] > 0))
          throw UserError(fmt::format("kernel '{}': {} has no {} matrix unit (valid inputs: {}; chips with it: {})",
                                      k_.name, chip_.name, dtype_name(dt), matrix_dtypes_of(chip_),
                                      presets_supporting(dt)));
        const double dur = r.amount;
        if (!std::isfinite(dur))
          throw_endless(s, i, "a matrix",
                        fmt::format("fields '{}' x '{}'", matrix_field_for(dt), mma_efficiency_field_for(dt)));
        res_.matrix_flops += std::bit_cast<double>(r.extra);
        res_.matrix_busy_s += dur;
        c.busy[0] = true;
        push(Event(now_ + dur, EvKind::kComputeDone, ci, i, si, 0));
        return;
      }
      default: {
        const double dur = r.amount;
        if (!std::isfinite(dur)) throw_endless(s, i, "a vector", "field 'vector_fp32' or 'special_function_rate'");
        res_.vector_busy_s += dur;
        c.busy[1] = true;
        push(Event(now_ + dur, EvKind::kComputeDone, ci, i, si, 0));
        return;
      }
    }
  }

  // An instruction whose duration overflows a double: the chip's rate is too small for its work.
  [[noreturn]] void throw_endless(const Slot& s, uint32_t i, std::string_view what, std::string_view fields) const {
    throw UserError(fmt::format("kernel '{}': {} instruction of block {} (instruction {}) would take longer than a "
                                "double can count on chip '{}'; {} too small for its work",
                                k_.name, what, s.block, i, chip_.name, fields));
  }

  void start_flow(int32_t ci, int e) {
    Core& c = cores_[static_cast<size_t>(ci)];
    const Transfer tr = c.dma[e].front();
    const InstrRec& r = c.slots[tr.slot].rec[tr.instr];
    const double bytes = r.amount;
    const uint64_t key = r.extra;
    c.flow_active[e] = true;
    if (r.accumulate) {  // store_add: reduced in L2
      res_.atomic_bytes += bytes;
      atomic_.add(now_, bytes, seq_++, ci, kAtomicEngine);
      return;
    }
    const bool hit = l2_.touch(key, bytes);
    if (e == 0 && hit) {
      res_.l2_hit_bytes += bytes;
      l2pool_.add(now_, bytes, seq_++, ci, static_cast<int8_t>(2 + e));  // engine code + 2: served by L2
    } else {
      const double cost = e == 0 ? bytes / chip_.hbm_read_efficiency.value : bytes / chip_.hbm_write_efficiency.value;
      (e == 0 ? res_.hbm_read_bytes : res_.hbm_write_bytes) += bytes;
      res_.hbm_cost_bytes += cost;
      hbm_.add(now_, cost, seq_++, ci, static_cast<int8_t>(e));
    }
  }

  void flow_done(const Pool::End& f) {
    const int32_t ci = f.core();
    const int e = f.engine() & 1;
    Core& c = cores_[static_cast<size_t>(ci)];
    const Transfer tr = c.dma[e].front();
    c.dma[e].pop_front();
    c.flow_active[e] = false;
    const Slot& s = c.slots[tr.slot];
    if (trace_limit_ > 0) {
      record(s, ci, tr.instr, s.issue_time[tr.instr], now_, s.rec[tr.instr].amount, f.engine() >= 2);
    }
    if (!c.dma[e].empty()) {
      if (c.dma[e].front().ready <= now_) start_flow(ci, e);
      else push(Event(c.dma[e].front().ready, EvKind::kDmaReady, ci, 0, 0, e));
    }
    complete(ci, tr.slot, tr.instr);
    try_issue(ci);
  }

  void handle(const Event& ev) {
    switch (ev.kind()) {
      case EvKind::kBlockStart: start_block(ev.core(), ev.slot()); break;
      case EvKind::kDmaReady: {
        Core& c = cores_[static_cast<size_t>(ev.core())];
        if (!c.flow_active[ev.engine()] && !c.dma[ev.engine()].empty()) start_flow(ev.core(), ev.engine());
        break;
      }
      case EvKind::kComputeDone: {
        Core& c = cores_[static_cast<size_t>(ev.core())];
        const Slot& s = c.slots[ev.slot()];
        c.busy[s.rec[ev.instr()].unit == Unit::kMatrix ? 0 : 1] = false;
        if (trace_limit_ > 0) record(s, ev.core(), ev.instr(), s.issue_time[ev.instr()], now_, 0, false);
        complete(ev.core(), ev.slot(), ev.instr());
        try_issue(ev.core());
        break;
      }
    }
  }

  const ChipSpec& chip_;
  const Kernel& k_;
  size_t trace_limit_;
  std::vector<Core>& cores_;
  TileProgram& prog_;  // scratch: the block being started
  Pool hbm_, l2pool_;
  L2Lru l2_;
  Pool atomic_;
  static constexpr int8_t kAtomicEngine = 5;  // store engine (odd), not an HBM flow (>= 2)
  double mma_rate_[static_cast<int>(DType::kCount)] = {};
  double lane_rate_ = 0, sfu_rate_ = 0;  // per core: fp32 lane operations/s, special-function results/s
  double sync_mma_ = 1.0;                 // Kernel::sync_mma: the chip's mma_sync_fraction
  QuadHeap<Event, Event::Less> events_;
  uint64_t seq_ = 0;
  double now_ = 0;
  int resident_ = 1;
  int64_t block0_sram_ = 0;
  int64_t next_block_ = 0;
  int64_t next_block_started_ = 0;
  KernelTiming res_;
};

}  // namespace

std::optional<KernelTiming> TimingCache::find(const std::string& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = map_.find(key);
  if (it == map_.end()) return std::nullopt;
  return it->second;
}

void TimingCache::put(const std::string& key, const KernelTiming& t) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    map_.emplace(key, t);
    claimed_.erase(key);
  }
  done_.notify_all();
}

std::optional<KernelTiming> TimingCache::find_or_claim(const std::string& key) {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    if (auto it = map_.find(key); it != map_.end()) return it->second;
    if (claimed_.insert(key).second) return std::nullopt;
    done_.wait(lock);
  }
}

void TimingCache::abandon(const std::string& key) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    claimed_.erase(key);
  }
  done_.notify_all();
}

size_t TimingCache::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return map_.size();
}

TimingEngine::TimingEngine(const ChipSpec& chip) : chip_(chip) {}

KernelTiming TimingEngine::run(const Kernel& k, size_t trace_limit) {
  if (k.grid < 0) throw UserError(fmt::format("kernel '{}': grid {} must not be negative", k.name, k.grid));
  std::string key;
  if (!k.timing_key.empty() && trace_limit == 0) {
    key = k.timing_key + (k.sync_mma ? "|sync-mma" : "") + fmt::format("|res{}", k.max_resident_blocks);
    for (const TensorArg& a : k.args) key += fmt::format("|{}:{}", static_cast<int>(a.dtype), a.numel);
    // Arguments that overlap change which tiles coincide in L2: part of the key.
    for (size_t i = 0; i < k.args.size(); ++i)
      for (size_t j = i + 1; j < k.args.size(); ++j) {
        const TensorArg &a = k.args[i], &b = k.args[j];
        const uint64_t ae = a.device_addr + static_cast<uint64_t>(a.numel * dtype_size_bytes(a.dtype));
        const uint64_t be = b.device_addr + static_cast<uint64_t>(b.numel * dtype_size_bytes(b.dtype));
        if (a.device_addr < be && b.device_addr < ae)
          key += fmt::format("|o{}.{}@{}", i, j, static_cast<int64_t>(b.device_addr - a.device_addr));
      }
    if (shared_) {
      if (auto hit = shared_->find_or_claim(key)) {
        ++cache_hits_;
        hit->name = k.name;
        return *hit;
      }
    } else if (auto it = cache_.find(key); it != cache_.end()) {
      ++cache_hits_;
      KernelTiming r = it->second;
      r.name = k.name;
      return r;
    }
  }
  // Per-thread core state reused across runs (no allocation or page faults after the first run);
  // a nested run on the same thread (none today) would get its own.
  thread_local SimStorage t_storage;
  thread_local bool t_busy = false;
  SimStorage own;
  SimStorage& storage = t_busy ? own : t_storage;
  const bool took = !t_busy;
  t_busy = true;
  try {
    Sim sim(chip_, k, trace_limit, storage);
    KernelTiming r = sim.run();
    if (took) t_busy = false;
    if (!key.empty() && shared_) {
      shared_->put(key, r);
    } else if (!key.empty()) {
      if (cache_.size() >= 4096) cache_.clear();
      cache_.emplace(std::move(key), r);
    }
    return r;
  } catch (...) {
    if (took) t_busy = false;
    if (!key.empty() && shared_) shared_->abandon(key);
    throw;
  }
}

}  // namespace ppu
