#include "runtime/Device.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "arch/Units.hpp"
#include "report/TraceWriter.hpp"
#include "sim/FunctionalExecutor.hpp"

namespace ppu {

Device::Device(ChipSpec chip, ExecMode mode, int host_threads)
    : chip_(std::move(chip)), mode_(mode), host_threads_(host_threads), timing_(chip_) {
  capacity_ = static_cast<int64_t>(chip_.hbm_bytes());
  streams_.push_back(std::make_unique<Stream>(Stream{0, "default", 0.0}));
}

Device::~Device() = default;

FunctionalExecutor& Device::executor() {
  if (!exec_) exec_ = std::make_unique<FunctionalExecutor>(host_threads_);
  return *exec_;
}

std::optional<Buffer> Device::try_alloc(DType dtype, int64_t numel, const std::string& name) {
  if (numel <= 0) throw UserError(fmt::format("alloc '{}': {} elements requested; must be positive", name, numel));
  if (numel > (capacity_ - in_use_) / dtype_size_bytes(dtype)) return std::nullopt;  // before numel * size can overflow
  const int64_t bytes = numel * dtype_size_bytes(dtype);
  Alloc a;
  a.bytes = bytes;
  a.live = true;
  if (functional()) {
    // Reuse a freed host block of the same size (a decode loop frees and allocates the same
    // activation sizes every step; fresh pages would cost a page fault each).
    auto it = host_pool_.find(bytes);
    if (it != host_pool_.end() && !it->second.empty()) {
      a.host = std::move(it->second.back());
      it->second.pop_back();
      pooled_bytes_ -= bytes;
    } else {
      a.host.reset(new (std::nothrow) unsigned char[static_cast<size_t>(bytes)]);
    }
    if (!a.host)
      throw UserError(fmt::format("alloc '{}': the host cannot hold {} for the functional executor; use timing-only "
                                  "mode for shapes this large",
                                  name, format_quantity(Dimension::kBytes, static_cast<double>(bytes))));
    std::memset(a.host.get(), 0, static_cast<size_t>(bytes));
  }
  Buffer b;
  b.id = static_cast<int64_t>(allocs_.size());
  b.addr = next_addr_;
  b.dtype = dtype;
  b.numel = numel;
  b.bytes = bytes;
  b.data = a.host.get();
  b.name = name;
  next_addr_ += static_cast<uint64_t>((bytes + 255) / 256 * 256);
  allocs_.push_back(std::move(a));
  in_use_ += bytes;
  peak_ = std::max(peak_, in_use_);
  return b;
}

Buffer Device::alloc(DType dtype, int64_t numel, const std::string& name) {
  auto b = try_alloc(dtype, numel, name);
  if (!b) {
    const int64_t bytes = numel > INT64_MAX / dtype_size_bytes(dtype) ? INT64_MAX : numel * dtype_size_bytes(dtype);
    throw DeviceOutOfMemory(
        fmt::format("{} is out of memory: '{}' needs {} but only {} of {} is free",
                    chip_.name, name, format_quantity(Dimension::kBytes, static_cast<double>(bytes)),
                    format_quantity(Dimension::kBytes, static_cast<double>(capacity_ - in_use_)),
                    format_quantity(Dimension::kBytes, static_cast<double>(capacity_))),
        bytes, in_use_, capacity_);
  }
  return *b;
}

void Device::check_buffer(const Buffer& b, const char* what) const {
  if (b.id < 0 || b.id >= static_cast<int64_t>(allocs_.size()) || !allocs_[static_cast<size_t>(b.id)].live)
    throw UserError(fmt::format("{}: buffer '{}' is not a live allocation of this device", what, b.name));
}

void Device::free(Buffer& b) {
  check_buffer(b, "free");
  if (b.is_view) throw UserError(fmt::format("free: '{}' is a view; free the buffer it was made from", b.name));
  release(b);
}

DeviceBuffer Device::alloc_owned(DType dtype, int64_t numel, const std::string& name) {
  return DeviceBuffer(*this, dtype, numel, name);
}

void Device::release(Buffer& b) noexcept {
  if (b.id < 0 || b.id >= static_cast<int64_t>(allocs_.size()) || !allocs_[static_cast<size_t>(b.id)].live) return;
  Alloc& a = allocs_[static_cast<size_t>(b.id)];
  in_use_ -= a.bytes;
  a.live = false;
  if (a.host && a.bytes <= kHostPoolMaxBlock && pooled_bytes_ + a.bytes <= kHostPoolMaxTotal) {
    pooled_bytes_ += a.bytes;
    host_pool_[a.bytes].push_back(std::move(a.host));
  }
  a.host.reset();
  b = Buffer{};
}

Buffer Buffer::view(int64_t offset, int64_t count) const {
  if (offset < 0 || count <= 0 || offset > numel - count)
    throw UserError(fmt::format("view of '{}': elements [{}, {}) are not inside its {} elements", name, offset,
                                offset + count, numel));
  Buffer v = *this;
  v.is_view = true;
  const int64_t es = dtype_size_bytes(dtype);
  v.addr = addr + static_cast<uint64_t>(offset * es);
  v.numel = count;
  v.bytes = count * es;
  v.data = data ? static_cast<unsigned char*>(data) + offset * es : nullptr;
  return v;
}

Stream& Device::create_stream(const std::string& name) {
  streams_.push_back(std::make_unique<Stream>(Stream{static_cast<int>(streams_.size()), name, 0.0}));
  return *streams_.back();
}

void Device::wait(Stream& s, const Event& e) { s.ready_s = std::max(s.ready_s, e.time_s); }

double Device::copy_time(double bytes) const {
  return chip_.host_link_latency.value + bytes / chip_.host_link_bandwidth.value;
}

void Device::copy_to_device_timed(const Buffer& dst, Stream* sp) {
  check_buffer(dst, "copy to device");
  Stream& s = pick(sp);
  const double start = std::max(s.ready_s, h2d_free_s_);
  const double end = start + copy_time(static_cast<double>(dst.bytes));
  h2d_free_s_ = s.ready_s = end;
  records_.push_back({OpKind::kCopyH2D, "h2d " + dst.name, s.id, start, end, static_cast<double>(dst.bytes), nullptr});
}

void Device::copy_to_device(const Buffer& dst, const void* src, Stream* s) {
  check_buffer(dst, "copy to device");
  if (dst.data) std::memcpy(dst.data, src, static_cast<size_t>(dst.bytes));
  copy_to_device_timed(dst, s);
}

void Device::copy_to_host(void* dst, const Buffer& src, Stream* sp) {
  check_buffer(src, "copy to host");
  if (!src.data) throw UserError(fmt::format("copy to host: '{}' has no data on a timing-only device", src.name));
  std::memcpy(dst, src.data, static_cast<size_t>(src.bytes));
  record_d2h(src, sp);
}

void Device::copy_to_host_timed(const Buffer& src, Stream* sp) {
  check_buffer(src, "copy to host");
  record_d2h(src, sp);
}

void Device::record_d2h(const Buffer& src, Stream* sp) {
  Stream& s = pick(sp);
  const double start = std::max(s.ready_s, d2h_free_s_);
  const double end = start + copy_time(static_cast<double>(src.bytes));
  d2h_free_s_ = s.ready_s = end;
  records_.push_back({OpKind::kCopyD2H, "d2h " + src.name, s.id, start, end, static_cast<double>(src.bytes), nullptr});
}

void Device::upload(const Buffer& dst, const std::vector<float>& values, Stream* s) {
  check_buffer(dst, "upload");
  if (static_cast<int64_t>(values.size()) != dst.numel)
    throw UserError(fmt::format("upload to '{}': {} values given for a buffer of {} elements", dst.name, values.size(),
                                dst.numel));
  if (!dst.data) {
    copy_to_device_timed(dst, s);
    return;
  }
  std::vector<unsigned char> tmp(static_cast<size_t>(dst.bytes));
  convert_from_f32(dst.dtype, values.data(), tmp.data(), dst.numel);
  copy_to_device(dst, tmp.data(), s);
}

std::vector<float> Device::download(const Buffer& src, Stream* s) {
  check_buffer(src, "download");
  if (!src.data) throw UserError(fmt::format("download: '{}' has no data on a timing-only device", src.name));
  std::vector<float> out(static_cast<size_t>(src.numel));
  convert_to_f32(src.dtype, src.data, out.data(), src.numel);  // straight from device memory
  record_d2h(src, s);
  return out;
}

void Device::begin_graph() {
  if (graph_open_) throw UserError(fmt::format("begin_graph on {}: a captured graph is already open", chip_.name));
  graph_open_ = true;
  graph_kernels_ = 0;
}

void Device::end_graph() {
  if (!graph_open_) throw UserError(fmt::format("end_graph on {}: no captured graph is open", chip_.name));
  graph_open_ = false;
}

double Device::graph_launch_saving_s() const {
  return graph_open_ && graph_kernels_ > 0 ? chip_.launch_latency.value - chip_.graph_node_latency_value() : 0.0;
}

KernelTiming Device::launch(const Kernel& k, Stream* sp) {
  if (k.grid <= 0) throw UserError(fmt::format("kernel '{}': grid of {} blocks; must be positive", k.name, k.grid));
  if (!k.build) throw UserError(fmt::format("kernel '{}' has no program builder", k.name));
  KernelTiming t = timing_.run(k, trace_limit_);
  // Inside a captured graph the engine's launch_latency (every kernel starts with it) gives way to
  // the graph's per-node cost after the first kernel.
  const double saving = graph_launch_saving_s();
  t.time_s -= saving;
  t.launch_s -= saving;
  if (graph_open_) ++graph_kernels_;
  if (functional()) executor().run(k, chip_.sram_bytes());
  Stream& s = pick(sp);
  const double start = std::max(s.ready_s, compute_free_s_);
  const double end = start + t.time_s;
  compute_free_s_ = s.ready_s = end;
  auto shared = std::make_shared<KernelTiming>(t);
  records_.push_back({OpKind::kKernel, k.name, s.id, start, end, t.hbm_read_bytes + t.hbm_write_bytes, shared});
  if (observer_) observer_(k, t);
  return t;
}

void Device::record_op(OpKind kind, const std::string& name, Stream& s, double start_s, double end_s, double bytes) {
  PPU_CHECK(start_s >= s.ready_s && end_s >= start_s, "an external op must start after its stream is ready");
  s.ready_s = end_s;
  records_.push_back({kind, name, s.id, start_s, end_s, bytes, nullptr});
}

double Device::synchronize() const {
  double t = 0;
  for (const auto& s : streams_) t = std::max(t, s->ready_s);
  return t;
}

void Device::write_trace(TraceWriter& w, int pid_base, const std::string& label) const {
  const int kStreamsPid = pid_base, kCoresPid = pid_base + 1, kMemPid = pid_base + 2;
  const std::string who = label.empty() ? chip_.name : fmt::format("{} ({})", label, chip_.name);
  w.name_process(kStreamsPid, fmt::format("{}: streams and copy engines", who));
  for (const auto& s : streams_) w.name_thread(kStreamsPid, s->id, fmt::format("stream {} ({})", s->id, s->name));
  w.name_thread(kStreamsPid, 1000, "host link: host to device");
  w.name_thread(kStreamsPid, 1001, "host link: device to host");
  w.name_thread(kStreamsPid, 1002, "collectives (chip-to-chip links)");
  bool any_detail = false;
  for (const auto& r : records_) {
    nlohmann::json args = {{"bytes", r.bytes}};
    if (r.timing) {
      args["blocks"] = r.timing->blocks;
      args["waves"] = r.timing->waves;
      args["bound"] = r.timing->bound(chip_);
      args["matrix_utilization"] = r.timing->matrix_utilization(chip_);
      args["hbm_utilization"] = r.timing->hbm_utilization(chip_);
    }
    w.slice(kStreamsPid, r.stream, r.name, r.start_s, r.end_s - r.start_s, args);
    if (r.kind != OpKind::kKernel) {
      const int lane = r.kind == OpKind::kCopyH2D ? 1000 : r.kind == OpKind::kCopyD2H ? 1001 : 1002;
      w.slice(kStreamsPid, lane, r.name, r.start_s, r.end_s - r.start_s, args);
    }
    if (!r.timing || r.timing->trace.empty()) continue;
    any_detail = true;
    // Per-core, per-unit lanes, and an HBM/L2 bandwidth counter from the DMA events.
    std::vector<bool> named(static_cast<size_t>(chip_.num_cores()) * 4, false);
    const int nbins = 200;
    std::vector<double> hbm(nbins, 0.0), l2(nbins, 0.0);
    const double span = std::max(r.timing->time_s, 1e-12);
    for (const TraceEvent& e : r.timing->trace) {
      const int tid = e.core * 4 + static_cast<int>(e.unit);
      if (!named[static_cast<size_t>(tid)]) {
        named[static_cast<size_t>(tid)] = true;
        w.name_thread(kCoresPid, tid, fmt::format("core {} {}", e.core, unit_name(e.unit)));
      }
      nlohmann::json a = {{"block", e.block}};
      if (e.bytes > 0) {
        a["bytes"] = e.bytes;
        a["l2_hit"] = e.l2_hit;
        // Spread the transfer's bytes over the bins it spans.
        const double dur = std::max(e.end_s - e.start_s, 1e-15);
        auto& bins = e.l2_hit ? l2 : hbm;
        const int b0 = std::clamp(static_cast<int>(e.start_s / span * nbins), 0, nbins - 1);
        const int b1 = std::clamp(static_cast<int>(e.end_s / span * nbins), 0, nbins - 1);
        for (int b = b0; b <= b1; ++b) {
          const double lo = std::max(e.start_s, b * span / nbins), hi = std::min(e.end_s, (b + 1) * span / nbins);
          if (hi > lo) bins[static_cast<size_t>(b)] += e.bytes * (hi - lo) / dur;
        }
      }
      w.slice(kCoresPid, tid, std::string(opcode_name(e.op)), r.start_s + e.start_s, e.end_s - e.start_s, std::move(a));
    }
    for (int b = 0; b < nbins; ++b) {
      const double t = r.start_s + b * span / nbins;
      w.counter(kMemPid, "HBM GB/s (DMA from HBM or to HBM)", t, hbm[static_cast<size_t>(b)] / (span / nbins) / 1e9);
      w.counter(kMemPid, "L2 hit GB/s", t, l2[static_cast<size_t>(b)] / (span / nbins) / 1e9);
    }
  }
  if (any_detail) {
    w.name_process(kCoresPid, fmt::format("{}: cores (units per core)", who));
    w.name_process(kMemPid, fmt::format("{}: memory", who));
  }
}

}  // namespace ppu
