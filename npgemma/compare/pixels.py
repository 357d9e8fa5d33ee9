"""The known ways to get PaliGemma's image preprocessing almost right, and which one explains the
other side's `pixel_values`.

npgemma's processor (`generation/processing.py`) is transformers' `SiglipImageProcessor`: RGB,
a PIL resize to S×S with the checkpoint's filter (bicubic for every released checkpoint; PIL
antialiases when it shrinks), × 1/255, then (x - 0.5) / 0.5 per channel. Each trap below
recomputes the pixels the way an implementation with that one mistake would; `diagnose_pixels`
ranks them by their distance to the other side's pixels, judged by the `pixel_values` row of
the tolerance table.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from ..generation.processing import Processor, load_image
from .tolerances import compare

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PixelTrap:
    name: str
    explain: str
    # (rgb uint8[H, W, 3], processor, the previous step) -> float32[S, S, 3] before normalising,
    # or, for the normalising traps, the normalisation itself
    stage: str                      # "crop", "resize", "normalize" or "order": the step it changes
    apply: Callable


def _resize_pil(rgb, size, resample) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize((size, size), resample=resample), np.float32)


def _resize_no_antialias(rgb: np.ndarray, size: int) -> np.ndarray:
    """Bilinear interpolation at half-pixel centres, each output pixel from its 2×2 nearest
    inputs only (no antialiasing filter when shrinking): tf.image.resize(antialias=False), torch
    `interpolate(mode="bilinear", align_corners=False)`. float32[S, S, 3] in 0..255, unrounded."""
    h, w = rgb.shape[:2]
    x = rgb.astype(np.float64)

    def axis(n_in):
        c = (np.arange(size) + 0.5) * n_in / size - 0.5
        c = np.clip(c, 0, n_in - 1)
        lo = np.floor(c).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, c - lo

    y0, y1, fy = axis(h)
    x0, x1, fx = axis(w)
    top = x[y0][:, x0] * (1 - fx)[None, :, None] + x[y0][:, x1] * fx[None, :, None]
    bottom = x[y1][:, x0] * (1 - fx)[None, :, None] + x[y1][:, x1] * fx[None, :, None]
    return (top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]).astype(np.float32)


def _center_crop(rgb: np.ndarray) -> np.ndarray:
    """The centred crop to the target's (square) aspect ratio, in keras' integer arithmetic
    (`keras.ops.image.resize(crop_to_aspect_ratio=True)`)."""
    h, w = rgb.shape[:2]
    ch, cw = max(min(h, w), 1), max(min(w, h), 1)
    top, left = int((h - ch) / 2), int((w - cw) / 2)
    return rgb[top:top + ch, left:left + cw]


PIXEL_TRAPS: dict[str, PixelTrap] = {t.name: t for t in (
    PixelTrap("center-crop", "the other implementation crops the image to a centred square "
              "before resizing (keras' crop_to_aspect_ratio); PaliGemma's processor resizes the "
              "whole image, changing its aspect ratio", "crop", lambda rgb, p: _center_crop(rgb)),
    PixelTrap("bilinear-resize", "the other implementation resizes bilinearly; the checkpoint's "
              "preprocessor_config.json says `resample` (3 = bicubic for PaliGemma)", "resize",
              lambda rgb, p: _resize_pil(rgb, p.image_size, Image.Resampling.BILINEAR)),
    PixelTrap("nearest-resize", "the other implementation resizes with nearest-neighbour "
              "sampling; use the checkpoint's filter (bicubic)", "resize",
              lambda rgb, p: _resize_pil(rgb, p.image_size, Image.Resampling.NEAREST)),
    PixelTrap("bilinear-no-antialias", "the other implementation resizes bilinearly without "
              "antialiasing (tf.image.resize(antialias=False), torch interpolate); resize as PIL "
              "does with the checkpoint's filter, antialiased when shrinking", "resize",
              lambda rgb, p: _resize_no_antialias(rgb, p.image_size)),
    PixelTrap("unrounded-resize", "the other implementation resizes in floating point and keeps "
              "the fractions; transformers' PIL path resizes the uint8 image (rounded)", "resize",
              lambda rgb, p: _resize_float(rgb, p.image_size, p.resample)),
    PixelTrap("imagenet-normalize", "the other implementation normalises with ImageNet's mean and "
              "std; SigLIP uses mean 0.5, std 0.5 (pixels in [-1, 1])", "normalize",
              lambda x, p: (x - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)),
    PixelTrap("no-normalize", "the other implementation leaves the pixels in [0, 1]; SigLIP "
              "normalises to [-1, 1] ((x - 0.5) / 0.5)", "normalize", lambda x, p: x),
    PixelTrap("bgr-order", "the other implementation feeds the channels as BGR (OpenCV's order); "
              "PaliGemma takes RGB", "order", lambda x, p: x[..., ::-1]),
)}


def _resize_float(rgb: np.ndarray, size: int, resample) -> np.ndarray:
    """The checkpoint's filter applied per channel in float32 (PIL mode "F"): no rounding."""
    chans = [np.asarray(Image.fromarray(rgb[..., c].astype(np.float32), mode="F")
                        .resize((size, size), resample=resample)) for c in range(3)]
    return np.stack(chans, axis=-1).astype(np.float32)


def pixels_with(traps: tuple[str, ...], image, processor: Processor) -> np.ndarray:
    """float32[3, S, S]: npgemma's preprocessing with `traps` in place of its own steps."""
    by_stage = {PIXEL_TRAPS[t].stage: PIXEL_TRAPS[t] for t in traps}
    rgb = load_image(image)
    if "crop" in by_stage:
        rgb = np.ascontiguousarray(by_stage["crop"].apply(rgb, processor))
    if "resize" in by_stage:
        x = by_stage["resize"].apply(rgb, processor)
    else:
        x = _resize_pil(rgb, processor.image_size, processor.resample)
    if processor.do_rescale:
        x = (x.astype(np.float64) * processor.rescale_factor).astype(np.float32)
    if "normalize" in by_stage:
        x = by_stage["normalize"].apply(x, processor).astype(np.float32)
    elif processor.do_normalize:
        x = (x - processor.image_mean) / processor.image_std
    if "order" in by_stage:
        x = by_stage["order"].apply(x, processor)
    return np.ascontiguousarray(np.asarray(x, np.float32).transpose(2, 0, 1))  # [S, S, 3] -> [3, S, S]


@dataclass
class PixelFit:
    name: str        # "npgemma", a trap, or "a + b"
    distance: float  # max abs difference to the other side's pixel_values
    ok: bool         # within the pixel_values tolerance


def diagnose_pixels(image, processor: Processor, theirs: np.ndarray, dtype: str) -> dict:
    """Which trap (or pair of traps, one per step) explains the other side's pixel_values?
    {"explained", "name", "distance", "verdict", "candidates": [PixelFit as dict, best first]}."""
    def fit(names) -> PixelFit:
        c = compare(theirs, pixels_with(names, image, processor), "pixel_values", dtype)
        return PixelFit(" + ".join(names) or "npgemma", c.max_abs, c.ok)

    plain = fit(())
    singles = [fit((t,)) for t in PIXEL_TRAPS]
    pairs = [fit((a, b)) for a, b in itertools.combinations(PIXEL_TRAPS, 2)
             if PIXEL_TRAPS[a].stage != PIXEL_TRAPS[b].stage]
    fits = sorted(singles + pairs, key=lambda f: (not f.ok, f.name.count("+"), f.distance))
    if not fits[0].ok:  # three steps wrong at once (a crop, a filter and a normalisation)
        triples = [fit(t) for t in itertools.combinations(PIXEL_TRAPS, 3)
                   if len({PIXEL_TRAPS[n].stage for n in t}) == 3]
        fits = sorted(fits + triples, key=lambda f: (not f.ok, f.name.count("+"), f.distance))
    best = fits[0]
    if plain.ok:
        verdict = f"the pixels match npgemma's to {plain.distance:.2g}"
        explained, name, distance = True, None, plain.distance
    elif best.ok and best.distance < plain.distance:  # never a worse fit than no change
        how = "; and ".join(PIXEL_TRAPS[n].explain for n in best.name.split(" + "))
        verdict = f"pixel_values match npgemma's with `{best.name}` to {best.distance:.2g} — {how}"
        explained, name, distance = True, best.name, best.distance
    else:
        closer = [f for f in fits if f.distance < plain.distance]
        verdict = (f"no known preprocessing trap explains the pixels ({plain.distance:.2g} from "
                   "npgemma's" + (f"; closest `{closer[0].name}` at {closer[0].distance:.2g})"
                                  if closer else ")"))
        explained, name, distance = False, None, plain.distance
    return {"explained": explained, "name": name, "distance": distance, "verdict": verdict,
            "npgemma": vars(plain), "candidates": [vars(f) for f in fits[:8]]}
