"""All the problems of one checkpoint as one `WeightsError` message."""

from __future__ import annotations

from pathlib import Path

MAX_LISTED = 100  # problems listed per kind; the count line always gives the total


def report(model_dir: Path, layout: str, probs: list[str]) -> str:
    """A single problem in one line; several as a count line, then at most MAX_LISTED lines per
    kind of problem (the kind is the text before the first colon)."""
    if len(probs) == 1:
        return f"{model_dir}: checkpoint does not match config.json: {probs[0]}"
    lines, per_kind = [], {}
    for p in probs:
        kind = p.split(":")[0]
        per_kind[kind] = per_kind.get(kind, 0) + 1
        if per_kind[kind] <= MAX_LISTED:
            lines.append("  " + p)
    counts = ", ".join(f"{n} {k}" for k, n in per_kind.items())
    more = sum(max(0, n - MAX_LISTED) for n in per_kind.values())
    tail = [f"  ... and {more} more"] if more else []
    return "\n".join([f"{model_dir}: checkpoint does not match config.json "
                      f"(keys read as the {layout!r} layout): {counts}"] + lines + tail)
