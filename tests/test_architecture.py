"""The package's two rules, checked: one idea per module (see docs/architecture.md) and layers that
depend downward only — no module imports from a higher layer."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "symopt"

LAYERS = {
    "_format": 0, "_layers": 0,
    "constraints": 1,
    "attach": 2,
    "decay": 3, "report": 3, "certify": 3, "finalize": 3, "optimality": 3, "verbs": 3, "result": 3, "syre": 3, "diagnose": 3, "conserved": 3,
    "export": 3, "distributed": 3, "guard": 3,
    "problems": 4, "solve": 4, "working_set": 4, "baselines": 4,
    "comparison": 5, "cli": 5, "__main__": 5,
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
