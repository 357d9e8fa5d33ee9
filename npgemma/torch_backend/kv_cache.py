"""Torch twin of `npgemma/kv_cache.py`: preallocated on-device key/value buffers."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KVCache:
    keys: list[torch.Tensor]    # per layer [B, K, S_max, H]
    values: list[torch.Tensor]  # per layer [B, K, S_max, H]
    length: int = 0

    @property
    def max_length(self) -> int:
        return self.keys[0].shape[2]


def init_cache(num_layers: int, batch: int, kv_heads: int, max_length: int, head_dim: int,
               dtype=torch.float32, device="cpu") -> KVCache:
    """Empty buffers for `num_layers` layers, allocated once on the device."""
    shape = (batch, kv_heads, max_length, head_dim)
    return KVCache(keys=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)],
                   values=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)])


def write(cache: KVCache, layer_idx: int, k: torch.Tensor, v: torch.Tensor):
    """Store k, v [B, K, L, H] at slots [length, length + L); return views of all filled slots."""
    start, end = cache.length, cache.length + k.shape[2]
    if end > cache.max_length:
        raise ValueError(f"KV-cache overflow: {end} slots needed, {cache.max_length} allocated")
    cache.keys[layer_idx][:, :, start:end] = k
    cache.values[layer_idx][:, :, start:end] = v
    return cache.keys[layer_idx][:, :, :end], cache.values[layer_idx][:, :, :end]


def advance(cache: KVCache, num_tokens: int) -> None:
    """Commit `num_tokens` new slots once every layer has written them."""
    cache.length += num_tokens
