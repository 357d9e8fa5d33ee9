"""Slot bookkeeping: which cache slots hold real tokens, which of them are prefix, and what
RoPE positions and attention masks follow from that. Written once; generation, `logits`,
parity and the tests all build their positions and masks here.

A *slot* is an index along the key axis S (the KV-cache's time axis). With left padding, row b's
first slots may be pads (`valid` False): they get no position and no query ever sees them. The
prompt, image tokens included, is the bidirectional *prefix*; every generated token is a real,
causal (suffix) slot appended to every row at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..paligemma import attention_masks, rope_positions


@dataclass(frozen=True)
class Slots:
    valid: np.ndarray      # bool[B, S]: slot holds a real token
    is_prefix: np.ndarray  # bool[B, S]: slot is part of the bidirectional prefix

    @classmethod
    def prompt(cls, attention_mask: np.ndarray) -> "Slots":
        """The slots of a (left-padded) prompt: every real token is prefix. int/bool[B, S]."""
        valid = np.asarray(attention_mask).astype(bool)
        return cls(valid, valid.copy())

    @classmethod
    def full(cls, batch: int, length: int) -> "Slots":
        """`length` real prefix slots in each of `batch` rows (no padding)."""
        return cls.prompt(np.ones((batch, length), bool))

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    def append(self, count: int = 1) -> "Slots":
        """`count` more real, causal (generated) slots in every row."""
        b = self.valid.shape[0]
        return Slots(np.concatenate([self.valid, np.ones((b, count), bool)], axis=1),
                     np.concatenate([self.is_prefix, np.zeros((b, count), bool)], axis=1))

    def positions(self, q_start: int = 0) -> np.ndarray:
        """int64[B, S - q_start]: RoPE positions of slots q_start.. (1-based, real tokens only)."""
        return rope_positions(self.valid)[:, q_start:]

    def masks(self, cfg, q_start: int = 0) -> dict[str, np.ndarray]:
        """bool[B, S - q_start, S] per layer type, for the queries at slots q_start.."""
        return attention_masks(cfg, self.valid, self.is_prefix, q_start)
