"""A batch's diagnosis: each failing row's own, after the batch traps (`BATCH_TRAPS`): another
row's image, image features shifted by the padding, and the pad-mask and decode-position
faults of a left-padded row, each tried on npgemma's reference run as that padded row."""

from __future__ import annotations

import numpy as np

from ..checkpoint.weights import load_weights
from ..paligemma import attention_masks
from .replacements import LAYERS
from .diagnose import fit
from .pixels import diagnose_pixels
from .reference import forced_tokens, teacher_forced
from .swap import Swap, swapped
from .tolerances import compare
from .trap import Trap
from .verdict import Verdict


def _visible_pads(slots, cfg, q):
    """The masks with every pad slot a real key (what a query sees when pads go unmasked)."""
    return attention_masks(cfg, np.ones_like(slots.valid), slots.is_prefix, q)


def _pads_in_prefix(slots, cfg, q):
    """Pads as real keys *and* part of the bidirectional prompt (as a mask built over the whole
    padded prompt has them): their own queries see the whole prompt too."""
    return attention_masks(cfg, np.ones_like(slots.valid), slots.is_prefix | ~slots.valid, q)


def _added_mask(pad: int):
    """attention_weights as an implementation computes them that adds its 0/1 mask to the
    scores: the real keys get +1, the pads +0 (not -inf), i.e. each pad's weight is e^-1 of
    what an unmasked pad would have, before the softmax renormalises."""
    def make(original):
        def attention_weights(qg, k, mask, scale, logit_cap):
            w = original(qg, k, mask, scale, logit_cap)  # [B, K, G*L, S]
            if mask is None or not pad:  # SigLIP: no mask, nothing added
                return w
            w[..., :pad] *= np.float32(np.exp(-1.0))
            w /= w.sum(axis=-1, keepdims=True)
            return w
        return attention_weights
    return make


def _rolling_window_masks(slots, cfg, q):
    """Decode steps of the sliding layers as a rolling cache of the last W keys with the
    padding mask read from its first W columns: key S - W + i takes slot i's validity."""
    masks = slots.masks(cfg, q)
    window, s = cfg.text_config.sliding_window, slots.length
    if q == 0 or "sliding_attention" not in masks or not window or s <= window:
        return masks
    sliding = np.zeros_like(masks["sliding_attention"])  # [B, 1, S]
    sliding[:, :, s - window:] = slots.valid[:, None, :window]
    return masks | {"sliding_attention": sliding}


def _cache_length_positions(pos, slots, q):
    """The decode step's position as its slot count (the padded cache's length): real-token
    count plus the row's pads."""
    return np.full_like(pos, slots.length)


# The swap each pad trap makes in npgemma's reference run as the padded row: hooks of
# `teacher_forced` (masks, decode_positions) and function swaps.
_PAD_SWAPS = {
    "pads-unmasked": lambda pad: (dict(masks=_visible_pads), []),
    "mask-added-unconverted": lambda pad: (dict(masks=_pads_in_prefix),
                                           [Swap(LAYERS, "attention_weights", _added_mask(pad))]),
    "rolling-window-pad-mask": lambda pad: (dict(masks=_rolling_window_masks), []),
    "decode-positions-from-cache-length": lambda pad: (
        dict(decode_positions=_cache_length_positions), []),
}


def _pad_trap(params, cfg, ids, pixels, forced, pad, theirs, dtype):
    """The pad trap (npgemma's reference run as the padded row, the trap swapped in) that
    explains the row: within tolerance and nearer than the row alone; None if none does."""
    base = fit("npgemma", teacher_forced(params, cfg, ids, pixels, forced), theirs, forced, dtype)
    found = []
    for name, make in _PAD_SWAPS.items():
        hooks, swaps = make(pad)
        with swapped(swaps):
            ref = teacher_forced(params, cfg, ids, pixels, forced, pad=pad, **hooks)
        f = fit(name, ref, theirs, forced, dtype)
        if f.ok and f.distance < base.distance:
            found.append(f)
    return min(found, key=lambda f: f.distance, default=None)


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
    Trap("rolling-window-pad-mask", "batch", _SLOTS + "; on a sliding layer the window's keys "
         "keep their own slots' validity", "the implementation's rolling sliding-window cache "
         "and its padding mask are misaligned during decode (the cache holds the last W keys, "
         "the mask's first W columns are applied to them): the padded row's prompt logits "
         "match, its decode steps do not", "the reference run as the padded row; at decode, "
         "the sliding layers' window key S - W + i takes slot i's validity",
         needs="a left-padded Gemma-2 row longer than the window"),
    Trap("decode-positions-from-cache-length", "decode-time", _SLOTS, "the implementation "
         "restarts the decode positions at the padded cache's length: a row behind n pads is "
         "fed positions n ahead of its prompt's numbering at every decode step",
         "the reference run as the padded row, decode positions = the slot count",
         needs="a left-padded row and a generated token"),
)}


def batch_diagnosis(model_dir, cfg, failing, rows, images, prompts, proc, dtype) -> Verdict:
    """Each failing row's own diagnosis, after three batch traps: the row ran another row's
    image (its pixels are that image's, plain or through a pixel trap, or its logits are
    npgemma's on that image with the row's own prompt); its left padding shifted the image
    features (`shifted_features`); or it is a left-padded row that matches no row's image (the
    padding, its mask or positions, changed it; npgemma has no finer trap for that)."""
    params = load_weights(model_dir, cfg, dtype=np.float32)
    own = [proc.preprocess_image(image) for image in images]
    ids = [proc(image, prompt).input_ids for image, prompt in zip(images, prompts)]
    longest = max(len(x) for x in ids)
    parts, explained, names = [], True, []
    for i, r in failing:
        d = r["diagnosis"] or Verdict("failed", False)
        theirs, pad = rows[i], longest - len(ids[i])
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
        found = _pad_trap(params, cfg, ids[i], own[i], forced, pad, theirs, dtype) \
            if pad and not d.explained else None
        if found is not None:
            parts.append(f"row {i} ({pad} pad tokens): matches npgemma with `{found.name}` to "
                         f"{found.distance:.2g} — {BATCH_TRAPS[found.name].explain}")
            names.append(found.name)
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


def shifted_features(pad: int):
    """The swap that merges image features as an implementation does that takes feature p for
    the token at padded position p (mlx-vlm's batch): `pad` left pads move every image token
    `pad` features on, and the last `pad` tokens get the zero padding."""
    def shift(original):
        def encode_image(*a, **k):
            feats = original(*a, **k)  # [B, P, D]
            out = np.zeros_like(feats)
            out[:, :feats.shape[1] - pad] = feats[:, pad:]
            return out
        return encode_image

    return Swap("npgemma.paligemma", "encode_image", shift)


