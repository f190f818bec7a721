#!/usr/bin/env bash
# Installs the Debian packages OpenPPU builds against (skips apt-get when they are all present).
set -euo pipefail
PACKAGES=(build-essential cmake ccache pkg-config libfmt-dev nlohmann-json3-dev libcli11-dev libgtest-dev
          libdnnl-dev ocl-icd-opencl-dev libopenblas-dev python3)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "setup: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
