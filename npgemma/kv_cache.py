"""The KV-cache as an explicit value: the one place in the NumPy reference that writes in place.

Each layer owns preallocated key/value buffers float32[B, K, S_max, H]. A forward call over L
new tokens writes slots [length, length + L) of every layer, then `advance` moves `length`.
Slots are cache indices, not RoPE positions: with left padding, slot j of row b may hold a pad
(the attention mask, not the cache, keeps it out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class KVCache:
    keys: list[np.ndarray]    # per layer float32[B, K, S_max, H]
    values: list[np.ndarray]  # per layer float32[B, K, S_max, H]
    length: int = 0           # slots filled so far

    @property
    def max_length(self) -> int:
        return self.keys[0].shape[2]


def init_cache(num_layers: int, batch: int, kv_heads: int, max_length: int, head_dim: int,
               dtype=np.float32) -> KVCache:
    """Empty buffers for `num_layers` layers."""
    shape = (batch, kv_heads, max_length, head_dim)
    return KVCache(keys=[np.zeros(shape, dtype) for _ in range(num_layers)],
                   values=[np.zeros(shape, dtype) for _ in range(num_layers)])


def write(cache: KVCache, layer_idx: int, k: np.ndarray, v: np.ndarray):
    """Store k, v float32[B, K, L, H] at slots [length, length + L); return views of every
    filled slot of this layer, float32[B, K, length + L, H], for its attention."""
    start, end = cache.length, cache.length + k.shape[2]
    if end > cache.max_length:
        raise ValueError(f"KV-cache overflow: {end} slots needed, {cache.max_length} allocated")
    cache.keys[layer_idx][:, :, start:end] = k
    cache.values[layer_idx][:, :, start:end] = v
    return cache.keys[layer_idx][:, :, :end], cache.values[layer_idx][:, :, :end]


def advance(cache: KVCache, num_tokens: int) -> None:
    """Commit `num_tokens` new slots once every layer has written them."""
    cache.length += num_tokens
