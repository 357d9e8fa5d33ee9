"""Procedurally drawn scenes with ground truth (the prompts and answers over them: `tasks.py`).

A scene is 1-3 shapes (circle, square, triangle, star) in distinct colours and distinct kinds,
on a plain, gradient or noise background. Shapes never overlap, so every object is whole, the
boxes are exact and each question has one answer. Positions and sizes are whole pixels of the
64-pixel image: the box of a shape is exactly where its pixels are, and its `<loc>` bins are
exact multiples of 1024 / 64 = 16 (detection then has a learnable, unambiguous target).

Each object's mask (`object_mask`, `Scene.masks`) is its drawn coverage > 1/2: the same
supersampled drawing as the image, so mask and pixels agree. Masks use no randomness, so
adding them changed no scene and no earlier task's draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64                     # pixels; the model sees exactly this (no resize)
SUPERSAMPLE = 4                     # drawn at 4x and box-filtered down: anti-aliased edges
SHAPES = ("circle", "square", "triangle", "star")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 90, 230),
          "yellow": (240, 210, 30), "purple": (150, 60, 200), "orange": (250, 140, 20)}
BACKGROUNDS = ("plain", "gradient", "noise")
MIN_SIZE, MAX_SIZE = 14, 28         # box side in pixels


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    box: tuple[int, int, int, int]   # x_min, y_min, x_max, y_max in pixels (max exclusive)


@dataclass(frozen=True)
class Scene:
    image: np.ndarray                # uint8[64, 64, 3]
    objects: tuple[SceneObject, ...]  # sorted left to right (by x_min, then y_min)
    background: str

    @property
    def masks(self) -> np.ndarray:
        """bool[N, 64, 64]: each object's pixels, in `objects` order."""
        return np.stack([object_mask(o) for o in self.objects])


def _unit_polygon(shape: str) -> list[tuple[float, float]]:
    """The shape's outline in its unit box [0, 1]^2 (touching all four sides)."""
    if shape == "square":
        return [(0, 0), (1, 0), (1, 1), (0, 1)]
    if shape == "triangle":
        return [(0.5, 0), (1, 1), (0, 1)]
    if shape == "star":  # five points, stretched to touch the box on every side
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        pts = (pts - pts.min(0)) / (pts.max(0) - pts.min(0))
        return [tuple(p) for p in pts]
    raise ValueError(f"no polygon for {shape!r}")


def _draw_shape(draw: ImageDraw.ImageDraw, obj: SceneObject, fill=None) -> None:
    """Fill the shape exactly over its box, in supersampled coordinates (in its colour, or `fill`)."""
    x0, y0, x1, y1 = (v * SUPERSAMPLE for v in obj.box)
    fill = COLORS[obj.color] if fill is None else fill
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
        return
    w, h = x1 - x0 - 1, y1 - y0 - 1
    draw.polygon([(x0 + u * w, y0 + v * h) for u, v in _unit_polygon(obj.shape)], fill=fill)


def object_coverage(obj: SceneObject) -> np.ndarray:
    """float32[64, 64] in [0, 1]: the fraction of each pixel the shape covers (as drawn)."""
    canvas = Image.new("L", (IMAGE_SIZE * SUPERSAMPLE,) * 2, 0)
    _draw_shape(ImageDraw.Draw(canvas), obj, fill=255)
    small = canvas.resize((IMAGE_SIZE, IMAGE_SIZE), resample=Image.Resampling.BOX)
    return np.asarray(small, np.float32) / np.float32(255)


def object_mask(obj: SceneObject) -> np.ndarray:
    """bool[64, 64]: the object's pixels (coverage above one half)."""
    return object_coverage(obj) > 0.5


def _background(kind: str, rng: np.random.Generator) -> np.ndarray:
    """float32[S, S, 3] in 0..255: muted colours, never as saturated as a shape."""
    s = IMAGE_SIZE * SUPERSAMPLE
    base = rng.uniform(70, 200) + rng.uniform(-25, 25, size=3)
    if kind == "plain":
        return np.broadcast_to(base, (s, s, 3)).astype(np.float32)
    if kind == "gradient":
        other = rng.uniform(70, 200) + rng.uniform(-25, 25, size=3)
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.linspace(-1, 1, s, dtype=np.float32)
        t = (np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]) / 2 ** 0.5 + 0.5
        return (base * (1 - t[..., None]) + other * t[..., None]).astype(np.float32)
    if kind == "noise":  # per-pixel noise at the model's resolution, then upsampled
        noise = rng.uniform(-30, 30, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
        noise = noise.repeat(SUPERSAMPLE, 0).repeat(SUPERSAMPLE, 1)
        return (base + noise).astype(np.float32)
    raise ValueError(f"unknown background {kind!r}; choose one of {BACKGROUNDS}")


def _place(rng: np.random.Generator, count: int) -> list[tuple[int, int, int, int]]:
    """`count` non-overlapping boxes (with a 2-pixel gap), whole pixels, inside the image."""
    for _ in range(1000):
        boxes: list[tuple[int, int, int, int]] = []
        for _ in range(count):
            side = int(rng.integers(MIN_SIZE, MAX_SIZE + 1))
            x, y = (int(v) for v in rng.integers(0, IMAGE_SIZE - side + 1, size=2))
            box = (x, y, x + side, y + side)
            if all(box[0] >= b[2] + 2 or b[0] >= box[2] + 2 or box[1] >= b[3] + 2
                   or b[1] >= box[3] + 2 for b in boxes):
                boxes.append(box)
        if len(boxes) == count:
            return boxes
    raise RuntimeError(f"could not place {count} shapes")  # never seen for count <= 3


def draw_scene(rng: np.random.Generator, num_objects: int | None = None) -> Scene:
    """A random scene: 1-3 objects of distinct shapes and distinct colours."""
    count = int(rng.integers(1, 4)) if num_objects is None else num_objects
    shapes = rng.choice(SHAPES, size=count, replace=False)
    colors = rng.choice(list(COLORS), size=count, replace=False)
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    objects = [SceneObject(str(s), str(c), b) for s, c, b in zip(shapes, colors, _place(rng, count))]
    objects.sort(key=lambda o: (o.box[0], o.box[1]))
    canvas = Image.fromarray(np.clip(_background(kind, rng), 0, 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        _draw_shape(draw, obj)
    small = canvas.resize((IMAGE_SIZE, IMAGE_SIZE), resample=Image.Resampling.BOX)
    return Scene(np.asarray(small), tuple(objects), kind)


# ---- tasks ----------------------------------------------------------------------------------
