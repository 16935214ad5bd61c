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


def test_site_builds_with_no_warning(tmp_path):
    """`mkdocs build --strict`: every page in the nav, every link and anchor resolves, every API
    docstring parses (the same build `bash scripts/docs.sh` and CI run)."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    import os
    import subprocess
    import sys

    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "api" / "constraints" / "index.html").exists()


def test_every_figure_shown_is_made_by_the_figures_script():
    """Each PNG a page shows exists and comes from `scripts/figures.sh` (directly, or from the folder
    it fills: the compare plots and the family benchmark's --figures folder)."""
    script = (ROOT / "scripts" / "figures.sh").read_text()
    shown = {(path.parent / ref).resolve().relative_to(ROOT)
             for path in (ROOT / "docs").rglob("*.md")
             for ref in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", path.read_text())}
    assert shown, "no figures found: the pattern is wrong"
    for figure in shown:
        assert (ROOT / figure).exists(), f"{figure} is shown but missing"
        filled_folder = figure.parent != pathlib.Path("docs/figures") and str(figure.parent) in script
        assert str(figure) in script or filled_folder, \
            f"{figure} is shown but scripts/figures.sh does not make it"
