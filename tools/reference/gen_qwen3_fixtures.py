#!/usr/bin/python3
"""Golden reference data for the Qwen3 parity tests: two tiny random-weight Qwen3 models and what a
plain-PyTorch reference forward pass computes for them.

    /usr/bin/python3 tools/reference/gen_qwen3_fixtures.py           # (re)writes tests/data/qwen3-tiny*/
    /usr/bin/python3 tools/reference/gen_qwen3_fixtures.py --check   # regenerates in memory, compares
                                                                      # with the committed files
    /usr/bin/python3 tools/reference/gen_qwen3_fixtures.py --find-seeds  # how the weight seeds were chosen

Needs PyTorch (Debian: `apt-get install python3-torch`, importable from /usr/bin/python3) and nothing
else: the safetensors files are written and read by the small functions below, and the model is
written out here from the Qwen3 architecture (no transformers package).

Writes, for each model (tests/data/qwen3-tiny: dense, tied embeddings; tests/data/qwen3-tiny-moe: 8
experts top-2, untied lm_head):

    config.json            Hugging Face style config (parsed by src/models/ModelConfig.cpp)
    model.safetensors      the weights, BF16, under the Hugging Face Qwen3 names
    reference.safetensors  F32 tensors: the reference forward pass (intermediates, logits, greedy
                           generation), and the same computed with bf16-rounded activations
    README.md              every reference tensor, how it was made, the observed errors

The reference forward ("ref.*") does fp32 math on the bf16 weights upcast to fp32. The "bf16sim.*"
variant is the same code with every matrix-multiply output rounded to bf16 (round to nearest even),
see Qwen3Reference.mm. A float64 run of the same code is not saved; it only measures how far the
fp32 reference itself is from exact (the README's last column).

Everything is deterministic: a seeded generator, one CPU thread, JSON with sorted keys. Running the
script twice gives byte-identical files with the same torch build; another torch build or CPU may
change the last bits of reference tensors (summation order), never the weights.
"""

import argparse
import json
import math
import os
import struct
import sys

import torch

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SCRIPT = "tools/reference/gen_qwen3_fixtures.py"  # as written into the generated files

# A fixed prompt of 12 token ids; includes the first and last embedding rows.
PROMPT = [0, 17, 42, 99, 256, 300, 7, 511, 128, 64, 3, 200]
NEW_TOKENS = 8  # greedy generation length

# Seeds of the weight generators. Chosen with --find-seeds (the first seed from 1 whose random model
# passes decision_margins' thresholds), so that the discrete decisions in the data (greedy argmax,
# expert choice) do not flip under bf16-sized errors.
MIN_GREEDY_MARGIN = 0.1  # top-1 minus top-2 logit at every generation step (~5x bf16sim's logit error)
MIN_ROUTING_GAP = 0.05   # k-th minus (k+1)-th router logit, every token and layer (~5x bf16sim's error)
DENSE_SEED = 2
MOE_SEED = 1450

DENSE = {
    "dir": "qwen3-tiny",
    "seed": DENSE_SEED,
    "config": {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": 512,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "intermediate_size": 128,
        "hidden_act": "silu",
        "max_position_embeddings": 40960,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "rms_norm_eps": 1e-06,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
    },
}

MOE = {
    "dir": "qwen3-tiny-moe",
    "seed": MOE_SEED,
    "config": {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "vocab_size": 512,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "output_router_logits": False,
        "router_aux_loss_coef": 0.001,
        "hidden_act": "silu",
        "max_position_embeddings": 40960,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "rms_norm_eps": 1e-06,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
    },
}


# ---------------------------------------------------------------------------------------------
# Safetensors, by hand: [u64 LE header length][JSON header][data]. Tensors are laid out in name
# order; the header is padded with spaces to a multiple of 8 bytes.

def to_bf16_bits(t):
    """fp32 tensor -> its bf16 rounding (round to nearest even, torch's conversion) as raw bytes."""
    return t.detach().to(torch.bfloat16).contiguous().view(torch.int16).numpy().astype("<i2").tobytes()


def to_f32_bytes(t):
    return t.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()


def safetensors_bytes(tensors, dtype, metadata):
    """tensors: {name: fp32 tensor}; dtype "BF16" or "F32" for all of them."""
    header = {"__metadata__": metadata}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        data = to_bf16_bits(t) if dtype == "BF16" else to_f32_bytes(t)
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def read_safetensors(data):
    """bytes -> {name: fp32 tensor}. Decodes BF16 by shifting the bits into the top half of an fp32,
    a path independent of torch's bf16 conversion used when writing."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        begin, end = e["data_offsets"]
        raw = bytearray(data[base + begin:base + end])
        numel = math.prod(e["shape"])
        if e["dtype"] == "BF16":
            assert end - begin == 2 * numel, name
            bits = torch.frombuffer(raw, dtype=torch.int16).to(torch.int32) & 0xFFFF
            t = (bits << 16).view(torch.float32)
        elif e["dtype"] == "F32":
            assert end - begin == 4 * numel, name
            t = torch.frombuffer(raw, dtype=torch.float32).clone()
        else:
            raise ValueError(f"{name}: unexpected dtype {e['dtype']}")
        out[name] = t.reshape(e["shape"])
    return out


# ---------------------------------------------------------------------------------------------
# Random weights. Matrices: normal with std 0.8 / sqrt(in_features) (0.1 for a 64-wide input), so
# that every projection of a unit-RMS input has entries of RMS ~0.8. Norm weights: 1 + 0.1 normal.
# Embedding: std 0.1. Router: std 1 / sqrt(hidden), router logits of RMS ~1.

def make_weights(cfg, gen):
    h = cfg["hidden_size"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    vocab = cfg["vocab_size"]

    def matrix(out_f, in_f, std=None):
        std = 0.8 / math.sqrt(in_f) if std is None else std
        return torch.randn(out_f, in_f, generator=gen) * std

    def norm(n):
        return 1.0 + 0.1 * torch.randn(n, generator=gen)

    w = {"model.embed_tokens.weight": torch.randn(vocab, h, generator=gen) * 0.1}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(h)
        w[p + "self_attn.q_proj.weight"] = matrix(nh * hd, h)
        w[p + "self_attn.k_proj.weight"] = matrix(nkv * hd, h)
        w[p + "self_attn.v_proj.weight"] = matrix(nkv * hd, h)
        w[p + "self_attn.o_proj.weight"] = matrix(h, nh * hd)
        w[p + "self_attn.q_norm.weight"] = norm(hd)
        w[p + "self_attn.k_norm.weight"] = norm(hd)
        w[p + "post_attention_layernorm.weight"] = norm(h)
        if cfg["model_type"] == "qwen3_moe":
            f = cfg["moe_intermediate_size"]
            w[p + "mlp.gate.weight"] = matrix(cfg["num_experts"], h, std=1.0 / math.sqrt(h))
            for e in range(cfg["num_experts"]):
                q = p + f"mlp.experts.{e}."
                w[q + "gate_proj.weight"] = matrix(f, h)
                w[q + "up_proj.weight"] = matrix(f, h)
                w[q + "down_proj.weight"] = matrix(h, f)
        else:
            f = cfg["intermediate_size"]
            w[p + "mlp.gate_proj.weight"] = matrix(f, h)
            w[p + "mlp.up_proj.weight"] = matrix(f, h)
            w[p + "mlp.down_proj.weight"] = matrix(h, f)
    w["model.norm.weight"] = norm(h)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = matrix(vocab, h)
    # The checkpoint is bf16: from here on every weight is its bf16 value (held in fp32).
    return {k: v.to(torch.bfloat16).to(torch.float32) for k, v in w.items()}


# ---------------------------------------------------------------------------------------------
# The reference model.

def bf16_round(x):
    return x.to(torch.bfloat16).to(x.dtype)


class Qwen3Reference:
    """Qwen3 / Qwen3-MoE forward pass, written for clarity, not speed.

    dtype: the compute dtype (weights and activations), torch.float32 or torch.float64.
    bf16_activations: round every matrix-multiply output to bf16 (see mm); otherwise nothing is
    rounded after the weights.
    """

    def __init__(self, cfg, weights, dtype=torch.float32, bf16_activations=False):
        self.cfg = cfg
        self.w = {k: v.to(dtype) for k, v in weights.items()}
        self.dtype = dtype
        self.bf16 = bf16_activations
        self.eps = cfg["rms_norm_eps"]
        self.n_heads = cfg["num_attention_heads"]
        self.n_kv = cfg["num_key_value_heads"]
        self.head_dim = cfg["head_dim"]
        self.moe = cfg["model_type"] == "qwen3_moe"

    # The bf16-simulated variant rounds exactly here: the output of every matrix multiply (each
    # Linear: q/k/v/o_proj, gate/up/down_proj of the MLP or of an expert, the router, lm_head; and
    # the attention probabilities times V, per head). Products are accumulated in the compute dtype
    # and rounded once. Not rounded: the embedding lookup (already bf16), norm outputs, RoPE, the
    # attention scores Q K^T and softmax, SiLU and the gate*up product, the router softmax and top-k
    # weights, expert-weighted sums, and the residual stream.
    def mm(self, a, b):
        y = a @ b
        return bf16_round(y) if self.bf16 else y

    def linear(self, x, name):
        return self.mm(x, self.w[name].t())  # weights are [out_features, in_features]

    def rms_norm(self, x, weight):
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * weight

    def rope_cos_sin(self, n_tokens):
        # Angles pos * theta^(-2i/d) for i < d/2, computed in float64, each used for the pair
        # (i, i + d/2) ("rotate_half" layout).
        d = self.head_dim
        theta = self.cfg["rope_theta"]
        inv_freq = torch.tensor([theta ** (-2.0 * i / d) for i in range(d // 2)], dtype=torch.float64)
        pos = torch.arange(n_tokens, dtype=torch.float64)
        angles = torch.outer(pos, inv_freq)
        angles = torch.cat([angles, angles], dim=-1)  # [tokens, head_dim]
        return torch.cos(angles).to(self.dtype), torch.sin(angles).to(self.dtype)

    @staticmethod
    def rotate_half(x):
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([-x2, x1], dim=-1)

    def apply_rope(self, x, cos, sin):
        # x: [tokens, heads, head_dim]; cos, sin: [tokens, head_dim], the same for every head.
        return x * cos[:, None, :] + self.rotate_half(x) * sin[:, None, :]

    def attention(self, q, k, v):
        # q: [T, n_heads, d]; k, v: [T, n_kv, d]. Causal, GQA: query head h reads kv head
        # h // (n_heads / n_kv). Returns [T, n_heads * d], heads concatenated.
        T, d = q.shape[0], self.head_dim
        group = self.n_heads // self.n_kv
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        outs = []
        for h in range(self.n_heads):
            kv = h // group
            scores = (q[:, h, :] @ k[:, kv, :].t()) / math.sqrt(d)  # [T, T], not rounded
            scores = scores.masked_fill(~causal, float("-inf"))
            probs = torch.softmax(scores, dim=-1)
            outs.append(self.mm(probs, v[:, kv, :]))
        return torch.cat(outs, dim=-1)

    def swiglu(self, x, prefix):
        gate = self.linear(x, prefix + "gate_proj.weight")
        up = self.linear(x, prefix + "up_proj.weight")
        return self.linear(torch.nn.functional.silu(gate) * up, prefix + "down_proj.weight")

    def moe_mlp(self, x, prefix, rec):
        k = self.cfg["num_experts_per_tok"]
        logits = self.linear(x, prefix + "gate.weight")  # [T, experts]
        probs = torch.softmax(logits, dim=-1)
        top_p, top_i = torch.topk(probs, k, dim=-1)  # sorted, largest first
        if self.cfg["norm_topk_prob"]:
            top_p = top_p / top_p.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x)
        for t in range(x.shape[0]):
            for j in range(k):
                e = int(top_i[t, j])
                out[t] += top_p[t, j] * self.swiglu(x[t:t + 1], prefix + f"experts.{e}.")[0]
        rec["router_logits"] = logits
        rec["router_probs"] = probs
        rec["topk_ids"] = top_i.to(self.dtype)
        rec["topk_weights"] = top_p
        return out

    def forward(self, ids):
        """ids: list of token ids. Returns {name: tensor} of everything recorded; layer 0's
        intermediates are recorded under "layers.0.<what>"."""
        T = len(ids)
        rec = {}
        x = self.w["model.embed_tokens.weight"][torch.tensor(ids)]
        rec["embeddings"] = x
        cos, sin = self.rope_cos_sin(T)
        for i in range(self.cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            r = {}
            # --- attention block
            a = self.rms_norm(x, self.w[p + "input_layernorm.weight"])
            r["attn_norm"] = a
            q = self.linear(a, p + "self_attn.q_proj.weight")
            k = self.linear(a, p + "self_attn.k_proj.weight")
            v = self.linear(a, p + "self_attn.v_proj.weight")
            r["q_proj"], r["k_proj"], r["v_proj"] = q, k, v
            q = q.reshape(T, self.n_heads, self.head_dim)
            k = k.reshape(T, self.n_kv, self.head_dim)
            v = v.reshape(T, self.n_kv, self.head_dim)
            q = self.rms_norm(q, self.w[p + "self_attn.q_norm.weight"])  # per head, over head_dim
            k = self.rms_norm(k, self.w[p + "self_attn.k_norm.weight"])
            r["q_norm"], r["k_norm"] = q, k
            q = self.apply_rope(q, cos, sin)
            k = self.apply_rope(k, cos, sin)
            r["q_rope"], r["k_rope"] = q, k
            ctx = self.attention(q, k, v)
            r["attn_context"] = ctx
            o = self.linear(ctx, p + "self_attn.o_proj.weight")
            r["o_proj"] = o
            x = x + o
            r["attn_residual"] = x
            # --- MLP block
            m_in = self.rms_norm(x, self.w[p + "post_attention_layernorm.weight"])
            r["mlp_norm"] = m_in
            if self.moe:
                m = self.moe_mlp(m_in, p + "mlp.", r)
            else:
                m = self.swiglu(m_in, p + "mlp.")
            r["mlp"] = m
            x = x + m
            r["output"] = x
            if i == 0:
                rec.update({f"layers.0.{name}": t for name, t in r.items()})
            else:
                rec[f"layers.{i}.output"] = x
                if self.moe:  # routing of every layer: where an expert choice can flip
                    rec[f"layers.{i}.topk_ids"] = r["topk_ids"]
                    rec[f"layers.{i}.router_probs"] = r["router_probs"]
        x = self.rms_norm(x, self.w["model.norm.weight"])
        rec["final_norm"] = x
        head = "model.embed_tokens.weight" if self.cfg["tie_word_embeddings"] else "lm_head.weight"
        rec["logits"] = self.linear(x, head)
        return rec

    def generate(self, prompt, n_new):
        """Greedy decoding, recomputing the whole sequence each step. argmax ties go to the lowest
        id. Returns (new ids, [n_new, vocab] logits: row j is the last position's logits of step j,
        the ones that chose new id j)."""
        ids = list(prompt)
        rows = []
        for _ in range(n_new):
            last = self.forward(ids)["logits"][-1]
            rows.append(last)
            ids.append(int(torch.argmax(last)))
        return ids[len(prompt):], torch.stack(rows)

    def run(self, prompt, n_new):
        rec = self.forward(prompt)
        new_ids, gen_logits = self.generate(prompt, n_new)
        rec["input_ids"] = torch.tensor(prompt, dtype=self.dtype)
        rec["generated_ids"] = torch.tensor(new_ids, dtype=self.dtype)
        rec["generated_logits"] = gen_logits
        rec["decode_logits"] = gen_logits[-1]
        return rec


def decision_margins(cfg, weights):
    """(smallest greedy margin, smallest routing gap) of the fp32 reference: the top-1 minus top-2
    logit at each generation step, and for MoE the k-th minus (k+1)-th router logit (the log of the
    probability ratio) at every position of the longest generation input and every layer; inf for a
    dense model."""
    m = Qwen3Reference(cfg, weights)
    new_ids, gen_logits = m.generate(PROMPT, NEW_TOKENS)
    top2 = torch.topk(gen_logits, 2, dim=-1).values
    greedy = (top2[:, 0] - top2[:, 1]).min().item()
    routing = math.inf
    if m.moe:
        rec = m.forward(PROMPT + new_ids[:-1])
        k = cfg["num_experts_per_tok"]
        for i in range(cfg["num_hidden_layers"]):
            s = torch.sort(rec[f"layers.{i}.router_probs"].double(), dim=-1, descending=True).values
            routing = min(routing, (s[:, k - 1].log() - s[:, k].log()).min().item())
    return greedy, routing


def find_seed(model, tries=2000):
    for seed in range(1, tries + 1):
        weights = make_weights(model["config"], torch.Generator().manual_seed(seed))
        greedy, routing = decision_margins(model["config"], weights)
        if greedy >= MIN_GREEDY_MARGIN and routing >= MIN_ROUTING_GAP:
            return seed, greedy, routing
    raise SystemExit(f"{model['dir']}: no seed in 1..{tries} passes the thresholds")


# ---------------------------------------------------------------------------------------------
# Descriptions for the README (shapes are filled in from the tensors).

def describe(name, cfg):
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    d = {
        "input_ids": "the prompt token ids (exact small integers; F32 because the C++ reader takes no integer dtypes)",
        "embeddings": "embedding lookup: rows of model.embed_tokens.weight (bf16 values)",
        "layers.0.attn_norm": "input_layernorm output (RMSNorm of the embeddings)",
        "layers.0.q_proj": f"q_proj output, {nh} heads x {hd} concatenated (head-major)",
        "layers.0.k_proj": f"k_proj output, {nkv} kv heads x {hd}",
        "layers.0.v_proj": f"v_proj output, {nkv} kv heads x {hd}",
        "layers.0.q_norm": "q after the per-head RMSNorm (q_norm), before RoPE",
        "layers.0.k_norm": "k after the per-head RMSNorm (k_norm), before RoPE",
        "layers.0.q_rope": "q after q_norm and RoPE (positions 0..T-1)",
        "layers.0.k_rope": "k after k_norm and RoPE",
        "layers.0.attn_context": "causal GQA attention output, heads concatenated, before o_proj",
        "layers.0.o_proj": "o_proj output (the attention block's contribution to the residual)",
        "layers.0.attn_residual": "hidden state after the attention residual add (embeddings + o_proj)",
        "layers.0.mlp_norm": "post_attention_layernorm output (the MLP's input)",
        "layers.0.mlp": "MLP output before the residual add"
        + (" (sum over the top-k experts of weight x expert SwiGLU)" if cfg["model_type"] == "qwen3_moe"
           else ": down(silu(gate(x)) * up(x))"),
        "layers.0.router_logits": "router logits, mlp.gate(x) for x = layers.0.mlp_norm",
        "layers.0.router_probs": "softmax of the router logits (fp32) over all experts",
        "layers.0.topk_ids": "chosen experts per token, by decreasing probability (ids as F32)",
        "layers.0.topk_weights": "their probabilities renormalised to sum to 1 (norm_topk_prob)",
        "final_norm": "model.norm output",
        "logits": "lm_head output" + (" (tied: model.embed_tokens.weight)" if cfg["tie_word_embeddings"] else ""),
        "generated_ids": f"{NEW_TOKENS} greedy tokens continuing the prompt (argmax, ties to the lowest id; F32)",
        "generated_logits": "row j: logits at the last position of the sequence prompt + generated_ids[:j], "
        "whose argmax is generated_ids[j]",
        "decode_logits": f"= generated_logits[{NEW_TOKENS - 1}]: the last decode step (input token "
        f"generated_ids[{NEW_TOKENS - 2}] at position {len(PROMPT) + NEW_TOKENS - 2})",
    }
    for i in range(1, cfg["num_hidden_layers"]):
        d[f"layers.{i}.topk_ids"] = f"layer {i}'s chosen experts (as layers.0.topk_ids)"
        d[f"layers.{i}.router_probs"] = f"layer {i}'s router probabilities"
    if name.startswith("layers.") and name.endswith(".output"):
        i = int(name.split(".")[1])
        return f"hidden state after layer {i} (residual stream)"
    return d[name]


# ---------------------------------------------------------------------------------------------
# Error statistics between two runs of the same tensor.

def stats(test, ref):
    """max |ref|, max abs error, max elementwise rel. error over elements with |ref| >= 0.1 max |ref|,
    RMS error / RMS ref."""
    test, ref = test.double(), ref.double()
    err = (test - ref).abs()
    amax = ref.abs().max().item()
    big = ref.abs() >= 0.1 * amax
    rel = (err[big] / ref.abs()[big]).max().item() if amax > 0 else 0.0
    rms_ref = ref.pow(2).mean().sqrt().item()
    rel_rms = err.pow(2).mean().sqrt().item() / rms_ref if rms_ref > 0 else 0.0
    return amax, err.max().item(), rel, rel_rms


def fmt(x):
    return "0" if x == 0 else f"{x:.2e}"


# ---------------------------------------------------------------------------------------------

def build(model):
    cfg = model["config"]
    torch.manual_seed(model["seed"])  # nothing else draws from it; set for good measure
    weights = make_weights(cfg, torch.Generator().manual_seed(model["seed"]))

    ref = Qwen3Reference(cfg, weights, torch.float32).run(PROMPT, NEW_TOKENS)
    sim = Qwen3Reference(cfg, weights, torch.float32, bf16_activations=True).run(PROMPT, NEW_TOKENS)
    exact = Qwen3Reference(cfg, weights, torch.float64).run(PROMPT, NEW_TOKENS)

    meta = {"format": "pt", "generator": SCRIPT}
    files = {
        "config.json": (json.dumps(cfg, indent=2, sort_keys=True) + "\n").encode("utf-8"),
        "model.safetensors": safetensors_bytes(weights, "BF16", meta),
        "reference.safetensors": safetensors_bytes(
            {**{"ref." + k: v for k, v in ref.items()}, **{"bf16sim." + k: v for k, v in sim.items()}}, "F32", meta),
    }
    files["README.md"] = readme(model, weights, ref, sim, exact, files).encode("utf-8")
    return files, weights, ref


def self_check(model, files, weights, ref):
    """Reads the written bytes back and checks them against a fresh forward pass."""
    cfg = model["config"]
    w = read_safetensors(files["model.safetensors"])
    assert sorted(w) == sorted(weights), "weight names differ after reading back"
    for k in w:
        assert torch.equal(w[k], weights[k]), f"{k}: bf16 weights differ after reading back"
    saved = read_safetensors(files["reference.safetensors"])
    greedy, routing = decision_margins(cfg, w)
    assert greedy >= MIN_GREEDY_MARGIN and routing >= MIN_ROUTING_GAP, "seed no longer passes; run --find-seeds"
    again = Qwen3Reference(cfg, w, torch.float32).forward(PROMPT)
    assert torch.equal(again["logits"], saved["ref.logits"]), "logits from the read-back weights differ"
    assert torch.equal(saved["ref.input_ids"], torch.tensor(PROMPT, dtype=torch.float32))
    new_ids = [int(i) for i in saved["ref.generated_ids"]]
    seq = PROMPT + new_ids
    for j in range(NEW_TOKENS):  # each generated token is the argmax of its saved logits row
        row = Qwen3Reference(cfg, w, torch.float32).forward(seq[:len(PROMPT) + j])["logits"][-1]
        assert torch.equal(row, saved["ref.generated_logits"][j]), f"generation step {j} differs"
        assert int(torch.argmax(row)) == new_ids[j]
    if cfg["model_type"] == "qwen3_moe":
        for variant in ("ref.", "bf16sim."):
            s = saved[variant + "layers.0.topk_weights"].double().sum(dim=-1)
            assert torch.allclose(s, torch.ones_like(s), rtol=0, atol=1e-6), f"{variant} top-k weights do not sum to 1"
            ids = saved[variant + "layers.0.topk_ids"]
            assert torch.equal(ids, ids.round())
            for t in range(ids.shape[0]):  # the k most probable experts, distinct, most probable first
                e = [int(i) for i in ids[t]]
                p = saved[variant + "layers.0.router_probs"][t]
                rest = [p[i] for i in range(len(p)) if i not in e]
                assert len(set(e)) == len(e) and all(p[e[j]] >= p[e[j + 1]] for j in range(len(e) - 1))
                assert all(p[e[-1]] >= r for r in rest)
                want = p[e] / p[e].sum()
                assert torch.allclose(saved[variant + "layers.0.topk_weights"][t], want, rtol=1e-6, atol=0)
    # The config parses as the C++ side expects: the keys parse_model_config requires are there.
    c = json.loads(files["config.json"])
    for key in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        assert key in c, key
    assert "intermediate_size" in c or c["model_type"] == "qwen3_moe"


def readme(model, weights, ref, sim, exact, files):
    cfg = model["config"]
    moe = cfg["model_type"] == "qwen3_moe"
    L = []
    title = "tiny MoE Qwen3" if moe else "tiny dense Qwen3"
    L.append(f"# {model['dir']}: golden data for Qwen3 parity tests ({title})")
    L.append("")
    L.append(f"Generated by `{SCRIPT}` (do not edit by hand):")
    L.append("")
    L.append("```sh")
    L.append("apt-get install python3-torch          # Debian's PyTorch, importable from /usr/bin/python3")
    L.append(f"/usr/bin/python3 {SCRIPT}          # rewrites tests/data/qwen3-tiny*/")
    L.append(f"/usr/bin/python3 {SCRIPT} --check  # compares them with a fresh run")
    L.append("```")
    L.append("")
    L.append(f"torch {torch.__version__}, one CPU thread, weight seed {model['seed']}. The reference is the script's own "
             "plain-PyTorch Qwen3 (no transformers package).")
    L.append("")
    L.append("## Files")
    L.append("")
    L.append("| file | bytes | what |")
    L.append("|---|---|---|")
    L.append(f"| `config.json` | {len(files['config.json'])} | Hugging Face style config; "
             "`ppu::load_model_config(\"tests/data/" + model["dir"] + "\")` reads it |")
    L.append(f"| `model.safetensors` | {len(files['model.safetensors'])} | {len(weights)} BF16 tensors, "
             "Hugging Face Qwen3 names |")
    L.append(f"| `reference.safetensors` | {len(files['reference.safetensors'])} | F32 reference tensors (below) |")
    L.append("")
    L.append("## Model")
    L.append("")
    shape = (f"vocab {cfg['vocab_size']}, hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, "
             f"{cfg['num_attention_heads']} query heads, {cfg['num_key_value_heads']} kv heads, head_dim "
             f"{cfg['head_dim']} (attention width {cfg['num_attention_heads'] * cfg['head_dim']} != hidden), ")
    if moe:
        shape += (f"{cfg['num_experts']} experts, top-{cfg['num_experts_per_tok']}, expert width "
                  f"{cfg['moe_intermediate_size']}, norm_topk_prob, ")
    else:
        shape += f"SwiGLU width {cfg['intermediate_size']}, "
    shape += (f"rope theta {cfg['rope_theta']:g}, RMSNorm eps {cfg['rms_norm_eps']:g}, "
              + ("tied embeddings (no lm_head.weight)." if cfg["tie_word_embeddings"] else "untied lm_head."))
    L.append(shape)
    L.append("")
    L.append("Random weights (seeded): matrices normal with std 0.8/sqrt(in_features) (router: 1/sqrt(hidden)), "
             "norm weights 1 + 0.1 normal, embedding std 0.1, each rounded to bf16 (round to nearest even). "
             "Weight names: `model.embed_tokens.weight`, `model.layers.{i}.input_layernorm.weight`, "
             "`.self_attn.{q,k,v,o}_proj.weight`, `.self_attn.{q,k}_norm.weight`, "
             "`.post_attention_layernorm.weight`, "
             + ("`.mlp.gate.weight` (router, [experts, hidden]), `.mlp.experts.{e}.{gate,up,down}_proj.weight`, "
                if moe else "`.mlp.{gate,up,down}_proj.weight`, ")
             + "`model.norm.weight`" + ("" if cfg["tie_word_embeddings"] else ", `lm_head.weight`")
             + ". Linear weights are [out_features, in_features].")
    L.append("")
    L.append("## Forward pass")
    L.append("")
    L.append("Prompt: " + ", ".join(map(str, PROMPT)) + f" ({len(PROMPT)} tokens, positions 0..{len(PROMPT) - 1}).")
    L.append("")
    L.append("Per layer: x += o_proj(attn(rope(q_norm(q_proj(n))), rope(k_norm(k_proj(n))), v_proj(n))) with "
             "n = input_layernorm(x); then x += mlp(post_attention_layernorm(x)). RMSNorm: "
             "x * rsqrt(mean(x^2) + eps) * weight; q_norm/k_norm act on each head's head_dim vector. RoPE: "
             "angles pos * theta^(-2i/d) (i < d/2, computed in float64, cos/sin then cast to the compute "
             "dtype), out = x cos + rotate_half(x) sin, rotate_half(x) = cat(-x2, x1) (pairs i, i + d/2). "
             "Attention: causal, query head h uses kv head h // (heads / kv_heads), scale 1/sqrt(head_dim), "
             "softmax in the compute dtype. "
             + ("MoE: probs = softmax(mlp.gate(x)); the top-k probabilities (torch.topk, largest first) are "
                "divided by their sum; output = sum_k w_k * expert_k(x), each expert down(silu(gate(x)) * up(x)). "
                if moe else "MLP: down(silu(gate(x)) * up(x)). ")
             + "Then model.norm and lm_head.")
    L.append("")
    L.append("Every tensor appears twice in `reference.safetensors`:")
    L.append("")
    L.append("- `ref.<name>`: **the reference.** fp32 math on the bf16 weights upcast to fp32; nothing is "
             "rounded after the weights. This is what C++ kernels are compared against.")
    L.append("- `bf16sim.<name>`: the same code with the output of every matrix multiply rounded to bf16 "
             "(round to nearest even) right after it is computed in fp32: q/k/v/o_proj, the MLP's (or each "
             "expert's) gate/up/down_proj, the router (mlp.gate), lm_head, and per head the attention "
             "probabilities times V. Not rounded: the embedding lookup (already bf16), RMSNorm outputs, "
             "RoPE, the scores Q K^T and their softmax, SiLU and gate*up, router softmax / top-k weights, "
             "the expert-weighted sum, the residual stream. It models bf16 matmul kernels that accumulate "
             "in fp32 and store bf16; it is a guide to tolerances, not a second reference.")
    L.append("")
    L.append("| name | shape | what |")
    L.append("|---|---|---|")
    for name in ref:
        L.append(f"| `{name}` | {list(ref[name].shape)} | {describe(name, cfg)} |")
    L.append("")
    L.append("T = " + str(len(PROMPT)) + " prompt tokens. Per-head tensors are [tokens, heads, head_dim]; "
             "flattening the last two gives the projection layout (head h at columns h*head_dim ...).")
    L.append("")
    L.append("Greedy continuation (ref): " + ", ".join(str(int(i)) for i in ref["generated_ids"]) + ". "
             "bf16sim: " + ", ".join(str(int(i)) for i in sim["generated_ids"]) + ".")
    L.append("")

    # --- tolerances
    L.append("## Observed errors")
    L.append("")
    L.append("Per tensor, bf16sim against ref (what a bf16-activation pipeline should expect), and the fp32 "
             "reference against the same code run in float64 (what an fp32 pipeline with a different "
             "summation order should expect; that run is not saved). max rel: max |a - b| / |b| over the "
             "elements with |b| >= 0.1 max |b| (near-zero elements excluded); rel RMS: RMS(a - b) / RMS(b).")
    L.append("")
    L.append("| tensor | max abs (ref) | bf16sim max abs err | bf16sim max rel | bf16sim rel RMS | fp32 vs fp64 max abs err | fp32 vs fp64 rel RMS |")
    L.append("|---|---|---|---|---|---|---|")
    same_exact = torch.equal(ref["generated_ids"], exact["generated_ids"])
    for name in ref:
        if name in ("input_ids",) or name.endswith("topk_ids") or name == "generated_ids":
            continue
        if name.startswith("generated") or name == "decode_logits":
            # the sequences may differ; only comparable where the inputs agree
            if not torch.equal(ref["generated_ids"], sim["generated_ids"]):
                continue
        a, e_abs, e_rel, e_rms = stats(sim[name], ref[name])
        x_abs, x_rms = "n/a", "n/a"  # when the float64 run generated other tokens
        if not (name.startswith("generated") or name == "decode_logits") or same_exact:
            _, x_abs, _, x_rms = stats(ref[name], exact[name])
            x_abs, x_rms = fmt(x_abs), fmt(x_rms)
        L.append(f"| `{name}` | {fmt(a)} | {fmt(e_abs)} | {fmt(e_rel)} | {fmt(e_rms)} | {x_abs} | {x_rms} |")
    L.append("")

    # --- discrete decisions: greedy argmax and expert choice, and how close they were
    notes = []
    gl = ref["generated_logits"]
    top2 = torch.topk(gl, 2, dim=-1).values
    margins = (top2[:, 0] - top2[:, 1]).tolist()
    notes.append(f"Weight seed {model['seed']} is the first from 1 whose model has every greedy margin >= "
                 f"{MIN_GREEDY_MARGIN}" + (f" and every routing gap >= {MIN_ROUTING_GAP}" if moe else "")
                 + f" (`--find-seeds`), so that bf16-sized errors do not flip a discrete decision.")
    notes.append("Greedy margins (ref, top-1 minus top-2 logit, per step): "
                 + ", ".join(f"{m:.3f}" for m in margins) + f"; smallest {min(margins):.3f}.")
    same_gen = torch.equal(ref["generated_ids"], sim["generated_ids"])
    notes.append("bf16sim generates " + ("the same tokens." if same_gen else "**different** tokens "
                 "(the generation rows of the table are left out)."))
    same_exact = torch.equal(ref["generated_ids"], exact["generated_ids"])
    notes.append("The float64 run generates " + ("the same tokens." if same_exact else "**different** tokens."))
    if moe:
        for i in range(cfg["num_hidden_layers"]):
            p = ref[f"layers.{i}.router_probs"].double()
            k = cfg["num_experts_per_tok"]
            s = torch.sort(p, dim=-1, descending=True).values
            gap = (s[:, k - 1] - s[:, k]).min().item()
            gap_logit = (s[:, k - 1].log() - s[:, k].log()).min().item()
            same = torch.equal(ref[f"layers.{i}.topk_ids"], sim[f"layers.{i}.topk_ids"])
            same_x = torch.equal(ref[f"layers.{i}.topk_ids"], exact[f"layers.{i}.topk_ids"])
            notes.append(f"Layer {i} routing over the prompt: smallest gap between the k-th and (k+1)-th "
                         f"router probability {gap:.4f} (router logits {gap_logit:.4f}); bf16sim chooses "
                         + ("the same experts" if same else "**different** experts")
                         + ", float64 " + ("the same." if same_x else "**different** ones."))
    for n in notes:
        L.append("- " + n)
    L.append("")
    worst_sim = max(stats(sim[n], ref[n])[3] for n in ref if n in ("logits", "final_norm") or n.endswith(".output"))
    worst_x = max(stats(ref[n], exact[n])[1] for n in ref if not n.endswith("ids") and n in exact
                  and (same_exact or not (n.startswith("generated") or n == "decode_logits")))
    L.append("How to read it (for choosing test tolerances):")
    L.append("")
    L.append(f"- An fp32 pipeline (fp32 activations, bf16 weights upcast) should match `ref.*` to about "
             f"1e-6: the float64 run differs from it by at most {worst_x:.1e} absolute anywhere. "
             "A tolerance of 1e-4 absolute on O(1) tensors leaves a wide margin for other summation "
             "orders, fused kernels and library exp/rsqrt; greedy tokens and expert ids must match exactly.")
    L.append(f"- A pipeline storing matmul outputs in bf16 should see errors like the bf16sim columns: one bf16 "
             f"rounding per matmul (at most 2^-8 = 3.9e-3 relative each), compounded through the layers to a rel RMS of "
             f"up to {worst_sim:.1e} on the hidden states and logits here. One that also rounds RMSNorm "
             "and RoPE outputs and the residual stream to bf16 should expect up to about 2x more (seen when "
             "trying such a variant while writing the script). Compare such a path "
             "by rel RMS (e.g. <= 2e-2) or max abs error against a few times the bf16sim column, not "
             "elementwise relative error (near-zero elements).")
    L.append("- For decoding in bf16, prefer teacher forcing: feed `ref.input_ids` + `ref.generated_ids` and "
             "compare each step's last-position logits with the rows of `ref.generated_logits`; the greedy "
             "margins above are what an argmax comparison can survive.")
    L.append("")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare a fresh run with the files on disk; write nothing")
    ap.add_argument("--find-seeds", action="store_true",
                    help="print the first weight seeds whose models pass the margin thresholds; write nothing")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.find_seeds:
        for model in (DENSE, MOE):
            seed, greedy, routing = find_seed(model)
            print(f"{model['dir']}: seed {seed} (greedy margin {greedy:.4f}, routing gap {routing:.4f})")
        return 0
    ok = True
    for model in (DENSE, MOE):
        files, weights, ref = build(model)
        self_check(model, files, weights, ref)
        out = os.path.join(REPO, "tests", "data", model["dir"])
        rel = os.path.relpath(out, REPO)
        if args.check:
            for name, data in files.items():
                path = os.path.join(out, name)
                have = open(path, "rb").read() if os.path.exists(path) else None
                if have != data:
                    print(f"{rel}/{name}: differs from a fresh run")
                    ok = False
            continue
        os.makedirs(out, exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(out, name), "wb") as f:
                f.write(data)
            print(f"wrote {rel}/{name} ({len(data)} bytes)")
    if args.check:
        print("up to date" if ok else "out of date: rerun without --check")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
