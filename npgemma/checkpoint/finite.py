"""Is every weight a finite number? A NaN or an Inf in one tensor turns every logit NaN (argmax
then picks token 0 and the run answers '' with exit 0), so each tensor is checked once, as it is
read: in the file's dtype before the cast (float32 mode, `read.read_tensors` and
`read.stream_tensors`), or, memory-mapped, as each block is first used (`prefetch.Streamer`).
No second pass over the checkpoint.

By the bits, not the values: a float is NaN or ±Inf exactly when its exponent bits are all ones
(float32 0x7F800000, bfloat16 0x7F80, float16 0x7C00). A slab at a time through one small
buffer, so the check allocates nothing the size of a tensor.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ..errors import WeightsError

# dtype -> (unsigned integer of its width, the exponent mask)
_EXPONENT = {np.dtype(np.float32): (np.uint32, 0x7F800000),
             np.dtype(ml_dtypes.bfloat16): (np.uint16, 0x7F80),
             np.dtype(np.float16): (np.uint16, 0x7C00)}
_SLAB = 1 << 20  # elements per step: 2-4 MiB, stays in cache beside its slab of the tensor


def _slabs(arr: np.ndarray):
    """(unsigned view of each slab, exponent mask), or nothing for dtypes with no NaN/Inf."""
    kind = _EXPONENT.get(arr.dtype)
    if kind is None or arr.size == 0:
        return
    unsigned, mask = kind
    flat = np.ascontiguousarray(arr).reshape(-1).view(unsigned)
    for i in range(0, flat.size, _SLAB):
        yield flat[i:i + _SLAB], unsigned(mask)


def non_finite_count(arr: np.ndarray) -> int:
    """How many NaN and ±Inf values `arr` (float32, bfloat16 or float16) holds."""
    return sum(int(np.count_nonzero((u & mask) == mask)) for u, mask in _slabs(arr))


def any_non_finite(arr: np.ndarray) -> bool:
    """Does `arr` hold a NaN or an Inf? (Stops at the first slab that does.)"""
    buf = None
    for u, mask in _slabs(arr):
        buf = np.empty(min(_SLAB, u.size), u.dtype) if buf is None else buf
        exponents = np.bitwise_and(u, mask, out=buf[:u.size])
        if exponents.max() == mask:  # the mask is the largest value `u & mask` can take
            return True
    return False


def check(arr: np.ndarray, key: str, where: str) -> None:
    """Raise WeightsError naming `where` (the file), the tensor and the count when `arr` holds
    a NaN or an Inf."""
    if any_non_finite(arr):
        raise WeightsError(f"{where}: {key}: {non_finite_count(arr)} of {arr.size} values are "
                             "NaN or Inf (a weight must be a finite number)")
