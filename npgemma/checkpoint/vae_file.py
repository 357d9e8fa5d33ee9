"""PaliGemma's mask VQ-VAE file (`vae-oid.npz`): read it, check every tensor's shape.

The math that uses these weights is `npgemma/vqvae.py`, which documents the layout.
"""

from __future__ import annotations

import os

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


def load_vae(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a `vae-oid.npz`-layout file: {key: float32 array}, every shape checked."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            raw = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such VQ-VAE file (PaliGemma's is vae-oid.npz)") from None
    except (OSError, ValueError, EOFError) as e:
        raise WeightsError(f"{path}: not a readable .npz file ({e})") from None
    return check_vae(raw, where=str(path))
