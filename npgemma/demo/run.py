"""`npgemma demo`: draw a scene, ask the bundled model about it, show answers beside the truth.

The scene comes from the same generator the model was trained on, with a seed of your choice
(seeds are never the training stream's: training draws from `default_rng([seed, step])`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..generation.postprocess import draw_objects, parse_objects
from . import scenes, tasks

SHOW_SCALE = 4  # the 64-pixel scene is drawn 4x larger in the picture


def questions(scene: scenes.Scene, rng: np.random.Generator, segment: bool) -> list[tuple[str, str]]:
    """(prompt, ground truth): a caption, a colour and a count question, a detection of every
    shape, and (with a VQ-VAE) the segmentation of one."""
    asked = [o.shape for o in scene.objects]
    out = [tasks.make_task(scene, "caption", rng), tasks.make_task(scene, "color", rng),
           tasks.make_task(scene, "count", rng),
           ("detect " + " ; ".join(asked), tasks.detect_answer(scene, asked))]
    return out + [tasks.make_task(scene, "segment", rng)] if segment else out


def _mask_verdict(pipe, scene: scenes.Scene, prompt: str, answer: str) -> str:
    from .evaluate import mask_iou

    label = prompt.removeprefix("segment ").strip()
    truth = next(o for o in scene.objects if o.shape == label)
    found = [o for o in pipe.objects(answer, scenes.IMAGE_SIZE, scenes.IMAGE_SIZE)
             if o.label == label and o.mask is not None]
    iou = mask_iou(found[0].mask, scenes.object_mask(truth)) if found else 0.0
    return f"{'ok' if iou >= 0.5 else 'WRONG'} (mask IoU {iou:.2f})"


def _verdict(prompt: str, answer: str, truth: str) -> str:
    if not prompt.startswith("detect"):
        return "ok" if answer.strip() == truth else "WRONG"
    from .evaluate import box_iou

    found = {o.label: o.box for o in parse_objects(answer, scenes.IMAGE_SIZE, scenes.IMAGE_SIZE)}
    true = {o.label: o.box for o in parse_objects(truth, scenes.IMAGE_SIZE, scenes.IMAGE_SIZE)}
    ious = [box_iou(found[k], b) if k in found else 0.0 for k, b in true.items()]
    return ("ok" if min(ious, default=1.0) >= 0.5 and set(found) == set(true) else "WRONG") + \
        " (IoU " + ", ".join(f"{v:.2f}" for v in ious) + ")"


def _short(answer: str) -> str:
    """A segmentation answer with its 16 <seg> tokens elided."""
    import re

    return re.sub(r"((?:<seg\d{3}>){2})(?:<seg\d{3}>){12}((?:<seg\d{3}>){2})", r"\1…\2", answer)


def picture(pipe, scene: scenes.Scene, answers: list[str]) -> Image.Image:
    """The scene enlarged, with the predicted boxes and labels drawn; a segmented object is
    drawn with its mask in place of its detection box."""
    big = Image.fromarray(scene.image).resize((scenes.IMAGE_SIZE * SHOW_SCALE,) * 2,
                                              Image.Resampling.NEAREST)
    found = {}
    for text in answers:  # the detection first, then the segmentation replaces its object
        objs = (pipe.objects(text, big.width, big.height) if pipe.vae is not None
                else parse_objects(text, big.width, big.height))
        found |= {o.label: o for o in objs}
    return draw_objects(big, list(found.values()), color=(255, 255, 255))


def run(pipe, seed: int, out: str | None, print_fn=print) -> int:
    """Print each prompt, the model's answer and the ground truth; return the number wrong."""
    rng = np.random.default_rng([seed, 0x5EED])
    scene = scenes.draw_scene(rng)
    print_fn(f"scene (seed {seed}): {tasks.caption(scene)} on a {scene.background} background")
    wrong, drawn = 0, []
    for prompt, truth in questions(scene, rng, segment=pipe.vae is not None):
        answer = pipe.generate(scene.image, prompt, max_new_tokens=48).text
        shown = answer
        if prompt.startswith("segment"):
            verdict = _mask_verdict(pipe, scene, prompt, answer)
            shown, truth = _short(answer), _short(truth)  # 4 <loc> + 16 <seg> tokens each
        else:
            verdict = _verdict(prompt, answer, truth)
        wrong += verdict.startswith("WRONG")
        print_fn(f"  {prompt!r}\n      model: {shown!r}\n      truth: {truth!r}   {verdict}")
        if prompt.startswith(("detect", "segment")):
            drawn.append(answer)
    if out:
        picture(pipe, scene, drawn).save(out)
        print_fn(f"wrote {out} (the scene with the model's boxes and mask)")
    return wrong
