"""Swap npgemma functions for the length of a `with` block, wherever they are bound.

The math modules import their building blocks by name (`from .layers import rms_norm`), so
replacing `npgemma.layers.rms_norm` alone would change nothing in `gemma.py`. `swapped`
rebinds *every* attribute of every loaded `npgemma.*` module that is the original function
object (found by identity, so the torch twins, which are other objects, are never touched),
and puts each one back when the block ends, even on an exception.

A swap that finds nothing to rebind is an error: it means the function it names is no longer
where the deviation expects it, and a deviation that silently does nothing would diagnose
nothing.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Callable, Iterator


@dataclass(frozen=True)
class Swap:
    """Replace `module.name` by `make(original)`; `only` limits the rebinding to these modules
    (e.g. the decoder's `attention` but not SigLIP's); None means every npgemma module."""

    module: str                       # where the original is defined, e.g. "npgemma.layers"
    name: str                         # its public name, e.g. "rms_norm"
    make: Callable[[Callable], Callable]
    only: tuple[str, ...] | None = None


def _npgemma_modules() -> list:
    return [m for n, m in list(sys.modules.items())
            if m is not None and (n == "npgemma" or n.startswith("npgemma."))]


@contextlib.contextmanager
def swapped(swaps: list[Swap]) -> Iterator[None]:
    """Within the block, each swap's function is its replacement in every module holding it."""
    import importlib

    undo: list[tuple[object, str, object]] = []
    try:
        for s in swaps:
            # A scoped swap wraps what its modules bind now (an earlier swap's replacement, when
            # two deviations change the same function), else the defining module's function.
            home = importlib.import_module(s.only[0] if s.only else s.module)
            original = getattr(home, s.name, None) or getattr(importlib.import_module(s.module),
                                                               s.name)
            replacement = s.make(original)
            hits = 0
            for mod in _npgemma_modules():
                if s.only is not None and mod.__name__ not in s.only:
                    continue
                for attr, value in list(vars(mod).items()):
                    if value is original:
                        undo.append((mod, attr, value))
                        setattr(mod, attr, replacement)
                        hits += 1
            if not hits:
                raise RuntimeError(f"swap {s.module}.{s.name}: no npgemma module binds it"
                                   + (f" among {s.only}" if s.only else ""))
        yield
    finally:
        for mod, attr, value in reversed(undo):
            setattr(mod, attr, value)
