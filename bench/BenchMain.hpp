// The `main` of a bench whose setup can meet a user's mistake (PPU_HOST_ISA naming a path this CPU
// lacks, say): the UserError is reported as `error: ...` with exit status 2, not an abort.
//
//   int run(int argc, char** argv) { ... }
//   int main(int argc, char** argv) { return ppu::bench::main_reporting_user_errors(run, argc, argv); }
#pragma once

#include <iostream>

#include "arch/Error.hpp"

namespace ppu::bench {

inline int main_reporting_user_errors(int (*run)(int, char**), int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UserError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
}

}  // namespace ppu::bench
