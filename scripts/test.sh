#!/usr/bin/env bash
# The test command: install what is needed, then run the default suite (not slow, not gpu).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m gpu` on a CUDA machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
