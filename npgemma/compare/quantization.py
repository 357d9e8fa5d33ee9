"""Weight quantization schemes, in NumPy, as their libraries define them: each one a
quantize -> dequantize of a weight array (what a quantized model's matmuls effectively use),
and which layers each library quantizes by default. The diagnosis (`quantdiag.py`) runs the
reference on weights quantized by each candidate, so a correct quantized port is told apart
from a broken one.

The libraries' source is the spec (read, not copied):
- MLX affine, `mx.quantize(w, group_size, bits)`: ml-explore/mlx mlx/backend/cpu/quantized.cpp
  (`quantize`): per group of G along the last axis, float32 arithmetic, rint (half to even).
- torchao int8 weight-only (`Int8WeightOnlyConfig`): pytorch/ao torchao/quantization/
  quant_primitives.py (`_choose_qparams_affine`, SYMMETRIC): scale = absmax / ((127 - -128) / 2)
  per output channel, clamped below by float32's eps; q = clamp(round(w * (1 / scale)), -128, 127).
- optimum-quanto qint8 weights: huggingface/optimum-quanto optimum/quanto/tensor/optimizers/
  absmax_optimizer.py and tensor/weights/qbytes.py: scale = absmax / 127 along axis 0 (per
  output channel), q = clamp(round(w / scale), -128, 127).
- bitsandbytes NF4 / FP4 (`quantize_4bit`, blocksize 64): bitsandbytes-foundation/bitsandbytes
  bitsandbytes/functional.py (`get_4bit_type`) for the code tables; the CPU backend's
  bitsandbytes/backends/default/ops.py (`quantize_4bit`: bucketize on the sorted code's
  midpoints; csrc's dQuantizeNF4 / dQuantizeFP4 decision trees on CUDA have the same
  thresholds) for the rounding. The flattened weight in blocks of 64, absmax per block in
  float32, w ~ code[q] * absmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

# bitsandbytes/functional.py get_4bit_type("nf4"): the QLoRA normal-float levels, as listed.
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
                0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], np.float32)
# get_4bit_type("fp4"): e2m1 magnitudes in bnb's bit order, then divided by their absmax (12).
FP4 = (np.array([0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0,
                 -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0], np.float32) / 12.0
       ).astype(np.float32)
BNB_BLOCK = 64


def mlx_quantize(w: np.ndarray, bits: int, group_size: int, dtype=np.float32):
    """MLX `mx.quantize(w, group_size, bits)` (mode "affine"): w [..., K] in groups of
    `group_size` along K -> (q [N, K/G, G], scale [N, K/G, 1], bias [N, K/G, 1]) as float32.

    Per group (all in float32, as the C++ does): scale = max((max - min) / (2^bits - 1), 1e-7),
    signed so that the edge of larger magnitude (min or max) lands exactly on a level; if that
    edge's level q0 = rint(edge / scale) is not 0, scale = edge / q0 and bias = edge, else
    bias = 0. q = clip(rint((w - bias) / scale), 0, 2^bits - 1); scale and bias are stored in
    the weight's dtype (`dtype`: what the converter cast the weight to)."""
    w = np.asarray(w)
    k = w.shape[-1]
    if k % group_size:
        raise ValueError(f"last dimension {k} is not a multiple of the group size {group_size}")
    store = np.dtype(dtype)
    g = w.astype(store).astype(np.float32).reshape(-1, k // group_size, group_size)  # [N, K/G, G]
    n_bins = np.float32((1 << bits) - 1)
    w_max, w_min = g.max(axis=-1, keepdims=True), g.min(axis=-1, keepdims=True)
    neg = np.abs(w_min) > np.abs(w_max)            # the edge is the minimum
    scale = np.maximum((w_max - w_min) / n_bins, np.float32(1e-7))
    scale = np.where(neg, scale, -scale)
    edge = np.where(neg, w_min, w_max)
    q0 = np.rint(edge / scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(q0 != 0, edge / q0, scale)
    bias = np.where(q0 != 0, edge, np.float32(0))
    q = np.clip(np.rint((g - bias) / scale), 0, n_bins)
    return q, scale.astype(store).astype(np.float32), bias.astype(store).astype(np.float32)


def mlx_affine(w: np.ndarray, bits: int, group_size: int, dtype=np.float32) -> np.ndarray:
    """`mx.quantize` then `mx.dequantize`: w ~ scale * q + bias, per group, each operation
    rounded to the weight's dtype (MLX's bfloat16 arithmetic; checked bit for bit against
    mlx 0.32.4's `mx.dequantize` in float32 and bfloat16)."""
    q, scale, bias = mlx_quantize(w, bits, group_size, dtype)
    store = np.dtype(dtype)
    if store == np.float32:
        return (scale * q + bias).reshape(np.shape(w)).astype(np.float32)
    product = (scale * q).astype(store).astype(np.float32)
    return (product + bias).astype(store).astype(np.float32).reshape(np.shape(w))


# Dequantizations a port gets wrong, each a fault the diagnosis can name: the bias term
# forgotten (w = scale * q), or the per-group scale and bias read with a larger group size
# than the weights were quantized with (element j of a row uses group j // wrong).
def mlx_dequant_no_bias(w, bits: int, group_size: int) -> np.ndarray:
    q, scale, _ = mlx_quantize(w, bits, group_size)
    return (scale * q).reshape(np.shape(w)).astype(np.float32)


def mlx_dequant_group(w, bits: int, group_size: int, wrong: int) -> np.ndarray:
    q, scale, bias = mlx_quantize(w, bits, group_size)
    n, k = q.shape[0], np.shape(w)[-1]
    idx = np.arange(k) // wrong                                      # [K] the group read
    qf = q.reshape(n, k)
    return (scale[:, idx, 0] * qf + bias[:, idx, 0]).reshape(np.shape(w)).astype(np.float32)


def int8_symmetric(w: np.ndarray, divisor: float, reciprocal: bool = False) -> np.ndarray:
    """Per output channel (each row of a [out, in] weight): scale = absmax / divisor (torchao:
    127.5, clamped below by float32's eps; quanto: 127), q = clamp(round(w / scale), -128, 127)
    (torchao multiplies by the reciprocal instead of dividing), w ~ q * scale."""
    w = np.asarray(w, np.float32)
    absmax = np.abs(w).max(axis=-1, keepdims=True)
    scale = np.maximum(absmax / np.float32(divisor), np.finfo(np.float32).eps).astype(np.float32)
    x = w * (np.float32(1) / scale) if reciprocal else w / scale
    return (np.clip(np.round(x), -128, 127) * scale).astype(np.float32)


def bnb_4bit(w: np.ndarray, code: np.ndarray, blocksize: int = BNB_BLOCK) -> np.ndarray:
    """bitsandbytes `quantize_4bit` then `dequantize_4bit` as its CPU/default backend computes
    them (bitsandbytes/backends/default/ops.py, 0.50): the flattened weight in blocks of
    `blocksize` (the last one short when the size does not divide), absmax per block (float32),
    x = clip(w * (1 / absmax), -1, 1), its level the bucket of x among the midpoints of the
    sorted code (`torch.bucketize`, right=False: a value on a midpoint takes the lower level),
    w ~ level * absmax."""
    w = np.asarray(w, np.float32)
    flat = w.reshape(-1)
    pad = (-flat.size) % blocksize
    blocks = np.concatenate([flat, np.zeros(pad, np.float32)]).reshape(-1, blocksize)
    absmax = np.abs(blocks).max(axis=-1, keepdims=True)              # [B, 1]
    safe = np.maximum(absmax, np.float32(1e-38))
    x = blocks * (np.float32(1) / safe)        # full blocks: times the reciprocal
    if pad:                                    # the short last block: divided
        x[-1] = blocks[-1] / safe[-1]
    x = np.clip(x, -1, 1).astype(np.float32)
    levels = np.sort(code).astype(np.float32)
    bounds = ((levels[:-1] + levels[1:]) / np.float32(2)).astype(np.float32)
    q = np.searchsorted(bounds, x, side="left")                      # [B, blocksize]
    out = (levels[q] * absmax).reshape(-1)
    return out[:flat.size].reshape(w.shape).astype(np.float32)


@dataclass(frozen=True)
class Scheme:
    name: str                         # e.g. "mlx-4bit-g64"
    library: str                      # whose quantization it is
    title: str                        # "MLX 4-bit g64" (for a verdict)
    fn: Callable[[np.ndarray], np.ndarray]
    group: int | None = None          # the group or block along which it works (None: a row)


def _mlx(bits: int, g: int) -> Scheme:
    return Scheme(f"mlx-{bits}bit-g{g}", "mlx / mlx-vlm", f"MLX {bits}-bit g{g}",
                  lambda w: mlx_affine(w, bits, g), g)


SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    *(_mlx(bits, g) for bits in (4, 8) for g in (32, 64, 128)),
    Scheme("int8-torchao", "torchao (Int8WeightOnlyConfig)", "torchao int8 weight-only",
           lambda w: int8_symmetric(w, 127.5, reciprocal=True)),
    Scheme("int8-absmax127", "optimum-quanto (qint8 weights)", "int8 per channel, absmax / 127",
           lambda w: int8_symmetric(w, 127.0)),
    Scheme("nf4-b64", "bitsandbytes (NF4)", "bitsandbytes NF4 blocksize 64",
           lambda w: bnb_4bit(w, NF4), BNB_BLOCK),
    Scheme("fp4-b64", "bitsandbytes (FP4)", "bitsandbytes FP4 blocksize 64",
           lambda w: bnb_4bit(w, FP4), BNB_BLOCK),
)}


# Which weights a library quantizes by default, over npgemma's canonical keys. transformers'
# quantizers (torchao, bitsandbytes, quanto through `quantization_config`) replace every
# nn.Linear but the output embedding (get_keys_to_not_convert: lm_head, tied to embed_tokens in
# PaliGemma): the vision tower's, the projector's and the decoder's linears; the patch
# embedding is a Conv2d and the embeddings are not Linear. mlx-vlm's convert (0.7.10,
# Blaizzy/mlx-vlm mlx_vlm/convert.py and utils.py: skip_multimodal_module) quantizes every
# module with `to_quantized` (Linear and Embedding) whose input width the group divides, but
# none under "vision_tower" or "multi_modal_projector": the decoder's linears and the token
# embedding (which the tied LM head reads).
def _linear(key: str) -> bool:
    return key.endswith(".weight") and any(p in key for p in (
        "_proj.", "mlp.fc1.", "mlp.fc2.", "multi_modal_projector.linear.")) \
        and "patch_embedding" not in key


def _vision(key: str) -> bool:
    return key.startswith("vision_tower.")


POLICIES: dict[str, tuple[str, Callable[[str], bool]]] = {
    "linears": ("every linear layer; embedding and LM head kept float", _linear),
    "decoder-linears": ("the decoder's linears; vision tower, projector, embedding float",
                        lambda k: _linear(k) and k.startswith("language_model.")),
    "linears+embedding": ("every linear and the token embedding (the tied LM head reads it)",
                          lambda k: _linear(k) or k == "language_model.embed_tokens.weight"),
    "decoder+embedding": ("the decoder's linears and the token embedding (vision tower and "
                          "projector kept float)",
                          lambda k: (_linear(k) and k.startswith("language_model."))
                          or k == "language_model.embed_tokens.weight"),
    "text+embedding": ("the decoder's and projector's linears and the token embedding "
                       "(vision tower kept float)",
                       lambda k: (_linear(k) and not _vision(k))
                       or k == "language_model.embed_tokens.weight"),
}

# Each library's default policy, and its alternatives worth trying.
DEFAULTS = {"mlx / mlx-vlm": "decoder+embedding", "torchao (Int8WeightOnlyConfig)": "linears",
            "optimum-quanto (qint8 weights)": "linears", "bitsandbytes (NF4)": "linears",
            "bitsandbytes (FP4)": "linears"}


def faulty(scheme: Scheme) -> list[Scheme]:
    """The dequantization faults a port of `scheme` can have (MLX affine schemes only)."""
    if not scheme.name.startswith("mlx-"):
        return []
    bits, g = int(scheme.name.split("-")[1][:-3]), scheme.group
    out = [Scheme(f"{scheme.name}-no-bias", scheme.library, f"{scheme.title} weights "
                  "dequantized without the bias term (w = scale * q, not scale * q + bias)",
                  lambda w: mlx_dequant_no_bias(w, bits, g), g)]
    out += [Scheme(f"{scheme.name}-read-g{wrong}", scheme.library, f"{scheme.title} weights "
                   f"dequantized with group size {wrong}, not the {g} they were quantized with",
                   lambda w, wrong=wrong: mlx_dequant_group(w, bits, g, wrong), g)
            for wrong in (32, 64, 128) if wrong > g]
    return out


def quantized_params(flat: dict, scheme: Scheme, policy: str) -> tuple[dict, list[str]]:
    """`flat` ({canonical key: float32 array}) with the policy's weights quantized by `scheme`
    (-> dequantized); a weight the scheme's group does not divide stays float, as the
    libraries leave it. Returns the new dict and the keys quantized."""
    wants = POLICIES[policy][1]
    out, done = dict(flat), []
    for key, w in flat.items():
        if not wants(key) or w.ndim != 2:
            continue
        if scheme.name.startswith("mlx") and w.shape[-1] % scheme.group:
            continue
        out[key] = scheme.fn(w)
        done.append(key)
    return out, done

