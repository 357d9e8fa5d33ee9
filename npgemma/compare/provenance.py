"""Where a result came from: the command, when, the commit, the machine, the BLAS kernel and the
versions. A figure in the docs is read from a committed result file, and the file says what
produced it (`conform --json`'s "provenance", `benchmarks/record.py`'s header).

`machine` is what figures depend on (CPU model, cores, memory, the vector extensions BLAS
kernels are chosen by); `blas` the BLAS libraries this process has loaded and the kernel each
runs (threadpoolctl: OpenBLAS names its core type, e.g. "SkylakeX" or "Haswell"); `versions`
Python and the libraries that did the work; `peer` the same of another interpreter (an
implementation's own venv, `--python`), asked in a subprocess.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from importlib import metadata

LIBRARIES = ("numpy", "ml_dtypes", "safetensors", "tokenizers", "torch", "transformers",
             "threadpoolctl", "accelerate")
# What an implementation's venv may hold that its figures depend on.
PEER_LIBRARIES = ("numpy", "torch", "transformers", "tokenizers", "accelerate", "mlx", "mlx-vlm",
                  "torchao", "optimum-quanto", "bitsandbytes", "keras", "keras-hub", "jax",
                  "pillow")
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
    at least: imported here, so a process that has not loaded it yet still names it); [] when
    threadpoolctl is not installed."""
    import numpy  # noqa: F401
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{k: lib.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for lib in threadpool_info() if lib.get("user_api") == "blas"]


def versions(libraries=LIBRARIES) -> dict:
    """Python, npgemma and the installed libraries of `libraries` (absent ones left out)."""
    from .. import __version__

    out = {"python": platform.python_version(), "npgemma": __version__}
    for name in libraries:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def commit(where: str | None = None) -> str | None:
    """The git HEAD of the repository holding `where` (default: this package), with "+dirty"
    when tracked files differ from it; None outside git."""
    here = where or os.path.dirname(os.path.abspath(__file__))
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


_PEER = """import json, platform
from importlib import metadata
out = {"python": platform.python_version()}
for n in %r:
    try:
        out[n] = metadata.version(n)
    except metadata.PackageNotFoundError:
        pass
print(json.dumps(out))"""


def peer_versions(python: str) -> dict | None:
    """Python and the libraries of PEER_LIBRARIES installed for another interpreter (None when
    it cannot be asked)."""
    try:
        got = subprocess.run([python, "-c", _PEER % (PEER_LIBRARIES,)], text=True,
                             capture_output=True, timeout=60)
        return json.loads(got.stdout) if got.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def environment() -> dict:
    """The variables that change which BLAS kernel runs and with how many threads."""
    return {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS")
            if k in os.environ}


def provenance(command: str, python: str | None = None) -> dict:
    """Everything but the figures: the exact command, when, on what, with what (and with what
    the other interpreter ran, when there is one)."""
    out = {"command": command, "environment": environment(), "date": now(), "commit": commit(),
           "machine": {**cpu(), "memory_gib": memory_gib()}, "blas": blas(),
           "versions": versions()}
    if python:
        out["peer"] = {"python_executable": python, "versions": peer_versions(python)}
    return out
