"""A batch's diagnosis: each failing row's own, after the batch traps (`BATCH_TRAPS`): another
row's image, image features shifted by the padding, the pad-mask and decode-position
faults of a left-padded row, each tried on npgemma's reference run as that padded row, and a
decode loop that starts at the shortest row's end (`shortest_row`: keras-hub's)."""

from __future__ import annotations

import contextlib

import numpy as np

from ..checkpoint.weights import load_weights
from ..paligemma import attention_masks
from .replacements import LAYERS
from .deviations import DEVIATIONS, deviated, deviated_config
from .diagnose import fit, nearer, tokens_only
from .pixels import diagnose_pixels
from .quantdiag import effective_params
from .reference import forced_tokens, teacher_forced
from .shortest_row import TRAP as TAIL_TRAP, judge_row
from .swap import Swap, swapped
from .tolerances import compare
from .trap import Trap
from .verdict import Verdict


def _visible_pads(slots, cfg, q):
    """The masks with every pad slot a real key (what a query sees when pads go unmasked)."""
    return attention_masks(cfg, np.ones_like(slots.valid), slots.is_prefix, q)


def _added_masks(slots, cfg, q):
    """The prompt pass with every slot a key of every query (a 0/1 mask added to the scores
    masks nothing), the decode steps masked as they should be (the mask of a cached decode step
    is converted to 0 / large negative: transformers 4.41's PaliGemma)."""
    if q:
        return slots.masks(cfg, q)
    return attention_masks(cfg, np.ones_like(slots.valid), slots.is_prefix | ~slots.valid, q)


def _added_attention(pad: int):
    """The decoder's attention as transformers 4.41's PaliGemma computes it in the prompt pass:
    the outer product of the 0/1 attention mask with itself added to the scores, so a real
    query gives its real keys +1 and the pads +0 (each pad's weight e^-1 of an unmasked pad's),
    a pad query gives every key +0. Whole (not in query chunks): which query is a pad is its
    row index. The decode steps (one query) are the reference's own."""
    def make(original):
        def attention(q, k, v, mask, scale, logit_cap=None):
            if mask is None or not pad or mask.shape[1] == 1:
                return original(q, k, v, mask, scale=scale, logit_cap=logit_cap)
            b, n, l, h = q.shape
            kv, s = k.shape[1], k.shape[2]
            qg = q.reshape(b, kv, n // kv * l, h)  # [B, N, L, H] -> [B, K, G*L, H]
            scores = (qg @ k.swapaxes(-1, -2)) * np.float32(scale)  # [B, K, G*L, S]
            if logit_cap is not None:
                scores = np.float32(logit_cap) * np.tanh(scores / np.float32(logit_cap))
            real = np.arange(s) >= pad
            added = (real[:l, None] & real[None, :]).astype(np.float32)  # [L, S]: 1 real-real
            scores = scores.reshape(b, kv, n // kv, l, s) + added  # [B, K, G, L, S]
            scores = np.where(mask[:, None, None], scores, np.float32(-np.inf))
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            w = (scores / scores.sum(axis=-1, keepdims=True)).astype(np.float32)
            return (w.reshape(b, kv, -1, s) @ v).reshape(b, n, l, h)  # [B, K, G*L, S] @ [B, K, S, H]
        return attention
    return make


def _zero_pad_embeddings(pad: int):
    """gemma.embed as 4.41's merge leaves the prompt: the pad tokens' embeddings zeroed."""
    def make(original):
        def embed(table, input_ids, text):
            x = original(table, input_ids, text)  # [B, L] -> [B, L, D]
            if input_ids.shape[1] > 1:  # the prompt pass: its first `pad` slots are the pads
                x = x.copy()
                x[:, :pad] = 0
            return x
        return embed
    return make


def _pads_at_one(original):
    """rope_positions as 4.41's merge writes them: attention_mask.cumsum(-1), pads set to 1."""
    def rope_positions(valid):
        return np.where(valid, original(valid), 1)
    return rope_positions


def _padded_positions(original):
    """rope_positions as an implementation that numbers the padded row's slots from its start
    (mlx-vlm: RoPE with no offset in the prompt pass): the pads take the positions before the
    first real token's, which keeps its own (RoPE sees only differences)."""
    def rope_positions(valid):
        pads = (~valid).sum(axis=1, keepdims=True)  # [B, 1] left pads
        return np.arange(1, valid.shape[1] + 1, dtype=np.int64)[None] - pads  # [B, S]
    return rope_positions


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


def _blind_rows_spread(window: int):
    """attention_weights as eager attention over a rolling cache of `window` keys computes a
    decode query whose every cached key is masked (the dtype's minimum added to each score:
    all equal in float32): an even spread over the `window` cached keys, where npgemma's
    full-length cache would spread it over every slot."""
    def make(original):
        def attention_weights(qg, k, mask, scale, logit_cap):
            w = original(qg, k, mask, scale, logit_cap)  # [B, K, G*L, S]
            if mask is None or mask.shape[1] != 1 or mask.shape[-1] <= window:
                return w
            blind = np.flatnonzero(~mask.any(axis=(1, 2)))  # rows that see no key
            if blind.size:
                w[blind] = 0
                w[blind, :, :, -window:] = np.float32(1 / window)
            return w
        return attention_weights
    return make


def _cache_length_positions(pos, slots, q):
    """The decode step's position as its slot count (the padded cache's length): real-token
    count plus the row's pads."""
    return np.full_like(pos, slots.length)


# The swap each pad trap makes in npgemma's reference run as the padded row: hooks of
# `teacher_forced` (masks, decode_positions) and function swaps.
_PAD_SWAPS = {
    "pads-unmasked": lambda pad, cfg: (dict(masks=_visible_pads), []),
    "mask-added-unconverted": lambda pad, cfg: (dict(masks=_added_masks), [
        Swap(LAYERS, "attention", _added_attention(pad), only=("npgemma.gemma",)),
        Swap("npgemma.gemma", "embed", _zero_pad_embeddings(pad)),
        Swap("npgemma.paligemma", "rope_positions", _pads_at_one)]),
    "mask-added-padded-positions": lambda pad, cfg: (dict(masks=_added_masks), [
        Swap(LAYERS, "attention", _added_attention(pad), only=("npgemma.gemma",)),
        Swap("npgemma.gemma", "embed", _zero_pad_embeddings(pad)),
        Swap("npgemma.paligemma", "rope_positions", _padded_positions)]),
    "rolling-window-pad-mask": lambda pad, cfg: (dict(masks=_rolling_window_masks), [
        Swap(LAYERS, "attention_weights", _blind_rows_spread(cfg.text_config.sliding_window))]
        if cfg.text_config.sliding_window else []),
    "decode-positions-from-cache-length": lambda pad, cfg: (
        dict(decode_positions=_cache_length_positions), []),
}


def _pad_trap(params, cfg, ids, pixels, forced, pad, theirs, dtype, companions=(), also=()):
    """The pad trap (npgemma's reference run as the padded row, the trap swapped in) that
    explains the row: within tolerance and nearer than the row alone; None if none does.
    Returns (names, fit). Alone first; then, only when no single one explains the row, each
    pad trap with each deviation in `companions` (a release can have both: 4.41's padded rows
    add the 0/1 mask *and* feed the decode steps one position less; 4.47's misalign the pad
    mask with the rolling window *and* window the prefix, as its unpadded rows show). `also`:
    swaps every try makes besides (the image features shifted by the padding)."""
    base = fit("npgemma", teacher_forced(params, cfg, ids, pixels, forced), theirs, forced, dtype)

    def tried(names, hooks, swaps):
        with contextlib.ExitStack() as stack:
            for n in names[1:]:
                stack.enter_context(deviated(n, dtype))
            stack.enter_context(swapped(list(also) + list(swaps)))
            ref = teacher_forced(params, deviated_config(list(names[1:]), cfg), ids, pixels,
                                 forced, pad=pad, **hooks)
        f = fit(" + ".join(names), ref, theirs, forced, dtype)
        return (names, f) if nearer(f, base) else None

    singles = [x for name, make in _PAD_SWAPS.items() if (x := tried((name,), *make(pad, cfg)))]
    if singles:
        return min(singles, key=_nearest)
    pairs = []
    for name, make in _PAD_SWAPS.items():
        hooks, swaps = make(pad, cfg)
        for d in companions:
            step = DEVIATIONS[d].decode_positions
            if step is not None and ("decode_positions" in hooks or not forced):
                continue  # two decode-position traps, or no decode step to show one
            x = tried((name, d), dict(hooks, decode_positions=step) if step else hooks, swaps)
            if x is not None:
                pairs.append(x)
    return min(pairs, key=_nearest, default=None)


def _nearest(found):
    """The ranking of pad traps that explain a row: by distance, or by tokens picked."""
    f = found[1]
    return -f.picks if tokens_only(f) else f.distance


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


def _shifted_pad_trap(params, cfg, ids, own, images, forced, pad, theirs, dtype, decode):
    """A padded row with two batch faults at once (mlx-vlm's PaliGemma 1): its image features
    shifted by the padding (of row j's image, j in `images`, its own first) and a pad trap.
    Returns (j, trap names, fit) or None."""
    for j in images:
        found = _pad_trap(params, cfg, ids, own[j], forced, pad, theirs, dtype, decode,
                          also=[shifted_features(pad)])
        if found is not None:
            return (j, *found)
    return None


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


