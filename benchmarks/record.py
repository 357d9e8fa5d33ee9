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

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata

LIBRARIES = ("numpy", "ml_dtypes", "safetensors", "tokenizers", "torch", "transformers",
             "threadpoolctl", "accelerate")
EXTENSIONS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni",
              "amx_bf16", "amx_tile")


def cpu() -> dict:
    """CPU model, logical cores and the vector extensions present (/proc/cpuinfo on Linux)."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    return {"cpu": model, "arch": platform.machine(), "cores": os.cpu_count(),
            "vector_extensions": [f for f in EXTENSIONS if f in flags]}


def memory_gib() -> float | None:
    """MemTotal in GiB (None where /proc/meminfo is absent)."""
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    except (OSError, StopIteration):
        return None
    return round(kib / 2**20, 1)


def blas() -> list[dict]:
    """The BLAS libraries loaded in this process, the kernel and the threads of each (numpy's
    at least: imported here, so a script that has not loaded it yet still names it)."""
    import numpy  # noqa: F401
    from threadpoolctl import threadpool_info

    return [{k: lib.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for lib in threadpool_info() if lib.get("user_api") == "blas"]


def versions() -> dict:
    """Python, npgemma and the installed libraries of LIBRARIES (absent ones left out)."""
    out = {"python": platform.python_version()}
    try:
        import npgemma

        out["npgemma"] = npgemma.__version__
    except ImportError:
        pass
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def commit() -> str | None:
    """The repository's HEAD (with "+dirty" when files differ from it); None outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], text=True,
                              capture_output=True, timeout=10)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               text=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def provenance(script: str, argv: list[str] | None = None) -> dict:
    """Everything but the figures: the exact command, when, on what, with what."""
    args = sys.argv[1:] if argv is None else list(argv)
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS")
           if k in os.environ}
    return {"script": script,
            "command": " ".join(["python", f"benchmarks/{script}", *map(shlex.quote, args)]),
            "environment": env,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "commit": commit(),
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
