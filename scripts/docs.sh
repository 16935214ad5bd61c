#!/usr/bin/env bash
# The docs command: install what is needed, then build the site with warnings as errors (site/).
# `bash scripts/docs.sh serve` previews it at http://127.0.0.1:8000 instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NO_MKDOCS_2_WARNING=1   # (material's banner about its successor, not about this site)
if [ "${1:-build}" = serve ]; then
  exec .venv/bin/mkdocs serve
fi
exec .venv/bin/mkdocs build --strict "$@"
