"""One entry of the trap catalogue (`catalogue.CATALOGUE`): a way to get PaliGemma almost right."""

from __future__ import annotations

from dataclasses import dataclass

FAMILIES = ("processor", "math", "decode-time", "batch", "load", "crash", "config",
            "quantization")


@dataclass(frozen=True)
class Trap:
    name: str
    family: str            # one of FAMILIES
    breaks: str            # the numerics note or the source line it breaks
    explain: str           # "the other implementation ...; <what is right>"
    how: str               # how the diagnosis swaps it in (or, for a crash, which cases sort it)
    needs: str = ""        # what an input must have for it to show (if not always)
    # Not a fault but another authority's semantics: the name of the authority the
    # implementation then follows (npgemma's default follows transformers 5.24).
    authority: str | None = None
