"""The pad traps of a batch's diagnosis (batch.py): the faults of a left-padded row — its pads
unmasked, a 0/1 mask added to the scores, the rolling window's pad mask, decode positions from
the cache's length — each tried on npgemma's reference run as that padded row (`_pad_trap`),
alone or with the image features shifted by the padding (`shifted_features`)."""

from __future__ import annotations

import contextlib

import numpy as np

from ..paligemma import attention_masks
from .replacements import LAYERS
from .deviations import DEVIATIONS, deviated, deviated_config
from .diagnose import fit, nearer, tokens_only
from .reference import teacher_forced
from .swap import Swap, swapped


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
