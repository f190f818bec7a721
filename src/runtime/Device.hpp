// Runtime: a simulated device made from a chip preset - memory with capacity accounting, streams and
// events on the simulated clock, host<->device copies over the host link, kernel launch, and a
// record of every operation for the trace.
//
//   Device dev(load_chip("zhenwu-810e"));                 // functional: real numbers + timing
//   Buffer a = dev.alloc(DType::kBF16, 4096 * 4096, "a");  // throws DeviceOutOfMemory past HBM
//   dev.upload(a, host_floats);                            // timed over the host link
//   KernelTiming t = dev.launch(kernel);                   // runs the numbers and the clock
//   { GraphScope g(dev); dev.launch(k1); dev.launch(k2); } // one captured graph: k2 pays a graph node's launch
//   dev.synchronize();                                     // simulated seconds, all streams done
//
// In ExecMode::kTimingOnly nothing is allocated on the host: buffers only count against HBM
// capacity, kernels only run in the timing engine, so shapes far beyond this machine's memory work.
//
// Scheduling on the simulated clock: kernels run one at a time on the compute engine in the order
// they are launched (respecting stream order and event waits); host-to-device and device-to-host
// copies each have their own engine, so copies overlap kernels of other streams.
//
// Not thread-safe: one host thread drives a Device.
#pragma once

#include <cstdint>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "arch/ChipSpec.hpp"
#include "arch/Error.hpp"
#include "isa/Kernel.hpp"
#include "sim/TimingEngine.hpp"

namespace ppu {

class FunctionalExecutor;
class TraceWriter;
class DeviceBuffer;

enum class ExecMode : uint8_t { kFunctional, kTimingOnly };

// A simulated event: the device ran out of memory. Carries what was asked and what was free.
class DeviceOutOfMemory : public SimEvent {
 public:
  DeviceOutOfMemory(const std::string& msg, int64_t requested, int64_t in_use, int64_t capacity)
      : SimEvent(msg), requested_bytes(requested), in_use_bytes(in_use), capacity_bytes(capacity) {}
  int64_t requested_bytes, in_use_bytes, capacity_bytes;
};

// A device allocation. Plain handle; the Device owns the memory. `data` is null in timing-only mode.
struct Buffer {
  int64_t id = -1;
  uint64_t addr = 0;
  DType dtype = DType::kF32;
  int64_t numel = 0;
  int64_t bytes = 0;
  void* data = nullptr;
  std::string name;
  bool is_view = false;  // made by view(): not freeable by itself
  bool valid() const { return id >= 0; }
  // A kernel argument addressing this buffer.
  TensorArg arg() const { return TensorArg{dtype, numel, data, addr, name}; }
  // Elements [offset, offset + count) of this buffer as a buffer of its own (same allocation; e.g.
  // the rows of a KV cache a step writes). Throws UserError if the range does not fit.
  Buffer view(int64_t offset, int64_t count) const;
};

struct Stream {
  int id = 0;
  std::string name;
  double ready_s = 0;  // simulated time when everything queued on it is done
};

struct Event {
  double time_s = 0;
};

enum class OpKind : uint8_t { kKernel, kCopyH2D, kCopyD2H, kCollective, kCount };
inline constexpr const char* kOpKindNames[] = {"kernel", "copy_h2d", "copy_d2h", "collective"};
static_assert(std::size(kOpKindNames) == static_cast<size_t>(OpKind::kCount));

struct OpRecord {
  OpKind kind = OpKind::kKernel;
  std::string name;
  int stream = 0;
  double start_s = 0, end_s = 0;
  double bytes = 0;
  std::shared_ptr<KernelTiming> timing;  // kernels only
};

class Device {
 public:
  explicit Device(ChipSpec chip, ExecMode mode = ExecMode::kFunctional, int host_threads = 0);
  ~Device();
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  const ChipSpec& chip() const { return chip_; }
  ExecMode mode() const { return mode_; }
  bool functional() const { return mode_ == ExecMode::kFunctional; }

  // --- memory. Sizes are in elements of `dtype`; numel must be positive (UserError otherwise).
  // Returns nullopt (and leaves the device unchanged) if the chip's HBM cannot hold it.
  std::optional<Buffer> try_alloc(DType dtype, int64_t numel, const std::string& name);
  // As try_alloc, but throws DeviceOutOfMemory naming the request, the use and the capacity.
  Buffer alloc(DType dtype, int64_t numel, const std::string& name);
  // As alloc, owned: freed when the returned DeviceBuffer goes out of scope.
  DeviceBuffer alloc_owned(DType dtype, int64_t numel, const std::string& name);
  void free(Buffer& b);
  int64_t bytes_in_use() const { return in_use_; }
  int64_t peak_bytes_in_use() const { return peak_; }
  // Starts a new peak from what is in use now (to measure one phase's high-water mark).
  void reset_peak_bytes() { peak_ = in_use_; }
  int64_t capacity_bytes() const { return capacity_; }

  // --- streams and events
  Stream& default_stream() { return *streams_.front(); }
  Stream& create_stream(const std::string& name);
  Event record(const Stream& s) const { return Event{s.ready_s}; }
  void wait(Stream& s, const Event& e);

  // --- host <-> device copies (timed over the host link). Host data is in the buffer's dtype.
  void copy_to_device(const Buffer& dst, const void* src, Stream* s = nullptr);
  void copy_to_host(void* dst, const Buffer& src, Stream* s = nullptr);
  // Convenience: converts fp32 host values to/from the buffer's dtype (RNE). Size must match numel.
  void upload(const Buffer& dst, const std::vector<float>& values, Stream* s = nullptr);
  std::vector<float> download(const Buffer& src, Stream* s = nullptr);
  // Timing-only copies (no data) for timing-only mode workflows.
  void copy_to_device_timed(const Buffer& dst, Stream* s = nullptr);
  void copy_to_host_timed(const Buffer& src, Stream* s = nullptr);

  // --- kernels
  // Runs `k` (functional mode: real numbers on host threads) and times it; returns its timing.
  KernelTiming launch(const Kernel& k, Stream* s = nullptr);
  // --- captured graphs (CUDA graphs): the kernels launched between begin_graph() and end_graph() run
  // as one graph launch, as serving engines replay a captured decode step. The graph's first kernel
  // pays the chip's launch_latency, each later one graph_node_latency instead
  // (ChipSpec::graph_node_latency_value()); everything else - numbers, streams, copies, collectives'
  // own costs - is unchanged. begin_graph throws UserError if a graph is open, end_graph if none is.
  void begin_graph();
  void end_graph();
  bool in_graph() const { return graph_open_; }
  // Seconds a kernel launched now saves against a plain launch: launch_latency - graph_node_latency
  // after a graph's first kernel, else 0 (collectives launched inside the graph save the same).
  double graph_launch_saving_s() const;
  // Called after every launch with the kernel and its timing (empty function: none), e.g. to collect
  // the kernels of a forward pass and derive other work from them.
  using LaunchObserver = std::function<void(const Kernel&, const KernelTiming&)>;
  void set_launch_observer(LaunchObserver f) { observer_ = std::move(f); }
  // Kernel timings shared with other devices of this chip (sim/TimingEngine's TimingCache).
  void share_timing_cache(std::shared_ptr<TimingCache> cache) { timing_.share_cache(std::move(cache)); }
  // Per-instruction trace events kept per kernel (0 = none; the default).
  void set_kernel_trace_limit(size_t n) { trace_limit_ = n; }

  // Records an operation that ran outside this device's engines (a collective across devices, see
  // ccl/Communicator): it occupies stream `s` from `start_s` (>= s.ready_s) to `end_s` and advances
  // the stream; it does not occupy the compute engine, so kernels of other streams overlap it.
  void record_op(OpKind kind, const std::string& name, Stream& s, double start_s, double end_s, double bytes);

  // Simulated time when every stream has finished.
  double synchronize() const;

  const std::vector<OpRecord>& records() const { return records_; }
  // Writes the records (and any per-instruction kernel events) as a Perfetto trace, as processes
  // pid_base .. pid_base + 2 whose names start with `label` (several devices in one trace).
  void write_trace(TraceWriter& w, int pid_base = 1, const std::string& label = "") const;

  FunctionalExecutor& executor();

 private:
  friend class DeviceBuffer;
  Stream& pick(Stream* s) { return s ? *s : default_stream(); }
  void check_buffer(const Buffer& b, const char* what) const;
  // Frees a valid, non-view buffer of this device (DeviceBuffer's path: no checks, no throw).
  void release(Buffer& b) noexcept;
  double copy_time(double bytes) const;
  void record_d2h(const Buffer& src, Stream* s);  // times and records a device-to-host copy

  ChipSpec chip_;
  ExecMode mode_;
  int host_threads_;
  TimingEngine timing_;
  std::unique_ptr<FunctionalExecutor> exec_;
  std::vector<std::unique_ptr<Stream>> streams_;
  struct Alloc {
    int64_t bytes = 0;
    std::unique_ptr<unsigned char[]> host;
    bool live = false;
  };
  std::vector<Alloc> allocs_;
  // Freed host blocks kept for reuse by size (functional mode), bounded; device accounting is
  // unaffected (a freed buffer's bytes are free on the simulated chip at once).
  static constexpr int64_t kHostPoolMaxBlock = int64_t{64} << 20;
  static constexpr int64_t kHostPoolMaxTotal = int64_t{512} << 20;
  std::map<int64_t, std::vector<std::unique_ptr<unsigned char[]>>> host_pool_;
  int64_t pooled_bytes_ = 0;
  int64_t in_use_ = 0, peak_ = 0, capacity_ = 0;
  uint64_t next_addr_ = 0x100000;
  double compute_free_s_ = 0, h2d_free_s_ = 0, d2h_free_s_ = 0;
  size_t trace_limit_ = 0;
  bool graph_open_ = false;
  int64_t graph_kernels_ = 0;  // kernels launched in the open graph
  std::vector<OpRecord> records_;
  LaunchObserver observer_;
};

// A captured graph for the lifetime of the scope (nothing when `enabled` is false): begin_graph() on
// construction, end_graph() on destruction, however the scope is left.
//
//   { GraphScope g(dev); model.forward_sampled(feed, sampler); }   // one decode step, one graph launch
class GraphScope {
 public:
  explicit GraphScope(Device& dev, bool enabled = true) : dev_(enabled ? &dev : nullptr) {
    if (dev_) dev_->begin_graph();
  }
  ~GraphScope() {
    if (dev_ && dev_->in_graph()) dev_->end_graph();
  }
  GraphScope(const GraphScope&) = delete;
  GraphScope& operator=(const GraphScope&) = delete;

 private:
  Device* dev_;
};

// An owning device allocation: the memory is freed when the DeviceBuffer is destroyed, reset or
// assigned over, so an exception thrown between allocations (a simulated out-of-memory halfway
// through a forward pass) leaves the device's accounting exact. Move-only; converts to the plain
// `const Buffer&` handle that kernels and copies take. The Device must outlive it.
//
//   DeviceBuffer x = dev.alloc_owned(DType::kF32, 4096, "x");   // DeviceOutOfMemory past HBM
//   kernels::copy(dev, x, y);                                   // used as a Buffer
//                                                               // freed at the end of the scope
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Device& dev, DType dtype, int64_t numel, const std::string& name)
      : dev_(&dev), buf_(dev.alloc(dtype, numel, name)) {}
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : dev_(o.dev_), buf_(std::move(o.buf_)) { o.release(); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      dev_ = o.dev_;
      buf_ = std::move(o.buf_);
      o.release();
    }
    return *this;
  }

  bool valid() const { return buf_.valid(); }
  const Buffer& get() const { return buf_; }
  operator const Buffer&() const { return buf_; }  // NOLINT: used wherever a Buffer handle is taken
  const Buffer* operator->() const { return &buf_; }
  Buffer view(int64_t offset, int64_t count) const { return buf_.view(offset, count); }
  // Frees the memory now (no-op when empty).
  void reset() noexcept {
    if (dev_ && buf_.valid()) dev_->release(buf_);
    release();
  }

 private:
  void release() noexcept {
    dev_ = nullptr;
    buf_ = Buffer{};
  }
  Device* dev_ = nullptr;
  Buffer buf_;
};

}  // namespace ppu
