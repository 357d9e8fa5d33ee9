"""What this machine has: the memory this process can still take, in RAM and on a GPU.

Available = min(`MemAvailable` in /proc/meminfo, the cgroup limit minus its working set) —
the working set as the kubelet counts it: usage minus inactive file pages, which the kernel
reclaims before it kills. Unknown (no /proc): None, and no check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_NO_LIMIT = 2**60              # cgroup v1 writes 2^63 - 4096 for "unlimited"


@dataclass(frozen=True)
class Available:
    bytes: int
    source: str  # which reading set the figure, e.g. "MemAvailable"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def meminfo_available(meminfo: str | os.PathLike = "/proc/meminfo") -> int | None:
    """`MemAvailable` in bytes: free memory plus what the kernel can reclaim without swapping."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_paths(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """(v2 path, v1 memory-controller path) of this process, from /proc/self/cgroup."""
    v2 = v1 = None
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2]
        elif "memory" in parts[1].split(","):
            v1 = parts[2]
    return v2, v1


def _ancestors(root: Path, path: str) -> list[Path]:
    """The cgroup folder and its parents up to the mount point; with a cgroup namespace the
    listed path may not exist under the mount, which then is the process's own cgroup."""
    parts = [p for p in path.split("/") if p]
    out = [root.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]
    return [p for p in out if p.is_dir()]


def cgroup_headroom(proc_cgroup: str | os.PathLike = "/proc/self/cgroup",
                    root: str | os.PathLike = "/sys/fs/cgroup") -> tuple[int, str] | None:
    """(bytes, where) left under the tightest memory limit on this process's cgroup (v2
    `memory.max` on it or an ancestor, v1 `memory.limit_in_bytes`), or None with no limit."""
    root = Path(root)
    v2, v1 = _cgroup_paths(Path(proc_cgroup))
    found: list[tuple[int, str]] = []
    if v2 is not None:
        for mount in (root, root / "unified"):
            for d in _ancestors(mount, v2):
                limit, used = _read_int(d / "memory.max"), _read_int(d / "memory.current")
                if limit is not None and used is not None:
                    working = used - _stat(d / "memory.stat", "inactive_file")
                    found.append((limit - working, f"cgroup {d / 'memory.max'}"))
    if v1 is not None:
        for d in _ancestors(root / "memory", v1):
            limit, used = _read_int(d / "memory.limit_in_bytes"), _read_int(d / "memory.usage_in_bytes")
            if limit is None or used is None:
                continue
            stat = d / "memory.stat"
            limit = min(limit, _stat(stat, "hierarchical_memory_limit") or limit)
            if limit < _NO_LIMIT:
                working = used - _stat(stat, "total_inactive_file")
                found.append((limit - working, f"cgroup {d / 'memory.limit_in_bytes'}"))
            break  # v1's hierarchical_memory_limit already covers the ancestors
    return (max(0, min(found)[0]), min(found)[1]) if found else None


def available_memory(meminfo: str | os.PathLike = "/proc/meminfo",
                     proc_cgroup: str | os.PathLike = "/proc/self/cgroup",
                     cgroup_root: str | os.PathLike = "/sys/fs/cgroup") -> Available | None:
    """The memory this process can still take, or None where it cannot be read."""
    candidates = []
    mem = meminfo_available(meminfo)
    if mem is not None:
        candidates.append((mem, "MemAvailable"))
    cg = cgroup_headroom(proc_cgroup, cgroup_root)
    if cg is not None:
        candidates.append(cg)
    return Available(*min(candidates)) if candidates else None


def gpu_free(device: str) -> int | None:
    """Free bytes on a CUDA device (torch's `mem_get_info`), None elsewhere."""
    import torch

    if not torch.device(device).type == "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.mem_get_info(torch.device(device))[0]
