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


def _add_model_args(p: argparse.ArgumentParser, several: bool = False) -> None:
    p.add_argument("--model", default=None,
                   help="checkpoint folder (config.json, *.safetensors, tokenizer.json); "
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
    p.add_argument("--device", default="cpu", help="cpu or cuda (torch backend)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="npgemma", description="PaliGemma in readable NumPy (and PyTorch).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    g = sub.add_parser("generate", help="caption / answer / detect on one image")
    _add_model_args(g, several=True)
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
    from .inspect_cli import add_parser as _add_inspect  # `npgemma inspect`: its own module
    _add_inspect(sub, _add_model_args, _non_negative_int)
    return parser


class _Progress:
    """Weight-loading progress on stderr: a rewritten line on a terminal, else every 10%."""

    def __init__(self, enabled: bool):
        self.enabled, self.tty, self.last, self.t0 = enabled, sys.stderr.isatty(), -1, time.time()

    def __call__(self, done: int, total: int, key: str) -> None:
        if not self.enabled or total < 2**28:  # small checkpoints load in a blink
            return
        pct = int(100 * done / total)
        if self.tty:
            print(f"\rloading weights {pct:3d}% ({done / 1e9:.2f}/{total / 1e9:.2f} GB)",
                  end="" if done < total else "\n", file=sys.stderr, flush=True)
        elif pct // 10 != self.last // 10:
            print(f"loading weights {pct}% ({done / 1e9:.2f}/{total / 1e9:.2f} GB, "
                  f"{time.time() - self.t0:.0f}s)", file=sys.stderr, flush=True)
        self.last = pct


def _batch_inputs(args) -> list[tuple[str, str]]:
    """(image, prompt) pairs from repeated --image/--prompt, or from --batch FILE.jsonl."""
    from .errors import InputError

    if args.batch:
        if args.image or args.prompt:
            raise InputError("--batch FILE.jsonl replaces --image/--prompt: give one or the other")
        pairs = []
        try:
            lines = open(args.batch, encoding="utf-8").read().splitlines()
        except OSError as e:
            raise InputError(f"--batch {args.batch}: cannot read it ({e.strerror})") from None
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                pairs.append((str(row["image"]), str(row["prompt"])))
            except (ValueError, KeyError, TypeError):
                raise InputError(f'{args.batch}:{n}: expected {{"image": PATH, "prompt": TEXT}}, '
                                 f"got {line[:80]!r}") from None
        if not pairs:
            raise InputError(f"--batch {args.batch}: no inputs in the file")
        return pairs
    if not args.image or len(args.image) != len(args.prompt):
        raise InputError(f"generate: give one --prompt per --image (got {len(args.image)} images, "
                         f"{len(args.prompt)} prompts), or --batch FILE.jsonl")
    return list(zip(args.image, args.prompt))


def _model_dir(args) -> str:
    if args.model is not None:
        return args.model
    from .demo.model import model_dir

    return str(model_dir())


def _generate(args) -> int:
    from .pipeline import load

    pairs = _batch_inputs(args)
    t0 = time.time()
    pipe = load(_model_dir(args), backend=args.backend, device=args.device, dtype=args.dtype,
                progress=_Progress(not args.quiet))
    load_s = time.time() - t0
    generation = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                      seed=args.seed)
    if len(pairs) > 1 or args.batch:
        return _generate_batch(pipe, pairs, generation, args)
    args.image, args.prompt = pairs[0]
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


def _generate_batch(pipe, pairs, generation, args) -> int:
    """Every input in one left-padded batch; one JSON line per input, in input order."""
    if args.draw:
        from .errors import InputError
        raise InputError("--draw takes one image; with several inputs use --json output's boxes")
    outs = pipe.generate_batch([i for i, _ in pairs], [p for _, p in pairs], **generation)
    for (image, prompt), out in zip(pairs, outs):
        print(json.dumps({"image": image, "prompt": prompt, "text": out.text,
                          "token_ids": out.token_ids, "objects": _objects(image, out.text, None)}))
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
        if args.command == "inspect":
            from .inspect_cli import run as _run_inspect

            return _run_inspect(args, _model_dir(args))
        from .parity_report import run_parity_cli

        args.model = _model_dir(args)
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
