"""The NumPy backend: the reference model (`npgemma/paligemma.py`) behind the `Backend` calls.

Weights stay NumPy; masks and positions come from `slots`; the decode state lives on the host.
"""

from __future__ import annotations

import contextlib

import numpy as np

from .. import _kernels, paligemma, vqvae
from ..checkpoint.prefetch import Streamer, streaming
from ..checkpoint.weights import load_weights
from .slots import Slots


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

    def __init__(self, dtype: str = "float32", stream: bool = False, keep: int = 0):
        self.dtype = dtype
        # Low memory only: prefetch each next block (always), drop used pages (`stream`: the
        # checkpoint is larger than the memory available) but those of the first `keep` decoder
        # layers, which stay cached. See checkpoint/prefetch.py.
        self.stream, self.keep = stream, keep
        self.streamer: Streamer | None = None

    def load_weights(self, model_dir, cfg, progress=None):
        """float32: read and widened once. Low memory: memory-mapped in the file's dtype, widened
        a slab at a time when used (a float32 file then stays float32: nothing is rounded)."""
        if self.dtype == "float32":
            return load_weights(model_dir, cfg, dtype=np.float32, progress=progress)
        params = load_weights(model_dir, cfg, mmap=True)
        self.streamer = Streamer(params, drop=self.stream, keep=self.keep)
        return params

    def from_numpy(self, tree):
        return tree

    def to_numpy(self, x):
        return np.asarray(x, dtype=np.float32)

    def encode_image(self, params, pixel_values, cfg):
        with streaming(self.streamer):
            return paligemma.encode_image(params, np.asarray(pixel_values, np.float32), cfg)

    def forward(self, params, cfg, input_ids, positions, masks, image_features=None, cache=None,
                last_only=False, logit_positions=None):
        with streaming(self.streamer):
            return paligemma.forward(params, cfg, input_ids, positions, masks, image_features,
                                     cache=cache, last_only=last_only,
                                     logit_positions=logit_positions)

    def init_cache(self, cfg, batch, max_length):
        return paligemma.init_cache(cfg, batch, max_length)

    def start_decode(self, cfg, valid, is_prefix, cache):
        return HostDecodeState(valid, is_prefix, cache.max_length)

    def decode_step(self, params, cfg, ids, state, cache, eager=False):
        # `eager` is always so here: the NumPy step is plain Python, its hooks always fire.
        # float32: BLAS's matrix-vector products on BLAS's threads; the low-memory mode also
        # widens every weight on the way, and that runs on our threads (_kernels.on_our_threads).
        threads = contextlib.nullcontext() if self.dtype == "float32" else _kernels.on_our_threads()
        with threads:
            return decode_on_host(self.forward, params, cfg, ids, state, cache)

    def greedy(self, logits):
        last = logits[:, -1]  # -1 marks a row with a NaN or an Inf (generate refuses it)
        return np.where(np.isfinite(last).all(axis=-1), last.argmax(axis=-1), -1).astype(np.int64)

    def ids_to_numpy(self, ids):
        return np.asarray(ids, dtype=np.int64)

    def last_logits_to_numpy(self, logits):
        return np.asarray(logits[:, -1], dtype=np.float32)

    def decode_masks(self, vae, codes):
        return vqvae.decode(vae, codes)
