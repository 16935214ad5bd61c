#!/usr/bin/env bash
# The GPU measurements, one stage per call (a lent device runs at most 10 minutes per command):
#
#   bash scripts/gpu.sh tests       # pytest -m gpu (every test that needs CUDA)
#   bash scripts/gpu.sh floor       # iteration time vs two mat-vecs, eager and compiled, on CUDA
#   bash scripts/gpu.sh families    # Lasso / group lasso up to d = 1e5 (and sparse X 1e6): DCS on CUDA vs CPU baselines
#   bash scripts/gpu.sh families32  # the same sizes with DCS in float32 (certificate in float64) vs skglm
#   bash scripts/gpu.sh others      # logistic-L1, equality LS, completion (to 2000x2000), hard rank on CUDA
#   bash scripts/gpu.sh overhead    # training-step time and peak memory, MLP and CNN, budgets too, on CUDA
#   bash scripts/gpu.sh profile     # where a budget's steps spend their time on CUDA (kernels, operators)
#   bash scripts/gpu.sh solve_profile  # one Lasso / group lasso solve by DCS and by the proximal method on CUDA:
#                                   # host synchronisations by line, operators and kernels by self time
#   bash scripts/gpu.sh session     # one lease's worth (~7 min): tests, overhead, profile, solve_profile,
#                                   # each under its own time limit
#
# It uses the machine's own python and torch (no virtual environment: the device image has CUDA
# torch, numpy, scipy, scikit-learn). cvxpy, geoopt and skglm come from wheels copied into .whl/
# (ignored by git; see ../shared/gpu-wheels/README.md), installed into /tmp/site. Each stage writes its
# output to $OUT/<stage>.txt (or ./gpu-results/ without $OUT), with nvidia-smi's line at the top.
# DEVICE=cpu runs the same stages on a CPU, and QUICK=1 at the smallest sizes (to check the script itself).
set -euo pipefail
export PYTHONUNBUFFERED=1  # a stage stopped at its limit keeps what it printed
cd "$(dirname "$0")/.."
stage="${1:?usage: bash scripts/gpu.sh tests|floor|families|families32|families_baselines|others|overhead|profile|solve_profile|session}"
device="${DEVICE:-cuda}"
out="${OUT:-gpu-results}"
mkdir -p "$out"
python="${PYTHON:-python3}"
quick=(); overhead_quick=()
if [ -n "${QUICK:-}" ]; then quick=(--quick); overhead_quick=(--repeats 1 --steps 3); fi

if [ "$stage" = session ]; then
    # A lent device gives a session 15 minutes, its start included: the stages that matter most first,
    # each stopped at its limit (what it printed stays in $out/STAGE.txt), so one call brings back all.
    # (families_baselines, the first lease's last stage, is recorded in RESULTS.md: the DCS solves' own
    # profile replaces it, to say why the proximal method was 3-4x faster on the GPU)
    for limited in "tests 150" "overhead 120" "profile 60" "solve_profile 90"; do
        set -- $limited
        timeout "$2" bash "$0" "$1" || echo "stage $1 ended with status $? (124: stopped at its ${2} s limit)"
    done
    exit 0
fi

if compgen -G ".whl/*.whl" > /dev/null; then
    [ -d /tmp/site/cvxpy ] || "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"

log="$out/$stage.txt"
{
    echo "# scripts/gpu.sh $stage on $(hostname), $(date -u +%Y-%m-%dT%H:%MZ), device $device"
    if [ "$device" = cuda ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; fi
    "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
} > "$log"

run() { echo "\$ $*" >> "$log"; "$@" 2>&1 | tee -a "$log"; }

case "$stage" in
    tests)
        run "$python" -m pytest -q -p no:cacheprovider -m gpu tests ;;
    floor)
        run "$python" -m benchmarks.floor --device "$device" "${quick[@]}"
        run "$python" -m benchmarks.floor --device "$device" --dtype float32 "${quick[@]}" ;;
    families)
        run "$python" -m benchmarks.families --device "$device" --families lasso,group_lasso,lasso_sparse_x --large \
            --slow 10 --figures "$out/figures" "${quick[@]}" ;;
    families32)
        run "$python" -m benchmarks.families --device "$device" --dtype float32 --solvers dcs,skglm \
            --families lasso,group_lasso,lasso_sparse_x --large --slow 10 "${quick[@]}" ;;
    others)
        run "$python" -m benchmarks.families --device "$device" --families logistic_l1,equality_ls,matrix_completion,hard_rank \
            --cvxpy-max 3000 --slow 10 --figures "$out/figures" "${quick[@]}"
        if [ -z "${QUICK:-}" ]; then
            run "$python" -m benchmarks.families --device "$device" --families matrix_completion --large-only --solvers dcs --slow 100
        fi ;;
    families_baselines)  # the families stage without cvxpy (minutes at these sizes), medians of 3
        run "$python" -m benchmarks.families --device "$device" --families lasso,group_lasso --large \
            --solvers dcs,sklearn,skglm,projected --slow 10 "${quick[@]}" ;;
    profile)  # the budgets' cost on a GPU was their readings' kernels (RESULTS.md, "On a GPU"): which ones
        run "$python" -m benchmarks.overhead --device "$device" --profile "sparse(density=0.1)"
        run "$python" -m benchmarks.overhead --device "$device" --profile "low_rank(target_rank=16)" ;;
    solve_profile)  # issue 22 on a GPU: why DCS lost to the proximal method from 5000x10000 up (RESULTS.md)
        if [ -n "${QUICK:-}" ]; then sizes=(--n 200 --d 1000); else sizes=(--n 5000 --d 10000); fi
        run "$python" -m benchmarks.solve_profile --device "$device" --family lasso "${sizes[@]}"
        run "$python" -m benchmarks.solve_profile --device "$device" --family group_lasso "${sizes[@]}" ;;
    overhead)
        run "$python" -m benchmarks.overhead --device "$device" --budgets --repeats "${REPEATS:-5}" "${overhead_quick[@]}"
        run "$python" -m benchmarks.overhead --device "$device" --model cnn --budgets --repeats "${REPEATS:-5}" "${overhead_quick[@]}" ;;
    *)
        echo "unknown stage '$stage': choose tests, floor, families, families32, families_baselines, others, overhead, profile, solve_profile or session" >&2; exit 2 ;;
esac
