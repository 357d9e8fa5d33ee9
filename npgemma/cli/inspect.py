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
from .args import add_model_args, non_negative_int

# What the report reads; --names adds more for --npz.
REPORT_NAMES = ["vision.blocks.*.attn.hook_pattern", "decoder.blocks.*.attn.hook_pattern",
                "decoder.blocks.*.hook_resid_post", "unembed.hook_logits"]


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="trace one answer: attention over the image, rollout, "
                                       "logit lens, as one offline HTML report")
    add_model_args(p)
    p.add_argument("--out", default="report.html", help="the HTML report to write")
    p.add_argument("--png", metavar="DIR", help="also write plain PNG pictures into DIR")
    p.add_argument("--npz", metavar="PATH", help="also save the raw trace (PATH.npz + PATH.json)")
    p.add_argument("--names", action="append", default=[], metavar="GLOB",
                   help="extra hook names kept (e.g. 'decoder.blocks.*.attn.hook_q'; repeatable)")
    p.add_argument("--max-new-tokens", type=non_negative_int, default=16)
    p.add_argument("--occlusion", type=non_negative_int, default=4, metavar="N",
                   help="occlusion map over an N x N grid of image cells (N*N extra prefills; 0: off)")


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
                window=args.window,
                force=args.force, text_tokens=text_tokens(args.prompt, args.max_new_tokens))
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
