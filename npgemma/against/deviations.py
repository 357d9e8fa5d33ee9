"""The known ways to get PaliGemma almost right, as swaps of npgemma's public functions.

Each `Deviation` is one trap of the README's numerics notes (the `note` number), written as a
replacement of a named function of the NumPy reference — wrapping the original with the one
thing changed, or re-implementing it where wrapping cannot express the change. Nothing here
edits the reference: `deviated(name)` swaps the functions in (see `swap.py`) for a `with`
block, so the reference computes what an implementation that fell into that trap computes.

`dtype` is the other implementation's compute dtype: the traps about rounding a scale to the
compute dtype depend on it (in float32 they are no-ops, which the diagnosis reports).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from .swap import Swap, swapped

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


# ---- the replacements (each takes the original, returns the function used instead) ----------

def _gelu_erf(_original):
    def gelu_erf(x):
        x64 = np.asarray(x, np.float64)
        return (0.5 * x64 * (1.0 + erf(x64 / np.sqrt(2.0)))).astype(np.float32)
    return gelu_erf


def _rms_norm_w(original):
    def rms_norm_w(x, weight, eps):
        return original(x, weight.astype(np.float32) - F32(1.0), eps)  # (1 + (w - 1)) = w
    return rms_norm_w


def _apply_rope_interleaved(_original):
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


def _rope_tables_bf16(original):
    def rope_tables_bf16(positions, head_dim, theta):
        from npgemma.layers import rope_inv_freq

        pos = round_to(positions.astype(np.float32), "bfloat16")
        freqs = round_to(pos[..., None] * round_to(rope_inv_freq(head_dim, theta), "bfloat16"),
                         "bfloat16")  # [B, L] -> [B, L, H/2]
        emb = np.concatenate([freqs, freqs], axis=-1)  # [B, L, H/2] -> [B, L, H]
        return round_to(np.cos(emb), "bfloat16"), round_to(np.sin(emb), "bfloat16")
    return rope_tables_bf16


def _positions_from_zero(original):
    return lambda valid: original(valid) - 1


def _causal_prefix(original):
    def causal_prefix_mask(valid, is_prefix, q_start, sliding_window=None):
        return original(valid, np.zeros_like(is_prefix), q_start, sliding_window)
    return causal_prefix_mask


def _window_on_prefix(original):
    def window_everywhere(valid, is_prefix, q_start, sliding_window=None):
        mask = original(valid, is_prefix, q_start, sliding_window)
        if sliding_window is None:
            return mask
        # transformers 4.4x: keys at or beyond `window` behind the query are masked, prefix or not
        q = np.arange(q_start, valid.shape[1])[:, None]
        k = np.arange(valid.shape[1])[None, :]
        return mask & (q - k < sliding_window)[None]
    return window_everywhere


def _no_window(original):
    def never_windowed(valid, is_prefix, q_start, sliding_window=None):
        return original(valid, is_prefix, q_start, None)
    return never_windowed


def _attention_without_cap(original):
    def attention(q, k, v, mask, scale, logit_cap=None):
        return original(q, k, v, mask, scale, None)
    return attention


def _attention_head_dim_scale(original):
    def attention(q, k, v, mask, scale, logit_cap=None):
        return original(q, k, v, mask, q.shape[-1] ** -0.5, logit_cap)
    return attention


def _attention_mask_then_cap(_original):
    def attention(q, k, v, mask, scale, logit_cap=None):
        """The reference's attention with the mask applied *before* the soft cap (so a masked
        score becomes -cap, not a large negative)."""
        from npgemma.layers import MASK_VALUE, softcap, softmax

        b, n, l, h = q.shape
        kv = k.shape[1]
        qg = q.reshape(b, kv, n // kv, l, h)  # [B, N, L, H] -> [B, K, G, L, H]
        scores = (qg @ k[:, :, None].swapaxes(-1, -2)) * F32(scale)  # -> [B, K, G, L, S]
        scores = softcap(np.where(mask[:, None, None], scores, MASK_VALUE), logit_cap)
        return (softmax(scores) @ v[:, :, None]).reshape(b, n, l, h)  # -> [B, N, L, H]
    return attention


def _attention_neg_inf(original):
    def attention(q, k, v, mask, scale, logit_cap=None):
        """-inf masking: identical where a query may attend somewhere; NaN where it may not
        (softmax of a row of -inf), as a padding query gets."""
        out = original(q, k, v, mask, scale, logit_cap)
        dead = ~mask.any(axis=-1)  # [B, L]
        return np.where(dead[:, None, :, None], np.float32(np.nan), out)
    return attention


def _lm_head_uncapped(_original):
    def lm_head(hidden, weight, cfg):
        from npgemma.layers import linear

        return linear(hidden, weight)  # [B, L, D] -> [B, L, V], no final soft cap
    return lm_head


def _layer_norm_eps(new_eps: float):
    def make(original):
        return lambda x, weight, bias, eps=None: original(x, weight, bias, new_eps)
    return make


def _scale_output(factor: Callable[[int], float]):
    """Multiply a function's output float32[..., D] by factor(D) (an embedding-scale trap)."""
    def make(original):
        def scaled(*args, **kwargs):
            out = original(*args, **kwargs)
            return out * F32(factor(out.shape[-1]))
        return scaled
    return make


def _image_scale_4x(dtype: str):
    """transformers 4.x: features / sqrt(D), later the whole sequence × sqrt(D) in the dtype."""
    def make(original):
        def project(image_features, linear_params):
            out = original(image_features, linear_params)
            d = out.shape[-1]
            return (out / F32(np.sqrt(d))) * round_to(np.float32(np.sqrt(d)), dtype)
        return project
    return make


def _embed_scale_unrounded(dtype: str):
    """sqrt(D) not rounded to the compute dtype: the rounded scale × sqrt(D) / rounded."""
    def factor(d):
        return np.sqrt(np.float64(d)) / np.float64(round_to(np.float32(np.sqrt(d)), dtype))
    return _scale_output(factor)


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


def _compute_in(dtype: str) -> list[Swap]:
    """Every named op rounds its result to `dtype` (what eager torch in that dtype does between
    ops; reductions inside a function stay float32, as torch's accumulate)."""
    rounded = [(LAYERS, n) for n in ("layer_norm", "rms_norm", "gelu_tanh", "softmax", "softcap",
                                     "apply_rope", "rope_tables", "attention")]
    rounded += [(SIGLIP, "embeddings"), (SIGLIP, "encoder_layer"), (GEMMA, "decoder_layer"),
                (GEMMA, "lm_head")]
    return ([Swap(LAYERS, "linear", _linear_in(dtype)), Swap(GEMMA, "embed", _embed_in(dtype))]
            + [Swap(m, n, _rounded_output(dtype)) for m, n in rounded])


# ---- the catalogue ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Deviation:
    name: str
    note: int                  # the README numerics note it breaks
    explain: str               # "the other implementation ...; <what to do>"
    swaps: Callable[[str], list[Swap]]   # compute dtype -> the swaps
    needs: str = ""            # what an input must have for the trap to show (if not always)
    judged_at: str | None = None   # a match is judged by this dtype's tolerances (not the run's)


_DECODER = (GEMMA,)
_NARROW = "bf16/fp16 compute, and even then it is below their tolerances"
DEVIATIONS: dict[str, Deviation] = {d.name: d for d in (
    Deviation("causal-prefix", 7, "the other implementation runs a causal prefix; pass "
              "token_type_ids (all 0 for the prompt) so the image and prompt attend both ways",
              lambda dt: [Swap(PG, "prefix_lm_mask", _causal_prefix)]),
    Deviation("no-one-plus-w", 1, "the other implementation's RMSNorm scales by w, not (1 + w); "
              "Gemma stores the scale as an offset from 1",
              lambda dt: [Swap(LAYERS, "rms_norm", _rms_norm_w)]),
    Deviation("erf-gelu", 2, "the other implementation uses the erf GELU; Gemma and SigLIP use "
              "the tanh approximation (gelu_pytorch_tanh), also for hidden_act 'gelu'",
              lambda dt: [Swap(LAYERS, "gelu_tanh", _gelu_erf)]),
    Deviation("interleaved-rope", 3, "the other implementation rotates interleaved pairs (2i, 2i+1); "
              "Gemma's RoPE is split-half (rotate_half: i and i + H/2)",
              lambda dt: [Swap(LAYERS, "apply_rope", _apply_rope_interleaved)]),
    Deviation("rope-in-bf16", 3, "the other implementation builds the RoPE angles in bfloat16; "
              "compute positions × inv_freq and cos/sin in float32",
              lambda dt: [Swap(LAYERS, "rope_tables", _rope_tables_bf16)]),
    Deviation("zero-based-positions", 6, "the other implementation counts positions from 0; "
              "PaliGemma's first token is at position 1",
              lambda dt: [Swap(PG, "rope_positions", _positions_from_zero)],
              needs="positions mixing both; RoPE is relative, a shift of all of them cancels"),
    Deviation("image-scale-4x", 4, "the other implementation divides the image features by sqrt(D) "
              "and multiplies the whole sequence by sqrt(D) rounded to its dtype "
              "(transformers 4.x); leave image features unscaled",
              lambda dt: [Swap(PG, "project", _image_scale_4x(dt))], needs=_NARROW),
    Deviation("scaled-image-features", 4, "the other implementation multiplies the image features "
              "by sqrt(D) too; only text embeddings are scaled",
              lambda dt: [Swap(PG, "project", _scale_output(np.sqrt))]),
    Deviation("unscaled-text-embeddings", 4, "the other implementation does not multiply the text "
              "embeddings by sqrt(D)",
              lambda dt: [Swap(GEMMA, "embed", _scale_output(lambda d: 1 / np.float32(np.sqrt(d))))]),
    Deviation("embed-scale-unrounded", 4, "the other implementation multiplies the text embeddings "
              "by sqrt(D) in full precision; round the scale to the compute dtype first",
              lambda dt: [Swap(GEMMA, "embed", _embed_scale_unrounded(dt))], needs=_NARROW),
    Deviation("embed-scale-bf16", 4, "the other implementation rounds sqrt(D) to bfloat16 (e.g. to "
              "the stored weight dtype) while computing in a wider dtype",
              lambda dt: [Swap(GEMMA, "embed", _scale_output(
                  lambda d: round_to(np.float32(np.sqrt(d)), "bfloat16") / np.float32(np.sqrt(d))))]),
    Deviation("no-attn-softcap", 5, "the other implementation drops Gemma-2's attention soft cap "
              "(attn_logit_softcapping)", lambda dt: [Swap(LAYERS, "attention",
                                                           _attention_without_cap, _DECODER)],
              needs="a Gemma-2 checkpoint"),
    Deviation("mask-before-softcap", 5, "the other implementation masks before the attention soft "
              "cap (a masked score becomes -cap); cap first, then mask",
              lambda dt: [Swap(LAYERS, "attention", _attention_mask_then_cap, _DECODER)],
              needs="a Gemma-2 checkpoint"),
    Deviation("head-dim-query-scale", 5, "the other implementation scales Gemma-2 queries by "
              "head_dim^-0.5; use query_pre_attn_scalar^-0.5",
              lambda dt: [Swap(LAYERS, "attention", _attention_head_dim_scale, _DECODER)],
              needs="a Gemma-2 checkpoint with query_pre_attn_scalar != head_dim"),
    Deviation("window-on-prefix", 8, "the other implementation applies the sliding window inside "
              "the prefix; prefix tokens see the whole prefix (transformers 5.24)",
              lambda dt: [Swap(PG, "prefix_lm_mask", _window_on_prefix)],
              needs="a Gemma-2 prefix longer than the window"),
    Deviation("no-sliding-window", 8, "the other implementation never applies Gemma-2's sliding "
              "window (even layers window generated tokens)",
              lambda dt: [Swap(PG, "prefix_lm_mask", _no_window)],
              needs="a Gemma-2 sequence longer than the window"),
    Deviation("siglip-eps-1e-5", 9, "the other implementation's SigLIP LayerNorm uses eps 1e-5 "
              "(torch's default); SigLIP's is 1e-6",
              lambda dt: [Swap(LAYERS, "layer_norm", _layer_norm_eps(1e-5), (SIGLIP,))]),
    Deviation("no-final-softcap", 10, "the other implementation drops Gemma-2's final logit soft cap "
              "(final_logit_softcapping); greedy tokens are unchanged, sampling is not",
              lambda dt: [Swap(GEMMA, "lm_head", _lm_head_uncapped)],
              needs="a Gemma-2 checkpoint"),
    Deviation("neg-inf-mask", 11, "the other implementation masks with -inf: a fully masked "
              "(padding) query row becomes NaN and spreads; use a large finite negative",
              lambda dt: [Swap(LAYERS, "attention", _attention_neg_inf)],
              needs="a left-padded batch"),
    Deviation("bf16-compute", 0, "the other implementation computes in bfloat16; compare it with "
              "--dtype bfloat16 (bf16 tolerances), or run it in float32",
              lambda dt: _compute_in("bfloat16"), judged_at="bfloat16"),
)}


@contextlib.contextmanager
def deviated(name: str, dtype: str = "float32") -> Iterator[None]:
    """Run npgemma's NumPy reference as an implementation with deviation `name` would."""
    if name not in DEVIATIONS:
        from npgemma.errors import InputError

        raise InputError(f"unknown deviation {name!r}; known: {', '.join(DEVIATIONS)}")
    with swapped(DEVIATIONS[name].swaps(dtype)):
        yield
