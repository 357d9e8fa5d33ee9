"""Torch twin of `npgemma/kv_cache.py`: preallocated on-device key/value buffers.

`length` is a Python int for `forward` (the prefill, and any call that knows its slots on the
host). The decode step (`decode.py`) hands the layers a cache over the same buffers whose
`length` is a 0-d int64 tensor on the device instead: the new slot's index then never leaves
the device, every step has the same shapes (CUDA-graph capturable), and attention reads the
whole static buffer, its empty and padding slots hidden by the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(eq=False)  # compared and hashed by identity: the backend keys its kept buffers by cache
class KVCache:
    keys: list[torch.Tensor]    # per layer [B, K, S_max, H]
    values: list[torch.Tensor]  # per layer [B, K, S_max, H]
    length: int | torch.Tensor = 0  # slots filled so far (host int, or 0-d device tensor)

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
    """Store k, v [B, K, L, H] at slots [length, length + L); return views of all filled slots
    (with a device `length`: one slot, and the whole buffers)."""
    keys, values = cache.keys[layer_idx], cache.values[layer_idx]
    if isinstance(cache.length, torch.Tensor):
        slot = cache.length.view(1)
        keys.index_copy_(2, slot, k)  # no bounds check on the device: decode_step checks on the host
        values.index_copy_(2, slot, v)
        return keys, values
    start, end = cache.length, cache.length + k.shape[2]
    if end > cache.max_length:
        raise ValueError(f"KV-cache overflow: {end} slots needed, {cache.max_length} allocated")
    keys[:, :, start:end] = k
    values[:, :, start:end] = v
    return keys[:, :, :end], values[:, :, :end]


def advance(cache: KVCache, num_tokens: int) -> None:
    """Commit `num_tokens` new slots once every layer has written them (in place on a device
    `length`)."""
    if isinstance(cache.length, torch.Tensor):
        cache.length.add_(num_tokens)
    else:
        cache.length += num_tokens
