#!/usr/bin/env bash
# The main job on built-in defaults: installs dependencies, builds, then shows the chip presets, runs
# the same GEMM and HBM copy on every chip side by side and a checked GEMM on the PPU, generates text
# with a tiny random Qwen3 on the PPU, predicts Qwen3-0.6B serving on the PPU at three batch sizes,
# shows the 8-PPU node with an all-reduce sweep, and runs a tiny MoE split over 4 emulated PPUs.
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
echo
$ppu run --model tiny --prompt "Why is the sky blue?" --gen 16
echo
$ppu run --model qwen3-0.6b --timing-only --chip zhenwu-810e --batch 1,8,64 --prompt-len 512 --gen 8
echo
$ppu nodes
echo
$ppu bench allreduce --node zhenwu-8 --sizes 1M:1G
echo
$ppu run --model tiny-moe --node zhenwu-8 --tp 2 --ep 4 --prompt "Why is the sky blue?" --gen 16
echo
$ppu clusters
echo
$ppu simulate train --model qwen3-max --cluster zhenwu-10k --tokens 36T
echo
# Real training on the emulated PPU: a few steps of the tiny Qwen3 on the default corpus (the
# project's docs and the King James Bible); metrics.jsonl, loss.svg and a checkpoint in runs/tiny.
$ppu train --model tiny --steps 10 --seq-len 64 --batch 4 --eval-every 5 --out runs/tiny
