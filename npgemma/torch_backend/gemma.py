"""Torch twin of `npgemma/gemma.py`: the Gemma-1 / Gemma-2 decoder."""

from __future__ import annotations

import math

import torch

from . import kv_cache
from ..capture import hook, scope
from ..config import TextConfig
from .layers import (apply_rope, attention, gelu_tanh, linear, merge_heads, rms_norm, rope_tables,
                     softcap, split_heads)


def embed(embed_tokens, input_ids: torch.Tensor, cfg: TextConfig) -> torch.Tensor:
    """Scaled embedding lookup; sqrt(D) rounded to the weight dtype (45.25 in bf16 for D=2048)."""
    table = embed_tokens["weight"]
    ids = torch.where(input_ids < table.shape[0], input_ids, torch.zeros_like(input_ids))
    scale = torch.tensor(math.sqrt(cfg.hidden_size), dtype=torch.float32).to(table.dtype)
    return table[ids] * scale.to(table.device)  # [B, L] -> [B, L, D]


def feed_forward(x, gate_proj, up_proj, down_proj) -> torch.Tensor:
    """`GemmaMLP`: gated tanh-GELU."""
    return linear(hook("mlp.hook_post", gelu_tanh(linear(x, **gate_proj)) * linear(x, **up_proj)),
                  **down_proj)


def self_attention(x, q_proj, k_proj, v_proj, o_proj, *, cos, sin, mask, cfg: TextConfig,
                   cache=None, layer_idx: int = 0) -> torch.Tensor:
    """RoPE'd grouped-query attention against the on-device cache."""
    q = split_heads(linear(x, **q_proj), cfg.num_attention_heads)  # [B, L, D] -> [B, N, L, H]
    k = split_heads(linear(x, **k_proj), cfg.num_key_value_heads)  # [B, L, D] -> [B, K, L, H]
    v = split_heads(linear(x, **v_proj), cfg.num_key_value_heads)
    q, k = hook("attn.hook_q", apply_rope(q, cos, sin)), hook("attn.hook_k", apply_rope(k, cos, sin))
    if cache is not None:
        k, v = kv_cache.write(cache, layer_idx, k, v)  # [B, K, L, H] -> [B, K, S, H]
    out = attention(q, k, v, mask, scale=cfg.query_scale, logit_cap=cfg.attn_logit_softcapping)
    return linear(merge_heads(out), **o_proj)  # [B, N, L, H] -> [B, L, D]


def decoder_layer(x, p: dict, *, cos, sin, mask, cfg: TextConfig, cache=None, layer_idx=0):
    """`GemmaDecoderLayer` (2 norms) or `Gemma2DecoderLayer` (4 norms)."""
    eps = cfg.rms_norm_eps
    hook("hook_resid_pre", x)
    h = self_attention(rms_norm(x, **p["input_layernorm"], eps=eps), **p["self_attn"],
                       cos=cos, sin=sin, mask=mask, cfg=cfg, cache=cache, layer_idx=layer_idx)
    if cfg.is_gemma2:
        x = hook("hook_resid_mid", x + rms_norm(h, **p["post_attention_layernorm"], eps=eps))
        h = feed_forward(rms_norm(x, **p["pre_feedforward_layernorm"], eps=eps), **p["mlp"])
        return hook("hook_resid_post", x + rms_norm(h, **p["post_feedforward_layernorm"], eps=eps))
    x = hook("hook_resid_mid", x + h)
    return hook("hook_resid_post",
                x + feed_forward(rms_norm(x, **p["post_attention_layernorm"], eps=eps), **p["mlp"]))


def decoder(params, embeds, positions, masks: dict, cfg: TextConfig, cache=None,
            hidden_states: list | None = None) -> torch.Tensor:
    """Layers then the final norm: [B, L, D] -> [B, L, D]."""
    cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta, dtype=embeds.dtype)
    x = embeds
    if hidden_states is not None:
        hidden_states.append(x)
    for i, layer in enumerate(params["layers"]):
        mask = masks["sliding_attention" if cfg.layer_sliding_window(i) else "full_attention"]
        with scope(f"decoder.blocks.{i}"):
            x = decoder_layer(x, layer, cos=cos, sin=sin, mask=mask, cfg=cfg, cache=cache, layer_idx=i)
        if hidden_states is not None:
            hidden_states.append(x)
    x = rms_norm(x, **params["norm"], eps=cfg.rms_norm_eps)
    if hidden_states is not None:
        hidden_states.append(x)
    return x


def lm_head(hidden: torch.Tensor, weight: torch.Tensor, cfg: TextConfig) -> torch.Tensor:
    """Logits [B, L, V] (tied table unless untied), then Gemma-2's final soft cap."""
    return hook("unembed.hook_logits", softcap(linear(hidden, weight), cfg.final_logit_softcapping))
