"""What a quantization costs, apart from whether the implementation is right: npgemma's
reference on the float weights against the same reference on the quantized weights, over the
same inputs and the same history (llama.cpp's `llama-perplexity --kl-divergence` measures the
same quantities over a text corpus: mean and 99.9th-percentile KL divergence, how often the top
token agrees, the change in the top token's probability).

Compared positions: the prompt's text positions (after the image tokens, which predict
nothing) and each generated position, the float reference's greedy tokens teacher-forced on
both sides, so both see the same history at every position.
"""

from __future__ import annotations

import numpy as np

from .reference import Forward, forced_tokens, greedy_tokens, log_softmax, teacher_forced


def _rows(fwd: Forward, num_image_tokens: int) -> np.ndarray:
    """[P, V] float64: the prompt's text positions, then the decode steps after the first
    (step 0 is the last prompt position again)."""
    return np.concatenate([fwd.logits[num_image_tokens:], fwd.step_logits[1:]]).astype(np.float64)


def kl_rows(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(P || Q) per row, in nats, P the float reference's distribution (llama.cpp's order)."""
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return np.maximum((np.exp(lp) * (lp - lq)).sum(axis=-1), 0.0)


def costs(float_fwd: Forward, quant_fwd: Forward, num_image_tokens: int,
          greedy_float: list[int], greedy_quant: list[int]) -> dict:
    """The cost figures of one input (floats rounded for the report)."""
    p, q = _rows(float_fwd, num_image_tokens), _rows(quant_fwd, num_image_tokens)
    w = min(p.shape[1], q.shape[1])
    p, q = p[:, :w], q[:, :w]
    kl = kl_rows(p, q)
    top_p, top_q = p.argmax(-1), q.argmax(-1)
    prob_p, prob_q = np.exp(log_softmax(p)), np.exp(log_softmax(q))
    rows = np.arange(len(p))
    dp = np.abs(prob_p[rows, top_p] - prob_q[rows, top_p])
    n = min(len(greedy_float), len(greedy_quant))
    same = next((i for i in range(n) if greedy_float[i] != greedy_quant[i]), n)
    return {"positions": int(len(p)), "kl_mean": float(kl.mean()),
            "kl_p99_9": float(np.percentile(kl, 99.9)), "kl_max": float(kl.max()),
            "top1_agreement": float((top_p == top_q).mean()),
            "max_top_prob_change": float(dp.max()),
            "greedy_same_until": int(same), "greedy_compared": int(max(len(greedy_float),
                                                                      len(greedy_quant))),
            "greedy_float": [int(t) for t in greedy_float],
            "greedy_quantized": [int(t) for t in greedy_quant]}


def quantization_cost(float_params, quant_params, cfg, ids, pix, max_new_tokens: int) -> dict:
    """Reference on float weights vs reference on quantized weights, for one input."""
    g_float = greedy_tokens(float_params, cfg, ids, pix, max_new_tokens)
    g_quant = greedy_tokens(quant_params, cfg, ids, pix, max_new_tokens)
    forced = forced_tokens(cfg, g_float)
    a = teacher_forced(float_params, cfg, ids, pix, forced)
    b = teacher_forced(quant_params, cfg, ids, pix, forced)
    return costs(a, b, cfg.num_image_tokens, g_float, g_quant)


def describe(c: dict) -> str:
    """One line: the figures a reader compares across quantizations."""
    return (f"KL mean {c['kl_mean']:.3g}, p99.9 {c['kl_p99_9']:.3g} over {c['positions']} "
            f"positions; top-1 agreement {100 * c['top1_agreement']:.1f}%; largest top-token "
            f"probability change {c['max_top_prob_change']:.3g}; greedy tokens the same for "
            f"{c['greedy_same_until']} of {c['greedy_compared']}")
