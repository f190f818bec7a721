#!/usr/bin/env python3
"""Determinism as a test (issue 17, part 4): the same simulation gives bit-identical output across
runs and across 1 and 2 host threads - a kernel, a node collective, a model split over chips, a
cluster training iteration and real training steps.

    python3 tests/cli/determinism.py --ppu build/ppu --docs docs

Each case runs three times, each in a fresh directory with the same relative paths: with 1 host thread,
then twice with 2 (PPU_THREADS, which every host thread pool of the simulator reads - the functional
executor, the communicator's data movement, the training planner - and `--threads` where the command
has it). Compared byte for byte against the first run: the `--json` document on stdout and every file
the case names (traces, metrics, checkpoints), after removing exactly the keys in HOST_KEYS, which
hold this machine's wall time (docs/json.md: "`host_` keys are this machine's wall time"; the search
summary of `simulate train` has `wall_s`). Nothing else is stripped or rounded.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

# The keys whose values are host wall time (or rates derived from it): the only legitimate
# differences between runs. The test fails if one of them no longer appears in any output, so the
# list cannot outlive the fields it excuses.
HOST_KEYS = {"host_wall_s", "wall_s", "host_s", "host_tokens_per_s", "host_prefill_s", "host_decode_tokens_per_s"}

# (label, arguments, files written by the run to compare too). "{docs}" is the project's docs folder:
# a small corpus, so that tokenising it does not dominate the training cases.
CASES = [
    # Kernels: a functional GEMM whose numbers are checked (blocks on host threads), timing-only GEMMs
    # on every chip with a Perfetto trace, and an HBM-bound kernel.
    ("kernel, functional", "bench gemm 40 24 72 --check", []),
    ("kernel, timing only", "bench gemm 256 192 128 --chip all --dtype fp8e4m3", []),
    ("kernel, timing only, traced", "bench gemm 512 384 1000 --chip h100 --trace gemm.json", ["gemm.json"]),
    ("kernel, copy", "bench copy 1MiB --chip zhenwu-810e,h20 --check", []),
    # A node collective: real data between 8 emulated chips (moved on host threads) and its timing,
    # with the per-link trace.
    ("node collective", "bench allreduce --node zhenwu-8 --sizes 1M:2M --check --trace allreduce.json",
     ["allreduce.json"]),
    ("node all-to-all", "bench alltoall --node h100-dgx --sizes 64K --check", []),
    # Generation on one chip and split over two (a thread per rank, all-reduces in every layer).
    ("generation", "run --model tiny --prompt hi --gen 2", []),
    ("generation, tensor parallel", "run --model tiny --node zhenwu-8 --tp 2 --prompt hi --gen 2", []),
    # One training iteration on a cluster: a layout search (workloads extracted on planner threads)
    # and a fixed layout with its trace.
    ("cluster training search", "simulate train --model tiny --cluster h800-2k --chips 16 --seq-len 256 "
                                "--global-batch 32 --search --top 3", []),
    ("cluster training iteration", "simulate train --model tiny --cluster h800-2k --chips 16 --tp 2 --pp 2 "
                                   "--seq-len 256 --global-batch 32 --tokens 1B --trace step.json", ["step.json"]),
    # A serving simulation: step-cost probes on host threads, the Azure trace, the max-rate search,
    # and its Perfetto trace.
    ("serving simulation", "simulate serve --model tiny --chip h100 --requests 60 --max-model-len 4096 "
                           "--slo ttft=50ms,tpot=5ms --search-requests 40 --perfetto serve.json", ["serve.json"]),
    # The same on a node: each probe runs one host thread per rank (TP 2 x EP 4, two DP groups).
    ("serving simulation on a node", "simulate serve --model tiny-moe --node h100-dgx --tp 2 --ep 4 --requests 40 "
                                     "--max-model-len 4096 --perfetto serve.json", ["serve.json"]),
    # Real training steps: the losses (JSON, metrics.jsonl) and the checkpoint's bytes.
    ("training", "train --model tiny --steps 2 --seq-len 32 --batch 2 --eval-every 1 --eval-batches 1 "
                 "--data {docs} --out run",
     ["run/metrics.jsonl", "run/checkpoint/model.safetensors", "run/checkpoint/optimizer.safetensors",
      "run/checkpoint/trainer_state.json"]),
    ("training, data parallel", "train --model tiny --node zhenwu-8 --dp 2 --steps 2 --seq-len 32 --batch 2 "
                                "--data {docs} --out run",
     ["run/metrics.jsonl", "run/checkpoint/model.safetensors", "run/checkpoint/optimizer.safetensors"]),
]
THREADS = [1, 2, 2]  # one run with one host thread, two with two


def strip_host_keys(v, seen):
    """`v` without the HOST_KEYS (recursively); adds the keys it removed to `seen`."""
    if isinstance(v, dict):
        out = {}
        for k, child in v.items():
            if k in HOST_KEYS:
                seen.add(k)
            else:
                out[k] = strip_host_keys(child, seen)
        return out
    if isinstance(v, list):
        return [strip_host_keys(c, seen) for c in v]
    return v


def normalized(name, data, seen):
    """What is compared of an output: JSON and JSON lines re-serialised without the host keys (keys
    and numbers kept exactly as parsed), other files as their bytes."""
    if name.endswith(".json") or name == "stdout":
        return json.dumps(strip_host_keys(json.loads(data), seen), sort_keys=True).encode()
    if name.endswith(".jsonl"):
        return b"\n".join(json.dumps(strip_host_keys(json.loads(line), seen), sort_keys=True).encode()
                          for line in data.splitlines() if line.strip())
    return data


def first_difference(a, b, path="$"):
    """Where two JSON values first differ, for the failure message."""
    if type(a) is not type(b):
        return f"{path}: {a!r} vs {b!r}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}.{k}: present in one run only"
            d = first_difference(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{path}: {a!r} vs {b!r}"


def describe(name, a, b):
    if name.endswith(".json") or name == "stdout":
        return first_difference(json.loads(a), json.loads(b)) or "bytes differ"
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"first difference at byte {i} of {len(a)} / {len(b)}"
    return f"lengths {len(a)} vs {len(b)}"


def run_case(ppu, docs, tmp, index, label, cmd, files, seen):
    """Runs one case THREADS times; returns failure messages."""
    outputs = []
    for run, threads in enumerate(THREADS):
        cwd = os.path.join(tmp, f"case{index}-run{run}")
        os.makedirs(cwd)
        argv = [ppu] + cmd.format(docs=docs).split() + ["--json"]
        if argv[1] == "train":
            argv += ["--threads", str(threads)]
        env = dict(os.environ, PPU_THREADS=str(threads))
        r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, timeout=300)
        if r.returncode != 0:
            return [f"{label}: `ppu {cmd} --json` with {threads} thread(s) exited {r.returncode}\n"
                    f"{r.stderr.decode(errors='replace')[-2000:]}"]
        got = {"stdout": r.stdout}
        for f in files:
            with open(os.path.join(cwd, f), "rb") as fh:
                got[f] = fh.read()
        outputs.append((threads, got))
    failures = []
    first_threads, first = outputs[0]
    for threads, got in outputs[1:]:
        for name in first:
            a, b = normalized(name, first[name], seen), normalized(name, got[name], seen)
            if a != b:
                failures.append(f"{label}: {name} differs between a run with {first_threads} and one with "
                                f"{threads} thread(s): {describe(name, a, b)}")
    return failures


def self_test():
    """The comparison must ignore exactly the host keys and catch any other change."""
    seen = set()
    a = json.dumps({"results": [{"time_s": 1.5, "host_s": 2.0, "nested": {"wall_s": 3}}]})
    b = json.dumps({"results": [{"time_s": 1.5, "host_s": 9.0, "nested": {"wall_s": 4}}]})
    c = json.dumps({"results": [{"time_s": 1.5000000000000002, "host_s": 2.0, "nested": {"wall_s": 3}}]})
    assert normalized("stdout", a, seen) == normalized("stdout", b, seen), "host keys were compared"
    assert normalized("stdout", a, seen) != normalized("stdout", c, seen), "a last-bit change went unnoticed"
    assert "time_s" in describe("stdout", normalized("stdout", a, seen), normalized("stdout", c, seen))
    assert normalized("x.bin", b"\x00\x01", seen) != normalized("x.bin", b"\x00\x02", seen)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ppu", required=True)
    ap.add_argument("--docs", required=True, help="a small corpus folder for the training cases")
    args = ap.parse_args()
    self_test()
    seen = set()
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus")  # a copy: the docs may change while the test runs
        shutil.copytree(args.docs, corpus)
        for i, (label, cmd, files) in enumerate(CASES):
            f = run_case(os.path.abspath(args.ppu), corpus, tmp, i, label, cmd, files, seen)
            failures += f
            if not f:
                print(f"ok  {label}: `ppu {cmd} --json`, {len(files) + 1} output(s) identical over threads {THREADS}")
    unused = HOST_KEYS - seen
    if unused and not failures:
        failures.append(f"HOST_KEYS {sorted(unused)} appear in no output any more: remove them from the list")
    if failures:
        print("\n".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
