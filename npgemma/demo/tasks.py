"""PaliGemma-style tasks over a drawn scene: each a (prompt, answer) pair in PaliGemma's own
prompt language (the answer is what the model is trained to write):

    caption en                          a red circle and a blue square      (objects left to right)
    answer en what color is the circle ?          red
    answer en how many shapes are there ?         2
    answer en what shape is the red object ?      circle
    detect square ; circle              <loc..>x4 square ; <loc..>x4 circle   (in the asked order;
                                                  a class not in the scene gives no entry)
    segment star                        <loc..>x4<seg..>x16 star   (the codes: the demo VQ-VAE's
                                                  encoding of the star's mask, `masks.py`)
"""

from __future__ import annotations

import numpy as np

from .masks import seg_tokens
from .scenes import COLORS, IMAGE_SIZE, SHAPES, Scene

NUMBERS = {1: "1", 2: "2", 3: "3"}  # PaliGemma's VQA answers counts as digits
TASKS = ("caption", "color", "count", "shape", "detect", "segment")  # append only: seeds index it


# Every word a prompt or an answer uses (the demo tokenizer learns each whole).
WORDS = ("caption", "en", "answer", "detect", "segment", "what", "color", "is", "the", "how",
         "many", "shapes", "are", "there", "shape", "object", "a", "an", "and", *SHAPES, *COLORS)


def loc_tokens(box: tuple[int, int, int, int], size: int = IMAGE_SIZE) -> str:
    """PaliGemma's `<locY1><locX1><locY2><locX2>`: bins of 1024 along each axis, max 1023.

    `npgemma.generation.postprocess.parse_objects` maps bin b back to b / 1024 * size pixels, which gives
    the whole-pixel box back exactly (x_max = size clips to bin 1023: 63.94 px for 64).
    """
    x1, y1, x2, y2 = box
    bins = [min(1023, v * 1024 // size) for v in (y1, x1, y2, x2)]
    return "".join(f"<loc{b:04d}>" for b in bins)


def caption(scene: Scene) -> str:
    """`a red circle`, `a red circle and a blue square`, `a red circle, a blue square and ...`."""
    parts = [f"{'an' if o.color[0] in 'aeiou' else 'a'} {o.color} {o.shape}" for o in scene.objects]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def detect_answer(scene: Scene, classes: list[str]) -> str:
    """One `<loc>x4 label` entry per asked class present, in the asked order, joined by ` ; `."""
    by_shape = {o.shape: o for o in scene.objects}
    return " ; ".join(f"{loc_tokens(by_shape[c].box)} {c}" for c in classes if c in by_shape)


def make_task(scene: Scene, task: str, rng: np.random.Generator) -> tuple[str, str]:
    """(prompt, answer) for one of `TASKS` on this scene."""
    if task == "caption":
        return "caption en", caption(scene)
    if task == "count":
        return "answer en how many shapes are there ?", NUMBERS[len(scene.objects)]
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    if task == "color":
        return f"answer en what color is the {obj.shape} ?", obj.color
    if task == "shape":
        return f"answer en what shape is the {obj.color} object ?", obj.shape
    if task == "detect":
        present = [o.shape for o in scene.objects]
        absent = [s for s in SHAPES if s not in present]
        asked = list(rng.choice(present, size=int(rng.integers(1, len(present) + 1)), replace=False))
        if absent and rng.random() < 0.2:  # sometimes ask for a shape that is not there
            asked.insert(int(rng.integers(len(asked) + 1)), str(rng.choice(absent)))
        return "detect " + " ; ".join(asked), detect_answer(scene, [str(a) for a in asked])
    if task == "segment":
        return f"segment {obj.shape}", f"{loc_tokens(obj.box)}{seg_tokens(obj)} {obj.shape}"
    raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
