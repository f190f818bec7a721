// Context: what every nn module's forward needs besides its inputs - the device, this rank's place
// in the split model (ParallelGroups), the activation and matrix-input dtypes, the simulated time
// per op kind, and the capture sink of timing-only forwards (cluster/Workload reads it).
//
//   nn::Context ctx(dev, groups, DType::kBF16, DType::kBF16);
//   DeviceBuffer h = ctx.alloc(T * hidden, "h", DType::kBF16);   // freed when h goes out of scope
//   ctx.op("norm", [&] { kernels::rms_norm(ctx.dev(), x, w, h, T, hidden, eps); });   // timed as "norm"
//   ctx.tp_all_reduce(partial);   // over the TP group, or logged when capturing
//
// Op kinds are the labels reports group time by ("attention", "mlp gemm", "tp all-reduce", ...).
// Not thread-safe: one host thread drives a Context (one per rank).
#pragma once

#include <map>
#include <string>

#include "nn/ParallelGroups.hpp"
#include "runtime/Device.hpp"

namespace ppu::nn {

class Context {
 public:
  Context(Device& dev, ParallelGroups groups, DType act_dtype, DType matmul_dtype)
      : dev_(dev), groups_(groups), act_dtype_(act_dtype), matmul_dtype_(matmul_dtype) {}

  Device& dev() { return dev_; }
  const ParallelGroups& groups() const { return groups_; }
  const ParallelDegrees& degrees() const { return groups_.degrees; }
  bool functional() const { return dev_.functional(); }
  bool capturing() const { return groups_.capture != nullptr; }
  DType act_dtype() const { return act_dtype_; }        // activations (bf16 or fp16)
  DType matmul_dtype() const { return matmul_dtype_; }  // what feeds the matrix unit

  // Runs f; the simulated time of everything it put on the device is added to op kind `kind`, and
  // in capture mode each kernel it launches is logged with that kind.
  template <class F>
  void op(const std::string& op_kind, F&& f) {
    const std::string kind = kind_suffix_.empty() ? op_kind : op_kind + kind_suffix_;
    const size_t before = dev_.records().size();
    if (groups_.capture) {
      dev_.set_launch_observer([this, &kind](const Kernel& k, const KernelTiming& t) {
        groups_.capture->launches.push_back(CapturedLaunch{kind, k, t.time_s});
      });
    }
    struct Unobserve {  // the observer never outlives this call, however f leaves
      Device& d;
      bool on;
      ~Unobserve() {
        if (on) d.set_launch_observer({});
      }
    } unobserve{dev_, groups_.capture != nullptr};
    f();
    double t = 0;
    for (size_t i = before; i < dev_.records().size(); ++i) t += dev_.records()[i].end_s - dev_.records()[i].start_s;
    op_times_[kind] += t;
  }

  // An activation buffer, freed when the returned DeviceBuffer goes out of scope (DeviceOutOfMemory
  // if it does not fit).
  DeviceBuffer alloc(int64_t numel, const std::string& name, DType dtype) { return dev_.alloc_owned(dtype, numel, name); }

  // Capture mode: logs the collective (kind, group "tp"/"ep", bytes per rank as in
  // CapturedCollective) and returns true; otherwise returns false and the caller runs it.
  bool log_collective(const std::string& kind, const char* group, ccl::Collective c, double bytes);
  // Sums `b` in place over the TP group ("tp all-reduce"); nothing with TP 1.
  void tp_all_reduce(const Buffer& b);

  // While set, every op kind gets this suffix (nn::Graph::checkpoint's recomputed forward runs
  // under " recompute": "linear recompute"); empty: none.
  void set_kind_suffix(std::string s) { kind_suffix_ = std::move(s); }
  const std::string& kind_suffix() const { return kind_suffix_; }

  // Simulated seconds per op kind since construction.
  const std::map<std::string, double>& op_times() const { return op_times_; }

 private:
  Device& dev_;
  ParallelGroups groups_;
  DType act_dtype_, matmul_dtype_;
  std::map<std::string, double> op_times_;
  std::string kind_suffix_;
};

}  // namespace ppu::nn
