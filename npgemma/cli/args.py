"""Options the `npgemma` commands share, and the parser that fails in one line."""

from __future__ import annotations

import argparse

from ..config import WINDOWS
from ..errors import NpgemmaError
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


def add_window_arg(p: argparse.ArgumentParser) -> None:
    """--window: whose Gemma-2 sliding window npgemma runs (npgemma.load's `window`)."""
    p.add_argument("--window", default="transformers", choices=WINDOWS,
                   help="Gemma-2's sliding window as transformers 5.24 applies it (generated "
                        "tokens only; the default) or as big_vision, Google's training code, "
                        "does (none); they differ only past 4096 tokens (PaliGemma 2 at 896 px)")


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
    add_window_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr (there is none when stderr is not a terminal)")
    p.add_argument("--force", action="store_true",
                   help="load even when the memory check says the run will not fit")
