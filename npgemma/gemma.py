"""Gemma decoder (HF `GemmaModel` / `Gemma2Model`), both generations in one file.

What Gemma-2 changes, each visible where it happens:
  * two extra RMSNorms per layer (after attention, before and after the MLP);
  * queries scaled by query_pre_attn_scalar^-0.5 instead of head_dim^-0.5;
  * attention scores soft-capped (50) before masking, final logits soft-capped (30);
  * even layers attend through a sliding window (the mask, built in paligemma.py, says so).
"""

from __future__ import annotations

import numpy as np

from . import kv_cache
from ._kernels import by_row_blocks
from .config import TextConfig
from .hooks import hook, scope
from .layers import (apply_rope, as_f32, attention, gelu_tanh, linear, merge_heads, rms_norm,
                     rope_tables, softcap, split_heads)


def embed(embed_tokens, input_ids: np.ndarray, cfg: TextConfig) -> np.ndarray:
    """`GemmaTextScaledWordEmbedding`: rows of the table × sqrt(D). int[B, L] -> float32[B, L, D].

    The scale is rounded to the activation dtype first (HF: `embed_scale.to(weight.dtype)`),
    which matters in bfloat16 (sqrt(2048) = 45.25, not 45.2548); here it is float32.
    Ids beyond the table (an out-of-vocabulary `<image>` id) read row 0, as HF does; the merge
    overwrites those positions with image features anyway.
    """
    table = embed_tokens["weight"]
    ids = np.where(input_ids < table.shape[0], input_ids, 0)
    return as_f32(table[ids]) * np.float32(np.sqrt(cfg.hidden_size))  # [B, L] -> [B, L, D]


def feed_forward(x, gate_proj, up_proj, down_proj) -> np.ndarray:
    """`GemmaMLP`: gated tanh-GELU. [B, L, D] -> [B, L, F] -> [B, L, D]."""
    gate, up = linear(x, **gate_proj), linear(x, **up_proj)  # [B, L, D] -> [B, L, F]
    h = by_row_blocks(lambda g, u: gelu_tanh(g) * u, gate, up)  # gelu(gate) · up, in cached blocks
    return linear(hook("mlp.hook_post", h), **down_proj)


def self_attention(x, q_proj, k_proj, v_proj, o_proj, *, cos, sin, mask, cfg: TextConfig,
                   cache=None, layer_idx: int = 0) -> np.ndarray:
    """`GemmaAttention` / `Gemma2Attention`: RoPE'd grouped-query attention, no biases.

    x float32[B, L, D]; cos/sin float32[B, L, H]; mask bool[B, L, S] over cache slots.
    With a cache, the new keys/values are written to it and attention reads every filled slot.
    """
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
        # Gemma-2 normalises the attention output before the residual add...
        x = hook("hook_resid_mid", x + rms_norm(h, **p["post_attention_layernorm"], eps=eps))
        h = feed_forward(rms_norm(x, **p["pre_feedforward_layernorm"], eps=eps), **p["mlp"])
        # ...and the MLP output too.
        return hook("hook_resid_post", x + rms_norm(h, **p["post_feedforward_layernorm"], eps=eps))
    # Gemma-1: HF's `post_attention_layernorm` is really the pre-MLP norm.
    x = hook("hook_resid_mid", x + h)
    return hook("hook_resid_post",
                x + feed_forward(rms_norm(x, **p["post_attention_layernorm"], eps=eps), **p["mlp"]))


def decoder(params, embeds, positions, masks: dict, cfg: TextConfig, cache=None,
            hidden_states: list | None = None) -> np.ndarray:
    """`GemmaModel.forward` from input embeddings: layers, then the final norm.

    embeds float32[B, L, D]; positions int[B, L] (RoPE positions); masks maps a layer type
    ("full_attention" / "sliding_attention") to bool[B, L, S]. Returns float32[B, L, D].
    If `hidden_states` is a list, the input, each layer's output and the final normed output
    are appended, in that order (L + 2 entries).
    """
    cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta)  # cos/sin float32[B, L, H]
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


def lm_head(hidden: np.ndarray, weight: np.ndarray, cfg: TextConfig) -> np.ndarray:
    """Logits float32[B, L, V] from the output table `weight` [V, D] (the embedding table when
    tied), then Gemma-2's final soft cap. The cap is monotone, so greedy tokens do not depend on
    it — sampling does."""
    with scope("lm_head"):  # named for the streaming reader; no hook inside
        logits = linear(hidden, weight)  # [B, L, D] -> [B, L, V]
    return hook("unembed.hook_logits", softcap(logits, cfg.final_logit_softcapping))
