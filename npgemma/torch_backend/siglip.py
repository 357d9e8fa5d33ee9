"""Torch twin of `npgemma/siglip.py`: the SigLIP vision tower."""

from __future__ import annotations

import torch

from ..config import VisionConfig
from ..hooks import hook, scope
from .layers import attention, gelu_tanh, layer_norm, linear, merge_heads, split_heads


def patch_embed(pixel_values, weight, bias) -> torch.Tensor:
    """Patch conv as one matmul over non-overlapping patches. [B, 3, S, S] -> [B, P, D]."""
    b, c, s, _ = pixel_values.shape
    d, _, p, _ = weight.shape
    g = s // p
    x = pixel_values.reshape(b, c, g, p, g, p)  # [B, 3, S, S] -> [B, 3, g, p, g, p]
    x = x.permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * p * p)  # -> [B, P, 3*p*p]
    return linear(x, weight.reshape(d, c * p * p), bias)  # [B, P, 3*p*p] -> [B, P, D]


def embeddings(pixel_values, patch_embedding, position_embedding) -> torch.Tensor:
    """`SiglipVisionEmbeddings`: patches + learned positions."""
    return patch_embed(pixel_values, **patch_embedding) + position_embedding["weight"]


def self_attention(x, q_proj, k_proj, v_proj, out_proj, *, num_heads: int) -> torch.Tensor:
    """`SiglipAttention`: bidirectional MHA with biases."""
    b, p, d = x.shape
    q = split_heads(linear(x, **q_proj), num_heads)  # [B, P, D] -> [B, N, P, H]
    k = split_heads(linear(x, **k_proj), num_heads)
    v = split_heads(linear(x, **v_proj), num_heads)
    out = attention(q, k, v, None, scale=(d // num_heads) ** -0.5)  # no mask: all see all
    return linear(merge_heads(out), **out_proj)  # [B, N, P, H] -> [B, P, D]


def feed_forward(x, fc1, fc2) -> torch.Tensor:
    """`SiglipMLP`: fc1 -> tanh-GELU -> fc2."""
    return linear(gelu_tanh(linear(x, **fc1)), **fc2)


def encoder_layer(x, layer_norm1, self_attn, layer_norm2, mlp, *, cfg: VisionConfig):
    """`SiglipEncoderLayer`: pre-LN residual blocks."""
    x = x + self_attention(layer_norm(x, **layer_norm1, eps=cfg.layer_norm_eps), **self_attn,
                           num_heads=cfg.num_attention_heads)
    return x + feed_forward(layer_norm(x, **layer_norm2, eps=cfg.layer_norm_eps), **mlp)


def vision_tower(params, pixel_values, cfg: VisionConfig, hidden_states: list | None = None):
    """[B, 3, S, S] -> [B, P, D]; appends per-layer hidden states when given a list."""
    x = embeddings(pixel_values, **params["embeddings"])
    for i, layer in enumerate(params["encoder"]["layers"]):
        if hidden_states is not None:
            hidden_states.append(x)
        with scope(f"vision.blocks.{i}"):
            x = hook("hook_resid_post", encoder_layer(x, **layer, cfg=cfg))
    if hidden_states is not None:
        hidden_states.append(x)
    return layer_norm(x, **params["post_layernorm"], eps=cfg.layer_norm_eps)
