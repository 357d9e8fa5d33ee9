"""The capture that keeps named activations: selection by glob, layer and head, pieces per step.

The math offers activations at its hook points (`npgemma.hooks`); a `Capture` made active with
`hooks.capturing(cap)` keeps only what its `names` glob patterns (fnmatch over the full names),
`layers` and `heads` select, copied to float32 NumPy, one list of pieces per name and forward
call; `npgemma.inspection.trace` stitches them. Attention hooks arrive with each kv head's G
query heads stacked ([B, K, G*c, S]); the capture unstacks them to [B, N, c, S] with the
query-head count N it was given for that tower.
"""

from __future__ import annotations

import fnmatch
import re

import numpy as np

from ..hooks import ATTENTION_HOOKS

_LAYER = re.compile(r"\.blocks\.(\d+)\.")


def _to_numpy(x) -> np.ndarray:
    """A float32 NumPy copy (the math reuses its buffers in place: never keep a view)."""
    if hasattr(x, "detach"):  # a torch tensor, on any device
        return x.detach().float().cpu().numpy().copy()
    return np.array(x, dtype=np.float32, copy=True)


class Capture:
    """Keeps the selected activations of one run, in pieces per forward call ("step").

    names: fnmatch patterns over full names (None = every name); layers: block indices kept
    (None = all); heads: query-head indices kept on attention / q arrays (None = all).
    heads_per_tower: {"vision": N, "decoder": N} query heads, to unstack the attention hooks.
    """

    def __init__(self, names, layers, heads, heads_per_tower: dict[str, int]):
        self.names = None if names is None else list(names)
        self.layers = None if layers is None else {int(i) for i in layers}
        self.heads = None if heads is None else sorted({int(h) for h in heads})
        self.heads_per_tower = heads_per_tower
        self.prefix: list[str] = []
        self.step = "vision"
        self.pieces: dict[str, dict[str, list[np.ndarray]]] = {}  # name -> step -> pieces
        self._decided: dict[str, bool] = {}

    def wants(self, full: str) -> bool:
        """Is `full` selected (memoised: the check runs once per name)?"""
        keep = self._decided.get(full)
        if keep is None:
            keep = self.names is None or any(fnmatch.fnmatchcase(full, p) for p in self.names)
            layer = _LAYER.search(full + ".")
            if keep and self.layers is not None and layer is not None:
                keep = int(layer.group(1)) in self.layers
            self._decided[full] = keep
        return keep

    def wants_here(self, name: str) -> bool:
        """Is `name` in the current scope selected? Backends with a fused attention kernel ask
        this to decide whether to spell attention out (a fused kernel never forms the weights)."""
        return self.wants(".".join(self.prefix + [name]))

    def offer(self, name: str, x) -> None:
        full = ".".join(self.prefix + [name])
        if not self.wants(full):
            return
        n = self.heads_per_tower.get(full.split(".", 1)[0])  # None outside a tower's scope
        if name in ATTENTION_HOOKS and n is not None:
            b, k, gc, s = x.shape
            x = x.reshape(b, n, gc * k // n, s)  # [B, K, G*c, S] -> [B, N, c, S] (n = k*G + g)
        if self.heads is not None and (name in ATTENTION_HOOKS or name == "attn.hook_q"):
            x = x[:, [h for h in self.heads if h < x.shape[1]]]
        self.pieces.setdefault(full, {}).setdefault(self.step, []).append(_to_numpy(x))
