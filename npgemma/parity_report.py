"""`npgemma parity`: run the NumPy reference and the torch backend on one input, stage by stage.

One row per stage — vision embeddings, each vision layer, projector, merged decoder input,
each decoder layer, final norm, logits — with the max abs and scale-relative error against
NumPy float32 and the limit from `npgemma.tolerances`; then whether greedy tokens agree.
Exit status 1 when any row is over its limit or the tokens differ.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from . import paligemma
from .backend import NumpyBackend, get_backend
from .config import load_config
from .generate import GenerationConfig, generate_tokens
from .processing import Processor
from .slots import Slots
from .tolerances import compare
from .weights import load_weights


def _stages(forward_image, forward_text):
    """Run both halves, collecting (name, component, array) rows."""
    vision: list = []
    feats = forward_image(vision)
    rows = [("vision embeddings", "vision_embeddings", vision[0])]
    rows += [(f"vision layer {i}", "vision_layer", h) for i, h in enumerate(vision[1:])]
    rows.append(("projector", "projector", feats))
    text: list = []
    logits = forward_text(feats, text)
    rows.append(("decoder input (merged)", "merge", text[0]))
    rows += [(f"decoder layer {i}", "decoder_layer", h) for i, h in enumerate(text[1:-1])]
    rows += [("final norm", "final_norm", text[-1]), ("logits", "logits", logits)]
    return rows


def parity_rows(cfg, params_np, torch_backend, inputs):
    """[(stage, Comparison)] of the torch backend against NumPy float32 on one example."""
    import torch

    from .torch_backend import paligemma as tpg

    ids = inputs.input_ids[None]
    slots = Slots.full(*ids.shape)
    positions, masks = slots.positions(), slots.masks(cfg)
    pixels = inputs.pixel_values[None]
    # Logits at the text positions only: the image positions' [P, V] is 4.2 GB at 896 px.
    text = np.flatnonzero(inputs.input_ids != cfg.image_token_index)

    ref = _stages(
        lambda hs: paligemma.encode_image(params_np, pixels, cfg, hs),
        lambda f, hs: paligemma.forward(params_np, cfg, ids, positions, masks, f, hidden_states=hs,
                                        logit_positions=text)[0])

    tb = torch_backend
    tparams = tb.from_numpy(params_np)
    t = tb.as_tensor
    with torch.inference_mode():
        got = _stages(
            lambda hs: tpg.encode_image(tparams, t(pixels, tb.dtype), cfg, hs),
            lambda f, hs: tpg.forward(tparams, cfg, t(ids, torch.long), t(positions, torch.long),
                                      {k: t(m) for k, m in masks.items()}, f, hidden_states=hs,
                                      logit_positions=t(text, torch.long))[0])
    return [(name, compare(tb.to_numpy(g), r, component, tb.dtype_name))
            for (name, component, r), (_, _, g) in zip(ref, got)], tparams


def run_parity_cli(args) -> int:
    from . import memory
    from .cli import text_tokens
    from .hub import resolve
    from .weights import header_summary

    tb = get_backend("torch", device=args.device, dtype=args.dtype)
    model_dir = resolve(args.model)
    cfg = load_config(model_dir)
    if not args.force:
        _, headers = header_summary(model_dir)
        memory.check(cfg, args.model, dtype=args.dtype, device=args.device,
                     disk_dtype=memory.stored_dtype(headers), parity=True,
                     text_tokens=text_tokens(args.prompt, args.max_new_tokens))
    processor = Processor.from_pretrained(model_dir, cfg)
    inputs = processor(args.image, args.prompt)
    params = load_weights(model_dir, cfg, dtype=np.float32)
    rows, tparams = parity_rows(cfg, params, tb, inputs)

    gen = GenerationConfig(max_new_tokens=args.max_new_tokens)
    ids, pix = inputs.input_ids[None], inputs.pixel_values[None]
    np_tokens = [int(x[0]) for x in generate_tokens(NumpyBackend(), params, cfg, ids, pix, gen)]
    t_tokens = [int(x[0]) for x in generate_tokens(tb, tparams, cfg, ids, pix, gen)]
    tokens_ok = np_tokens == t_tokens
    ok = tokens_ok and all(c.ok for _, c in rows)

    if args.json:
        print(json.dumps({
            "device": args.device, "dtype": args.dtype, "ok": ok,
            "stages": [{"stage": n, "max_abs": c.max_abs, "max_rel": c.max_rel, "limit": c.limit,
                        "where": list(c.where), "ok": c.ok} for n, c in rows],
            "greedy_tokens": {"numpy": np_tokens, "torch": t_tokens, "agree": tokens_ok}}))
    else:
        print(f"torch {args.device}/{args.dtype} vs numpy float32")
        print(f"{'stage':<26} {'max abs':>10} {'rel':>10} {'limit':>10}  ok")
        for name, c in rows:
            print(f"{name:<26} {c.max_abs:>10.3g} {c.max_rel:>10.3g} {c.limit:>10.3g}  "
                  f"{'yes' if c.ok else 'NO'}")
        print(f"greedy tokens ({len(np_tokens)}): {'agree' if tokens_ok else 'DIFFER'}")
        if not tokens_ok:
            print(f"  numpy {np_tokens}\n  torch {t_tokens}")
    if not ok:
        print("npgemma: parity failed", file=sys.stderr)
    return 0 if ok else 1
