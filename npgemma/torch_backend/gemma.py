"""Torch twin of `npgemma/gemma.py`: the Gemma-1 / Gemma-2 decoder."""

from __future__ import annotations

import functools
import math

import torch

from ..config import TextConfig
from ..hooks import hook, scope
from . import kv_cache
from .layers import (F32, apply_rope, attention_bias, attention, gelu_tanh, linear, merge_heads,
                     rms_norm, rope_tables, softcap, split_heads)


@functools.lru_cache(maxsize=None)
def _embed_scale(hidden_size: int, dtype: torch.dtype) -> float:
    """sqrt(D) rounded to the weight dtype (HF: `embed_scale.to(weight.dtype)`; 45.25 in bf16
    for D=2048), as a Python number: a multiplier, never a per-call upload."""
    return float(torch.tensor(math.sqrt(hidden_size), dtype=F32).to(dtype))


def embed(embed_tokens, input_ids: torch.Tensor, cfg: TextConfig) -> torch.Tensor:
    """Scaled embedding lookup; ids beyond the table read row 0 (the merge overwrites them)."""
    table = embed_tokens["weight"]
    ids = input_ids.masked_fill(input_ids >= table.shape[0], 0)
    return table[ids] * _embed_scale(cfg.hidden_size, table.dtype)  # [B, L] -> [B, L, D]


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


def _biases(masks: dict, cfg: TextConfig, dtype: torch.dtype) -> dict:
    """Each layer type's bool mask as the additive bias its attention adds (see
    `layers.attention_bias`), built once per forward; a bias or None passes through."""
    groups = cfg.num_attention_heads // cfg.num_key_value_heads
    score_dtype = dtype if cfg.attn_logit_softcapping is None else F32
    return {name: attention_bias(m, groups, score_dtype, dtype)
            if m is not None and m.dtype == torch.bool else m for name, m in masks.items()}


def decoder(params, embeds, positions, masks: dict, cfg: TextConfig, cache=None,
            hidden_states: list | None = None) -> torch.Tensor:
    """Layers then the final norm: [B, L, D] -> [B, L, D]. `masks` maps a layer type to a
    bool[B, L, S], its bias, or None (no mask)."""
    cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta, dtype=embeds.dtype)
    biases = _biases(masks, cfg, embeds.dtype)
    x = embeds
    if hidden_states is not None:
        hidden_states.append(x)
    for i, layer in enumerate(params["layers"]):
        mask = biases["sliding_attention" if cfg.layer_sliding_window(i) else "full_attention"]
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
    with scope("lm_head"):  # named for the streaming reader; no hook inside
        logits = linear(hidden, weight)
    return hook("unembed.hook_logits", softcap(logits, cfg.final_logit_softcapping))
