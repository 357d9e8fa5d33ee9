"""`npgemma conform --against SPEC`: the conformance suite (`npgemma/compare/conform.py`) as one
table, case x stage, with the diagnosis of each failing case. Exit status 1 when any case fails."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from ..compare import conform
from ..errors import InputError
from .args import add_backend_args, add_window_arg, non_negative_int
from .parity import _plain_json
from .progress import bar


def add_parser(sub) -> None:
    p = sub.add_parser("conform", help="check another PaliGemma implementation over npgemma's "
                                       "whole case set: one table, a diagnosis per failure")
    p.add_argument("--against", metavar="SPEC",
                   help="PKG.MODULE:FUNC, FILE.py:FUNC, torch, transformers, openai:URL, "
                        "keras-hub or mlx-vlm")
    p.add_argument("--python", metavar="PATH",
                   help="run the adapter in this interpreter (the peer's own virtual environment)")
    p.add_argument("--cases", metavar="GLOB[,GLOB]", help="only these cases (default: all)")
    p.add_argument("--list", action="store_true", help="list the cases and what each catches")
    p.add_argument("--model", action="append", default=[], metavar="DIR",
                   help="add a checkpoint of yours as a case (repeatable)")
    p.add_argument("--workdir", metavar="DIR",
                   help="where the case checkpoints are written (kept, reused; default: a "
                        "temporary folder)")
    p.add_argument("--max-new-tokens", type=non_negative_int, default=6)
    p.add_argument("--attn", default="eager", choices=["eager", "sdpa"],
                   help="attention implementation of --against transformers")
    add_backend_args(p, backend=False)
    add_window_arg(p)  # which authority npgemma's side runs for Gemma-2's window
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--markdown", metavar="FILE", help="also write the table as markdown")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args) -> int:
    cases = conform.select(args.cases, [conform.model_case(m) for m in args.model])
    if args.list:
        for c in cases:
            print(f"{c.name:<22} {c.what}")
        return 0
    if not args.against:
        raise InputError("conform: --against SPEC is required (or --list)")
    if args.workdir:
        root = Path(args.workdir)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"--workdir {root}: cannot create it ({e.strerror})") from None
        return _run(args, cases, root)
    with tempfile.TemporaryDirectory(prefix="npgemma-conform-") as tmp:
        return _run(args, cases, Path(tmp))


def _run(args, cases, root: Path) -> int:
    t0 = time.perf_counter()
    results = []
    with bar(len(cases), "conform", unit="case", quiet=args.quiet) as progress:
        for case in cases:
            progress.set_postfix_str(case.name)
            results.append(conform.run_case(case, root, args))
            progress.update(1)
    conform.explain_load_failures(cases, results)
    seconds = time.perf_counter() - t0
    ok = conform.passed(results)
    if args.markdown:
        try:
            Path(args.markdown).write_text(f"`npgemma conform --against {args.against}`\n\n"
                                           + conform.table(results, markdown=True) + "\n")
        except OSError as e:
            raise InputError(f"--markdown {args.markdown}: cannot write it ({e.strerror})") from None
    if args.json:
        print(json.dumps(_plain_json({"against": args.against, "ok": ok,
                                      "seconds": round(seconds, 1),
                                      "summary": conform.summary(results),
                                      "cases": [asdict(r) for r in results]}), default=_plain))
    else:
        print(conform.table(results))
        if conform.verdicts(results):
            print("\n" + conform.verdicts(results))
        print(f"{conform.summary(results)} ({seconds:.0f} s)")
    if not ok:
        print(f"npgemma: conform against {args.against}: {conform.summary(results)}",
              file=sys.stderr)
    return 0 if ok else 1


def _plain(x):
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"{type(x).__name__} is not JSON")
