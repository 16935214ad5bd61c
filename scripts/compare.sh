#!/usr/bin/env bash
# The main job: install what is needed, then compare DCS with cvxpy / scikit-learn / proximal
# solvers on the built-in problems. Extra arguments go to `symopt compare` (--quick, --device cuda, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/symopt compare "$@"
