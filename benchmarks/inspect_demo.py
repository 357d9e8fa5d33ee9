"""Does the demo model look at what it is asked about? Rollout on held-out color questions.

    python benchmarks/inspect_demo.py [--model DIR] [--scenes 100] [--seed 10000]
                                      [--record benchmarks/results/inspect_demo.json]

For each held-out scene (`npgemma.demo.evaluate.held_out("color", ...)`, never seen in training)
the question `answer en what color is the <shape> ?` is traced (one greedy token: colours are one
word) and the image patch with the highest score for the answer token is located, for three
maps: the rollout carried on through SigLIP to the input patches (`analysis.pixel_rollout`), the
decoder-only rollout onto the image tokens, and the last layer's mean attention. A hit is a top
patch whose centre lies inside the asked shape's box. Prints one JSON object: hit rates per map,
the answer accuracy, and the chance rate (the mean share of patch centres inside the box).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

import npgemma
from npgemma.demo import evaluate, scenes
from npgemma.inspection import analysis
from npgemma.inspection.trace import trace

NAMES = ["vision.blocks.*.attn.hook_pattern", "decoder.blocks.*.attn.hook_pattern",
         "decoder.blocks.*.hook_resid_post"]


def inside(box, grid: int, size: int) -> np.ndarray:
    """bool[grid, grid]: which patch centres lie inside box (x_min, y_min, x_max, y_max)."""
    c = (np.arange(grid) + 0.5) * size / grid
    x0, y0, x1, y1 = box
    return ((c[:, None] >= y0) & (c[:, None] < y1)) & ((c[None, :] >= x0) & (c[None, :] < x1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="default: the bundled demo model")
    ap.add_argument("--scenes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=10_000)
    ap.add_argument("--record", metavar="FILE",
                    help="write the rates with the machine, versions and this command "
                         "(benchmarks/record.py), e.g. benchmarks/results/inspect_demo.json")
    args = ap.parse_args(argv)
    if args.model is None:
        from npgemma.checkpoint.bundled import model_dir
        args.model = str(model_dir())
    pipe = npgemma.load(args.model)
    hits = {"pixel_rollout": 0, "decoder_rollout": 0, "last_layer_attention": 0}
    correct, chance = 0, []
    examples = evaluate.held_out("color", args.scenes, args.seed)
    for n, (scene, prompt, answer) in enumerate(examples, 1):
        shape = prompt.removeprefix("answer en what color is the ").removesuffix(" ?")
        box = next(o.box for o in scene.objects if o.shape == shape)
        t = trace(pipe, scene.image, prompt, names=NAMES, max_new_tokens=1)
        correct += t.text.strip() == answer
        ok = inside(box, t.grid, scenes.IMAGE_SIZE)
        chance.append(ok.mean())
        maps = {"pixel_rollout": analysis.pixel_rollout(t)[0],
                "decoder_rollout": analysis.decoder_rollout(t)[-1, 0],
                "last_layer_attention": analysis.image_attention(t)[-1, 0]}
        for k, m in maps.items():
            hits[k] += bool(ok.flat[int(np.argmax(m))])
        if n % 10 == 0:
            print(f"{n}/{len(examples)} scenes", file=sys.stderr, flush=True)
    count = len(examples)
    rates = {"model": args.model, "scenes": count,
             **{f"hit_{k}": v / count for k, v in hits.items()},
             "answer_accuracy": correct / count, "chance": float(np.mean(chance))}
    print(json.dumps(rates))
    if args.record:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from record import write

        rates["model"] = os.path.relpath(args.model)  # not this machine's absolute path
        write(args.record, "inspect_demo.py", {**rates, **{
            f"{k}_pct": 100 * v for k, v in rates.items() if isinstance(v, float)}}, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
