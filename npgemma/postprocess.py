"""Detection / segmentation output: `<loc>` and `<seg>` tokens -> boxes, labels, mask codes.

PaliGemma answers "detect cat ; dog" with one entry per object, joined by " ; ":

    <locY1><locX1><locY2><locX2> label                 (detection)
    <locY1><locX1><locY2><locX2><seg…>×16 label        (segmentation)

Each `<locNNNN>` is a bin 0..1023 along the *stretched square* input, in the order y_min, x_min,
y_max, x_max; multiplying by the original height/width maps it back onto the image. big_vision
decodes with bins / 1023, most community code (and Google's model card examples) with / 1024:
`divisor` chooses. The 16 `<segNNN>` codes index a VQ-VAE codebook whose decoder (weights
`vae-oid.npz`, not part of the checkpoint) turns them into a 64×64 mask; they are returned
as-is here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_OBJECT = re.compile(r"((?:<loc\d{4}>){4})((?:<seg\d{3}>){16})?([^;<]*)")
_NUMBER = re.compile(r"\d+")


@dataclass(frozen=True)
class DetectedObject:
    label: str
    box: tuple[float, float, float, float]   # x_min, y_min, x_max, y_max in image pixels
    bins: tuple[int, int, int, int]          # the raw y_min, x_min, y_max, x_max bins (0..1023)
    seg_codes: tuple[int, ...] | None = None  # 16 VQ-VAE codes for a segmentation answer

    def as_dict(self) -> dict:
        return {"label": self.label, "box": list(self.box), "bins": list(self.bins),
                "seg_codes": None if self.seg_codes is None else list(self.seg_codes)}


def parse_objects(text: str, width: int, height: int, divisor: float = 1024.0) -> list[DetectedObject]:
    """Every well-formed object in a generated answer, boxes in pixels of a width×height image.

    Entries whose box is empty or inverted (y_max <= y_min or x_max <= x_min) are dropped, as
    big_vision does; text without `<loc>` tokens gives [].
    """
    objects = []
    for match in _OBJECT.finditer(text):
        y1, x1, y2, x2 = (int(n) for n in _NUMBER.findall(match.group(1)))
        if y2 <= y1 or x2 <= x1:
            continue
        seg = tuple(int(n) for n in _NUMBER.findall(match.group(2))) if match.group(2) else None
        box = (x1 / divisor * width, y1 / divisor * height, x2 / divisor * width, y2 / divisor * height)
        objects.append(DetectedObject(match.group(3).strip(), box, (y1, x1, y2, x2), seg))
    return objects


def draw_objects(image, objects: list[DetectedObject], color=(255, 0, 0)):
    """A copy of a PIL image with each object's box and label drawn on it."""
    from PIL import ImageDraw

    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    for obj in objects:
        draw.rectangle(obj.box, outline=color, width=max(1, round(min(out.size) / 200)))
        draw.text((obj.box[0] + 2, obj.box[1] + 2), obj.label, fill=color)
    return out
