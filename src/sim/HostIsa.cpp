#include "sim/HostIsa.hpp"

#include <fmt/format.h>
#include <hwy/targets.h>

#include <atomic>
#include <cctype>
#include <cstdlib>
#include <mutex>

#include "arch/Error.hpp"

namespace ppu {

namespace detail {
int64_t portable_target();  // sim/MmaPortable.cpp: the Highway target that dispatch chose (HWY_TARGET)
}

namespace {

// One selectable path: Highway targets wider than `target` are disabled (0: none), and the bf16
// matrix micro-kernels are allowed or not.
struct Path {
  std::string name;
  int64_t target;
  bool bf16;
};

// Our name for a Highway target: its own name in lower case, with "avx3" spelt "avx512" (what the
// CPU manuals and users call it) and Highway's portable fallbacks (EMU128, SCALAR) called "scalar".
std::string target_name(int64_t t) {
  if (t == HWY_EMU128 || t == HWY_SCALAR) return "scalar";
  std::string s = hwy::TargetName(t);
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (s.rfind("avx3", 0) == 0) s = "avx512" + s.substr(4);
  return s;
}

bool cpu_has_avx512bf16() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

struct State {
  std::mutex mu;
  std::vector<Path> paths;       // compiled, widest first
  std::vector<bool> supported;   // per path
  std::string requested = "auto";
  std::atomic<bool> bf16{false};

  State() {
    // The CPU's own targets, read before anything is disabled.
    const int64_t cpu = hwy::SupportedTargets() & HWY_TARGETS;
    const bool cpu_bf16 = cpu_has_avx512bf16();
    paths.push_back({"auto", 0, true});
    supported.push_back(true);
#if defined(__x86_64__) || defined(__i386__)
    paths.push_back({"avx512bf16", 0, true});
    supported.push_back(cpu_bf16 && (cpu & HWY_AVX3) != 0);
#endif
    for (int64_t rest = HWY_TARGETS; rest != 0; rest &= rest - 1) {
      const int64_t t = rest & -rest;  // lowest bit first: widest first
      paths.push_back({target_name(t), t, false});
      supported.push_back((cpu & t) != 0);
    }
    bf16 = cpu_bf16;
  }

  std::string list(bool only_supported) const {
    std::string s;
    for (size_t i = 0; i < paths.size(); ++i)
      if (!only_supported || supported[i]) s += (s.empty() ? "" : ", ") + paths[i].name;
    return s;
  }

  void apply(std::string_view name, const char* what) {
    std::lock_guard<std::mutex> lock(mu);
    for (size_t i = 0; i < paths.size(); ++i) {
      if (paths[i].name != name) continue;
      if (!supported[i])
        throw UserError(fmt::format("{}{}: this CPU cannot run that host SIMD path; this CPU supports: {} (this "
                                    "binary has: {})",
                                    what, name, list(true), list(false)));
      const Path& p = paths[i];
      // Highway numbers its targets so that a lower bit is a wider target of the same architecture.
      hwy::DisableTargets(p.target == 0 ? 0 : p.target - 1);
      bf16 = p.bf16 && cpu_has_avx512bf16();
      requested = p.name;
      return;
    }
    throw UserError(fmt::format("{}{}: unknown host SIMD path; this binary has: {}; this CPU supports: {}", what, name,
                                list(false), list(true)));
  }
};

State& state() {
  static State s;
  return s;
}

}  // namespace

std::vector<std::string> host_isa_compiled() {
  std::vector<std::string> v;
  for (const Path& p : state().paths) v.push_back(p.name);
  return v;
}

std::vector<std::string> host_isa_supported() {
  std::vector<std::string> v;
  const State& s = state();
  for (size_t i = 0; i < s.paths.size(); ++i)
    if (s.supported[i]) v.push_back(s.paths[i].name);
  return v;
}

void init_host_isa_from_env() {
  // A throwing initialiser leaves the static uninitialised, so every later call reports it again.
  static const bool done = [] {
    const char* env = std::getenv("PPU_HOST_ISA");
    if (env && *env) state().apply(env, "PPU_HOST_ISA=");
    return true;
  }();
  (void)done;
}

void set_host_isa(std::string_view name) {
  init_host_isa_from_env();
  state().apply(name, "host SIMD path ");
}

std::string host_isa_requested() {
  init_host_isa_from_env();
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.requested;
}

bool host_isa_allows_avx512bf16() {
  init_host_isa_from_env();
  return state().bf16.load(std::memory_order_relaxed);
}

std::string host_isa_active() {
  if (host_isa_allows_avx512bf16()) return "avx512bf16";
  return target_name(detail::portable_target());
}

}  // namespace ppu
