"""The one tolerance table for cross-implementation checks (component × dtype), and the one
comparison that reports how far apart two arrays are and where.

A check passes when  max|a - b| <= atol + rtol * max|b|  (b is the reference). Measuring the
error against the reference's *scale* rather than elementwise keeps low-precision checks
meaningful near zeros, where elementwise relative error is noise. float32 entries are float32
round-off after tens of fused operations; bfloat16/float16 entries are a few ulps of the
format (bf16 eps = 2^-8 ≈ 4e-3, fp16 eps = 2^-11 ≈ 5e-4) grown by depth. Greedy-token
agreement is checked separately for the low-precision runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# component -> dtype -> (atol, rtol)
TOLERANCES: dict[str, dict[str, tuple[float, float]]] = {
    "linear":      {"float32": (1e-5, 1e-5), "bfloat16": (1e-2, 2e-2), "float16": (1e-3, 3e-3)},
    "layer_norm":  {"float32": (1e-5, 1e-5), "bfloat16": (1e-2, 2e-2), "float16": (1e-3, 3e-3)},
    "rms_norm":    {"float32": (1e-5, 1e-5), "bfloat16": (1e-2, 2e-2), "float16": (1e-3, 3e-3)},
    "gelu_tanh":   {"float32": (1e-6, 1e-5), "bfloat16": (1e-2, 2e-2), "float16": (1e-3, 3e-3)},
    "softmax":     {"float32": (1e-6, 1e-5), "bfloat16": (1e-2, 2e-2), "float16": (1e-3, 3e-3)},
    "softcap":     {"float32": (1e-6, 1e-5), "bfloat16": (1e-2, 2e-2), "float16": (1e-3, 3e-3)},
    "rope":        {"float32": (1e-5, 1e-5), "bfloat16": (1e-2, 2e-2), "float16": (1e-3, 3e-3)},
    "attention":   {"float32": (1e-5, 1e-5), "bfloat16": (2e-2, 3e-2), "float16": (2e-3, 5e-3)},
    "vision_embeddings": {"float32": (1e-5, 1e-5), "bfloat16": (2e-2, 3e-2), "float16": (2e-3, 5e-3)},
    "vision_layer": {"float32": (2e-5, 2e-5), "bfloat16": (5e-2, 5e-2), "float16": (5e-3, 1e-2)},
    "projector":   {"float32": (2e-5, 2e-5), "bfloat16": (5e-2, 6e-2), "float16": (5e-3, 1e-2)},
    "decoder_layer": {"float32": (2e-5, 2e-5), "bfloat16": (5e-2, 5e-2), "float16": (5e-3, 1e-2)},
    "final_norm":  {"float32": (2e-5, 2e-5), "bfloat16": (5e-2, 6e-2), "float16": (5e-3, 1e-2)},
    # float32: a resize computed in another order (keras-hub's TF bilinear kernel on a flipped
    # image) lands 2.9e-6 from the same arithmetic in NumPy; one uint8 level is 7.8e-3.
    "pixel_values": {"float32": (1e-5, 1e-5), "bfloat16": (1e-2, 1e-2), "float16": (1e-3, 1e-3)},
    "merge":       {"float32": (1e-6, 1e-6), "bfloat16": (1e-2, 2e-2), "float16": (1e-3, 3e-3)},
    "logits":      {"float32": (2e-5, 2e-5), "bfloat16": (5e-2, 6e-2), "float16": (5e-3, 1e-2)},
    "decode_step": {"float32": (2e-5, 2e-5), "bfloat16": (5e-2, 6e-2), "float16": (5e-3, 1e-2)},
    "vqvae":       {"float32": (2e-5, 2e-5), "bfloat16": (5e-2, 6e-2), "float16": (5e-3, 1e-2)},
}


@dataclass(frozen=True)
class Comparison:
    max_abs: float        # max |a - b|
    max_rel: float        # max |a - b| / max |b|  (the scale-relative error the table bounds)
    where: tuple          # index of the largest absolute difference
    actual: float         # a[where]
    expected: float       # b[where]
    limit: float          # atol + rtol * max|b|
    ok: bool

    def __str__(self) -> str:
        return (f"max abs err {self.max_abs:.3g} (limit {self.limit:.3g}), scale-relative "
                f"{self.max_rel:.3g}, at index {self.where}: {self.actual:.6g} vs {self.expected:.6g}")


_CHUNK = 1 << 20  # elements compared at a time: a few MB of float64, whatever the arrays' size


def compare(actual, expected, component: str, dtype: str = "float32") -> Comparison:
    """How far `actual` is from the reference `expected`, judged by TOLERANCES[component][dtype].

    Differences are taken in float64 a chunk at a time, so comparing two 4 GB logit arrays needs
    a few MB beyond the arrays themselves. NaN matching NaN counts as equal; any other
    non-finite mismatch is an infinite difference.
    """
    a, b = np.asarray(actual), np.asarray(expected)
    if a.shape != b.shape:
        raise AssertionError(f"{component}: shape {a.shape} != reference shape {b.shape}")
    atol, rtol = TOLERANCES[component][dtype]
    if a.size == 0:
        return Comparison(0.0, 0.0, (), 0.0, 0.0, atol, True)
    af, bf = a.reshape(-1), b.reshape(-1)
    max_abs, at, scale = -1.0, 0, 0.0
    for i in range(0, af.size, _CHUNK):
        x = af[i:i + _CHUNK].astype(np.float64)
        y = bf[i:i + _CHUNK].astype(np.float64)
        finite = np.isfinite(x) & np.isfinite(y)
        diff = np.where(finite, np.abs(x - y), np.inf)
        diff[np.isnan(x) & np.isnan(y)] = 0.0
        j = int(np.argmax(diff))
        if diff[j] > max_abs:
            max_abs, at = float(diff[j]), i + j
        scale = max(scale, float(np.max(np.abs(y[np.isfinite(y)]), initial=0.0)))
    where = tuple(int(k) for k in np.unravel_index(at, a.shape))
    limit = atol + rtol * scale
    return Comparison(max_abs, max_abs / scale if scale else max_abs, where,
                      float(af[at]), float(bf[at]), limit, max_abs <= limit)


def assert_close(actual, expected, component: str, dtype: str = "float32", what: str = "") -> Comparison:
    """Raise AssertionError naming the component, dtype, error sizes and where; else return them."""
    c = compare(actual, expected, component, dtype)
    if not c.ok:
        raise AssertionError(f"{what or component} [{dtype}]: {c}")
    return c


def pick_margin(logits_row, token: int, dtype: str = "float32") -> tuple[float, float]:
    """How far `token` is from the greedy pick of one reference distribution, and the limit.

    Returns (max(logits) - logits[token], limit), the limit being the "logits" tolerance for
    `dtype` at this row's scale. A token whose margin is within the limit is a near-tie: an
    implementation whose logits are within tolerance of the reference may pick it, so a greedy
    continuation that takes it is not a wrong answer (at bfloat16 a top two 0.03 apart is
    within a logit error the table allows). An id outside the row is infinitely far.
    """
    row = np.asarray(logits_row, np.float64)
    atol, rtol = TOLERANCES["logits"][dtype]
    limit = atol + rtol * float(np.max(np.abs(row)))
    if not 0 <= token < row.shape[-1]:
        return float("inf"), limit
    return float(row.max() - row[token]), limit
