"""Accuracy of the bundled demo model on fresh scenes, per task, on each backend.

    python benchmarks/eval_demo.py [--model DIR] [--scenes 200] [--backends numpy,torch]
                                   [--record benchmarks/results/eval_demo.json]

200 scenes per task from a fixed seed the training never draws from (training draws from
`default_rng([seed, step])`, evaluation from `default_rng([10000, task, 7919])`): caption exact
match, the three VQA question types, detection mean IoU and recall at IoU 0.5 (and the share of
answers naming a shape that is not there), and — when the model has learnt it — segmentation.
Greedy answers; both backends must give identical answers (reported).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # record.py


def main(argv=None) -> int:
    from tqdm import tqdm

    import npgemma
    from npgemma.checkpoint.bundled import model_dir, vae_path
    from npgemma.demo import tasks
    from npgemma.demo.evaluate import evaluate_pipeline

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(model_dir()))
    ap.add_argument("--scenes", type=int, default=200, help="fresh scenes per task")
    ap.add_argument("--vae", default=str(vae_path()), help="VQ-VAE for segment (default: the demo's)")
    ap.add_argument("--backends", default="numpy,torch")
    ap.add_argument("--json", help="also write the scores and every answer to this file")
    ap.add_argument("--record", metavar="FILE",
                    help="write the scores with the machine, versions and this command "
                         "(benchmarks/record.py), e.g. benchmarks/results/eval_demo.json")
    args = ap.parse_args(argv)

    results = {}
    for backend in args.backends.split(","):
        pipe = npgemma.load(args.model, backend=backend, vae=args.vae)
        t0 = time.perf_counter()
        with tqdm(total=args.scenes * len(tasks.TASKS), desc=backend, unit="scene",
                  file=sys.stderr) as bar:
            scores = evaluate_pipeline(pipe, args.scenes, progress=bar.update, keep_answers=True)
        scores["seconds"] = time.perf_counter() - t0
        results[backend] = scores
    answers = {b: r.pop("answers") for b, r in results.items()}
    names = [k for k in next(iter(results.values())) if k != "seconds"]
    same = all(a == next(iter(answers.values())) for a in answers.values())
    print(f"| metric ({args.scenes} fresh scenes per task) | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for k in names:
        print(f"| {k} | " + " | ".join(f"{r[k]:.3f}" for r in results.values()) + " |")
    print("| seconds | " + " | ".join(f"{r['seconds']:.0f}" for r in results.values()) + " |")
    if len(answers) > 1:
        print(f"\ngreedy answers identical across backends: {same}")
    if args.json:  # scores and every answer, so runs on different backends can be compared
        with open(args.json, "w") as f:
            json.dump({"scores": results, "answers": answers}, f, indent=1)
    if args.record:
        from record import write

        write(args.record, "eval_demo.py", {"scenes_per_task": args.scenes, "scores": results,
                                            "answers_identical_across_backends": same}, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
