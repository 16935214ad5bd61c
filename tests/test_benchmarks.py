"""The benchmark harness runs (a smoke test at the smallest size; benchmarks are not timed here)."""

import numpy as np
import pytest
import torch

import symopt

from benchmarks import (cvxpy_limits, families, floor, geoopt_optimizers, loops, overhead, small_solves, solve_profile,
                        users_data)
from symopt.problems import make_lasso
from symopt.result import Result


def test_time_to_accuracy_reads_the_history():
    r = Result(x=torch.zeros(1), objective=1.0, violation=0.0, kkt_residual=0.0, iterations=3, seconds=3.0,
               history=[(1.0, 2.0, 0.0), (2.0, 1.0 + 1e-7, 0.0), (3.0, 1.0, 0.0)])
    assert families.time_to_accuracy(r, best=1.0) == 2.0
    assert families.time_to_accuracy(r, best=0.5) is None
    no_history = Result(x=torch.zeros(1), objective=1.0, violation=0.0, kkt_residual=0.0, iterations=1, seconds=4.0)
    assert families.time_to_accuracy(no_history, best=1.0) == 4.0


def test_families_quick_lasso(capsys):
    rows = families.main(["--quick", "--families", "lasso", "--slow", "0"])
    solvers = {r["solver"] for r in rows if not r["skipped"]}
    assert {"dcs", "proximal", "sklearn[Lasso]", "skglm[Lasso]", "cvxpy[CLARABEL]"} <= solvers
    dcs = next(r for r in rows if r["solver"] == "dcs")
    assert dcs["to_target"] is not None and dcs["same"] and dcs["gap"] <= 1e-6
    assert "÷ DCS" in capsys.readouterr().out


def test_floor_quick(capsys):
    out = floor.main(["--quick"])
    assert out["floor"] > 0 and out["evaluation"] > 0
    printed = capsys.readouterr().out
    assert "two mat-vecs (floor)" in printed and "DCS evaluation, compiled" in printed


def test_cvxpy_is_stopped_at_its_wall_clock_limit():
    status, objective, seconds = cvxpy_limits.cvxpy_with_limit(make_lasso, dict(n=20, d=10, nonzeros=2),
                                                               "CLARABEL", {}, limit=0.2, memory_gb=8)
    assert status == "not finished in 0 s" and objective is None and seconds < 30


def test_the_step_memory_reads_the_allocator():
    """A step that allocates 4 MiB, then 1 MiB more, then frees both, peaks at 5 MiB above its start."""
    def step():
        a = torch.empty(1 << 20)  # 4 MiB of float32
        b = torch.empty(1 << 18)
        del a, b

    assert 5 * 2**20 <= overhead._transient_peak(step, torch.device("cpu")) < 5 * 2**20 + 2**16


def test_overhead_prints_time_storage_and_peak_memory(capsys):
    overhead.main(["--width", "16", "--batch", "4", "--steps", "1", "--repeats", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert "peak MiB" in lines[2]
    tied = next(line.split() for line in lines if line.startswith("tied"))
    assert tied[3] == "1.50×" and float(tied[4]) > 0  # the anchored tie: first copy as is + (u, v)


def test_overhead_profiles_one_row_against_the_plain_model(capsys):
    overhead.main(["--width", "64", "--batch", "4", "--profile", "sparse(density=0.1)"])
    out = capsys.readouterr().out
    assert "== plain: 40 steps" in out and "== sparse(density=0.1): 40 steps" in out
    assert "symopt.budget_reading" in out.split("== sparse(density=0.1)")[1]  # the budget's readings show up
    with pytest.raises(SystemExit, match="unknown row 'sparse\\(density=0.2\\)'"):
        overhead.main(["--profile", "sparse(density=0.2)"])


@pytest.mark.parametrize("family, solvers", [("lasso", ["dcs", "projected"]), ("group_lasso", ["dcs"])])
def test_solve_profile_times_and_profiles_each_solver(capsys, family, solvers):
    """The GPU lease's solve profile runs here on the CPU (no synchronisations to count there): each
    solver's time and status, then its operators by self time. (The proximal method's group lasso
    profile takes ~10 s under the profiler: left to the lease.)"""
    solve_profile.main(["--family", family, "--n", "40", "--d", "120", "--top", "5", "--solvers", ",".join(solvers)])
    out = capsys.readouterr().out
    for name in solvers:
        section = out.split(f"== {name}:")[1]
        assert "status optimal" in section.splitlines()[0] and "sorted by self_cpu_time_total" in section
    assert "host synchronisations" not in out


def test_geoopt_optimizers_quick():
    rows = geoopt_optimizers.main(["--quick"])
    solvers = [r["solver"] for r in rows]
    assert solvers[:2] == ["dcs", "geoopt RiemannianAdam"] and len(solvers) == 2 + len(geoopt_optimizers.LINE_SEARCHES)
    assert rows[0]["status"] == "optimal" and rows[0]["gap"] == 0.0


def test_families_runs_dcs_in_float32_with_a_float64_answer(capsys):
    rows = families.main(["--quick", "--families", "lasso", "--solvers", "dcs,projected", "--dtype", "float32"])
    dcs, projected = rows  # the projected (FISTA) baseline stays in float64
    assert dcs["status"] == "optimal" and dcs["same"] and dcs["gap"] <= 1e-9 and dcs["to_target"] is not None
    assert "DCS in float32" in capsys.readouterr().out


def test_compression_quick(capsys):
    """The compression benchmark runs every row; every pruned row ends at exactly the asked density, and
    its deployed model (the compressed export, CSR) stores exactly those non-zeros and the biases."""
    from benchmarks import compression

    compression.main(["--quick"])
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines() if line.startswith(("symopt", "magnitude", "dense"))]
    assert len(rows) == 5
    # (columns from the right: CPU s, forward ms, stored numbers, density)
    weights, biases = (64 * 256, 256 * 256, 256 * 10), 256 + 256 + 10
    assert int(rows[0][-3]) == sum(weights) + biases  # dense
    for row in rows:
        if row[0] != "dense":  # (magnitude pruning's 2-epoch schedule ends inside the run too: `pruning_epochs`)
            assert float(row[-4]) == 0.1 and int(row[-3]) == sum(round(0.1 * w) for w in weights) + biases
        assert float(row[-2]) > 0


def test_compression_from_a_trained_model_quick(capsys):
    """``--from-trained``: both methods sparsify the trained model on the trained model's schedule and
    end at exactly the asked density."""
    from benchmarks import compression

    table = compression.main(["--quick", "--from-trained", "2", "--methods", "magnitude (layer)", "symopt (layer)"])
    assert [row[0] for row in table] == ["magnitude (layer)", "symopt (layer)"]
    printed = capsys.readouterr().out
    assert "from a model trained dense for 2 epochs" in printed
    rows = [line.split() for line in printed.splitlines() if line.startswith(("symopt", "magnitude"))]
    assert [float(row[-4]) for row in rows] == [0.1, 0.1]


def test_export_architectures_quick(capsys):
    """Issue 21's CNN and the residual block shrink to Torch-Pruning's shapes (when it is installed)."""
    import argparse

    from benchmarks import export
    rows = export.architectures(argparse.Namespace(batch=4, repeats=1))
    by_name = {r[0]: r for r in rows}
    assert by_name["digits CNN, 50% channels dead"][2] == 9930
    for name, dense, ours, theirs, *_ in rows:
        assert ours < dense and (theirs is None or theirs == ours), name


def test_plasticity_quick(capsys):
    from benchmarks import plasticity
    results = plasticity.main(["--tasks", "2", "--seeds", "1", "--epochs", "1"])
    assert set(results) == {"no decay", "decay", "syre"}
    assert "acc last" in capsys.readouterr().out


def test_users_data_quick(capsys):
    users_data.main(["--quick"])
    printed = capsys.readouterr().out
    assert "sklearn lasso_path" in printed and "sklearn LassoCV" in printed and "| optimal |" in printed
    assert "| positive Lasso, diabetes raw, intercept, 0.1 λmax | optimal |" in printed


def test_users_data_summary_sorts_rows_by_family_and_data_and_lists_the_rows_outside_the_rule():
    """`users_data.summary`: the issue's rule (3× the peer at the tolerance that reaches the optimum, or 20 ms where
    the peer needs under 2 ms), a geometric mean per family and kind of data, and the misses named."""
    family = users_data.row_family
    assert family("Lasso+intercept, cancer raw, 0.01 λmax") == family("elastic net, AR(1) 300×200, 0.1 λmax") \
        == family("Lasso, sparse CSR 20000×5000 (1e+05 entries), 0.01 λmax") == "Lasso / elastic net"
    assert family("logistic-L1+intercept, wine std, class 1, 0.1 λmax") == family("logistic, digits raw 1472×64") \
        == "logistic-L1"
    assert family("positive Lasso, diabetes raw, intercept, 0.1 λmax") == "non-negative Lasso"
    assert family("Lasso path, 50 λ, generated 500×2000") == "Lasso path"
    assert family("LassoCV, 30 α × 5 folds, digits") == "LassoCV"
    assert family("group lasso, digits std, 16 groups of 4, 0.1 λmax") == "group lasso"
    assert family("multi-task Lasso, linnerud, 3 targets, 0.1 λmax") == "multi-task Lasso"
    assert family("completion, china.jpg gray 214×320, 50% observed, 0.1 λmax (rank 3)") == "completion"
    assert family("reduced-rank regression, digits raw, λ = 0.1") == "reduced-rank regression"

    def row(label, dcs, peer, calibrated=()):
        return (label, "optimal", dcs, "peer", peer, 0.0) + ((calibrated,) if calibrated != () else ())

    inside = users_data.inside_rule
    assert inside(row("Lasso, a", 0.030, 0.010)) and not inside(row("Lasso, a", 0.0301, 0.010))
    assert inside(row("Lasso, a", 0.019, 0.0019)) and not inside(row("Lasso, a", 0.021, 0.0019))
    assert not inside(row("Lasso, a", 0.021, 0.0020))  # (a peer of 2 ms or more: 3× its time)
    # the peer at the tolerance that reaches the optimum where its default stops short; its default where none does
    assert inside(row("Lasso, a", 0.030, 0.005, (0.010, 1e-6))) and not inside(row("Lasso, a", 0.030, 0.005))
    assert not inside(row("Lasso, a", 0.030, 0.005, None))
    assert users_data.peer_stops_short(row("Lasso, a", 0.030, 0.005, None))
    assert not users_data.peer_stops_short(row("Lasso, a", 0.030, 0.005, (0.010, 1e-6)))
    assert not users_data.peer_stops_short(row("Lasso, a", 0.030, 0.005))
    rows = [row("Lasso, diabetes, 0.1", 0.002, 0.001), row("Lasso, diabetes, 0.01", 0.008, 0.001),
            row("Lasso, AR(1) 300×300, 0.1", 0.040, 0.010), row("Lasso, AR(1) 300×300, 1e-6", 0.040, 0.010, None),
            row("group lasso, wine, 0.1", 0.003, 0.004)]
    lines = users_data.summary(rows)
    table = {tuple(cell.strip() for cell in line.strip("|").split("|")[:2]): line
             for line in lines if line.startswith("| ")}
    assert "| 2 | 4.00× | 2.00–8.00× | 0 | 0 | 0 |" in table["Lasso / elastic net", "shipped"]
    assert "| 2 | 4.00× | 4.00–4.00× | 0 | 1 | 1 |" in table["Lasso / elastic net", "generated"]
    assert "| 1 | 0.75× | 0.75–0.75× | 1 | 0 | 0 |" in table["group lasso", "shipped"]
    assert lines[-1] == "- Lasso, AR(1) 300×300, 0.1: 40.0 ms against 10.0 ms (peer)"
    assert "- Lasso, AR(1) 300×300, 1e-6: 40.0 ms against 10.0 ms (peer, gap +0.0e+00)" in lines


def test_users_data_quick_summary(capsys):
    users_data.main(["--quick", "--summary"])
    printed = capsys.readouterr().out
    header = ("| family | data | rows | DCS / peer, geometric mean | range | DCS faster | peer stops short "
              "| outside the rule |")
    assert header in printed
    assert "| Lasso / elastic net | shipped | 1 |" in printed and "| LassoCV | shipped | 1 |" in printed


def test_the_drawn_group_sweep_draws_wide_designs_from_its_seed(monkeypatch):
    pytest.importorskip("skglm")
    monkeypatch.setattr(users_data, "_group_rows", lambda cases, repeats: cases)
    cases = users_data.drawn_group_sweep(1, 4242)
    assert len(cases) == 20
    for name, X, y, size in cases:
        assert X.shape[0] == len(y) < X.shape[1] and X.shape[1] % size == 0, name
        assert np.isfinite(X).all() and np.isfinite(y).all()
    again, other = users_data.drawn_group_sweep(1, 4242), users_data.drawn_group_sweep(1, 7)
    assert [c[0] for c in again] == [c[0] for c in cases] and all(np.array_equal(a[1], c[1]) for a, c in zip(again, cases))
    assert [c[0] for c in other] != [c[0] for c in cases]


def test_the_drawn_options_sweep_draws_problems_with_users_options_from_its_seed(monkeypatch):
    """`users_data.drawn_options_sweep`: regressions (intercept or not, sample weights, l1_ratio, positive) and
    logistic-L1 problems drawn from the seed, the same for the same seed, another set for another."""
    pytest.importorskip("skglm")
    monkeypatch.setattr(users_data, "_against", lambda label, problem, *rest, **options: (label, problem))

    def drawn(seed):
        return users_data.drawn_options_sweep(1, seed)

    rows = drawn(2027)
    labels = [label for label, _ in rows]
    assert 40 <= len(rows) <= 45 and len(set(labels)) == len(labels)
    assert any("weights" in label for label in labels) and any("positive" in label for label in labels)
    assert any("elastic net" in label for label in labels) and any(label.startswith("logistic") for label in labels)
    assert any("no intercept" in label for label in labels) and any(", intercept" in label for label in labels)
    for label, problem in rows:
        assert all(bool(torch.isfinite(t).all()) for t in problem.data.values() if t is not None), label
        assert problem.strength_max() > 0, label
    assert [label for label, _ in drawn(2027)] == labels and [label for label, _ in drawn(7)] != labels


def test_the_drawn_raw_scales_sweep_draws_tiny_strengths_on_raw_columns_from_its_seed(monkeypatch):
    """`users_data.drawn_raw_scales_sweep`: regressions on columns of scales 1e-3..1e3 at 1e-7..1e-4 λ_max with
    drawn options, the same for the same seed, another set for another."""
    monkeypatch.setattr(users_data, "_against", lambda label, problem, *rest, **options: (label, problem))
    rows = users_data.drawn_raw_scales_sweep(1, 1000)
    labels = [label for label, _ in rows]
    assert 25 <= len(rows) <= 30 and len(set(labels)) == len(labels)
    assert any("elastic net" in label for label in labels) and any("weights" in label for label in labels)
    for label, problem in rows:
        norms = problem.data["X"].norm(dim=0)
        assert float(norms.max() / norms.min()) > 1e3, label
        fraction = problem.constraint().strength / problem.strength_max()
        assert 1e-7 * 0.999 <= fraction <= 1e-4 * 1.001, label
    assert [label for label, _ in users_data.drawn_raw_scales_sweep(1, 1000)] == labels
    assert [label for label, _ in users_data.drawn_raw_scales_sweep(1, 7)] != labels


def test_the_sparse_design_rows_keep_the_design_sparse_at_three_strengths(monkeypatch):
    """`users_data.sparse_design`: the issue's 10000 × 100000 CSR design at density 1e-3, kept sparse (torch
    CSR) for symopt, at 0.5, 0.1 and 0.01 λ_max."""
    monkeypatch.setattr(users_data, "_against", lambda label, problem, *rest, **options: (label, problem))
    rows = users_data.sparse_design(1)
    assert [label.rsplit(", ", 1)[1] for label, _ in rows] == ["0.5 λmax", "0.1 λmax", "0.01 λmax"]
    for label, problem in rows:
        X = problem.data["X"]
        assert X.layout == torch.sparse_csr and tuple(X.shape) == (10000, 100000), label
        assert 0.9e6 <= X.values().numel() <= 1.1e6, label


def test_a_peer_that_stops_short_is_also_timed_at_the_tolerance_that_reaches_the_optimum():
    """`users_data._against` with ``calibrate``: a peer whose default tolerance stops above ``REACHED`` (scikit-learn's
    Lasso asked for a loose 1e-1 on raw diabetes at 0.001 λ_max) gets its time at the largest tenth of that
    tolerance whose answer is within ``REACHED`` of DCS's; a peer within it gets no seventh entry."""
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Lasso

    X, y = load_diabetes(return_X_y=True)
    X, y = np.asfortranarray(X), y - y.mean()
    problem = users_data.lasso(X, y, 1.0)
    lam = 1e-3 * problem.strength_max()
    problem = problem.at_strength(lam)
    fit = lambda tol: Lasso(alpha=lam, fit_intercept=False, tol=tol, max_iter=100_000).fit(X, y)  # noqa: E731
    row = users_data._against("loose", problem, "sklearn Lasso", lambda: fit(1e-1), 1, calibrate=fit)
    assert row[5] > users_data.REACHED and len(row) == 7
    seconds, tol = row[6]
    assert seconds > 0 and tol < 1e-1
    optimum = symopt.solve(problem).objective
    gap = lambda tolerance: (problem.objective(torch.as_tensor(fit(tolerance).coef_)) - optimum) / abs(optimum)  # noqa: E731
    assert gap(tol) <= users_data.REACHED < gap(10 * tol)  # (the largest tenth that reaches it)
    tight = users_data._against("tight", problem, "sklearn Lasso", lambda: fit(1e-10), 1, calibrate=fit)
    assert len(tight) == 6


def test_the_large_answer_sweep_has_real_generated_and_sparse_rows(monkeypatch):
    """`users_data.large_answer_sweep`: digits' degree-2 features, a tall Gaussian, an AR(1) and two sparse
    designs (kept CSR), Lasso and logistic-L1, each wider than the dense ℓ1 model's 1024 entries."""
    pytest.importorskip("skglm")
    monkeypatch.setattr(users_data, "_against", lambda label, problem, *rest, **options: (label, problem))
    monkeypatch.setattr(users_data, "_against_sklearn_lasso",
                        lambda label, X, y, fraction, repeats, **options: (label, users_data.lasso(X, y, 1.0)))
    rows = users_data.large_answer_sweep(1)
    labels = [label for label, _ in rows]
    assert len(rows) == 8 and len(set(labels)) == 8
    assert sum("digits degree-2" in label for label in labels) == 3
    assert sum(label.startswith("logistic-L1") for label in labels) == 3
    for label, problem in rows:
        X = problem.data["X"]
        assert X.shape[1] > 1024, label
        assert (X.layout == torch.sparse_csr) == ("sparse CSR" in label), label


def test_the_sparse_sweep_spans_its_designs_entries_on_both_sides_of_the_working_set_thresholds(monkeypatch):
    """`users_data.sparse_sweep`: each design of `SPARSE_DESIGNS`, kept CSR with the stored entries its label
    says, Lasso and logistic-L1 at two λ; the designs reach the logistic-L1's working-set threshold."""
    pytest.importorskip("skglm")
    from symopt.solver import dcs

    monkeypatch.setattr(users_data, "_against", lambda label, problem, *rest, **options: (label, problem))
    monkeypatch.setattr(users_data, "_against_sklearn_lasso",
                        lambda label, X, y, fraction, repeats, **options: (label, users_data.lasso(X, y, 1.0)))
    rows = users_data.sparse_sweep(1)
    assert len(rows) == 4 * len(users_data.SPARSE_DESIGNS) and len({label for label, _ in rows}) == len(rows)
    entries = set()
    for label, problem in rows:
        X = problem.data["X"]
        assert X.layout == torch.sparse_csr and f"{X.shape[0]}×{X.shape[1]}" in label
        entries.add(X.values().numel())
    assert min(entries) < dcs._SPARSE_L1_WORKING_SETS_FROM_ENTRIES <= max(entries)


def test_loops_quick(capsys):
    loops.main(["--quick"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| Lasso")]
    assert len(rows) == 3 and all("| optimal, optimal |" in row for row in rows)


def test_channels_quick(capsys):
    pytest.importorskip("torch_pruning")
    from benchmarks import channels
    table = channels.main(["--quick", "--global"])
    assert [row[0] for row in table] == ["dense", "torch-pruning", "symopt", "symopt (compact)",
                                         "torch-pruning (global)", "symopt (global)"]
    assert table[1][4] == table[2][4] == table[3][4] == (16, 32)  # same channels, same size
    assert table[1][5] == table[2][5] == table[3][5]
    assert sum(table[4][4]) == sum(table[5][4]) == 48 and min(table[5][4]) >= 1  # one budget over both convs
    assert "test accuracy" in capsys.readouterr().out


def test_ranks_quick(capsys):
    from benchmarks import ranks
    table = ranks.main(["--quick", "--global"])
    assert [row[0] for row in table] == ["dense", "truncated SVD", "symopt", "symopt (compact)",
                                         "symopt (full width)", "truncated SVD (global)", "symopt (global)",
                                         "symopt (global, full width)"]
    # both hidden layers at rank 16, exactly; deployed: the same two factors a layer
    assert table[1][4] == table[2][4] == table[3][4] == table[4][4] == (16, 16)
    assert table[1][5] == table[2][5] == table[3][5] == table[4][5] < table[0][5]
    assert sum(table[5][4]) == sum(table[6][4]) == sum(table[7][4]) == 32 and min(table[6][4]) >= 1  # a total of 32
    assert "test accuracy" in capsys.readouterr().out


def test_ranks_from_a_trained_model_quick(capsys):
    """``--from-trained``: the rows compress a model first trained dense; they land at rank 16, and the
    dense row starts from the same trained model (more accurate than 2 epochs from scratch)."""
    from benchmarks import ranks
    table = ranks.main(["--quick", "--from-trained", "3", "--methods", "dense", "truncated SVD", "symopt"])
    assert [row[0] for row in table] == ["dense", "truncated SVD", "symopt"]
    assert table[1][4] == table[2][4] == (16, 16)
    scratch = ranks.main(["--quick", "--methods", "dense"])
    assert table[0][2] > scratch[0][2]
    assert "from a model trained dense for 3 epochs" in capsys.readouterr().out


def test_heads_quick(capsys):
    """The head benchmark's smoke run: symopt's budget lands 4 of 8 heads per layer, the export removes
    the others (its loss must equal the trained model's, or the benchmark raises), and magnitude head
    pruning ends its schedule at the same 4 heads, whose parameter count its row reports."""
    from benchmarks import heads
    table = heads.main(["--quick", "--methods", "magnitude", "symopt"])  # the dense row's training adds nothing here
    dense = sum(p.numel() for p in heads.CharLM(heads.corpus()[2], 0).parameters())
    assert [row[0] for row in table] == ["magnitude", "symopt"]
    assert table[1][4] == "4/4" and table[1][5] == dense - 2 * 4 * (4 * 8 * 64 + 3 * 8)
    assert table[0][4] == "4/4" and table[0][5] == table[1][5]  # (the 2 epochs' schedule ends inside the run)
    assert "val nats/char" in capsys.readouterr().out


def test_heads_quick_with_feed_forward_neurons(capsys):
    """The same benchmark removing feed-forward neurons: symopt's budget lands 32 of 128 per layer inside
    torch's nn.TransformerEncoderLayer and the export narrows linear1 / linear2 to them (else it raises); magnitude
    pruning keeps as many."""
    from benchmarks import heads
    table = heads.main(["--quick", "--units", "neurons", "--methods", "magnitude", "symopt"])
    dense = sum(p.numel() for p in heads.CharLM(heads.corpus()[2], 0).parameters())
    assert table[1][4] == "32/32" and table[1][5] == dense - 2 * 96 * (2 * 64 + 1)
    assert table[0][4] == "32/32" and table[0][5] == table[1][5]
    assert "neurons" in capsys.readouterr().out


@pytest.mark.slow  # (a third quick training run of the heads benchmark: ~1–3 min on 2 cores)
def test_heads_quick_torch_pruning_removes_the_same_neuron_groups():
    """Torch-Pruning's pruner (optional) narrows both layers' linear1 / linear2 to 32 neurons on its own
    schedule: the parameter count is the model it leaves."""
    pytest.importorskip("torch_pruning")
    from benchmarks import heads
    table = heads.main(["--quick", "--units", "neurons", "--methods", "torch-pruning"])
    dense = sum(p.numel() for p in heads.CharLM(heads.corpus()[2], 0).parameters())
    assert table[0][4] == "32/32" and table[0][5] == dense - 2 * 96 * (2 * 64 + 1)


def test_separate_heads_attention_computes_the_multihead_attention():
    """The form Torch-Pruning's head pruning reads (q, k, v as three Linear layers) is the same function as
    the nn.MultiheadAttention it is built from, on the benchmark's causal model."""
    from benchmarks import heads
    train_ids, val, vocab = heads.corpus()
    model = heads.CharLM(vocab, 0)
    batch = heads.windows(val, torch.arange(0, 640, 64))[:, :-1]
    with torch.no_grad():
        before = model(batch)
        heads.separate_heads(model, val[:2000])
        after = model(batch)
    assert all(isinstance(layer.self_attn, heads.SeparateHeadsAttention) for layer in model.layers)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_torch_pruning_removes_whole_heads_to_the_count():
    """`prune_heads_to` leaves exactly the asked heads (a layer's, or over both layers), and each head left
    is one of the original heads whole: its q, k, v rows and biases and its output columns, all from the
    same head (Torch-Pruning's dependency graph through the views and matmuls)."""
    pytest.importorskip("torch_pruning")
    from benchmarks import heads
    train_ids, val, vocab = heads.corpus()
    model = heads.separate_heads(heads.CharLM(vocab, 1), val[:2000])
    d = heads.DIM // heads.HEADS
    original = [{name: getattr(layer.self_attn, name).weight.detach().clone() for name in ("q", "k", "v", "out")}
                for layer in model.layers]
    heads.prune_heads_to(model, train_ids, 5, global_pruning=False)
    assert [heads.heads_left(layer) for layer in model.layers] == [5, 5]
    heads.prune_heads_to(model, train_ids, 2, global_pruning=False)
    assert [heads.heads_left(layer) for layer in model.layers] == [2, 2]
    for layer, weights in zip(model.layers, original):
        attention = layer.self_attn
        kept = [next(h for h in range(heads.HEADS) if torch.equal(attention.q.weight[i * d:(i + 1) * d],
                                                                     weights["q"][h * d:(h + 1) * d]))
                for i in range(2)]
        for i, h in enumerate(kept):
            for name in ("k", "v"):
                assert torch.equal(getattr(attention, name).weight[i * d:(i + 1) * d], weights[name][h * d:(h + 1) * d])
            assert torch.equal(attention.out.weight[:, i * d:(i + 1) * d], weights["out"][:, h * d:(h + 1) * d])
    dense = sum(p.numel() for p in heads.CharLM(vocab, 1).parameters())
    assert sum(p.numel() for p in model.parameters()) == dense - 2 * 6 * (4 * d * heads.DIM + 3 * d)
    assert model(heads.windows(val, torch.arange(2))[:, :-1]).shape == (2, heads.CONTEXT, vocab)
    heads.prune_heads_to(model, train_ids, 3, global_pruning=True)
    left = [heads.heads_left(layer) for layer in model.layers]
    assert sum(left) == 3 and min(left) >= 1


def test_small_solves_all_optimal(capsys):
    small_solves.main(["--repeats", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| Lasso", "| logistic"))]
    assert len(rows) == 12 and all("| optimal |" in row for row in rows)


def test_regrowth_quick(capsys):
    from benchmarks import regrowth
    rows = regrowth.main(["--quick"])
    assert [(r["data"], r["optimizer"], r["method"]) for r in rows] == [
        (data, optimizer, method) for data in ("diabetes", "diabetes+") for optimizer in ("GD", "Adam")
        for method in ("plain", "regrow")]
    for gd_plain, gd_regrow in ((rows[0], rows[1]), (rows[4], rows[5])):  # the Lasso, the non-negative Lasso
        assert gd_regrow["gaps"][-1] < gd_plain["gaps"][-1]  # 600 steps after λ is lowered: regrown atoms are ahead
    assert "steps<1e-8" in capsys.readouterr().out


def test_regrowth_mlp_quick(capsys):
    from benchmarks import regrowth
    rows = regrowth.main(["--mlp", "--quick"])
    assert [r["method"] for r in rows] == ["plain", "regrow β=0.9", "regrow β=0.99"]
    assert rows[0]["exact"] == [0.0, 0.0] and rows[0]["regrown"] == 0
    assert "exact 0 (layers)" in capsys.readouterr().out


def test_regrowth_rank_quick(capsys):
    from benchmarks import regrowth
    rows = regrowth.main(["--mlp", "--rank", "--quick"])
    assert [r["method"] for r in rows] == ["plain", "regrow β=0.99"]
    assert rows[0]["exact"] == [0.0, 0.0] and rows[0]["snapped"] == 0
    assert "low_rank(strength=1e-3)" in capsys.readouterr().out
    rows = regrowth.main(["--data", "digits-rank", "--seeds", "1", "--first", "200", "--second", "300"])
    assert [(r["optimizer"], r["method"]) for r in rows] == [
        (optimizer, method) for optimizer in ("GD", "Adam") for method in ("plain", "regrow")]
    assert rows[1]["wrong"] == 0 and rows[1]["zeros"] == rows[1]["reference_zeros"] == 1  # rank 9 of 10: one exact zero pair


def test_stress_draws_its_designs_and_reports_every_solve(capsys):
    from benchmarks import stress

    rows = stress.main(["--draws", "4", "--slowest", "2"])
    out = capsys.readouterr().out
    assert len(rows) == 4 * len(stress.FRACTIONS) and "slowest solves:" in out
    kinds = [kind for _, kind, *_ in stress.draws(4)]
    assert kinds == list(stress.KINDS)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_training_step_quick(model, capsys):
    """Issue 20's step benchmark runs every row, and its hand-written factorisation (the floor it measures
    symopt against) computes the plain model's function at the start: the same model, reparametrised."""
    from benchmarks import training_step
    from benchmarks.channels import cnn
    from benchmarks.compression import mlp

    result = training_step.main(["--quick", "--model", model])
    assert list(result) == ["dense", "factored in plain PyTorch", "symopt, fixed λ", "symopt budget, on the ramp",
                            "symopt budget, landed"] + (["symopt low rank, fixed λ", "magnitude pruning, after its ramp"]
                                                        if model == "mlp" else [])
    assert all(seconds > 0 and ratio > 0 for seconds, ratio in result.values())
    assert "× dense" in capsys.readouterr().out
    whole = training_step.main(["--quick", "--whole", "--model", model])
    assert list(whole) == ["dense", "symopt, fixed λ", "symopt budget"] + (
        ["symopt low rank, fixed λ", "magnitude pruning"] if model == "mlp" else [])
    assert all(seconds > 0 and list(phases) == [p[0] for p in training_step.PHASES]
               for seconds, _, phases in whole.values())
    plain, (factored, groups) = (mlp(0) if model == "mlp" else cnn(0)), training_step._factored_by_hand(model)
    x = torch.randn(5, 64) if model == "mlp" else torch.randn(5, 1, 8, 8)
    plain.eval(), factored.eval()
    with torch.no_grad():
        torch.testing.assert_close(factored(x), plain(x))
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] > 0 and decayed.isdisjoint(id(p) for p in groups[1]["params"])
    assert {id(p) for p in factored.parameters()} == decayed | {id(p) for p in groups[1]["params"]}


def test_experts_quick(capsys):
    """The experts benchmark's smoke run: symopt's equal-experts budget lands 16 of 64 neurons in each expert, and the
    export's fused tensors are exactly that wide (the benchmark checks the exported model's loss is the trained one's)."""
    pytest.importorskip("transformers", minversion="5")
    from benchmarks import experts
    table = experts.main(["--quick", "--methods", "symopt (equal experts)"])
    (method, keep, loss, _, widths, params), = table
    assert (method, keep, widths) == ("symopt (equal experts)", 16, "16/16")
    assert loss < 3.0 and params < sum(p.numel() for p in experts.mixtral(experts.corpus()[2], 0).parameters())
