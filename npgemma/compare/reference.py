"""npgemma's side of `npgemma parity --against`: the NumPy reference, float32, on one example.

Everything is computed through module attributes (`paligemma.forward`, ...), so a deviation
swapped in by `deviations.deviated` applies here too. The other implementation's greedy
tokens are *teacher-forced*: the reference prefills the prompt (logits at every prompt
position), then decodes *their* tokens one by one, giving the distribution behind each of
their tokens from the same history — every step compares like with like, even after a
divergence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import paligemma
from ..generation import generate
from ..generation.numpy_backend import NumpyBackend
from ..generation.slots import Slots


@dataclass
class Forward:
    logits: np.ndarray          # float32[L, V] at the prompt positions
    step_logits: np.ndarray     # float32[T + 1, V]: behind each forced token, and the next one
    hidden_states: list | None  # decoder, transformers' order: L + 1 entries of float32[L, D]


def forced_tokens(cfg, tokens) -> list[int]:
    """The tokens that can be teacher-forced: up to (not including) the first EOS, or the first
    `<image>` / out-of-vocabulary id (which no forward accepts as text)."""
    out = []
    for t in tokens:
        if t == cfg.eos_token_id or t == cfg.image_token_index or not 0 <= t < cfg.text_config.vocab_size:
            break
        out.append(int(t))
    return out


def teacher_forced(params, cfg, input_ids: np.ndarray, pixel_values: np.ndarray, tokens,
                   hidden: bool = False, pad: int = 0, decode_positions=None,
                   masks=None) -> Forward:
    """Prefill input_ids int[L] (the bidirectional prefix), then decode `tokens` one at a time
    through the KV-cache, as generation does — so a deviation that lets a query see a later
    key (a mask applied before the soft cap) acts as it does in a real decode loop.

    `pad`: the row as a left-padded batch row, behind `pad` pad slots (which a correct
    implementation masks: the result is the row's alone). The hooks are how a decode-time or
    batch trap is swapped in: decode_positions(positions int[1, 1], slots, q) -> the positions
    a decode step is fed; masks(slots, cfg, q) -> the masks of the queries at slots q.. ."""
    n = len(input_ids)
    ids = np.asarray(input_ids, np.int64)[None]  # [1, L]
    valid = np.ones((1, pad + n), bool)
    valid[:, :pad] = False
    if pad:
        ids = np.concatenate([np.full((1, pad), cfg.pad_token_id or 0, np.int64), ids], axis=1)
    slots = Slots.prompt(valid)
    mask_of = masks or (lambda sl, c, q: sl.masks(c, q))
    states: list | None = [] if hidden else None
    cache = paligemma.init_cache(cfg, 1, pad + n + len(tokens))
    feats = paligemma.encode_image(params, pixel_values[None].astype(np.float32), cfg)
    logits, cache = paligemma.forward(params, cfg, ids, slots.positions(), mask_of(slots, cfg, 0),
                                      image_features=feats, cache=cache, hidden_states=states)
    steps = [logits[0, -1]]
    for t in tokens:  # each forced token is a real, causal (suffix) slot
        slots = slots.append()
        q = slots.length - 1
        positions = slots.positions(q)
        if decode_positions is not None:
            positions = decode_positions(positions, slots, q)
        step, cache = paligemma.forward(params, cfg, np.array([[t]], np.int64), positions,
                                        mask_of(slots, cfg, q), cache=cache, last_only=True)
        steps.append(step[0, -1])
    if states is not None:  # npgemma's L + 2 (input, each layer, final norm) -> HF's L + 1
        states = [h[0, pad:] for i, h in enumerate(states) if i != len(states) - 2]
    return Forward(logits[0, pad:], np.stack(steps), states)


def greedy_tokens(params, cfg, input_ids: np.ndarray, pixel_values: np.ndarray,
                  max_new_tokens: int) -> list[int]:
    """npgemma's own greedy continuation (the cached decode loop), EOS excluded."""
    gen = generate.GenerationConfig(max_new_tokens=max_new_tokens)
    out = []
    for t in generate.generate_tokens(NumpyBackend(), params, cfg, input_ids[None],
                                      pixel_values[None].astype(np.float32), gen):
        if t[0] == cfg.eos_token_id:
            break
        out.append(int(t[0]))
    return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
