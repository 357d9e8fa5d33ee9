"""A benchmark's result as a committed, machine-readable file: the figures and where they came from.

Every script in benchmarks/ takes `--record FILE` and writes one JSON object there:

    {"script": "bench.py", "command": "python benchmarks/bench.py --model ...", "date": "...",
     "commit": "6e24e2a" | null, "machine": {...}, "blas": [...], "versions": {...},
     "figures": {...}}

`machine` is what the figures depend on (CPU model, cores, memory, the vector extensions BLAS
kernels are chosen by), `blas` the BLAS libraries this process has loaded and the kernel each
runs (threadpoolctl: OpenBLAS names its core type, e.g. "SkylakeX" or "Haswell"), `versions`
Python and the libraries that did the work. `figures` is the script's own output.

The documents quote figures from these files (`benchmarks/results/*.json`); `tests/test_claims.py`
fails when a figure in README.md or docs/ is found in none of them.
"""

from __future__ import annotations

import json
import os
import shlex
import sys

# The machine, BLAS and versions are gathered by the package (conform --json records the same).
from npgemma.compare.provenance import (blas, commit, cpu, environment,
                                        memory_gib, now, versions)


def provenance(script: str, argv: list[str] | None = None) -> dict:
    """Everything but the figures: the exact command, when, on what, with what."""
    args = sys.argv[1:] if argv is None else list(argv)
    return {"script": script,
            "command": " ".join(["python", f"benchmarks/{script}", *map(shlex.quote, args)]),
            "environment": environment(),
            "date": now(),
            "commit": commit(os.path.dirname(os.path.abspath(__file__))),
            "machine": {**cpu(), "memory_gib": memory_gib()},
            "blas": blas(), "versions": versions()}


def write(path: str, script: str, figures: dict, argv: list[str] | None = None) -> dict:
    """Write {provenance..., "figures": figures} to `path` as JSON and return it."""
    result = {**provenance(script, argv), "figures": _finite(figures)}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, allow_nan=False)
        f.write("\n")
    return result


def _finite(value):
    """Plain JSON: numpy scalars and arrays as numbers and lists, NaN and infinities as null
    (a figure that was not measured, e.g. the disk reads of a one-step run)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
        return None
    return value


def tables(lines: list[str]) -> list[dict]:
    """The markdown tables among printed `lines`, as {"columns": [...], "rows": [[...], ...]}."""
    out, cur = [], None
    for line in "\n".join(lines).split("\n"):
        if not line.startswith("|"):
            cur = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cur is None:
            cur = {"columns": cells, "rows": []}
            out.append(cur)
        elif not set("".join(cells)) <= set("-: "):
            cur["rows"].append(cells)
    return out


class Printed:
    """print() that also keeps what it printed, for `--record`."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, *parts, **kwargs) -> None:
        print(*parts, **kwargs)
        if kwargs.get("file") is None:
            self.lines.append(" ".join(map(str, parts)))

    def figures(self) -> dict:
        return {"output": self.lines, "tables": tables(self.lines)}
