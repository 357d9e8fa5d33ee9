"""NumPy against torch, stage by stage: what `npgemma parity` prints.

One row per stage — vision embeddings, each vision layer, projector, merged decoder input,
each decoder layer, final norm, logits — with the max abs and scale-relative error against
NumPy float32 and the limit from `tolerances.py`. (The greedy tokens and the printing are the
command's: `npgemma/cli/parity.py`.)
"""

from __future__ import annotations

import numpy as np

from .. import paligemma
from ..generation.slots import Slots
from .tolerances import compare


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

    from ..torch_backend import paligemma as tpg

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
