"""The building blocks shared by SigLIP and Gemma, as pure NumPy functions.

Everything computes in float32. Weights may be stored in a narrower dtype (bfloat16 through
ml_dtypes, float16) to save memory; `as_f32` widens them at the point of use, which is exact.
Constants are written as explicit float32 scalars: NumPy would otherwise promote to float64
and silently diverge from the float32 reference (and from the torch mirror).
"""

from __future__ import annotations

import numpy as np

from . import _kernels
from .hooks import active, hook

F32 = np.float32
_SQRT_2_OVER_PI = F32(np.sqrt(2.0 / np.pi))
_GELU_CUBIC = F32(0.044715)
# A large finite negative for masked scores: -inf would turn a fully masked row
# (a padding query) into NaN; with a finite value that row is a harmless uniform average.
MASK_VALUE = F32(np.finfo(np.float32).min)


def as_f32(w: np.ndarray) -> np.ndarray:
    """A weight widened to float32 for compute (no copy when it already is)."""
    return w if w.dtype == np.float32 else w.astype(np.float32)


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """`nn.Linear`: weight is [out, in] as stored by torch. float32[..., in] -> float32[..., out].

    Every batch row and position goes through one 2-D matrix product: a decode step of B rows
    reads each weight once (a stacked [B, 1, in] product would run B matrix-vector products).
    """
    x2 = x.reshape(-1, x.shape[-1])  # [..., in] -> [M, in]
    # x2 @ as_f32(weight).T, without the float32 copy of a narrow weight: see _kernels.py
    y = _kernels.matmul_t(x2, weight)  # [M, in] -> [M, out]
    if bias is not None:
        y += as_f32(bias)
    return y.reshape(*x.shape[:-1], weight.shape[0])  # [M, out] -> [..., out]


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """`nn.LayerNorm` over the last axis (biased variance, as torch). float32[..., D]."""
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    var = np.mean(centered * centered, axis=-1, keepdims=True)
    return centered / np.sqrt(var + F32(eps)) * as_f32(weight) + as_f32(bias)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """`GemmaRMSNorm`: x * rsqrt(mean(x²) + eps) * (1 + weight).

    Gemma stores the scale as an offset from 1 (weights initialise to zero), hence `1 + w`;
    both the normalisation and the scale are done in float32, as HF does, before any cast.
    """
    x = x.astype(np.float32, copy=False)
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return x * (F32(1.0) / np.sqrt(ms + F32(eps))) * (F32(1.0) + as_f32(weight))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """tanh-approximated GELU (`gelu_pytorch_tanh`), the activation of both SigLIP and Gemma:

        0.5 · x · (1 + tanh(sqrt(2/π) · (x + 0.044715 · x³)))

    Never the erf form: Gemma's legacy `hidden_act: "gelu"` also means this one. Computed in one
    buffer (the MLP's [L, F] activations are the largest arrays of a prefill), in the formula's
    own order; `x * x * x`, not `x ** 3` (NumPy's float power is several times slower), and the
    final 0.5 · (x · t) equals (0.5 · x) · t exactly (scaling by 2 is exact).
    """
    t = x * x
    t *= x                      # x³
    t *= _GELU_CUBIC
    t += x                      # x + 0.044715 x³
    t *= _SQRT_2_OVER_PI
    np.tanh(t, out=t)
    t += F32(1.0)
    t *= x
    t *= F32(0.5)
    return t


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax, in float32 (HF upcasts attention scores before it)."""
    x = x.astype(np.float32, copy=False)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softcap(x: np.ndarray, cap: float | None) -> np.ndarray:
    """Gemma-2 soft capping `cap * tanh(x / cap)`: a smooth clamp to (-cap, cap)."""
    if cap is None:
        return x
    cap = F32(cap)
    return cap * np.tanh(x / cap)


def rope_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """float32[H/2]: 1 / theta^(2i/H), rounded as HF's float32 RoPE init.

    The power is taken in float64 and rounded once to float32 — the correctly rounded float32
    power, which torch's float32 `pow` (HF's) also gives. NumPy's own float32 power can be 2 ulps
    off, and a RoPE angle multiplies that error by the position (2e-3 at position 9000).
    """
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / F32(head_dim)
    power = (np.float64(theta) ** exponents.astype(np.float64)).astype(np.float32)
    return F32(1.0) / power


def rope_tables(positions: np.ndarray, head_dim: int, theta: float):
    """cos, sin float32[B, L, H] for integer positions int[B, L].

    Split-half layout (HF's `rotate_half`): frequency i drives dims i and i + H/2, so the
    table is the half-table repeated twice — not Llama-Meta's interleaved pairs.
    """
    freqs = positions.astype(np.float32)[..., None] * rope_inv_freq(head_dim, theta)  # [B, L] -> [B, L, H/2]
    emb = np.concatenate([freqs, freqs], axis=-1)  # [B, L, H/2] -> [B, L, H]
    return np.cos(emb), np.sin(emb)


def rotate_half(x: np.ndarray) -> np.ndarray:
    """(x1, x2) -> (-x2, x1) on the two halves of the last axis."""
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate float32[B, N, L, H] by the angles of cos/sin float32[B, L, H] (shared by heads)."""
    cos, sin = cos[:, None], sin[:, None]  # [B, L, H] -> [B, 1, L, H]
    return x * cos + rotate_half(x) * sin


# Queries are processed in chunks so that at most this many bytes of float32 scores are alive at
# once, whatever the resolution (896 px SigLIP: 4096 x 4096 scores per head, 1 GiB per layer).
# The chunks are shared out over our threads (BLAS single-threaded): the softmax's passes over the
# scores are NumPy ufuncs, one core each. Measured at 896 px on the 2-core CI machine, one SigLIP
# layer's attention: 2.21 s in 256 MiB chunks on one thread, 1.27 s in 32 MiB chunks on two.
SCORE_BLOCK_BYTES = 64 << 20


def attention(q, k, v, mask, scale: float, logit_cap: float | None = None) -> np.ndarray:
    """Scaled dot-product attention with grouped-query heads.

    q float32[B, N, L, H]; k, v float32[B, K, S, H]; mask bool[B, L, S] (True = may attend), or
    None when every query sees every key (SigLIP). Query head n reads kv head n // G, G = N / K:
    the G query heads of a kv head are stacked along the query axis, so each kv head's keys and
    values are read once by one matrix product, never copied (K = 1 is MQA, K = N plain MHA).
    Order, as HF's eager path: q·kᵀ, × scale, softcap (Gemma-2), mask, softmax in float32, × v.
    Returns float32[B, N, L, H].
    """
    b, n, l, h = q.shape
    kv_heads, s = k.shape[1], k.shape[2]
    g = n // kv_heads
    qg = q.reshape(b, kv_heads, g, l, h)  # [B, N, L, H] -> [B, K, G, L, H]
    out = np.empty((b, kv_heads, g, l, h), np.float32)
    workers = _kernels.WORKERS
    chunk = max(1, min(SCORE_BLOCK_BYTES // (4 * b * n * s * workers), -(-l // workers)))
    starts = range(0, l, chunk)

    def work(first: int, stride: int) -> None:
        for i in starts[first::stride]:
            rows = slice(i, min(l, i + chunk))
            c = rows.stop - rows.start
            weights = attention_weights(qg[:, :, :, rows].reshape(b, kv_heads, g * c, h), k,
                                        None if mask is None else mask[:, rows], scale, logit_cap)
            out[:, :, :, rows] = (weights @ v).reshape(b, kv_heads, g, c, h)  # [B, K, G*c, S] @ [B, K, S, H]

    # A capture (npgemma.inspection) sees the hooks of its own thread, chunk after chunk, in order.
    if len(starts) == 1 or active() is not None:
        work(0, 1)
    else:
        _kernels.share_out(work, len(starts))
    return out.reshape(b, n, l, h)  # [B, K, G, L, H] -> [B, N, L, H]


def attention_weights(qg, k, mask, scale: float, logit_cap: float | None) -> np.ndarray:
    """softmax(cap(q·kᵀ × scale) masked), computed in place in one score buffer.

    qg float32[B, K, G*L, H] (each kv head's G query heads stacked), k float32[B, K, S, H],
    mask bool[B, L, S] or None. Returns float32[B, K, G*L, S].
    """
    b, kv_heads, gl, _ = qg.shape
    scores = qg @ k.swapaxes(-1, -2)  # [B, K, G*L, H] @ [B, K, H, S] -> [B, K, G*L, S]
    scores *= F32(scale)
    hook("attn.hook_scores", scores)
    if logit_cap is not None:  # Gemma-2: cap * tanh(x / cap), before the mask
        cap = F32(logit_cap)
        scores /= cap
        np.tanh(scores, out=scores)
        scores *= cap
        hook("attn.hook_scores_capped", scores)
    if mask is not None:
        l = mask.shape[1]
        grouped = scores.reshape(b, kv_heads, gl // l, l, -1)  # [B, K, G*L, S] -> [B, K, G, L, S]
        np.copyto(grouped, MASK_VALUE, where=~mask[:, None, None])
    scores -= scores.max(axis=-1, keepdims=True)  # the stable softmax, in place
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return hook("attn.hook_pattern", scores)


def split_heads(x: np.ndarray, num_heads: int) -> np.ndarray:
    """float32[B, L, N*H] -> float32[B, N, L, H]."""
    b, l, _ = x.shape
    return x.reshape(b, l, num_heads, -1).transpose(0, 2, 1, 3)  # [B, L, N*H] -> [B, N, L, H]


def merge_heads(x: np.ndarray) -> np.ndarray:
    """float32[B, N, L, H] -> float32[B, L, N*H]."""
    b, n, l, h = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, l, n * h)  # [B, N, L, H] -> [B, L, N*H]
