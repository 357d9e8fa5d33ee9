"""Accuracy of a demo-model checkpoint on fresh scenes, per task (greedy answers).

caption: exact match; color / count / shape: exact answer; detect: per ground-truth object
asked for, the IoU of the predicted box with the same label (0 when missing) — reported as the
mean IoU and the recall at IoU 0.5 — and the fraction of answers naming a shape that is absent.
"""

from __future__ import annotations

import numpy as np

from ..postprocess import parse_objects
from . import scenes


def box_iou(a, b) -> float:
    """IoU of two (x_min, y_min, x_max, y_max) boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def held_out(task: str, count: int, seed: int):
    """`count` (scene, prompt, answer) for one task, from a seed the training never uses."""
    rng = np.random.default_rng([seed, scenes.TASKS.index(task), 7919])
    out = []
    for _ in range(count):
        scene = scenes.draw_scene(rng)
        out.append((scene, *scenes.make_task(scene, task, rng)))
    return out


def detection_scores(examples, answers) -> dict[str, float]:
    ious, phantom = [], 0
    for (scene, prompt, _), text in zip(examples, answers):
        asked = [c.strip() for c in prompt.removeprefix("detect ").split(";")]
        found = parse_objects(text, scenes.IMAGE_SIZE, scenes.IMAGE_SIZE)
        truth = {o.shape: o.box for o in scene.objects}
        for label in asked:
            if label in truth:
                boxes = [o.box for o in found if o.label == label]
                ious.append(max((box_iou(b, truth[label]) for b in boxes), default=0.0))
        phantom += any(o.label not in truth for o in found)
    ious = np.array(ious)
    return {"detect_iou": float(ious.mean()), "detect_recall50": float((ious >= 0.5).mean()),
            "detect_phantom": phantom / len(examples)}


def evaluate_pipeline(pipe, per_task: int, seed: int = 10_000, batch: int = 50,
                      progress=None, keep_answers: bool = False) -> dict:
    """Scores per task for a loaded `npgemma.Pipeline` on `per_task` fresh scenes each
    (with keep_answers, also every answer under "answers")."""
    scores, kept = {}, []
    for task in scenes.TASKS:
        examples = held_out(task, per_task, seed)
        answers = []
        for i in range(0, len(examples), batch):
            chunk = examples[i:i + batch]
            outs = pipe.generate_batch([s.image for s, _, _ in chunk], [p for _, p, _ in chunk],
                                       max_new_tokens=48)
            answers += [o.text for o in outs]
            if progress:
                progress(len(chunk))
        kept += answers
        if task == "detect":
            scores |= detection_scores(examples, answers)
        else:
            scores[task] = float(np.mean([a.strip() == t for (_, _, t), a in zip(examples, answers)]))
    return scores | ({"answers": kept} if keep_answers else {})


def evaluate(params, cfg, processor, backend: str, device: str, per_task: int, seed: int = 10_000):
    """`evaluate_pipeline` over an in-memory weight tree (used during training)."""
    from ..backend import get_backend
    from ..pipeline import Pipeline

    return evaluate_pipeline(Pipeline(cfg, params, processor, get_backend(backend, device=device)),
                             per_task, seed)
