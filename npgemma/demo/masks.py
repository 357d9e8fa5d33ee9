"""The demo's masks as PaliGemma writes them: a box crop resized to 64×64, encoded by the demo
VQ-VAE (`vae/demo-vae.npz`, the vae-oid.npz layout at small widths) into 16 `<seg>` codes.

The crop follows big_vision's `refcoco_mask2str` (`big_vision/pp/proj/paligemma/segmentation.py`):
the 0/255 mask inside the object's box, resized bilinearly to 64×64, divided by 255, then
`encode_to_codebook_indices`. Scene boxes are whole pixels, so the crop is exact. big_vision
resizes with `tf.image.resize(method="bilinear", antialias=True)`, here PIL's BILINEAR: boxes
are 14-28 pixels, so this is always an upsampling, where both are plain bilinear interpolation
with half-pixel centres (the antialiasing only acts when shrinking).
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from .. import vqvae
from ..checkpoint.bundled import vae_path
from ..checkpoint.vae_file import load_vae
from .scenes import SceneObject, object_mask


@functools.cache
def demo_vae() -> dict[str, np.ndarray]:
    return load_vae(vae_path())


def box_crop(mask: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """float32[64, 64] in [0, 1]: the mask inside `box` (x_min, y_min, x_max, y_max), resized."""
    x1, y1, x2, y2 = box
    crop = Image.fromarray(mask[y1:y2, x1:x2].astype(np.float32) * np.float32(255))
    size = (vqvae.MASK_SIZE, vqvae.MASK_SIZE)
    return np.asarray(crop.resize(size, resample=Image.Resampling.BILINEAR), np.float32) / np.float32(255)


def seg_codes(obj: SceneObject, vae: dict | None = None) -> np.ndarray:
    """int[16]: the VQ-VAE codes of the object's mask."""
    target = box_crop(object_mask(obj), obj.box)
    return vqvae.encode(demo_vae() if vae is None else vae, target[None])[0]


def seg_tokens(obj: SceneObject) -> str:
    """`<segNNN>` × 16 for the object (what the segment task's answer carries after the box)."""
    return "".join(f"<seg{int(c):03d}>" for c in seg_codes(obj))
