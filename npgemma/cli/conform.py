"""`npgemma conform --against SPEC`: the conformance suite (`npgemma/compare/conform.py`) as one
table, case x stage, with the diagnosis of each failing case. Exit status 1 when any case fails."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from ..compare import conform
from ..compare.provenance import provenance
from ..compare.catalogue import listing
from ..errors import InputError
from .args import check_output, request_of
from .parity import _plain_json
from .progress import bar


def run(args) -> int:
    if args.list_adapters:
        from ..compare.adapters import BUILTINS

        for b in BUILTINS.values():
            import os

            missing = b.own_venv and not os.path.isfile(b.spec().rsplit(":", 1)[0])
            where = (f"own venv (--python); setup: {b.setup_path()}" if b.own_venv else
                     "this interpreter") + (" (its adapter is not in this copy)" if missing else "")
            print(f"{b.name:<20} {b.what}\n{'':<20} {where}")
        return 0
    if args.list_traps:
        check_output("--markdown", args.markdown)
        print(listing())
        if args.markdown:
            Path(args.markdown).write_text(listing(markdown=True) + "\n")
        return 0
    cases = conform.select(args.cases, [conform.model_case(m) for m in args.model])
    if args.list:
        for c in cases:
            print(f"{c.name:<22} {c.what}")
        return 0
    if not args.against:
        raise InputError("conform: --against SPEC is required (or --list)")
    check_output("--markdown", args.markdown)
    check_output("--workdir", args.workdir, folder=True)
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
    base = request_of(argparse.Namespace(**(vars(args) | {"model": None, "diagnose": True})))
    with bar(len(cases), "conform", unit="case", quiet=args.quiet) as progress:
        for case in cases:
            progress.set_postfix_str(case.name)
            results.append(conform.run_case(case, root, base))
            progress.update(1)
    siblings = conform.explain_crashes(cases, results, root, base)
    seconds = time.perf_counter() - t0
    ok = conform.passed(results)
    if args.markdown:
        try:
            Path(args.markdown).write_text(f"`npgemma conform --against {args.against}`\n\n"
                                           + conform.table(results, markdown=True) + "\n")
        except OSError as e:
            raise InputError(f"--markdown {args.markdown}: cannot write it ({e.strerror})") from None
    if args.json:  # the figures with where they came from (a committed run is cited as evidence)
        where = provenance(shlex.join(["npgemma", *args.argv]), args.python)
        print(json.dumps(_plain_json({"against": args.against, "ok": ok, "provenance": where,
                                      "seconds": round(seconds, 1),
                                      "summary": conform.summary(results),
                                      "cases": [asdict(r) for r in results],
                                      "siblings_run": [asdict(r) for r in siblings.values()]}),
                         default=_plain))
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
