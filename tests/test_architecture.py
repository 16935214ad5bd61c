"""The package's two rules, checked: one idea per module (see docs/architecture.md) and layers that
depend downward only — no module imports from a higher layer."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "symopt"

LAYERS = {
    "_format": 0, "_layers": 0, "_clock": 0,
    "constraints": 1,
    "attach": 2,
    "decay": 3, "report": 3, "certify": 3, "finalize": 3, "optimality": 3, "proximal_newton": 3, "l1_model": 3, "l1_products": 3, "verbs": 3, "result": 3, "symmetry": 3,
    "export": 3, "surgery": 3, "hub": 3, "layout": 3, "_attention": 0, "distributed": 3, "guard": 3, "regrowth": 3,
    "problems": 4, "solver": 4, "baselines": 4,
    "comparison": 5, "cli": 5, "__main__": 5, "paths": 5, "estimators": 5,
    "__init__": 6,
}


def top_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def imported_tops(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    here = path.relative_to(PACKAGE).parts[:-1]  # sub-package path
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(here[: len(here) - (node.level - 1)]) if node.level > 1 else list(here)
            parts = base + (node.module.split(".") if node.module else [])
            if parts:
                out.add(parts[0])
            else:  # `from . import x` at the package root
                out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("symopt."):
            out.add(node.module.split(".")[1])
    return out


def test_every_module_has_a_layer():
    tops = {top_name(p) for p in PACKAGE.rglob("*.py")}
    assert tops <= set(LAYERS), f"assign a layer to {tops - set(LAYERS)}"


def test_layers_depend_downward_only():
    violations = []
    for path in PACKAGE.rglob("*.py"):
        own = LAYERS[top_name(path)]
        for dep in imported_tops(path):
            if dep in LAYERS and LAYERS[dep] > own:
                violations.append(f"{path.relative_to(PACKAGE)} (layer {own}) imports {dep} (layer {LAYERS[dep]})")
    assert not violations, "\n".join(violations)


def test_no_kind_switch_outside_constraints():
    """Layers above constraints/ ask the constraint (methods, capabilities, registries); they never
    test which kind it is (``isinstance(c, LowRank)``, ``type(c) is Sparse``, ``c.kind == "sparse"``)."""
    import re

    from symopt.constraints import KINDS

    classes = sorted({cls.__name__ for cls in KINDS.values()} | {"TiedMember", "TiedAnchor"})
    kind_class = "|".join(classes)
    patterns = [
        re.compile(rf"isinstance\([^)]*\b({kind_class})\b"),
        re.compile(rf"type\([^)]*\)\s+is\s+({kind_class})\b"),
        re.compile(r"\.kind\s*(==|!=|in\b)"),
        re.compile(r"kind\s*==\s*[\"']"),
    ]
    found = []
    for path in PACKAGE.rglob("*.py"):
        if top_name(path) == "constraints":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(p.search(line) for p in patterns):
                found.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not found, "kind switches outside constraints/:\n" + "\n".join(found)


def test_the_constraints_package_is_the_subpackage():
    import symopt
    import symopt.constraints.base  # noqa: F401 - the import must work

    assert symopt.constraints.base.Face is not None
    assert set(symopt.constraints.KINDS) >= {"sparse", "group_sparse", "low_rank", "subspace", "fixed_zeros", "tied"}


def test_the_old_discovery_call_still_works_with_a_deprecation_warning():
    import pytest
    import torch

    import symopt

    lin = torch.nn.Linear(3, 2)
    symopt.sparse(lin, "weight", strength=0.1)
    with pytest.warns(DeprecationWarning, match="list_constraints"):
        handles = symopt.constraints(lin)
    assert [h.name for h in handles] == [h.name for h in symopt.list_constraints(lin)] == ["weight"]


def test_every_source_compiles_without_warnings():
    """An invalid escape in a docstring (``\\mathrm`` in a non-raw string) is only a warning when Python
    compiles the file, which the docs build printed and nothing failed on: compile every module here."""
    import pathlib
    import warnings

    root = pathlib.Path(__file__).resolve().parents[1]
    bad = []
    for path in sorted([*root.joinpath("symopt").rglob("*.py"), *root.joinpath("benchmarks").rglob("*.py"),
                        *root.joinpath("examples").rglob("*.py")]):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                compile(path.read_text(encoding="utf-8"), str(path), "exec")
            except (SyntaxError, SyntaxWarning, DeprecationWarning) as err:
                bad.append(f"{path.relative_to(root)}: {err}")
    assert not bad, bad
