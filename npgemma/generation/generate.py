"""Generation, written once for every backend: vision once, prefill once, then one token a step.

The backend computes (`encode_image`, `forward` against its own KV-cache); everything
data-independent — masks, RoPE positions, bookkeeping of which slots are real and which are
prefix — is built here in NumPy and handed over. Sampling is NumPy too, on the last position's
logits, so a seed gives the same tokens on every backend that computes the same logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..errors import InputError, NonFiniteError
from .slots import Slots


@dataclass(frozen=True)
class GenerationConfig:
    """HF `generate` names. top_k 0/None and top_p 1.0/None switch those filters off."""

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | tuple[int, ...] | None = None   # an int, or one per row (see row_generators)

    def validate(self) -> None:
        if not isinstance(self.max_new_tokens, (int, np.integer)) or self.max_new_tokens < 0:
            raise InputError(f"max_new_tokens must be a non-negative integer, got {self.max_new_tokens!r}")
        seeds = self.seed if isinstance(self.seed, (list, tuple)) else [self.seed]
        for seed in seeds:
            if seed is not None and (not isinstance(seed, (int, np.integer)) or seed < 0):
                raise InputError(f"seed must be a non-negative integer, got {seed!r}")
        if self.do_sample:
            if not 0 < self.temperature < float("inf"):  # inf: every token alike, silently
                raise InputError(f"temperature must be a finite number > 0 when sampling, got "
                                 f"{self.temperature}")
            if self.top_k is not None and self.top_k < 0:
                raise InputError(f"top_k must be >= 0, got {self.top_k}")
            if self.top_p is not None and not 0 < self.top_p <= 1:
                raise InputError(f"top_p must be in (0, 1], got {self.top_p}")


def filter_logits(logits: np.ndarray, gen: GenerationConfig) -> np.ndarray:
    """HF's warper order: temperature, then top-k, then top-p. float32[B, V] -> float32[B, V],
    removed entries set to -inf."""
    x = logits.astype(np.float32) / np.float32(gen.temperature)
    if gen.top_k:
        k = min(gen.top_k, x.shape[-1])
        kth = np.partition(x, -k, axis=-1)[:, -k][:, None]  # the k-th largest per row
        x = np.where(x < kth, -np.inf, x)
    if gen.top_p is not None and gen.top_p < 1.0:
        order = np.argsort(-x, axis=-1, kind="stable")
        probs = _softmax(np.take_along_axis(x, order, axis=-1))
        before = np.cumsum(probs, axis=-1) - probs  # mass strictly above each token
        # Nucleus: the smallest prefix of the ranking whose mass reaches top_p (the top token always stays).
        drop_sorted = before >= np.float32(gen.top_p)
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        x = np.where(drop, -np.inf, x)
    return x


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def row_generators(seed, batch: int) -> list[np.random.Generator]:
    """One RNG stream per row, so a row samples the same tokens whatever else is in its batch.

    Row i draws from `default_rng([seed, i])`. `seed` may also be a sequence with one seed per
    row: row i then draws from `default_rng([seed[i], 0])` — exactly the stream it draws from
    alone with `seed=seed[i]`. `seed=None` gives fresh OS entropy per row.
    """
    if seed is None:
        return [np.random.default_rng() for _ in range(batch)]
    if isinstance(seed, (list, tuple, np.ndarray)):
        if len(seed) != batch:
            raise InputError(f"seed: {len(seed)} per-row seeds for a batch of {batch}")
        return [np.random.default_rng([int(s), 0]) for s in seed]
    return [np.random.default_rng([int(seed), i]) for i in range(batch)]


def _refuse_non_finite(bad_rows, step: int | None) -> None:
    """One error naming the step and the rows whose logits hold a NaN or an Inf: argmax over a
    NaN row picks the first NaN (token 0 when all are), a draw from it is meaningless."""
    rows = [int(i) for i in np.flatnonzero(bad_rows)]
    if not rows:
        return
    when = "" if step is None else (f"generation step {step} (" + ("the prefill" if step == 0 else
                                    f"decode step {step}") + "): ")
    raise NonFiniteError(f"{when}the logits of row{'s' if len(rows) > 1 else ''} "
                         f"{', '.join(map(str, rows))} hold NaN or Inf; no token is chosen from "
                         "them (a non-finite weight, or activations that overflowed the dtype)")


def sample(logits: np.ndarray, gen: GenerationConfig, rng, step: int | None = None) -> np.ndarray:
    """Next token ids int64[B] from float32[B, V] logits: argmax, or a seeded draw.

    `rng` is a list of B generators (one stream per row, see `row_generators`) or a single
    generator that the rows then draw from in turn. Rows with a NaN or an Inf raise
    NonFiniteError (naming `step` when given).
    """
    _refuse_non_finite(~np.isfinite(logits).all(axis=-1), step)
    if not gen.do_sample:
        return logits.argmax(axis=-1).astype(np.int64)
    probs = _softmax(filter_logits(logits, gen).astype(np.float64))
    rngs = [rng] * len(probs) if isinstance(rng, np.random.Generator) else rng
    ids = []
    for p, r in zip(probs, rngs):
        cdf = np.cumsum(p)
        # Inverse-CDF draw; the min() guards against u landing beyond a cdf that sums to 1 - eps.
        ids.append(min(int(np.searchsorted(cdf, r.random() * cdf[-1], side="right")), len(cdf) - 1))
    return np.asarray(ids, dtype=np.int64)


def check_length(cfg, prompt_len: int, max_new_tokens: int) -> None:
    """A clear error when the prompt plus the new tokens would run past the model's positions."""
    limit = cfg.text_config.max_position_embeddings
    if prompt_len + max_new_tokens > limit:
        raise InputError(f"prompt of {prompt_len} tokens (with {cfg.num_image_tokens} image tokens) "
                         f"+ max_new_tokens {max_new_tokens} exceeds the model's "
                         f"max_position_embeddings {limit}")


def generate_tokens(backend, params, cfg, input_ids: np.ndarray, pixel_values: np.ndarray,
                    gen: GenerationConfig, attention_mask: np.ndarray | None = None,
                    ) -> Iterator[np.ndarray]:
    """Yield int64[B] new tokens as they come, until every row has produced EOS or
    `max_new_tokens` steps have run. A row that has finished keeps receiving EOS.

    input_ids int[B, L] (left-padded where attention_mask is 0), pixel_values float32[B, 3, S, S].
    The whole prompt, image tokens included, is the bidirectional prefix. The backend keeps the
    decode state (cache, slots) itself: on a GPU nothing but the new ids crosses to the host.
    """
    gen.validate()
    b, prompt_len = input_ids.shape
    check_length(cfg, prompt_len, gen.max_new_tokens)
    if gen.max_new_tokens == 0:
        return
    rngs = row_generators(gen.seed, b) if gen.do_sample else None
    slots = Slots.prompt(np.ones((b, prompt_len), bool) if attention_mask is None else attention_mask)

    features = backend.encode_image(params, pixel_values, cfg)
    cache = backend.init_cache(cfg, b, prompt_len + gen.max_new_tokens)
    logits, cache = backend.forward(params, cfg, input_ids, slots.positions(), slots.masks(cfg),
                                    image_features=features, cache=cache, last_only=True)
    state = backend.start_decode(cfg, slots.valid, slots.is_prefix, cache)
    done = np.zeros(b, bool)
    for step in range(gen.max_new_tokens):
        if gen.do_sample:
            ids = sample(backend.last_logits_to_numpy(logits), gen, rngs, step=step)
            host = ids
        else:
            ids = backend.greedy(logits)  # argmax where the logits are: only the ids come back
            host = backend.ids_to_numpy(ids)
            _refuse_non_finite(host < 0, step)  # greedy's -1: that row's logits were not finite
        token = np.where(done, cfg.eos_token_id, host)
        yield token
        done |= token == cfg.eos_token_id
        if done.all() or step == gen.max_new_tokens - 1:
            return
        # Rows are independent (each attends to its own slots only), so a finished row may go on
        # computing: what it is fed no longer matters and the others are unaffected.
        logits = backend.decode_step(params, cfg, ids, state, cache)
