#!/usr/bin/env bash
# The test command: install what is needed, then run the default suite (not slow, not gpu).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow`. (On a CUDA machine its pinned CPU torch hides the
# GPU: `bash scripts/gpu.sh tests` runs the GPU tests with the machine's own CUDA build.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
