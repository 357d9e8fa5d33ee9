"""Make a trained demo folder the shipped model: its weights in bfloat16 (9 MB instead of 18; both
backends compute in float32 from them, and widening bf16 is exact), its configs and tokenizer
copied, the training step kept in the safetensors metadata.

    python -m npgemma.demo.ship checkpoints/demo/model [--to npgemma/demo/model]

Then re-measure (`python benchmarks/eval_demo.py`) and update the README's table and the floor
in tests/test_demo_model.py.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from ..checkpoint.bundled import model_dir


def ship(src: Path, dst: Path) -> int:
    """Write src's model as bfloat16 into dst; returns the training step it records."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    weights = src / "model.safetensors"
    if not weights.is_file():
        raise SystemExit(f"ship: {weights} does not exist (a folder written by npgemma.demo.train)")
    with safe_open(str(weights), "pt") as f:
        metadata = f.metadata() or {}
    tensors = {k: v.to(torch.bfloat16) for k, v in load_file(str(weights)).items()}
    dst.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dst / "model.safetensors"), metadata=metadata)
    for f in src.iterdir():  # configs and tokenizer, whatever the trainer wrote beside the weights
        if f.is_file() and f.name != weights.name:
            shutil.copyfile(f, dst / f.name)
    return int(metadata.get("npgemma_demo_step", -1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="a model folder written by npgemma.demo.train")
    ap.add_argument("--to", type=Path, default=model_dir(), help="default: the package's model")
    args = ap.parse_args(argv)
    step = ship(args.src, args.to)
    print(f"shipped {args.src} (step {step}) -> {args.to}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
