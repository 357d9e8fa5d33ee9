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

from .replacements import (GEMMA, LAYERS, PG, SIGLIP, apply_rope_interleaved, as_gemma1,
                           attention_head_dim_scale, attention_mask_then_cap, attention_neg_inf,
                           attention_without_cap, causal_prefix, compute_in, embed_scale_unrounded,
                           gelu_erf, image_scale_4x, layer_norm_eps, lm_head_uncapped, no_window,
                           positions_from_zero, rms_norm_w, rope_tables_bf16, round_to,
                           scale_output, sliding_cache_rolled_early, two_way_window,
                           window_on_prefix, zero_key_attention)
from ..config import with_window
from .swap import Swap, swapped

# ---- the catalogue ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Deviation:
    name: str
    note: int                  # the README numerics note it breaks
    explain: str               # "the other implementation ...; <what to do>"
    swaps: Callable[[str], list[Swap]]   # compute dtype -> the swaps
    needs: str = ""            # what an input must have for the trap to show (if not always)
    judged_at: str | None = None   # a match is judged by this dtype's tolerances (not the run's)
    # A trap of reading config.json (the model is run with this config instead of the real one);
    # None for the traps of the math.
    config: Callable | None = None
    family: str = "math"       # the catalogue's family (math, config, decode-time)
    # Another authority's semantics rather than a fault (see trap.Trap.authority).
    authority: str | None = None
    # A decode-time trap: (positions of one decode step int[B, 1], the step's slots, its query
    # slot) -> the positions the implementation feeds; None for the others.
    decode_positions: Callable | None = None
    # A decode-time trap of the cache: (prompt slots, slots of the whole teacher-forced run) ->
    # a `teacher_forced` masks hook; None for the others.
    decode_masks: Callable | None = None
    how: str = ""              # how it is swapped in, where the swaps alone do not say it
    breaks: str = ""           # what it breaks, where that is not a numerics note


_DECODER = (GEMMA,)
# The authorities whose Gemma 2 window semantics differ from transformers 5.24's (npgemma's
# default): they agree below the window (4096 tokens), i.e. on every 224 and 448 px checkpoint.
TRANSFORMERS = "transformers 5.24"
BIG_VISION = "big_vision (the training code: no sliding window)"
KERAS_HUB = "keras-hub (the window as a two-way band)"
_NARROW = "bf16/fp16 compute, and even then it is below their tolerances"
DEVIATIONS: dict[str, Deviation] = {d.name: d for d in (
    Deviation("causal-prefix", 7, "the other implementation runs a causal prefix; pass "
              "token_type_ids (all 0 for the prompt) so the image and prompt attend both ways",
              lambda dt: [Swap(PG, "prefix_lm_mask", causal_prefix)]),
    Deviation("no-one-plus-w", 1, "the other implementation's RMSNorm scales by w, not (1 + w); "
              "Gemma stores the scale as an offset from 1",
              lambda dt: [Swap(LAYERS, "rms_norm", rms_norm_w)]),
    Deviation("erf-gelu", 2, "the other implementation uses the erf GELU; Gemma and SigLIP use "
              "the tanh approximation (gelu_pytorch_tanh), also for hidden_act 'gelu'",
              lambda dt: [Swap(LAYERS, "gelu_tanh", gelu_erf)]),
    Deviation("interleaved-rope", 3, "the other implementation rotates interleaved pairs (2i, 2i+1); "
              "Gemma's RoPE is split-half (rotate_half: i and i + H/2)",
              lambda dt: [Swap(LAYERS, "apply_rope", apply_rope_interleaved)]),
    Deviation("rope-in-bf16", 3, "the other implementation builds the RoPE angles in bfloat16; "
              "compute positions × inv_freq and cos/sin in float32",
              lambda dt: [Swap(LAYERS, "rope_tables", rope_tables_bf16)]),
    Deviation("zero-based-positions", 6, "the other implementation counts positions from 0; "
              "PaliGemma's first token is at position 1",
              lambda dt: [Swap(PG, "rope_positions", positions_from_zero)],
              needs="positions mixing both; RoPE is relative, a shift of all of them cancels"),
    Deviation("decode-positions-minus-1", 6, "the other implementation feeds each cached decode "
              "step the position sum(mask) - 1, one less than the prompt's 1..L numbering gives "
              "it (the prompt logits match; every decode step is off); count decode positions "
              "on from the prompt's last",
              lambda dt: [], family="decode-time", needs="a generated token",
              decode_positions=lambda pos, slots, q: pos - 1),
    Deviation("decode-positions-plus-1", 6, "the other implementation feeds each cached decode "
              "step one position more than the prompt's 1..L numbering gives it (the prompt "
              "logits match; every decode step is off)",
              lambda dt: [], family="decode-time", needs="a generated token",
              decode_positions=lambda pos, slots, q: pos + 1),
    Deviation("sliding-cache-rolls-early", 8, "the other implementation's rolling sliding-"
              "window cache (C = min(window, its length) slots) rolls one step early, when a "
              "write reaches its last slot (transformers 4.50's HybridCache: to_shift = "
              "cache_position >= max_cache_len - 1): from decode slot C - 1 on, for C - 1 steps, "
              "the window's oldest key is dropped and an empty slot (a zero key and value) is "
              "attended; with a window longer than the sequence that is the last decode step "
              "of an answer that ran to max_new_tokens. Roll only once the cache is full",
              lambda dt: [Swap(LAYERS, "attention_weights", zero_key_attention)],
              family="decode-time", decode_masks=sliding_cache_rolled_early,
              breaks="kv_cache.py: the cache holds the whole sequence; the window is a mask",
              needs="a Gemma-2 prompt shorter than min(window, the cache) and a decode step at "
              "its last slot", how="the reference's decode steps on the sliding layers as that "
              "cache holds them: key q - C + 1 masked and a zero key added (a masks hook of "
              "reference.teacher_forced; Swap npgemma.layers.attention_weights)"),
    Deviation("image-scale-4x", 4, "the other implementation divides the image features by sqrt(D) "
              "and multiplies the whole sequence by sqrt(D) rounded to its dtype "
              "(transformers 4.x); leave image features unscaled",
              lambda dt: [Swap(PG, "project", image_scale_4x(dt))], needs=_NARROW),
    Deviation("scaled-image-features", 4, "the other implementation multiplies the image features "
              "by sqrt(D) too; only text embeddings are scaled",
              lambda dt: [Swap(PG, "project", scale_output(np.sqrt))]),
    Deviation("unscaled-text-embeddings", 4, "the other implementation does not multiply the text "
              "embeddings by sqrt(D)",
              lambda dt: [Swap(GEMMA, "embed", scale_output(lambda d: 1 / np.float32(np.sqrt(d))))]),
    Deviation("embed-scale-unrounded", 4, "the other implementation multiplies the text embeddings "
              "by sqrt(D) in full precision; round the scale to the compute dtype first",
              lambda dt: [Swap(GEMMA, "embed", embed_scale_unrounded(dt))], needs=_NARROW),
    Deviation("embed-scale-bf16", 4, "the other implementation rounds sqrt(D) to bfloat16 (e.g. to "
              "the stored weight dtype) while computing in a wider dtype",
              lambda dt: [Swap(GEMMA, "embed", scale_output(
                  lambda d: round_to(np.float32(np.sqrt(d)), "bfloat16") / np.float32(np.sqrt(d))))],
              needs="a hidden size whose sqrt is not a bfloat16 number (at tiny widths it moves "
              "logits below the tolerances)"),
    Deviation("no-attn-softcap", 5, "the other implementation drops Gemma-2's attention soft cap "
              "(attn_logit_softcapping)", lambda dt: [Swap(LAYERS, "attention",
                                                           attention_without_cap, _DECODER)],
              needs="a Gemma-2 checkpoint"),
    Deviation("mask-before-softcap", 5, "the other implementation masks before the attention soft "
              "cap (a masked score becomes -cap); cap first, then mask",
              lambda dt: [Swap(LAYERS, "attention", attention_mask_then_cap, _DECODER)],
              needs="a Gemma-2 checkpoint"),
    Deviation("head-dim-query-scale", 5, "the other implementation scales Gemma-2 queries by "
              "head_dim^-0.5; use query_pre_attn_scalar^-0.5",
              lambda dt: [Swap(LAYERS, "attention", attention_head_dim_scale, _DECODER)],
              needs="a Gemma-2 checkpoint with query_pre_attn_scalar != head_dim"),
    Deviation("window-on-prefix", 8, "the other implementation applies the sliding window inside "
              "the prefix; prefix tokens see the whole prefix (transformers 5.24)",
              lambda dt: [Swap(PG, "prefix_lm_mask", window_on_prefix)],
              needs="a Gemma-2 prefix longer than the window"),
    Deviation("two-way-window", 8, "the other implementation applies the sliding window as a "
              "band both ways, also between prefix tokens (a prefix token sees neither the keys "
              "far behind nor far ahead); prefix tokens see the whole prefix (transformers 5.24)",
              lambda dt: [Swap(PG, "prefix_lm_mask", two_way_window)],
              needs="a Gemma-2 prefix longer than the window", authority=KERAS_HUB),
    Deviation("gemma2-as-gemma1", 0, "the other implementation loads the PaliGemma 2 checkpoint "
              "as PaliGemma 1 (Gemma-1 layers: two of the four norms, no soft caps, no window, "
              "head_dim query scale); read text_config.model_type 'gemma2'",
              lambda dt: [], needs="a PaliGemma 2 checkpoint", config=as_gemma1, family="config"),
    Deviation("no-sliding-window", 8, "the other implementation never applies Gemma-2's sliding "
              "window (even layers window generated tokens)",
              lambda dt: [Swap(PG, "prefix_lm_mask", no_window)],
              needs="a Gemma-2 sequence longer than the window",
              authority=BIG_VISION),
    Deviation("transformers-window", 8, "the other implementation windows the generated tokens "
              "(Gemma-2's sliding window as transformers 5.24 applies it), where npgemma here "
              "runs big_vision's semantics (--window big_vision: no window)",
              lambda dt: [], needs="npgemma run with --window big_vision, and a Gemma-2 "
              "sequence longer than the window", config=lambda cfg: with_window(cfg, "transformers"),
              family="config", authority=TRANSFORMERS,
              how="npgemma runs with --window transformers"),
    Deviation("siglip-eps-1e-5", 9, "the other implementation's SigLIP LayerNorm uses eps 1e-5 "
              "(torch's default); SigLIP's is 1e-6",
              lambda dt: [Swap(LAYERS, "layer_norm", layer_norm_eps(1e-5), (SIGLIP,))],
              needs="LayerNorm inputs of small variance; elsewhere it moves logits ~1e-4, "
              "near float32's tolerance"),
    Deviation("no-final-softcap", 10, "the other implementation drops Gemma-2's final logit soft cap "
              "(final_logit_softcapping); greedy tokens are unchanged, sampling is not",
              lambda dt: [Swap(GEMMA, "lm_head", lm_head_uncapped)],
              needs="a Gemma-2 checkpoint"),
    Deviation("neg-inf-mask", 11, "the other implementation masks with -inf: a fully masked "
              "(padding) query row becomes NaN and spreads; use a large finite negative",
              lambda dt: [Swap(LAYERS, "attention", attention_neg_inf)],
              needs="a left-padded batch"),
    Deviation("bf16-compute", 0, "the other implementation computes in bfloat16; compare it with "
              "--dtype bfloat16 (bf16 tolerances), or run it in float32",
              lambda dt: compute_in("bfloat16"), judged_at="bfloat16"),
)}


def deviated_config(names, cfg):
    """The config the reference runs with under deviations `names` (the config traps applied)."""
    for name in names:
        if DEVIATIONS[name].config is not None:
            cfg = DEVIATIONS[name].config(cfg)
    return cfg


@contextlib.contextmanager
def deviated(name: str, dtype: str = "float32") -> Iterator[None]:
    """Run npgemma's NumPy reference as an implementation with deviation `name` would."""
    if name not in DEVIATIONS:
        from ..errors import InputError

        raise InputError(f"unknown deviation {name!r}; known: {', '.join(DEVIATIONS)}")
    with swapped(DEVIATIONS[name].swaps(dtype)):
        yield
