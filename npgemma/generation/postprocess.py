"""Detection / segmentation output: `<loc>` and `<seg>` tokens -> boxes, labels, masks.

PaliGemma answers "detect cat ; dog" with one entry per object, joined by " ; ":

    <locY1><locX1><locY2><locX2> label                 (detection)
    <locY1><locX1><locY2><locX2><seg…>×16 label        (segmentation)

Each `<locNNNN>` is a bin 0..1023 along the *stretched square* input, in the order y_min, x_min,
y_max, x_max; multiplying by the original height/width maps it back onto the image. big_vision
decodes with bins / 1023, most community code (and Google's model card examples) with / 1024:
`divisor` chooses.

The 16 `<segNNN>` codes index the codebook of PaliGemma's mask VQ-VAE (`npgemma.vqvae`, weights
`vae-oid.npz`, not part of the checkpoint), whose decoder turns them into a 64×64 map. Placing
it in the image follows big_vision's segmentation evaluator
(`big_vision/evaluators/proj/paligemma/transfers/segmentation.py`, `Evaluator.run`):

  * the box in pixels is truncated to whole pixels, `int(y1 * H)` etc. (of `box` here, so with
    `divisor`; big_vision's own evaluator uses bins / 1023);
  * the float 64×64 map is resized to the box's (width, height) with PIL's BILINEAR filter on
    the float values (mode "F"), then thresholded at 0.0 — the decoder was trained on masks
    mapped to [-1, 1]; pixels outside the box are background.

The PaliGemma Hugging Face Space demo differs (its `extract_objs`, as found in the many copies
of it on GitHub; not checked against the Space itself): it divides the bins by 1024 and
*rounds* the pixel box, maps the map to [0, 1] by clip(x · 0.5 + 0.5), quantises it to uint8,
resizes with PIL's default filter (BICUBIC) and keeps the result as a *soft* mask, with no
threshold, which it draws translucently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

_OBJECT = re.compile(r"((?:<loc\d{4}>){4})((?:<seg\d{3}>){16})?([^;<]*)")
_NUMBER = re.compile(r"\d+")


@dataclass(frozen=True)
class DetectedObject:
    label: str
    box: tuple[float, float, float, float]   # x_min, y_min, x_max, y_max in image pixels
    bins: tuple[int, int, int, int]          # the raw y_min, x_min, y_max, x_max bins (0..1023)
    seg_codes: tuple[int, ...] | None = None  # 16 VQ-VAE codes for a segmentation answer
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)  # bool[H, W]

    def as_dict(self) -> dict:
        return {"label": self.label, "box": list(self.box), "bins": list(self.bins),
                "seg_codes": None if self.seg_codes is None else list(self.seg_codes),
                "mask": None if self.mask is None else mask_to_rle(self.mask)}


def mask_in_image(map64: np.ndarray, box, width: int, height: int) -> np.ndarray:
    """bool[height, width]: the decoder's 64×64 map resized into `box` and thresholded at 0."""
    from PIL import Image

    x1, y1, x2, y2 = (int(v) for v in box)       # big_vision: map(int, ...), truncation
    x1, x2 = max(0, min(width, x1)), max(0, min(width, x2))
    y1, y2 = max(0, min(height, y1)), max(0, min(height, y2))
    out = np.zeros((height, width), bool)
    if x2 <= x1 or y2 <= y1:                      # "can still happen after int()": empty mask
        return out
    resized = Image.fromarray(np.asarray(map64, np.float32)).resize(
        (x2 - x1, y2 - y1), resample=Image.Resampling.BILINEAR)
    out[y1:y2, x1:x2] = np.asarray(resized) > 0.0
    return out


def mask_to_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: {"size": [h, w], "counts": [...]}, runs over the column-major
    (Fortran order) pixels, alternating background / foreground, starting with background."""
    flat = np.asarray(mask, bool).ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1           # where a new run starts
    bounds = np.concatenate([[0], edges, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts                                   # a leading empty background run
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def parse_objects(text: str, width: int, height: int, divisor: float = 1024.0,
                  decode_masks: Callable[[np.ndarray], np.ndarray] | None = None) -> list[DetectedObject]:
    """Every well-formed object in a generated answer, boxes in pixels of a width×height image.

    Entries whose box is empty or inverted (y_max <= y_min or x_max <= x_min) are dropped, as
    big_vision does; text without `<loc>` tokens gives []. With `decode_masks` (int[B, 16]
    codes -> float[B, 64, 64] maps, e.g. `Pipeline.decode_masks`), objects with `<seg>` codes
    get their `mask` in image pixels.
    """
    objects = []
    for match in _OBJECT.finditer(text):
        y1, x1, y2, x2 = (int(n) for n in _NUMBER.findall(match.group(1)))
        if y2 <= y1 or x2 <= x1:
            continue
        seg = tuple(int(n) for n in _NUMBER.findall(match.group(2))) if match.group(2) else None
        box = (x1 / divisor * width, y1 / divisor * height, x2 / divisor * width, y2 / divisor * height)
        mask = None
        if seg is not None and decode_masks is not None:
            mask = mask_in_image(decode_masks(np.array([seg]))[0], box, width, height)
        objects.append(DetectedObject(match.group(3).strip(), box, (y1, x1, y2, x2), seg, mask))
    return objects


def draw_objects(image, objects: list[DetectedObject], colors=None, alpha: float = 0.45):
    """A copy of a PIL image with each object in its own colour (`colors`, or `drawing.PALETTE`
    in turn): its mask painted translucently (`alpha`), striped, with a solid edge; its box; its label
    on a filled box in that colour above the box (inside it at the image's top edge). Lines and
    text grow with the image (2 px and 16 px at 256 px, at most 24 px)."""
    from PIL import Image, ImageDraw

    from . import drawing

    colors = [tuple(c) for c in (colors or drawing.PALETTE)]
    out = image.convert("RGB").copy()
    w, h = out.size
    lw = drawing.line_width(w, h)
    rgb = np.asarray(out, np.float32)
    for k, obj in enumerate(objects):
        if obj.mask is not None:
            rgb = drawing.paint_mask(rgb, obj.mask, colors[k % len(colors)], alpha, lw)
    out = Image.fromarray(rgb.round().astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for k, obj in enumerate(objects):
        drawing.box(draw, obj.box, colors[k % len(colors)], lw)
    fnt = drawing.font(drawing.font_size(w, h))
    for k, obj in enumerate(objects):  # labels last: no box line crosses a label
        if obj.label:
            x0, y0 = obj.box[0] - 1, obj.box[1] - 1
            size = draw.textbbox((0, 0), obj.label, font=fnt)
            above = y0 - (size[3] - size[1]) - 2 * max(2, round(getattr(fnt, "size", 12) / 6))
            drawing.label(draw, (x0, above if above >= 0 else y0 + lw + 1), obj.label,
                          colors[k % len(colors)], fnt, bounds=(w, h))
    return out
