#!/usr/bin/env python3
"""Batch-1 decode (bf16, or fp32 with --dtype fp32) of a Qwen3-0.6B-shaped model (random weights) in Debian's PyTorch, on the same
host as bench_host_decode, which runs this script and compares. Run with the system Python
(/usr/bin/python3), where python3-torch is importable.

Prints one line: "tokens_per_s <float>". Arguments: --threads N --steps N --context N --dtype bf16|fp32.
The model follows the Qwen3 architecture (RMSNorm, QK-norm, RoPE theta 1e6, GQA 16/8 heads of 128,
SwiGLU 3072, tied 151936-row embedding) with a KV cache, in bf16 (or fp32) with fp32 norms and softmax.
On CPUs without native bf16 arithmetic PyTorch's fp32 path can be the faster one, so the bench runs both."""
import argparse
import math
import time

import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--context", type=int, default=16)
p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
args = p.parse_args()

torch.manual_seed(0)
torch.set_num_threads(args.threads)
H, L, NH, NKV, D, FF, V = 1024, 28, 16, 8, 128, 3072, 151936
BF = torch.bfloat16 if args.dtype == "bf16" else torch.float32


def w(*shape):
    return (torch.randn(*shape) * 0.02).to(BF)


layers = [dict(q=w(NH * D, H), k=w(NKV * D, H), v=w(NKV * D, H), o=w(H, NH * D), g=w(FF, H), u=w(FF, H),
               d=w(H, FF), n1=torch.ones(H, dtype=BF), n2=torch.ones(H, dtype=BF), qn=torch.ones(D, dtype=BF),
               kn=torch.ones(D, dtype=BF)) for _ in range(L)]
emb = w(V, H)
final_norm = torch.ones(H, dtype=BF)
max_ctx = args.context + args.steps + 1
kcache = [torch.zeros(max_ctx, NKV, D, dtype=BF) for _ in range(L)]
vcache = [torch.zeros(max_ctx, NKV, D, dtype=BF) for _ in range(L)]
inv_freq = 1.0 / (1e6 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))


def rms(x, weight):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(BF) * weight


def rope(x, pos):
    a = (pos * inv_freq).float()
    c, s = a.cos(), a.sin()
    x1, x2 = x[..., : D // 2].float(), x[..., D // 2:].float()
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1).to(BF)


def step(token, pos):
    x = emb[token].unsqueeze(0)
    for i, lw in enumerate(layers):
        h = rms(x, lw["n1"])
        q = rope(rms(F.linear(h, lw["q"]).view(NH, D), lw["qn"]), pos)
        k = rope(rms(F.linear(h, lw["k"]).view(NKV, D), lw["kn"]), pos)
        kcache[i][pos] = k
        vcache[i][pos] = F.linear(h, lw["v"]).view(NKV, D)
        keys = kcache[i][: pos + 1].float()          # [t, kv, d]
        vals = vcache[i][: pos + 1].float()
        qg = q.float().view(NKV, NH // NKV, D)       # [kv, group, d]
        scores = torch.einsum("kgd,tkd->kgt", qg, keys) / math.sqrt(D)
        att = torch.einsum("kgt,tkd->kgd", scores.softmax(-1), vals).reshape(1, NH * D).to(BF)
        x = x + F.linear(att, lw["o"])
        h = rms(x, lw["n2"])
        x = x + F.linear(F.silu(F.linear(h, lw["g"])) * F.linear(h, lw["u"]), lw["d"])
    return F.linear(rms(x, final_norm), emb).float()


with torch.no_grad():
    for pos in range(args.context):  # fill the cache (not timed)
        step(5, pos)
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(7, args.context + i)
    dt = (time.perf_counter() - t0) / args.steps
print(f"tokens_per_s {1.0 / dt:.3f}")
