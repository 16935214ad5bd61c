#!/usr/bin/env bash
# The Hugging Face tests (tests/test_hub.py, tests/test_docs.py) against transformers 4 (pyproject's `hf` extra allows
# >= 4.40; the default environment has 5): transformers 4.57.6 and its own huggingface-hub and tokenizers are installed
# into a folder of their own (default /tmp/symopt-transformers4) that shadows the environment's, nothing else changes.
# Usage: bash scripts/hub-transformers4.sh [folder] [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
target="${1:-/tmp/symopt-transformers4}"
shift || true
if [ ! -d "$target/transformers" ]; then
    .venv/bin/pip install -q --target "$target" "transformers==4.57.6"
    # (the environment's numpy and packaging stay: a second copy would shadow the ones torch was built against)
    rm -rf "$target"/numpy "$target"/numpy.libs "$target"/numpy-*.dist-info "$target"/packaging "$target"/packaging-*.dist-info
fi
PYTHONPATH="$target" exec .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_hub.py tests/test_docs.py "$@"
