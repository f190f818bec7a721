#include "sim/FunctionalExecutor.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "arch/Error.hpp"
#include "sim/HostIsa.hpp"
#include "sim/Mma.hpp"
#include "sim/VectorOps.hpp"

namespace ppu {

namespace {

struct AlignedArena {
  std::vector<unsigned char> raw;
  unsigned char* ensure(int64_t bytes) {
    if (static_cast<int64_t>(raw.size()) < bytes + 64) raw.resize(static_cast<size_t>(bytes + 64));
    auto p = reinterpret_cast<uintptr_t>(raw.data());
    return raw.data() + ((64 - (p & 63)) & 63);
  }
};

thread_local MmaScratch t_mma_scratch;
thread_local std::vector<float> t_row;

// Moves `rows` x `cols` elements between two strided 2-D layouts with dtype conversion.
void copy_convert(DType st, const unsigned char* src, int64_t src_stride, DType dt, unsigned char* dst, int64_t dst_stride,
                  int rows, int cols) {
  const int ss = dtype_size_bytes(st), ds = dtype_size_bytes(dt);
  if (st == dt && src_stride == cols && dst_stride == cols) {  // contiguous on both sides: one copy
    std::memcpy(dst, src, static_cast<size_t>(rows) * cols * ss);
    return;
  }
  for (int r = 0; r < rows; ++r) {
    const unsigned char* s = src + r * src_stride * ss;
    unsigned char* d = dst + r * dst_stride * ds;
    if (st == dt) {
      std::memcpy(d, s, static_cast<size_t>(cols) * ss);
    } else if (dt == DType::kF32) {
      convert_to_f32(st, s, reinterpret_cast<float*>(d), cols);
    } else if (st == DType::kF32) {
      convert_from_f32(dt, reinterpret_cast<const float*>(s), d, cols);
    } else {
      t_row.resize(static_cast<size_t>(cols));
      convert_to_f32(st, s, t_row.data(), cols);
      convert_from_f32(dt, t_row.data(), d, cols);
    }
  }
}

}  // namespace

namespace {

// Where a buffer's current contents can be read: its SRAM bytes, or - for a buffer that only
// receives same-dtype loads from an argument this block never stores to - the global memory it was
// loaded from ("alias": the copy is skipped, since nothing can change those bytes before they are
// read; the result is the same as copying them).
struct ReadView {
  const unsigned char* ptr;
  int64_t ld;        // elements between rows
  int32_t rows, cols;  // extent a consumer may read through an alias
  bool alias;
};

thread_local std::vector<ReadView> t_views;
thread_local std::vector<uint8_t> t_aliasable;

}  // namespace

void PendingAdds::apply() const {
  for (const Add& a : adds)
    for (int r = 0; r < a.rows; ++r) {
      float* d = a.dst + r * a.ld;
      const float* v = values.data() + a.at + static_cast<size_t>(r) * a.cols;
      for (int c = 0; c < a.cols; ++c) d[c] += v[c];
    }
}

void execute_program(const Kernel& k, const TileProgram& p, unsigned char* arena, PendingAdds* adds) {
  const auto& bufs = p.buffers();
  const auto& ins = p.instrs();
  auto fptr = [&](BufferId id) { return reinterpret_cast<float*>(arena + bufs[id].offset_bytes); };

  // Which buffers may alias global memory (see ReadView).
  auto& aliasable = t_aliasable;
  aliasable.assign(bufs.size(), 1);
  std::vector<bool> stored_args(k.args.size(), false);
  for (const Instr& in : ins)
    if (in.op == OpCode::kStore) stored_args[in.region.arg] = true;
  for (const Instr& in : ins) {
    switch (in.op) {
      case OpCode::kLoad:
        if (in.k != 0 || k.args[in.region.arg].dtype != bufs[in.dst].dtype || stored_args[in.region.arg])
          aliasable[in.dst] = 0;
        break;
      case OpCode::kMma:
      case OpCode::kUnary:
      case OpCode::kBinary:
      case OpCode::kReduce:
      case OpCode::kFill:
      case OpCode::kCast: aliasable[in.dst] = 0; break;
      default: break;
    }
  }
  auto& views = t_views;
  views.resize(bufs.size());
  for (size_t i = 0; i < bufs.size(); ++i) views[i] = {arena + bufs[i].offset_bytes, bufs[i].cols, 0, 0, false};
  // Read access to rows x cols of buffer `id`: through its alias if it covers them, else SRAM
  // (copying the aliased bytes in first, so reads outside a load's extent see SRAM as without aliasing).
  auto rd = [&](BufferId id, int rows, int cols) -> const ReadView& {
    ReadView& v = views[id];
    if (v.alias && (rows > v.rows || cols > v.cols)) {
      const SramBuffer& b = bufs[id];
      copy_convert(b.dtype, v.ptr, v.ld, b.dtype, arena + b.offset_bytes, b.cols, v.rows, v.cols);
      v = {arena + b.offset_bytes, b.cols, 0, 0, false};
    }
    return v;
  };
  auto frd = [&](BufferId id, int rows, int cols) {
    const ReadView& v = rd(id, rows, cols);
    return std::make_pair(reinterpret_cast<const float*>(v.ptr), v.ld);
  };

  // Consecutive k-steps of one accumulator that read global memory in one continuing stretch (the
  // weight rows of a decode GEMM, aliased) run as one mma_tile call where that is faster on the host
  // (mma_streams_long_k: !trans_a, trans_b, so both operands continue k elements further on).
  // Only aliased operands are merged: global memory cannot change during the program, so the merged
  // call may run later, before the next instruction that is neither such an MMA nor an aliased load.
  struct PendingMma {
    bool active = false;
    BufferId dst = 0;
    DType type = DType::kBF16;
    const unsigned char *a = nullptr, *b = nullptr;
    int64_t lda = 0, ldb = 0;
    int m = 0, n = 0, k = 0;
    bool accumulate = false;
  } pend;
  auto flush = [&] {
    if (!pend.active) return;
    mma_tile(pend.type, pend.a, static_cast<int>(pend.lda), false, pend.b, static_cast<int>(pend.ldb), true,
             fptr(pend.dst), bufs[pend.dst].cols, pend.m, pend.n, pend.k, pend.accumulate, t_mma_scratch);
    pend.active = false;
  };

  for (const Instr& in : ins) {
    if (pend.active && in.op != OpCode::kMma && !(in.op == OpCode::kLoad && aliasable[in.dst])) flush();
    switch (in.op) {
      case OpCode::kLoad: {
        const TensorArg& t = k.args[in.region.arg];
        const SramBuffer& b = bufs[in.dst];
        const auto* src = static_cast<const unsigned char*>(t.data) + in.region.offset * dtype_size_bytes(t.dtype);
        if (aliasable[in.dst]) {
          views[in.dst] = {src, in.region.row_stride, in.rows, in.cols, true};
          break;
        }
        unsigned char* dst = arena + b.offset_bytes + int64_t{in.k} * b.cols * dtype_size_bytes(b.dtype);
        copy_convert(t.dtype, src, in.region.row_stride, b.dtype, dst, b.cols, in.rows, in.cols);
        break;
      }
      case OpCode::kStore: {
        const TensorArg& t = k.args[in.region.arg];
        const SramBuffer& b = bufs[in.a];
        auto* dst = static_cast<unsigned char*>(t.data) + in.region.offset * dtype_size_bytes(t.dtype);
        const ReadView& v = rd(in.a, in.k + in.rows, in.cols);
        const unsigned char* src = v.ptr + int64_t{in.k} * v.ld * dtype_size_bytes(b.dtype);
        if (in.flags & kFlagAccumulate) {  // store_add: fp32 into fp32 (validate_program)
          PendingAdds one;
          PendingAdds& to = adds ? *adds : one;
          to.adds.push_back({reinterpret_cast<float*>(dst), in.region.row_stride, in.rows, in.cols, to.values.size()});
          for (int r = 0; r < in.rows; ++r) {
            const auto* row = reinterpret_cast<const float*>(src) + r * v.ld;
            to.values.insert(to.values.end(), row, row + in.cols);
          }
          if (!adds) one.apply();
          break;
        }
        copy_convert(b.dtype, src, v.ld, t.dtype, dst, in.region.row_stride, in.rows, in.cols);
        break;
      }
      case OpCode::kMma: {
        const bool ta = in.flags & kFlagTransA, tb = in.flags & kFlagTransB;
        const ReadView& va = rd(in.a, ta ? in.k : in.rows, ta ? in.rows : in.k);
        const ReadView& vb = rd(in.b, tb ? in.cols : in.k, tb ? in.k : in.cols);
        const DType t = bufs[in.a].dtype;
        if (t == DType::kI8) {
          flush();
          mma_tile_i8(reinterpret_cast<const int8_t*>(va.ptr), static_cast<int>(va.ld), ta,
                      reinterpret_cast<const int8_t*>(vb.ptr), static_cast<int>(vb.ld), tb,
                      reinterpret_cast<int32_t*>(arena + bufs[in.dst].offset_bytes), bufs[in.dst].cols, in.rows,
                      in.cols, in.k, in.flags & kFlagAccumulate, t_mma_scratch);
          break;
        }
        if (va.alias && vb.alias && mma_streams_long_k(t, in.rows, ta, tb)) {
          const int64_t step = int64_t{pend.k} * dtype_size_bytes(t);
          if (pend.active && pend.dst == in.dst && (in.flags & kFlagAccumulate) && pend.type == t &&
              pend.m == in.rows && pend.n == in.cols && pend.lda == va.ld && pend.ldb == vb.ld &&
              va.ptr == pend.a + step && vb.ptr == pend.b + step) {
            pend.k += in.k;
            break;
          }
          flush();
          pend = PendingMma{true, in.dst, t, va.ptr, vb.ptr, va.ld, vb.ld, in.rows, in.cols, in.k,
                            (in.flags & kFlagAccumulate) != 0};
          break;
        }
        flush();
        mma_tile(bufs[in.a].dtype, va.ptr, static_cast<int>(va.ld), ta, vb.ptr, static_cast<int>(vb.ld), tb,
                 fptr(in.dst), bufs[in.dst].cols, in.rows, in.cols, in.k, in.flags & kFlagAccumulate, t_mma_scratch);
        break;
      }
      case OpCode::kUnary: {
        const auto op = static_cast<UnaryOp>(in.sub);
        const auto [src, lds] = frd(in.a, in.rows, in.cols);
        float* d = fptr(in.dst);
        const int ldd = bufs[in.dst].cols;
        for (int r = 0; r < in.rows; ++r) vec_unary(op, src + r * lds, d + int64_t{r} * ldd, in.cols, in.imm);
        break;
      }
      case OpCode::kBinary: {
        const auto op = static_cast<BinaryOp>(in.sub);
        const auto bc = static_cast<Broadcast>(in.flags);
        if (bufs[in.dst].dtype == DType::kI32) {  // int32 + int32, wrapping (TileProgram::binary)
          const ReadView& va = rd(in.a, in.rows, in.cols);
          const ReadView& vb = rd(in.b, in.rows, in.cols);
          auto* d = reinterpret_cast<int32_t*>(arena + bufs[in.dst].offset_bytes);
          const int ldd = bufs[in.dst].cols;
          for (int r = 0; r < in.rows; ++r) {
            const auto* ar = reinterpret_cast<const int32_t*>(va.ptr) + r * va.ld;
            const auto* br = reinterpret_cast<const int32_t*>(vb.ptr) + r * vb.ld;
            int32_t* dr = d + int64_t{r} * ldd;
            for (int c = 0; c < in.cols; ++c)
              dr[c] = static_cast<int32_t>(static_cast<uint32_t>(ar[c]) + static_cast<uint32_t>(br[c]));
          }
          break;
        }
        const auto [a, lda] = frd(in.a, in.rows, in.cols);
        const auto [b, ldb] = frd(in.b, bc == Broadcast::kCol ? 1 : in.rows, bc == Broadcast::kRow ? 1 : in.cols);
        float* d = fptr(in.dst);
        const int ldd = bufs[in.dst].cols;
        for (int r = 0; r < in.rows; ++r) {
          float* dr = d + int64_t{r} * ldd;
          const float* ar = a + r * lda;
          switch (bc) {
            case Broadcast::kNone: vec_binary(op, ar, b + r * ldb, dr, in.cols); break;
            case Broadcast::kRow: vec_binary_scalar(op, ar, b[r * ldb], dr, in.cols); break;
            case Broadcast::kCol:
            case Broadcast::kCount: vec_binary(op, ar, b, dr, in.cols); break;
          }
        }
        break;
      }
      case OpCode::kReduce: {
        const auto op = static_cast<ReduceOp>(in.sub);
        const auto [src, lds] = frd(in.a, in.rows, in.cols);
        float* d = fptr(in.dst);
        const int ldd = bufs[in.dst].cols;
        if (op == ReduceOp::kArgMax) {  // exact fp32 integers (TileProgram checks the range)
          for (int r = 0; r < in.rows; ++r)
            d[int64_t{r} * ldd] = static_cast<float>(in.k + vec_argmax(src + r * lds, in.cols));
          break;
        }
        for (int r = 0; r < in.rows; ++r) {
          float acc = vec_reduce(op, src + r * lds, in.cols);
          float& out = d[int64_t{r} * ldd];
          if (in.flags & kFlagAccumulate) acc = op == ReduceOp::kSum ? acc + out : std::fmax(acc, out);
          out = acc;
        }
        break;
      }
      case OpCode::kFill: {
        float* d = fptr(in.dst);
        const int ldd = bufs[in.dst].cols;
        if (static_cast<FillOp>(in.sub) == FillOp::kIota) {
          for (int r = 0; r < in.rows; ++r)
            for (int c = 0; c < in.cols; ++c) d[int64_t{r} * ldd + c] = static_cast<float>(in.k + c);
          break;
        }
        for (int r = 0; r < in.rows; ++r) std::fill_n(d + int64_t{r} * ldd, in.cols, in.imm);
        break;
      }
      case OpCode::kCast: {
        const SramBuffer& bd = bufs[in.dst];
        const SramBuffer& bs = bufs[in.a];
        const ReadView& v = rd(in.a, in.rows, in.cols);
        copy_convert(bs.dtype, v.ptr, v.ld, bd.dtype, arena + bd.offset_bytes, bd.cols, in.rows, in.cols);
        break;
      }
      case OpCode::kSync:
      case OpCode::kCount: break;
    }
  }
  flush();
}

// Spins on `done` for up to about `limit_us` microseconds (pause instructions, the clock read every
// 64 rounds); true if it returned true in time. Used where the wait is usually a few microseconds
// (the next kernel of a decode loop, the other thread's last block), so that two threads do not
// pay a futex sleep and wake-up on every one of the hundreds of kernels of a step.
template <class F>
bool spin_until(F&& done, int limit_us) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(limit_us);
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (done()) return true;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#else
      std::this_thread::yield();
#endif
    }
    if (std::chrono::steady_clock::now() >= until) return done();
  }
}

struct FunctionalExecutor::Impl {
  // One run() call. Workers hold it by shared_ptr, so one that wakes up late still sees its own
  // (closed) job, never the next one's counters.
  struct Job {
    const Kernel* k = nullptr;  // used only after a successful claim (it dies when run() returns)
    int64_t grid = 0;
    double sram = 0;
    std::atomic<int64_t> next{0};  // next block to claim; set far beyond the grid when closed
    std::atomic<int64_t> done{0};  // claimed blocks finished (successfully or not)
    std::atomic<bool> failed{false};
    std::atomic<int64_t> turn{0};  // Kernel::accumulates: the block whose additions go next
  };
  static constexpr int64_t kClosed = INT64_MAX / 2;
  static constexpr int kSpinNextJobUs = 50;    // a worker's wait for the next kernel before it sleeps
  static constexpr int kSpinLastBlockUs = 50;  // run()'s wait for the other threads' last blocks
  // Kernels whose arguments span less than this run on the calling thread alone: splitting a few
  // kilobytes of work (a decode step's QK-norms) costs more in hand-offs than it saves, and a helper
  // that the OS preempts while it holds a block stalls the whole kernel (a busy shared host).
  static constexpr double kMinParallelBytes = 64 * 1024;

  int nthreads = 1;
  std::vector<std::thread> workers;
  std::mutex mu;
  std::condition_variable cv_work, cv_done;
  std::shared_ptr<Job> job;             // guarded by mu
  uint64_t generation = 0;              // guarded by mu
  std::atomic<uint64_t> published{0};   // = generation, for spinning without the lock
  bool quit = false;                    // guarded by mu
  std::exception_ptr error;             // guarded by mu

  // Runs blocks of `j` until none is left to claim or one failed; returns how many it ran.
  int64_t work_on(Job& j) {
    // Per-thread program and SRAM arena, kept across kernels: a decode step launches hundreds of
    // kernels, and fresh arenas of several hundred KiB would be mapped and unmapped each time.
    thread_local TileProgram prog;
    thread_local AlignedArena arena;
    thread_local PendingAdds adds;
    int64_t ran = 0;
    while (!j.failed.load(std::memory_order_relaxed)) {
      const int64_t b = j.next.fetch_add(1);
      if (b >= j.grid) break;
      ++ran;
      const bool ordered = j.k->accumulates;
      adds.clear();
      try {
        const Kernel& k = *j.k;
        prog.clear();
        k.build(b, prog);
        validate_program(k, b, prog, j.sram);
        execute_program(k, prog, arena.ensure(prog.sram_bytes()), ordered ? &adds : nullptr);
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu);
        if (!error) error = std::current_exception();
        j.failed = true;
        adds.clear();
      }
      if (ordered) {
        // Blocks are claimed in order, so every earlier block is running or done and will take its
        // turn: add in block order (a failed block passes its turn on without adding).
        while (j.turn.load(std::memory_order_acquire) != b) std::this_thread::yield();
        adds.apply();
        j.turn.store(b + 1, std::memory_order_release);
      }
      j.done.fetch_add(1);
    }
    return ran;
  }

  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      spin_until([&] { return published.load(std::memory_order_acquire) != seen; }, kSpinNextJobUs);
      std::shared_ptr<Job> j;
      {
        std::unique_lock<std::mutex> lk(mu);
        cv_work.wait(lk, [&] { return quit || generation != seen; });
        if (quit) return;
        seen = generation;
        j = job;
      }
      if (work_on(*j) > 0) {
        { std::lock_guard<std::mutex> lk(mu); }  // run() checks `done` under the lock: no lost wake-up
        cv_done.notify_all();
      }
    }
  }
};

int default_host_threads() {
  const char* env = std::getenv("PPU_THREADS");
  const int threads = env ? std::atoi(env) : 0;
  return threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

FunctionalExecutor::FunctionalExecutor(int threads) : impl_(std::make_unique<Impl>()) {
  init_host_isa_from_env();  // a bad PPU_HOST_ISA is reported here, on the caller's thread
  if (threads <= 0) threads = default_host_threads();
  impl_->nthreads = threads;
  for (int i = 1; i < threads; ++i) impl_->workers.emplace_back([this] { impl_->worker_loop(); });
}

FunctionalExecutor::~FunctionalExecutor() {
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->quit = true;
  }
  impl_->cv_work.notify_all();
  for (auto& t : impl_->workers) t.join();
}

int FunctionalExecutor::threads() const { return impl_->nthreads; }

void FunctionalExecutor::run(const Kernel& k, double sram_bytes) {
  for (const auto& a : k.args)
    if (a.data == nullptr && a.numel > 0)
      throw UserError(fmt::format("kernel '{}': argument '{}' has no host data (timing-only device?)", k.name, a.name));
  Impl& s = *impl_;
  auto j = std::make_shared<Impl::Job>();
  j->k = &k;
  j->grid = k.grid;
  j->sram = sram_bytes;
  double arg_bytes = 0;
  for (const auto& a : k.args) arg_bytes += static_cast<double>(a.numel) * dtype_size_bytes(a.dtype);
  const bool helpers = !s.workers.empty() && k.grid > 1 && arg_bytes >= Impl::kMinParallelBytes;
  {
    std::lock_guard<std::mutex> lk(s.mu);
    s.error = nullptr;
    if (helpers) {
      s.job = j;
      ++s.generation;
      s.published.store(s.generation, std::memory_order_release);
    }
  }
  if (helpers) s.cv_work.notify_all();
  s.work_on(*j);
  if (helpers) {
    // Close the job: a worker that has not claimed a block yet will claim none; the blocks claimed
    // before this point are what remains to wait for.
    const int64_t claimed = std::min(j->next.exchange(Impl::kClosed), k.grid);
    auto finished = [&] { return j->done.load() >= claimed; };
    if (!spin_until(finished, Impl::kSpinLastBlockUs)) {
      std::unique_lock<std::mutex> lk(s.mu);
      s.cv_done.wait(lk, finished);
    }
  }
  std::exception_ptr error;
  {
    std::lock_guard<std::mutex> lk(s.mu);
    error = s.error;
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace ppu
