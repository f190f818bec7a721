#!/usr/bin/env python3
"""Training steps of a Qwen3-architecture model in Debian's PyTorch on the CPU, on the same host as
bench_host_training, which runs this script and compares. Run with the system Python (/usr/bin/python3),
where python3-torch is importable.

The model is the `tiny` preset's shape (hidden 64, 2 layers, 4 q / 2 kv heads of 32, SwiGLU 128,
QK-norm, RoPE theta 1e6, tied 151,936-row embedding) - or any shape given - trained with AdamW on
random token batches: forward, mean cross-entropy, backward, optimizer step, as the PPU trainer does.
--dtype bf16 runs under torch.autocast("cpu", bfloat16) (fp32 master weights, like ours); fp32 runs
plain fp32. Prints one line: "tokens_per_s <float>" (the best of the timed steps after warmup).
"""
import argparse
import math
import time

import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--steps", type=int, default=5)
p.add_argument("--batch", type=int, default=4)
p.add_argument("--seq", type=int, default=64)
p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
p.add_argument("--hidden", type=int, default=64)
p.add_argument("--layers", type=int, default=2)
p.add_argument("--heads", type=int, default=4)
p.add_argument("--kv-heads", type=int, default=2)
p.add_argument("--head-dim", type=int, default=32)
p.add_argument("--ffn", type=int, default=128)
p.add_argument("--vocab", type=int, default=151936)
a = p.parse_args()

torch.manual_seed(0)
torch.set_num_threads(a.threads)
H, NH, NKV, D, FF, V = a.hidden, a.heads, a.kv_heads, a.head_dim, a.ffn, a.vocab


def rms(x, w, eps=1e-6):
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps).to(x.dtype) * w


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Parameter(torch.randn(V, H) * 0.02)
        self.layers = torch.nn.ModuleList()
        for _ in range(a.layers):
            m = torch.nn.Module()
            m.q, m.k, m.v = (torch.nn.Linear(H, n * D, bias=False) for n in (NH, NKV, NKV))
            m.o = torch.nn.Linear(NH * D, H, bias=False)
            m.g, m.u = torch.nn.Linear(H, FF, bias=False), torch.nn.Linear(H, FF, bias=False)
            m.d = torch.nn.Linear(FF, H, bias=False)
            m.n1, m.n2 = torch.nn.Parameter(torch.ones(H)), torch.nn.Parameter(torch.ones(H))
            m.qn, m.kn = torch.nn.Parameter(torch.ones(D)), torch.nn.Parameter(torch.ones(D))
            self.layers.append(m)
        self.norm = torch.nn.Parameter(torch.ones(H))

    def forward(self, ids):
        B, T = ids.shape
        inv = 1.0 / (1e6 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
        ang = torch.outer(torch.arange(T, dtype=torch.float64), inv)
        cos, sin = torch.cat([ang, ang], -1).cos().float(), torch.cat([ang, ang], -1).sin().float()

        def rope(x):  # [B, T, heads, D]
            x1, x2 = x[..., : D // 2], x[..., D // 2:]
            return x * cos[None, :, None, :] + torch.cat([-x2, x1], -1) * sin[None, :, None, :]

        mask = torch.full((T, T), float("-inf")).triu(1)
        x = self.emb[ids]
        for m in self.layers:
            h = rms(x, m.n1)
            q = rope(rms(m.q(h).view(B, T, NH, D), m.qn)).transpose(1, 2)
            k = rope(rms(m.k(h).view(B, T, NKV, D), m.kn)).transpose(1, 2)
            v = m.v(h).view(B, T, NKV, D).transpose(1, 2)
            k = k.repeat_interleave(NH // NKV, 1)
            v = v.repeat_interleave(NH // NKV, 1)
            s = (q @ k.transpose(-1, -2)) / math.sqrt(D) + mask
            att = (torch.softmax(s.float(), -1).to(v.dtype) @ v).transpose(1, 2).reshape(B, T, NH * D)
            x = x + m.o(att)
            h2 = rms(x, m.n2)
            x = x + m.d(F.silu(m.g(h2)) * m.u(h2))
        return F.linear(rms(x, self.norm), self.emb)


model = Model()
opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
g = torch.Generator().manual_seed(1)
best = 0.0
for step in range(a.steps + 1):  # the first step warms up
    ids = torch.randint(0, V, (a.batch, a.seq + 1), generator=g)
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.dtype == "bf16"):
        logits = model(ids[:, :-1])
    loss = F.cross_entropy(logits.float().reshape(-1, V), ids[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    dt = time.perf_counter() - t0
    if step > 0:
        best = max(best, a.batch * a.seq / dt)
print(f"tokens_per_s {best:.3f}")
