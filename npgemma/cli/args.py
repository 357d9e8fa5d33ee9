"""Options the `npgemma` commands share, the parser that fails in one line, and the help layout.

Nothing here imports NumPy or the model: `npgemma --help` builds every parser from this file
and parser.py alone (the choices below are the backend's own tables, a test holds them equal).
"""

from __future__ import annotations

import argparse

from ..compare.request import DEFAULT_TIMEOUT_S, Request  # a dataclass: no NumPy
from ..config import WINDOWS  # dataclasses only: no NumPy
from ..errors import InputError, NpgemmaError

BACKENDS = ("numpy", "torch")                 # npgemma.generation.backend.BACKENDS
DTYPES = ("float32", "bfloat16", "float16")   # npgemma.generation.backend.DTYPES


class Help(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, where it has one worth saying (not None,
    not an off switch); an option whose default means something else says so itself. The
    command list shows each command with its help, without argparse's line above it."""

    def __init__(self, prog, **kwargs):
        super().__init__(prog, max_help_position=30, **kwargs)

    def _format_action(self, action):
        text = super()._format_action(action)
        if isinstance(action, argparse._SubParsersAction):  # "  COMMAND" above the list
            text = text.split("\n", 1)[1]
        return text

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default == [] or default is argparse.SUPPRESS
                or "default" in text or isinstance(action, argparse._VersionAction)):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", Help)
        super().__init__(*args, **kwargs)

    def error(self, message, command: str | None = None):  # one line, naming the command
        command = command or self.prog.removeprefix("npgemma").strip()
        where, prog = (f"{command}: ", f"npgemma {command}") if command else ("", self.prog)
        message = message.replace("argument COMMAND: invalid choice", "unknown command")
        raise NpgemmaError(f"{where}{message} (see {prog} --help)")

    def parse_args(self, args=None, namespace=None):
        # argparse's own: but an option no command knows is told with the command's name
        known, unknown = self.parse_known_args(args, namespace)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}",
                       getattr(known, "command", None))
        return known


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def add_backend_args(p: argparse.ArgumentParser, backend: bool = True) -> None:
    """[--backend], --device, --dtype: the names npgemma.load takes (one table each). Without
    `backend` (parity, conform) they are the other side's: npgemma's reference is numpy float32."""
    if backend:
        p.add_argument("--backend", default="numpy", choices=BACKENDS,
                       help="numpy: the readable reference (CPU); torch: the same model in PyTorch")
        p.add_argument("--device", default="cpu", help="cpu, or cuda with --backend torch")
        p.add_argument("--dtype", default="float32", choices=DTYPES,
                       help="numpy: the weights' storage dtype (compute stays float32; bfloat16 is "
                            "the low-memory mode); torch: the compute dtype")
        return
    p.add_argument("--device", default="cpu",
                   help="where the other side runs: cpu or cuda (the reference: the CPU)")
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="the other side's compute dtype, which sets the tolerances (the "
                        "reference computes in float32)")


def add_window_arg(p: argparse.ArgumentParser) -> None:
    """--window: whose Gemma-2 sliding window npgemma runs (npgemma.load's `window`)."""
    p.add_argument("--window", default="transformers", choices=WINDOWS,
                   help="Gemma-2's sliding window as transformers 5.24 applies it (generated "
                        "tokens only) or as big_vision, Google's training code, "
                        "does (none); they differ only past 4096 tokens (PaliGemma 2 at 896 px)")


def add_model_args(p: argparse.ArgumentParser, several: bool = False, backend: bool = True) -> None:
    """--model, --image/--prompt (one pair, or several and --batch), the backend options,
    --json, --quiet, --force."""
    p.add_argument("--model", default=None, metavar="MODEL",
                   help="checkpoint folder (config.json, *.safetensors, tokenizer.json), or a "
                        "Hugging Face model id org/name[@revision] in the local cache "
                        "(default: the bundled demo model; `npgemma tiny-checkpoint DIR` writes "
                        "a tiny random one)")
    if several:  # generate: one or more --image/--prompt pairs, or a JSONL file of them
        p.add_argument("--image", action="append", default=[],
                       help="image file (repeatable, one per --prompt)")
        p.add_argument("--prompt", action="append", default=[],
                       help='task prompt, e.g. "caption en", "answer en what is this?", '
                            '"detect cat ; dog", "segment cat" (one per --image)')
        p.add_argument("--batch", metavar="FILE.jsonl",
                       help='inputs, one {"image": PATH, "prompt": TEXT} per line: generated as '
                            "one batch, one JSON line out per input, in order")
    else:
        p.add_argument("--image", required=True, help="image file")
        p.add_argument("--prompt", required=True,
                       help='task prompt, e.g. "caption en" or "detect cat"')
    add_backend_args(p, backend)
    add_window_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar on stderr (there is none when stderr is not a terminal)")
    p.add_argument("--force", action="store_true",
                   help="load even when the memory check says the run will not fit")


def check_output(option: str, path: str | None, *, picture: bool = False,
                 folder: bool = False) -> None:
    """Refuse, before any work, a place an output cannot go: a missing parent folder, a folder
    where a file goes (or a file where a folder goes), a picture name Pillow cannot save."""
    if path is None:
        return
    import os

    where = os.path.dirname(os.path.abspath(path))
    if folder:
        if os.path.exists(path) and not os.path.isdir(path):
            raise InputError(f"{option} {path}: is a file; give a folder (created if missing)")
        return
    if os.path.isdir(path):
        raise InputError(f"{option} {path}: is a folder; give a file name")
    if not os.path.isdir(where):
        raise InputError(f"{option} {path}: no folder {where} to write it in")
    if picture:
        from PIL import Image

        if os.path.splitext(path)[1].lower() not in Image.registered_extensions():
            raise InputError(f"{option} {path}: not a picture file name Pillow can write; "
                               "end it in .png (or .jpg, .webp)")


# ---- `parity --against` and `conform`: the comparison a command line asks for ------------

def add_timeout_arg(p) -> None:
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help=f"per case: an adapter with no answer after this long is a row, "
                        "'timed out after N s', and the run goes on (0: no limit)")


def request_of(args) -> Request:
    """The comparison the command line asks for (conform fills in each case's inputs)."""
    if not args.timeout >= 0 or args.timeout == float("inf"):  # NaN fails both ways
        raise InputError(f"--timeout {args.timeout:g}: expected a finite number of seconds >= 0 "
                         "(0: no limit)")
    return Request(against=args.against, model=getattr(args, "model", None),
                   image=getattr(args, "image", None), prompt=getattr(args, "prompt", "caption en"),
                   dtype=args.dtype, device=args.device, attn=args.attn,
                   max_new_tokens=args.max_new_tokens, python=args.python,
                   diagnose=getattr(args, "diagnose", True), timeout=args.timeout or None,
                   window=getattr(args, "window", "transformers"))


class ListTraps(argparse.Action):
    """`--list-traps`: print the trap catalogue and exit (before the required arguments are
    checked, as --version does)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=None, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from ..compare.catalogue import listing

        print(listing())
        parser.exit()
