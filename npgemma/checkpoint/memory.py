"""Will it fit? A run's needs (`estimate`) against the memory available now (`machine`), and
the verdict in words: fits, streams from disk (and how fast), or one error naming what would fit.

Checked from config.json before any weight is read, so a checkpoint too big for the machine
ends in one clear error instead of the kernel's OOM killer (which ends a process without a
word).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import PaliGemmaConfig
from ..errors import InputError
from .estimate import (ITEMSIZE, NARROW, TEXT_TOKENS, Need, decoder_layer_params, estimate,
                       parity_estimate, per_token_params, resident_layers)
from . import machine
from .machine import Available

GB = 1e9


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


def parity_reference(cfg: PaliGemmaConfig, dtype: str, device: str, disk_dtype: str,
                     text_tokens: int, avail: "Available | None" = None) -> str:
    """How `npgemma parity` holds its reference's weights: "float32" in RAM when that fits (or
    memory cannot be read), else the checkpoint's narrow dtype memory-mapped when that needs
    less anonymous memory (PaliGemma 2 10B in float32 is 38.7 GB; its bfloat16 file 19.3 GB).
    `avail`: the memory reading to judge by (read now when not given)."""
    avail = machine.available_memory() if avail is None else avail
    whole = parity_estimate(cfg, dtype, device, disk_dtype, text_tokens)
    if avail is None or whole.ram_total <= avail.bytes or disk_dtype not in NARROW:
        return "float32"
    mapped = parity_estimate(cfg, dtype, device, disk_dtype, text_tokens, reference=disk_dtype)
    return disk_dtype if mapped.ram_total < whole.ram_total else "float32"


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
    avail = machine.available_memory() if available is None else available
    if avail is not None and need.file and need.ram_total <= avail.bytes \
            and need.ram_total + need.file_total > avail.bytes:
        itemsize = ITEMSIZE.get(disk_dtype, 4)
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
        free = machine.gpu_free(device)
        if free is not None and need.gpu_total > free:
            hint = "" if dtype != "float32" else "--dtype bfloat16 halves the weights; "
            raise InputError(f"{what}: not enough GPU memory on {device} for {mode} in {dtype}: "
                             f"needs {_gb(need.gpu_total)} ({_parts(need.gpu)}), {_gb(free)} "
                             f"free; {hint}{tail}")
    return need
