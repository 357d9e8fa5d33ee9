"""The backend interface: the handful of calls `generate.py` and the pipeline need.

The per-layer functions are not the interface (parity tests import those from both sides
directly). A backend turns a NumPy weight tree into its own arrays once, then runs
`encode_image` and `forward` against its own KV-cache. Masks and positions arrive as NumPy.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ..checkpoint.checks import DTYPES as _DTYPES
from ..errors import InputError
from .numpy_backend import NumpyBackend

BACKENDS = ("numpy", "torch")
DTYPES = tuple(_DTYPES)  # "float32", "bfloat16", "float16"


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
    # eager: run the step's own code (its hook points fire), not a replayed device graph.
    def decode_step(self, params, cfg, ids, state, cache, eager: bool = False) -> Any: ...
    # ids where the logits are (no host copy); -1 for a row whose logits hold a NaN or an Inf
    def greedy(self, logits) -> Any: ...
    def ids_to_numpy(self, ids) -> np.ndarray: ...       # int64[B]: the one sync per token
    def last_logits_to_numpy(self, logits) -> np.ndarray: ...  # float32[B, V], for sampling
    # Segmentation: <seg> codes -> float32[B, 64, 64] mask maps through the VQ-VAE's weights.
    def decode_masks(self, vae, codes) -> np.ndarray: ...


class Observed:
    """A backend watched from outside: `before(call)` runs ahead of, and `after(call, result)`
    after, each `encode_image`, `forward` and `decode_step` (call is the method's name); with
    `eager`, every decode step runs its own code. All else is the backend's own. Used to name a
    trace's steps and to record the logits behind each generated token."""

    def __init__(self, backend: Backend, before=None, after=None, eager: bool = False):
        self._backend, self._before, self._after, self._eager = backend, before, after, eager

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def _call(self, name: str, *args, **kwargs):
        if self._before is not None:
            self._before(name)
        out = getattr(self._backend, name)(*args, **kwargs)
        if self._after is not None:
            self._after(name, out)
        return out

    def encode_image(self, *args, **kwargs):
        return self._call("encode_image", *args, **kwargs)

    def forward(self, *args, **kwargs):
        return self._call("forward", *args, **kwargs)

    def decode_step(self, *args, eager: bool = False, **kwargs):
        return self._call("decode_step", *args, eager=self._eager or eager, **kwargs)


def check_backend(name: str = "numpy", device: str = "cpu", dtype: str = "float32") -> None:
    """One InputError for a backend, device or dtype that cannot be, before anything is read
    (the torch backend's own constructor then checks that a CUDA device is there)."""
    if dtype not in DTYPES:
        raise InputError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "numpy" and device != "cpu":
        raise InputError(f"the numpy backend runs on the CPU only (device {device!r}); "
                         "use backend='torch' for cuda")
    if name == "torch":
        try:
            import torch
        except ImportError:
            raise InputError("backend 'torch' needs PyTorch: pip install 'npgemma[torch]' "
                             "(or pip install torch)") from None
        try:
            torch.device(device)
        except (RuntimeError, ValueError, TypeError):
            raise InputError(f"device {device!r} is not a torch device: use cpu, cuda or "
                             "cuda:N") from None


def get_backend(name: str = "numpy", device: str = "cpu", dtype: str = "float32", *,
                stream: bool = False, keep: int = 0) -> Backend:
    """A backend by name. The torch backend is imported only here, only when asked for.
    `stream`, `keep` (numpy only): the checkpoint is larger than the memory available; drop used
    weight pages but those of the first `keep` decoder layers (`memory.Streaming`)."""
    check_backend(name, device, dtype)
    if name == "numpy":
        return NumpyBackend(dtype, stream=stream, keep=keep)
    if stream:
        raise InputError("only the numpy backend streams its weights from disk "
                         "(--backend numpy --dtype bfloat16)")
    from ..torch_backend import TorchBackend

    return TorchBackend(device=device, dtype=dtype)
