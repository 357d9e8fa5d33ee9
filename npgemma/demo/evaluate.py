"""Accuracy of a demo-model checkpoint on fresh scenes, per task (greedy answers).

caption: exact match; color / count / shape: exact answer; detect: per ground-truth object
asked for, the IoU of the predicted box with the same label (0 when missing) — reported as the
mean IoU and the recall at IoU 0.5 — and the fraction of answers naming a shape that is absent;
segment: per scene, the IoU in image pixels of the predicted mask of the asked shape (its
`<seg>` codes through the demo VQ-VAE, placed in its box as big_vision's evaluator does) with
the object's true mask (0 when missing) — the mean is `segment_miou` — and the IoU of its box.
"""

from __future__ import annotations

import numpy as np

from ..generation.postprocess import parse_objects
from . import scenes, tasks
from . import tasks as task_set  # evaluate_pipeline's `tasks` parameter hides the module


def box_iou(a, b) -> float:
    """IoU of two (x_min, y_min, x_max, y_max) boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def held_out(task: str, count: int, seed: int):
    """`count` (scene, prompt, answer) for one task, from a seed the training never uses."""
    rng = np.random.default_rng([seed, tasks.TASKS.index(task), 7919])
    out = []
    for _ in range(count):
        scene = scenes.draw_scene(rng)
        out.append((scene, *tasks.make_task(scene, task, rng)))
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


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 0.0


def segmentation_scores(examples, answers, pipe) -> dict[str, float]:
    mious, box_ious = [], []
    for (scene, prompt, _), text in zip(examples, answers):
        label = prompt.removeprefix("segment ").strip()
        (obj,) = [o for o in scene.objects if o.shape == label]
        found = [o for o in pipe.objects(text, scenes.IMAGE_SIZE, scenes.IMAGE_SIZE)
                 if o.label == label and o.mask is not None]
        truth = scenes.object_mask(obj)
        mious.append(mask_iou(found[0].mask, truth) if found else 0.0)
        box_ious.append(box_iou(found[0].box, obj.box) if found else 0.0)
    return {"segment_miou": float(np.mean(mious)), "segment_box_iou": float(np.mean(box_ious))}


def evaluate_pipeline(pipe, per_task: int, seed: int = 10_000, batch: int = 50,
                      progress=None, keep_answers: bool = False, tasks=None) -> dict:
    """Scores per task for a loaded `npgemma.Pipeline` on `per_task` fresh scenes each
    (`tasks`: default every task, `segment` only when the pipeline has a VQ-VAE; with
    keep_answers, also every answer under "answers")."""
    if tasks is None:
        tasks = [t for t in task_set.TASKS if t != "segment" or pipe.vae is not None]
    scores, kept = {}, []
    for task in tasks:
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
        elif task == "segment":
            scores |= segmentation_scores(examples, answers, pipe)
        else:
            scores[task] = float(np.mean([a.strip() == t for (_, _, t), a in zip(examples, answers)]))
    return scores | ({"answers": kept} if keep_answers else {})


def evaluate(params, cfg, processor, backend: str, device: str, per_task: int, seed: int = 10_000,
             tasks=None):
    """`evaluate_pipeline` over an in-memory weight tree (used during training), with the
    shipped demo VQ-VAE when `segment` is among the tasks."""
    from ..generation.backend import get_backend
    from ..pipeline import Pipeline

    be = get_backend(backend, device=device)
    vae = None
    if tasks is None or "segment" in tasks:
        from .masks import demo_vae

        vae = be.from_numpy(demo_vae())
    return evaluate_pipeline(Pipeline(cfg, params, processor, be, vae), per_task, seed, tasks=tasks)


def main(argv=None) -> int:
    """`python -m npgemma.demo.evaluate --model DIR [--vae PATH] [--per-task 200] [--tasks ...]`."""
    import argparse
    import json
    import sys

    from tqdm import tqdm

    from ..checkpoint.bundled import vae_path
    from ..pipeline import load

    p = argparse.ArgumentParser(prog="python -m npgemma.demo.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="demo-model folder (HF layout)")
    p.add_argument("--vae", default=str(vae_path()), help="VQ-VAE for segment (default: the shipped one)")
    p.add_argument("--per-task", type=int, default=200, help="fresh scenes per task")
    p.add_argument("--tasks", default=",".join(tasks.TASKS), help="comma-separated tasks")
    p.add_argument("--seed", type=int, default=10_000)
    p.add_argument("--backend", default="numpy", choices=["numpy", "torch"])
    args = p.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    pipe = load(args.model, backend=args.backend, vae=args.vae)
    with tqdm(total=args.per_task * len(tasks), unit="scene", file=sys.stderr) as bar:
        scores = evaluate_pipeline(pipe, args.per_task, args.seed, progress=bar.update, tasks=tasks)
    print(json.dumps({k: round(v, 4) for k, v in scores.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
