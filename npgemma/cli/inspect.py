"""`npgemma inspect`: trace one answer and write the offline HTML report (and PNGs / the raw npz)."""

from __future__ import annotations

import json
import sys

from tqdm import tqdm

from ..checkpoint.estimate import text_tokens
from ..errors import InputError
from ..generation.processing import load_image
from ..inspection.capture import Capture
from ..inspection.report import write_html, write_pngs
from ..inspection.trace import check_fits, hook_shapes, trace
from ..pipeline import load
from .progress import say_streaming

# What the report reads; --names adds more for --npz.
REPORT_NAMES = ["vision.blocks.*.attn.hook_pattern", "decoder.blocks.*.attn.hook_pattern",
                "decoder.blocks.*.hook_resid_post", "unembed.hook_logits"]


def _fits(pipe, image, prompt, names, max_new_tokens) -> bool:
    cfg = pipe.cfg
    cap = Capture(names, None, None, {})
    try:
        check_fits(cap, hook_shapes(cfg, len(pipe.processor.encode_prompt(prompt)), max_new_tokens))
    except InputError:
        return False
    return True


def run(args) -> int:
    if args.max_new_tokens < 1:
        raise InputError("inspect: --max-new-tokens must be at least 1")
    quiet = args.quiet
    say = (lambda *a: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    pipe = load(args.model, backend=args.backend, device=args.device, dtype=args.dtype,
                force=args.force, text_tokens=text_tokens(args.prompt, args.max_new_tokens))
    say_streaming(pipe)
    rgb = load_image(args.image)
    names = REPORT_NAMES + list(args.names)
    if not _fits(pipe, rgb, args.prompt, names, args.max_new_tokens):
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
