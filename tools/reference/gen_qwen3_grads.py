#!/usr/bin/python3
"""Golden gradients for the training tests: the tiny dense and tiny MoE Qwen3 fixtures
(tests/data/qwen3-tiny, tests/data/qwen3-tiny-moe), one batch of next-token prediction, the loss and
its gradient with respect to every weight, computed by PyTorch autograd in float32 on the bf16
weights upcast.

    /usr/bin/python3 tools/reference/gen_qwen3_grads.py           # (re)writes tests/data/qwen3-tiny*/grads.safetensors
    /usr/bin/python3 tools/reference/gen_qwen3_grads.py --check   # recomputes in memory, compares with the files

Needs PyTorch (Debian: `apt-get install python3-torch`, importable from /usr/bin/python3). The model
is gen_qwen3_fixtures.py's Qwen3Reference (plain PyTorch, no transformers package), run once per
sequence; the batch is two sequences, sequence-major, each position's target the next token of the
same row (targets are given explicitly, so nothing is inferred).

Dense: the loss is the mean cross-entropy over all positions. MoE: the mean cross-entropy plus
AUX_COEF x the load-balancing loss of Hugging Face's Qwen3MoeForCausalLM (load_balancing_loss_func
below, over the router probabilities of every layer and position together). AUX_COEF is 0.1, not
the config's 0.001, so that the load-balancing term is a visible part of the router's gradient; the
test sets the model's coefficient from the file. The MoE batch's second sequence is the first of a
seeded series whose every routing gap (k-th minus (k+1)-th router log-probability, every position
and layer) is at least gen_qwen3_fixtures.MIN_ROUTING_GAP, so bf16-sized errors do not change which
experts are chosen (the first sequence starts with the fixture's prompt, which passes by
construction).

Writes grads.safetensors: "grad.<weight name>" (same shape as the weight; the tied embedding's
gradient includes the LM head's use; F32 for the dense model, BF16 for the MoE one to keep the file
small: 2^-9 relative, far inside the test's tolerance), and F32 "loss" [1] (the loss above),
"losses" [batch * seq] (cross-entropy per position), "inputs" and "targets" [batch * seq] (ids as
floats, exact); MoE also "aux_loss" [1] (the load-balancing loss, unweighted) and
"router_aux_loss_coef" [1].
"""

import argparse
import importlib.util
import json
import math
import os
import struct
import sys

import torch

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SCRIPT = "tools/reference/gen_qwen3_grads.py"

# Two sequences of 12 tokens; the targets are the inputs shifted by one plus a last token each.
SEQUENCES = [
    [0, 17, 42, 99, 256, 300, 7, 511, 128, 64, 3, 200, 45],
    [5, 9, 400, 33, 21, 21, 88, 130, 2, 499, 77, 310, 1],
]
AUX_COEF = 0.1  # the MoE loss's load-balancing weight here (see above)

MODELS = ["qwen3-tiny", "qwen3-tiny-moe"]


def load_balancing_loss(probs, num_experts, top_k):
    """Hugging Face transformers' load_balancing_loss_func (models/qwen3_moe/modeling_qwen3_moe.py)
    without an attention mask, given the softmax of every layer's router logits (a list of [rows,
    experts]): the rows of all layers are concatenated; f_e = the fraction of (row, choice) pairs
    routed to e per choice slot, P_e = the mean probability of e; num_experts * sum f_e P_e
    (Switch Transformer's eq. 4-6, arXiv:2101.03961, counting all k choices)."""
    routing_weights = torch.cat(probs, dim=0)
    _, selected = torch.topk(routing_weights, top_k, dim=-1)
    expert_mask = torch.nn.functional.one_hot(selected, num_experts)
    tokens_per_expert = torch.mean(expert_mask.float(), dim=0)
    router_prob_per_expert = torch.mean(routing_weights, dim=0)
    return torch.sum(tokens_per_expert * router_prob_per_expert.unsqueeze(0)) * num_experts


def routing_gap(rec, cfg):
    """Smallest k-th minus (k+1)-th router log-probability over the positions and layers of rec."""
    k, gap = cfg["num_experts_per_tok"], math.inf
    for i in range(cfg["num_hidden_layers"]):
        s = torch.sort(rec[f"layers.{i}.router_probs"].detach().double(), dim=-1, descending=True).values
        gap = min(gap, (s[:, k - 1].log() - s[:, k].log()).min().item())
    return gap


def moe_sequences(fx, model, vocab):
    """The fixture's prompt plus one token, then the first seeded random sequence whose routing
    gaps all pass MIN_ROUTING_GAP (see the module comment)."""
    first = SEQUENCES[0]
    assert routing_gap(model.forward(first[:-1]), model.cfg) >= fx.MIN_ROUTING_GAP
    with torch.no_grad():
        for seed in range(1, 1000):
            g = torch.Generator().manual_seed(seed)
            s = torch.randint(0, vocab, (len(first),), generator=g).tolist()
            if routing_gap(model.forward(s[:-1]), model.cfg) >= fx.MIN_ROUTING_GAP:
                return [first, s]
    raise SystemExit("no sequence with every routing gap above MIN_ROUTING_GAP in 1000 seeds")


def load_fixtures_module():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen_qwen3_fixtures.py")
    spec = importlib.util.spec_from_file_location("gen_qwen3_fixtures", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def compute(fx, name):
    d = os.path.join(REPO, "tests", "data", name)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(d, "model.safetensors"), "rb") as f:
        weights = fx.read_safetensors(f.read())
    torch.manual_seed(0)
    torch.set_num_threads(1)
    leaves = {k: v.clone().requires_grad_(True) for k, v in weights.items()}
    model = fx.Qwen3Reference(cfg, {})
    model.w = leaves  # the reference reads weights from this dict: autograd sees the leaves
    moe = cfg["model_type"] == "qwen3_moe"
    sequences = moe_sequences(fx, model, cfg["vocab_size"]) if moe else SEQUENCES
    inputs, targets, losses, probs = [], [], [], []
    for s in sequences:
        ids, tgt = s[:-1], s[1:]
        rec = model.forward(ids)
        logits = rec["logits"]  # [T, vocab], fp32
        losses.append(torch.nn.functional.cross_entropy(logits, torch.tensor(tgt), reduction="none"))
        if moe:
            probs += [rec[f"layers.{i}.router_probs"] for i in range(cfg["num_hidden_layers"])]
        inputs += ids
        targets += tgt
    per_pos = torch.cat(losses)
    loss = per_pos.mean()
    out = {}
    if moe:
        aux = load_balancing_loss(probs, cfg["num_experts"], cfg["num_experts_per_tok"])
        loss = loss + AUX_COEF * aux
        out["aux_loss"] = aux.detach().reshape(1)
        out["router_aux_loss_coef"] = torch.tensor([AUX_COEF], dtype=torch.float32)
    loss.backward()
    # An expert no row was routed to has no gradient in autograd: zero, as the test expects.
    out.update({"grad." + k: (v.grad.detach().clone() if v.grad is not None else torch.zeros_like(v.detach()))
                for k, v in leaves.items()})
    out["loss"] = loss.detach().reshape(1)
    out["losses"] = per_pos.detach()
    out["inputs"] = torch.tensor(inputs, dtype=torch.float32)
    out["targets"] = torch.tensor(targets, dtype=torch.float32)
    return out, moe


def file_bytes(fx, out, grads_bf16):
    """The safetensors file: gradients in BF16 if grads_bf16, everything else F32 (ids stay exact)."""
    if not grads_bf16:
        return fx.safetensors_bytes(out, "F32", {"generator": SCRIPT, "torch": torch.__version__})
    header = {"__metadata__": {"generator": SCRIPT, "torch": torch.__version__}}
    blobs, offset = [], 0
    for name in sorted(out):
        bf16 = name.startswith("grad.")
        data = fx.to_bf16_bits(out[name]) if bf16 else fx.to_f32_bytes(out[name])
        header[name] = {"dtype": "BF16" if bf16 else "F32", "shape": list(out[name].shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = ap.parse_args()
    fx = load_fixtures_module()
    status = 0
    for name in MODELS:
        path = os.path.join(REPO, "tests", "data", name, "grads.safetensors")
        out, moe = compute(fx, name)
        if args.check:
            with open(path, "rb") as f:
                old = fx.read_safetensors(f.read())
            # BF16 gradients: compare with the fresh values rounded the same way.
            fresh = {k: (fx.bf16_round(v) if moe and k.startswith("grad.") else v) for k, v in out.items()}
            worst = max(float((old[k] - fresh[k]).abs().max() / (fresh[k].abs().max() + 1e-30)) for k in fresh)
            print(f"{name}: largest relative difference from the committed file: {worst:.3g}")
            status |= 0 if worst < 1e-5 else 1
            continue
        with open(path, "wb") as f:
            f.write(file_bytes(fx, out, grads_bf16=moe))
        extra = f", aux_loss {float(out['aux_loss']):.6f}" if moe else ""
        print(f"wrote {os.path.relpath(path, REPO)}: loss {float(out['loss']):.6f}{extra}, {len(out)} tensors")
    sys.exit(status)


if __name__ == "__main__":
    main()
