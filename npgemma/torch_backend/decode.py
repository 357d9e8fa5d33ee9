"""Decoding on the device: the state a generation keeps between tokens, and one step.

After the prefill, `start_decode` copies what the host knows once — which of the S slots so far
are real (left padding is not) and each row's last RoPE position — into buffers sized for the
whole cache. A step then runs only device ops on fixed shapes: it marks the new slot real,
advances the positions, builds the step's masks from the slot buffer, runs the decoder over one
token per row with the cache's `length` a device tensor (see kv_cache.py), and moves the slot
on. The host sends the step's ids (none when they come from `greedy` on the device) and gets
back what it asks for. Fixed shapes and device-only bookkeeping are what a CUDA graph needs:
`GraphedStep` captures the step once and replays it (CUDA only; the same step runs eagerly
everywhere else, and under NPGEMMA_TORCH_DECODE=eager).

The step's masks are `npgemma.paligemma.prefix_lm_mask` for one generated query at slot i:
key j is allowed iff it is real and j <= i (every filled slot is), and on sliding layers
i - j < window. A generated query is never prefix, so the prefix's bidirectionality and
exemption from the window do not apply to it — it is windowed against prefix keys too.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..config import PaliGemmaConfig
from ..errors import InputError
from . import paligemma
from .kv_cache import KVCache


@dataclass
class DecodeState:
    valid: torch.Tensor     # bool[B, S_max]: real slots so far (pads and empty slots False)
    position: torch.Tensor  # int64[B]: RoPE position of each row's last real slot
    slot: torch.Tensor      # int64[]: the next slot to write (the cache's length, on the device)
    slots: torch.Tensor     # int64[S_max]: 0, 1, ..., S_max - 1 (for the window)
    ids: torch.Tensor       # int64[B]: the step's input ids


def new_state(batch: int, max_length: int, device) -> DecodeState:
    """Zeroed state buffers for `batch` rows of a `max_length`-slot cache."""
    return DecodeState(valid=torch.zeros((batch, max_length), dtype=torch.bool, device=device),
                       position=torch.zeros(batch, dtype=torch.int64, device=device),
                       slot=torch.zeros((), dtype=torch.int64, device=device),
                       slots=torch.arange(max_length, device=device),
                       ids=torch.zeros(batch, dtype=torch.int64, device=device))


def start_decode(state: DecodeState, valid: np.ndarray, cache: KVCache) -> DecodeState:
    """Fill `state` from the prefill: valid bool[B, S] for the S = cache.length slots so far."""
    b, s_max = state.valid.shape
    if valid.shape != (b, cache.length):
        raise InputError(f"start_decode: valid has shape {valid.shape}, expected "
                         f"({b}, {cache.length}) (batch, slots filled by the prefill)")
    host = np.zeros((b, s_max), bool)
    host[:, :cache.length] = valid
    state.valid.copy_(torch.from_numpy(host))
    state.position.copy_(torch.from_numpy(valid.sum(axis=1, dtype=np.int64)))  # 1-based positions
    state.slot.fill_(cache.length)
    return state


def set_ids(state: DecodeState, ids) -> None:
    """The step's ids: a device tensor (from `greedy`: no host round trip) or int64[B] NumPy."""
    if isinstance(ids, np.ndarray):
        ids = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
    state.ids.copy_(ids.reshape(state.ids.shape))


def step_masks(cfg: PaliGemmaConfig, state: DecodeState) -> dict:
    """bool[B, 1, S_max] per layer type for the query at `state.slot` (already marked valid)."""
    full = state.valid[:, None, :]  # [B, S_max] -> [B, 1, S_max]
    masks = {"full_attention": full}
    window = cfg.text_config.applied_window  # None under big_vision's semantics: no window
    if window is not None:
        near = (state.slot - state.slots) < window  # [S_max]; future slots are not valid anyway
        masks["sliding_attention"] = full & near
    return masks


def step(params, cfg: PaliGemmaConfig, state: DecodeState, cache: KVCache) -> torch.Tensor:
    """One token per row (`state.ids`) through the decoder -> logits [B, 1, V]; writes the
    cache at `state.slot` and advances the state. Device ops only, fixed shapes."""
    state.valid.index_fill_(1, state.slot.view(1), True)
    state.position.add_(1)
    at_slot = KVCache(cache.keys, cache.values, state.slot)  # advanced in place by forward
    logits, _ = paligemma.forward(params, cfg, state.ids[:, None], state.position[:, None],
                                  step_masks(cfg, state), cache=at_slot, last_only=True)
    return logits


class GraphedStep:
    """`step` for fixed (params, state, cache) buffers as one CUDA graph.

    The first call runs the step eagerly on a side stream (CUDA's required warm-up: lazy
    initialisation, cuBLAS workspaces) and is a real step; the second captures the step (which
    runs nothing) and replays it; later calls only replay. Inputs are the buffers themselves:
    callers write `state.ids` before a call. The logits returned are a copy (the graph's
    output buffer is overwritten by the next replay). If capture fails, the step runs eagerly.
    """

    def __init__(self, params, cfg: PaliGemmaConfig, state: DecodeState, cache: KVCache):
        self.params, self.cfg, self.state, self.cache = params, cfg, state, cache
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        self.warmed = False
        self.failed = False

    def __call__(self) -> torch.Tensor:
        if not self.warmed:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                logits = step(self.params, self.cfg, self.state, self.cache)
            torch.cuda.current_stream().wait_stream(side)
            logits.record_stream(torch.cuda.current_stream())  # made on `side`, used on this one
            self.warmed = True
            return logits
        if self.failed:
            return step(self.params, self.cfg, self.state, self.cache)
        if self.graph is None:
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self.logits = step(self.params, self.cfg, self.state, self.cache)
                self.graph = graph
            except RuntimeError as e:  # capture runs nothing: the eager step is still exact
                warnings.warn(f"CUDA graph capture of the decode step failed ({e}); decoding "
                              "eagerly (NPGEMMA_TORCH_DECODE=eager skips the attempt)")
                self.failed = True
                return step(self.params, self.cfg, self.state, self.cache)
        self.graph.replay()
        return self.logits.clone()
