"""`npgemma parity`: npgemma's NumPy reference against its torch backend, stage by stage, or
`--against SPEC` another implementation (`npgemma/compare/`). Exit status 1 when anything fails."""

from __future__ import annotations

import json
import sys

import numpy as np

from ..checkpoint import estimate, machine, memory, prefetch
from ..checkpoint.config_json import load_config
from ..checkpoint.hub import resolve
from ..checkpoint.estimate import text_tokens
from ..checkpoint.weights import header_summary
from ..compare import against
from ..config import with_window
from ..compare.stages import parity_rows
from ..errors import NpgemmaError
from ..generation.backend import get_backend
from ..generation.generate import GenerationConfig, generate_tokens
from ..generation.numpy_backend import NumpyBackend
from ..generation.processing import Processor


def run(args) -> int:
    if args.against:
        return _against(args)
    if args.diagnose:
        raise NpgemmaError("parity: --diagnose needs --against SPEC")
    return _parity(args)


def _parity(args) -> int:
    """numpy float32 against npgemma's torch backend, stage by stage, then greedy tokens.

    The reference holds float32 weights in RAM when they fit; otherwise a bfloat16/float16
    checkpoint is memory-mapped and widened as used (the low-memory mode: float32 compute on the
    exact weights, its products' terms summed in another order), and torch on the CPU in that
    dtype computes on the same mapped pages."""
    tb = get_backend("torch", device=args.device, dtype=args.dtype)
    model_dir = resolve(args.model)
    cfg = with_window(load_config(model_dir), args.window)
    files, headers = header_summary(model_dir)
    disk_dtype, tokens = estimate.stored_dtype(headers), text_tokens(args.prompt, args.max_new_tokens)
    avail = machine.available_memory()
    reference = memory.parity_reference(cfg, args.dtype, args.device, disk_dtype, tokens, avail)
    streams = None if args.force else memory.check(
        cfg, str(model_dir), dtype=args.dtype, device=args.device, disk_dtype=disk_dtype,
        parity=True, text_tokens=tokens, files=files, read_speed=prefetch.read_speed,
        reference=reference, available=avail).streams
    if streams is not None:  # the reference's mapped weights exceed memory: they stream
        print(f"npgemma: {model_dir.name}: {streams}", file=sys.stderr)
    ref = NumpyBackend(dtype=reference, stream=streams is not None,
                       keep=0 if streams is None else streams.resident_layers)
    processor = Processor.from_pretrained(model_dir, cfg)
    inputs = processor(args.image, args.prompt)
    params = ref.load_weights(model_dir, cfg)
    rows, tparams = parity_rows(cfg, params, tb, inputs)
    against_what = "numpy float32" + ("" if reference == "float32" else
                                      f" (weights memory-mapped in {reference}, widened as used)")

    gen = GenerationConfig(max_new_tokens=args.max_new_tokens)
    ids, pix = inputs.input_ids[None], inputs.pixel_values[None]
    np_tokens = [int(x[0]) for x in generate_tokens(ref, params, cfg, ids, pix, gen)]
    t_tokens = [int(x[0]) for x in generate_tokens(tb, tparams, cfg, ids, pix, gen)]
    tokens_ok = np_tokens == t_tokens
    ok = tokens_ok and all(c.ok for _, c in rows)

    if args.json:
        print(json.dumps({
            "device": args.device, "dtype": args.dtype, "reference": reference, "ok": ok,
            "stages": [{"stage": n, "max_abs": c.max_abs, "max_rel": c.max_rel, "limit": c.limit,
                        "where": list(c.where), "ok": c.ok} for n, c in rows],
            "greedy_tokens": {"numpy": np_tokens, "torch": t_tokens, "agree": tokens_ok}}))
    else:
        print(f"torch {args.device}/{args.dtype} vs {against_what}")
        print(f"{'stage':<26} {'max abs':>10} {'rel':>10} {'limit':>10}  ok")
        for name, c in rows:
            print(f"{name:<26} {c.max_abs:>10.3g} {c.max_rel:>10.3g} {c.limit:>10.3g}  "
                  f"{'yes' if c.ok else 'NO'}")
        print(f"greedy tokens ({len(np_tokens)}): {'agree' if tokens_ok else 'DIFFER'}")
        if not tokens_ok:
            print(f"  numpy {np_tokens}\n  torch {t_tokens}")
    if not ok:
        print("npgemma: parity failed", file=sys.stderr)
    return 0 if ok else 1


def _against(args) -> int:
    from ..compare.contract import TimedOut
    from .args import request_of

    try:
        report, rc = against.run(request_of(args))
    except TimedOut as e:  # a row of its own, as conform's table has it: the run failed
        report, rc = {"against": args.against, "dtype": args.dtype, "ok": False,
                      "stages": [{"stage": "adapter", "ok": False, "max_abs": None,
                                  "max_rel": None, "limit": None,
                                  "note": f"timed out after {e.seconds:g} s"}],
                      "greedy_tokens": None, "diagnosis": None}, 1
    if args.json:
        print(json.dumps(_plain_json(report)))
    else:
        print_report(report)
    if rc:
        print(f"npgemma: parity against {args.against} failed", file=sys.stderr)
    return rc


def _fmt(x) -> str:
    return "" if x is None else f"{x:.3g}"


def print_report(report: dict, out=None) -> None:
    p = lambda *a: print(*a, file=out or sys.stdout)  # noqa: E731
    p(f"{report['against']} ({report['dtype']}) vs npgemma numpy float32")
    p(f"{'stage':<30} {'max abs':>10} {'rel':>10} {'limit':>10}  ok")
    for r in report["stages"]:
        p(f"{r['stage']:<30} {_fmt(r['max_abs']):>10} {_fmt(r['max_rel']):>10} "
          f"{_fmt(r['limit']):>10}  {'yes' if r['ok'] else 'NO'}  {r['note']}".rstrip())
    tokens = report["greedy_tokens"]
    if tokens and tokens["first_divergence"]:
        d = tokens["first_divergence"]
        p(f"first divergent token: #{d['index']}: npgemma {d['npgemma']}, other {d['other']}")
        for side in ("npgemma", "other"):
            top = d[f"{side}_top5"]
            p(f"  {side:<8} top-5: " + ("(not returned)" if top is None else
                                        ", ".join(f"{i} {t!r} {v:.4g}" for i, t, v in top)))
    diag = report["diagnosis"]
    if diag is not None and not isinstance(diag, dict):
        diag = diag.as_dict()
    if diag:
        p("diagnosis: distance to npgemma under each known deviation, best first")
        base = diag["npgemma"]
        for f in ([base] if base else []) + diag["candidates"]:
            label = "npgemma (no deviation)" if f is base else f["name"]
            tokens = f"{f['tokens_agree']}/{f['tokens_total']}" if f["tokens_total"] else "-"
            p(f"  {f['distance']:>10.3g}  {'within' if f['ok'] else 'over  '}  "
              f"tokens {tokens:<6} {label}")
        if diag["no_effect"]:
            p("  no effect on this input (cannot be confirmed or ruled out here):")
            for n in diag["no_effect"]:
                p(f"    {n['name']}" + (f" (needs {n['needs']})" if n["needs"] else ""))
        if diag["pixels"]:
            p("pixels: distance to npgemma's preprocessing under each known trap, best first")
            for f in [diag["pixels"]["npgemma"]] + diag["pixels"]["candidates"]:
                p(f"  {f['distance']:>10.3g}  {'within' if f['ok'] else 'over  '}  {f['name']}")
        p(diag["verdict"])


def _plain_json(x):
    """inf / NaN distances (a NaN-producing deviation) as null: strict JSON; a dataclass (a
    `Verdict`) as its dict."""
    import dataclasses

    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _plain_json(dataclasses.asdict(x))
    if isinstance(x, dict):
        return {k: _plain_json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_plain_json(v) for v in x]
    return None if isinstance(x, float) and not np.isfinite(x) else x
