"""Torch twin of `npgemma/layers.py`: same functions, same parameters, same numerics.

Activations run in the backend's dtype (float32, bfloat16 or float16) as HF does; the places
HF upcasts — RMSNorm, softmax, the RoPE tables — upcast here too, at the same points.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from ..capture import hook, wants_attention

F32 = torch.float32


def mask_value(dtype: torch.dtype) -> float:
    """The large finite negative HF adds for masked keys in this dtype (never -inf: no NaN rows)."""
    return torch.finfo(dtype).min


def as_f32(w: torch.Tensor) -> torch.Tensor:
    """A tensor widened to float32 (no copy when it already is)."""
    return w.float()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`nn.Linear`, weight [out, in]. [..., in] -> [..., out]."""
    return F.linear(x, weight, bias)


def layer_norm(x, weight, bias, eps: float) -> torch.Tensor:
    """`nn.LayerNorm` over the last axis."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def rms_norm(x, weight, eps: float) -> torch.Tensor:
    """`GemmaRMSNorm`: in float32, x * rsqrt(mean(x²) + eps) * (1 + w), then back to x's dtype."""
    xf = x.float()
    out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
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


def rope_inv_freq(head_dim: int, theta: float, device=None) -> torch.Tensor:
    """float32[H/2]: 1 / theta^(2i/H)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    return 1.0 / (theta ** exponents)


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float, dtype=F32):
    """cos, sin [B, L, H] for int positions [B, L]: computed in float32, cast to `dtype`."""
    freqs = positions.float()[..., None] * rope_inv_freq(head_dim, theta, positions.device)  # [B, L] -> [B, L, H/2]
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


def attention(q, k, v, mask, scale: float, logit_cap: float | None = None) -> torch.Tensor:
    """Grouped-query attention: q [B, N, L, H], k/v [B, K, S, H], mask bool[B, L, S] -> [B, N, L, H].

    Without a soft cap this is one fused `scaled_dot_product_attention` call (GQA broadcast
    inside the kernel, float32 softmax); Gemma-2's cap sits between the scores and the softmax,
    so that case is spelled out like HF's eager path.
    """
    b, n, l, h = q.shape
    kv_heads = k.shape[1]
    if q.dtype != torch.float32:
        # In half precision `score + finfo.min` overflows to -inf once a score is below about -16,
        # and a query that may see no key at all (a padding row) would then be all -inf -> NaN,
        # which spreads to real tokens through 0 * NaN. Such a row's output is never read: let it
        # see every key. (float32 keeps NumPy's exact behaviour: a uniform average.)
        mask = mask | ~mask.any(dim=-1, keepdim=True)
    if wants_attention():  # a capture asks for the weights: the spelled-out path, which forms them
        weights = attention_weights(q.reshape(b, kv_heads, n // kv_heads * l, h), k, mask, scale, logit_cap)
        return (weights.to(v.dtype) @ v).reshape(b, n, l, h)  # [B, K, G*L, S] @ [B, K, S, H]
    if logit_cap is None:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, mask_value(q.dtype))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias[:, None], scale=scale,
                                              enable_gqa=kv_heads != n)
    qg = q.reshape(b, kv_heads, n // kv_heads, l, h)  # [B, N, L, H] -> [B, K, G, L, H]
    scores = (qg @ k[:, :, None].transpose(-1, -2)) * scale  # -> [B, K, G, L, S]
    # Mask in float32 (the softmax's dtype), so the mask value itself cannot overflow.
    scores = softcap(scores, logit_cap).float().masked_fill(~mask[:, None, None], mask_value(F32))
    out = softmax(scores).to(v.dtype) @ v[:, :, None]  # [B, K, G, L, S] -> [B, K, G, L, H]
    return out.reshape(b, n, l, h)  # [B, K, G, L, H] -> [B, N, L, H]


def attention_weights(qg, k, mask, scale: float, logit_cap: float | None) -> torch.Tensor:
    """softmax(cap(q·kᵀ × scale) masked) in float32: qg [B, K, G*L, H] (each kv head's G query
    heads stacked), k [B, K, S, H], mask bool[B, L, S] or None -> [B, K, G*L, S]."""
    b, kv_heads, gl, _ = qg.shape
    scores = hook("attn.hook_scores", (qg @ k.transpose(-1, -2)) * scale)  # -> [B, K, G*L, S]
    scores = softcap(scores, logit_cap)
    if logit_cap is not None:
        hook("attn.hook_scores_capped", scores)
    scores = scores.float()
    if mask is not None:
        l = mask.shape[1]
        grouped = scores.view(b, kv_heads, gl // l, l, -1)  # [B, K, G*L, S] -> [B, K, G, L, S]
        scores = grouped.masked_fill(~mask[:, None, None], mask_value(F32)).view(b, kv_heads, gl, -1)
    return hook("attn.hook_pattern", softmax(scores))


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, L, N*H] -> [B, N, L, H]."""
    b, l, _ = x.shape
    return x.view(b, l, num_heads, -1).transpose(1, 2)  # [B, L, N*H] -> [B, N, L, H]


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, N, L, H] -> [B, L, N*H]."""
    b, n, l, h = x.shape
    return x.transpose(1, 2).reshape(b, l, n * h)  # [B, N, L, H] -> [B, L, N*H]


