#!/usr/bin/env python3
"""Every `ppu ... --json` document against its JSON Schema (docs/schemas) and the conventions of
docs/json.md: snake_case keys, SI unit suffixes (no percentages or abbreviated units), null instead of
empty strings, results always a list, schema_version present.

    python3 tests/cli/json_documents.py --ppu build/ppu --schemas docs/schemas

Uses Debian's python3-jsonschema. The checker is first run on documents that break each rule, so the
test fails if it stops catching them.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import jsonschema

# (schema name, arguments, exit codes accepted). Small problems so the whole list runs in seconds.
COMMANDS = [
    ("chips", "chips", [0]),
    ("chips-show", "chips show zhenwu-810e", [0]),
    ("chips-show", "chips show h100", [0]),
    ("nodes", "nodes", [0]),
    ("nodes-show", "nodes show zhenwu-16", [0]),
    ("nodes-show", "nodes show h100-dgx", [0]),
    ("clusters", "clusters", [0]),
    ("clusters-show", "clusters show zhenwu-10k", [0]),
    ("models", "models", [0]),
    ("models-show", "models show qwen3-30b-a3b", [0]),
    ("models-show", "models show gpt-1.7b", [0]),
    ("bench-gemm", "bench gemm 128 96 64 --chip all --dtype fp8e4m3", [0]),
    ("bench-gemm", "bench gemm 40 24 72 --check", [0]),
    ("bench-copy", "bench copy 1MiB --chip zhenwu-810e,h20 --check", [0]),
    ("bench-collective", "bench allreduce --node zhenwu-8 --sizes 1M:2M --check", [0]),
    ("bench-collective", "bench broadcast --node h100-dgx --sizes 64K", [0]),
    ("bench-collective", "bench sendrecv --node zhenwu-8 --sizes 64K", [0]),
    ("simulate-train", "simulate train --model tiny --cluster h800-2k --chips 16 --tp 2 --pp 2 --seq-len 256 "
                       "--global-batch 32 --tokens 1B", [0]),
    ("simulate-train", "simulate train --model tiny --cluster h800-2k --chips 16 --seq-len 256 --global-batch 32 "
                       "--search --top 3", [0]),
    ("simulate-train", "simulate train --model qwen3-235b-a22b --cluster h800-2k --chips 8 --search", [3]),
    ("simulate-serve", "simulate serve --model tiny --chip h100,a800 --io 64/16 --requests 20 --rate 50 "
                       "--slo ttft=1s,tpot=50ms --search-requests 20", [0]),
    ("simulate-serve", "simulate serve --model tiny --requests 30 --max-model-len 2048", [0]),
    ("simulate-serve", "simulate serve --model tiny-moe --node h100-dgx --tp 2 --ep 4 --io 64/16 --requests 20 "
                       "--rate 50", [0]),
    ("run", "run --model tiny --prompt hi --gen 2", [0]),
    ("run", "run --model tiny --timing-only --chip zhenwu-810e,h20 --gen 2", [0]),
    ("run", "run --model tiny --timing-only --batch 1,2 --prompt-len 8 --gen 2", [0]),
    ("run", "run --model tiny --timing-only --prompt-len 8 --gen 1", [0]),
    ("run", "run --model llama3-70b --timing-only --chip zhenwu-810e,h200 --prompt-len 8 --gen 1", [0]),
    ("run", "run --model tiny --node zhenwu-8 --tp 2 --timing-only --prompt-len 8 --gen 2", [0]),
    ("throughput", "throughput --model qwen3-0.6b --chip h100,a800 --io 64/128", [0]),
    ("compare", "compare --chips zhenwu-810e,h20 --suite kernels --sweep zhenwu-810e.hbm_bandwidth=2:3 "
                "--sweep-points 2", [0]),
    ("index", "index {tmp} --out {tmp}/kb.sqlite", [0]),
    ("train", "train --model tiny --timing-only --chip zhenwu-810e,h20 --seq-len 32 --batch 2", [0]),
    ("train", "train --model tiny --timing-only --chip zhenwu-810e,h20 --tp 2 --dp 2 --zero 1 --recompute full "
              "--seq-len 32 --batch 2", [0]),
    ("train", "train --model tiny --steps 2 --seq-len 32 --batch 2 --eval-every 1 --eval-batches 1 --out {tmp}/run", [0]),
]

# Tokens (between underscores) that abbreviate a unit or scale a number: a key spells the SI unit
# instead (bandwidth_bytes_per_s, flops_per_s, _s, _bytes), and ratios are fractions.
BANNED_TOKENS = {"percent", "pct", "bw", "tflops", "gflops", "ms", "us", "ns", "kb", "mb", "gb", "tb", "kib", "mib",
                 "gib", "tib", "mwh", "kwh", "hours", "days"}
SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


def convention_errors(doc):
    out = []
    if not isinstance(doc, dict):
        return ["$: not an object"]
    if doc.get("schema_version") != 1:
        out.append("$.schema_version: missing or not 1")
    if not isinstance(doc.get("command"), str):
        out.append("$.command: missing or not a string")
    if not isinstance(doc.get("results"), list):
        out.append("$.results: missing or not a list")

    def walk(v, path):
        if isinstance(v, dict):
            for k, child in v.items():
                p = f"{path}.{k}"
                if not SNAKE.match(k):
                    out.append(f"{p}: key is not snake_case")
                for tok in k.split("_"):
                    if tok in BANNED_TOKENS:
                        out.append(f"{p}: key uses '{tok}' (spell the SI unit; ratios are fractions)")
                walk(child, p)
        elif isinstance(v, list):
            for i, child in enumerate(v):
                walk(child, f"{path}[{i}]")
        elif v == "":
            out.append(f"{path}: empty string (use null)")

    walk(doc, "$")
    return out


def self_test(schemas):
    """The checks must catch each kind of breach."""
    good = {"schema_version": 1, "command": "chips", "results": []}
    bad = [
        ({"command": "chips", "results": []}, "schema_version"),
        ({"schema_version": 1, "command": "chips", "results": {}}, "results"),
        (dict(good, results=[{"Percent Of Peak": 1}]), "snake_case"),
        (dict(good, results=[{"percent_of_peak": 70.4}]), "percent"),
        (dict(good, results=[{"hbm_bw_bytes_per_s": 1.0}]), "'bw'"),
        (dict(good, results=[{"peak_tflops": 1.0}]), "tflops"),
        (dict(good, results=[{"node": ""}]), "empty string"),
    ]
    assert not convention_errors(good), convention_errors(good)
    for doc, what in bad:
        errs = convention_errors(doc)
        assert any(what in e for e in errs), f"convention check missed {what!r} in {doc}: {errs}"
    # A schema rejects an unknown key and a wrong type.
    v = jsonschema.Draft202012Validator(schemas["chips"])
    chip = {"schema_version": 1, "command": "chips", "results": [{"chip": "x", "surprise": 1}]}
    assert list(v.iter_errors(chip)), "chips schema accepted an unknown key"
    assert list(v.iter_errors(dict(good, schema_version=2))), "chips schema accepted schema_version 2"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ppu", required=True)
    ap.add_argument("--schemas", required=True)
    args = ap.parse_args()
    schemas = {}
    for f in sorted(os.listdir(args.schemas)):
        if f.endswith(".schema.json"):
            with open(os.path.join(args.schemas, f)) as fh:
                s = json.load(fh)
            jsonschema.Draft202012Validator.check_schema(s)
            schemas[f[: -len(".schema.json")]] = s
    self_test(schemas)
    unused = set(schemas) - {name for name, _, _ in COMMANDS}
    failures = [f"schema {u}.schema.json is checked by no command here" for u in sorted(unused)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, cmd, codes in COMMANDS:
            argv = [args.ppu] + cmd.format(tmp=tmp).split() + ["--json"]
            r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
            label = "ppu " + cmd.format(tmp="TMP") + " --json"
            if r.returncode not in codes:
                failures.append(f"{label}: exit {r.returncode}\n{r.stderr[-2000:]}")
                continue
            try:
                doc = json.loads(r.stdout)
            except json.JSONDecodeError as e:
                failures.append(f"{label}: stdout is not one JSON document ({e})")
                continue
            errs = [f"schema: {'/'.join(map(str, e.absolute_path))}: {e.message}"
                    for e in jsonschema.Draft202012Validator(schemas[name]).iter_errors(doc)]
            errs += convention_errors(doc)
            if errs:
                failures.append(f"{label}:\n  " + "\n  ".join(errs[:20]))
            else:
                print(f"ok  {label}  ({len(doc['results'])} results)")
    if failures:
        print("\n".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
