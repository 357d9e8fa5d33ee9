"""How the NumPy reference runs its big products fast, kept out of the book.

Not model math: `layers.linear` asks `matmul_t` for x @ Wᵀ, `gemma.feed_forward` runs its
gelu(gate) · up through `by_row_blocks`, and `layers.attention` shares its query chunks out with
`share_out`. Every path here computes the float32 numbers of the plain expression it replaces,
up to the order in which a product's terms are summed (widening bfloat16/float16 is exact;
elementwise work in blocks is elementwise).
The torch backend has no twin of this file: its kernels are torch's.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import ml_dtypes
import numpy as np
from threadpoolctl import ThreadpoolController

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)

# Low-memory mode keeps a matrix in its file dtype (bfloat16/float16, memory-mapped) and widens
# it to float32 a slab of rows at a time into one reused buffer: the float32 copy of a big matrix
# (the 257216-row lm_head: 2.1 GB) never exists, and each slab is still in cache (two 4 MiB
# slabs in the 32 MiB L3) when the matrix product reads it. Widening is exact.
# The size is measured, not derived: every weight of a paligemma-3b decode step in bfloat16, one
# row, on our two threads (`benchmarks/kernels.py --slabs`, benchmarks/RESULTS.md run 12):
# 256 KiB 967-1089 ms, 1 MiB 516-527, 2 MiB 426-450, 4 MiB 330-347, 8 MiB 485-536, 16 MiB
# 746-805; over a checkpoint's memory-mapped pages (run 16) 4 MiB was best too.
# Smaller slabs pay a few numpy calls each (thousands a step); larger ones leave cache.
# A float32 slab has nothing to widen and measured a little faster in 4 MiB than in 1 MiB too
# (8 rows over the same weights on BLAS's threads: 1119/1126 ms in 1 MiB, 1070/1007 in 4 MiB).
SLAB_BYTES = 4 << 20
_slab_buffers = threading.local()

# A decode step is matrix-vector work: each weight is read once, from memory, for a few rows of
# activations. Where that work is more than BLAS's (the low-memory mode also widens every weight
# on the way), the numpy backend runs its decode steps inside `on_our_threads()`: `matmul_t`
# takes each weight as cache-sized slabs of rows shared out over one thread of ours per core
# (NumPy releases the GIL while it casts and multiplies), and BLAS is held to one thread for the
# whole block, since its own threads, idle but spinning for the cores after any BLAS call, would
# otherwise run beside ours. Measured on the 2-core CI machine, paligemma-3b low-memory decode:
# 963 ms a step with BLAS's threads spinning, 640 ms on ours. In float32 a step is BLAS's
# matrix-vector product (already at the memory bound) or, for 2..16 rows, slabs on BLAS's
# threads. Ours are no better there: over every decode-step weight of paligemma-3b, quiet
# machine, four runs (`benchmarks/kernels.py --step`, benchmarks/RESULTS.md): one row 379-473 ms
# as one BLAS call a weight, 444-548 ms on ours; 8 rows in 4 MiB slabs 991-1070 ms on BLAS's
# threads, 835-1065 ms on ours, within the runs' spread.
WORKERS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
FEW_ROWS = 16  # activation rows that still make a matrix-vector-like product
_pool: ThreadPoolExecutor | None = None
_blas: ThreadpoolController | None = None
_depth = 0  # depth of on_our_threads() blocks


def _slab_buffer(elements: int) -> np.ndarray:
    """This thread's reusable float32 scratch of at least `elements` entries."""
    buf = getattr(_slab_buffers, "buf", None)
    if buf is None or buf.size < elements:
        buf = _slab_buffers.buf = np.empty(elements, np.float32)
    return buf


HIGH_HALF = np.uint32(0xFFFF0000)


def widen_bf16_pairs(slab: np.ndarray, scratch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """bfloat16[R, C] -> (float32[R, C/2], float32[R, C/2]): its even and its odd columns,
    widened exactly, in `scratch` (from `_slab_buffer`, at least R * C values).

    A bfloat16 is the high half of the float32 with the same value (NaN, infinities and
    subnormals too). Read as uint32, a row of bfloat16 is its columns in pairs, the even column
    in each low half and the odd one in each high half (little-endian). So the odd columns
    widened are the pairs with their low halves cleared, and the even ones the pairs shifted up
    16 bits: two contiguous passes that NumPy vectorizes, where storing the 16 bits into every
    other uint16 of a float32 buffer is a strided copy. Over every weight of a paligemma-3b
    decode step in 4 MiB slabs, one run: 435-472 ms this way, 497-537 ms the strided way
    (`benchmarks/kernels.py --slabs`, benchmarks/RESULTS.md run 17).
    """
    pairs = slab.view(np.uint32)  # [R, C] bfloat16 -> [R, C/2] uint32: (even, odd) halves
    wide = scratch[:slab.size].view(np.uint32).reshape(2, *pairs.shape)  # [2, R, C/2]
    np.left_shift(pairs, 16, out=wide[0])  # column 2j: its 16 bits moved into the high half
    np.bitwise_and(pairs, HIGH_HALF, out=wide[1])  # column 2j+1: already in the high half
    return wide[0].view(np.float32), wide[1].view(np.float32)


def _reads_as_pairs(weight: np.ndarray) -> bool:
    """Can `weight`'s rows be read as uint32 pairs of bfloat16 (see `widen_bf16_pairs`)?"""
    return (weight.dtype == BFLOAT16 and sys.byteorder == "little" and weight.ndim == 2
            and weight.shape[1] % 2 == 0 and weight.strides[1] == 2)


def in_our_threads() -> bool:
    """Is the caller inside an `on_our_threads()` block?"""
    return _depth > 0


@contextlib.contextmanager
def on_our_threads():
    """A block with BLAS single-threaded, in which `matmul_t` shares few-row products out over
    npgemma's threads (a low-memory decode step). `share_out` enters one for its parts."""
    global _pool, _blas, _depth
    if WORKERS > 1 and _pool is None:
        _pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="npgemma-slabs")
        _blas = ThreadpoolController()
    outermost = _depth == 0 and _blas is not None
    _depth += 1
    try:
        with _blas.limit(limits=1, user_api="blas") if outermost else contextlib.nullcontext():
            yield
    finally:
        _depth -= 1


def share_out(work, parts: int) -> None:
    """work(first, stride) on one thread of ours per core (parts first, first + stride, ...),
    BLAS single-threaded meanwhile; on the calling thread alone when there is one core or part."""
    workers = min(WORKERS, parts)
    if workers <= 1:
        work(0, 1)
        return
    with on_our_threads():
        for f in [_pool.submit(work, w, workers) for w in range(workers)]:
            f.result()


def slab_matmul(x: np.ndarray, weight: np.ndarray, parallel: bool) -> np.ndarray:
    """x @ weight.T a slab of weight rows at a time, each slab read once. [M, in] -> [M, out].

    Each product is slab @ xᵀ, so the weight slab is BLAS's big operand and each output block is
    contiguous. A narrow weight (bfloat16/float16) is widened slab by slab into a reused float32
    buffer; with `parallel`, slab s goes to thread s mod workers.

    bfloat16 is widened as its even and its odd columns (`widen_bf16_pairs`), and the product
    is summed in that grouping: slab @ xᵀ = slab[:, 0::2] @ xᵀ[0::2] + slab[:, 1::2] @ xᵀ[1::2].
    The same products and the same sum, in another order: it differs from the one-call product
    in float32 rounding only, as BLAS's own blocking does between kernels.
    """
    rows = max(1, SLAB_BYTES // (4 * weight.shape[1]))
    yt = np.empty((weight.shape[0], x.shape[0]), np.float32)  # [out, M]
    as_pairs = _reads_as_pairs(weight)
    if as_pairs:
        x_even = np.ascontiguousarray(x[:, 0::2].T)  # [M, in] -> [in/2, M]
        x_odd = np.ascontiguousarray(x[:, 1::2].T)
    else:
        xt = np.ascontiguousarray(x.T)  # [M, in] -> [in, M]

    def work(first: int, stride: int) -> None:
        scratch = _slab_buffer(rows * weight.shape[1])
        for i in range(first * rows, weight.shape[0], stride * rows):
            slab = weight[i:i + rows]
            out = yt[i:i + rows]
            if as_pairs:
                even, odd = widen_bf16_pairs(slab, scratch)  # [rows, in] -> 2 x [rows, in/2]
                np.dot(even, x_even, out=out)  # [rows, in/2] @ [in/2, M] -> [rows, M]
                out += odd @ x_odd
            else:
                if slab.dtype != np.float32:
                    wide = scratch[:slab.size].reshape(slab.shape)
                    np.copyto(wide, slab, casting="unsafe")  # exact widening (ml_dtypes' cast)
                    slab = wide
                np.dot(slab, xt, out=out)  # [rows, in] @ [in, M] -> [rows, M]

    if parallel:
        share_out(work, -(-weight.shape[0] // rows))
    else:
        work(0, 1)
    # [out, M] -> [M, out]: a view for a decode step's few rows, row-major for a prefill's many
    return yt.T if x.shape[0] <= FEW_ROWS else np.ascontiguousarray(yt.T)


# A prefill multiplies each weight by hundreds of rows: matrix-matrix work, bound by arithmetic,
# not by reading the weight. There the 4 MiB slabs above cost twice: each is two small products
# (even and odd columns) too small for BLAS's blocking, and the [out, M] result is transposed
# at the end. So a prefill widens larger slabs, in the weight's own column order, and runs the
# float32 mode's own product on each: x @ slabᵀ, all rows of x at once, on BLAS's threads.
# Widening stays once per slab: for paligemma-3b's 9216 x 2304 gate at 260 rows, 9 ms for a
# 3640-row slab against ~190 ms for its product (ad hoc timing on the busy 2-core machine), so it
# is not overlapped with the products, which want both cores. 32 MiB (a 3B gate in 3 slabs):
# a few large BLAS calls a weight, and the scratch stays small beside the activations
# (`estimate._WIDENING_BYTES` counts it). The prefill it gives: benchmarks/RESULTS.md run 19.
GEMM_SLAB_BYTES = 32 << 20


def widen_rows(slab: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """narrow[R, C] -> float32[R, C], exactly, in `scratch` (at least R * C values).
    A bfloat16 is the high half of the float32 of the same value: its 16 bits shifted up."""
    wide = scratch[:slab.size].reshape(slab.shape)
    if slab.dtype == BFLOAT16:
        np.left_shift(slab.view(np.uint16), 16, out=wide.view(np.uint32), dtype=np.uint32)
    else:
        np.copyto(wide, slab, casting="unsafe")  # float16 (and float32): ml_dtypes'/NumPy's cast
    return wide


def gemm_slabs(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """x @ weight.T for many rows of x and a narrow weight: a GEMM-sized slab of weight rows
    widened at a time, each product one BLAS call over every row of x. [M, in] -> [M, out]."""
    rows = max(1, GEMM_SLAB_BYTES // (4 * weight.shape[1]))
    y = np.empty((x.shape[0], weight.shape[0]), np.float32)  # [M, out]
    scratch = _slab_buffer(min(rows, weight.shape[0]) * weight.shape[1])
    for i in range(0, weight.shape[0], rows):
        wide = widen_rows(weight[i:i + rows], scratch)  # [rows, in] -> float32
        np.matmul(x, wide.T, out=y[:, i:i + rows])  # [M, in] @ [in, rows] -> [M, rows]
    return y


def matmul_t(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """float32 x @ weight.T for x float32[M, in] and weight [out, in] in any stored dtype:
    the numbers of `x @ weight.astype(np.float32).T` (its terms perhaps summed in another
    order), by the fastest path. [M, in] -> [M, out]."""
    m = x.shape[0]
    if _depth and m <= FEW_ROWS:
        return slab_matmul(x, weight, parallel=True)  # a decode step on our threads
    if weight.dtype == np.float32 and (m == 1 or m > FEW_ROWS):
        return x @ weight.T  # [M, in] -> [M, out]: one BLAS call on BLAS's threads
    if m > FEW_ROWS:
        return gemm_slabs(x, weight)  # a prefill over narrow weights
    # 2..16 rows, narrow weights widened slab by slab; or float32 weights, where OpenBLAS runs one
    # [M, in] @ [in, out] product far below its matrix-vector speed (8 rows: 3.5x one row)
    # and slabs of the weight, each read once, cost ~2.3x.
    return slab_matmul(x, weight, parallel=False)


# Elementwise work on a prefill's [L, F] activations (896 px: 4352 x 16384, 285 MB) runs at
# memory speed on one core if each step of a formula passes over the whole array. Taken a block
# of rows at a time, the formula's temporaries stay in cache, and the blocks go to both cores.
# Elementwise means the numbers are the same. Measured on the 2-core CI machine, Gemma's GELU at
# 896 px: 0.75 s over the whole array, 0.37 s in 256 KiB blocks on two threads; the 896 px
# prefill 249.4 -> 240.8 s (benchmarks/RESULTS.md runs 5 and 7). An array that fits in the
# 32 MiB L3 (224 px: 17 MB) gained nothing measurable and keeps the one pass.
BLOCK_BYTES = 256 << 10
CACHED_BYTES = 32 << 20


def by_row_blocks(fn, *xs: np.ndarray) -> np.ndarray:
    """fn(*xs) for an elementwise fn of same-shaped float32 arrays, a block of rows at a time,
    the blocks shared out over our threads. float32[..., F] -> float32[..., F]."""
    if xs[0].nbytes <= CACHED_BYTES:
        return fn(*xs)  # it fits in cache (a decode step, a 224 px prefill): one pass
    shape = xs[0].shape
    rows = max(1, BLOCK_BYTES // (4 * shape[-1]))
    flat = [x.reshape(-1, shape[-1]) for x in xs]  # [..., F] -> [M, F]
    out = np.empty(flat[0].shape, np.float32)
    starts = range(0, out.shape[0], rows)

    def work(first: int, stride: int) -> None:
        for i in starts[first::stride]:
            out[i:i + rows] = fn(*(x[i:i + rows] for x in flat))

    share_out(work, len(starts))
    return out.reshape(shape)  # [M, F] -> [..., F]
