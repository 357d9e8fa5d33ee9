"""What a Trace says, in NumPy: attention to the image, rollout, logit lens, per-layer statistics.

Shapes: T generated tokens, S positions a query ran at (see `trace.py`), P image patches
on a g x g grid, Y decoder layers, k the top-k of the logit lens. The query row that produced
generated token t is L - 1 + t (L = prompt length); "the attention of token t" means that row's.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..generation.slots import Slots
from ..layers import rms_norm, softcap, softmax

F64 = np.float64


def _layers(trace, tower: str, hook: str) -> list[np.ndarray]:
    """trace["{tower}.blocks.{l}.{hook}"] for every captured layer l, in order."""
    out, i = [], 0
    while f"{tower}.blocks.{i}.{hook}" in trace:
        out.append(trace[f"{tower}.blocks.{i}.{hook}"])
        i += 1
    if not out:
        raise InputError(f"the trace holds no {tower}.blocks.*.{hook}: trace with names including "
                         f"'{tower}.blocks.*.{hook}'")
    return out


def image_positions(trace) -> np.ndarray:
    """int[P]: the prompt positions holding the image tokens, in patch (row-major) order."""
    return np.flatnonzero(np.asarray(trace.input_ids) == trace.image_token_index)


def answer_rows(trace) -> np.ndarray:
    """int[T]: the query row that produced each generated token."""
    return trace.prompt_len - 1 + np.arange(len(trace.token_ids))


def _grid(x: np.ndarray, g: int) -> np.ndarray:
    return x.reshape(*x.shape[:-1], g, g)  # [..., P] -> [..., g, g]


def image_attention(trace, head: int | None = None) -> np.ndarray:
    """float32[Y, T, g, g]: each layer's attention from each generated token to the patches,
    one head (its index among the captured heads) or the mean over heads (head=None)."""
    img, rows = image_positions(trace), answer_rows(trace)
    out = []
    for a in _layers(trace, "decoder", "attn.hook_pattern"):
        a = a[0].mean(axis=0) if head is None else a[0, head]  # [N, S, S] -> [S, S]
        out.append(a[rows][:, img])  # [T, P]
    return _grid(np.stack(out), trace.grid)


def _rownorm(a: np.ndarray) -> np.ndarray:
    return a / a.sum(axis=-1, keepdims=True)


def rollout(patterns: list[np.ndarray]) -> list[np.ndarray]:
    """Attention rollout (Abnar & Zuidema 2020): R_l = rownorm(mean_h A_l + I) @ R_{l-1}, R_0 = I.
    patterns: per layer [B, N, S, S] -> per layer float64[S, S] (how much each position's
    output at layer l draws on each input position, through the residual stream)."""
    s = patterns[0].shape[-1]
    r, out = np.eye(s, dtype=F64), []
    for a in patterns:
        r = _rownorm(a[0].astype(F64).mean(axis=0) + np.eye(s)) @ r  # [S, S] @ [S, S]
        out.append(r)
    return out


def decoder_rollout(trace) -> np.ndarray:
    """float64[Y, T, g, g]: rollout through decoder layers 0..l from each generated token onto
    the image tokens (their share of the row; the rest goes to text positions)."""
    img, rows = image_positions(trace), answer_rows(trace)
    r = rollout(_layers(trace, "decoder", "attn.hook_pattern"))
    return _grid(np.stack([x[rows][:, img] for x in r]), trace.grid)


def pixel_rollout(trace) -> np.ndarray:
    """float64[T, g, g]: the full decoder rollout onto the image tokens, carried on through the
    SigLIP rollout to the input patches (pixels, patch by patch), each row summing to the
    image tokens' share."""
    img, rows = image_positions(trace), answer_rows(trace)
    dec = rollout(_layers(trace, "decoder", "attn.hook_pattern"))[-1][rows][:, img]  # [T, P]
    vis = rollout(_layers(trace, "vision", "attn.hook_pattern"))[-1]  # [P, P]
    return _grid(dec @ vis, trace.grid)


def logit_lens(trace, final_norm: np.ndarray, head: np.ndarray, cfg, k: int = 5):
    """Each layer's residual read out as the final layer would: (ids int[Y, T, k], probs
    float32[Y, T, k]), the top-k next tokens of each layer at each generated token's row.

    residual -> final RMSNorm (x * rsqrt(mean x² + eps) * (1 + w)) -> lm_head `head` [V, D]
    -> Gemma-2's final soft cap -> softmax. The last layer's row is exactly the model's logits.
    """
    rows, t = answer_rows(trace), cfg.text_config
    ids, probs = [], []
    for x in _layers(trace, "decoder", "hook_resid_post"):
        h = rms_norm(x[0, rows], final_norm, t.rms_norm_eps)  # [T, D]
        p = softmax(softcap(h @ head.T.astype(np.float32), t.final_logit_softcapping))  # [T, V]
        top = np.argsort(-p, axis=-1, kind="stable")[:, :k]
        ids.append(top)
        probs.append(np.take_along_axis(p, top, axis=-1))
    return np.stack(ids), np.stack(probs)


MASS_GROUPS = ("image", "<bos>", "prompt", "generated")


def attention_mass(trace) -> np.ndarray:
    """float32[Y, 4]: per layer, the attention of the generated tokens' rows (mean over heads and
    tokens) that goes to the image tokens, `<bos>`, the prompt text (incl. its "\\n") and the
    tokens generated so far. Each row sums to 1."""
    ids = np.asarray(trace.input_ids)
    rows, L = answer_rows(trace), trace.prompt_len
    groups = [ids == trace.image_token_index, ids == trace.bos_token_id]
    groups.append(~(groups[0] | groups[1]))
    out = []
    for a in _layers(trace, "decoder", "attn.hook_pattern"):
        w = a[0].mean(axis=0)[rows]  # [T, S]
        out.append([w[:, :L][:, m].sum(axis=1).mean() for m in groups] + [w[:, L:].sum(axis=1).mean()])
    return np.asarray(out, np.float32)


def residual_norms(trace) -> np.ndarray:
    """float32[Y, 3]: mean L2 norm of each layer's output over the image tokens, the prompt
    text and the generated tokens' rows."""
    img = np.zeros(trace.prompt_len, bool)
    img[image_positions(trace)] = True
    rows = answer_rows(trace)
    out = []
    for x in _layers(trace, "decoder", "hook_resid_post"):
        n = np.linalg.norm(x[0].astype(F64), axis=-1)  # [S]
        out.append([n[:trace.prompt_len][img].mean(), n[:trace.prompt_len][~img].mean(), n[rows].mean()])
    return np.asarray(out, np.float32)


def occlusion(pipe, pixel_values: np.ndarray, input_ids: np.ndarray, token_id: int,
              grid: int = 4, progress=None) -> np.ndarray:
    """float32[grid, grid]: logit of `token_id` (the answer's first token) at the last prompt
    position, minus the same logit with one cell of a grid x grid partition of the image set to
    0 (mid-grey after normalisation). Positive = the cell mattered for that answer."""
    size = pixel_values.shape[-1]
    edges = np.linspace(0, size, grid + 1).round().astype(int)
    ids = np.asarray(input_ids)[None]
    slots = Slots.full(1, ids.shape[1])

    def logit(pixels):
        feats = pipe.backend.encode_image(pipe.params, pixels[None], pipe.cfg)
        out, _ = pipe.backend.forward(pipe.params, pipe.cfg, ids, slots.positions(),
                                      slots.masks(pipe.cfg), image_features=feats, last_only=True)
        return float(pipe.backend.to_numpy(out)[0, -1, token_id])

    base, out = logit(pixel_values), np.zeros((grid, grid), np.float32)
    cells = [(i, j) for i in range(grid) for j in range(grid)]
    for i, j in (cells if progress is None else progress(cells)):
        blanked = pixel_values.copy()
        blanked[:, edges[i]:edges[i + 1], edges[j]:edges[j + 1]] = 0.0
        out[i, j] = base - logit(blanked)
    return out
