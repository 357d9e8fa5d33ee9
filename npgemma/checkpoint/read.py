"""Reading a checkpoint folder: which safetensors files, their headers, then the tensors."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import ml_dtypes  # noqa: F401  (registers bfloat16 with NumPy, so safetensors can read BF16)
import numpy as np
from safetensors import SafetensorError, safe_open

from ..errors import WeightsError
from . import finite
from .checks import DISK_DTYPES, Entries


def list_files(model_dir: Path) -> tuple[list[Path], dict[str, str] | None]:
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
    weight_map = _read_weight_map(index)
    names = sorted(set(weight_map.values()))
    missing = [n for n in names if not (model_dir / n).is_file()]
    if missing:
        raise WeightsError(f"{index}: names shard(s) missing from {model_dir}: "
                           + ", ".join(missing))
    return [model_dir / n for n in names], weight_map


def disk_keys(model_dir: Path) -> list[str] | None:
    """The tensor names a checkpoint folder's files hold, from the index or the single file's
    header alone (no tensor data); None when they cannot be read (the loader says why)."""
    try:
        files, weight_map = list_files(model_dir)
        if weight_map is not None:
            return list(weight_map)
        _check_header(files[0])
        with open(files[0], "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        return [k for k in header if k != "__metadata__"]
    except (WeightsError, OSError, ValueError, AttributeError):
        return None


def _read_weight_map(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        assert isinstance(weight_map, dict) and all(isinstance(v, str) for v in weight_map.values())
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AssertionError) as e:
        raise WeightsError(f"{index}: not a valid index with a weight_map ({e!r})") from None
    return weight_map


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


def read_headers(files: list[Path]) -> Entries:
    """On-disk key -> [(file, dtype, shape)] for every tensor in every file (metadata only)."""
    entries: Entries = {}
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


def disk_bytes(entries: Entries, keys) -> int:
    """The on-disk size of the tensors `keys` (what progress counts)."""
    return sum(int(np.prod(shape)) * np.dtype(DISK_DTYPES[dtype]).itemsize
               for shape, dtype in ((entries[k][0][2], entries[k][0][1]) for k in keys))


def read_tensors(path: Path, keys: dict[str, str], target: np.dtype, on_read) -> dict:
    """{canonical key: array cast to `target`} for the on-disk `keys` ({disk: canonical}) of one
    file, one tensor at a time (the on-disk copy goes before the next is read);
    `on_read(nbytes, canonical key)` after each."""
    out = {}
    try:
        with safe_open(str(path), framework="np") as f:
            for disk, canonical in keys.items():
                arr = f.get_tensor(disk)
                finite.check(arr, disk, str(path))  # in the file's dtype: fewer bytes than cast
                out[canonical] = arr if arr.dtype == target else arr.astype(target)
                nbytes = arr.nbytes
                del arr
                on_read(nbytes, canonical)
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"{path}: reading tensors failed ({e})") from None
    return out


def memory_map(path: Path, keys: dict[str, str]) -> dict:
    """{canonical key: read-only array over the file's own bytes, in its dtype} for the on-disk
    `keys` of one file: nothing is read until used, and the OS may drop the pages again.

    A safetensors file is an 8-byte little-endian header length, a JSON header giving each
    tensor's dtype, shape and byte range, then the raw little-endian data.
    """
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for disk, canonical in keys.items():
        info = header[disk]
        begin, end = info["data_offsets"]
        out[canonical] = data[begin:end].view(DISK_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def stream_tensors(path: Path, keys: dict[str, str], target: np.dtype | None):
    """Yield (canonical key, array, on-disk bytes) for the on-disk `keys` ({disk: canonical})
    of one file, one tensor at a time, cast to `target` (None: as stored). Plain reads into a
    fresh buffer per tensor, no memory map (whose touched pages would count against the process
    until unmapped): a consumer that moves each array away holds about one tensor in RAM."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
            for disk, canonical in keys.items():
                info = header[disk]
                begin, end = info["data_offsets"]
                f.seek(8 + n + begin)
                raw = np.empty(end - begin, np.uint8)
                if f.readinto(memoryview(raw)) != raw.size:
                    raise OSError(f"{disk}: the file ends inside the tensor's bytes")
                arr = raw.view(DISK_DTYPES[info["dtype"]]).reshape(info["shape"])
                finite.check(arr, disk, str(path))
                out = arr if target is None or arr.dtype == target else arr.astype(target)
                del raw, arr  # the on-disk-dtype copy goes before the next tensor is read
                yield canonical, out, end - begin
                del out
    except WeightsError:  # a non-finite weight: already named
        raise
    except (OSError, ValueError, KeyError) as e:
        raise WeightsError(f"{path}: reading tensors failed ({e!r})") from None


def checkpoint_hash(model_dir) -> str | None:
    """sha256 over config.json and the *.safetensors files (a file over 1 GiB contributes its
    size, safetensors header and first/last MiB: hashing 12 GB would take longer than a trace)."""
    if model_dir is None:
        return None
    h = hashlib.sha256()
    folder = Path(model_dir)
    paths = [p for p in sorted([folder / "config.json", *folder.glob("*.safetensors")]) if p.is_file()]
    if not paths:
        return None
    for path in paths:
        size = path.stat().st_size
        h.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as f:
            if size <= 1 << 30:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
            else:
                header = int.from_bytes(f.read(8), "little")
                h.update(f.read(min(header, 1 << 26)))
                h.update(f.read(1 << 20))
                f.seek(size - (1 << 20))
                h.update(f.read())
    return h.hexdigest()
