"""Every ```python block in README.md and docs/**/*.md runs (in order, one namespace per file)."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_code_blocks_run(path):
    blocks = BLOCK.findall(path.read_text())
    namespace: dict = {"__name__": f"doc_{path.stem}"}
    for block in blocks:
        exec(compile(block, str(path), "exec"), namespace)
