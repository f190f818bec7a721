#!/usr/bin/env bash
# Installs dependencies, builds, and runs the whole test suite (ctest).
#   scripts/test.sh              # Release build in build/ (kernel tests again with PPU_HOST_ISA=scalar)
#   scripts/test.sh --sanitize   # AddressSanitizer + UndefinedBehaviorSanitizer build in build-asan/
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ "${1:-}" = "--sanitize" ]; then
  # -O1 without debug info: the sanitizers need no more, and it compiles quickly on two cores.
  PPU_BUILD_TYPE=Debug scripts/build.sh build-asan -DPPU_SANITIZE=ON -DPPU_BENCH=OFF -DCMAKE_CXX_FLAGS_DEBUG=-O1
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  export PPU_SANITIZED=1
  # The README examples (minutes of simulated clusters), the determinism runs (the same commands
  # three times over; bits, not memory safety), the JSON documents' schema check (every command once
  # more, three minutes under the sanitizers; test_cli runs each command here) and the 256-stream load
  # test (a minute under the sanitizers; the server's concurrency runs here through test_serve_server
  # and the openai client) run in the Release pass only.
  ctest --test-dir build-asan --output-on-failure -j "$(nproc)" \
    -E '^(cli_readme_examples|cli_determinism|cli_json_documents|serve_load_test)$'
else
  scripts/build.sh build
  ctest --test-dir build --output-on-failure -j "$(nproc)"
  # The kernel and simulator tests once more on the narrowest host SIMD path (Highway's portable C++
  # fallback, sim/HostIsa.hpp), so that the paths other CPUs take are tested on this one too.
  PPU_HOST_ISA=scalar ctest --test-dir build --output-on-failure --no-tests=error -j "$(nproc)" \
    -L '^(test_sim|test_gemm|test_attention|test_gather|test_kernels_.*)$'
fi
