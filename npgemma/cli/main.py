"""`npgemma` command line: generate, demo, inspect, models, parity (the parser and dispatch).

Every failure the user can cause ends in one line on stderr, `npgemma: error: ...`, naming
the culprit, and a non-zero exit — never a traceback (set NPGEMMA_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..errors import NpgemmaError
from . import conform, generate, inspect, models, parity
from .args import (ListTraps, Parser, add_backend_args, add_model_args, add_timeout_arg,
                   non_negative_int)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="npgemma", description="PaliGemma in readable NumPy (and PyTorch).")
    parser.add_argument("--version", action="version", version=f"npgemma {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    g = sub.add_parser("generate", help="caption / answer / detect on one image")
    add_model_args(g, several=True)
    g.add_argument("--max-new-tokens", type=non_negative_int, default=32)
    g.add_argument("--do-sample", action="store_true")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=non_negative_int, default=None)
    g.add_argument("--draw", metavar="OUT.png",
                   help="save the image with the detected boxes (<loc> answers) and masks "
                        "(<seg> answers, with --vae) drawn on it")
    g.add_argument("--vae", metavar="PATH",
                   help="PaliGemma's mask VQ-VAE (vae-oid.npz): <seg> codes -> masks")
    d = sub.add_parser("demo", help="the bundled demo model on a freshly drawn scene")
    d.add_argument("--seed", type=non_negative_int, default=0, help="which scene to draw")
    d.add_argument("--out", default="demo.png", help="picture of the scene with the predicted boxes")
    add_backend_args(d)
    d.add_argument("--model", default=None, help=argparse.SUPPRESS)  # a retrained demo folder
    p = sub.add_parser("parity", help="compare numpy with torch (or --against another "
                                      "implementation) on one input, stage by stage")
    add_model_args(p, backend=False)  # numpy float32 against torch (or --against SPEC)
    p.add_argument("--max-new-tokens", type=non_negative_int, default=8,
                   help="greedy tokens compared between the two sides")
    p.add_argument("--against", metavar="SPEC",
                   help="the other side: PKG.MODULE:FUNC, FILE.py:FUNC, torch, transformers, "
                        "openai:URL, keras-hub or mlx-vlm (default: npgemma's own torch backend, "
                        "layer by layer)")
    p.add_argument("--diagnose", action="store_true",
                   help="with --against: rank the known deviations by how well each explains "
                        "the difference")
    p.add_argument("--attn", default="eager", choices=["eager", "sdpa"],
                   help="attention implementation of --against transformers")
    p.add_argument("--python", metavar="PATH",
                   help="with --against FILE.py:FUNC (or keras-hub, mlx-vlm): run the adapter in "
                        "this interpreter (the peer's own virtual environment)")
    add_timeout_arg(p)
    p.add_argument("--list-traps", action=ListTraps,
                   help="list the trap catalogue --diagnose searches, and exit")
    m = sub.add_parser("models", help="the PaliGemma checkpoints in the Hugging Face cache (and "
                                      "folders given): sizes, and the RAM each backend needs")
    m.add_argument("folders", nargs="*", metavar="MODEL", help="checkpoint folders or model ids")
    m.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.add_parser(sub)  # `npgemma inspect`: its own module
    conform.add_parser(sub)  # `npgemma conform`: its own module
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "generate":
            return generate.generate(args)
        if args.command == "inspect":
            return inspect.run(args)
        if args.command == "demo":
            return generate.demo(args)
        if args.command == "models":
            return models.run_models_cli(args)
        if args.command == "conform":
            return conform.run(args)
        return parity.run(args)
    except NpgemmaError as e:
        print(f"npgemma: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("npgemma: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("npgemma: error: out of memory (try --dtype bfloat16 to keep weights in bfloat16)",
              file=sys.stderr)
        return 1
    except Exception as e:  # a bug, not bad input: still one line unless asked for the trace
        if os.environ.get("NPGEMMA_DEBUG"):
            raise
        print(f"npgemma: internal error: {type(e).__name__}: {e} (NPGEMMA_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 1
