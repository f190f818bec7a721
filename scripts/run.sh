#!/usr/bin/env bash
# The main job on built-in defaults: installs dependencies, builds, then shows the chip presets and
# runs the same GEMM and HBM copy on every chip side by side, plus a checked GEMM on the PPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh build >/dev/null
ppu=build/ppu
$ppu chips
echo
$ppu bench gemm 4096 4096 4096 --chip all
echo
$ppu bench copy 1GiB --chip all
echo
$ppu bench gemm 512 384 1000 --chip zhenwu-810e --check
