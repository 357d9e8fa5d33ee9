"""`python -m npgemma.synthetic.random_model DIR`: a tiny *random* PaliGemma checkpoint and an
example image — a test fixture (the CLI, memory, segmentation and wheel tests use it).

The weights are random, so the "caption" is gibberish; what it shows is that the whole path —
loading, processing, the vision tower, prefill, decoding, streaming — runs end to end. (The
trained model to try npgemma with is the bundled one: `npgemma demo`.)
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .checkpoint import tiny_config, write_checkpoint


def example_image(size: int = 64) -> np.ndarray:
    """uint8[size, size, 3]: a red square on a blue-to-yellow diagonal gradient."""
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    t = (ramp[:, None] + ramp[None, :]) / 2  # [S, S], 0 at the top left, 1 at the bottom right
    rgb = np.stack([t, t, 1 - t], axis=-1) * 255  # [S, S] -> [S, S, 3]
    lo, hi = size // 4, 3 * size // 4
    rgb[lo:hi, lo:hi] = (220, 30, 30)
    return rgb.round().astype(np.uint8)


def write_demo(folder: str | Path) -> tuple[Path, Path]:
    """Write the checkpoint and `example.png` into `folder`; return (folder, image path)."""
    folder = write_checkpoint(folder, tiny_config(), layout="hub")
    image = folder / "example.png"
    Image.fromarray(example_image()).save(image)
    return folder, image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m npgemma.synthetic.random_model",
                                     description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("dir", help="folder to write (created if missing)")
    folder, image = write_demo(parser.parse_args(argv).dir)
    print(f"wrote a tiny random PaliGemma checkpoint to {folder} "
          "(random weights: expect gibberish)")
    print("try:")
    print(f"  npgemma generate --model {shlex.quote(str(folder))} "
          f"--image {shlex.quote(str(image))} --prompt \"caption en\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
