"""TorchBackend: the `Backend` calls over the torch twins, on CPU or CUDA.

Weights go to the device one tensor at a time as they are read (`load_weights`); the KV-cache
and the decode state (`decode.py`) live there. Per generated token the host sends at most the
ids (none after `greedy`, which stays on the device) and syncs once, in `ids_to_numpy`.

Decode modes (`decode=`, or NPGEMMA_TORCH_DECODE): "graph" (CUDA's default) replays the decode
step as a CUDA graph over static buffers that are kept and reused by later generations of the
same (batch, cache length); "static" is the same without the graph (what CPU can test);
"eager" (CPU's default) allocates per generation and runs the step as plain calls.
"""

from __future__ import annotations

import os
import warnings
import weakref

import numpy as np
import torch

from ..checkpoint.checks import DTYPES
from ..checkpoint.weights import expected_shapes, iter_weights, unflatten
from ..errors import InputError
from . import decode, paligemma, vqvae
from .kv_cache import KVCache

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DECODE_MODES = ("eager", "static", "graph")
_KEPT_CACHES = 4  # static (cache, state, graph) sets kept for reuse, oldest dropped first


def _shared(a: np.ndarray) -> torch.Tensor:
    """A tensor over the array's own memory. Weights come read-only from the low-memory mode's
    memory map (parity's mapped reference): torch computes on those pages and never writes a
    weight, so its warning that it cannot mark a tensor read-only is silenced for them."""
    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


def tensor_from_numpy(a: np.ndarray, device, dtype: torch.dtype) -> torch.Tensor:
    """A NumPy array (float32, float16 or ml_dtypes.bfloat16) as a tensor of `dtype` on `device`:
    the array's own memory where it is already that on the CPU, else a copy."""
    if a.dtype.name == "bfloat16":  # torch cannot read ml_dtypes' bfloat16: reinterpret the bits
        t = _shared(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    else:
        t = _shared(np.ascontiguousarray(a))
    return t.to(device=device).to(dtype)  # moved as stored, then cast where it lands


class _Static:
    """A reusable set: cache buffers, decode state, and (graph mode) the captured step."""

    def __init__(self, cache, state, cfg):
        self.cache, self.state = cache, state
        self.cfg = cfg  # keeps id(cfg), part of the key the set is kept under, from being reused
        self.graph: decode.GraphedStep | None = None
        self.owner = lambda: None  # weakref to the KVCache handed out; alive = in use


class TorchBackend:
    name = "torch"

    def __init__(self, device: str = "cpu", dtype: str = "float32", decode: str | None = None):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"device {device!r} asked for, but torch {torch.__version__} sees no "
                             "CUDA GPU (a CPU-only build, or no driver); use --device cpu")
        try:
            self.device = torch.device(device)
        except RuntimeError as e:
            raise InputError(f"device {device!r}: {e}") from None
        self.dtype_name = dtype
        self.dtype = TORCH_DTYPES[dtype]
        # Load from disk straight into the compute dtype's width: bf16 on disk stays 2 bytes.
        self.weight_dtype = DTYPES[dtype]
        mode = decode or os.environ.get("NPGEMMA_TORCH_DECODE") or (
            "graph" if self.device.type == "cuda" else "eager")
        if mode not in DECODE_MODES:
            raise InputError(f"decode mode {mode!r} is not one of {', '.join(DECODE_MODES)}")
        if mode == "graph" and self.device.type != "cuda":
            raise InputError(f"decode mode 'graph' needs a CUDA device, not {device!r}")
        self.decode_mode = mode
        self._static: dict[tuple, _Static] = {}  # kept sets, by (id(cfg), batch, cache length)
        # The set behind each KVCache handed out (an entry goes when its cache does).
        self._sets: weakref.WeakKeyDictionary[KVCache, _Static] = weakref.WeakKeyDictionary()

    # ---- weights -------------------------------------------------------------------------

    def from_numpy(self, tree):
        if isinstance(tree, dict):
            return {k: self.from_numpy(v) for k, v in tree.items()}
        if isinstance(tree, list):
            return [self.from_numpy(v) for v in tree]
        return tensor_from_numpy(tree, self.device, self.dtype)

    def load_weights(self, model_dir, cfg, progress=None):
        """The checkpoint's weight tree on the device, streamed: each tensor is read in its file
        dtype, moved, cast there and its host copy dropped before the next is read, so host RAM
        peaks at about one stored tensor above the process's baseline (on the CPU device the
        tensors are the tree itself, read straight into the compute dtype's width)."""
        read_as = self.weight_dtype if self.device.type == "cpu" else None
        flat = {key: tensor_from_numpy(arr, self.device, self.dtype) for key, arr in
                iter_weights(model_dir, cfg, dtype=read_as, progress=progress)}
        return unflatten({key: flat[key] for key in expected_shapes(cfg)})  # canonical order

    def to_numpy(self, x) -> np.ndarray:
        return x.detach().float().cpu().numpy()

    def as_tensor(self, a: np.ndarray, dtype=None) -> torch.Tensor:
        """A NumPy array (pixels, ids, positions, masks) on this backend's device, as `dtype`.
        Not part of the `Backend` protocol: for torch-only callers (parity, the torch adapter)
        that run the torch twins directly; so is `dtype_name`."""
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device, dtype=dtype)

    # ---- forward (prefill, logits, parity) -------------------------------------------------

    @torch.inference_mode()
    def encode_image(self, params, pixel_values, cfg):
        return paligemma.encode_image(params, self.as_tensor(pixel_values, self.dtype), cfg)

    @torch.inference_mode()
    def forward(self, params, cfg, input_ids, positions, masks, image_features=None, cache=None,
                last_only=False, logit_positions=None):
        # A mask that allows everything is no mask (checked on the host, where it already is):
        # the kernel skips the bias and may take its fastest path (flash on CUDA).
        masks = {k: None if m.all() else self.as_tensor(m) for k, m in masks.items()}
        if logit_positions is not None:
            logit_positions = self.as_tensor(np.asarray(logit_positions), torch.long)
        return paligemma.forward(params, cfg, self.as_tensor(input_ids, torch.long),
                                 self.as_tensor(positions, torch.long), masks, image_features,
                                 cache=cache, last_only=last_only, logit_positions=logit_positions)

    # ---- cache and decoding ------------------------------------------------------------------

    def init_cache(self, cfg, batch, max_length):
        if self.decode_mode == "eager":
            return paligemma.init_cache(cfg, batch, max_length, dtype=self.dtype, device=self.device)
        key = (id(cfg), batch, max_length)
        entry = self._static.get(key)
        if entry is not None and entry.owner() is not None:  # in use by a live generation
            entry = None
            key = None
        if entry is None:
            cache = paligemma.init_cache(cfg, batch, max_length, dtype=self.dtype, device=self.device)
            entry = _Static(cache, decode.new_state(batch, max_length, self.device), cfg)
            if key is not None:
                self._static[key] = entry
                while len(self._static) > _KEPT_CACHES:
                    self._static.pop(next(iter(self._static)))
        # A fresh KVCache over the kept buffers: stale slots are never read (the mask hides them).
        cache = KVCache(entry.cache.keys, entry.cache.values, 0)
        self._sets[cache] = entry
        entry.owner = weakref.ref(cache)
        return cache

    def start_decode(self, cfg, valid: np.ndarray, is_prefix: np.ndarray, cache):
        """Decode state on the device after the prefill (valid/is_prefix bool[B, S], S = the
        slots filled). `is_prefix` is not needed: generated queries are never prefix."""
        entry = self._sets.get(cache)
        if entry is None:
            state = decode.new_state(cache.keys[0].shape[0], cache.max_length, self.device)
        else:
            state = entry.state
        return decode.start_decode(state, np.asarray(valid, bool), cache)

    @torch.inference_mode()
    def decode_step(self, params, cfg, ids, state, cache, eager: bool = False):
        """One new causal slot per row -> logits [B, 1, V] (see decode.py). `eager`: run the
        step's Python code even in graph mode (a replayed graph runs none, so no hook fires)."""
        if cache.length >= cache.max_length:
            raise ValueError(f"KV-cache overflow: {cache.length + 1} slots needed, "
                             f"{cache.max_length} allocated")
        decode.set_ids(state, ids)
        entry = self._sets.get(cache)
        if self.decode_mode == "graph" and entry is not None and not eager:
            if entry.graph is None or entry.graph.params is not params or entry.graph.cfg is not cfg:
                entry.graph = decode.GraphedStep(params, cfg, state, entry.cache)
            logits = entry.graph()
        else:
            logits = decode.step(params, cfg, state, cache)
        cache.length += 1
        return logits

    def greedy(self, logits) -> torch.Tensor:
        """Argmax of the last position, int64[B], left on the device (no sync); -1 for a row
        whose logits hold a NaN or an Inf (generate refuses it)."""
        last = logits[:, -1]
        return torch.where(torch.isfinite(last).all(dim=-1), last.argmax(dim=-1), -1)

    def ids_to_numpy(self, ids) -> np.ndarray:
        return ids.cpu().numpy().astype(np.int64)

    def last_logits_to_numpy(self, logits) -> np.ndarray:
        return self.to_numpy(logits[:, -1])

    @torch.inference_mode()
    def decode_masks(self, vae, codes) -> np.ndarray:
        return self.to_numpy(vqvae.decode(vae, self.as_tensor(np.asarray(codes), torch.long)))

