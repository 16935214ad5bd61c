#!/usr/bin/env bash
# Create .venv (once) and install symopt with its test, baseline, docs and interop extras
# (transformers, safetensors, torch-pruning: optional for users, their tests skip without them).
# torch is pinned to the local CPU build through requirements/constraints-cpu.txt (an unpinned
# torch pulls GBs of CUDA).
# Re-installs only when pyproject.toml or the constraints change.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
want=$(cat pyproject.toml requirements/constraints-cpu.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.symopt-installed 2>/dev/null)" != "$want" ]; then
  echo "installing symopt and its dependencies into .venv ..." >&2
  # (the machine's pip config lists index folders that may not exist; drop only those notices)
  .venv/bin/python -m pip install -q -c requirements/constraints-cpu.txt -e ".[dev,baselines,plots,docs,hf,pruning,peers]" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  echo "$want" > .venv/.symopt-installed
fi
