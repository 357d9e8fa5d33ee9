"""The backend interface: the handful of calls `generate.py` and the pipeline need.

The per-layer functions are not the interface (parity tests import those from both sides
directly). A backend turns a NumPy weight tree into its own arrays once, then runs
`encode_image` and `forward` against its own KV-cache. Masks and positions arrive as NumPy.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from . import paligemma
from .errors import InputError

BACKENDS = ("numpy", "torch")
DTYPES = ("float32", "bfloat16", "float16")


class Backend(Protocol):
    name: str

    def from_numpy(self, tree: dict) -> Any: ...
    def to_numpy(self, x: Any) -> np.ndarray: ...
    def encode_image(self, params, pixel_values: np.ndarray, cfg) -> Any: ...
    def forward(self, params, cfg, input_ids: np.ndarray, positions: np.ndarray, masks: dict,
                image_features=None, cache=None, last_only: bool = False) -> tuple[Any, Any]: ...
    def init_cache(self, cfg, batch: int, max_length: int) -> Any: ...
    def greedy(self, logits) -> np.ndarray: ...
    def decode_masks(self, vae, codes: np.ndarray) -> np.ndarray: ...


class NumpyBackend:
    """The reference: computes in float32. `dtype` is the *storage* dtype of the weights —
    "bfloat16"/"float16" halve the memory (each matrix is widened to float32 when used)."""

    name = "numpy"

    def __init__(self, dtype: str = "float32"):
        import ml_dtypes

        self.dtype = dtype
        self.weight_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16,
                             "float16": np.float16}[dtype]

    def from_numpy(self, tree):
        return tree

    def to_numpy(self, x):
        return np.asarray(x, dtype=np.float32)

    def encode_image(self, params, pixel_values, cfg):
        return paligemma.encode_image(params, np.asarray(pixel_values, np.float32), cfg)

    def forward(self, params, cfg, input_ids, positions, masks, image_features=None, cache=None,
                last_only=False):
        return paligemma.forward(params, cfg, input_ids, positions, masks, image_features,
                                 cache=cache, last_only=last_only)

    def init_cache(self, cfg, batch, max_length):
        return paligemma.init_cache(cfg, batch, max_length)

    def greedy(self, logits):
        return logits[:, -1].argmax(axis=-1).astype(np.int64)

    def decode_masks(self, vae, codes):
        from . import vqvae

        return vqvae.decode(vae, codes)


def get_backend(name: str = "numpy", device: str = "cpu", dtype: str = "float32") -> Backend:
    """A backend by name. The torch backend is imported only here, only when asked for."""
    if dtype not in DTYPES:
        raise InputError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if name == "numpy":
        if device != "cpu":
            raise InputError(f"the numpy backend runs on the CPU only (device {device!r}); "
                             "use backend='torch' for cuda")
        return NumpyBackend(dtype)
    if name == "torch":
        try:
            import torch  # noqa: F401
        except ImportError:
            raise InputError("backend 'torch' needs PyTorch: pip install 'npgemma[torch]' "
                             "(or pip install torch)") from None
        from .torch_backend import TorchBackend

        return TorchBackend(device=device, dtype=dtype)
    raise InputError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
