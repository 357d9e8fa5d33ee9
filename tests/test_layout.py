"""The package's layout as a rule: the model at the bottom, each job in one folder above it, and
imports that only run down. `python tests/test_layout.py` prints the import graph's figures.

Every `import` in npgemma/ counts, also those inside functions (a lazy import is still a tie).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "npgemma"

# The book: the NumPy model, importing nothing but itself.
BOOK = {"config", "errors", "hooks", "_kernels", "kv_cache", "layers", "siglip", "gemma",
        "paligemma", "vqvae"}
# Everything else by floor: a module imports only from lower floors (or its own folder).
FLOORS = {"checkpoint": 1, "torch_backend": 2, "synthetic": 2, "generation": 3, "inspection": 4,
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


# ---- every module path the repository names exists ---------------------------------------------
# A reader follows `npgemma.x.y` and `npgemma/x/y.py` from docstrings, comments and messages: each
# must name a module (or a name defined in one) that is there. Read from the files, not imported,
# so no alias or import hook can make a gone path look alive.

REPO = PACKAGE.parent
DOTTED = re.compile(r"(?<![\w./-])npgemma((?:\.[A-Za-z_]\w*)+)")
SLASHED = re.compile(r"(?<![\w./-])npgemma/[\w./-]*")
FROM_IMPORT = re.compile(r"\bfrom npgemma import \(?\s*(\w+(?:\s*,\s*\w+)*)")


def defined(path: Path) -> set[str]:
    """The names a module's top level binds (def, class, assignment, import; under if/try too)."""
    names, todo = set(), list(ast.parse(path.read_text()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            todo += node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", [])
            todo += [s for h in getattr(node, "handlers", []) for s in h.body]
    return names


def resolves(parts: list[str]) -> bool:
    """Does npgemma.<parts> name a package, a module, or a name one of them defines?"""
    here = PACKAGE
    for i, part in enumerate(parts):
        if part.startswith("__") and part.endswith("__"):  # __file__, __version__: every module's
            return True
        if (here / part / "__init__.py").is_file():
            here = here / part
        elif (here / f"{part}.py").is_file():
            rest = parts[i + 1:]
            return not rest or rest[0] in defined(here / f"{part}.py")
        elif part in defined(here / "__init__.py"):
            return True
        else:  # the top package's lazy names (npgemma.load) are attributes, not bindings
            import npgemma
            return here == PACKAGE and part in getattr(npgemma, "_LAZY", {})
    return True


def named_paths(text: str) -> set[str]:
    found = {"npgemma" + m for m in DOTTED.findall(text)}
    found |= {f"npgemma.{n.strip()}" for m in FROM_IMPORT.findall(text) for n in m.split(",")}
    return found | {m.rstrip(".") for m in SLASHED.findall(text)}


def test_named_module_paths_exist():
    """No module path of an earlier layout (npgemma.analysis, npgemma/tolerances.py, ...) is left
    in the code, tests or parity suite: every one a .py file names exists."""
    here = Path(__file__).resolve()  # this file names gone paths, as the examples below
    files = [p for p in REPO.rglob("*.py") if p.resolve() != here
             and not any(part.startswith(".") or part in ("build", "__pycache__")  # .git, .venv*
                         for part in p.relative_to(REPO).parts)]
    gone = []
    for path in files:
        for name in named_paths(path.read_text(encoding="utf-8")):
            ok = (REPO / name).exists() if "/" in name else resolves(name.split(".")[1:])
            if not ok:
                gone.append(f"{path.relative_to(REPO)}: {name}")
    assert sorted(gone) == []


def test_the_path_check_catches_old_paths():
    """The check above sees the paths an earlier layout had, and passes the ones that exist."""
    assert not resolves(["analysis"]) and not resolves(["against", "hf"])
    assert not resolves(["checkpoint", "weights", "no_such_name"])
    assert resolves(["inspection", "analysis"])
    assert resolves(["compare", "adapters", "transformers_adapter", "transformers_adapter"])
    assert resolves(["load"]) and resolves(["errors", "InputError"]) and resolves(["__version__"])
    text = "see `npgemma.tolerances`; from npgemma import analysis, load; npgemma/weights.py."
    assert named_paths(text) == {"npgemma.tolerances", "npgemma.analysis", "npgemma.load",
                                 "npgemma/weights.py"}
    assert not (REPO / "npgemma/weights.py").exists()


if __name__ == "__main__":
    g = graph()
    edges = sum(len(t) for t in g.values())
    print(f"npgemma/: {len(g)} modules, {edges} import edges, longest chain {levels(g)} modules, "
          f"{len(cycles(g))} circles", file=sys.stdout)
