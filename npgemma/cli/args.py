"""Options the `npgemma` commands share, and the parser that fails in one line."""

from __future__ import annotations

import argparse

from ..compare.request import DEFAULT_TIMEOUT_S, Request
from ..errors import InputError, NpgemmaError
from ..generation.backend import BACKENDS, DTYPES


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        raise NpgemmaError(f"{self.prog}: {message}")


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def add_backend_args(p: argparse.ArgumentParser, backend: bool = True) -> None:
    """[--backend], --device, --dtype: the names npgemma.load takes (one table each)."""
    if backend:
        p.add_argument("--backend", default="numpy", choices=BACKENDS)
    p.add_argument("--device", default="cpu", help="cpu or cuda (torch backend)")
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="numpy: the weights' storage dtype (compute stays float32); torch: the "
                        "compute dtype")


def add_model_args(p: argparse.ArgumentParser, several: bool = False, backend: bool = True) -> None:
    """--model, --image/--prompt (one pair, or several and --batch), the backend options,
    --json, --quiet, --force."""
    p.add_argument("--model", default=None,
                   help="checkpoint folder (config.json, *.safetensors, tokenizer.json), or a "
                        "Hugging Face model id org/name[@revision] in the local cache; "
                        "default: the bundled demo model")
    if several:  # generate: one or more --image/--prompt pairs, or a JSONL file of them
        p.add_argument("--image", action="append", default=[], help="image file (repeatable)")
        p.add_argument("--prompt", action="append", default=[],
                       help='task prompt, e.g. "caption en" or "detect cat" (one per --image)')
        p.add_argument("--batch", metavar="FILE.jsonl",
                       help='inputs, one {"image": PATH, "prompt": TEXT} per line: generated as '
                            "one batch, one JSON line out per input, in order")
    else:
        p.add_argument("--image", required=True, help="image file")
        p.add_argument("--prompt", required=True, help='task prompt, e.g. "caption en" or "detect cat"')
    add_backend_args(p, backend)
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr (there is none when stderr is not a terminal)")
    p.add_argument("--force", action="store_true",
                   help="load even when the memory check says the run will not fit")


# ---- `parity --against` and `conform`: the comparison a command line asks for ------------

def add_timeout_arg(p) -> None:
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help=f"per case: an adapter with no answer after this long is a row, "
                        f"'timed out after N s', and the run goes on (default "
                        f"{DEFAULT_TIMEOUT_S:g}; 0: no limit)")


def request_of(args) -> Request:
    """The comparison the command line asks for (conform fills in each case's inputs)."""
    if not args.timeout >= 0 or args.timeout == float("inf"):  # NaN fails both ways
        raise InputError(f"--timeout {args.timeout:g}: expected a finite number of seconds >= 0 "
                         "(0: no limit)")
    return Request(against=args.against, model=getattr(args, "model", None),
                   image=getattr(args, "image", None), prompt=getattr(args, "prompt", "caption en"),
                   dtype=args.dtype, device=args.device, attn=args.attn,
                   max_new_tokens=args.max_new_tokens, python=args.python,
                   diagnose=getattr(args, "diagnose", True), timeout=args.timeout or None)


class ListTraps(argparse.Action):
    """`--list-traps`: print the trap catalogue and exit (before the required arguments are
    checked, as --version does)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from ..compare.catalogue import listing

        print(listing())
        parser.exit()
