"""PaliGemma's mask VQ-VAE: 16 `<seg>` codes <-> a 64×64 mask, in plain NumPy.

Spec: big_vision's `big_vision/evaluators/proj/paligemma/transfers/segmentation.py` (the
decoder: `Decoder`, `ResBlock`, `_get_params`, `_quantized_values_from_codebook_indices`) and
`big_vision/pp/proj/paligemma/segmentation.py` (the encoder: `encode_to_codebook_indices`,
`_conv_tf`, `_resblock_tf`, `_get_codebook_indices`). The weights are the PyTorch-layout file
big_vision loads, `vae-oid.npz` (gs://big_vision/paligemma/vae-oid.npz); its keys are used here
as they are:

    _vq_vae._embedding        [K, D]              the codebook (K = 128 codes)
    decoder.0                 conv 1×1   D -> W   + ReLU
    decoder.{2,3}.net.{0,2,4} residual blocks: conv 3×3, ReLU, conv 3×3, ReLU, conv 1×1, + input
    decoder.{4,6,8,10}        transposed conv 4×4 stride 2 (torch padding 1), each + ReLU:
                              4 -> 8 -> 16 -> 32 -> 64 pixels
    decoder.12                conv 1×1 -> 1 channel: the mask logit map, trained on masks in
                              [-1, 1] (big_vision thresholds it at 0)
    encoder.{0,2,4,6}         conv stride 2, TF "SAME" padding, each + ReLU: 64 -> 4 pixels
    encoder.{8,9}.net.{0,2,4} residual blocks as in the decoder
    encoder.10                conv 1×1 -> D, then the nearest codebook row per cell

`X.weight` is torch's layout: [O, C, kh, kw] for a conv, [C, O, kh, kw] for a transposed conv
(`X.bias` [O]). Every size (K, D, the widths, the kernel sizes) is read from the file.
big_vision's flax `ConvTranspose(kernel 4, strides 2, padding=2, transpose_kernel=True)` is
torch's `ConvTranspose2d(kernel 4, stride 2, padding 1)`: both pad the stride-dilated input by
4 - 1 - 1 = 2 and correlate with the spatially flipped kernel — `conv_transpose2d` below does
exactly that. Codes are laid out row-major on the 4×4 grid (code i at row i // 4, column i % 4).
Reading and checking the file is `npgemma/checkpoint/vae_file.py`; placing the 64×64 map in the
image (box, resize, threshold at 0) is `npgemma/generation/postprocess.py`.

Images are channels-last here. Shape alphabet (extends the package's):
    B batch   Y, X rows, columns   C input channels   O output channels   kh, kw kernel size
    K codebook size   D code width   W decoder width (128 in vae-oid)
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

NUM_CODES = 16          # tokens per mask: a 4×4 grid
GRID = 4
MASK_SIZE = 64          # decoder output: 4 · 2^4
EMBEDDING = "_vq_vae._embedding"
DECODER_RES = ("decoder.2.net", "decoder.3.net")
DECODER_UP = ("decoder.4", "decoder.6", "decoder.8", "decoder.10")
ENCODER_DOWN = ("encoder.0", "encoder.2", "encoder.4", "encoder.6")
ENCODER_RES = ("encoder.8.net", "encoder.9.net")


# ---- layers ----------------------------------------------------------------------------------

def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding (before, after): output ceil(size / stride), the odd pixel
    after. For 3×3 / 1×1 stride 1 it is flax's padding=1 / 0 of the decoder."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int = 1) -> np.ndarray:
    """`nn.Conv2d` / `tf.nn.conv2d(padding="SAME")` by im2col: every kh×kw window becomes a row,
    one matrix product with the flattened kernel. x [B, Y, X, C], weight [O, C, kh, kw]."""
    o, c, kh, kw = weight.shape
    (t, b), (l, r) = same_padding(x.shape[1], kh, stride), same_padding(x.shape[2], kw, stride)
    xp = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))  # [B, Y', X', C, kh, kw]
    win = win[:, ::stride, ::stride]                                            # [B, Y, X, C, kh, kw]
    rows = win.reshape(-1, c * kh * kw)                                         # [B·Y·X, C·kh·kw]
    out = rows @ weight.reshape(o, c * kh * kw).T + bias                        # [B·Y·X, O]
    return out.reshape(*win.shape[:3], o).astype(np.float32)                    # [B, Y, X, O]


def conv_transpose2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int = 2,
                     padding: int = 1) -> np.ndarray:
    """`nn.ConvTranspose2d(stride, padding)`: put stride - 1 zeros between the pixels, pad by
    kh - 1 - padding, correlate with the flipped kernel (in/out swapped). x [B, Y, X, C],
    weight [C, O, kh, kw] -> [B, (Y-1)·stride - 2·padding + kh, ..., O]."""
    bsz, y, xx, c = x.shape
    _, o, kh, kw = weight.shape
    dil = np.zeros((bsz, (y - 1) * stride + 1, (xx - 1) * stride + 1, c), np.float32)
    dil[:, ::stride, ::stride] = x                                       # [B, 2Y-1, 2X-1, C]
    ph, pw = kh - 1 - padding, kw - 1 - padding
    dil = np.pad(dil, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    flipped = weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]            # [O, C, kh, kw]
    win = np.lib.stride_tricks.sliding_window_view(dil, (kh, kw), axis=(1, 2))
    rows = win.reshape(-1, c * kh * kw)                                  # [B·Y'·X', C·kh·kw]
    out = rows @ np.ascontiguousarray(flipped).reshape(o, -1).T + bias   # [B·Y'·X', O]
    return out.reshape(*win.shape[:3], o).astype(np.float32)             # [B, Y', X', O]


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.float32(0))


def res_block(vae: dict, x: np.ndarray, name: str) -> np.ndarray:
    """big_vision's `ResBlock` / `_resblock_tf`: x + conv1×1(relu(conv3×3(relu(conv3×3(x)))))."""
    h = relu(conv2d(x, vae[name + ".0.weight"], vae[name + ".0.bias"]))
    h = relu(conv2d(h, vae[name + ".2.weight"], vae[name + ".2.bias"]))
    return x + conv2d(h, vae[name + ".4.weight"], vae[name + ".4.bias"])


# ---- decoder: codes -> mask ------------------------------------------------------------------

def codebook_lookup(vae: dict, codes) -> np.ndarray:
    """`_quantized_values_from_codebook_indices`: int[B, 16] -> the codebook rows on the 4×4 grid."""
    table = vae[EMBEDDING]
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != NUM_CODES or not np.issubdtype(codes.dtype, np.integer):
        raise InputError(f"mask codes must be integers shaped [B, {NUM_CODES}], got "
                         f"{codes.dtype}{list(codes.shape)}")
    if codes.size and (codes.min() < 0 or codes.max() >= table.shape[0]):
        raise InputError(f"mask codes must be in 0..{table.shape[0] - 1}, got {codes.min()}..{codes.max()}")
    return table[codes].reshape(codes.shape[0], GRID, GRID, table.shape[1])  # [B, 16] -> [B, 4, 4, D]


def decode(vae: dict, codes) -> np.ndarray:
    """big_vision's `reconstruct_masks`: int[B, 16] -> float32[B, 64, 64] in about [-1, 1]."""
    return decode_grid(vae, codebook_lookup(vae, codes))


def decode_grid(vae: dict, x: np.ndarray) -> np.ndarray:
    """big_vision's `Decoder`: the quantized grid [B, 4, 4, D] -> float32[B, 64, 64]."""
    x = relu(conv2d(x, vae["decoder.0.weight"], vae["decoder.0.bias"]))  # [B, 4, 4, W]
    for name in DECODER_RES:
        x = res_block(vae, x, name)
    for name in DECODER_UP:                                            # [B, 4, 4, W] -> [B, 64, 64, W/8]
        x = relu(conv_transpose2d(x, vae[name + ".weight"], vae[name + ".bias"]))
    return conv2d(x, vae["decoder.12.weight"], vae["decoder.12.bias"])[..., 0]  # [B, 64, 64]


# ---- encoder: mask -> codes ------------------------------------------------------------------

def encode_features(vae: dict, masks) -> np.ndarray:
    """`encode_to_codebook_indices` before the lookup: float[B, 64, 64] in [0, 1] -> [B, 4, 4, D]."""
    masks = np.asarray(masks, np.float32)
    if masks.ndim != 3 or masks.shape[1:] != (MASK_SIZE, MASK_SIZE):
        raise InputError(f"masks must be shaped [B, {MASK_SIZE}, {MASK_SIZE}], got {list(masks.shape)}")
    x = (np.float32(2) * (masks - np.float32(0.5)))[..., None]         # [B, 64, 64, 1] in [-1, 1]
    for name in ENCODER_DOWN:                                          # [B, 64, 64, 1] -> [B, 4, 4, W]
        x = relu(conv2d(x, vae[name + ".weight"], vae[name + ".bias"], stride=2))
    for name in ENCODER_RES:
        x = res_block(vae, x, name)
    return conv2d(x, vae["encoder.10.weight"], vae["encoder.10.bias"])  # [B, 4, 4, D]


def nearest_codes(vae: dict, features: np.ndarray) -> np.ndarray:
    """`_get_codebook_indices`: the codebook row nearest (squared L2) to each cell. -> int[B, 16]."""
    table = vae[EMBEDDING]
    flat = features.reshape(-1, table.shape[1])                        # [B·16, D]
    dist = ((flat ** 2).sum(1, keepdims=True) + (table ** 2).sum(1)
            - np.float32(2) * flat @ table.T)                          # [B·16, K]
    return dist.argmin(1).reshape(-1, NUM_CODES).astype(np.int64)      # [B, 16]


def encode(vae: dict, masks) -> np.ndarray:
    """float[B, 64, 64] masks in [0, 1] (the box crop, resized to 64×64) -> int[B, 16] codes."""
    return nearest_codes(vae, encode_features(vae, masks))
