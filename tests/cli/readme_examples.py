#!/usr/bin/env python3
"""Runs every example of the README (the `$ppu ...` lines of "## Examples") so the README cannot drift:
each must exit 0 with no error, the sample output shown must be what the command prints today, and
the examples that reproduce a published measurement must still land within its tolerance.

    python3 tests/cli/readme_examples.py --ppu build/ppu --readme README.md

Placeholders in the examples are supplied: my-corpus/ is a small folder of text (my-chip.json is
what the `chips export` example writes). The one example that needs a downloaded checkpoint (path/to/Qwen3-0.6B) is
listed as skipped.
"""
import argparse
import concurrent.futures
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

# Examples that reproduce a published figure: (pattern in the example, JSON path, published value,
# relative tolerance, source). The tolerances are the ones docs/validation.md holds them to.
KEY_FIGURES = [
    ("--model llama3-405b --cluster h100-24k",
     lambda d: d["results"][0]["model_flops_per_s_per_chip"] / 1e12, 430, 0.10,
     "Llama 3 paper (Dubey et al. 2024) table 4: 430 TFLOPS/GPU on 8,192 H100"),
    ("throughput --model llama3-8b --chip h100,",
     lambda d: next(r["output_tokens_per_s"] for r in d["results"]
                    if r["chip"] == "h100" and r["input_tokens"] == 128 and r["output_tokens"] == 2048),
     22714, 0.20, "TensorRT-LLM performance overview, Llama 3.1 8B FP8 on H100, 128/2048: 22,714 tokens/s"),
]
SKIPPED = {"path/to/": "needs a downloaded Hugging Face checkpoint"}
# Examples that read what an earlier example wrote.
CHAINED = ("runs/", "my-chip.json")


def examples(readme):
    text = open(readme, encoding="utf-8").read()
    block = text.split("## Examples", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    out = []
    for line in block.splitlines():
        line = line.strip()
        if line.startswith("$ppu "):
            out.append(line[len("$ppu "):].split("  #", 1)[0].strip())
    return out


def sample(readme):
    """The README's sample: (command, the output it shows)."""
    text = open(readme, encoding="utf-8").read()
    m = re.search(r"Sample \(`ppu ([^`]+)`\):\s*```\n(.*?)```", text, re.S)
    return (m.group(1), m.group(2)) if m else (None, None)


def run_all(job, ppu, cwd):
    """Runs the examples of `job` in order: (report lines, failures)."""
    lines, failures = [], []
    for ex in job:
        skip = next((why for key, why in SKIPPED.items() if key in ex), None)
        if skip:
            lines.append(f"skip  ppu {ex}  ({skip})")
            continue
        argv = [ppu] + shlex.split(ex)
        t0 = time.time()
        r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900)
        if r.returncode != 0 or "error:" in r.stdout + r.stderr:
            failures.append(f"ppu {ex}: exit {r.returncode}\n{(r.stdout + r.stderr)[-1500:]}")
            continue
        for key, get, published, tol, source in KEY_FIGURES:
            if key not in ex:
                continue
            j = subprocess.run(argv + ["--json"], cwd=cwd, capture_output=True, text=True, timeout=900)
            value = get(json.loads(j.stdout))
            err = value / published - 1
            lines.append(f"      {value:.4g} against {published} published ({err:+.1%}, tolerance {tol:.0%}): "
                         f"{'ok' if abs(err) <= tol else 'OFF'}; {source}")
            if abs(err) > tol:
                failures.append(f"ppu {ex}: {value:.4g} is {err:+.1%} from the published {published} ({source})")
        lines.append(f"ok    ppu {ex}  ({time.time() - t0:.1f} s)")
    return lines, failures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ppu", required=True)
    ap.add_argument("--readme", required=True)
    args = ap.parse_args()
    ppu = os.path.abspath(args.ppu)
    failures, ran = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        # The folder of the user's own text the examples name (my-chip.json comes from `chips export`).
        os.makedirs(os.path.join(tmp, "my-corpus"))
        for i in range(40):
            with open(os.path.join(tmp, "my-corpus", f"{i:02d}.txt"), "w") as f:
                f.write(f"Document {i}. In the beginning was the word, and the word was with the simulated chip.\n" * 20)
        exs = examples(args.readme)
        if len(exs) < 10:
            failures.append(f"only {len(exs)} examples found in {args.readme}: has its layout changed?")
        # Examples that use what an earlier one wrote (runs/..., my-chip.json) run in order on one
        # thread; the others run two at a time.
        chain = [ex for ex in exs if any(k in ex for k in CHAINED)]
        jobs = [chain] + [[ex] for ex in exs if ex not in chain]
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            for lines, fails in pool.map(lambda job: run_all(job, ppu, tmp), jobs):
                print("\n".join(lines), flush=True)
                failures += fails
                ran += sum(1 for line in lines if line.startswith("ok    ppu"))
        cmd, shown = sample(args.readme)
        if cmd is None:
            failures.append("the README's sample output block was not found")
        else:
            r = subprocess.run([ppu] + shlex.split(cmd), cwd=tmp, capture_output=True, text=True, timeout=300)
            if r.stdout.strip() != shown.strip():
                failures.append(f"the README's sample of 'ppu {cmd}' is stale; today it prints:\n{r.stdout}")
            else:
                print(f"ok    sample of ppu {cmd} matches")
    if failures:
        print("\n".join(failures), file=sys.stderr)
        return 1
    print(f"{ran} examples ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
