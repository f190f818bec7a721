#!/usr/bin/python3
"""Golden gradients for the training tests: the tiny dense Qwen3 fixture (tests/data/qwen3-tiny),
one batch of next-token prediction, the mean cross-entropy and its gradient with respect to every
weight, computed by PyTorch autograd in float32 on the bf16 weights upcast.

    /usr/bin/python3 tools/reference/gen_qwen3_grads.py           # (re)writes tests/data/qwen3-tiny/grads.safetensors
    /usr/bin/python3 tools/reference/gen_qwen3_grads.py --check   # recomputes in memory, compares with the file

Needs PyTorch (Debian: `apt-get install python3-torch`, importable from /usr/bin/python3). The model
is gen_qwen3_fixtures.py's Qwen3Reference (plain PyTorch, no transformers package), run once per
sequence; the batch is BATCH below, sequence-major, each position's target the next token of the
same row (targets are given explicitly, so nothing is inferred).

Writes grads.safetensors: F32 tensors "grad.<weight name>" (same shape as the weight; the tied
embedding's gradient includes the LM head's use), "loss" [1] (the mean over all positions),
"losses" [batch * seq] (per position), "inputs" and "targets" [batch * seq] (ids as floats, exact).
"""

import argparse
import importlib.util
import os
import sys

import torch

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SCRIPT = "tools/reference/gen_qwen3_grads.py"
OUT = os.path.join(REPO, "tests", "data", "qwen3-tiny", "grads.safetensors")

# Two sequences of 12 tokens; the targets are the inputs shifted by one plus a last token each.
SEQUENCES = [
    [0, 17, 42, 99, 256, 300, 7, 511, 128, 64, 3, 200, 45],
    [5, 9, 400, 33, 21, 21, 88, 130, 2, 499, 77, 310, 1],
]


def load_fixtures_module():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen_qwen3_fixtures.py")
    spec = importlib.util.spec_from_file_location("gen_qwen3_fixtures", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def compute(fx):
    import json

    d = os.path.join(REPO, "tests", "data", "qwen3-tiny")
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(d, "model.safetensors"), "rb") as f:
        weights = fx.read_safetensors(f.read())
    torch.manual_seed(0)
    torch.set_num_threads(1)
    leaves = {k: v.clone().requires_grad_(True) for k, v in weights.items()}
    model = fx.Qwen3Reference(cfg, {})
    model.w = leaves  # the reference reads weights from this dict: autograd sees the leaves
    inputs, targets, losses = [], [], []
    for s in SEQUENCES:
        ids, tgt = s[:-1], s[1:]
        logits = model.forward(ids)["logits"]  # [T, vocab], fp32
        losses.append(torch.nn.functional.cross_entropy(logits, torch.tensor(tgt), reduction="none"))
        inputs += ids
        targets += tgt
    per_pos = torch.cat(losses)
    loss = per_pos.mean()
    loss.backward()
    out = {"grad." + k: v.grad.detach().clone() for k, v in leaves.items()}
    out["loss"] = loss.detach().reshape(1)
    out["losses"] = per_pos.detach()
    out["inputs"] = torch.tensor(inputs, dtype=torch.float32)
    out["targets"] = torch.tensor(targets, dtype=torch.float32)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed file instead of writing")
    args = ap.parse_args()
    fx = load_fixtures_module()
    out = compute(fx)
    data = fx.safetensors_bytes(out, "F32", {"generator": SCRIPT, "torch": torch.__version__})
    if args.check:
        with open(OUT, "rb") as f:
            old = fx.read_safetensors(f.read())
        worst = max(float((old[k] - out[k]).abs().max() / (out[k].abs().max() + 1e-30)) for k in out)
        print(f"largest relative difference from the committed file: {worst:.3g}")
        sys.exit(0 if worst < 1e-5 else 1)
    with open(OUT, "wb") as f:
        f.write(data)
    print(f"wrote {os.path.relpath(OUT, REPO)}: loss {float(out['loss']):.6f}, {len(out)} tensors")


if __name__ == "__main__":
    main()
