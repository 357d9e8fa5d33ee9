"""The matrix products behind a decode step, timed on their own: why `layers.linear` takes the
paths it takes. One weight the size of a Gemma MLP projection ([16384, 2048] by default), in
float32 and in bfloat16 (the low-memory mode), multiplied by 1 and by B activation rows.

    python benchmarks/kernels.py [--out 16384] [--in 2048] [--rows 8]
    python benchmarks/kernels.py --step   # every decode-step weight of paligemma-3b (10 GB)

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
"""

from __future__ import annotations

import argparse
import time

import ml_dtypes
import numpy as np

from npgemma import _kernels, layers


def best_ms(fn, repeats: int = 7) -> float:
    time.sleep(0.5)  # BLAS's threads stop spinning after their last call (see layers.py)
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
    args = ap.parse_args(argv)
    if args.step:
        return whole_step(args.rows)
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
    print(f"weight [{args.out}, {args.inp}] ({w.nbytes / 1e6:.0f} MB float32)")
    print("| product | ms | × one row |\n|---|---|---|")
    for name, ms in times:
        print(f"| {name} | {ms:.2f} | {ms / base:.2f} |")
    return 0


def whole_step(b: int) -> int:
    import contextlib

    hidden, inter, vocab, n_layers = 2048, 16384, 257216, 18  # paligemma-3b's Gemma
    shapes = [(2048, hidden), (256, hidden), (256, hidden), (hidden, 2048),  # q, k, v, o
              (inter, hidden), (inter, hidden), (hidden, inter)]            # gate, up, down
    weights = [np.full(s, 0.01, np.float32) for _ in range(n_layers) for s in shapes]
    weights.append(np.full((vocab, hidden), 0.01, np.float32))
    print(f"{len(weights)} weights, {sum(w.nbytes for w in weights) / 1e9:.1f} GB float32")

    def step(rows: int, ours: bool) -> None:
        with _kernels.on_our_threads() if ours else contextlib.nullcontext():
            for w in weights:
                layers.linear(np.ones((rows, w.shape[1]), np.float32), w)

    print("| rows | float32 slab | threads | ms (run 1) | ms (run 2) |\n|---|---|---|---|---|")
    for rows in (1, b):
        for slab in (1 << 20, 4 << 20):
            if rows == 1 and slab != 1 << 20:
                continue  # one row: BLAS's path takes no slabs, ours is timed at 1 MiB only
            for ours in (False, True):
                _kernels.F32_SLAB_BYTES = slab
                ms = [best_ms(lambda: step(rows, ours), repeats=2) for _ in range(2)]
                print(f"| {rows} | {slab >> 20} MiB | {'ours' if ours else 'BLAS'} | "
                      f"{ms[0]:.0f} | {ms[1]:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
