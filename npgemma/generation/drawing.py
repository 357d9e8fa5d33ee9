"""Legible pictures: a colour per object, labels on a filled box in that colour with black or
white text (whichever contrasts more, by WCAG 2's luminance), lines and fonts that grow with the
image, and a small heat colour map with its colour bar (used by `npgemma inspect`).

Contrast: WCAG 2 defines the relative luminance of an sRGB colour (each channel linearised:
c/12.92 below 0.04045, else ((c + 0.055)/1.055)^2.4; then 0.2126 R + 0.7152 G + 0.0722 B) and
the contrast ratio (L_light + 0.05) / (L_dark + 0.05). For any fill, black or white text reaches
at least sqrt(21) ≈ 4.58, above the 4.5 that WCAG asks of normal text.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Box colours, one per object in turn: chosen apart from the demo scenes' six shape colours
# (red, green, blue, yellow, purple, orange) and from each other.
PALETTE = ((0, 229, 255), (255, 64, 255), (198, 255, 0), (255, 255, 255), (41, 121, 255),
           (255, 145, 0))
EDGE = (20, 20, 20)  # the thin dark line either side of a box, visible on light backgrounds


def luminance(rgb) -> float:
    """WCAG 2 relative luminance of an sRGB colour given as 0..255 channels."""
    c = np.asarray(rgb, np.float64)[:3] / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(lin @ np.array([0.2126, 0.7152, 0.0722]))


def contrast(a, b) -> float:
    la, lb = sorted((luminance(a), luminance(b)))
    return (lb + 0.05) / (la + 0.05)


def text_colour(fill) -> tuple[int, int, int]:
    """Black or white, whichever contrasts more with `fill`."""
    return (0, 0, 0) if contrast(fill, (0, 0, 0)) >= contrast(fill, (255, 255, 255)) else (255, 255, 255)


def font(size: int):
    """Pillow's bundled font at `size` pixels (Pillow >= 10.1); its fixed small font before that."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow 10.0, or no FreeType
        return ImageFont.load_default()


def line_width(width: int, height: int) -> int:
    """Box line width in pixels: 2 at 256 px, growing with the image's shorter side."""
    return max(2, round(min(width, height) / 128))


def font_size(width: int, height: int) -> int:
    return int(np.clip(min(width, height) / 16, 12, 24))


def label(draw: ImageDraw.ImageDraw, xy, text: str, fill, fnt, bounds=None) -> tuple[int, int, int, int]:
    """Draw `text` on a filled box in `fill` (a dark 1-px border), its top-left corner at `xy`,
    kept inside `bounds` (width, height) when given; returns the box drawn."""
    pad = max(2, round(fnt.size / 6)) if hasattr(fnt, "size") else 2
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=fnt)
    w, h = x1 - x0 + 2 * pad, y1 - y0 + 2 * pad
    x, y = xy
    if bounds is not None:
        x = max(0, min(bounds[0] - w, x))
        y = max(0, min(bounds[1] - h, y))
    box = (round(x), round(y), round(x) + w, round(y) + h)
    draw.rectangle(box, fill=tuple(fill), outline=EDGE)
    draw.text((box[0] + pad - x0, box[1] + pad - y0), text, fill=text_colour(fill), font=fnt)
    return box


def box(draw: ImageDraw.ImageDraw, xyxy, colour, width: int) -> None:
    """A box outline `width` px thick, inside `xyxy`, with a dark 1-px line either side."""
    x0, y0, x1, y1 = xyxy
    draw.rectangle((x0 - 1, y0 - 1, x1 + 1, y1 + 1), outline=EDGE, width=width + 2)
    draw.rectangle((x0, y0, x1, y1), outline=tuple(colour), width=width)


def outline(mask: np.ndarray, width: int) -> np.ndarray:
    """bool[H, W]: the mask's pixels within `width` px of its edge (4-neighbour erosion)."""
    inner = np.asarray(mask, bool).copy()
    for _ in range(width):
        p = np.pad(inner, 1)
        inner = inner & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return np.asarray(mask, bool) & ~inner


def hatch(shape: tuple[int, int], spacing: int) -> np.ndarray:
    """bool[H, W]: diagonal stripes, one pixel row of every `spacing` along x + y, a third of
    it set: a mask drawn striped reads as a mask whatever the colours under it."""
    y, x = np.indices(shape)
    return (x + y) % spacing < max(1, spacing // 3)


def paint_mask(rgb: np.ndarray, mask: np.ndarray, colour, alpha: float, lw: int) -> np.ndarray:
    """float[H, W, 3]: `mask` on `rgb` in `colour` — filled at `alpha`, striped, with a solid
    edge `lw` // 2 px wide."""
    c = np.asarray(colour, np.float32)
    m = np.asarray(mask, bool)
    rgb = np.where(m[..., None], (1 - alpha) * rgb + alpha * c, rgb)
    solid = (m & hatch(m.shape, 4 * lw)) | outline(m, max(1, lw // 2))
    return np.where(solid[..., None], c, rgb)


# ---- heat maps (npgemma inspect) ------------------------------------------------------------

# matplotlib's "plasma" at five points (dark blue -> magenta -> orange -> yellow), linear between.
_PLASMA = np.array([(13, 8, 135), (126, 3, 168), (204, 71, 120), (248, 149, 64), (240, 249, 33)],
                   np.float64)


def colormap(v) -> np.ndarray:
    """float[..., 3] 0..255: the heat colour of values v in [0, 1]."""
    v = np.clip(np.asarray(v, np.float64), 0, 1) * (len(_PLASMA) - 1)
    i = np.minimum(v.astype(int), len(_PLASMA) - 2)
    f = (v - i)[..., None]
    return _PLASMA[i] * (1 - f) + _PLASMA[i + 1] * f


def heat_alpha(v) -> np.ndarray:
    """The heat colour's opacity over the dimmed image: 0.15 at 0, 0.9 at the map's max."""
    return 0.15 + 0.75 * np.clip(np.asarray(v, np.float64), 0, 1)


def dim(rgb: np.ndarray) -> np.ndarray:
    """float[H, W, 3]: the image in grey (its luminance), squeezed into 64..192, so that a heat
    map on top is the only colour in the picture."""
    grey = np.asarray(rgb, np.float64)[..., :3] @ np.array([0.299, 0.587, 0.114])
    return np.repeat((64 + grey / 2)[..., None], 3, axis=-1)


def heat_over(rgb: np.ndarray, v: np.ndarray) -> np.ndarray:
    """uint8[H, W, 3]: values v (float[H, W] in [0, 1]) as heat colours over the dimmed image."""
    a = heat_alpha(v)[..., None]
    return (dim(rgb) * (1 - a) + colormap(v) * a).round().clip(0, 255).astype(np.uint8)


def colour_bar(width: int, top: float, caption: str, size: int = 12) -> Image.Image:
    """The heat scale as it looks over mid-grey, 0 .. `top`, with numbers under it."""
    bar_h, fnt = 14, font(size)
    v = np.linspace(0, 1, width)[None].repeat(bar_h, axis=0)
    bar = heat_over(np.full((bar_h, width, 3), 128.0), v)
    out = Image.new("RGB", (width, bar_h + 2 * size + 10), (255, 255, 255))
    out.paste(Image.fromarray(bar), (0, 0))
    draw = ImageDraw.Draw(out)
    for f in (0.0, 0.5, 1.0):
        x = min(width - 1, round(f * width))
        draw.line((x, bar_h, x, bar_h + 3), fill=(0, 0, 0))
        text_at(draw, (x, bar_h + 4), f"{f * top:.3g}", fnt, align=f)
    text_at(draw, (width // 2, bar_h + size + 7), caption, fnt, align=0.5)
    return out


def wrap(draw: ImageDraw.ImageDraw, text: str, fnt, width: int) -> list[str]:
    """`text` broken at spaces into lines no wider than `width` pixels (a long word stays whole)."""
    lines = [""]
    for word in text.split(" "):
        trial = f"{lines[-1]} {word}".strip()
        if lines[-1] and draw.textlength(trial, font=fnt) > width:
            lines.append(word)
        else:
            lines[-1] = trial
    return lines


def text_at(draw: ImageDraw.ImageDraw, xy, text: str, fnt, align: float = 0.0, fill=(0, 0, 0)) -> None:
    """Black text whose top edge is at y and whose left (align 0), middle (0.5) or right (1)
    is at x (no `anchor=`: Pillow's fallback bitmap font has none)."""
    x0, y0, x1, _ = draw.textbbox((0, 0), text, font=fnt)
    draw.text((xy[0] - x0 - align * (x1 - x0), xy[1] - y0), text, fill=fill, font=fnt)
