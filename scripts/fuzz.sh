#!/usr/bin/env bash
# Builds the libFuzzer harnesses of fuzz/ (build-fuzz/, clang, PPU_FUZZ=ON) and runs them, one at a time.
#   scripts/fuzz.sh --ci                        # every harness 10 s from the seeds; exit 1 on a finding (CI)
#   scripts/fuzz.sh --seconds 3600 [harness...]  # each named harness (default: all) for an hour
#   scripts/fuzz.sh --seconds 3600 --record     # ... and write the table into docs/fuzzing.md
# Each run starts from the committed seeds (fuzz/corpus/<harness>/, never written to) plus what earlier
# runs found (build-fuzz/fuzz-runs/corpus/<harness>/, where new inputs go). A finding stops that
# harness: its input goes to build-fuzz/fuzz-runs/findings/<harness>/ (crash-*, timeout-*, oom-*,
# leak-*; replay with `build-fuzz/fuzz/<harness> <file>`), its log to build-fuzz/fuzz-runs/logs/.
# Limits: -rss_limit_mb=2048 (and a single allocation over 2 GB is a finding too), -timeout=10 s per
# input. At the end: per harness the seconds, executions and peak RSS (libFuzzer's final stats) and
# findings.
# Environment: PPU_JOBS (build jobs, default: number of cores).
set -euo pipefail
cd "$(dirname "$0")/.."

ALL=(fuzz_chip_preset fuzz_node_preset fuzz_cluster_preset fuzz_model_config fuzz_safetensors_header
     fuzz_safetensors_index fuzz_tokenizer_json fuzz_tokenizer_encode fuzz_chat_template fuzz_openai_request
     fuzz_mcp_message)
seconds=600
ci=0
record=0
harnesses=()
while [ $# -gt 0 ]; do
  case "$1" in
    --ci) ci=1; seconds=10 ;;
    --seconds) seconds=${2:?--seconds needs a number}; shift ;;
    --record) record=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    fuzz_*) harnesses+=("$1") ;;
    *) echo "fuzz.sh: unknown argument '$1' (harnesses: ${ALL[*]})" >&2; exit 2 ;;
  esac
  shift
done
[ ${#harnesses[@]} -gt 0 ] || harnesses=("${ALL[@]}")
for h in "${harnesses[@]}"; do
  [ -f "fuzz/$h.cpp" ] || { echo "fuzz.sh: no harness '$h' (harnesses: ${ALL[*]})" >&2; exit 2; }
done

# Dependencies: the project's packages and the Qwen3 tokenizer fuzz_tokenizer_encode uses, plus
# clang and its libFuzzer runtime (nothing is installed when all are present).
scripts/setup.sh clang libclang-rt-14-dev

dir=build-fuzz
# -O1 comes from fuzz/CMakeLists.txt; line tables are enough for a finding's stack trace.
CXX=clang++ cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG=-gline-tables-only \
  -DPPU_FUZZ=ON >/dev/null
cmake --build "$dir" -j "${PPU_JOBS:-$(nproc)}"

runs=$dir/fuzz-runs
mkdir -p "$runs/logs"
# The input size cap of each harness: twice its largest seed, rounded up to a power of two.
max_len() {
  case "$1" in
    fuzz_tokenizer_json) echo 65536 ;;
    fuzz_tokenizer_encode) echo 4096 ;;
    *) echo 16384 ;;
  esac
}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

declare -A took execs rss found
failed=0
for h in "${harnesses[@]}"; do
  corpus=$runs/corpus/$h
  if [ "$ci" -eq 1 ]; then
    # CI starts from the committed seeds alone, so that its 10 s are spent fuzzing, not replaying.
    corpus=$runs/ci-corpus/$h
    rm -rf "$corpus"
  fi
  findings=$runs/findings/$h
  log=$runs/logs/$h.log
  mkdir -p "$corpus" "$findings"
  dict=()
  [ "$h" = fuzz_tokenizer_encode ] || dict=(-dict=fuzz/json.dict)
  echo "fuzz.sh: $h for ${seconds} s (log $log)"
  touch "$log.start"
  start=$SECONDS
  rc=0
  "$dir/fuzz/$h" "$corpus" "fuzz/corpus/$h" "${dict[@]}" -max_total_time="$seconds" -rss_limit_mb=2048 \
    -malloc_limit_mb=2048 -timeout=10 -max_len="$(max_len "$h")" -print_final_stats=1 \
    -artifact_prefix="$findings/" >"$log" 2>&1 || rc=$?
  took[$h]=$((SECONDS - start))
  execs[$h]=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rss[$h]=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  found[$h]=$(find "$findings" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' \
              -o -name 'leak-*' \) -newer "$log.start" 2>/dev/null | wc -l || true)
  # A non-zero exit without an artifact (the harness could not start) is a failure too.
  if [ "$rc" -ne 0 ]; then
    failed=1
    [ "${found[$h]}" -gt 0 ] || found[$h]="exit $rc"
    echo "fuzz.sh: $h FOUND something (exit $rc); last lines of $log:" >&2
    tail -n 25 "$log" >&2
  fi
done

table() {
  echo "| harness | seconds | executions | peak RSS (MB) | findings |"
  echo "|---|---:|---:|---:|---|"
  for h in "${harnesses[@]}"; do
    echo "| $h | ${took[$h]} | ${execs[$h]:-?} | ${rss[$h]:-?} | ${found[$h]} |"
  done
}
echo
table | tee "$runs/summary.md"
echo
echo "fuzz.sh: findings in $runs/findings/<harness>/, new inputs in $runs/corpus/<harness>/"
if [ "$record" -eq 1 ]; then
  # Replaces the table between the markers of docs/fuzzing.md; the text around it is kept.
  {
    echo "<!-- fuzz.sh:begin -->"
    echo "Recorded by \`scripts/fuzz.sh --seconds $seconds --record\` on $(date -u +%Y-%m-%d), commit" \
      "$(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(clang++ --version | head -1), $(nproc) cores:"
    echo
    table
    echo "<!-- fuzz.sh:end -->"
  } >"$runs/record.md"
  python3 - "$runs/record.md" <<'PY'
import pathlib, re, sys
doc = pathlib.Path("docs/fuzzing.md")
new = pathlib.Path(sys.argv[1]).read_text().strip()
text = doc.read_text()
text = re.sub(r"<!-- fuzz.sh:begin -->.*?<!-- fuzz.sh:end -->", lambda m: new, text, flags=re.S)
doc.write_text(text)
PY
  echo "fuzz.sh: wrote the table into docs/fuzzing.md"
fi
exit "$failed"
