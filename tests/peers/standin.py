"""A stand-in PaliGemma implementation with deliberate faults, for the conformance suite's tests.

It is what another port looks like: its own preprocessing, its own masks and positions, its own
greedy loop (no KV-cache: the whole sequence again each step), built on npgemma's plain NumPy
layers (the weights and the layer math are not what is under test). Each fault, chosen by
NPGEMMA_STANDIN_FAULT (comma-separated), is written here as its own code, the way the porting
mistake would look in someone else's implementation. Nothing is imported from npgemma.compare:
the diagnosis under test must find these faults by its own search, so a wrong trap there fails
a test. `npgemma conform --python PYTHON --against THIS.py:run` runs it in a subprocess, as it
would run keras-hub or mlx-vlm in their own environments.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from PIL import Image

import npgemma
from npgemma import paligemma

# What a fault changes, by name. Model and config faults:
MODEL_FAULTS = {"no-sliding-window", "two-way-window", "head-dim-query-scale", "gemma2-as-gemma1"}
# Preprocessing faults:
PIXEL_FAULTS = {"bilinear-no-antialias", "imagenet-normalize"}
# Faults of the interface (what the port refuses, returns or batches):
OTHER_FAULTS = {"vocab-cut", "head-dim-from-image-tokens", "no-convert-rgb", "declines-gemma2",
                "no-batch", "batch-first-image", "batch-shifted-features", "batch-tail-causal"}


def _faults() -> set[str]:
    faults = {f for f in os.environ.get("NPGEMMA_STANDIN_FAULT", "").split(",") if f}
    unknown = faults - MODEL_FAULTS - PIXEL_FAULTS - OTHER_FAULTS
    if unknown:  # a test asking for a fault this file lacks must not run a faultless peer
        raise ValueError(f"NPGEMMA_STANDIN_FAULT: no such fault {sorted(unknown)}")
    return faults


def run(model_dir, image, prompt, max_new_tokens=8):
    """One input; or, for lists, a batch (each row as it would be alone, which is what a
    correct batch gives)."""
    faults = _faults()
    if isinstance(image, list):
        if "no-batch" in faults:
            raise NotImplementedError("this stand-in takes one input at a time")
        pipe = npgemma.load(model_dir)
        images = [image[0]] * len(image) if "batch-first-image" in faults else image
        # A port that pads the batch on the left and then merges image feature p at padded
        # position p: row r's features move on by its padding, zeros at the end.
        lengths = [len(pipe.processor(im, p).input_ids) for im, p in zip(image, prompt)]
        pads = ([max(lengths) - n for n in lengths] if "batch-shifted-features" in faults
                else [0] * len(lengths))
        if "batch-tail-causal" in faults:
            start = min(lengths) - 1
            return [_tail_causal(pipe, im, p, max_new_tokens, start) for im, p in zip(image, prompt)]
        return [_one(pipe, faults, im, p, max_new_tokens, shift=pad)
                for im, p, pad in zip(images, prompt, pads)]
    return _one(npgemma.load(model_dir), faults, image, prompt, max_new_tokens)


def _one(pipe, faults, image, prompt, max_new_tokens, shift=0) -> dict:
    cfg = pipe.cfg
    text = cfg.text_config
    if "head-dim-from-image-tokens" in faults and cfg.num_image_tokens != text.head_dim:
        raise ValueError(f"cannot reshape the attention weights for head_dim {cfg.num_image_tokens}")
    if "declines-gemma2" in faults and text.model_type == "gemma2":
        raise NotImplementedError("this stand-in has no Gemma 2")
    if "no-convert-rgb" in faults and image.mode != "RGB":
        raise ValueError("mean must have 1 elements if it is an iterable, got 3")
    cfg = _config(cfg, faults)
    ids = pipe.processor(image, prompt).input_ids
    pixels = _pixels(image, cfg.vision_config.image_size, faults)
    features = paligemma.encode_image(pipe.params, pixels[None], cfg)  # [1, P, D]
    if shift:
        features = np.concatenate([features[:, shift:], np.zeros_like(features[:, :shift])], 1)

    def forward(seq):  # the whole sequence, prompt as prefix: float32[len(seq), V]
        return _forward(pipe.params, cfg, np.asarray(seq, np.int64), len(ids), features, faults)

    tokens: list[int] = []
    for _ in range(max_new_tokens):  # greedy, recomputing everything each step
        nxt = int(np.argmax(forward(list(ids) + tokens)[-1]))
        tokens.append(nxt)
        if nxt == cfg.eos_token_id:
            break
    everything = forward(list(ids) + tokens[:-1]) if tokens else forward(ids)
    logits = everything[:len(ids)]
    if "vocab-cut" in faults:  # a port whose output layer stops where the special tokens begin
        logits = logits[:, :cfg.image_token_index]
    return {"logits": logits, "input_ids": ids, "pixel_values": pixels, "token_ids": tokens,
            "step_logits": everything[len(ids) - 1:len(ids) - 1 + len(tokens)]}


def _config(cfg, faults):
    """The config as this port reads it."""
    text = cfg.text_config
    if "gemma2-as-gemma1" in faults and text.model_type == "gemma2":
        # A PaliGemma-1 port handed a PaliGemma-2 checkpoint: Gemma-1 layers of the same sizes.
        # Gemma-1 has no query_pre_attn_scalar, window, layer types or caps to read.
        text = dataclasses.replace(text, model_type="gemma", query_pre_attn_scalar=None,
                                   sliding_window=None, layer_types=None,
                                   attn_logit_softcapping=None, final_logit_softcapping=None)
    if "head-dim-query-scale" in faults and text.model_type == "gemma2":
        # The port scales queries the Gemma-1 way, by head_dim^-0.5, whatever the config says.
        text = dataclasses.replace(text, query_pre_attn_scalar=text.head_dim)
    return dataclasses.replace(cfg, text_config=text)


def _pixels(image, size: int, faults) -> np.ndarray:
    """float32[3, S, S]: RGB, resized, to [0, 1], normalised."""
    rgb = np.asarray(image.convert("RGB"))
    if "bilinear-no-antialias" in faults:  # torch's F.interpolate(mode="bilinear"), by hand
        x = np.einsum("yh,hwc,xw->yxc", _bilinear_matrix(rgb.shape[0], size),
                      rgb.astype(np.float64), _bilinear_matrix(rgb.shape[1], size))
    else:
        x = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC),
                       np.float64)
    x = x / 255.0
    if "imagenet-normalize" in faults:  # the torchvision habit
        mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    else:
        mean, std = np.full(3, 0.5), np.full(3, 0.5)
    return ((x - mean) / std).astype(np.float32).transpose(2, 0, 1)


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """float64[n_out, n_in]: align_corners=False bilinear weights, no antialiasing filter (each
    output sample reads its two nearest inputs only, however much the image shrinks)."""
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m


def _forward(params, cfg, seq, prefix: int, features, faults) -> np.ndarray:
    """Logits float32[L, V] of one row: image and prompt (the first `prefix` tokens) see each
    other both ways, later tokens are causal; Gemma-2's window on its sliding layers."""
    n = len(seq)
    q, k = np.arange(n)[:, None], np.arange(n)[None, :]
    both_prefix = (q < prefix) & (k < prefix)
    full = (k <= q) | both_prefix
    masks = {"full_attention": full[None]}
    window = cfg.text_config.sliding_window
    if window is not None:
        if "no-sliding-window" in faults:  # the port never read sliding_window
            sliding = full
        elif "two-way-window" in faults:  # the window as a band both ways, prefix included
            sliding = full & (np.abs(q - k) < window)
        else:
            sliding = ((k <= q) & (q - k < window)) | both_prefix
        masks["sliding_attention"] = sliding[None]
    positions = np.arange(1, n + 1)[None]  # PaliGemma counts from 1
    logits, _ = paligemma.forward(params, cfg, seq[None], positions, masks, image_features=features)
    return logits[0]


def _tail_causal(pipe, image, prompt, max_new_tokens, start) -> dict:
    """keras-hub's generate_step, written out: seed a cache with one pass over the whole prompt
    (every prompt token sees every other), then a loop from the shortest row's end (`start` + 1,
    keras' `index = min(row_lengths)`) that feeds the token at index - 1 as one causal query
    (a decode step: the last `window` keys on a sliding layer), its keys written over the
    seeded ones; a prompt token stays as it is, past the prompt the greedy pick is taken."""
    cfg, params = pipe.cfg, pipe.params
    seq = list(pipe.processor(image, prompt).input_ids)
    n = len(seq)
    pixels = _pixels(image, cfg.vision_config.image_size, set())
    features = paligemma.encode_image(params, pixels[None], cfg)
    cache = paligemma.init_cache(cfg, 1, n + max_new_tokens)
    seed = {"full_attention": np.ones((1, n, n), bool)}
    if cfg.text_config.sliding_window is not None:  # the prefix is never windowed (transformers)
        seed["sliding_attention"] = seed["full_attention"]
    logits, cache = paligemma.forward(params, cfg, np.asarray(seq, np.int64)[None],
                                      np.arange(1, n + 1)[None], seed, image_features=features,
                                      cache=cache)
    cache.length = start  # the loop writes slot `start` on
    tokens: list[int] = []
    for slot in range(start, n + max_new_tokens - 1):
        keys = np.arange(slot + 1)
        step_masks = {"full_attention": np.ones((1, 1, slot + 1), bool)}
        if cfg.text_config.sliding_window is not None:
            step_masks["sliding_attention"] = (slot - keys < cfg.text_config.sliding_window)[None, None]
        step, cache = paligemma.forward(params, cfg, np.array([[seq[slot]]], np.int64),
                                        np.array([[slot + 1]]), step_masks, cache=cache,
                                        last_only=True)
        if slot + 1 < n:
            continue  # a prompt token: kept, not sampled
        nxt = int(np.argmax(step[0, -1]))
        tokens.append(nxt)
        if nxt == cfg.eos_token_id or len(tokens) == max_new_tokens:
            break
        seq.append(nxt)
    return {"logits": logits[0], "input_ids": np.asarray(pipe.processor(image, prompt).input_ids),
            "pixel_values": pixels, "token_ids": tokens}
