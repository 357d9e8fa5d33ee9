"""The package's layout as a rule: the model at the bottom, each job in one folder above it, and
imports that only run down. `python tests/test_layout.py` prints the import graph's figures.

Every `import` in npgemma/ counts, also those inside functions (a lazy import is still a tie).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "npgemma"

# The book: the NumPy model, importing nothing but itself.
BOOK = {"config", "errors", "hooks", "_kernels", "kv_cache", "layers", "siglip", "gemma",
        "paligemma", "vqvae"}
# Everything else by floor: a module imports only from lower floors (or its own folder).
FLOORS = {"checkpoint": 1, "torch_backend": 2, "testing": 2, "generation": 3, "inspection": 4,
          "pipeline": 5, "npgemma": 5, "compare": 6, "demo": 6, "cli": 7, "__main__": 8}


def modules() -> dict[str, Path]:
    """'npgemma.checkpoint.memory' -> its file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules `name` imports (a name imported from a package counts as the
    module of that name when there is one, else as the package)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "npgemma"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "npgemma":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if sub in known else target)
    return out - {name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def place(name: str) -> tuple[str, int]:
    """(group, floor) of a module: the book is floor 0."""
    parts = name.split(".")
    top = parts[1] if len(parts) > 1 else "npgemma"
    if top in BOOK:
        return "book", 0
    return top, FLOORS[top]


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def levels(g: dict[str, set[str]]) -> int:
    """The longest chain of imports, counted in modules."""
    depth: dict[str, int] = {}

    def d(v):
        if v not in depth:
            depth[v] = 0
            depth[v] = 1 + max((d(w) for w in g[v]), default=0)
        return depth[v]

    return max(d(v) for v in g)


def test_every_module_has_a_floor():
    missing = sorted({n.split(".")[1] for n in modules() if "." in n} - BOOK - set(FLOORS))
    assert not missing, f"place these in BOOK or FLOORS: {missing}"


def test_no_import_circles():
    assert cycles(graph()) == []


def test_imports_only_run_down():
    """The book imports only the book; a folder imports its own modules and lower floors only."""
    wrong = []
    for name, targets in graph().items():
        group, floor = place(name)
        for t in targets:
            t_group, t_floor = place(t)
            if t_floor > floor or (t_floor == floor and t_group != group):
                wrong.append(f"{name} -> {t}")
    assert wrong == []


def test_the_top_of_the_package_is_the_book_and_the_entry_files():
    files = {p.name for p in PACKAGE.glob("*.py")}
    assert files == {f"{m}.py" for m in BOOK} | {"__init__.py", "__main__.py", "pipeline.py"}


def test_old_module_paths_still_import():
    """Paths the README showed before the move resolve to the moved modules."""
    import importlib

    import npgemma
    from npgemma.generation import postprocess
    from npgemma.inspection import analysis

    assert importlib.import_module("npgemma.analysis") is analysis
    assert importlib.import_module("npgemma.postprocess").parse_objects is postprocess.parse_objects
    assert npgemma.analysis is analysis and analysis.__spec__.name == "npgemma.inspection.analysis"
    for old, new in npgemma.MOVED.items():
        assert importlib.import_module(f"npgemma.{old}") is importlib.import_module(f"npgemma.{new}")


if __name__ == "__main__":
    g = graph()
    edges = sum(len(t) for t in g.values())
    print(f"npgemma/: {len(g)} modules, {edges} import edges, longest chain {levels(g)} modules, "
          f"{len(cycles(g))} circles", file=sys.stdout)
