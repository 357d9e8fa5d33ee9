"""`npgemma demo`: draw a scene, ask the bundled model about it, show answers beside the truth.

The scene comes from the same generator the model was trained on, with a seed of your choice
(seeds are never the training stream's: training draws from `default_rng([seed, step])`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ..generation import drawing
from ..generation.postprocess import draw_objects, parse_objects
from . import scenes, tasks

SHOW_SCALE = 8  # the 64-pixel scene is drawn 8x larger (512 px) in the picture


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


def picture(pipe, scene: scenes.Scene, answers: list[str], prompts: list[str]) -> Image.Image:
    """The scene enlarged (nearest pixels, crisp), each answered object in its own colour with
    its box and label, a segmented object also with its mask; a legend under it says which
    prompt drew what."""
    side = scenes.IMAGE_SIZE * SHOW_SCALE
    big = Image.fromarray(scene.image).resize((side, side), Image.Resampling.NEAREST)
    found = {}
    for text in answers:  # the detection first, then the segmentation replaces its object
        objs = (pipe.objects(text, side, side) if pipe.vae is not None
                else parse_objects(text, side, side))
        found |= {o.label: o for o in objs}
    objects = list(found.values())
    return _with_legend(draw_objects(big, objects), objects, prompts)


def _with_legend(drawn: Image.Image, objects, prompts: list[str]) -> Image.Image:
    """`drawn` above a white strip: an outlined swatch 'box and label: <the detect prompt>'
    and, when a mask was drawn, a striped one 'mask: <the segment prompt>'."""
    fnt, line, sw = drawing.font(18), 24, 36
    masked = [o for o in objects if o.mask is not None]
    rows = [("box", f"box and label: the answer to '{p}'") for p in prompts if p.startswith("detect")]
    rows += [("mask", f"striped mask: the answer to '{p}'") for p in prompts
             if p.startswith("segment") and masked]
    probe = ImageDraw.Draw(drawn)
    wrapped = [(kind, drawing.wrap(probe, text, fnt, drawn.width - sw - 24)) for kind, text in rows]
    height = sum(8 + line * len(lines) for _, lines in wrapped) + 10
    out = Image.new("RGB", (drawn.width, drawn.height + height), (255, 255, 255))
    out.paste(drawn, (0, 0))
    draw = ImageDraw.Draw(out)
    y = drawn.height + 10
    for kind, lines in wrapped:
        sample = (12, y + 1, 12 + sw - 8, y + 19)
        if kind == "box":
            drawing.box(draw, sample, drawing.PALETTE[0], 3)
        else:
            c = drawing.PALETTE[objects.index(masked[0]) % len(drawing.PALETTE)]
            sample_mask = np.zeros((out.height, out.width), bool)
            sample_mask[sample[1]:sample[3], sample[0]:sample[2]] = True
            out.paste(Image.fromarray(drawing.paint_mask(np.asarray(out, np.float32), sample_mask, c,
                                                         0.45, 3).round().astype(np.uint8)))
            draw = ImageDraw.Draw(out)
        for i, text in enumerate(lines):
            drawing.text_at(draw, (sw + 16, y + line * i), text, fnt)
        y += 8 + line * len(lines)
    return out


def run(pipe, seed: int, out: str | None, print_fn=print) -> int:
    """Print each prompt, the model's answer and the ground truth; return the number wrong."""
    rng = np.random.default_rng([seed, 0x5EED])
    scene = scenes.draw_scene(rng)
    print_fn(f"scene (seed {seed}): {tasks.caption(scene)} on a {scene.background} background")
    wrong, drawn, asked = 0, [], []
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
            asked.append(prompt)
    if out:
        picture(pipe, scene, drawn, asked).save(out)
        print_fn(f"wrote {out} (the scene with the model's boxes and mask)")
    return wrong
