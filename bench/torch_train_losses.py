#!/usr/bin/python3
"""The PyTorch side of bench_train_vs_torch: trains a Qwen3 / Qwen3-MoE checkpoint on given batches
with Debian's PyTorch on the CPU (bf16 autocast, fp32 master weights) and prints each step's loss, so
the bench can compare the PPU trainer's losses step by step. Run with the system Python
(/usr/bin/python3), where python3-torch is importable.

    torch_train_losses.py --model DIR --batches FILE --steps N --batch B --seq S [--lr ...] [--threads T]

DIR holds config.json and model.safetensors (the bench's initial weights, bf16). FILE holds
N x B x (S + 1) little-endian int32 token ids: each step's sequences, inputs and next-token targets.
The recipe is the PPU trainer's (src/train/Trainer.hpp), written out here as PyTorch runs it:
  - forward under torch.autocast("cpu", bfloat16): matrix products in bf16, norms, softmax and the
    loss in fp32; the mean cross-entropy over all B x S positions;
  - Qwen3-MoE: softmax router in fp32, top-k, renormalised when norm_topk_prob, and the auxiliary
    load-balancing loss of Hugging Face's load_balancing_loss_func (Switch Transformer, Fedus et al.
    2021, eq. 4-6; all layers' router logits together) times router_aux_loss_coef added to the loss;
  - torch.nn.utils.clip_grad_norm_ to 1.0 (the total 2-norm over every parameter);
  - torch.optim.AdamW (betas, eps, decoupled weight decay on matrices other than the embedding);
  - learning rate: linear warmup to --lr over --warmup steps, then cosine to --min-lr at step N.
Prints "step <t> loss <cross-entropy> total <with the auxiliary loss>" per step.
"""
import argparse
import importlib.util
import json
import math
import os

import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--batches", required=True)
p.add_argument("--steps", type=int, required=True)
p.add_argument("--batch", type=int, required=True)
p.add_argument("--seq", type=int, required=True)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--min-lr", type=float, default=1e-4)
p.add_argument("--warmup", type=int, default=20)
p.add_argument("--weight-decay", type=float, default=0.1)
p.add_argument("--clip", type=float, default=1.0)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()

torch.set_num_threads(a.threads)
here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "gen_qwen3_fixtures", os.path.join(here, "..", "tools", "reference", "gen_qwen3_fixtures.py"))
fx = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fx)

with open(os.path.join(a.model, "config.json")) as f:
    cfg = json.load(f)
with open(os.path.join(a.model, "model.safetensors"), "rb") as f:
    w0 = fx.read_safetensors(f.read())
params = {k: torch.nn.Parameter(v.clone()) for k, v in w0.items()}
H, NH, NKV = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
D = cfg.get("head_dim", H // NH)
L, V, eps = cfg["num_hidden_layers"], cfg["vocab_size"], cfg["rms_norm_eps"]
E = cfg.get("num_experts", 0)
K = cfg.get("num_experts_per_tok", 0)
aux_coef = cfg.get("router_aux_loss_coef", 0.001) if E else 0.0  # Qwen3-MoE's default
head = "lm_head.weight" if "lm_head.weight" in params else "model.embed_tokens.weight"


def rms(x, wname):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)) * params[wname].float()


def lin(x, wname):
    return F.linear(x, params[wname])


def forward(ids):
    B, T = ids.shape
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    ang = torch.outer(torch.arange(T, dtype=torch.float64), inv)
    cos, sin = torch.cat([ang, ang], -1).cos().float(), torch.cat([ang, ang], -1).sin().float()

    def rope(x):  # [B, T, heads, D]
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return x * cos[None, :, None, :] + torch.cat([-x2, x1], -1) * sin[None, :, None, :]

    mask = torch.full((T, T), float("-inf")).triu(1)
    x = params["model.embed_tokens.weight"][ids]
    router_logits = []
    for i in range(L):
        pre = f"model.layers.{i}."
        h = rms(x, pre + "input_layernorm.weight")
        q = rms(lin(h, pre + "self_attn.q_proj.weight").view(B, T, NH, D), pre + "self_attn.q_norm.weight")
        k = rms(lin(h, pre + "self_attn.k_proj.weight").view(B, T, NKV, D), pre + "self_attn.k_norm.weight")
        v = lin(h, pre + "self_attn.v_proj.weight").view(B, T, NKV, D)
        q, k, v = rope(q).transpose(1, 2), rope(k).transpose(1, 2), v.transpose(1, 2)
        k, v = k.repeat_interleave(NH // NKV, 1), v.repeat_interleave(NH // NKV, 1)
        s = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(D) + mask
        att = (torch.softmax(s, -1).to(v.dtype) @ v).transpose(1, 2).reshape(B, T, NH * D)
        x = x + lin(att, pre + "self_attn.o_proj.weight").float()
        h2 = rms(x, pre + "post_attention_layernorm.weight")
        if not E:
            x = x + lin(F.silu(lin(h2, pre + "mlp.gate_proj.weight")) * lin(h2, pre + "mlp.up_proj.weight"),
                        pre + "mlp.down_proj.weight").float()
            continue
        hf = h2.reshape(B * T, H)
        logits = lin(hf, pre + "mlp.gate.weight").float()  # [tokens, E]
        router_logits.append(logits)
        probs = torch.softmax(logits, -1)
        top_p, top_i = torch.topk(probs, K, dim=-1)
        if cfg.get("norm_topk_prob", True):
            top_p = top_p / top_p.sum(-1, keepdim=True)
        out = torch.zeros(B * T, H)
        for e in range(E):
            rows, slot = torch.nonzero(top_i == e, as_tuple=True)
            if rows.numel() == 0:
                continue
            ep = pre + f"mlp.experts.{e}."
            xe = hf[rows]
            ye = lin(F.silu(lin(xe, ep + "gate_proj.weight")) * lin(xe, ep + "up_proj.weight"), ep + "down_proj.weight")
            out = out.index_add(0, rows, ye.float() * top_p[rows, slot].unsqueeze(-1))
        x = x + out.view(B, T, H)
    logits = lin(rms(x, "model.norm.weight"), head)
    return logits, router_logits


def load_balancing_loss(router_logits):
    # Hugging Face's load_balancing_loss_func without an attention mask: every layer's router
    # logits concatenated; f = fraction of (token, choice) slots per expert, P = mean probability.
    logits = torch.cat(router_logits, 0)
    probs = torch.softmax(logits, -1)
    _, sel = torch.topk(probs, K, dim=-1)
    mask = F.one_hot(sel, E).float()  # [tokens, K, E]
    tokens_per_expert = mask.mean(0)  # [K, E]
    prob_per_expert = probs.mean(0)  # [E]
    return (tokens_per_expert * prob_per_expert.unsqueeze(0)).sum() * E


decay = [t for n, t in params.items() if t.dim() == 2 and "embed_tokens" not in n]
no_decay = [t for n, t in params.items() if not (t.dim() == 2 and "embed_tokens" not in n)]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=a.lr, betas=(0.9, 0.95), eps=1e-8)


def lr_at(t):  # 1-based step, as the PPU trainer's WarmupCosineSchedule
    if t <= a.warmup:
        return a.lr * t / a.warmup
    if t > a.steps:
        return a.min_lr
    r = (t - a.warmup) / (a.steps - a.warmup)
    return a.min_lr + (a.lr - a.min_lr) * 0.5 * (1 + math.cos(math.pi * r))


data = torch.frombuffer(bytearray(open(a.batches, "rb").read()), dtype=torch.int32).long()
data = data.view(a.steps, a.batch, a.seq + 1)
for t in range(1, a.steps + 1):
    ids = data[t - 1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, router_logits = forward(ids[:, :-1])
    ce = F.cross_entropy(logits.float().reshape(-1, V), ids[:, 1:].reshape(-1))
    total = ce + aux_coef * load_balancing_loss(router_logits) if E else ce
    opt.zero_grad(set_to_none=True)
    total.backward()
    if a.clip > 0:
        torch.nn.utils.clip_grad_norm_(list(params.values()), a.clip)
    for g in opt.param_groups:
        g["lr"] = lr_at(t)
    opt.step()
    print(f"step {t} loss {float(ce):.6f} total {float(total):.6f}", flush=True)
