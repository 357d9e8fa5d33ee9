"""Strict validation: every disagreement between the tensors on disk, config.json and the
shard index, each as one line `kind: where: what` (`problems.py` joins them)."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np

from ..config import PaliGemmaConfig
from .layout import (LAYOUTS, disk_name, disk_names, droppable_shapes, expected_shapes,
                     layer_counts, pick_layout)

# An on-disk key -> [(file, safetensors dtype, shape)], one entry per file that holds it.
Entries = dict[str, list[tuple[Path, str, tuple[int, ...]]]]
DISK_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
# The dtypes npgemma keeps weights in, by name (NumPy has no bfloat16: ml_dtypes gives it). The
# backends, the memory check, the CLI's --dtype choices and the test checkpoints all read this.
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
          "float16": np.dtype(np.float16)}


def layer_count_problems(disk_keys, layers: dict[str, int]) -> list[str]:
    """The towers whose layer count (`layers`: {"vision_config": n, "text_config": m}, as
    config.json says) exceeds the layers on disk: checked before anything is built per layer,
    so a config.json claiming 10**9 layers costs one pass over the names on disk. (Fewer layers
    than the files hold is left to the full check, whose cost the files bound: it names each
    unexpected tensor.)"""
    on_disk = layer_counts(disk_keys)
    return [f"{section}.num_hidden_layers is {n} in config.json, the weights hold "
            f"{on_disk[section]} {'vision' if section == 'vision_config' else 'decoder'} layers"
            for section, n in layers.items() if n > on_disk[section]]


def tensor_problems(entries: Entries, cfg: PaliGemmaConfig) -> tuple[list[str], str]:
    """The problems of the tensors on disk against `cfg`, and the layout they were read as
    (a layer count that disagrees with the files: that problem alone, before any per-layer
    work)."""
    counts = {"vision_config": cfg.vision_config.num_hidden_layers,
              "text_config": cfg.text_config.num_hidden_layers}
    probs = layer_count_problems(entries, counts)
    if probs:
        return [f"layer count: {p}" for p in probs], "hub"
    need = expected_shapes(cfg)
    shapes = need | droppable_shapes(cfg)
    layout = pick_layout(entries, shapes)
    names = {lay: disk_names(shapes, lay) for lay in LAYOUTS}
    probs = []
    for key, places in sorted(entries.items()):
        probs += _key_problems(key, places, layout, names, shapes, need)
    probs += _missing(entries, need, layout)
    return probs, layout


def _key_problems(key: str, places, layout: str, names: dict[str, dict[str, str]],
                  shapes: dict[str, tuple], need: dict[str, tuple]) -> list[str]:
    """One on-disk tensor: held twice, not a name of `layout`, the wrong shape or dtype."""
    where = ", ".join(p.name for p, _, _ in places)
    _, dtype, shape = places[0]
    probs = [f"duplicate: {key} is in {where}"] if len(places) > 1 else []
    canonical = names[layout].get(key)
    if canonical is None:
        other = [lay for lay in LAYOUTS if key in names[lay]]
        kind = f"mixed layouts: follows {other[0]!r}, not {layout!r}" if other else "unexpected"
        probs.append(f"{kind}: {where}: {key}")
    elif shape != shapes[canonical]:
        probs.append(f"wrong shape: {where}: {key}: expected {shapes[canonical]}, found {shape}")
    elif dtype not in DISK_DTYPES and canonical in need:
        probs.append(f"unsupported dtype: {where}: {key}: {dtype} "
                     f"(npgemma reads {', '.join(DISK_DTYPES)})")
    return probs


def _missing(entries: Entries, need: dict[str, tuple], layout: str) -> list[str]:
    return [f"missing: {key} (expected on disk as {disk_name(key, layout)})"
            for key in need if disk_name(key, layout) not in entries]


def index_problems(entries: Entries, weight_map: dict[str, str]) -> list[str]:
    """Disagreements between model.safetensors.index.json and the shards' own headers."""
    probs = []
    for key, places in sorted(entries.items()):
        if weight_map.get(key) != places[0][0].name:
            said = f"maps it to {weight_map[key]}" if key in weight_map else "does not list it"
            probs.append(f"index mismatch: {places[0][0].name}: {key} "
                         f"(model.safetensors.index.json {said})")
    for key, file in sorted(weight_map.items()):
        if file not in {p.name for p, _, _ in entries.get(key, [])}:
            probs.append(f"not in shard: {file}: {key} "
                         "(model.safetensors.index.json maps it there)")
    return probs
