"""Every public function and class documents its maths / arguments / returns / raises and carries a
runnable example whose last statement shows a checked output (doctest runs the examples)."""

import dataclasses
import inspect
import re

import pytest

import symopt
import symopt.baselines
import symopt.problems

PUBLIC = [(f"symopt.{n}", getattr(symopt, n)) for n in symopt.__all__]
PUBLIC += [(f"symopt.problems.{n}", getattr(symopt.problems, n)) for n in symopt.problems.__all__
           if n != "Problem"]
PUBLIC += [(f"symopt.baselines.{n}", getattr(symopt.baselines, n)) for n in symopt.baselines.__all__
           if n.startswith("solve_") or n == "NotApplicable"]


def _parameters(obj) -> list[str]:
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return []
    return [p for p in signature.parameters if p not in ("self", "args", "kwargs")]


def _is_exception_or_warning(obj) -> bool:
    return inspect.isclass(obj) and issubclass(obj, (Exception, Warning))


@pytest.mark.parametrize("name,obj", PUBLIC, ids=[n for n, _ in PUBLIC])
def test_docstring_has_the_sections(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert len(doc.splitlines()[0]) > 10, f"{name}: no summary line"
    missing = []
    record = inspect.isclass(obj) and dataclasses.is_dataclass(obj)
    if _parameters(obj) and not record and not _is_exception_or_warning(obj) and "Args:" not in doc:
        missing.append("Args:")
    if record and "Attributes:" not in doc:
        missing.append("Attributes:")
    if inspect.isfunction(obj):
        for section in ("Returns:", "Raises:"):
            if section not in doc:
                missing.append(section)
    if "Example" not in doc or ">>>" not in doc:
        missing.append("Example with >>>")
    assert not missing, f"{name}: docstring lacks {', '.join(missing)}"


@pytest.mark.parametrize("name,obj", PUBLIC, ids=[n for n, _ in PUBLIC])
def test_example_ends_with_a_checked_output(name, obj):
    doc = inspect.getdoc(obj) or ""
    example = doc[doc.find("Example"):]
    lines = [line.strip() for line in example.splitlines() if line.strip()]
    prompts = [i for i, line in enumerate(lines) if line.startswith(">>>")]
    assert prompts, f"{name}: no example"
    after = lines[prompts[-1] + 1:]
    while after and after[0].startswith("..."):
        after = after[1:]
    assert after and not re.match(r"^[A-Z][a-z]+:$", after[0]), \
        f"{name}: the example's last statement shows no output to check"
