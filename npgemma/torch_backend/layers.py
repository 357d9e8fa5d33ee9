"""Torch twin of `npgemma/layers.py`: same functions, same parameters, same numerics.

Activations run in the backend's dtype (float32, bfloat16 or float16) as HF does; the places
HF upcasts — RMSNorm, softmax, the RoPE tables — upcast here too, at the same points.

Masks, as the kernels want them. The NumPy side hands every attention a bool[B, L, S]; here
`attention_bias` turns one into the additive float bias the kernel adds to its scores, once
per forward per layer type (`gemma.decoder` does it), with grouped-query heads folded into the
query axis: q [B, N, L, H] is viewed as [B, K, G*L, H] (G = N / K query heads per kv head), so
every kernel sees plain multi-head attention over the K kv heads and K/V are never repeated;
the bias [B, 1, G*L, S] is the bool mask repeated once per group. `attention` still accepts a
bool mask (and builds the bias itself), or None: everyone sees everyone (SigLIP, an unpadded
prefill), which lets `scaled_dot_product_attention` pick its fastest kernel.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .. import layers as numpy_layers
from ..hooks import hook, wants_attention

F32 = torch.float32


def mask_value(dtype: torch.dtype) -> float:
    """The large finite negative HF adds for masked keys in this dtype (never -inf: no NaN rows)."""
    return torch.finfo(dtype).min


def as_f32(w: torch.Tensor) -> torch.Tensor:
    """A tensor widened to float32 (no copy when it already is)."""
    return w.float()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`nn.Linear`, weight [out, in]. [..., in] -> [..., out].

    As one 2-D product: a strided [B, 1, in] (the last position of a prefill) would otherwise
    become a batched product against an expanded weight, a slower kernel on the CPU.
    """
    y = F.linear(x.reshape(-1, x.shape[-1]), weight, bias)  # [..., in] -> [M, in] -> [M, out]
    return y.view(*x.shape[:-1], weight.shape[0])  # [M, out] -> [..., out]


def layer_norm(x, weight, bias, eps: float) -> torch.Tensor:
    """`nn.LayerNorm` over the last axis."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def rms_norm(x, weight, eps: float) -> torch.Tensor:
    """`GemmaRMSNorm`: in float32, x * rsqrt(mean(x²) + eps) * (1 + w), then back to x's dtype."""
    xf = x.float()
    out = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    return (out * (1.0 + weight.float())).type_as(x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh-approximated GELU (`gelu_pytorch_tanh`)."""
    return F.gelu(x, approximate="tanh")


def softmax(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """Softmax in float32 (returned in float32; callers cast back as HF does)."""
    return torch.softmax(x.float(), dim=axis)


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Gemma-2 soft capping `cap * tanh(x / cap)`."""
    if cap is None:
        return x
    return torch.tanh(x / cap) * cap


def _in_place_ok(x: torch.Tensor) -> bool:
    return not (torch.is_grad_enabled() and x.requires_grad)


def _scaled(scores: torch.Tensor, scale: float) -> torch.Tensor:
    """scores * scale, in place on a fresh tensor unless autograd has to see it."""
    return scores.mul_(scale) if _in_place_ok(scores) else scores * scale


def _softcap_scores(scores: torch.Tensor, cap: float) -> torch.Tensor:
    """`softcap(scores, cap)`, the same roundings, in place unless autograd has to see them
    (a capture's `hook` has already copied what it keeps)."""
    return scores.div_(cap).tanh_().mul_(cap) if _in_place_ok(scores) else softcap(scores, cap)


def _add_bias(scores: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """float32 scores + the float32 bias; in place unless autograd needs the scores.
    `score + finfo.min` rounds to finfo.min exactly: the same as NumPy's `where`."""
    if torch.is_grad_enabled() and scores.requires_grad:
        return scores + bias
    return scores.add_(bias)


@functools.lru_cache(maxsize=None)
def _inv_freq_on(head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    # A plain tensor even when first asked for inside inference mode: training reuses it.
    with torch.inference_mode(False):
        return torch.from_numpy(numpy_layers.rope_inv_freq(head_dim, theta)).to(device)


def rope_inv_freq(head_dim: int, theta: float, device=None) -> torch.Tensor:
    """float32[H/2]: 1 / theta^(2i/H), NumPy's correctly rounded table (torch's float32 `pow`
    can be an ulp off, and an angle multiplies that by the position), uploaded once per device."""
    return _inv_freq_on(head_dim, float(theta), torch.device(device or "cpu"))


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float, dtype=F32):
    """cos, sin [B, L, H] for int positions [B, L]: computed in float32, cast to `dtype`."""
    inv_freq = rope_inv_freq(head_dim, theta, positions.device)
    freqs = positions.float()[..., None] * inv_freq  # [B, L] -> [B, L, H/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [B, L, H/2] -> [B, L, H]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last axis."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x, cos, sin) -> torch.Tensor:
    """Rotate [B, N, L, H] by cos/sin [B, L, H]."""
    cos, sin = cos[:, None], sin[:, None]  # [B, L, H] -> [B, 1, L, H]
    return x * cos + rotate_half(x) * sin


def attention_bias(mask: torch.Tensor | None, groups: int, dtype: torch.dtype,
                   compute_dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """bool[B, L, S] (True = may attend) -> additive bias [B, 1, G*L, S] of `dtype` (0 or the
    mask value), repeated for the G query heads folded onto each kv head; None stays None.

    `dtype` is what the scores are in when the bias is added: the activation dtype for the fused
    kernel, float32 for the soft-capped path (the mask value itself cannot overflow there).
    In half precision (`compute_dtype`) `score + finfo.min` overflows to -inf once a score is
    below about -16, and a query that may see no key at all (a padding row) would then be all
    -inf -> NaN, which spreads to real tokens through 0 * NaN. Such a row's output is never
    read: let it see every key. (float32 keeps NumPy's exact behaviour: a uniform average.)
    The last axis is allocated padded to a multiple of 16 and sliced: CUDA's fused kernels want
    an aligned row stride and would otherwise pad a copy in every layer.
    """
    if mask is None:
        return None
    if (compute_dtype or dtype) != F32:
        mask = mask | ~mask.any(dim=-1, keepdim=True)
    b, l, s = mask.shape
    storage = torch.empty((b, 1, groups, l, -(-s // 16) * 16), dtype=dtype, device=mask.device)
    bias = storage[..., :s]
    bias.copy_(torch.where(mask, 0.0, mask_value(dtype))[:, None, None].to(dtype))
    return bias.view(b, 1, groups * l, s)  # [B, 1, G, L, S] -> [B, 1, G*L, S]


def attention(q, k, v, mask, scale: float, logit_cap: float | None = None) -> torch.Tensor:
    """Grouped-query attention: q [B, N, L, H], k/v [B, K, S, H] -> [B, N, L, H].

    `mask` is a bool[B, L, S], the bias `attention_bias` made of one, or None (no mask).
    Without a soft cap this is one fused `scaled_dot_product_attention` call (float32 softmax
    inside); Gemma-2's cap sits between the scores and the softmax, so that case is spelled
    out like HF's eager path: q·kᵀ, × scale, softcap, + mask, float32 softmax, × v.
    """
    b, n, l, h = q.shape
    kv_heads = k.shape[1]
    groups = n // kv_heads
    if mask is not None and mask.dtype == torch.bool:
        mask = attention_bias(mask, groups, q.dtype if logit_cap is None else F32, q.dtype)
    qf = q.reshape(b, kv_heads, groups * l, h)  # [B, N, L, H] -> [B, K, G*L, H]
    if logit_cap is None and not wants_attention():  # a capture wanting the weights: spelled out
        out = F.scaled_dot_product_attention(qf, k, v, attn_mask=mask, scale=scale)
    else:
        out = attention_weights(qf, k, mask, scale, logit_cap).to(v.dtype) @ v  # -> [B, K, G*L, H]
    return out.view(b, n, l, h)  # [B, K, G*L, H] -> [B, N, L, H]


def attention_weights(qg, k, mask, scale: float, logit_cap: float | None) -> torch.Tensor:
    """softmax(cap(q·kᵀ × scale) + mask) in float32: qg [B, K, G*L, H] (each kv head's G query
    heads stacked), k [B, K, S, H], mask bool[B, L, S], its float32 bias from
    `attention_bias`, or None -> [B, K, G*L, S]. In place where autograd allows."""
    if mask is not None and mask.dtype == torch.bool:
        mask = attention_bias(mask, qg.shape[2] // mask.shape[1], F32, qg.dtype)
    scores = hook("attn.hook_scores", _scaled(qg @ k.transpose(-1, -2), scale))  # -> [B, K, G*L, S]
    if logit_cap is not None:
        scores = hook("attn.hook_scores_capped", _softcap_scores(scores, logit_cap))
    scores = scores.float()
    if mask is not None:
        scores = _add_bias(scores, mask)
    return hook("attn.hook_pattern", softmax(scores))


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, L, N*H] -> [B, N, L, H]."""
    b, l, _ = x.shape
    return x.view(b, l, num_heads, -1).transpose(1, 2)  # [B, L, N*H] -> [B, N, L, H]


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, N, L, H] -> [B, L, N*H]."""
    b, n, l, h = x.shape
    return x.transpose(1, 2).reshape(b, l, n * h)  # [B, N, L, H] -> [B, L, N*H]
