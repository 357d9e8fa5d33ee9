"""`npgemma` command line: parse (parser.py), then run the chosen command's module.

Every failure the user can cause ends in one line on stderr, `npgemma: error: ...`, naming
the culprit, and a non-zero exit — never a traceback (set NPGEMMA_DEBUG=1 to see one).
A command's module (and with it NumPy, the model, torch) is imported only once it is chosen,
so `npgemma --help` and a mistyped option answer at once.
"""

from __future__ import annotations

import importlib
import os
import sys

from ..errors import NpgemmaError
from .parser import build_parser

# command -> (module in this folder, its function taking the parsed arguments)
COMMANDS = {"generate": ("generate", "generate"), "demo": ("generate", "demo"),
            "inspect": ("inspect", "run"), "parity": ("parity", "run"),
            "conform": ("conform", "run"), "models": ("models", "run_models_cli"),
            "tiny-checkpoint": ("tiny", "run")}


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed, for provenance
        if args.command is None:  # a bare `npgemma`: what it can do
            print(parser.format_help(), end="", file=sys.stderr)
            return 2
        module, function = COMMANDS[args.command]
        run = getattr(importlib.import_module(f"{__package__}.{module}"), function)
        return run(args)
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
