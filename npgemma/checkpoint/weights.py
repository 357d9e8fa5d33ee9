"""Checkpoint folder -> nested dict of NumPy arrays, named exactly as Hugging Face's modules.

Four concerns, one module each: `layout` (canonical names and shapes, the on-disk layouts and
which one a folder follows), `checks` (strict validation against config.json and the shard
index), `problems` (every problem in one `WeightsError`), `read` (files, headers, tensors).
Loading is strict: every problem is collected and reported at once.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..config import PaliGemmaConfig
from ..errors import WeightsError
from .checks import DISK_DTYPES, DTYPES, index_problems, tensor_problems
from .layout import (LAYOUTS, disk_name, disk_names, expected_shapes, flatten, unflatten,  # noqa: F401
                     vision_head_shapes)
from .problems import report
from .read import disk_bytes, list_files, memory_map, read_headers, read_tensors, stream_tensors


def _as_dtype(dtype) -> np.dtype:
    try:
        d = np.dtype(dtype)
    except TypeError:
        d = None
    if d is None or d.name not in DTYPES:
        raise WeightsError(f"dtype {dtype!r} is not supported (use float32, bfloat16 or float16)")
    return d


def header_summary(model_dir) -> tuple[list[Path], dict[str, tuple[str, tuple[int, ...]]]]:
    """The safetensors files of a checkpoint folder and every tensor's on-disk name ->
    (dtype name, shape), from the headers alone: no tensor data is read."""
    files, _ = list_files(Path(os.fspath(model_dir)))
    return files, {key: (DISK_DTYPES.get(places[0][1], places[0][1]), places[0][2])
                   for key, places in read_headers(files).items()}


def _validated(model_dir: Path, cfg: PaliGemmaConfig):
    """(files, headers, {disk name: canonical key}) of a checkpoint that matches `cfg`; else one
    `WeightsError` listing every problem (tensors against the config, the shard index)."""
    files, weight_map = list_files(model_dir)
    entries = read_headers(files)
    probs, layout = tensor_problems(entries, cfg)
    probs += index_problems(entries, weight_map) if weight_map is not None else []
    if probs:
        raise WeightsError(report(model_dir, layout, probs))
    return files, entries, disk_names(expected_shapes(cfg), layout)


def load_weights(model_dir, cfg: PaliGemmaConfig, *, dtype=np.float32, progress=None,
                 mmap: bool = False) -> dict:
    """Read every tensor of a PaliGemma checkpoint into the canonical tree, cast to `dtype`.

    Tensors are converted one at a time, so peak memory is the final tree plus one tensor.
    `progress(done_bytes, total_bytes, key)` is called after each tensor (on-disk bytes).
    mmap=True instead memory-maps every tensor in its file dtype (`dtype` is ignored): loading
    is near instant, and the pages are read (and can be dropped again) by the OS as used.
    """
    model_dir, target = Path(os.fspath(model_dir)), _as_dtype(dtype)
    files, entries, to_load = _validated(model_dir, cfg)
    total, done = disk_bytes(entries, to_load), [0]

    def on_read(nbytes: int, key: str) -> None:
        done[0] += nbytes
        if progress is not None:
            progress(done[0], total, key)

    flat = {}
    for path in files:
        keys = {d: c for d, c in to_load.items() if entries[d][0][0] == path}
        flat |= memory_map(path, keys) if mmap else read_tensors(path, keys, target, on_read)
    return unflatten({key: flat[key] for key in to_load.values()})  # canonical order


def iter_weights(model_dir, cfg: PaliGemmaConfig, *, dtype=np.float32, progress=None):
    """Yield (canonical flat key, array cast to `dtype`; None: as stored) one tensor at a time,
    file by file, once the whole checkpoint has been validated (every problem in one
    `WeightsError`, as `load_weights`). For loaders that move each tensor elsewhere (a GPU):
    host RAM then holds about one tensor. `progress` as in `load_weights`."""
    model_dir = Path(os.fspath(model_dir))
    target = None if dtype is None else _as_dtype(dtype)
    files, entries, to_load = _validated(model_dir, cfg)
    total, done = disk_bytes(entries, to_load), 0
    for path in files:
        keys = {d: c for d, c in to_load.items() if entries[d][0][0] == path}
        for canonical, arr, nbytes in stream_tensors(path, keys, target):
            done += nbytes
            if progress is not None:
                progress(done, total, canonical)
            yield canonical, arr
