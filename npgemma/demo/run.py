"""`npgemma demo`: draw a scene, ask the bundled model about it, show answers beside the truth.

The scene comes from the same generator the model was trained on, with a seed of your choice
(seeds are never the training stream's: training draws from `default_rng([seed, step])`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..postprocess import draw_objects, parse_objects
from . import scenes

SHOW_SCALE = 4  # the 64-pixel scene is drawn 4x larger in the picture


def questions(scene: scenes.Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    """(prompt, ground truth): a caption, a colour and a count question, and a detection."""
    asked = [o.shape for o in scene.objects]
    return [scenes.make_task(scene, "caption", rng), scenes.make_task(scene, "color", rng),
            scenes.make_task(scene, "count", rng),
            ("detect " + " ; ".join(asked), scenes.detect_answer(scene, asked))]


def _verdict(prompt: str, answer: str, truth: str) -> str:
    if not prompt.startswith("detect"):
        return "ok" if answer.strip() == truth else "WRONG"
    from .evaluate import box_iou

    found = {o.label: o.box for o in parse_objects(answer, scenes.IMAGE_SIZE, scenes.IMAGE_SIZE)}
    true = {o.label: o.box for o in parse_objects(truth, scenes.IMAGE_SIZE, scenes.IMAGE_SIZE)}
    ious = [box_iou(found[k], b) if k in found else 0.0 for k, b in true.items()]
    return ("ok" if min(ious, default=1.0) >= 0.5 and set(found) == set(true) else "WRONG") + \
        " (IoU " + ", ".join(f"{v:.2f}" for v in ious) + ")"


def picture(scene: scenes.Scene, detection: str) -> Image.Image:
    """The scene enlarged, with the predicted boxes and labels drawn."""
    big = Image.fromarray(scene.image).resize((scenes.IMAGE_SIZE * SHOW_SCALE,) * 2,
                                              Image.Resampling.NEAREST)
    return draw_objects(big, parse_objects(detection, big.width, big.height), color=(255, 255, 255))


def run(pipe, seed: int, out: str | None, print_fn=print) -> int:
    """Print each prompt, the model's answer and the ground truth; return the number wrong."""
    rng = np.random.default_rng([seed, 0x5EED])
    scene = scenes.draw_scene(rng)
    print_fn(f"scene (seed {seed}): {scenes.caption(scene)} on a {scene.background} background")
    wrong, detection = 0, ""
    for prompt, truth in questions(scene, rng):
        answer = pipe.generate(scene.image, prompt, max_new_tokens=48).text
        verdict = _verdict(prompt, answer, truth)
        wrong += verdict.startswith("WRONG")
        print_fn(f"  {prompt!r}\n      model: {answer!r}\n      truth: {truth!r}   {verdict}")
        if prompt.startswith("detect"):
            detection = answer
    if out:
        picture(scene, detection).save(out)
        print_fn(f"wrote {out} (the scene with the model's boxes)")
    return wrong
