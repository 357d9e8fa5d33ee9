"""`npgemma models`: the PaliGemma checkpoints in the local Hugging Face cache (and folders
given), one row each: what it is, what it weighs on disk, and the RAM each backend needs.

Everything comes from config.json and the safetensors headers; no tensor data is read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..checkpoint import estimate, hub, machine
from ..checkpoint.config_json import load_config
from ..errors import NpgemmaError

# (label, backend, dtype) of the RAM columns: numpy's low-memory mode keeps bfloat16 weights.
MODES = (("numpy float32", "numpy", "float32"), ("numpy bf16", "numpy", "bfloat16"),
         ("torch float32", "torch", "float32"), ("torch bf16", "torch", "bfloat16"))


@dataclass(frozen=True)
class Summary:
    name: str          # org/name@ref, or the folder
    path: str
    version: int       # PaliGemma 1 (Gemma decoder) or 2 (Gemma-2)
    params: int
    resolution: int
    disk_dtype: str
    disk_bytes: int
    ram: dict[str, int]    # mode label -> bytes needed (CPU)
    fits: dict[str, bool]  # mode label -> fits the memory available now
    streams: dict[str, bool] = field(default_factory=dict)  # mode label -> runs from disk


def summarize(folder: Path, name: str, avail: machine.Available | None) -> Summary:
    from ..checkpoint.weights import header_summary

    cfg = load_config(folder)
    files, headers = header_summary(folder)
    on_disk = estimate.stored_dtype(headers)
    needs = {label: estimate.estimate(cfg, backend, dtype, "cpu", on_disk)
             for label, backend, dtype in MODES}
    ram = {k: n.ram_total + n.file_total for k, n in needs.items()}
    fits = {k: avail is None or v <= avail.bytes for k, v in ram.items()}
    # The low-memory mode's weights are file pages: larger than memory, they stream from disk.
    streams = {k: not fits[k] and bool(n.file) and avail is not None and n.ram_total <= avail.bytes
               for k, n in needs.items()}
    return Summary(name, str(folder), 2 if cfg.text_config.is_gemma2 else 1,
                   estimate.num_params(cfg), cfg.vision_config.image_size, on_disk,
                   sum(f.stat().st_size for f in files), ram, fits, streams)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def _table(rows: list[Summary]) -> list[str]:
    head = ["checkpoint", "ver", "params", "px", "on disk", "size"] + [m[0] for m in MODES]
    body = [[r.name, str(r.version), _count(r.params), str(r.resolution), r.disk_dtype,
             _gb(r.disk_bytes)] + [f"{_gb(r.ram[m])} " + ("ok" if r.fits[m] else "streams"
                                   if r.streams.get(m) else "NO")
                                   for m, _, _ in MODES] for r in rows]
    widths = [max(len(line[i]) for line in [head] + body) for i in range(len(head))]
    return ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head] + body]


def run_models_cli(args) -> int:
    avail = machine.available_memory()
    found: list[tuple[Path, str]] = []
    notes: list[str] = []
    try:
        found += [(c.path, c.name) for c in hub.cached_paligemma()]
        where = f"Hugging Face cache {hub.cache_dir()}"
    except NpgemmaError:  # no huggingface_hub: folders only
        where = "Hugging Face cache not read (pip install 'npgemma[hub]')"
    found += [(hub.resolve(f), f) for f in args.folders]
    rows = []
    for folder, name in found:
        try:
            rows.append(summarize(folder, name, avail))
        except NpgemmaError as e:
            if name in args.folders:
                raise
            notes.append(f"{name}: skipped: {str(e).splitlines()[0]}")
    budget = f"{estimate.TEXT_TOKENS} text tokens"
    have = f"{_gb(avail.bytes)} ({avail.source})" if avail else "unknown"
    if args.json:
        print(json.dumps({"cache": hub.cache_dir(), "available_bytes": avail and avail.bytes,
                          "available_source": avail and avail.source,
                          "checkpoints": [asdict(r) for r in rows], "skipped": notes}))
        return 0
    cached = sum(r.name not in args.folders for r in rows)
    given = f" (+ {len(rows) - cached} given)" if len(rows) > cached else ""
    print(f"{where}: {cached} PaliGemma checkpoint(s){given}; memory available now: {have}")
    if rows:
        print("\n".join(_table(rows)))
        print(f"(RAM: weights + KV-cache and activations for the image tokens + {budget} on the "
              "CPU; ok = fits now; streams = the low-memory mode's weights exceed it and are "
              "read from disk on every pass)")
    for note in notes:
        print(note)
    return 0
