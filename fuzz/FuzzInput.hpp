// What every harness in fuzz/ shares: the fuzz input as text, and the one rule for what a finding is.
//
//   extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
//     return fuzz::run([&] { parse_chip(fuzz::text(data, size), "fuzz.json"); });
//   }
//
// A ppu::UserError is the parser refusing bad input cleanly (what `ppu` prints as "error: ..."), so
// run() swallows it. Anything else escapes LLVMFuzzerTestOneInput and libFuzzer reports it with the
// input that caused it: another exception (std::terminate -> abort), a crash, an ASan or UBSan report,
// PPU_CHECK's abort (a bug of ours), an input running past -timeout, or memory past -rss_limit_mb.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "arch/Error.hpp"

namespace ppu::fuzz {

inline std::string_view text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

template <class F>
int run(F&& parse) {
  try {
    parse();
  } catch (const UserError&) {
  }
  return 0;
}

}  // namespace ppu::fuzz
