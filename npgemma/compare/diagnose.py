"""`--diagnose`: which known trap did the other implementation fall into?

For each deviation of `deviations.DEVIATIONS`, npgemma's NumPy reference runs as an
implementation with that one trap would (teacher-forced on the other side's tokens), and the
distance to what the other side returned is measured the same way the report measures the
plain reference. Best first; a deviation that does not change this input at all (a Gemma-2 trap
on a Gemma-1 checkpoint, -inf masking without padding) is listed apart, since it can neither be
confirmed nor ruled out here. When no single deviation comes within tolerance, the pairs of
the three closest are tried too.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass

import numpy as np

from .deviations import DEVIATIONS, deviated
from .reference import Forward, log_softmax, teacher_forced
from .tolerances import compare


@dataclass
class Fit:
    """How close one candidate reference is to the other side."""

    name: str            # "npgemma" (no deviation), a deviation, or "a + b"
    distance: float      # max abs difference over everything compared (logits, logprobs)
    ok: bool             # every comparison within the tolerance table, and every token picked
    tokens_agree: int    # how many of the other side's forced tokens this candidate also picks
    tokens_total: int


def fit(name: str, ref: Forward, theirs, forced: list[int], dtype: str) -> Fit:
    """Compare a reference forward with the adapter's `Returned` (common vocabulary only)."""
    comps = []
    if theirs.logits is not None:
        mine = ref.logits[-1:] if theirs.last_only else ref.logits
        if mine.shape[0] == theirs.logits.shape[0]:
            v = min(mine.shape[1], theirs.logits.shape[1])
            comps.append(compare(theirs.logits[:, :v], mine[:, :v], "logits", dtype))
    t = len(forced)
    if theirs.step_logits is not None and t:
        n = min(t, len(theirs.step_logits))
        v = min(ref.step_logits.shape[1], theirs.step_logits.shape[1])
        comps.append(compare(theirs.step_logits[:n, :v], ref.step_logits[:n, :v], "logits", dtype))
    if theirs.top_logprobs:
        lp = log_softmax(ref.step_logits)
        pairs = [(theirs_lp, lp[i, tok]) for i, step in enumerate(theirs.top_logprobs[:t + 1])
                 for tok, theirs_lp in step.items() if i < len(lp) and 0 <= tok < lp.shape[1]]
        if pairs:
            a, b = np.array(pairs, np.float64).T
            comps.append(compare(a, b, "logits", dtype))
    distance = max((c.max_abs for c in comps), default=float("nan"))
    if theirs.token_ids is None:  # forced on npgemma's own tokens: nothing to agree with
        t = 0
    picks = ref.step_logits[:t].argmax(axis=-1).tolist() if t else []
    agree = sum(int(a == b) for a, b in zip(picks, forced))
    return Fit(name, distance, bool(comps) and all(c.ok for c in comps) and agree == t, agree, t)


@dataclass
class Diagnosis:
    plain: Fit
    fits: list            # Fit per deviation (and pair) that changes this input, best first
    no_effect: list       # names of deviations that leave this input unchanged
    verdict: str


def _forward(names, params, cfg, ids, pix, forced, dtype) -> Forward:
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(deviated(name, dtype))
        return teacher_forced(params, cfg, ids, pix, forced)


def _changes(a: Forward, b: Forward, dtype: str) -> bool:
    """Does a deviation move the reference beyond the tolerance table on this input?"""
    for x, y in ((a.logits, b.logits), (a.step_logits, b.step_logits)):
        if x.size and not compare(x, y, "logits", dtype).ok:
            return True
    return False


def diagnose(params, cfg, ids, pix, theirs, forced, plain: Forward, dtype: str) -> Diagnosis:
    base = fit("npgemma", plain, theirs, forced, dtype)
    fits, no_effect = [], []
    for name in DEVIATIONS:
        out = _forward([name], params, cfg, ids, pix, forced, dtype)
        if not _changes(out, plain, dtype):
            no_effect.append(name)
            continue
        fits.append(fit(name, out, theirs, forced, DEVIATIONS[name].judged_at or dtype))
    fits.sort(key=_rank)
    if not base.ok and not any(f.ok for f in fits):
        for a, b in itertools.combinations([f.name for f in fits[:3]], 2):
            out = _forward([a, b], params, cfg, ids, pix, forced, dtype)
            fits.append(fit(f"{a} + {b}", out, theirs, forced, dtype))
        fits.sort(key=_rank)
    return Diagnosis(base, fits, no_effect, _verdict(base, fits))


def _rank(f: Fit):
    """Within tolerance first, then the most of the other side's tokens reproduced, then closest."""
    return (not f.ok, f.tokens_total - f.tokens_agree,
            np.inf if np.isnan(f.distance) else f.distance)


def explain(name: str) -> str:
    return "; and ".join(DEVIATIONS[n].explain for n in name.split(" + "))


def _verdict(base: Fit, fits: list) -> str:
    if base.ok:
        return (f"matches npgemma to {base.distance:.2g} (within the tolerance table): "
                "no deviation needed")
    best = fits[0] if fits else None
    if best is not None and best.ok:
        also = [f"`{f.name}`" for f in fits[1:] if f.ok]
        judged = [DEVIATIONS[n].judged_at for n in best.name.split(" + ") if DEVIATIONS[n].judged_at]
        return (f"matches npgemma with `{best.name}` to {best.distance:.2g}"
                + (f" (by the {judged[0]} tolerances)" if judged else "") + " — "
                f"{explain(best.name)}"
                + (f" (also within tolerance here: {', '.join(also)})" if also else ""))
    if best is not None and best.distance < base.distance / 10:
        return (f"closest: npgemma with `{best.name}` ({best.distance:.2g}, vs {base.distance:.2g} "
                f"without) but not within tolerance — likely {explain(best.name)}, plus something "
                "npgemma does not know")
    return (f"no known deviation explains the difference ({base.distance:.2g} from npgemma"
            + (f"; closest `{best.name}` at {best.distance:.2g})" if best else ")"))
