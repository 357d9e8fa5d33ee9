"""The one catalogue of traps: every way to get PaliGemma almost right that the diagnosis
knows, by name, with its family, what it breaks, and how it is swapped in. The diagnosis's
words, `npgemma conform --list-traps` and docs/conformance.md's trap table all read it.

Its entries come from where each trap's swap lives: the math, config and decode-time traps
from `deviations.DEVIATIONS` (swaps of the reference's functions, `replacements.py`), the
preprocessing traps from `pixels.PIXEL_TRAPS`, the batch traps from `batch.BATCH_TRAPS`, the
load and crash traps from `crashes.CASE_TRAPS` (sorted by running sibling cases), the
quantization schemes and dequantization faults from `quantdiag.QUANT_TRAPS`.
"""

from __future__ import annotations

from .batch import BATCH_TRAPS
from .crashes import CASE_TRAPS
from .deviations import DEVIATIONS
from .pixels import PIXEL_TRAPS
from .quantdiag import QUANT_TRAPS
from .trap import FAMILIES, Trap


def _how(d) -> str:
    swaps = [f"{s.module}.{s.name}" for s in d.swaps("bfloat16")]
    how = ("Swap " + ", ".join(dict.fromkeys(swaps))) if swaps else ""
    if d.config is not None:
        how = "the reference runs with config.json read as the trap reads it"
    if d.decode_positions is not None:
        how = "the decode steps' positions (reference.teacher_forced decode_positions)"
    if d.how:
        how = d.how
    return how + (f"; judged by the {d.judged_at} tolerances" if d.judged_at else "")


def _entries():
    for d in DEVIATIONS.values():
        breaks = d.breaks or (f"docs/numerics.md note {d.note}" if d.note else
                              "config.json text_config.model_type ('gemma2': Gemma-2 layers)"
                              if d.family == "config" else "the compute dtype the run was asked for")
        yield Trap(d.name, d.family, breaks, d.explain, _how(d), d.needs, d.authority)
    for p in PIXEL_TRAPS.values():
        yield Trap(p.name, "processor", "generation/processing.py: SiglipImageProcessor's "
                   "steps (RGB, PIL resize with the checkpoint's filter, rescale, normalise)",
                   p.explain, f"pixels.PIXEL_TRAPS: replaces the {p.stage} step")
    yield Trap("vocab-cut-at-image-token", "config", "config.json text_config.vocab_size (the "
               "embedding's rows), not image_token_index", "the implementation returns logits "
               "only up to image_token_index: the <image> id is missing, and what follows it",
               "read from the logits' width")
    yield from BATCH_TRAPS.values()
    yield from CASE_TRAPS.values()
    yield from QUANT_TRAPS.values()


CATALOGUE: dict[str, Trap] = {t.name: t for t in _entries()}


def listing(markdown: bool = False) -> str:
    """The catalogue, family by family: name, what it breaks, how it is swapped in."""
    rows = sorted(CATALOGUE.values(), key=lambda t: (FAMILIES.index(t.family), t.name))
    if markdown:
        out = ["| trap | family | breaks | swapped in as | authority |", "|---|---|---|---|---|"]
        out += [f"| `{t.name}` | {t.family} | {t.breaks} | {t.how} | {t.authority or ''} |"
                .replace("\n", " ") for t in rows]
        return "\n".join(out)
    out = []
    for t in rows:
        out.append(f"{t.name}  [{t.family}]" + (f"  (another authority: {t.authority})"
                                                 if t.authority else ""))
        out.append(f"    {t.explain}")
        out.append(f"    breaks: {t.breaks}; swapped in: {t.how}"
                   + (f"; shows with {t.needs}" if t.needs else ""))
    return "\n".join(out)
