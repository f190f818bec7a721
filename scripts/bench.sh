#!/usr/bin/env bash
# Every benchmark the issues ask for, printed in one run: fidelity against published measurements,
# timing-engine speed, and functional-executor speed against oneDNN and OpenBLAS.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh build >/dev/null
build/bench/bench_fidelity
echo
build/bench/bench_serving
echo
build/bench/bench_serving_engine
echo
build/bench/bench_agent_tools
echo
build/bench/bench_decode_latency
echo
build/bench/bench_collectives
echo
build/bench/bench_network
echo
build/bench/bench_training
echo
build/bench/bench_sim_speed
echo
build/bench/bench_functional_gemm
echo
build/bench/bench_qwen3_chips
echo
build/bench/bench_host_decode
echo
build/bench/bench_host_training
echo
build/bench/bench_train_vs_torch
echo
# Last: about 20-25 minutes (a 21.4M-parameter model trained from scratch; report as docs/learning.md keeps it).
build/bench/bench_learning
