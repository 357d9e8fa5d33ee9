"""A stand-in quantized port, for the quantization diagnosis's tests: npgemma's model run on
weights this file quantizes itself, as a port that converts a checkpoint to MLX 4-bit would
(its own code, group by group, after MLX's C++ `quantize`; it never calls npgemma's
quantization catalogue, which the diagnosis searches).

NPGEMMA_QUANT picks the port: "right" (MLX 4-bit, groups of 64, the decoder's linears and the
token embedding whose width 64 divides, as mlx-vlm's convert), "wrong-group" (dequantizes reading the per-group scales and
biases as if the groups were 128 wide), "no-bias" (dequantizes as scale * q, forgetting the
bias). NPGEMMA_QUANT_WEIGHTS=1 also returns its effective weights ("weights" in the contract).
NPGEMMA_QUANT_LOGITS="bf16" returns its logits rounded to bfloat16 (to nearest even, by its own
bit arithmetic), as a port that computes in bfloat16 would; "noise" adds a disturbance far
past any tolerance (a port no dtype explains).
"""

from __future__ import annotations

import os

import numpy as np

import npgemma

BITS, GROUP = 4, 64


def _quantize_group(x: np.ndarray):
    """One group of float32 values -> (levels, scale, bias), float32 throughout."""
    levels = np.float32(2 ** BITS - 1)
    hi, lo = np.float32(x.max()), np.float32(x.min())
    step = max(np.float32((hi - lo) / levels), np.float32(1e-7))
    if abs(lo) > abs(hi):        # anchor the level grid on the edge of larger magnitude
        edge = lo
    else:
        edge, step = hi, -step
    at = np.float32(np.rint(edge / step))
    bias = np.float32(0.0)
    if at != 0:
        step, bias = np.float32(edge / at), edge
    q = np.minimum(np.maximum(np.rint((x - bias) / step), 0), levels)
    return q.astype(np.float32), step, bias


def _dequantize(w: np.ndarray, mode: str) -> np.ndarray:
    rows, width = w.shape
    out = np.empty_like(w)
    for r in range(rows):
        parts = [_quantize_group(w[r, s:s + GROUP]) for s in range(0, width, GROUP)]
        for j in range(width):
            q = parts[j // GROUP][0][j % GROUP]
            read = j // (2 * GROUP) if mode == "wrong-group" else j // GROUP
            _, step, bias = parts[read]
            out[r, j] = step * q + (0 if mode == "no-bias" else bias)
    return out


def _walk(tree, prefix=""):
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for k, v in items:
        name = f"{prefix}{k}"
        if isinstance(v, (dict, list)):
            yield from _walk(v, name + ".")
        else:
            yield name, tree, k, v


def _quantizes(name: str, w) -> bool:
    """As mlx-vlm's convert picks: the language model's linears and its embedding, where the
    group divides the input width; nothing of the vision tower or the projector."""
    if not name.startswith("language_model.") or w.ndim != 2 or w.shape[1] % GROUP:
        return False
    return name.endswith("_proj.weight") or name == "language_model.embed_tokens.weight"


def _round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> the nearest bfloat16 (ties to even), back as float32: keep the top 16 bits."""
    bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return bits.astype(np.uint32).view(np.float32)


def run(model_dir, image, prompt, max_new_tokens=8):
    mode = os.environ.get("NPGEMMA_QUANT", "right")
    pipe = npgemma.load(model_dir)
    weights = {}
    for name, parent, key, w in list(_walk(pipe.params)):
        if _quantizes(name, w):
            parent[key] = _dequantize(np.asarray(w, np.float32), mode)
            weights[name] = parent[key]
    x = pipe.processor(image, prompt)
    tokens = pipe.generate(image, prompt, max_new_tokens=max_new_tokens).token_ids
    out = {"logits": pipe.logits(image, prompt, positions=slice(None)),
           "input_ids": x.input_ids, "pixel_values": x.pixel_values, "token_ids": tokens}
    logits = os.environ.get("NPGEMMA_QUANT_LOGITS")
    if logits == "bf16":
        out["logits"] = _round_bf16(out["logits"])
    elif logits == "noise":
        out["logits"] = out["logits"] + np.float32(3) * np.sin(np.arange(out["logits"].size,
                                                    dtype=np.float32)).reshape(out["logits"].shape)
    if os.environ.get("NPGEMMA_QUANT_WEIGHTS"):
        out["weights"] = weights
    return out
