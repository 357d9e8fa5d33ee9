"""Measure load time, vision + prefill time, ms/token and peak RSS, backends side by side.

    python benchmarks/bench_generate.py --model /tmp/pg1-3b-224 --backends numpy,torch
    python benchmarks/bench_generate.py --make paligemma-3b-pt-224 --out /tmp/pg1-3b-224

Each backend runs in its own process so its peak RSS is its own. `--make` first writes a
full-size random checkpoint with benchmarks/make_checkpoint.py (never commit it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

# Runnable from a checkout without installing: the repo root goes on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _one(model: str, backend: str, dtype: str, device: str, new_tokens: int, prompt: str,
         quiet: bool) -> dict:
    """Time one backend in this process; return a JSON-able row."""
    from PIL import Image

    import npgemma
    from npgemma.generate import GenerationConfig, generate_tokens
    from npgemma.progress import bar, weights_progress

    t0 = time.perf_counter()
    pipe = npgemma.load(model, backend=backend, device=device, dtype=dtype,
                        progress=weights_progress(f"[{backend}] loading weights", quiet=quiet))
    load_s = time.perf_counter() - t0
    size = pipe.cfg.vision_config.image_size
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    image = Image.fromarray(np.stack([np.add.outer(ramp, ramp) / 2] * 3, -1).astype(np.uint8))
    inputs = pipe.processor(image, prompt)
    gen = GenerationConfig(max_new_tokens=new_tokens)
    stamps = [time.perf_counter()]
    tokens = []
    with bar(new_tokens, f"[{backend}] generating", unit="token", quiet=quiet) as progress:
        for tok in generate_tokens(pipe.backend, pipe.params, pipe.cfg, inputs.input_ids[None],
                                   inputs.pixel_values[None], gen):
            stamps.append(time.perf_counter())  # the first stamp after start = vision + prefill
            tokens.append(int(tok[0]))
            progress.update()
    steps = np.diff(stamps)
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    return {"backend": backend, "dtype": dtype, "device": device, "load_s": load_s,
            "prefill_s": float(steps[0]), "prompt_tokens": int(inputs.input_ids.shape[0]),
            "ms_per_token": float(1000 * steps[1:].mean()) if len(steps) > 1 else float("nan"),
            "decode_tokens": len(steps) - 1, "peak_rss_gb": rss_gb, "tokens": tokens}


def _make(name: str, out: str) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("make_checkpoint", os.path.join(here, "make_checkpoint.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.write_random_checkpoint(name, out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint folder")
    ap.add_argument("--make", help="write this named random checkpoint first (see make_checkpoint.py --list)")
    ap.add_argument("--out", help="where --make writes (default: a temp folder)")
    ap.add_argument("--backends", default="numpy,torch",
                    help="comma list of backend[:dtype[:device]], e.g. numpy,numpy:bfloat16,torch:bfloat16")
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--prompt", default="caption en")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="no progress bars on stderr")
    ap.add_argument("--single", help=argparse.SUPPRESS)  # internal: one backend in this process
    args = ap.parse_args()

    if args.single:
        parts = args.single.split(":")
        backend, dtype, device = parts + ["float32", "cpu"][len(parts) - 1:]
        print(json.dumps(_one(args.model, backend, dtype, device, args.new_tokens, args.prompt,
                              args.quiet)))
        return 0
    model = args.model
    if args.make:
        model = args.out or tempfile.mkdtemp(prefix=f"{args.make}-")
        t0 = time.perf_counter()
        _make(args.make, model)
        print(f"wrote {args.make} to {model} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    if not model:
        ap.error("--model or --make is required")

    rows = []
    for spec in args.backends.split(","):
        print(f"running {spec} ...", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, __file__, "--model", model, "--single", spec,
                              "--new-tokens", str(args.new_tokens), "--prompt", args.prompt,
                              *(["--quiet"] if args.quiet else [])],
                             stdout=subprocess.PIPE, text=True)
        if out.returncode:
            print(f"{spec}: failed (exit {out.returncode})", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if not rows:
        return 1
    if args.json:
        print(json.dumps(rows))
        return 0
    base = rows[0]
    print(f"model {model}, {base['prompt_tokens']} prompt tokens, {args.new_tokens} new tokens, "
          f"{os.cpu_count()} CPUs, torch threads = CPUs")
    print(f"{'backend':<24} {'load s':>8} {'prefill s':>10} {'ms/token':>10} {'x first':>8} {'peak RSS GB':>12}")
    for r in rows:
        name = f"{r['backend']}:{r['dtype']}:{r['device']}"
        print(f"{name:<24} {r['load_s']:>8.1f} {r['prefill_s']:>10.2f} {r['ms_per_token']:>10.0f} "
              f"{base['ms_per_token'] / r['ms_per_token']:>8.2f} {r['peak_rss_gb']:>12.2f}")
    same = all(r["tokens"] == base["tokens"] for r in rows)
    print(f"greedy tokens identical across backends: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
