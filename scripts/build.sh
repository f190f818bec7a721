#!/usr/bin/env bash
# Configures and builds OpenPPU. Usage: scripts/build.sh [build-dir] [extra cmake args...]
# Environment: PPU_JOBS (default: number of cores).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build}
shift || true
jobs=${PPU_JOBS:-$(nproc)}
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE="${PPU_BUILD_TYPE:-Release}" "$@" >/dev/null
cmake --build "$dir" -j "$jobs"
