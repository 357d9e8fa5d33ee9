"""`npgemma inspect`: trace one answer and write the offline HTML report (and PNGs / the raw npz)."""

from __future__ import annotations

import fnmatch
import json
import re
import sys

from tqdm import tqdm

from ..checkpoint.estimate import text_tokens
from ..errors import InputError
from ..generation.processing import load_image
from ..inspection.capture import Capture
from ..inspection.report import write_html, write_pngs
from ..inspection.trace import check_fits, hook_shapes, trace
from ..pipeline import load
from .args import check_output
from .progress import say_streaming

# What the report reads; --names adds more for --npz.
REPORT_NAMES = ["vision.blocks.*.attn.hook_pattern", "decoder.blocks.*.attn.hook_pattern",
                "decoder.blocks.*.hook_resid_post", "unembed.hook_logits"]


def _fits(shapes: dict, names) -> bool:
    try:
        check_fits(Capture(names, None, None, {}), shapes)
    except InputError:
        return False
    return True


def _check_names(globs, shapes: dict) -> None:
    """Each --names GLOB must match a hook of this model (else it would keep nothing, silently)."""
    for glob in globs:
        if not any(fnmatch.fnmatchcase(name, glob) for name in shapes):
            kinds = sorted({re.sub(r"\.\d+\.", ".*.", name) for name in shapes})
            raise InputError(f"--names {glob}: matches none of this model's hook names "
                             f"({', '.join(kinds)})")


def run(args) -> int:
    if args.max_new_tokens < 1:
        raise InputError("inspect: --max-new-tokens must be at least 1")
    check_output("--out", args.out)
    check_output("--png", args.png, folder=True)
    check_output("--npz", args.npz)
    quiet = args.quiet
    say = (lambda *a: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    pipe = load(args.model, backend=args.backend, device=args.device, dtype=args.dtype,
                window=args.window,
                force=args.force, text_tokens=text_tokens(args.prompt, args.max_new_tokens))
    say_streaming(pipe)
    rgb = load_image(args.image)
    shapes = hook_shapes(pipe.cfg, len(pipe.processor.encode_prompt(args.prompt)),
                         args.max_new_tokens)
    _check_names(args.names, shapes)
    names = REPORT_NAMES + list(args.names)
    if not _fits(shapes, names):
        # SigLIP's patterns are P² per head per layer (29 GB at 896 px): the report then shows
        # the decoder's attention and rollout only.
        names = [n for n in names if not n.startswith("vision.")]
        say("inspect: SigLIP attention does not fit in memory: no rollout through the vision tower")
    with tqdm(total=args.max_new_tokens, desc="tracing", unit="tok", file=sys.stderr,
              disable=quiet) as bar:
        t = trace(pipe, rgb, args.prompt, names=names,
                  max_new_tokens=args.max_new_tokens, on_token=bar.update,
                  model_dir=pipe.model_dir)
    progress = None if quiet else (lambda cells: tqdm(cells, desc="occlusion", file=sys.stderr))
    out = write_html(pipe, t, rgb, args.out, occlusion_grid=args.occlusion, progress=progress)
    say(f"answer: {t.text!r}; report: {out}")
    if args.png:
        say(f"pictures: {len(write_pngs(pipe, t, rgb, args.png))} PNGs in {args.png}")
    if args.npz:
        npz, manifest = t.save(args.npz)
        say(f"trace: {npz} + {manifest}")
    if args.json:
        print(json.dumps({"text": t.text, "token_ids": t.token_ids, "report": str(out)}))
    return 0
