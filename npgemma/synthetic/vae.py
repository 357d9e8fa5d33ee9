"""Random VQ-VAE weights in the `vae-oid.npz` key layout (for tests and size checks).

`python -m npgemma.synthetic.vae OUT.npz [--full]` writes one. `--full` uses the sizes of
PaliGemma's vae-oid.npz: 128 codes of width 512, decoder width 128 halving to 16 on the way up,
the encoder 1 -> 16 -> 32 -> 64 -> 128 with 4×4 stride-2 kernels. (The loader reads every size
from the file, so nothing depends on these numbers being exactly the released ones.)
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

FULL = dict(num_codes=128, code_dim=512, width=128, encoder_kernel=4)


def vae_shapes(num_codes: int = 32, code_dim: int = 8, width: int = 16,
               encoder_kernel: int = 4) -> dict[str, tuple[int, ...]]:
    """Every key of the layout with its shape, for a decoder of `width` (divisible by 8)."""
    shapes: dict[str, tuple[int, ...]] = {"_vq_vae._embedding": (num_codes, code_dim)}

    def conv(name, o, c, k):
        shapes[name + ".weight"], shapes[name + ".bias"] = (o, c, k, k), (o,)

    def res(name, c):
        conv(name + ".0", c, c, 3), conv(name + ".2", c, c, 3), conv(name + ".4", c, c, 1)

    conv("decoder.0", width, code_dim, 1)
    res("decoder.2.net", width), res("decoder.3.net", width)
    ups = [width, width, width // 2, width // 4, width // 8]
    for i, (c, o) in enumerate(zip(ups, ups[1:])):  # transposed: weight [C, O, 4, 4]
        shapes[f"decoder.{4 + 2 * i}.weight"], shapes[f"decoder.{4 + 2 * i}.bias"] = (c, o, 4, 4), (o,)
    conv("decoder.12", 1, width // 8, 1)
    downs = [1, width // 8, width // 4, width // 2, width]
    for i, (c, o) in enumerate(zip(downs, downs[1:])):
        conv(f"encoder.{2 * i}", o, c, encoder_kernel)
    res("encoder.8.net", width), res("encoder.9.net", width)
    conv("encoder.10", code_dim, width, 1)
    return shapes


def random_vae(seed: int = 0, **sizes) -> dict[str, np.ndarray]:
    """Fan-in scaled normal weights (activations stay O(1) through the 14 layers), small biases."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in vae_shapes(**sizes).items():
        if key.endswith(".bias"):
            out[key] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        elif len(shape) == 4:
            transposed = key.startswith("decoder.") and int(key.split(".")[1]) in (4, 6, 8, 10)
            fan_in = shape[0 if transposed else 1] * shape[2] * shape[3] / (4 if transposed else 1)
            out[key] = (rng.standard_normal(shape) * (2.0 / fan_in) ** 0.5).astype(np.float32)
        else:
            out[key] = rng.standard_normal(shape).astype(np.float32)
    return out


def write_vae(path, seed: int = 0, **sizes) -> None:
    np.savez(path, **random_vae(seed, **sizes))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m npgemma.synthetic.vae", description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--full", action="store_true", help="the sizes of PaliGemma's vae-oid.npz")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    write_vae(args.out, args.seed, **(FULL if args.full else {}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
