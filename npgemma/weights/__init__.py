"""Checkpoint folder -> nested dict of NumPy arrays, named exactly as Hugging Face's modules.

Four concerns, one module each: `layout` (canonical names and shapes, the on-disk layouts and
which one a folder follows), `checks` (strict validation against config.json and the shard
index), `report` (every problem in one `WeightsError`), `read` (files, headers, tensors).
Loading is strict: every problem is collected and reported at once.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..config import PaliGemmaConfig
from ..errors import WeightsError
from .checks import index_problems, tensor_problems
from .layout import (LAYOUTS, disk_name, disk_names, expected_shapes, flatten,  # noqa: F401
                     unflatten, vision_head_shapes)
from .read import disk_bytes, list_files, read_headers, read_tensors
from .report import report

_SUPPORTED = ("float32", "bfloat16", "float16")


def _as_dtype(dtype) -> np.dtype:
    try:
        d = np.dtype(dtype)
    except TypeError:
        d = None
    if d is None or d.name not in _SUPPORTED:
        raise WeightsError(f"dtype {dtype!r} is not supported (use float32, bfloat16 or float16)")
    return d


def load_weights(model_dir, cfg: PaliGemmaConfig, *, dtype=np.float32, progress=None) -> dict:
    """Read every tensor of a PaliGemma checkpoint into the canonical tree, cast to `dtype`.

    Tensors are converted one at a time, so peak memory is the final tree plus one tensor.
    `progress(done_bytes, total_bytes, key)` is called after each tensor (on-disk bytes).
    """
    model_dir, target = Path(os.fspath(model_dir)), _as_dtype(dtype)
    files, weight_map = list_files(model_dir)
    entries = read_headers(files)
    probs, layout = tensor_problems(entries, cfg)
    probs += index_problems(entries, weight_map) if weight_map is not None else []
    if probs:
        raise WeightsError(report(model_dir, layout, probs))
    to_load = disk_names(expected_shapes(cfg), layout)  # {disk name: canonical key}
    total, done = disk_bytes(entries, to_load), [0]

    def on_read(nbytes: int, key: str) -> None:
        done[0] += nbytes
        if progress is not None:
            progress(done[0], total, key)

    flat = {}
    for path in files:
        keys = {d: c for d, c in to_load.items() if entries[d][0][0] == path}
        flat |= read_tensors(path, keys, target, on_read)
    return unflatten({key: flat[key] for key in to_load.values()})  # canonical order
