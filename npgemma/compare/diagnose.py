"""`--diagnose`: which known trap did the other implementation fall into?

For each deviation of `deviations.DEVIATIONS`, npgemma's NumPy reference runs as an
implementation with that one trap would (teacher-forced on the other side's tokens), and the
distance to what the other side returned is measured the same way the report measures the
plain reference. Best first; a deviation that does not change this input at all (a Gemma-2 trap
on a Gemma-1 checkpoint, -inf masking without padding) is listed apart, since it can neither be
confirmed nor ruled out here. When no single deviation comes within tolerance, pairs are tried:
every pair of the deviations that change the input when that is cheap (a budget of
`PAIR_SECONDS`, from the singles' own time), else the pairs of the closest `PAIR_TOP`. A pair is
judged at the widest tolerance any member asks for (`judged_at`), and a candidate is never
called the closest when it is farther from the other side than npgemma with no change.
An answer of greedy tokens alone (no logits, no logprobs) is judged by the one measure it
allows, the tokens each side picks at the run's dtype (`nearer`); a candidate is named only
when no other picks them all too (tokens are weaker evidence than logits).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass

import numpy as np

from .deviations import BIG_VISION, DEVIATIONS, TRANSFORMERS, deviated, deviated_config
from .reference import Forward, log_softmax, teacher_forced
from .tolerances import compare, pick_margin


@dataclass
class Fit:
    """How close one candidate reference is to the other side."""

    name: str            # "npgemma" (no deviation), a deviation, or "a + b"
    distance: float      # max abs difference over everything compared (logits, logprobs)
    ok: bool             # every comparison within the tolerance table, and every token picked
    tokens_agree: int    # how many of the other side's forced tokens this candidate also picks
    tokens_total: int
    # An explanation: within tolerance *and* closer to the other side than npgemma unchanged,
    # by the same measure (distance), whatever dtype's tolerances judged it.
    explains: bool = False
    # The forced tokens picked to within the *run's* dtype tolerance (= tokens_agree unless the
    # candidate is judged at a wider dtype): a tokens-only answer's same measure for every side.
    picks: int = 0


def fit(name: str, ref: Forward, theirs, forced: list[int], dtype: str,
        run: str | None = None) -> Fit:
    """Compare a reference forward with the adapter's `Returned` (common vocabulary only), by
    `dtype`'s tolerances; `run`: the run's own dtype, when the candidate is judged at another."""
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
    # A forced token counts as picked when it is the candidate's greedy pick to within the
    # logits tolerance (a near-tie at bfloat16 is not evidence against the candidate).
    def picked(dt):
        return sum(int(m <= lim) for m, lim in (pick_margin(ref.step_logits[i], tok, dt)
                                                for i, tok in enumerate(forced[:t])))
    agree = picked(dtype)
    # tokens alone (a server without logprobs): judged by its picks, near-ties allowed
    judged = all(c.ok for c in comps) if comps else t > 0
    return Fit(name, distance, judged and agree == t, agree, t,
               picks=agree if run in (None, dtype) else picked(run))


def tokens_only(f: Fit) -> bool:
    """Judged by greedy tokens alone: the answer had no logits, no logprobs."""
    return bool(np.isnan(f.distance)) and f.tokens_total > 0


def nearer(f: Fit, base: Fit) -> bool:
    """Is candidate `f` an explanation: within its tolerance and nearer to the other side than
    npgemma unchanged (`base`), by the same measure — the distance; for a tokens-only answer the
    tokens picked at the run's own dtype (a candidate's wider tolerance counts no extra pick)."""
    if tokens_only(f) and tokens_only(base):
        return f.ok and f.picks > base.picks
    return f.ok and f.distance < base.distance  # NaN: never


@dataclass
class Diagnosis:
    plain: Fit
    fits: list            # Fit per deviation (and pair) that changes this input, best first
    no_effect: list       # names of deviations that leave this input unchanged
    verdict: str
    explained: bool       # npgemma, or npgemma with the named deviations, is within tolerance
    names: list           # those deviations ([] when none is needed or none explains it)
    distance: float       # the explaining candidate's distance (npgemma's when unexplained)
    # The explanation is another authority's semantics (`Deviation.authority`), and the first
    # generated token from which it parts from npgemma's (None: the prompt logits already).
    authority: str | None = None
    from_token: int | None = None
    # npgemma unchanged is within bfloat16's tolerances (a float32 run): a hint, not an
    # explanation (the other side may compute in bfloat16)
    within_bf16: bool = False
    # the authority npgemma's own side followed (`--window`): transformers 5.24 by default
    ours: str = TRANSFORMERS


PAIR_SECONDS = 60.0   # try every pair when that is expected to take at most this long
PAIR_TOP = 6          # else the pairs of this many closest singles


def decode_hook(names):
    """The decode-time deviations among `names` as one decode_positions hook (None if none)."""
    hooks = [DEVIATIONS[n].decode_positions for n in names if DEVIATIONS[n].decode_positions]
    if not hooks:
        return None

    def positions(pos, slots, q):
        for h in hooks:
            pos = h(pos, slots, q)
        return pos
    return positions


def mask_hook(names, prompt: int, end: int):
    """The masks hook of the decode-time cache trap among `names` (None if none), for a run of
    `prompt` prompt slots and `end` slots in all."""
    return next((DEVIATIONS[n].decode_masks(prompt, end) for n in names
                 if DEVIATIONS[n].decode_masks), None)


def _forward(names, params, cfg, ids, pix, forced, dtype) -> Forward:
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(deviated(name, dtype))
        return teacher_forced(params, deviated_config(names, cfg), ids, pix, forced,
                              decode_positions=decode_hook(names),
                              masks=mask_hook(names, len(ids), len(ids) + len(forced)))


def judged_at(names, dtype: str) -> str:
    """The dtype whose tolerances judge a candidate: a member's `judged_at`, else the run's."""
    return next((DEVIATIONS[n].judged_at for n in names if DEVIATIONS[n].judged_at), dtype)


def _targets(name: str, dtype: str) -> set:
    return {(s.module, s.name) for s in DEVIATIONS[name].swaps(dtype)}


def _pairs(fits: list, seconds_each: float, dtype: str) -> list[tuple[str, str]]:
    """The pairs to try: all of them when cheap, else those of the closest PAIR_TOP; never two
    that replace the same function (the second would find nothing to replace)."""
    names = [f.name for f in fits]
    if seconds_each * len(names) * (len(names) - 1) / 2 > PAIR_SECONDS:
        names = names[:PAIR_TOP]
    return [(a, b) for a, b in itertools.combinations(names, 2)
            if not _targets(a, dtype) & _targets(b, dtype)
            and not (DEVIATIONS[a].config and DEVIATIONS[b].config)
            and not (DEVIATIONS[a].decode_positions and DEVIATIONS[b].decode_positions)
            and not (DEVIATIONS[a].decode_masks and DEVIATIONS[b].decode_masks)]


def _changes(a: Forward, b: Forward, dtype: str) -> bool:
    """Does a deviation move the reference beyond the tolerance table on this input?"""
    for x, y in ((a.logits, b.logits), (a.step_logits, b.step_logits)):
        if x.size and not compare(x, y, "logits", dtype).ok:
            return True
    return False


def diagnose(params, cfg, ids, pix, theirs, forced, plain: Forward, dtype: str) -> Diagnosis:
    base = fit("npgemma", plain, theirs, forced, dtype)
    fits, no_effect = [], []
    start = time.perf_counter()
    for name in DEVIATIONS:
        out = _forward([name], params, cfg, ids, pix, forced, dtype)
        if not _changes(out, plain, dtype):
            no_effect.append(name)
            continue
        fits.append(_judged(fit(name, out, theirs, forced, judged_at([name], dtype), dtype),
                            base))
    fits.sort(key=_rank)
    if base.ok:  # nothing to explain: no candidate is listed as "within" beside it
        return Diagnosis(base, [], no_effect, _verdict(base, []), True, [], base.distance)
    if not any(f.explains for f in fits):
        each = (time.perf_counter() - start) / len(DEVIATIONS)
        for a, b in _pairs(fits, each, dtype):
            out = _forward([a, b], params, cfg, ids, pix, forced, dtype)
            fits.append(_judged(fit(f"{a} + {b}", out, theirs, forced, judged_at([a, b], dtype),
                                    dtype), base))
        fits.sort(key=_rank)
    best = fits[0] if fits and fits[0].explains else None
    if tokens_only(base) and sum(f.explains for f in fits) > 1:
        best = None  # tokens alone cannot tell the candidates that pick them all apart
    names = best.name.split(" + ") if best else []
    authority, from_token = None, None
    if names and all(DEVIATIONS[n].authority for n in names):
        authority = " and ".join(DEVIATIONS[n].authority for n in names)
        out = _forward(names, params, cfg, ids, pix, forced, dtype)
        from_token = _first_step_apart(out, plain, dtype)
    d = Diagnosis(base, fits, no_effect, "", best is not None, names,
                  best.distance if best else base.distance, authority, from_token,
                  dtype == "float32" and fit("npgemma", plain, theirs, forced, "bfloat16").ok,
                  BIG_VISION if cfg.text_config.window == "big_vision" else TRANSFORMERS)
    d.verdict = _verdict(base, fits, d)
    return d


def _judged(f: Fit, base: Fit) -> Fit:
    """A candidate explains only when within its tolerance and nearer than no change: a
    tolerance widened by the candidate (bf16-compute) must not turn a worse fit into one."""
    f.explains = nearer(f, base)
    return f


def _first_step_apart(a: Forward, b: Forward, dtype: str) -> int | None:
    """The first generated token whose logits differ beyond tolerance; None when the prompt's do."""
    if a.logits.size and not compare(a.logits, b.logits, "logits", dtype).ok:
        return None
    return next((i for i in range(len(a.step_logits))
                 if not compare(a.step_logits[i], b.step_logits[i], "logits", dtype).ok), None)


def _rank(f: Fit):
    """Explanations first, then the most of the other side's tokens reproduced, then closest."""
    return (not f.explains, f.tokens_total - f.tokens_agree,
            np.inf if np.isnan(f.distance) else f.distance)


def explain(name: str) -> str:
    return "; and ".join(DEVIATIONS[n].explain for n in name.split(" + "))


def _near(f: Fit, base: Fit) -> str:
    """How near an explaining candidate is: its distance, or for a tokens-only answer (no
    logits, no logprobs) the tokens it picks; it is named only when no other candidate picks
    them all (tokens are weaker evidence than logits: several traps can pick the same ones)."""
    if not tokens_only(f):
        return f"to {f.distance:.2g}"
    return (f"on the greedy tokens alone ({f.picks} of {f.tokens_total} picked, npgemma "
            f"unchanged {base.picks}; no logits or logprobs were returned: the one candidate "
            "that picks them all)")


def _verdict(base: Fit, fits: list, d: Diagnosis | None = None) -> str:
    if base.ok and np.isnan(base.distance):
        return (f"matches npgemma's greedy tokens ({base.tokens_agree} of {base.tokens_total}, "
                "near-ties allowed; tokens only: no logits or logprobs were returned)")
    if base.ok:
        return (f"matches npgemma to {base.distance:.2g} (within the tolerance table): "
                "no deviation needed")
    if tokens_only(base) and sum(f.explains for f in fits) > 1:
        every = [f"`{f.name}`" for f in fits if f.explains]
        return (f"not diagnosed: {len(every)} candidates pick every one of the other side's "
                f"{base.tokens_total} greedy tokens ({', '.join(every)}; npgemma unchanged picks "
                f"{base.picks}), and tokens alone cannot tell them apart; return logits or "
                "logprobs to name one")
    best = fits[0] if fits else None
    if d is not None and d.authority and best is not None and best.explains:
        where = ("from the prompt's logits" if d.from_token is None else
                 f"from generated token #{d.from_token} (0-based)")
        as_run = ("npgemma's default" if d.ours == TRANSFORMERS else
                  "npgemma as run, --window big_vision")
        return (f"matches {d.authority}; differs from {d.ours} ({as_run}) {where}"
                f" — not a fault: `{best.name}` {_near(best, base)}; {explain(best.name)}")
    if best is not None and best.explains:
        also = [f"`{f.name}`" for f in fits[1:] if f.explains]
        judged = [DEVIATIONS[n].judged_at for n in best.name.split(" + ") if DEVIATIONS[n].judged_at]
        return (f"matches npgemma with `{best.name}` {_near(best, base)}"
                + (f" (by the {judged[0]} tolerances)" if judged else "") + " — "
                f"{explain(best.name)}"
                + (f" (also within tolerance here: {', '.join(also)})" if also else ""))
    if tokens_only(base):
        most = max(fits, key=lambda f: f.picks, default=None)
        return ("no known deviation explains the greedy tokens (tokens only, no logits or "
                f"logprobs: npgemma picks {base.picks} of the {base.tokens_total}"
                + (f"; the most any candidate picks is {most.picks}, `{most.name}`"
                   if most is not None and most.picks > base.picks else
                   "; no deviation picks more") + ")")
    closer = sorted((f for f in fits if f.distance < base.distance), key=lambda f: f.distance)  # NaN: never
    if closer and closer[0].distance < base.distance / 10:
        best = closer[0]
        return (f"closest: npgemma with `{best.name}` ({best.distance:.2g}, vs {base.distance:.2g} "
                f"without) but not within tolerance — likely {explain(best.name)}, plus something "
                "npgemma does not know")
    wider = [f for f in fits if f.ok and not f.explains]  # within a wider tolerance, yet farther
    hint = ("; npgemma unchanged is within the bfloat16 tolerances: if the implementation "
            "computes in bfloat16, compare with --dtype bfloat16"
            if d is not None and d.within_bf16 else "")
    return (f"no known deviation explains the difference ({base.distance:.2g} from npgemma"
            + (f"; closest `{closer[0].name}` at {closer[0].distance:.2g})" if closer else
               "; no deviation comes closer)")
            + "".join(f"; `{f.name}` is within its {judged_at(f.name.split(' + '), 'float32')} "
                      f"tolerances but farther ({f.distance:.4g}) than no change: not an "
                      "explanation" for f in wider[:1]) + hint)
