"""The PyTorch backend: the same math as the NumPy reference, on CPU or CUDA.

Weights move to the device once (`from_numpy`); the KV-cache is preallocated there; in the
decode loop only the masks/positions of the new token go in and only the greedy token ids
come back (sampling brings back one row of logits per step).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from . import paligemma

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tensor_from_numpy(a: np.ndarray, device, dtype: torch.dtype) -> torch.Tensor:
    """A NumPy array (float32, float16 or ml_dtypes.bfloat16) as a tensor of `dtype` on `device`."""
    if a.dtype.name == "bfloat16":  # torch cannot read ml_dtypes' bfloat16: reinterpret the bits
        t = torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    else:
        t = torch.from_numpy(np.ascontiguousarray(a))
    return t.to(device=device, dtype=dtype)


class TorchBackend:
    name = "torch"

    def __init__(self, device: str = "cpu", dtype: str = "float32"):
        import ml_dtypes

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"device {device!r} asked for, but torch {torch.__version__} sees no "
                             "CUDA GPU (a CPU-only build, or no driver); use --device cpu")
        try:
            self.device = torch.device(device)
        except RuntimeError as e:
            raise InputError(f"device {device!r}: {e}") from None
        self.dtype_name = dtype
        self.dtype = TORCH_DTYPES[dtype]
        # Load from disk straight into the compute dtype's width: bf16 on disk stays 2 bytes.
        self.weight_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16,
                             "float16": np.float16}[dtype]

    def from_numpy(self, tree):
        if isinstance(tree, dict):
            return {k: self.from_numpy(v) for k, v in tree.items()}
        if isinstance(tree, list):
            return [self.from_numpy(v) for v in tree]
        return tensor_from_numpy(tree, self.device, self.dtype)

    def to_numpy(self, x) -> np.ndarray:
        return x.detach().float().cpu().numpy()

    def as_tensor(self, a: np.ndarray, dtype=None) -> torch.Tensor:
        """A NumPy array (pixels, ids, positions, masks) on this backend's device, as `dtype`."""
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device, dtype=dtype)

    @torch.inference_mode()
    def encode_image(self, params, pixel_values, cfg):
        return paligemma.encode_image(params, self.as_tensor(pixel_values, self.dtype), cfg)

    @torch.inference_mode()
    def forward(self, params, cfg, input_ids, positions, masks, image_features=None, cache=None,
                last_only=False, logit_positions=None):
        masks = {k: self.as_tensor(m) for k, m in masks.items()}
        if logit_positions is not None:
            logit_positions = self.as_tensor(np.asarray(logit_positions), torch.long)
        return paligemma.forward(params, cfg, self.as_tensor(input_ids, torch.long),
                                 self.as_tensor(positions, torch.long), masks, image_features,
                                 cache=cache, last_only=last_only, logit_positions=logit_positions)

    def init_cache(self, cfg, batch, max_length):
        return paligemma.init_cache(cfg, batch, max_length, dtype=self.dtype, device=self.device)

    def start_decode(self, cfg, valid, is_prefix, cache):
        from ..backend import HostDecodeState
        return HostDecodeState(valid, is_prefix, cache.max_length)

    def decode_step(self, params, cfg, ids, state, cache):
        from ..backend import decode_on_host
        return decode_on_host(self.forward, params, cfg, self.ids_to_numpy(ids), state, cache)

    def greedy(self, logits):
        return logits[:, -1].argmax(dim=-1)

    def ids_to_numpy(self, ids) -> np.ndarray:
        return ids.cpu().numpy().astype(np.int64) if isinstance(ids, torch.Tensor) else np.asarray(ids)

    def last_logits_to_numpy(self, logits) -> np.ndarray:
        return self.to_numpy(logits[:, -1])

    @torch.inference_mode()
    def decode_masks(self, vae, codes) -> np.ndarray:
        from . import vqvae

        return self.to_numpy(vqvae.decode(vae, self.as_tensor(np.asarray(codes), torch.long)))


__all__ = ["TorchBackend", "tensor_from_numpy"]
