"""The backend interface: the handful of calls `generate.py` and the pipeline need.

The per-layer functions are not the interface (parity tests import those from both sides
directly). A backend turns a NumPy weight tree into its own arrays once, then runs
`encode_image` and `forward` against its own KV-cache. Masks and positions arrive as NumPy.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

import numpy as np

from . import layers, paligemma
from .errors import InputError
from .slots import Slots
from .weights import load_weights

BACKENDS = ("numpy", "torch")
DTYPES = ("float32", "bfloat16", "float16")


class Backend(Protocol):
    name: str

    def load_weights(self, model_dir, cfg, progress=None) -> Any: ...
    def from_numpy(self, tree: dict) -> Any: ...
    def to_numpy(self, x: Any) -> np.ndarray: ...
    def encode_image(self, params, pixel_values: np.ndarray, cfg) -> Any: ...
    def forward(self, params, cfg, input_ids: np.ndarray, positions: np.ndarray, masks: dict,
                image_features=None, cache=None, last_only: bool = False,
                logit_positions=None) -> tuple[Any, Any]: ...
    def init_cache(self, cfg, batch: int, max_length: int) -> Any: ...
    # Decoding: the backend owns the state (slots, positions) beside its cache.
    def start_decode(self, cfg, valid: np.ndarray, is_prefix: np.ndarray, cache) -> Any: ...
    def decode_step(self, params, cfg, ids, state, cache) -> Any: ...
    def greedy(self, logits) -> Any: ...                 # ids where the logits are (no host copy)
    def ids_to_numpy(self, ids) -> np.ndarray: ...       # int64[B]: the one sync per token
    def last_logits_to_numpy(self, logits) -> np.ndarray: ...  # float32[B, V], for sampling


class HostDecodeState:
    """Decode state kept on the host (the NumPy backend's): the slots filled so far, in buffers
    sized once for the whole generation, so a step appends in place."""

    def __init__(self, valid: np.ndarray, is_prefix: np.ndarray, max_length: int):
        b, self.length = valid.shape
        self._valid = np.zeros((b, max_length), bool)
        self._prefix = np.zeros((b, max_length), bool)
        self._valid[:, :self.length], self._prefix[:, :self.length] = valid, is_prefix

    @property
    def slots(self) -> Slots:
        return Slots(self._valid[:, :self.length], self._prefix[:, :self.length])

    def append(self) -> None:
        """One more real, causal (generated) slot in every row."""
        self._valid[:, self.length] = True
        self.length += 1


def decode_on_host(forward, params, cfg, ids, state: HostDecodeState, cache):
    """One generated token per row: append a real causal slot, run `forward` over it."""
    state.append()
    slots, q = state.slots, state.length - 1
    logits, _ = forward(params, cfg, np.asarray(ids, dtype=np.int64)[:, None],
                        slots.positions(q), slots.masks(cfg, q), cache=cache, last_only=True)
    return logits


class NumpyBackend:
    """The reference: computes in float32. `dtype` is the *storage* dtype of the weights —
    "bfloat16"/"float16" halve the memory (each matrix is widened to float32 when used)."""

    name = "numpy"

    def __init__(self, dtype: str = "float32"):
        import ml_dtypes

        self.dtype = dtype
        self.weight_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16,
                             "float16": np.float16}[dtype]

    def load_weights(self, model_dir, cfg, progress=None):
        """float32: read and widened once. Low memory: memory-mapped in the file's dtype, widened
        a slab at a time when used (a float32 file then stays float32: nothing is rounded)."""
        if self.dtype == "float32":
            return load_weights(model_dir, cfg, dtype=np.float32, progress=progress)
        return load_weights(model_dir, cfg, mmap=True)

    def from_numpy(self, tree):
        return tree

    def to_numpy(self, x):
        return np.asarray(x, dtype=np.float32)

    def encode_image(self, params, pixel_values, cfg):
        return paligemma.encode_image(params, np.asarray(pixel_values, np.float32), cfg)

    def forward(self, params, cfg, input_ids, positions, masks, image_features=None, cache=None,
                last_only=False, logit_positions=None):
        return paligemma.forward(params, cfg, input_ids, positions, masks, image_features,
                                 cache=cache, last_only=last_only, logit_positions=logit_positions)

    def init_cache(self, cfg, batch, max_length):
        return paligemma.init_cache(cfg, batch, max_length)

    def start_decode(self, cfg, valid, is_prefix, cache):
        return HostDecodeState(valid, is_prefix, cache.max_length)

    def decode_step(self, params, cfg, ids, state, cache):
        # float32: BLAS's matrix-vector products on BLAS's threads; the low-memory mode also
        # widens every weight on the way, and that runs on our threads (layers.on_our_threads).
        threads = contextlib.nullcontext() if self.dtype == "float32" else layers.on_our_threads()
        with threads:
            return decode_on_host(self.forward, params, cfg, ids, state, cache)

    def greedy(self, logits):
        return logits[:, -1].argmax(axis=-1).astype(np.int64)

    def ids_to_numpy(self, ids):
        return np.asarray(ids, dtype=np.int64)

    def last_logits_to_numpy(self, logits):
        return np.asarray(logits[:, -1], dtype=np.float32)

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
