"""PaliGemma's mask VQ-VAE file (`vae-oid.npz`): read it, check every tensor's shape.

The math that uses these weights is `npgemma/vqvae.py`, which documents the layout.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from ..errors import WeightsError
from ..vqvae import DECODER_RES, DECODER_UP, EMBEDDING, ENCODER_DOWN, ENCODER_RES


def _check(vae: dict, key: str, shape: tuple, where: str) -> np.ndarray:
    """vae[key] as float32, its shape checked against `shape` (None = any size on that axis)."""
    if key not in vae:
        raise WeightsError(f"{where}: missing key {key!r} (expected the vae-oid.npz layout: "
                           f"{EMBEDDING}, decoder.N.weight/bias, encoder.N.weight/bias)")
    arr = np.asarray(vae[key])
    if arr.ndim != len(shape) or any(e is not None and e != a for a, e in zip(arr.shape, shape)):
        want = "[" + ", ".join("*" if e is None else str(e) for e in shape) + "]"
        raise WeightsError(f"{where}: {key!r} has shape {list(arr.shape)}, expected {want}")
    return arr.astype(np.float32)


def check_vae(vae: dict, where: str = "VQ-VAE weights") -> dict[str, np.ndarray]:
    """Every tensor of the vae-oid layout, shapes chained layer to layer; float32 copies."""
    out = {EMBEDDING: _check(vae, EMBEDDING, (None, None), where)}
    d = out[EMBEDDING].shape[1]

    def conv(name, c, kernel=None, transposed=False):
        shape = (c, None, kernel, kernel) if transposed else (None, c, kernel, kernel)
        w = out[name + ".weight"] = _check(vae, name + ".weight", shape, where)
        o = w.shape[1] if transposed else w.shape[0]
        out[name + ".bias"] = _check(vae, name + ".bias", (o,), where)
        return o

    def res_block(name, c):
        conv(name + ".0", c, 3), conv(name + ".2", c, 3)
        if conv(name + ".4", c, 1) != c:
            raise WeightsError(f"{where}: {name}.4 must map back to its block's {c} channels")

    width = conv("decoder.0", d, 1)
    for name in DECODER_RES:
        res_block(name, width)
    for name in DECODER_UP:
        width = conv(name, width, 4, transposed=True)
    if conv("decoder.12", width, 1) != 1:
        raise WeightsError(f"{where}: decoder.12 must output 1 channel (the mask)")
    width = 1
    for name in ENCODER_DOWN:
        width = conv(name, width)
    for name in ENCODER_RES:
        res_block(name, width)
    if conv("encoder.10", width, 1) != d:
        raise WeightsError(f"{where}: encoder.10 must output the code width {d} of {EMBEDDING}")
    return out


EXPECTED = "expected PaliGemma's mask VQ-VAE, an .npz archive of arrays like vae-oid.npz"


def load_vae(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a `vae-oid.npz`-layout file: {key: float32 array}, every shape checked. A file that
    is not one (missing, a folder, text, a single .npy array, pickled objects) is one
    WeightsError naming the file and what it is, in our words rather than NumPy's."""
    where = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except FileNotFoundError:
        raise WeightsError(f"{where}: no such VQ-VAE file ({EXPECTED})") from None
    except IsADirectoryError:
        raise WeightsError(f"{where}: is a folder, not a file ({EXPECTED})") from None
    except OSError as e:
        raise WeightsError(f"{where}: cannot read it ({e.strerror}; {EXPECTED})") from None
    if head == b"\x93NUMPY":  # np.save's format: one array, not the archive of many
        raise WeightsError(f"{where}: a single .npy array, not an .npz archive ({EXPECTED})")
    if not zipfile.is_zipfile(where):  # an .npz is a zip archive of .npy files
        raise WeightsError(f"{where}: not an .npz archive ({EXPECTED})")
    try:
        with np.load(path, allow_pickle=False) as npz:
            raw = {k: npz[k] for k in npz.files}
    except ValueError as e:
        if "allow_pickle" in str(e):  # never unpickled: loading it could run code
            raise WeightsError(f"{where}: holds pickled Python objects, not plain arrays "
                               f"({EXPECTED})") from None
        raise WeightsError(f"{where}: a damaged .npz archive ({e}; {EXPECTED})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise WeightsError(f"{where}: a damaged .npz archive ({e}; {EXPECTED})") from None
    return check_vae(raw, where=where)
