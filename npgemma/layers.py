"""The building blocks shared by SigLIP and Gemma, as pure NumPy functions.

Everything computes in float32. Weights may be stored in a narrower dtype (bfloat16 through
ml_dtypes, float16) to save memory; `as_f32` widens them at the point of use, which is exact.
Constants are written as explicit float32 scalars: NumPy would otherwise promote to float64
and silently diverge from the float32 reference (and from the torch mirror).
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import ThreadpoolController

from .capture import active, hook

F32 = np.float32
_SQRT_2_OVER_PI = F32(np.sqrt(2.0 / np.pi))
_GELU_CUBIC = F32(0.044715)
# A large finite negative for masked scores: -inf would turn a fully masked row
# (a padding query) into NaN; with a finite value that row is a harmless uniform average.
MASK_VALUE = F32(np.finfo(np.float32).min)


def as_f32(w: np.ndarray) -> np.ndarray:
    """A weight widened to float32 for compute (no copy when it already is)."""
    return w if w.dtype == np.float32 else w.astype(np.float32)


# Low-memory mode keeps a matrix in its file dtype (bfloat16/float16, memory-mapped) and widens
# it to float32 a slab of rows at a time into one reused buffer: the float32 copy of a big matrix
# (the 257216-row lm_head: 2.1 GB) never exists, and each slab is still in cache when the matrix
# product reads it. Widening bf16/fp16 to float32 is exact, so the product is the float32 one.
_SLAB_BYTES = 1 << 20  # a widened slab and its product stay in one core's 1 MiB L2
# A float32 slab has nothing to widen: fewer, larger products measured a little faster (8 rows
# over every decode-step weight of paligemma-3b on BLAS's threads: 1119/1126 ms in 1 MiB slabs,
# 1070/1007 ms in 4 MiB, two runs).
_F32_SLAB_BYTES = 4 << 20
_slab_buffers = threading.local()


def _slab_buffer(elements: int) -> np.ndarray:
    """This thread's reusable float32 scratch of at least `elements` entries."""
    buf = getattr(_slab_buffers, "buf", None)
    if buf is None or buf.size < elements:
        buf = _slab_buffers.buf = np.empty(elements, np.float32)
    return buf


# A decode step is matrix-vector work: each weight is read once, from memory, for a few rows of
# activations. Where that work is more than BLAS's (the low-memory mode also widens every weight
# on the way), the numpy backend runs its decode steps inside `on_our_threads()`: `linear` takes
# each weight as cache-sized slabs of rows shared out over one thread of ours per core (NumPy
# releases the GIL while it casts and multiplies), and BLAS is held to one thread for the whole
# block, since its own threads, idle but spinning for the cores after any BLAS call, would
# otherwise run beside ours. Measured on the 2-core CI machine, paligemma-3b low-memory decode:
# 963 ms a step with BLAS's threads spinning, 640 ms on ours. In float32 a step is BLAS's
# matrix-vector product (already at the memory bound) or, for 2..16 rows, slabs on BLAS's
# threads. Ours are no better there: over every decode-step weight of paligemma-3b, quiet
# machine, four runs (`benchmarks/kernels.py --step`, RESULTS.md): one row 379-473 ms as one BLAS
# call a weight, 444-548 ms on ours; 8 rows in 4 MiB slabs 991-1070 ms on BLAS's threads,
# 835-1065 ms on ours, within the runs' spread.
_WORKERS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
_FEW_ROWS = 16  # activation rows that still make a matrix-vector-like product
_pool: ThreadPoolExecutor | None = None
_blas: ThreadpoolController | None = None
_our_threads = 0  # depth of on_our_threads() blocks


@contextlib.contextmanager
def on_our_threads():
    """A block with BLAS single-threaded, in which `linear` shares few-row products out over
    npgemma's threads (a low-memory decode step). `attention` enters one for its query chunks."""
    global _pool, _blas, _our_threads
    if _WORKERS > 1 and _pool is None:
        _pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="npgemma-slabs")
        _blas = ThreadpoolController()
    outermost = _our_threads == 0 and _blas is not None
    _our_threads += 1
    try:
        with _blas.limit(limits=1, user_api="blas") if outermost else contextlib.nullcontext():
            yield
    finally:
        _our_threads -= 1


def _share_out(work, parts: int) -> None:
    """work(first, stride) on one thread of ours per core (parts first, first + stride, ...),
    BLAS single-threaded meanwhile; on the calling thread alone when there is one core or part."""
    workers = min(_WORKERS, parts)
    if workers <= 1:
        work(0, 1)
        return
    with on_our_threads():
        for f in [_pool.submit(work, w, workers) for w in range(workers)]:
            f.result()


def _slab_matmul(x: np.ndarray, weight: np.ndarray, parallel: bool) -> np.ndarray:
    """x @ weight.T a slab of weight rows at a time, each slab read once. [M, in] -> [M, out].

    Each product is slab @ xᵀ, so the weight slab is BLAS's big operand and each output block is
    contiguous. A narrow weight (bfloat16/float16) is widened slab by slab into a reused float32
    buffer; with `parallel`, slab s goes to thread s mod workers.
    """
    slab_bytes = _F32_SLAB_BYTES if weight.dtype == np.float32 else _SLAB_BYTES
    rows = max(1, slab_bytes // (4 * weight.shape[1]))
    xt = np.ascontiguousarray(x.T)  # [M, in] -> [in, M]
    yt = np.empty((weight.shape[0], x.shape[0]), np.float32)  # [out, M]

    def work(first: int, stride: int) -> None:
        scratch = _slab_buffer(rows * weight.shape[1])
        for i in range(first * rows, weight.shape[0], stride * rows):
            slab = weight[i:i + rows]
            if slab.dtype != np.float32:
                wide = scratch[:slab.size].reshape(slab.shape)
                np.copyto(wide, slab, casting="unsafe")  # exact widening; ml_dtypes' cast is the fastest
                slab = wide
            np.dot(slab, xt, out=yt[i:i + rows])  # [rows, in] @ [in, M] -> [rows, M]

    if parallel:
        _share_out(work, -(-weight.shape[0] // rows))
    else:
        work(0, 1)
    # [out, M] -> [M, out]: a view for a decode step's few rows, row-major for a prefill's many
    return yt.T if x.shape[0] <= _FEW_ROWS else np.ascontiguousarray(yt.T)


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """`nn.Linear`: weight is [out, in] as stored by torch. float32[..., in] -> float32[..., out].

    Every batch row and position goes through one 2-D matrix product: a decode step of B rows
    reads each weight once (a stacked [B, 1, in] product would run B matrix-vector products).
    """
    x2 = x.reshape(-1, x.shape[-1])  # [..., in] -> [M, in]
    m = x2.shape[0]
    if _our_threads and m <= _FEW_ROWS:
        y = _slab_matmul(x2, weight, parallel=True)  # a decode step on our threads
    elif weight.dtype == np.float32 and (m == 1 or m > _FEW_ROWS):
        y = x2 @ weight.T  # [M, in] -> [M, out]: one BLAS call on BLAS's threads
    else:
        # Narrow weights, widened slab by slab; or 2..16 rows, where OpenBLAS runs one
        # [M, in] @ [in, out] product far below its matrix-vector speed (8 rows: 3.5x one row)
        # and slabs of the weight, each read once, cost ~2.3x.
        y = _slab_matmul(x2, weight, parallel=False)
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


# Elementwise work on a prefill's [L, F] activations (896 px: 4352 x 16384, 285 MB) runs at
# memory speed on one core if each step of a formula passes over the whole array. Taken a block
# of rows at a time, the formula's temporaries stay in cache, and the blocks go to both cores.
# Elementwise means the numbers are the same. Measured on the 2-core CI machine, Gemma's GELU at
# 896 px: 0.75 s over the whole array, 0.37 s in 256 KiB blocks on two threads; the 896 px
# prefill 249.4 -> 240.8 s (benchmarks/RESULTS.md runs 5 and 7). An array that fits in the
# 32 MiB L3 (224 px: 17 MB) gained nothing measurable and keeps the one pass.
_BLOCK_BYTES = 256 << 10
_CACHED_BYTES = 32 << 20


def by_row_blocks(fn, *xs: np.ndarray) -> np.ndarray:
    """fn(*xs) for an elementwise fn of same-shaped float32 arrays, a block of rows at a time,
    the blocks shared out over our threads. float32[..., F] -> float32[..., F]."""
    if xs[0].nbytes <= _CACHED_BYTES:
        return fn(*xs)  # it fits in cache (a decode step, a 224 px prefill): one pass
    shape = xs[0].shape
    rows = max(1, _BLOCK_BYTES // (4 * shape[-1]))
    flat = [x.reshape(-1, shape[-1]) for x in xs]  # [..., F] -> [M, F]
    out = np.empty(flat[0].shape, np.float32)
    starts = range(0, out.shape[0], rows)

    def work(first: int, stride: int) -> None:
        for i in starts[first::stride]:
            out[i:i + rows] = fn(*(x[i:i + rows] for x in flat))

    _share_out(work, len(starts))
    return out.reshape(shape)  # [M, F] -> [..., F]


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
    chunk = max(1, min(SCORE_BLOCK_BYTES // (4 * b * n * s * _WORKERS), -(-l // _WORKERS)))
    starts = range(0, l, chunk)

    def work(first: int, stride: int) -> None:
        for i in starts[first::stride]:
            rows = slice(i, min(l, i + chunk))
            c = rows.stop - rows.start
            weights = attention_weights(qg[:, :, :, rows].reshape(b, kv_heads, g * c, h), k,
                                        None if mask is None else mask[:, rows], scale, logit_cap)
            out[:, :, :, rows] = (weights @ v).reshape(b, kv_heads, g, c, h)  # [B, K, G*c, S] @ [B, K, S, H]

    # A capture (npgemma.inspect) sees the hooks of its own thread, chunk after chunk, in order.
    if len(starts) == 1 or active() is not None:
        work(0, 1)
    else:
        _share_out(work, len(starts))
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
