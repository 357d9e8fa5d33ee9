"""Torch twin of `npgemma/vqvae.py`: the mask VQ-VAE with torch's own convolutions.

Same functions, same channels-last [B, Y, X, C] tensors in and out; inside, each convolution
moves to torch's [B, C, Y, X] for `F.conv2d` / `F.conv_transpose2d` (the weights are already
in torch's layout). Loading stays in NumPy (`npgemma.checkpoint.vae_file.load_vae`); a backend's
`from_numpy` turns the checked dict into tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..vqvae import (DECODER_RES, DECODER_UP, EMBEDDING, ENCODER_DOWN, ENCODER_RES, GRID, MASK_SIZE,
                     NUM_CODES, same_padding)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """`nn.Conv2d` with TF "SAME" padding. x [B, Y, X, C], weight [O, C, kh, kw] -> [B, Y', X', O]."""
    _, _, kh, kw = weight.shape
    (t, b), (l, r) = same_padding(x.shape[1], kh, stride), same_padding(x.shape[2], kw, stride)
    xc = F.pad(x.permute(0, 3, 1, 2), (l, r, t, b))                 # [B, C, Y+t+b, X+l+r]
    return F.conv2d(xc, weight, bias, stride=stride).permute(0, 2, 3, 1)


def conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int = 2,
                     padding: int = 1) -> torch.Tensor:
    """`nn.ConvTranspose2d(stride, padding)`. x [B, Y, X, C], weight [C, O, kh, kw]."""
    out = F.conv_transpose2d(x.permute(0, 3, 1, 2), weight, bias, stride=stride, padding=padding)
    return out.permute(0, 2, 3, 1)                                  # [B, O, Y', X'] -> [B, Y', X', O]


def relu(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x)


def res_block(vae: dict, x: torch.Tensor, name: str) -> torch.Tensor:
    """x + conv1×1(relu(conv3×3(relu(conv3×3(x)))))."""
    h = relu(conv2d(x, vae[name + ".0.weight"], vae[name + ".0.bias"]))
    h = relu(conv2d(h, vae[name + ".2.weight"], vae[name + ".2.bias"]))
    return x + conv2d(h, vae[name + ".4.weight"], vae[name + ".4.bias"])


def codebook_lookup(vae: dict, codes) -> torch.Tensor:
    """int[B, 16] -> the codebook rows on the 4×4 grid [B, 4, 4, D]."""
    table = vae[EMBEDDING]
    codes = torch.as_tensor(codes, device=table.device)
    if codes.ndim != 2 or codes.shape[1] != NUM_CODES or codes.is_floating_point():
        raise InputError(f"mask codes must be integers shaped [B, {NUM_CODES}], got "
                         f"{codes.dtype}{list(codes.shape)}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= table.shape[0]):
        raise InputError(f"mask codes must be in 0..{table.shape[0] - 1}, got "
                         f"{int(codes.min())}..{int(codes.max())}")
    return table[codes.long()].reshape(codes.shape[0], GRID, GRID, table.shape[1])


def decode(vae: dict, codes) -> torch.Tensor:
    """int[B, 16] -> [B, 64, 64] mask logits in about [-1, 1]."""
    return decode_grid(vae, codebook_lookup(vae, codes))


def decode_grid(vae: dict, x: torch.Tensor) -> torch.Tensor:
    """The quantized grid [B, 4, 4, D] -> [B, 64, 64]."""
    x = relu(conv2d(x, vae["decoder.0.weight"], vae["decoder.0.bias"]))
    for name in DECODER_RES:
        x = res_block(vae, x, name)
    for name in DECODER_UP:
        x = relu(conv_transpose2d(x, vae[name + ".weight"], vae[name + ".bias"]))
    return conv2d(x, vae["decoder.12.weight"], vae["decoder.12.bias"])[..., 0]


def encode_features(vae: dict, masks) -> torch.Tensor:
    """[B, 64, 64] masks in [0, 1] -> encoder output [B, 4, 4, D]."""
    ref = vae[EMBEDDING]
    masks = torch.as_tensor(masks).to(device=ref.device, dtype=ref.dtype)
    if masks.ndim != 3 or tuple(masks.shape[1:]) != (MASK_SIZE, MASK_SIZE):
        raise InputError(f"masks must be shaped [B, {MASK_SIZE}, {MASK_SIZE}], got {list(masks.shape)}")
    x = (2.0 * (masks - 0.5))[..., None]
    for name in ENCODER_DOWN:
        x = relu(conv2d(x, vae[name + ".weight"], vae[name + ".bias"], stride=2))
    for name in ENCODER_RES:
        x = res_block(vae, x, name)
    return conv2d(x, vae["encoder.10.weight"], vae["encoder.10.bias"])


def nearest_codes(vae: dict, features: torch.Tensor) -> torch.Tensor:
    """The nearest codebook row (squared L2) per cell -> int64[B, 16]."""
    table = vae[EMBEDDING]
    flat = features.reshape(-1, table.shape[1])
    dist = (flat ** 2).sum(1, keepdim=True) + (table ** 2).sum(1) - 2.0 * flat @ table.T
    return dist.argmin(1).reshape(-1, NUM_CODES)


def encode(vae: dict, masks) -> torch.Tensor:
    """[B, 64, 64] masks in [0, 1] -> int64[B, 16] codes."""
    return nearest_codes(vae, encode_features(vae, masks))
