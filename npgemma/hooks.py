"""The named points the model math offers: `hook(name, x)` and `scope(name)`.

The math (NumPy and torch alike) calls `hook(name, x)` at a few named points and runs each layer
inside `scope("decoder.blocks.3")`; `hook` returns `x` unchanged, so it can sit inside an
expression. With no capture active (the default) `hook` is one ContextVar read and a `None`
check, and `scope` does nothing: the computed numbers are the same bits either way.

What listens is a capture (`npgemma.inspection.capture.Capture`), made active for a block with
`capturing(cap)`; it needs only `offer(name, x)`, `wants_here(name)` and a `prefix` list of
scope names. This file imports nothing of npgemma: the book may import it.

Attention hooks (`*.attn.hook_scores`, `*.attn.hook_scores_capped`, `*.attn.hook_pattern`) are
called from `layers.attention_weights` with each kv head's G query heads stacked on the query
axis, [B, K, G*c, S] for a chunk of c queries; the capture unstacks them to [B, N, c, S].
Full-name shape table: `npgemma/inspection/trace.py`.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar

_ACTIVE: ContextVar = ContextVar("npgemma_capture", default=None)
# Told the name of each scope as the model enters it: the streaming reader
# (`checkpoint/prefetch.py`) prefetches the next block's weights from there. Timing only.
_LISTENER: ContextVar = ContextVar("npgemma_scope_listener", default=None)
ATTENTION_HOOKS = ("attn.hook_scores", "attn.hook_scores_capped", "attn.hook_pattern")


def hook(name: str, x):
    """Offer activation `x` under `name` (relative to the current scope); returns `x`."""
    cap = _ACTIVE.get()
    if cap is not None:
        cap.offer(name, x)
    return x


@contextlib.contextmanager
def _pushed(cap, name: str):
    cap.prefix.append(name)
    try:
        yield
    finally:
        cap.prefix.pop()


def scope(name: str):
    """A context naming the enclosing component ("vision.blocks.0", "decoder.blocks.3",
    "lm_head")."""
    listener = _LISTENER.get()
    if listener is not None:
        listener(name)
    cap = _ACTIVE.get()
    return contextlib.nullcontext() if cap is None else _pushed(cap, name)


@contextlib.contextmanager
def listening(listener):
    """A block in which `listener(name)` is called as each scope is entered."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


def active():
    """The capture in effect, or None."""
    return _ACTIVE.get()


def wants_attention() -> bool:
    """Does the active capture keep an attention hook of the current scope? (A backend with a
    fused kernel, which never forms the weights, then spells attention out.)"""
    cap = _ACTIVE.get()
    return cap is not None and any(cap.wants_here(n) for n in ATTENTION_HOOKS)


@contextlib.contextmanager
def capturing(cap):
    """Make `cap` the active capture in this context (thread / task) for the block."""
    token = _ACTIVE.set(cap)
    try:
        yield cap
    finally:
        _ACTIVE.reset(token)
