#!/usr/bin/env bash
# Regenerate every figure the docs show (PNG, checked in under docs/figures/). Each comes from a
# script in this repository; none is drawn by hand. `--benchmarks` also reruns the benchmarks that draw
# docs/figures/benchmarks/*.png and docs/figures/compression.png (tens of minutes; see benchmarks/RESULTS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
py=.venv/bin/python
$py examples/exact_threshold.py --plot docs/figures/threshold.png
$py examples/syre_identical_units.py --plot docs/figures/syre_identical.png
$py examples/syre_collapse.py --plot docs/figures/syre_collapse.png
$py examples/noether_charges.py --plot docs/figures/noether.png
$py examples/noise_collapse.py --plot docs/figures/noise_collapse.png
$py examples/permutation_threshold.py --plot docs/figures/permutation_threshold.png
$py examples/charges_in_forward.py --plot docs/figures/charges_in_forward.png
$py examples/functional_collapse.py --plot docs/figures/functional_collapse.png
$py examples/tie_curvature.py --plot docs/figures/tie_curvature.png
$py examples/diabetes_path.py --plot docs/figures/diabetes_path.png
$py examples/singular_values.py --plot docs/figures/singular_values.png
$py -m benchmarks.plasticity --strength 1e-2 --plot docs/figures/plasticity.png
out=$(mktemp -d)
.venv/bin/symopt compare --quick --problems lasso,hard_rank --out "$out" > /dev/null || true  # exit 1 = a disagreement, shown in the table
mkdir -p docs/figures/compare
cp "$out"/*.png docs/figures/compare/
rm -rf "$out"
if [ "${1:-}" = "--benchmarks" ]; then
  # the two commands of benchmarks/RESULTS.md ("Time to accuracy per family and size"), then the
  # compression benchmark (tens of minutes in all); --replot redraws the family figures from their JSON
  $py -m benchmarks.families --families lasso,group_lasso,lasso_sparse_x --large --slow 10 --figures docs/figures/benchmarks
  $py -m benchmarks.families --families logistic_l1,equality_ls,matrix_completion,hard_rank --cvxpy-max 3000 --slow 10 \
    --figures docs/figures/benchmarks
  $py -m benchmarks.compression --epochs 100 --seeds 3 --plot docs/figures/compression.png
fi
ls -l docs/figures docs/figures/compare
