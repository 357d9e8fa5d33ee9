"""A batch's diagnosis: each failing row's own, after the batch traps (`BATCH_TRAPS`): another
row's image, image features shifted by the padding, the pad-mask and decode-position
faults of a left-padded row, each tried on npgemma's reference run as that padded row
(`batch_pads`), and a decode loop that starts at the shortest row's end (`shortest_row`:
keras-hub's)."""

from __future__ import annotations

import numpy as np

from ..checkpoint.weights import load_weights
from .batch_pads import _pad_trap, _shifted_pad_trap, shifted_features
from .deviations import DEVIATIONS
from .diagnose import fit, tokens_only
from .pixels import diagnose_pixels
from .quantdiag import effective_params
from .reference import forced_tokens, teacher_forced
from .shortest_row import TRAP as TAIL_TRAP, judge_row
from .swap import swapped
from .tolerances import compare
from .trap import Trap
from .verdict import Verdict


_SLOTS = "generation/slots.py: a pad slot is no query's key, positions count real tokens only"
BATCH_TRAPS: dict[str, Trap] = {t.name: t for t in (
    Trap("batch-image-of-another-row", "batch", "paligemma.merge: each row its own image's "
         "features", "the implementation ran another row's image for this row (a batch must "
         "keep each row's own image)", "npgemma on each other row's image: its pixels, or "
         "the row's logits with that image"),
    Trap("batch-image-features-shifted-by-padding", "batch", "paligemma.merge: image features "
         "go to the <image> tokens, wherever the padding puts them", "the implementation "
         "places the image features by absolute position in the padded batch, so the row's "
         "pad tokens shift them (image token t gets feature t + pad, the last ones zeros)",
         "Swap npgemma.paligemma.encode_image: features moved `pad` on (shifted_features)",
         needs="a left-padded row"),
    Trap("pads-unmasked", "batch", _SLOTS, "the implementation leaves the pad tokens unmasked "
         "in attention: every query of the row also attends to its pads",
         "the reference run as the padded row, masks that count pads as real keys",
         needs="a left-padded row"),
    Trap("mask-added-unconverted", "batch", _SLOTS + " (a 0/1 mask becomes 0 / large negative "
         "before it is added)", "the implementation adds its 0/1 attention mask to the scores "
         "unconverted: pads are not masked (a real key gets +1, a pad +0)",
         "the reference run as the padded row, pads visible and their scores 1 below (Swap "
         "npgemma.layers.attention_weights)", needs="a left-padded row"),
    Trap("mask-added-padded-positions", "batch", _SLOTS + " (a 0/1 mask becomes 0 / large "
         "negative before it is added)", "the implementation adds its 0/1 attention mask to the "
         "scores unconverted (mlx's fast scaled_dot_product_attention adds a mask that is not "
         "boolean): pads are not masked (a real key gets +1, a pad +0), the pads' embeddings "
         "zeroed, positions counted from the padded row's first slot",
         "the reference run as the padded row, pads visible and their scores 1 below, pad "
         "embeddings zero, RoPE positions 1.. over every slot (Swap npgemma.layers.attention)",
         needs="a left-padded row"),
    Trap("rolling-window-pad-mask", "batch", _SLOTS + "; on a sliding layer the window's keys "
         "keep their own slots' validity", "the implementation's rolling sliding-window cache "
         "and its padding mask are misaligned during decode (the cache holds the last W keys, "
         "the mask's first W columns are applied to them): the padded row's prompt logits "
         "match, its decode steps do not", "the reference run as the padded row; at decode, "
         "the sliding layers' window key S - W + i takes slot i's validity, and a query that "
         "sees none of the W keys weighs them evenly (Swap npgemma.layers.attention_weights)",
         needs="a left-padded Gemma-2 row longer than the window"),
    Trap("decode-positions-from-cache-length", "decode-time", _SLOTS, "the implementation "
         "restarts the decode positions at the padded cache's length: a row behind n pads is "
         "fed positions n ahead of its prompt's numbering at every decode step",
         "the reference run as the padded row, decode positions = the slot count",
         needs="a left-padded row and a generated token"),
    TAIL_TRAP,
)}


def batch_diagnosis(model_dir, cfg, failing, rows, images, prompts, proc, dtype) -> Verdict:
    """Each failing row's own diagnosis, after three batch traps: the row ran another row's
    image (its pixels are that image's, plain or through a pixel trap, or its logits are
    npgemma's on that image with the row's own prompt); its left padding shifted the image
    features (`shifted_features`); or it is a left-padded row that matches no row's image (the
    padding, its mask or positions, changed it; npgemma has no finer trap for that)."""
    float_params = load_weights(model_dir, cfg, dtype=np.float32)
    own = [proc.preprocess_image(image) for image in images]
    ids = [proc(image, prompt).input_ids for image, prompt in zip(images, prompts)]
    longest = max(len(x) for x in ids)
    start = min(len(x) for x in ids) - 1  # a loop from the shortest row's end recomputes this slot on
    parts, explained, names = [], True, []
    # What to pair a pad trap with: the deviations that explain this batch's other rows (the
    # release's own faults), and every decode-time trap.
    seen = [n for _, r in failing for n in (r["diagnosis"].deviations if r["diagnosis"] else ())]
    decode = list(dict.fromkeys([n for n in seen if n in DEVIATIONS] +
                                [n for n, dv in DEVIATIONS.items() if dv.decode_positions]))
    for i, r in failing:
        d = r["diagnosis"] or Verdict("failed", False)
        theirs, pad = rows[i], longest - len(ids[i])
        # a quantized implementation's own weights (checked by the row's report already)
        params = effective_params(float_params, theirs.weights, "batch")[0] \
            if theirs.weights else float_params
        others = [j for j in range(len(images)) if j != i]
        forced = forced_tokens(cfg, theirs.token_ids or [])

        def matches(j, swaps=()):  # npgemma on row j's image (with `swaps`) within tolerance?
            with swapped(list(swaps)):
                ref = teacher_forced(params, cfg, ids[i], own[j], forced)
            return fit("batch", ref, theirs, forced, dtype).ok

        pix = theirs.pixel_values
        other = next((j for j in others if pix is not None and pix.shape == own[j].shape
                      and compare(pix, own[j], "pixel_values", dtype).ok), None)
        pixels = d.pixels
        if other is None and pix is not None and pixels and not pixels["explained"] \
                and pix.shape == own[i].shape:  # another row's image through a pixel trap?
            other = next((j for j in others if diagnose_pixels(
                images[j], proc, pix, dtype)["explained"]), None)
        if other is None and theirs.logits is not None:
            other = next((j for j in others if matches(j)), None)
        if other is not None:
            parts.append(f"row {i}: the implementation ran row {other}'s image for row {i} "
                         "(a batch must keep each row's own image)")
            names.append("batch-image-of-another-row")
            continue
        shifted = None
        if pad and theirs.logits is not None:
            shifted = next((j for j in [i] + others if matches(j, [shifted_features(pad)])), None)
        if shifted is not None:
            parts.append(f"row {i}: the implementation places the image features by absolute "
                         f"position in the padded batch, so the row's {pad} pad tokens shift "
                         f"them (image token t gets feature t + {pad}, the last {pad} get zeros)"
                         + (f", and they are row {shifted}'s image" if shifted != i else ""))
            names.append("batch-image-features-shifted-by-padding")
            continue
        found = _pad_trap(params, cfg, ids[i], own[i], forced, pad, theirs, dtype, decode) \
            if pad and not d.explained else None
        if found is not None:
            trap_names, f = found
            why = "; and ".join((BATCH_TRAPS.get(n) or DEVIATIONS[n]).explain for n in trap_names)
            parts.append(f"row {i} ({pad} pad tokens): matches npgemma with "
                         f"{' + '.join(f'`{n}`' for n in trap_names)} "
                         + (f"on its greedy tokens alone ({f.picks} of {f.tokens_total})"
                            if tokens_only(f) else f"to {f.distance:.2g}") + f" — {why}")
            names += trap_names
            continue
        both = _shifted_pad_trap(params, cfg, ids[i], own, [i] + others, forced, pad, theirs,
                                 dtype, decode) if pad and not d.explained else None
        if both is not None:
            j, trap_names, f = both
            why = "; and ".join((BATCH_TRAPS.get(n) or DEVIATIONS[n]).explain for n in trap_names)
            parts.append(f"row {i} ({pad} pad tokens): matches npgemma with its image features "
                         f"shifted by the padding" + (f" (row {j}'s image)" if j != i else "")
                         + f" and {' + '.join(f'`{n}`' for n in trap_names)} to "
                         f"{f.distance:.2g} — {BATCH_TRAPS[SHIFTED].explain}; and {why}")
            names += [SHIFTED, *trap_names]
            continue
        # the row's own ids and pixels, as its own diagnosis ran (a pixel trap is the processor's)
        pix_i = pix if pix is not None and pix.shape == own[i].shape else own[i]
        tail = None if d.explained else judge_row(i, r, d, theirs, params, cfg, ids[i], pix_i,
                                                  forced, start, dtype)
        if tail is not None:
            part, ok, trap_names = tail
            parts.append(part)
            explained, names = explained and ok, names + trap_names
            continue
        if pad and not d.explained:
            parts.append(f"row {i}: a left-padded row ({pad} pad tokens) that matches npgemma on "
                         "no row's image: the padding (its mask or the positions) changes the "
                         "row; not explained further")
            explained = False
            continue
        parts.append(f"row {i}: {d.verdict}")
        explained = explained and bool(d.explained)
        names += d.deviations
    return Verdict("; ".join(parts), explained, names, rows=[i for i, _ in failing])


SHIFTED = "batch-image-features-shifted-by-padding"
