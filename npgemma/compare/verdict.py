"""The diagnosis of one input (or one case), typed: what failed, whether a known trap explains
it, which, how far each candidate is, and which authority each side's semantics follow."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Verdict:
    verdict: str                        # one line; its first words say what failed
    explained: bool                     # npgemma, or npgemma with `deviations`, is within tolerance
    deviations: list = field(default_factory=list)   # the catalogue's names that explain it
    distance: float | None = None       # the explaining candidate's distance (npgemma's if none)
    failed: list = field(default_factory=list)       # the stages over tolerance
    fault: bool = True                  # False: the difference is another authority's semantics
    # "npgemma" and "implementation": the authority whose semantics each side follows where
    # they part (e.g. "transformers 5.24" vs "big_vision (the training code)"); {} when no
    # authority is in question
    authorities: dict = field(default_factory=dict)
    pixels: dict | None = None          # the preprocessing diagnosis, when the pixels differ
    npgemma: dict | None = None         # npgemma unchanged, as a candidate (distance, ok, tokens)
    candidates: list = field(default_factory=list)   # every candidate that changes the input
    no_effect: list = field(default_factory=list)    # traps this input cannot show
    rows: list = field(default_factory=list)         # a batch: the failing rows

    def as_dict(self) -> dict:
        return asdict(self)
