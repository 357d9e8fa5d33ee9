"""`npgemma` command line: generate, models, and parity (when the torch backend is installed).

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
    p.add_argument("--device", default="cpu", help="cpu or cuda (torch backend)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr (there is none when stderr is not a terminal)")
    p.add_argument("--force", action="store_true",
                   help="load even when the memory check says the run will not fit")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="npgemma", description="PaliGemma in readable NumPy (and PyTorch).")
    parser.add_argument("--version", action="version", version=f"npgemma {__version__}")
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
                   help="save the image with the detected boxes (<loc> answers) and masks "
                        "(<seg> answers, with --vae) drawn on it")
    g.add_argument("--vae", metavar="PATH",
                   help="PaliGemma's mask VQ-VAE (vae-oid.npz): <seg> codes -> masks")
    d = sub.add_parser("demo", help="the bundled demo model on a freshly drawn scene")
    d.add_argument("--seed", type=_non_negative_int, default=0, help="which scene to draw")
    d.add_argument("--out", default="demo.png", help="picture of the scene with the predicted boxes")
    d.add_argument("--backend", default="numpy", choices=["numpy", "torch"])
    d.add_argument("--device", default="cpu")
    d.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    d.add_argument("--model", default=None, help=argparse.SUPPRESS)  # a retrained demo folder
    p = sub.add_parser("parity", help="compare numpy with torch (or --against another "
                                      "implementation) on one input, stage by stage")
    _add_model_args(p)
    p.add_argument("--max-new-tokens", type=_non_negative_int, default=8,
                   help="greedy tokens compared between the two sides")
    p.add_argument("--against", metavar="SPEC",
                   help="the other side: PKG.MODULE:FUNC, FILE.py:FUNC, torch, transformers or "
                        "openai:URL (default: npgemma's own torch backend, layer by layer)")
    p.add_argument("--diagnose", action="store_true",
                   help="with --against: rank the known deviations by how well each explains "
                        "the difference")
    p.add_argument("--attn", default="eager", choices=["eager", "sdpa"],
                   help="attention implementation of --against transformers")
    m = sub.add_parser("models", help="the PaliGemma checkpoints in the Hugging Face cache (and "
                                      "folders given): sizes, and the RAM each backend needs")
    m.add_argument("folders", nargs="*", metavar="MODEL", help="checkpoint folders or model ids")
    m.add_argument("--json", action="store_true", help="print one JSON object")
    from .inspect_cli import add_parser as _add_inspect  # `npgemma inspect`: its own module
    _add_inspect(sub, _add_model_args, _non_negative_int)
    return parser


def text_tokens(prompt: str, max_new_tokens: int) -> int:
    """An upper bound on the text tokens of a run, for the memory check: a token covers at
    least one UTF-8 byte (byte fallback), plus <bos> and the "\n" separator."""
    return len(prompt.encode("utf-8")) + 2 + max_new_tokens


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
    from .demo.bundle import model_dir

    return str(model_dir())


def _generate(args) -> int:
    from .pipeline import load
    from .progress import weights_progress

    pairs = _batch_inputs(args)
    t0 = time.time()
    longest = max(pairs, key=lambda pair: len(pair[1].encode("utf-8")))[1]
    # No --model: load(None) is the bundled demo model with its own VQ-VAE (unless --vae).
    pipe = load(args.model, backend=args.backend, device=args.device, dtype=args.dtype,
                progress=weights_progress(quiet=args.quiet), force=args.force,
                text_tokens=text_tokens(longest, args.max_new_tokens), batch=len(pairs),
                vae=args.vae)
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
    objects = _objects(args.image, text, args.draw,
                       None if pipe.vae is None else pipe.decode_masks)
    if pipe.vae is None and any(o["seg_codes"] for o in objects):
        print("npgemma: note: the answer has <seg> mask codes; pass --vae vae-oid.npz to turn "
              "them into masks (boxes only without it)", file=sys.stderr)
    if args.json:
        print(json.dumps({"text": text, "token_ids": token_ids, "objects": objects,
                          "backend": args.backend, "device": args.device, "dtype": args.dtype,
                          "load_s": round(load_s, 3), "generate_s": round(time.time() - t1, 3)}))
    return 0


def _demo(args) -> int:
    from .demo.run import run
    from .pipeline import load

    pipe = load(args.model, backend=args.backend, device=args.device, dtype=args.dtype,
                vae=getattr(args, "vae", None))
    run(pipe, args.seed, args.out)
    return 0


def _generate_batch(pipe, pairs, generation, args) -> int:
    """Every input in one left-padded batch; one JSON line per input, in input order."""
    if args.draw:
        from .errors import InputError
        raise InputError("--draw takes one image; with several inputs use --json output's boxes")
    outs = pipe.generate_batch([i for i, _ in pairs], [p for _, p in pairs], **generation)
    masks = None if pipe.vae is None else pipe.decode_masks
    for (image, prompt), out in zip(pairs, outs):
        print(json.dumps({"image": image, "prompt": prompt, "text": out.text,
                          "token_ids": out.token_ids, "objects": _objects(image, out.text, None, masks)}))
    return 0


def _objects(image_path: str, text: str, draw_to: str | None, decode_masks=None) -> list[dict]:
    """Boxes (and masks, given `decode_masks`) of a detection/segmentation answer in the
    original image's pixels, and a drawing of them."""
    from PIL import Image

    from .errors import InputError
    from .postprocess import draw_objects, parse_objects
    from .processing import load_image

    rgb = load_image(image_path)
    objects = parse_objects(text, width=rgb.shape[1], height=rgb.shape[0], decode_masks=decode_masks)
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
        if args.command == "demo":
            return _demo(args)
        if args.command == "models":
            from .models_report import run_models_cli

            return run_models_cli(args)
        args.model = _model_dir(args)
        if args.against:
            from .hub import resolve

            args.model = str(resolve(args.model))
            from .against.report import run_against_cli

            return run_against_cli(args)
        if args.diagnose:
            raise NpgemmaError("parity: --diagnose needs --against SPEC")
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
