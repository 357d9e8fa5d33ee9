"""The matrix products behind a decode step, timed on their own: why `layers.linear` takes the
paths it takes. One weight the size of a Gemma MLP projection ([16384, 2048] by default), in
float32 and in bfloat16 (the low-memory mode), multiplied by 1 and by B activation rows.

    python benchmarks/kernels.py [--out 16384] [--in 2048] [--rows 8]
    python benchmarks/kernels.py --step   # every decode-step weight of paligemma-3b (10 GB)
    python benchmarks/kernels.py --slabs  # the same in bfloat16, by slab size (5 GB)
    python benchmarks/kernels.py --slabs --model DIR  # over a checkpoint's memory-mapped weights

Rows (best of 7, ms; ratios against the one-row float32 product on BLAS's threads, same run):
- float32, 1 row / B rows, `x @ W.T`: one BLAS call on BLAS's own threads (what a prefill-sized
  product does, and what a decode step did before).
- float32 and bfloat16, 1 row / B rows, `layers.linear` inside `_kernels.on_our_threads()` (what
  the numpy backend runs in a decode step): slabs of weight rows on one thread of ours per core,
  BLAS single-threaded; bfloat16 is the low-memory mode, widened to float32 slab by slab.

`--step`: the products of one whole decode step instead of one weight (float32 weights of
paligemma-3b's shapes: 18 Gemma layers and the 257216-row lm_head, filled with a constant), for
1 and B rows, `layers.linear` on BLAS's threads and inside `on_our_threads()`, float32 slabs of
1 MiB and 4 MiB; best of 2, each configuration twice. Needs ~10.5 GB of memory.

`--slabs`: the same decode step's products in bfloat16 (the low-memory mode, one row, inside
`on_our_threads()`), by `_kernels.SLAB_BYTES` from 256 KiB to 16 MiB, widened as even/odd pairs
(`_kernels`) and, beside, by run 11's strided store into the high halves; best of 3, each twice. Needs ~5.5 GB of memory. With `--model DIR` the weights are that checkpoint's decoder and
output table, memory-mapped as the low-memory mode maps them (its file pages, not RAM arrays).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import ml_dtypes
import numpy as np

from npgemma import _kernels, layers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # record.py
from record import Printed, write  # noqa: E402

out = Printed()  # print(), kept for --record
PAUSE = 0.5  # s before each timing: BLAS's threads stop spinning after their last call (layers.py)


def best_ms(fn, repeats: int = 7) -> float:
    time.sleep(PAUSE)
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return 1e3 * best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=int, default=16384, help="weight rows (output features)")
    ap.add_argument("--in", dest="inp", type=int, default=2048, help="input features")
    ap.add_argument("--rows", type=int, default=8, help="activation rows B (a batched decode step)")
    ap.add_argument("--step", action="store_true", help="time a whole decode step's products")
    ap.add_argument("--slabs", action="store_true",
                    help="time a whole low-memory decode step's products by slab size")
    ap.add_argument("--model", help="with --slabs: a checkpoint folder whose mapped weights to use")
    ap.add_argument("--shrink", type=int, default=1, metavar="N",
                    help="with --step/--slabs: every dimension ÷ N and 2 layers (a smoke run)")
    ap.add_argument("--record", metavar="FILE",
                    help="write the tables with the machine, BLAS kernel, versions and this "
                         "command (benchmarks/record.py), e.g. benchmarks/results/NAME.json")
    args = ap.parse_args(argv)
    global PAUSE
    PAUSE = PAUSE if args.shrink == 1 else 0.0  # a smoke run: its timings mean nothing
    if args.step:
        status = whole_step(args.rows, args.shrink)
    elif args.slabs:
        status = slab_sizes(args.model, args.shrink)
    else:
        status = one_weight(args)
    if args.record:
        write(args.record, "kernels.py", out.figures(), argv)
    return status


def one_weight(args) -> int:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((args.out, args.inp), dtype=np.float32)
    w16 = w.astype(ml_dtypes.bfloat16)
    x1 = rng.standard_normal((1, args.inp), dtype=np.float32)
    xb = rng.standard_normal((args.rows, args.inp), dtype=np.float32)
    b = args.rows

    def ours(x, weight):
        with _kernels.on_our_threads():
            return layers.linear(x, weight)

    cases = [
        ("float32, 1 row, x @ W.T (BLAS's threads)", lambda: x1 @ w.T),
        (f"float32, {b} rows, x @ W.T (BLAS's threads)", lambda: xb @ w.T),
        ("float32, 1 row, decode-step linear (our threads)", lambda: ours(x1, w)),
        (f"float32, {b} rows, decode-step linear (our threads)", lambda: ours(xb, w)),
        ("bfloat16, 1 row, decode-step linear (our threads)", lambda: ours(x1, w16)),
        (f"bfloat16, {b} rows, decode-step linear (our threads)", lambda: ours(xb, w16)),
    ]
    np.testing.assert_allclose(ours(xb, w16), xb @ w16.astype(np.float32).T, rtol=1e-4, atol=1e-2)
    times = [(name, best_ms(fn)) for name, fn in cases]
    base = times[0][1]
    out(f"weight [{args.out}, {args.inp}] ({w.nbytes / 1e6:.0f} MB float32)")
    out("| product | ms | × one row |\n|---|---|---|")
    for name, ms in times:
        out(f"| {name} | {ms:.2f} | {ms / base:.2f} |")
    return 0


HIDDEN, INTER, VOCAB, LAYERS = 2048, 16384, 257216, 18  # paligemma-3b's Gemma


def step_shapes(shrink: int = 1) -> list[tuple[int, int]]:
    """[out, in] of every weight a paligemma-3b decode step multiplies by (`shrink` > 1: every
    dimension divided by it and 2 layers, a smoke run)."""
    one = [(2048, HIDDEN), (256, HIDDEN), (256, HIDDEN), (HIDDEN, 2048),  # q, k, v, o
           (INTER, HIDDEN), (INTER, HIDDEN), (HIDDEN, INTER)]            # gate, up, down
    shapes = one * (LAYERS if shrink == 1 else 2) + [(VOCAB, HIDDEN)]
    return [(o // shrink, i // shrink) for o, i in shapes]


def mapped_step_weights(model: str) -> list[np.ndarray]:
    """Every matrix a decode step of `model` multiplies by, memory-mapped in its file dtype."""
    from npgemma.checkpoint.config_json import load_config
    from npgemma.checkpoint.weights import flatten, load_weights

    flat = flatten(load_weights(model, load_config(model), mmap=True))
    return [a for k, a in flat.items() if a.ndim == 2 and k.startswith(("language_model.", "lm_head."))]


def strided_matmul_t(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Run 11's low-memory product, for comparison: each bfloat16 slab widened by storing its 16
    bits into the high half of every float32 of a zeroed buffer (a strided copy), then one
    product per slab, on our threads. [M, in] -> [M, out]."""
    rows = max(1, _kernels.SLAB_BYTES // (4 * weight.shape[1]))
    xt = np.ascontiguousarray(x.T)
    yt = np.empty((weight.shape[0], x.shape[0]), np.float32)
    scratch = {}

    def work(first: int, stride: int) -> None:
        buf = scratch.setdefault(first, np.zeros(rows * weight.shape[1], np.float32))
        for i in range(first * rows, weight.shape[0], stride * rows):
            slab = weight[i:i + rows]
            wide = buf[:slab.size].reshape(slab.shape)
            wide.view(np.uint16).reshape(*slab.shape, 2)[..., 1] = slab.view(np.uint16)
            np.dot(wide, xt, out=yt[i:i + rows])

    _kernels.share_out(work, -(-weight.shape[0] // rows))
    return yt.T


def slab_sizes(model: str | None = None, shrink: int = 1) -> int:
    rng = np.random.default_rng(0)
    weights = (mapped_step_weights(model) if model else
               [rng.standard_normal(s, dtype=np.float32).astype(ml_dtypes.bfloat16)
                for s in step_shapes(shrink)])
    xs = {w.shape[1]: rng.standard_normal((1, w.shape[1]), dtype=np.float32) for w in weights}
    out(f"{len(weights)} weights, {sum(w.nbytes for w in weights) / 1e9:.1f} GB "
          f"{weights[0].dtype}{' memory-mapped' if model else ''}, {_kernels.WORKERS} threads")

    def step(product) -> None:
        with _kernels.on_our_threads():
            for w in weights:
                product(xs[w.shape[1]], w)

    w = weights[0]
    np.testing.assert_allclose(strided_matmul_t(xs[w.shape[1]], w), _kernels.matmul_t(xs[w.shape[1]], w),
                               rtol=1e-4, atol=1e-3)
    out("| slab | even/odd pairs, ms (run 1) | (run 2) | strided store, ms (run 1) | (run 2) |\n"
          "|---|---|---|---|---|")
    for kib in (256, 512, 1024, 2048, 4096, 8192, 16384):
        _kernels.SLAB_BYTES = kib << 10
        ms = [best_ms(lambda: step(product), repeats=3)
              for product in (_kernels.matmul_t, _kernels.matmul_t, strided_matmul_t, strided_matmul_t)]
        out(f"| {kib} KiB | {ms[0]:.0f} | {ms[1]:.0f} | {ms[2]:.0f} | {ms[3]:.0f} |", flush=True)
    return 0


def whole_step(b: int, shrink: int = 1) -> int:
    import contextlib

    weights = [np.full(s, 0.01, np.float32) for s in step_shapes(shrink)]
    out(f"{len(weights)} weights, {sum(w.nbytes for w in weights) / 1e9:.1f} GB float32")

    def step(rows: int, ours: bool) -> None:
        with _kernels.on_our_threads() if ours else contextlib.nullcontext():
            for w in weights:
                layers.linear(np.ones((rows, w.shape[1]), np.float32), w)

    out("| rows | float32 slab | threads | ms (run 1) | ms (run 2) |\n|---|---|---|---|---|")
    for rows in (1, b):
        for slab in (1 << 20, 4 << 20):
            if rows == 1 and slab != 1 << 20:
                continue  # one row: BLAS's path takes no slabs, ours is timed at 1 MiB only
            for ours in (False, True):
                _kernels.SLAB_BYTES = slab
                ms = [best_ms(lambda: step(rows, ours), repeats=2) for _ in range(2)]
                out(f"| {rows} | {slab >> 20} MiB | {'ours' if ours else 'BLAS'} | "
                      f"{ms[0]:.0f} | {ms[1]:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
