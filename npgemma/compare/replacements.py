"""The functions a deviation swaps in for the reference's, and their numeric helpers.

Each `name(original)` (or `name(dtype)(original)`) takes the reference's function and returns
the one an implementation with that trap would have: a wrapper changing one thing, or a
re-implementation where a wrapper cannot express it. See `deviations.py` for the catalogue.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .swap import Swap

F32 = np.float32
LAYERS, SIGLIP, GEMMA, PG = "npgemma.layers", "npgemma.siglip", "npgemma.gemma", "npgemma.paligemma"


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values rounded to `dtype` (round to nearest even) and widened back."""
    if dtype == "float32":
        return np.asarray(x, np.float32)
    import ml_dtypes

    narrow = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]
    return np.asarray(x, np.float32).astype(narrow).astype(np.float32)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function in float64 (NumPy has none): the Taylor series below |x| = 2.5,
    the continued fraction of erfc above; both ~1e-14 accurate there (tested against math.erf)."""
    x = np.asarray(x, np.float64)
    a = np.abs(x)
    small = np.minimum(a, 2.5)
    term, total = small.copy(), small.copy()
    for n in range(1, 60):  # term_n = (-1)^n x^(2n+1) / n!, summed as term_n / (2n + 1)
        term = term * (-small * small) / n
        total += term / (2 * n + 1)
    big = np.maximum(a, 2.5)
    frac = big.copy()
    for k in range(80, 0, -1):  # erfc(x) = exp(-x²) / (√π (x + ½/(x + 1/(x + (3/2)/(x + …)))))
        frac = big + (k / 2) / frac
    erfc_big = np.exp(-big * big) / (np.sqrt(np.pi) * frac)
    value = np.where(a < 2.5, total * (2 / np.sqrt(np.pi)), 1.0 - erfc_big)
    return np.sign(x) * value


def gelu_erf(_original):
    def gelu_erf(x):
        x64 = np.asarray(x, np.float64)
        return (0.5 * x64 * (1.0 + erf(x64 / np.sqrt(2.0)))).astype(np.float32)
    return gelu_erf


def rms_norm_w(original):
    def rms_norm_w(x, weight, eps):
        return original(x, weight.astype(np.float32) - F32(1.0), eps)  # (1 + (w - 1)) = w
    return rms_norm_w


def apply_rope_interleaved(_original):
    def apply_rope_interleaved(x, cos, sin):
        """Meta-Llama pairs (2i, 2i + 1) rotated by frequency i, from the split-half tables."""
        h = x.shape[-1]
        c, s = cos[..., : h // 2], sin[..., : h // 2]
        if c.ndim == x.ndim - 1:
            c, s = c[:, None], s[:, None]  # [B, L, H/2] -> [B, 1, L, H/2]
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * c - odd * s
        out[..., 1::2] = odd * c + even * s
        return out
    return apply_rope_interleaved


def rope_tables_bf16(original):
    def rope_tables_bf16(positions, head_dim, theta):
        from ..layers import rope_inv_freq

        pos = round_to(positions.astype(np.float32), "bfloat16")
        freqs = round_to(pos[..., None] * round_to(rope_inv_freq(head_dim, theta), "bfloat16"),
                         "bfloat16")  # [B, L] -> [B, L, H/2]
        emb = np.concatenate([freqs, freqs], axis=-1)  # [B, L, H/2] -> [B, L, H]
        return round_to(np.cos(emb), "bfloat16"), round_to(np.sin(emb), "bfloat16")
    return rope_tables_bf16


def positions_from_zero(original):
    return lambda valid: original(valid) - 1


def causal_prefix(original):
    def causal_prefix_mask(valid, is_prefix, q_start, sliding_window=None):
        return original(valid, np.zeros_like(is_prefix), q_start, sliding_window)
    return causal_prefix_mask


def _extra_window(original, allowed):
    """prefix_lm_mask with one more rule on top, allowed(q - k, window) -> bool[L, S], applied
    to every pair (prefix ones too) on the sliding layers."""
    def windowed(valid, is_prefix, q_start, sliding_window=None):
        mask = original(valid, is_prefix, q_start, sliding_window)
        if sliding_window is None:
            return mask
        q = np.arange(q_start, valid.shape[1])[:, None]
        k = np.arange(valid.shape[1])[None, :]
        return mask & allowed(q - k, sliding_window)[None]
    return windowed


def window_on_prefix(original):
    # transformers 4.4x: keys at or beyond `window` behind the query are masked, prefix or not
    return _extra_window(original, lambda d, w: d < w)


def two_way_window(original):
    # keras-hub's PaliGemma: the window as a band both ways, also between prefix tokens
    return _extra_window(original, lambda d, w: np.abs(d) < w)


def as_gemma1(cfg):
    """A PaliGemma 2 config read as PaliGemma 1: Gemma-1's decoder layer (two norms: the
    checkpoint's post_attention_layernorm taken as the pre-MLP norm, the feed-forward norms
    never read), no soft caps, no window, queries scaled by head_dim^-0.5."""
    import dataclasses

    if not cfg.text_config.is_gemma2:
        return cfg
    text = dataclasses.replace(cfg.text_config, model_type="gemma", query_pre_attn_scalar=None,
                               sliding_window=None, layer_types=None, attn_logit_softcapping=None,
                               final_logit_softcapping=None)
    return dataclasses.replace(cfg, text_config=text)


def no_window(original):
    def never_windowed(valid, is_prefix, q_start, sliding_window=None):
        return original(valid, is_prefix, q_start, None)
    return never_windowed


def attention_without_cap(original):
    def attention(q, k, v, mask, scale, logit_cap=None):
        return original(q, k, v, mask, scale, None)
    return attention


def attention_head_dim_scale(original):
    def attention(q, k, v, mask, scale, logit_cap=None):
        return original(q, k, v, mask, q.shape[-1] ** -0.5, logit_cap)
    return attention


def attention_mask_then_cap(_original):
    def attention(q, k, v, mask, scale, logit_cap=None):
        """The reference's attention with the mask applied *before* the soft cap (so a masked
        score becomes -cap, not a large negative)."""
        from ..layers import softcap, softmax

        b, n, l, h = q.shape
        kv = k.shape[1]
        qg = q.reshape(b, kv, n // kv, l, h)  # [B, N, L, H] -> [B, K, G, L, H]
        scores = (qg @ k[:, :, None].swapaxes(-1, -2)) * F32(scale)  # -> [B, K, G, L, S]
        scores = np.where(mask[:, None, None], scores, np.finfo(np.float32).min)
        scores = softcap(scores, logit_cap)
        return (softmax(scores) @ v[:, :, None]).reshape(b, n, l, h)  # -> [B, N, L, H]
    return attention


def attention_neg_inf(original):
    def attention(q, k, v, mask, scale, logit_cap=None):
        """-inf masking: identical where a query may attend somewhere; NaN where it may not
        (softmax of a row of -inf), as a padding query gets."""
        out = original(q, k, v, mask, scale, logit_cap)
        if mask is None:  # everyone sees everyone (SigLIP): no row is dead
            return out
        dead = ~mask.any(axis=-1)  # [B, L]
        return np.where(dead[:, None, :, None], np.float32(np.nan), out)
    return attention


def lm_head_uncapped(_original):
    def lm_head(hidden, weight, cfg):
        from ..hooks import scope
        from ..layers import linear

        with scope("lm_head"):  # as gemma.lm_head: the streaming reader's block
            return linear(hidden, weight)  # [B, L, D] -> [B, L, V], no final soft cap
    return lm_head


def layer_norm_eps(new_eps: float):
    def make(original):
        return lambda x, weight, bias, eps=None: original(x, weight, bias, new_eps)
    return make


def scale_output(factor: Callable[[int], float]):
    """Multiply a function's output float32[..., D] by factor(D) (an embedding-scale trap)."""
    def make(original):
        def scaled(*args, **kwargs):
            out = original(*args, **kwargs)
            return out * F32(factor(out.shape[-1]))
        return scaled
    return make


def image_scale_4x(dtype: str):
    """transformers 4.x: features / sqrt(D), later the whole sequence × sqrt(D) in the dtype."""
    def make(original):
        def project(image_features, linear_params):
            out = original(image_features, linear_params)
            d = out.shape[-1]
            return (out / F32(np.sqrt(d))) * round_to(np.float32(np.sqrt(d)), dtype)
        return project
    return make


def embed_scale_unrounded(dtype: str):
    """sqrt(D) not rounded to the compute dtype: the rounded scale × sqrt(D) / rounded."""
    def factor(d):
        return np.sqrt(np.float64(d)) / np.float64(round_to(np.float32(np.sqrt(d)), dtype))
    return scale_output(factor)


def _rounded_output(dtype: str):
    def make(original):
        return lambda *args, **kwargs: _round_tree(original(*args, **kwargs), dtype)
    return make


def _round_tree(out, dtype):
    if isinstance(out, tuple):
        return tuple(_round_tree(o, dtype) for o in out)
    return round_to(out, dtype) if isinstance(out, np.ndarray) else out


def _linear_in(dtype: str):
    def make(original):
        def linear(x, weight, bias=None):
            w = round_to(weight, dtype)
            return round_to(original(round_to(x, dtype), w, None if bias is None
                                     else round_to(bias, dtype)), dtype)
        return linear
    return make


def _embed_in(dtype: str):
    def make(_original):
        def embed(embed_tokens, input_ids, cfg):
            table = embed_tokens["weight"]
            ids = np.where(input_ids < table.shape[0], input_ids, 0)
            scale = round_to(np.float32(np.sqrt(cfg.hidden_size)), dtype)
            return round_to(round_to(table[ids], dtype) * scale, dtype)  # [B, L] -> [B, L, D]
        return embed
    return make


def compute_in(dtype: str) -> list[Swap]:
    """Every named op rounds its result to `dtype` (what eager torch in that dtype does between
    ops; reductions inside a function stay float32, as torch's accumulate)."""
    rounded = [(LAYERS, n) for n in ("layer_norm", "rms_norm", "gelu_tanh", "softmax", "softcap",
                                     "apply_rope", "rope_tables", "attention")]
    rounded += [(SIGLIP, "embeddings"), (SIGLIP, "encoder_layer"), (GEMMA, "decoder_layer"),
                (GEMMA, "lm_head")]
    return ([Swap(LAYERS, "linear", _linear_in(dtype)), Swap(GEMMA, "embed", _embed_in(dtype))]
            + [Swap(m, n, _rounded_output(dtype)) for m, n in rounded])


def sliding_cache_rolled_early(prompt: int, end: int):
    """The masks hook of a sliding cache that rolls one step early (transformers 4.50's
    `HybridCache._sliding_update`, cache_utils.py: `to_shift = cache_position >= max_cache_len
    - 1`): its C = min(window, end - 1) slots roll when a write *reaches* slot C - 1, though
    they are full only after that write. `generate` allocates prompt + max_new_tokens - 1
    slots: `end - 1` for a run of `end` slots that stopped at max_new_tokens. From decode slot
    q = C - 1 on, for C - 1 steps, the window's oldest key (slot q - C + 1) is gone and the
    empty slot the roll moved in is attended instead: a zero key (score cap·tanh(0) = 0, weight
    e^0) with a zero value. That key is the sliding mask's one extra column, True, which
    `zero_key_attention` reads. A prompt of C slots or more fills the cache whole: it rolls
    right, as every C-slot rolling cache does."""
    def masks(slots, cfg, q):
        out = slots.masks(cfg, q)
        window = cfg.text_config.sliding_window
        if not q or "sliding_attention" not in out or not window:
            return out
        c = min(window, end - 1)
        if prompt >= c or not c - 1 <= q <= 2 * c - 3:
            return out
        sliding = out["sliding_attention"].copy()  # [B, 1, S]
        sliding[:, :, q - c + 1] = False
        extra = np.ones(sliding.shape[:2] + (1,), bool)  # [B, 1, 1]: the empty slot, visible
        return out | {"sliding_attention": np.concatenate([sliding, extra], axis=-1)}
    return masks


def zero_key_attention(original):
    """attention_weights with one more key, all zeros, where the mask has one more column than
    the keys (`sliding_cache_rolled_early`); its value is zero too, so its weight is dropped."""
    def attention_weights(qg, k, mask, scale, logit_cap):
        if mask is None or mask.shape[-1] != k.shape[-2] + 1:
            return original(qg, k, mask, scale, logit_cap)
        zero = np.zeros(k.shape[:2] + (1, k.shape[-1]), k.dtype)  # [B, K, 1, H]
        w = original(qg, np.concatenate([k, zero], axis=2), mask, scale, logit_cap)
        return np.ascontiguousarray(w[..., :-1])  # [B, K, G*L, S + 1] -> [B, K, G*L, S]
    return attention_weights
