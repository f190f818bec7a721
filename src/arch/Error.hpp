// Error kinds used across OpenPPU (CONTRIBUTING.md, "Errors"):
//
//  * UserError   - a mistake in what the user asked for or supplied (bad preset file, unknown chip,
//                  zero-sized GEMM, a kernel that does not fit SRAM). The message names the offending
//                  file/field/value and what would be valid. Caught by the CLI and printed.
//  * SimEvent    - something that happened *inside* the simulation (the simulated chip ran out of
//                  HBM). A result the caller can handle; derived types carry the details.
//  * bugs of ours are asserts (PPU_CHECK) that abort with context.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace ppu {

class UserError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class SimEvent : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void internal_failure(const char* cond, const char* file, int line, const std::string& msg) {
  std::fprintf(stderr, "internal error (a bug in OpenPPU): %s at %s:%d: %s\n", cond, file, line, msg.c_str());
  std::abort();
}

}  // namespace ppu

// Invariant of ours (not a user error): aborts with the condition, location and message.
#define PPU_CHECK(cond, msg)                                               \
  do {                                                                     \
    if (!(cond)) ::ppu::internal_failure(#cond, __FILE__, __LINE__, (msg)); \
  } while (0)
