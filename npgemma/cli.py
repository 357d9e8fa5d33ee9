"""`npgemma` command line: generate (and parity, when the torch backend is installed).

Every failure the user can cause ends in one line on stderr, `npgemma: error: ...`, naming
the culprit, and a non-zero exit — never a traceback (set NPGEMMA_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .errors import NpgemmaError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        raise NpgemmaError(f"{self.prog}: {message}")


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint folder (config.json, *.safetensors, tokenizer.json)")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--prompt", required=True, help='task prompt, e.g. "caption en" or "detect cat"')
    p.add_argument("--device", default="cpu", help="cpu or cuda (torch backend)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr (there is none when stderr is not a terminal)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="npgemma", description="PaliGemma in readable NumPy (and PyTorch).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    g = sub.add_parser("generate", help="caption / answer / detect on one image")
    _add_model_args(g)
    g.add_argument("--backend", default="numpy", choices=["numpy", "torch"])
    g.add_argument("--max-new-tokens", type=_non_negative_int, default=32)
    g.add_argument("--do-sample", action="store_true")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=_non_negative_int, default=None)
    g.add_argument("--draw", metavar="OUT.png",
                   help="save the image with the detected boxes (<loc> answers) drawn on it")
    p = sub.add_parser("parity", help="run numpy and torch on one input, stage by stage")
    _add_model_args(p)
    p.add_argument("--max-new-tokens", type=_non_negative_int, default=8,
                   help="greedy tokens compared between the backends")
    return parser


def _generate(args) -> int:
    from .pipeline import load
    from .progress import weights_progress

    t0 = time.time()
    pipe = load(args.model, backend=args.backend, device=args.device, dtype=args.dtype,
                progress=weights_progress(quiet=args.quiet))
    load_s = time.time() - t0
    generation = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                      seed=args.seed)
    t1 = time.time()
    if args.json:
        out = pipe.generate(args.image, args.prompt, **generation)
        text, token_ids = out.text, out.token_ids
    else:
        pieces = []
        for piece in pipe.stream(args.image, args.prompt, **generation):
            print(piece, end="", flush=True)
            pieces.append(piece)
        print()
        text = "".join(pieces)
    objects = _objects(args.image, text, args.draw)
    if args.json:
        print(json.dumps({"text": text, "token_ids": token_ids, "objects": objects,
                          "backend": args.backend, "device": args.device, "dtype": args.dtype,
                          "load_s": round(load_s, 3), "generate_s": round(time.time() - t1, 3)}))
    return 0


def _objects(image_path: str, text: str, draw_to: str | None) -> list[dict]:
    """Boxes of a detection/segmentation answer in the original image's pixels (and a drawing)."""
    from PIL import Image

    from .errors import InputError
    from .postprocess import draw_objects, parse_objects
    from .processing import load_image

    rgb = load_image(image_path)
    objects = parse_objects(text, width=rgb.shape[1], height=rgb.shape[0])
    if draw_to:
        try:
            draw_objects(Image.fromarray(rgb), objects).save(draw_to)
        except (OSError, ValueError) as e:
            raise InputError(f"--draw {draw_to}: cannot write the image ({e})") from None
    return [o.as_dict() for o in objects]


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "generate":
            return _generate(args)
        from .parity_report import run_parity_cli

        return run_parity_cli(args)
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
