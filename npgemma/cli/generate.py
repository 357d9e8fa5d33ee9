"""`npgemma generate` and `npgemma demo`: load, generate, print (and draw)."""

from __future__ import annotations

import json
import sys
import time

from PIL import Image

from ..checkpoint.estimate import text_tokens
from ..errors import InputError
from ..generation import utf8
from ..generation.postprocess import draw_objects, parse_objects
from ..generation.processing import load_image
from ..pipeline import load
from .args import check_output
from .progress import say_streaming, weights_progress


def _batch_inputs(args) -> list[tuple[str, str]]:
    """(image, prompt) pairs from repeated --image/--prompt, or from --batch FILE.jsonl."""
    if args.batch:
        if args.image or args.prompt:
            raise InputError("--batch FILE.jsonl replaces --image/--prompt: give one or the other")
        pairs = []
        try:
            lines = utf8.read_lines(args.batch, f"--batch {args.batch}")
        except OSError as e:
            raise InputError(f"--batch {args.batch}: cannot read it ({e.strerror})") from None
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                fields = {k: str(row[k]) for k in ("image", "prompt")}
            except (ValueError, KeyError, TypeError):
                raise InputError(f'{args.batch}:{n}: expected {{"image": PATH, "prompt": TEXT}}, '
                                 f"got {line[:80]!r}") from None
            pairs.append(tuple(utf8.checked_json_string(v, line, f"{args.batch}:{n}: {k}")
                               for k, v in fields.items()))
        if not pairs:
            raise InputError(f"--batch {args.batch}: no inputs in the file")
        return pairs
    if not args.image and not args.prompt:
        raise InputError("generate: give --image FILE --prompt TEXT (or --batch FILE.jsonl); "
                         "see npgemma generate --help")
    if not args.image or len(args.image) != len(args.prompt):
        raise InputError(f"generate: give one --prompt per --image (got {len(args.image)} images, "
                         f"{len(args.prompt)} prompts), or --batch FILE.jsonl")
    return list(zip(args.image, [utf8.checked(p, "--prompt") for p in args.prompt]))


def _generation(args) -> dict:
    """GenerationConfig's arguments; the sampling options without --do-sample are refused (they
    would change nothing: the answer is greedy)."""
    sampling = {"--temperature": args.temperature, "--top-k": args.top_k, "--top-p": args.top_p,
                "--seed": args.seed}
    given = [name for name, value in sampling.items() if value is not None]
    if given and not args.do_sample:
        raise InputError(f"generate: {', '.join(given)} only act with --do-sample (without it the "
                         "answer is greedy, the same on every run): add --do-sample, or drop them")
    return dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                temperature=1.0 if args.temperature is None else args.temperature,
                top_k=args.top_k, top_p=args.top_p, seed=args.seed)


def generate(args) -> int:
    pairs = _batch_inputs(args)
    generation = _generation(args)
    check_output("--draw", args.draw, picture=True)
    t0 = time.time()
    longest = max(pairs, key=lambda pair: len(pair[1].encode("utf-8")))[1]
    # No --model: load(None) is the bundled demo model with its own VQ-VAE (unless --vae).
    pipe = load(args.model, backend=args.backend, device=args.device, dtype=args.dtype,
                progress=weights_progress(quiet=args.quiet), force=args.force,
                text_tokens=text_tokens(longest, args.max_new_tokens), batch=len(pairs),
                vae=args.vae, window=args.window)
    load_s = time.time() - t0
    say_streaming(pipe)
    if len(pairs) > 1 or args.batch:
        return _generate_batch(pipe, pairs, generation, args)
    image, prompt = pairs[0]
    t1 = time.time()
    if args.json:
        out = pipe.generate(image, prompt, **generation)
        text, token_ids = out.text, out.token_ids
    else:
        pieces = []
        for piece in pipe.stream(image, prompt, **generation):
            print(piece, end="", flush=True)
            pieces.append(piece)
        print()
        text = "".join(pieces)
    objects = _objects(image, text, args.draw,
                       None if pipe.vae is None else pipe.decode_masks)
    if pipe.vae is None and any(o["seg_codes"] for o in objects):
        print("npgemma: note: the answer has <seg> mask codes; pass --vae vae-oid.npz to turn "
              "them into masks (boxes only without it)", file=sys.stderr)
    if args.json:
        print(json.dumps({"text": text, "token_ids": token_ids, "objects": objects,
                          "backend": args.backend, "device": args.device, "dtype": args.dtype,
                          "window": args.window,
                          "load_s": round(load_s, 3), "generate_s": round(time.time() - t1, 3)}))
    return 0


def demo(args) -> int:
    from ..demo.run import run as run_demo  # the scene generator: only `npgemma demo` needs it

    check_output("--out", args.out, picture=True)
    pipe = load(args.model, backend=args.backend, device=args.device, dtype=args.dtype)
    say_streaming(pipe)
    run_demo(pipe, args.seed, args.out)
    return 0


def _generate_batch(pipe, pairs, generation, args) -> int:
    """Every input in one left-padded batch; one JSON line per input, in input order."""
    if args.draw:
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
    rgb = load_image(image_path)
    objects = parse_objects(text, width=rgb.shape[1], height=rgb.shape[0], decode_masks=decode_masks)
    if draw_to:
        try:
            draw_objects(Image.fromarray(rgb), objects).save(draw_to)
        except (OSError, ValueError) as e:
            raise InputError(f"--draw {draw_to}: cannot write the image ({e})") from None
    return [o.as_dict() for o in objects]
