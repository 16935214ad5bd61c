"""Every ```python block in README.md and docs/**/*.md runs (in order, one namespace per file)."""

import pathlib
import re
from html.parser import HTMLParser
from urllib.parse import unquote

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


# Tools a page may set beside symopt ("Coming from …"): optional, so a block that imports one that is
# not installed is skipped, and the page's other blocks still run.
OPTIONAL = {"geotorch", "cooper", "cvxpylayers", "torch_pruning", "skglm", "transformers"}


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_code_blocks_run(path):
    blocks = BLOCK.findall(path.read_text())
    namespace: dict = {"__name__": f"doc_{path.stem}"}
    missing = []
    for block in blocks:
        try:
            exec(compile(block, str(path), "exec"), namespace)
        except ModuleNotFoundError as error:
            if error.name not in OPTIONAL:
                raise
            missing.append(error.name)
    if missing:
        pytest.skip(f"blocks skipped, optional tools not installed: {sorted(set(missing))}")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built once by `mkdocs build --strict` (the same build `bash scripts/docs.sh` and CI run)."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    import os
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    return out, done


def test_site_builds_with_no_warning(site):
    """Strict build: every page in the nav, every link and anchor resolves, every API docstring parses."""
    out, done = site
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "api" / "constraints" / "index.html").exists()


class _Page(HTMLParser):
    """What a render check needs from one built page: ids, links, images, formulas, and the text
    that is neither code nor maths (with the emphasis runs inside it)."""

    SKIP = {"code", "pre", "script", "style"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids, self.links, self.images, self.formulas = set(), [], [], []
        self.text, self.emphasis = [], []
        self._skip, self._maths, self._em = 0, 0, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in self.SKIP:
            self._skip += 1
        if "arithmatex" in (attrs.get("class") or "").split():
            self._maths += 1
            self.formulas.append("")
        elif self._maths:
            self._maths += 1
        if tag == "em" and not self._skip and not self._maths:
            self._em = ""

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        if self._maths:
            self._maths -= 1
        if tag == "em" and self._em is not None:
            self.emphasis.append(self._em)
            self._em = None

    def handle_data(self, data):
        if self._maths:
            self.formulas[-1] += data
        elif not self._skip:
            self.text.append(data)
            if self._em is not None:
                self._em += data


def _pages(out):
    for page in sorted(out.rglob("*.html")):
        if page.name == "404.html":
            continue
        parsed = _Page()
        parsed.feed(page.read_text())
        yield page, parsed


def test_the_built_pages_render(site):
    """A render check of the built HTML (no browser here): every image and internal link/anchor
    resolves, every formula is valid TeX (parsed by latex2mathml when installed), no TeX or dollar
    residue is left in the text, and no emphasis run swallows a formula or a paragraph (the
    unescaped ``θ*`` / ``λ*`` failure)."""
    out, done = site
    assert done.returncode == 0, done.stderr[-3000:]
    try:
        from latex2mathml.converter import convert
    except ImportError:  # optional: the structural checks still run
        convert = None
    pages = dict(_pages(out))
    assert len(pages) > 20
    problems = []
    for page, parsed in pages.items():
        where = page.relative_to(out)
        for src in parsed.images:
            if not src.startswith(("http://", "https://", "data:")):
                target = (page.parent / unquote(src)).resolve()
                if not target.is_file() or target.stat().st_size == 0:
                    problems.append(f"{where}: image {src} missing")
        for href in parsed.links:
            if href.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = href.partition("#")
            target = (page.parent / unquote(path)).resolve() if path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                problems.append(f"{where}: link {href} goes nowhere")
            elif anchor and target in pages and anchor not in pages[target].ids:
                problems.append(f"{where}: link {href}: no anchor #{anchor}")
        for formula in parsed.formulas:
            tex = formula.strip()
            for opener, closer in (("\\(", "\\)"), ("\\[", "\\]")):
                if tex.startswith(opener) and tex.endswith(closer):
                    tex = tex[2:-2]
            if convert is not None:
                try:
                    convert(tex)
                except Exception as error:  # noqa: BLE001 - any parse failure is a broken formula
                    problems.append(f"{where}: formula {tex!r} does not parse ({type(error).__name__})")
        text = " ".join(parsed.text)
        for residue in re.findall(r"\\(?:Vert|vert|lvert|rvert|mathrm|text|operatorname|sum|top|max|min)\b|\$", text):
            problems.append(f"{where}: unrendered maths {residue!r}")  # no page uses a literal dollar
        for run in parsed.emphasis:
            if len(run) > 120 or re.search(r"[θλμ]", run) and len(run) > 40:
                problems.append(f"{where}: an emphasis run swallowed text: {run[:80]!r}")
    assert not problems, "\n".join(problems[:40])


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


def test_every_public_name_is_documented_exactly_once():
    """The API pages (``::: name`` directives) document each public object of symopt, its problem
    builders and its estimators once: nothing missing, nothing rendered twice under two paths."""
    import importlib

    import symopt
    import symopt.problems

    documented: dict[int, list[str]] = {}
    for page in (ROOT / "docs" / "api").glob("*.md"):
        for target in re.findall(r"^::: ([\w.]+)", page.read_text(), re.M):
            module, _, name = target.rpartition(".")
            try:
                obj = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):
                obj = importlib.import_module(target)
            documented.setdefault(id(obj), []).append(target)
    twice = [targets for targets in documented.values() if len(targets) > 1]
    assert not twice, f"documented more than once: {twice}"
    public = [(f"symopt.{n}", getattr(symopt, n)) for n in symopt.__all__]
    public += [(f"symopt.problems.{n}", getattr(symopt.problems, n)) for n in symopt.problems.__all__]
    estimators = pytest.importorskip("symopt.estimators")
    public += [(f"symopt.estimators.{n}", getattr(estimators, n)) for n in estimators.__all__]
    missing = [name for name, obj in public if id(obj) not in documented]
    assert not missing, f"public but on no API page: {missing}"
