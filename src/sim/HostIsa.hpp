// Which SIMD path the host kernels of the functional executor use (the matrix unit in sim/Mma, the
// vector unit in sim/VectorOps), and the run-time switch that restricts it.
//
// By default every kernel takes the widest path this CPU has: Highway's dynamic dispatch picks among
// the targets compiled into the binary (x86: AVX-512, AVX2, SSE4, SSSE3 and a portable C++ fallback;
// Arm: SVE/SVE2/NEON), and bf16 matrix products use the AVX512-BF16 micro-kernels where the CPU has
// them. The environment variable PPU_HOST_ISA (or set_host_isa) names the widest path allowed, so
// that the narrower paths can be measured and tested on any machine:
//
//   PPU_HOST_ISA=avx2 ppu ...      # AVX2+FMA kernels even on an AVX-512 CPU
//   PPU_HOST_ISA=scalar ctest ...  # the portable C++ fallback (what CI runs the kernel tests with)
//
// Names: "auto" (the default: the widest), "avx512bf16", "avx512", "avx2", "sse4", "ssse3" on x86;
// "sve2", "sve", "neon" (and Highway's fixed-width SVE variants) on Arm; "scalar" everywhere.
// Results of the matrix unit's blocked path do not depend on the path (see sim/Mma.hpp); vector-unit
// sums and the decode dot products may differ in the last bits between paths of different width.
// Not thread-safe: choose the path before kernels run (the executor reads PPU_HOST_ISA when it is
// constructed, and every kernel entry point on its first call).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace ppu {

// Names of the paths compiled into this binary, widest first, "auto" first of all.
std::vector<std::string> host_isa_compiled();
// Those of host_isa_compiled() that this CPU can run.
std::vector<std::string> host_isa_supported();

// Restricts the host kernels to `name` and narrower paths, process-wide. Throws UserError naming
// the value, the paths this binary has and those this CPU supports, if `name` is unknown or this
// CPU cannot run it.
void set_host_isa(std::string_view name);

// Applies PPU_HOST_ISA once per process (later calls do nothing; unset or empty means "auto").
// Throws UserError as set_host_isa does. Called by every kernel entry point and the executor.
void init_host_isa_from_env();

// The name last requested ("auto" unless PPU_HOST_ISA or set_host_isa said otherwise).
std::string host_isa_requested();
// The path the kernels take now: "avx512bf16" where the bf16 matrix micro-kernels are in use, else
// the name of the Highway target that dispatch chose (e.g. "avx2").
std::string host_isa_active();

// True if bf16 matrix products may use the AVX512-BF16 micro-kernels (the CPU has them and the
// switch allows them).
bool host_isa_allows_avx512bf16();

}  // namespace ppu
