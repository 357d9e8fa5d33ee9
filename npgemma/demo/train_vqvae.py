"""Train the demo VQ-VAE: `python -m npgemma.demo.train_vqvae [--out npgemma/demo/vae/demo-vae.npz]`.

PaliGemma's mask VQ-VAE architecture (`npgemma.vqvae`) at small widths, trained on the scene
generator's shape masks, written in the vae-oid.npz key layout so the same loader and decoder
serve the demo and real checkpoints. The model is the torch twin's own functions
(`npgemma.torch_backend.vqvae`) with autograd through them.

Data: every shape in boxes of every width × height the generator can draw (square boxes, as
scenes use, and stretched ones, so the codebook covers more than the scenes need), each mask
cropped to its box and resized to 64×64 as big_vision's `refcoco_mask2str` does. Masks are
translation invariant in whole pixels, so this family is finite: shape × width × height.

Loss (van den Oord et al., VQ-VAE): MSE of the decoder output against the mask mapped to
[-1, 1], plus the codebook term |sg(z) - e|² and 0.25 × the commitment term |z - sg(e)|²,
straight-through gradients into the encoder. Codes unused for `--restart-every` steps are
re-seeded from encoder outputs of the current batch, so all 128 codes stay in use.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from .. import vqvae
from ..checkpoint.bundled import vae_path
from ..checkpoint.vae_file import check_vae
from ..synthetic.vae import random_vae
from ..torch_backend import vqvae as tv
from . import scenes
from .masks import box_crop

SIZES = dict(num_codes=128, code_dim=16, width=24, encoder_kernel=4)


def mask_family() -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    """float32[M, 64, 64] box-cropped masks of every (shape, width, height), and their labels."""
    out, labels = [], []
    for shape in scenes.SHAPES:
        for w in range(scenes.MIN_SIZE, scenes.MAX_SIZE + 1):
            for h in range(scenes.MIN_SIZE, scenes.MAX_SIZE + 1):
                obj = scenes.SceneObject(shape, "red", (1, 2, 1 + w, 2 + h))
                out.append(box_crop(scenes.object_mask(obj), obj.box))
                labels.append((shape, w, h))
    return np.stack(out), labels


def scene_masks(count: int, seed: int) -> np.ndarray:
    """float32[N, 64, 64]: box-cropped masks of the objects of `count` fresh scenes."""
    rng = np.random.default_rng([seed, 104729])
    out = []
    for _ in range(count):
        scene = scenes.draw_scene(rng)
        out += [box_crop(m, o.box) for o, m in zip(scene.objects, scene.masks)]
    return np.stack(out)


def reconstruction_iou(vae: dict, masks: np.ndarray) -> np.ndarray:
    """Per-mask IoU of decode(encode(mask)) > 0 with mask > 1/2, on the 64×64 grid (NumPy path)."""
    rec = vqvae.decode(vae, vqvae.encode(vae, masks)) > 0
    truth = masks > 0.5
    inter, union = (rec & truth).sum((1, 2)), (rec | truth).sum((1, 2))
    return inter / np.maximum(union, 1)


def pixel_iou(vae: dict, count: int, seed: int) -> np.ndarray:
    """Per object of `count` fresh scenes: IoU in image pixels of its true codes, decoded and
    placed in its box (`postprocess.mask_in_image`), with its mask — the best a model that
    writes the right tokens can score."""
    from ..generation.postprocess import mask_in_image
    from .evaluate import mask_iou
    from .masks import seg_codes

    rng = np.random.default_rng([seed, 15485863])
    out = []
    for _ in range(count):
        scene = scenes.draw_scene(rng)
        for obj, truth in zip(scene.objects, scene.masks):
            m64 = vqvae.decode(vae, seg_codes(obj, vae)[None])[0]
            out.append(mask_iou(mask_in_image(m64, obj.box, scenes.IMAGE_SIZE, scenes.IMAGE_SIZE), truth))
    return np.array(out)


def train(args) -> dict[str, np.ndarray]:
    from tqdm import tqdm

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    data = torch.from_numpy(mask_family()[0])
    params = {k: torch.from_numpy(v).requires_grad_() for k, v in random_vae(args.seed, **SIZES).items()}
    opt = torch.optim.Adam(params.values(), lr=args.lr)
    table = params[vqvae.EMBEDDING]
    used = torch.zeros(table.shape[0], dtype=torch.bool)
    bar = tqdm(range(args.steps), desc="demo VQ-VAE", unit="step", disable=args.quiet or None,
               dynamic_ncols=True, file=sys.stderr)
    for step in bar:
        lr = args.lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / args.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = data[torch.from_numpy(rng.integers(0, len(data), args.batch))]
        z = tv.encode_features(params, batch)                        # [B, 4, 4, D]
        codes = tv.nearest_codes(params, z.detach())                 # [B, 16]
        e = table[codes].reshape(z.shape)                            # [B, 4, 4, D]
        zq = z + (e - z).detach()                                    # straight-through
        recon = tv.decode_grid(params, zq)
        loss_rec = ((recon - (2 * batch - 1)) ** 2).mean()
        loss = loss_rec + ((z.detach() - e) ** 2).mean() + 0.25 * ((z - e.detach()) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        used[codes.flatten()] = True
        if (step + 1) % args.restart_every == 0 and step + 1 < args.steps * 0.8:
            dead = (~used).nonzero().flatten()
            if len(dead):
                pool = z.detach().reshape(-1, z.shape[-1])
                with torch.no_grad():
                    table[dead] = pool[torch.randint(len(pool), (len(dead),))] + 0.01 * torch.randn(len(dead), z.shape[-1])
            used.zero_()
        if step % 20 == 0:
            bar.set_postfix(rec=f"{float(loss_rec.detach()):.4f}", lr=f"{lr:.1e}")
    return {k: v.detach().numpy().astype(np.float32) for k, v in params.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m npgemma.demo.train_vqvae", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=vae_path())
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--restart-every", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    weights = train(args)
    vae = check_vae(weights, "trained demo VQ-VAE")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **vae)
    family, fresh = reconstruction_iou(vae, mask_family()[0]), reconstruction_iou(vae, scene_masks(200, 1))
    pixels = pixel_iou(vae, 200, 2)
    codes_used = len(np.unique(vqvae.encode(vae, mask_family()[0])))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB): reconstruction IoU on the "
          f"64x64 grid: all {len(family)} family masks mean {family.mean():.4f} min {family.min():.4f}; "
          f"objects of 200 fresh scenes mean {fresh.mean():.4f} min {fresh.min():.4f}; in image "
          f"pixels (true codes, placed in the box) mean {pixels.mean():.4f} min {pixels.min():.4f}; "
          f"{codes_used} distinct codes in use")
    return 0


if __name__ == "__main__":
    sys.exit(main())
