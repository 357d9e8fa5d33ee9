"""Checkpoint folder -> nested dict of NumPy arrays, named exactly as Hugging Face's modules.

The canonical tree mirrors transformers' module names with the wrappers dropped:
`vision_tower.{embeddings,encoder.layers[i],post_layernorm}`, `multi_modal_projector.linear`,
`language_model.{embed_tokens,layers[i],norm}` and, only for untied checkpoints, `lm_head`.
Flat keys are the dotted paths (`language_model.layers.0.mlp.down_proj.weight`).

On disk the same tensors carry one of four prefix sets (`LAYOUTS`). transformers 5.24 renames
each prefix independently when it loads (conversion_mapping.py: the "llava" renames for the
outer prefixes, `PrefixChange(prefix_to_remove="vision_model")` for SigLIP) and undoes only the
renames it applied when it saves, so which of the four a folder holds depends on its history.
Loading is strict: every problem is collected and reported in one `WeightsError`.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import ml_dtypes  # noqa: F401  (registers bfloat16 with NumPy, so safetensors can read BF16)
import numpy as np
from safetensors import SafetensorError, safe_open

from .config import PaliGemmaConfig
from .errors import WeightsError

# On-disk prefix of each canonical top-level part, per layout (verified against transformers
# 5.24.0's save_pretrained output):
#   hub      4.41-4.51 and the Hub's PaliGemma / PaliGemma-2 repos.
#   v4.52    4.52-4.5x: PaliGemmaModel under `model.`, lm_head at the top.
#   v5       5.x in-memory names (save_pretrained(save_original_format=False)): no `vision_model.`.
#   v5-save  5.x save_pretrained of a freshly built model: hub prefixes, no `vision_model.`.
LAYOUTS = {
    "hub": ("vision_tower.vision_model.", "multi_modal_projector.", "language_model.model.",
            "language_model.lm_head."),
    "v4.52": ("model.vision_tower.vision_model.", "model.multi_modal_projector.",
              "model.language_model.", "lm_head."),
    "v5": ("model.vision_tower.", "model.multi_modal_projector.", "model.language_model.",
           "lm_head."),
    "v5-save": ("vision_tower.", "multi_modal_projector.", "language_model.model.",
                "language_model.lm_head."),
}
_PARTS = ("vision_tower.", "multi_modal_projector.", "language_model.", "lm_head.")
_DISK_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
_MAX_LISTED = 100  # problems listed per kind; the count line always gives the total


def expected_shapes(cfg: PaliGemmaConfig) -> dict[str, tuple[int, ...]]:
    """Flat canonical key -> shape, for every tensor the model needs."""
    v, t = cfg.vision_config, cfg.text_config
    dv, fv, p = v.hidden_size, v.intermediate_size, v.patch_size
    dt, f, h = t.hidden_size, t.intermediate_size, t.head_dim
    out = {
        "vision_tower.embeddings.patch_embedding.weight": (dv, v.num_channels, p, p),  # OIHW
        "vision_tower.embeddings.patch_embedding.bias": (dv,),
        "vision_tower.embeddings.position_embedding.weight": (v.num_patches, dv),
    }
    for i in range(v.num_hidden_layers):
        pre = f"vision_tower.encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            out |= {pre + norm + ".weight": (dv,), pre + norm + ".bias": (dv,)}
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            attn = pre + f"self_attn.{proj}."
            out |= {attn + "weight": (dv, dv), attn + "bias": (dv,)}
        out |= {pre + "mlp.fc1.weight": (fv, dv), pre + "mlp.fc1.bias": (fv,),
                pre + "mlp.fc2.weight": (dv, fv), pre + "mlp.fc2.bias": (dv,)}
    out |= {"vision_tower.post_layernorm.weight": (dv,), "vision_tower.post_layernorm.bias": (dv,),
            "multi_modal_projector.linear.weight": (dt, dv),
            "multi_modal_projector.linear.bias": (dt,),
            "language_model.embed_tokens.weight": (t.vocab_size, dt)}
    norms = ["input_layernorm", "post_attention_layernorm"]
    if t.is_gemma2:
        norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    for i in range(t.num_hidden_layers):
        pre = f"language_model.layers.{i}."
        out |= {pre + n + ".weight": (dt,) for n in norms}
        out |= {pre + "self_attn.q_proj.weight": (t.num_attention_heads * h, dt),
                pre + "self_attn.k_proj.weight": (t.num_key_value_heads * h, dt),
                pre + "self_attn.v_proj.weight": (t.num_key_value_heads * h, dt),
                pre + "self_attn.o_proj.weight": (dt, t.num_attention_heads * h),
                pre + "mlp.gate_proj.weight": (f, dt), pre + "mlp.up_proj.weight": (f, dt),
                pre + "mlp.down_proj.weight": (dt, f)}
    out["language_model.norm.weight"] = (dt,)
    if not t.tie_word_embeddings:
        out["lm_head.weight"] = (t.vocab_size, dt)
    return out


def vision_head_shapes(cfg: PaliGemmaConfig) -> dict[str, tuple[int, ...]]:
    """SigLIP's attention-pooling head (`SiglipMultiheadAttentionPoolingHead`): transformers
    builds and saves it whenever a vision_config dict leaves `vision_use_head` at its
    SiglipVisionConfig default (true), but PaliGemma never runs it, so it is never loaded."""
    dv, fv = cfg.vision_config.hidden_size, cfg.vision_config.intermediate_size
    shapes = {"probe": (1, 1, dv), "attention.in_proj_weight": (3 * dv, dv),
              "attention.in_proj_bias": (3 * dv,), "attention.out_proj.weight": (dv, dv),
              "attention.out_proj.bias": (dv,), "layernorm.weight": (dv,),
              "layernorm.bias": (dv,), "mlp.fc1.weight": (fv, dv), "mlp.fc1.bias": (fv,),
              "mlp.fc2.weight": (dv, fv), "mlp.fc2.bias": (dv,)}
    return {"vision_tower.head." + k: s for k, s in shapes.items()}


def _droppable_shapes(cfg: PaliGemmaConfig) -> dict[str, tuple[int, ...]]:
    """Tensors accepted on disk (shape-checked) but never read: the vision pooling head and a
    tied lm_head (a copy of embed_tokens that some converters store)."""
    out = vision_head_shapes(cfg)
    t = cfg.text_config
    if t.tie_word_embeddings:
        out["lm_head.weight"] = (t.vocab_size, t.hidden_size)
    return out


def disk_name(key: str, layout: str) -> str:
    """The on-disk name of canonical `key` in `layout`."""
    for part, prefix in zip(_PARTS, LAYOUTS[layout]):
        if key.startswith(part):
            return prefix + key[len(part):]
    raise KeyError(key)


def flatten(tree, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts / lists -> {dotted key: array}; list items are keyed by their index."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = ((str(i), v) for i, v in enumerate(tree))
    else:
        return {prefix[:-1]: tree}
    out = {}
    for k, v in items:
        out |= flatten(v, f"{prefix}{k}.")
    return out


def unflatten(flat: dict[str, np.ndarray]):
    """{dotted key: array} -> nested dicts; every level named "layers" becomes a list."""
    tree: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return _lists_for_layers(tree)


def _lists_for_layers(node):
    if not isinstance(node, dict):
        return node
    out = {k: _lists_for_layers(v) for k, v in node.items()}
    if isinstance(out.get("layers"), dict):
        layers = out["layers"]
        if sorted(layers, key=lambda s: (len(s), s)) != [str(i) for i in range(len(layers))]:
            raise WeightsError(f"layer indices {sorted(layers)} are not 0..{len(layers) - 1}")
        out["layers"] = [layers[str(i)] for i in range(len(layers))]
    return out


def _list_files(model_dir: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The safetensors files to read and, for shards, the index's weight_map (key -> file name).
    Like transformers, a single `model.safetensors` wins over an index."""
    if not model_dir.is_dir():
        raise WeightsError(f"{model_dir}: no such checkpoint folder")
    single, index = model_dir / "model.safetensors", model_dir / "model.safetensors.index.json"
    if single.is_file():
        return [single], None
    if not index.is_file():
        found = sorted(p.name for p in model_dir.iterdir())
        raise WeightsError(f"{model_dir}: no model.safetensors or model.safetensors.index.json "
                           f"(npgemma reads safetensors only); the folder holds {found}")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        assert isinstance(weight_map, dict) and all(isinstance(v, str) for v in weight_map.values())
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AssertionError) as e:
        raise WeightsError(f"{index}: not a valid index with a weight_map ({e!r})") from None
    names = sorted(set(weight_map.values()))
    missing = [n for n in names if not (model_dir / n).is_file()]
    if missing:
        raise WeightsError(f"{index}: names shard(s) missing from {model_dir}: "
                           + ", ".join(missing))
    return [model_dir / n for n in names], weight_map


def _check_header(path: Path) -> None:
    """Reject files whose 8-byte header length cannot be right before safetensors reads them."""
    size = path.stat().st_size
    if size < 8:
        raise WeightsError(f"{path}: {size} bytes, too short to be a safetensors file")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    if n > size - 8:
        raise WeightsError(f"{path}: header length field says {n} bytes but only {size - 8} "
                           "follow (truncated, or not a safetensors file)")


def _read_headers(files: list[Path]) -> dict[str, list[tuple[Path, str, tuple[int, ...]]]]:
    """On-disk key -> [(file, dtype, shape)] for every tensor in every file (metadata only)."""
    entries: dict[str, list] = {}
    for path in files:
        try:
            _check_header(path)
            with safe_open(str(path), framework="np") as f:
                for key in f.keys():
                    s = f.get_slice(key)
                    entries.setdefault(key, []).append((path, s.get_dtype(), tuple(s.get_shape())))
        except (SafetensorError, OSError) as e:
            raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None
    return entries


def _pick_layout(disk_keys, wanted: dict[str, tuple]) -> tuple[str, dict[str, str]]:
    """The layout explaining the most on-disk keys, and its {disk name: canonical key} map."""
    maps = {lay: {disk_name(k, lay): k for k in wanted} for lay in LAYOUTS}
    best = max(LAYOUTS, key=lambda lay: sum(k in maps[lay] for k in disk_keys))
    return best, maps


def _index_problems(entries, weight_map: dict[str, str]) -> list[str]:
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


def _problems(entries, cfg) -> tuple[list[str], str, dict[str, str]]:
    """Every mismatch between the tensors on disk and the config, the layout the files follow,
    and {disk name: canonical key} of the tensors to load."""
    need = expected_shapes(cfg)
    shapes = need | _droppable_shapes(cfg)
    layout, maps = _pick_layout(entries, shapes)
    found, probs = maps[layout], []
    for key, places in sorted(entries.items()):
        where = ", ".join(p.name for p, _, _ in places)
        _, dtype, shape = places[0]
        if len(places) > 1:
            probs.append(f"duplicate: {key} is in {where}")
        if key not in found:
            other = [lay for lay in LAYOUTS if key in maps[lay]]
            kind = f"mixed layouts: follows {other[0]!r}, not {layout!r}" if other else "unexpected"
            probs.append(f"{kind}: {where}: {key}")
        elif shape != shapes[found[key]]:
            probs.append(f"wrong shape: {where}: {key}: expected {shapes[found[key]]}, "
                         f"found {shape}")
        elif dtype not in _DISK_DTYPES and found[key] in need:
            probs.append(f"unsupported dtype: {where}: {key}: {dtype} "
                         f"(npgemma reads {', '.join(_DISK_DTYPES)})")
    for key in need:
        if disk_name(key, layout) not in entries:
            probs.append(f"missing: {key} (expected on disk as {disk_name(key, layout)})")
    return probs, layout, {disk_name(k, layout): k for k in need}


def _report(model_dir: Path, layout: str, probs: list[str]) -> str:
    """One message: a single problem in one line; several as a count line, then at most
    _MAX_LISTED lines per kind of problem."""
    if len(probs) == 1:
        return f"{model_dir}: checkpoint does not match config.json: {probs[0]}"
    lines, per_kind = [], {}
    for p in probs:
        kind = p.split(":")[0]
        per_kind[kind] = per_kind.get(kind, 0) + 1
        if per_kind[kind] <= _MAX_LISTED:
            lines.append("  " + p)
    counts = ", ".join(f"{n} {k}" for k, n in per_kind.items())
    more = sum(max(0, n - _MAX_LISTED) for n in per_kind.values())
    tail = [f"  ... and {more} more"] if more else []
    return "\n".join([f"{model_dir}: checkpoint does not match config.json "
                      f"(keys read as the {layout!r} layout): {counts}"] + lines + tail)


def _as_dtype(dtype) -> np.dtype:
    try:
        d = np.dtype(dtype)
    except TypeError:
        d = None
    if d is None or d.name not in _DISK_DTYPES.values():
        raise WeightsError(f"dtype {dtype!r} is not supported (use float32, bfloat16 or float16)")
    return d


def load_weights(model_dir, cfg: PaliGemmaConfig, *, dtype=np.float32, progress=None) -> dict:
    """Read every tensor of a PaliGemma checkpoint into the canonical tree, cast to `dtype`.

    Tensors are converted one at a time, so peak memory is the final tree plus one tensor.
    `progress(done_bytes, total_bytes, key)` is called after each tensor (on-disk bytes).
    """
    model_dir, target = Path(os.fspath(model_dir)), _as_dtype(dtype)
    files, weight_map = _list_files(model_dir)
    entries = _read_headers(files)
    probs, layout, to_load = _problems(entries, cfg)
    probs += _index_problems(entries, weight_map) if weight_map is not None else []
    if probs:
        raise WeightsError(_report(model_dir, layout, probs))
    by_file: dict[Path, list[str]] = {}
    for key in to_load:
        by_file.setdefault(entries[key][0][0], []).append(key)
    total = sum(int(np.prod(entries[k][0][2])) * np.dtype(_DISK_DTYPES[entries[k][0][1]]).itemsize
                for k in to_load)
    flat, done = {}, 0
    for path, keys in by_file.items():
        try:
            with safe_open(str(path), framework="np") as f:
                for key in keys:
                    arr = f.get_tensor(key)
                    flat[to_load[key]] = arr if arr.dtype == target else arr.astype(target)
                    done += arr.nbytes
                    del arr  # the on-disk-dtype copy goes before the next tensor is read
                    if progress is not None:
                        progress(done, total, to_load[key])
        except (SafetensorError, OSError) as e:
            raise WeightsError(f"{path}: reading tensors failed ({e})") from None
    return unflatten({key: flat[key] for key in to_load.values()})  # canonical order


def iter_weights(model_dir, cfg: PaliGemmaConfig, *, dtype=np.float32, progress=None):
    """Yield (canonical flat key, array cast to `dtype`) one tensor at a time, shard by shard,
    once the whole checkpoint has been validated (every problem in one WeightsError, as
    `load_weights`). Each tensor is read with plain reads into its own buffer (no memory map,
    whose touched pages would count against the process until unmapped), so a consumer that
    moves each array elsewhere (a GPU) and drops it holds about one tensor in host RAM.
    `progress` as in `load_weights`; dtype=None yields each tensor in its file dtype."""
    model_dir = Path(os.fspath(model_dir))
    target = None if dtype is None else _as_dtype(dtype)
    files, weight_map = _list_files(model_dir)
    entries = _read_headers(files)
    probs, layout, to_load = _problems(entries, cfg)
    probs += _index_problems(entries, weight_map) if weight_map is not None else []
    if probs:
        raise WeightsError(_report(model_dir, layout, probs))
    total = sum(int(np.prod(entries[k][0][2])) * np.dtype(_DISK_DTYPES[entries[k][0][1]]).itemsize
                for k in to_load)
    by_file: dict[Path, list[str]] = {}
    for key in to_load:
        by_file.setdefault(entries[key][0][0], []).append(key)
    done = 0
    for path, keys in by_file.items():
        try:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
                for key in keys:
                    info = header[key]
                    begin, end = info["data_offsets"]
                    f.seek(8 + n + begin)
                    raw = np.empty(end - begin, np.uint8)
                    if f.readinto(memoryview(raw)) != raw.size:
                        raise OSError(f"{key}: file ends inside the tensor's bytes")
                    arr = raw.view(_DISK_DTYPES[info["dtype"]]).reshape(info["shape"])
                    out = arr if target is None or arr.dtype == target else arr.astype(target)
                    del raw, arr  # the on-disk-dtype copy goes before the next tensor is read
                    done += end - begin
                    if progress is not None:
                        progress(done, total, to_load[key])
                    yield to_load[key], out
                    del out
        except (OSError, ValueError, KeyError) as e:
            raise WeightsError(f"{path}: reading tensors failed ({e!r})") from None
