"""Will it fit? The bytes a checkpoint needs on a backend, against the memory available now.

Checked from config.json before any weight is read, so a checkpoint too big for the machine
ends in one clear error instead of the kernel's OOM killer (which ends a process without a
word). The estimate, per part:

  weights      parameters × bytes of the weight dtype (numpy float32: 4; numpy low-memory
               bfloat16/float16: 2; torch: its compute dtype). While loading, one on-disk
               copy of the largest tensor lives next to them when it is cast
               (`weights.load_weights` reads one tensor at a time).
  KV-cache     2 (k, v) × layers × B × K × S × H × bytes (numpy keeps it in float32, torch in
               its compute dtype); S = image tokens + text tokens (prompt + new tokens).
  activations  the largest live intermediate, vision or text: the attention scores
               float32[B, N, L, S] with the copies softmax keeps alive (bounded by query-chunked
               attention at MAX_SCORE_BYTES), or the MLP's [B, L, F] with its temporaries.
  runtime      a fixed allowance (RUNTIME_BYTES): interpreter, NumPy/BLAS, tokenizer.

Available = min(`MemAvailable` in /proc/meminfo, the cgroup limit minus its working set) —
the working set as the kubelet counts it: usage minus inactive file pages, which the kernel
reclaims before it kills. Unknown (no /proc): no check.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import _kernels
from ..config import PaliGemmaConfig
from ..errors import InputError
from .checks import DTYPES
from .layout import expected_shapes

MAX_SCORE_BYTES = 256 * 2**20  # attention scores alive at once, with query chunking
TEXT_TOKENS = 256              # prompt + new tokens budgeted when the caller does not say
# Interpreter, NumPy/BLAS buffers, tokenizer, allocator slack: on the README's benchmark rows
# peak RSS minus weights (and the cast copy) was 0.8-2.0 GB, part of it mapped safetensors pages.
RUNTIME_BYTES = 2**30
_SCORE_COPIES = 3              # scores, exp(scores - max), the normalized probabilities
_MLP_COPIES = 4                # gate, up, and tanh-GELU's temporaries, all [B, L, F]
_ITEMSIZE = {name: d.itemsize for name, d in DTYPES.items()}
_NO_LIMIT = 2**60              # cgroup v1 writes 2^63 - 4096 for "unlimited"
# One widened float32 slab per thread of ours (`_kernels`: a reused scratch buffer each).
_WIDENING_BYTES = _kernels.SLAB_BYTES * (_kernels.WORKERS + 1)
GB = 1e9


@dataclass(frozen=True)
class Need:
    """Bytes a run needs, by part, in host RAM and (torch on a GPU) in GPU memory."""

    ram: dict[str, int]
    gpu: dict[str, int] = field(default_factory=dict)
    # Memory-mapped file pages (the low-memory mode's weights): reclaimable, so they may exceed
    # what is available; the run then streams them from disk (`streams`).
    file: dict[str, int] = field(default_factory=dict)
    streams: "Streaming | None" = None

    @property
    def ram_total(self) -> int:
        """Anonymous memory: what the kernel cannot reclaim (file pages not counted)."""
        return sum(self.ram.values())

    @property
    def file_total(self) -> int:
        return sum(self.file.values())

    @property
    def gpu_total(self) -> int:
        return sum(self.gpu.values())


@dataclass(frozen=True)
class Streaming:
    """The verdict for a memory-mapped checkpoint larger than the memory available: each pass
    reads the weights it uses from disk — per token the decoder's layers and the output table —
    except the first `resident_layers` decoder layers, whose pages stay cached between passes."""

    bytes_per_token: int
    read_bytes_per_s: float | None   # measured (`prefetch.read_speed`), None if not
    seconds_per_token: float | None
    available: Available             # the memory reading the verdict was made against
    resident_layers: int = 0
    resident_bytes: int = 0

    def __str__(self) -> str:
        where = (f"about {self.seconds_per_token:.0f} s per token at the measured read speed "
                 f"({self.read_bytes_per_s / GB:.2f} GB/s)" if self.seconds_per_token is not None
                 else "the read speed could not be measured")
        kept = (f"keeps {self.resident_layers} decoder layers ({self.resident_bytes / GB:.1f} GB) "
                "cached, " if self.resident_layers else "")
        return f"{kept}streams {self.bytes_per_token / GB:.1f} GB from disk per token: {where}"


@dataclass(frozen=True)
class Available:
    bytes: int
    source: str  # which reading set the figure, e.g. "MemAvailable"


def text_tokens(prompt: str, max_new_tokens: int) -> int:
    """An upper bound on the text tokens of a run, for the memory check: a token covers at
    least one UTF-8 byte (byte fallback), plus <bos> and the "\n" separator."""
    return len(prompt.encode("utf-8")) + 2 + max_new_tokens


def num_params(cfg: PaliGemmaConfig) -> int:
    """Parameters the model runs (a tied lm_head counted once, the unused vision head not)."""
    return sum(math.prod(s) for s in expected_shapes(cfg).values())


def stored_dtype(headers: dict[str, tuple[str, tuple[int, ...]]]) -> str:
    """The dtype holding most of a checkpoint's elements (from `weights.header_summary`);
    "mixed" only when another dtype holds a tenth of them or more."""
    counts: dict[str, int] = {}
    for dtype, shape in headers.values():
        counts[dtype] = counts.get(dtype, 0) + math.prod(shape)
    ranked = sorted(counts.items(), key=lambda kv: -kv[1]) or [("?", 0)]
    return "mixed" if len(ranked) > 1 and ranked[1][1] * 10 >= ranked[0][1] else ranked[0][0]


def _largest_tensor(cfg: PaliGemmaConfig) -> int:
    return max(math.prod(s) for s in expected_shapes(cfg).values())


def _params_under(cfg: PaliGemmaConfig, *prefixes: str) -> int:
    """Parameters of the canonical tensors whose keys start with one of `prefixes`."""
    return sum(math.prod(s) for k, s in expected_shapes(cfg).items() if k.startswith(prefixes))


def per_token_params(cfg: PaliGemmaConfig) -> int:
    """Parameters one decode step reads: the decoder's (its layers, final norm, and the output
    table, tied to the embedding); not the vision tower or the projector."""
    return _params_under(cfg, "language_model.", "lm_head.")


def decoder_layer_params(cfg: PaliGemmaConfig) -> int:
    """Parameters of one decoder layer (every layer has the same shapes)."""
    return _params_under(cfg, "language_model.layers.0.")


# Streamed, the kernel is left this much page cache beside the blocks in flight.
_CACHE_SLACK = 2**30


def resident_layers(cfg: PaliGemmaConfig, itemsize: int, spare: int) -> int:
    """How many decoder layers, from the first, can stay in the page cache of a streamed run
    with `spare` bytes of memory beyond its anonymous part: what is left after the blocks in
    flight, the vision tower (read once a prefill, never dropped) and some slack. In flight are
    three blocks in a row (the one done, the one computing, the one asked for next:
    `prefetch.Streamer` drops the block before those before it asks for the next): three
    layers, or two and the output table."""
    layer = decoder_layer_params(cfg) * itemsize
    table = _params_under(cfg, "language_model.embed_tokens.weight") * itemsize
    vision = _params_under(cfg, "vision_tower.", "multi_modal_projector.") * itemsize
    budget = spare - 2 * layer - max(layer, table) - vision - _CACHE_SLACK
    return max(0, min(cfg.text_config.num_hidden_layers, budget // layer)) if layer else 0


def kv_cache_bytes(cfg: PaliGemmaConfig, seq_len: int, itemsize: int, batch: int = 1) -> int:
    t = cfg.text_config
    return 2 * t.num_hidden_layers * batch * t.num_key_value_heads * seq_len * t.head_dim * itemsize


def activation_bytes(cfg: PaliGemmaConfig, seq_len: int, itemsize: int, batch: int = 1) -> int:
    """The largest intermediate of one forward over the prefix (vision tower or decoder)."""
    v, t = cfg.vision_config, cfg.text_config
    p = v.num_patches
    # float32[B, N, L, S] scores (softmax is always float32), with their copies, chunk-bounded.
    scores = max(batch * v.num_attention_heads * p * p, batch * t.num_attention_heads * seq_len**2)
    attention = min(scores * 4 * _SCORE_COPIES, MAX_SCORE_BYTES)
    mlp = max(batch * p * v.intermediate_size, batch * seq_len * t.intermediate_size)
    return max(attention, mlp * itemsize * _MLP_COPIES)


def _run(cfg: PaliGemmaConfig, backend: str, dtype: str, text_tokens: int, batch: int) -> dict:
    """KV-cache and largest activation: float32 on numpy, the compute dtype on torch."""
    seq = cfg.num_image_tokens + text_tokens
    size = 4 if backend == "numpy" else _ITEMSIZE[dtype]
    return {"KV-cache": kv_cache_bytes(cfg, seq, size, batch),
            "activations": activation_bytes(cfg, seq, size, batch)}


def estimate(cfg: PaliGemmaConfig, backend: str = "numpy", dtype: str = "float32",
             device: str = "cpu", disk_dtype: str = "bfloat16", text_tokens: int = TEXT_TOKENS,
             batch: int = 1) -> Need:
    """What loading `cfg` on backend/dtype/device and generating `text_tokens` needs."""
    weights = num_params(cfg) * _ITEMSIZE[dtype]  # numpy float32 / torch: the compute dtype
    loading = _largest_tensor(cfg) * _ITEMSIZE.get(disk_dtype, 4) if disk_dtype != dtype else 0
    run = _run(cfg, backend, dtype, text_tokens, batch)
    if backend == "numpy" and dtype != "float32":
        # Low memory: the weights are the file's pages, memory-mapped in its dtype (reclaimable);
        # the anonymous memory is the run's, plus one widened slab per thread.
        mapped = num_params(cfg) * _ITEMSIZE.get(disk_dtype, 4)
        return Need(ram={"runtime": RUNTIME_BYTES, "widening": _WIDENING_BYTES} | run,
                    file={"weights": mapped})
    host = {"weights": weights, "runtime": RUNTIME_BYTES}
    if backend == "torch" and device != "cpu":
        # Tensors go to the device one at a time as they are read (`iter_weights`): host RAM
        # holds about one (the largest, in the file's dtype and the compute dtype).
        one = _largest_tensor(cfg) * (_ITEMSIZE.get(disk_dtype, 4) + _ITEMSIZE[dtype])
        return Need(ram={"runtime": RUNTIME_BYTES, "loading": one}, gpu={"weights": weights} | run)
    # Loading and running are not alive at once: the cast copy is gone before the cache exists.
    worst = max([{"loading": loading}, run], key=lambda d: sum(d.values()))
    return Need(ram=host | worst)


NARROW = ("bfloat16", "float16")  # stored dtypes the low-memory mode maps and widens exactly


def parity_estimate(cfg: PaliGemmaConfig, dtype: str, device: str, disk_dtype: str,
                    text_tokens: int, reference: str = "float32") -> Need:
    """`npgemma parity`: the NumPy float32 reference plus the torch copy, both runs' caches and
    activations. `reference` is how the reference holds its weights: "float32" in RAM (shared
    with torch on the CPU in float32), or the checkpoint's own narrow dtype, memory-mapped and
    widened as used (float32 compute on the exact weights; file pages, shared with torch on the
    CPU when torch computes in that dtype)."""
    mapped = reference != "float32"
    ref = estimate(cfg, "numpy", reference, "cpu", disk_dtype, text_tokens)
    twin = estimate(cfg, "torch", dtype, device, disk_dtype, text_tokens)
    if device != "cpu":
        return Need(ram=ref.ram, gpu=twin.gpu, file=ref.file)
    ram = dict(ref.ram)
    shared = dtype == (disk_dtype if mapped else "float32")
    if not shared:  # a second copy of the weights, in torch's dtype
        ram["torch weights"] = twin.ram["weights"]
    ram["torch run"] = sum(_run(cfg, "torch", dtype, text_tokens, 1).values())
    return Need(ram=ram, file=ref.file)


def parity_reference(cfg: PaliGemmaConfig, dtype: str, device: str, disk_dtype: str,
                     text_tokens: int, avail: "Available | None" = None) -> str:
    """How `npgemma parity` holds its reference's weights: "float32" in RAM when that fits (or
    memory cannot be read), else the checkpoint's narrow dtype memory-mapped when that needs
    less anonymous memory (PaliGemma 2 10B in float32 is 38.7 GB; its bfloat16 file 19.3 GB).
    `avail`: the memory reading to judge by (read now when not given)."""
    avail = available_memory() if avail is None else avail
    whole = parity_estimate(cfg, dtype, device, disk_dtype, text_tokens)
    if avail is None or whole.ram_total <= avail.bytes or disk_dtype not in NARROW:
        return "float32"
    mapped = parity_estimate(cfg, dtype, device, disk_dtype, text_tokens, reference=disk_dtype)
    return disk_dtype if mapped.ram_total < whole.ram_total else "float32"


# --- what is available ---------------------------------------------------------------------

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


# --- the check -----------------------------------------------------------------------------

def _gb(n: int) -> str:
    return f"{n / GB:.1f} GB"


def _parts(parts: dict[str, int]) -> str:
    return ", ".join(f"{k} {_gb(v)}" for k, v in parts.items() if v)


def _alternatives(cfg, disk_dtype: str, text_tokens: int, avail: Available, backend: str,
                  dtype: str) -> list[str]:
    """What would fit instead: the numpy low-memory mode, and torch in bfloat16 on a GPU."""
    out = []
    if (backend, dtype) != ("numpy", "bfloat16"):
        low = estimate(cfg, "numpy", "bfloat16", "cpu", disk_dtype, text_tokens)
        verdict = ("fits" if low.ram_total + low.file_total <= avail.bytes else
                   "fits, streaming the weights from disk" if low.ram_total <= avail.bytes else
                   "does not fit either")
        flags = "--dtype bfloat16" if backend == "numpy" else "--backend numpy --dtype bfloat16"
        out.append(f"{flags} (low-memory mode) needs {_gb(low.ram_total)} of RAM and "
                   f"{_gb(low.file_total)} of file pages ({verdict})")
    gpu = estimate(cfg, "torch", "bfloat16", "cuda", disk_dtype, text_tokens)
    out.append(f"--backend torch --device cuda --dtype bfloat16 needs {_gb(gpu.gpu_total)} of GPU "
               f"memory and {_gb(gpu.ram_total)} of RAM while loading")
    return out


def check(cfg: PaliGemmaConfig, what: str, *, backend: str = "numpy", dtype: str = "float32",
          device: str = "cpu", disk_dtype: str = "bfloat16", text_tokens: int = TEXT_TOKENS,
          parity: bool = False, batch: int = 1, files=(), read_speed=None,
          reference: str = "float32", available: "Available | None" = None) -> Need:
    """Raise one InputError, before anything is allocated, when the run cannot fit; else
    return the estimate. `what` names the checkpoint in the message.

    The low-memory mode's weights are file pages: when they and the anonymous memory exceed
    what is available but the anonymous memory alone fits, the run streams the weights from
    disk and the returned Need says how (`streams`: bytes and seconds per token, from the read
    speed of `files` measured by `read_speed(files)`). `reference`: parity's (`parity_estimate`).
    `available`: a memory reading already taken (read now when not given)."""
    need = (parity_estimate(cfg, dtype, device, disk_dtype, text_tokens, reference) if parity
            else estimate(cfg, backend, dtype, device, disk_dtype, text_tokens, batch=batch))
    mode = "npgemma parity" if parity else f"the {backend} backend"
    tail = "--force (load(..., force=True)) tries anyway"
    avail = available_memory() if available is None else available
    if avail is not None and need.file and need.ram_total <= avail.bytes \
            and need.ram_total + need.file_total > avail.bytes:
        itemsize = _ITEMSIZE.get(disk_dtype, 4)
        kept = resident_layers(cfg, itemsize, avail.bytes - need.ram_total)
        kept_bytes = kept * decoder_layer_params(cfg) * itemsize
        per_token = per_token_params(cfg) * itemsize - kept_bytes
        speed = read_speed(list(files)) if read_speed is not None and files else None
        return Need(need.ram, need.gpu, need.file,
                    Streaming(per_token, speed, per_token / speed if speed else None, avail,
                              kept, kept_bytes))
    if avail is not None and need.ram_total > avail.bytes:
        hints = _alternatives(cfg, disk_dtype, text_tokens, avail, backend, dtype)
        raise InputError(f"{what}: not enough memory for {mode} in {dtype}: needs "
                         f"{_gb(need.ram_total)} of RAM ({_parts(need.ram)}), "
                         f"{_gb(avail.bytes)} available ({avail.source}); "
                         + "; ".join(hints + [tail]))
    if need.gpu:
        free = gpu_free(device)
        if free is not None and need.gpu_total > free:
            hint = "" if dtype != "float32" else "--dtype bfloat16 halves the weights; "
            raise InputError(f"{what}: not enough GPU memory on {device} for {mode} in {dtype}: "
                             f"needs {_gb(need.gpu_total)} ({_parts(need.gpu)}), {_gb(free)} "
                             f"free; {hint}{tail}")
    return need
