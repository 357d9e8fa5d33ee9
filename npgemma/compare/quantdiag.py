"""The `quantization` family of the diagnosis: is the implementation right, on quantized weights?

Two ways, the exact one first:
- the adapter returns its effective (dequantized) weights under checkpoint key names
  ("weights" in its dict): the reference runs on exactly those (`effective_params`) and the
  implementation is judged at its compute dtype's tolerances — a true pass or fail; the scheme
  that produced them is named by comparing them with each catalogue scheme applied to the float
  weights (`identify`);
- else, when no other trap explains a failure, the reference runs on the weights quantized by
  each candidate (`quantization.SCHEMES` x `quantization.POLICIES`) and the one within
  tolerance and nearer than no change is named (`search`): "matches npgemma on MLX 4-bit g64
  weights (every linear and the token embedding) to 3e-6" — not an implementation fault.
Either way the report carries what the quantization costs (`divergence.quantization_cost`).
"""

from __future__ import annotations

import numpy as np
from ml_dtypes import bfloat16

from ..checkpoint.layout import LAYOUTS, disk_names, flatten, unflatten
from ..errors import InputError
from .diagnose import Fit, fit
from .deviations import DEVIATIONS, TRANSFORMERS
from .divergence import describe, quantization_cost
from .quantization import DEFAULTS, POLICIES, SCHEMES, faulty, mlx_affine, quantized_params
from .reference import teacher_forced
from .trap import Trap

# Quantizing every candidate costs about 40 reference runs and a copy of the weights per run:
# cheap on conform's tiny cases, hours on a real checkpoint, where the adapter's own weights
# (the exact way) are the route.
MAX_SEARCH_PARAMS = 50_000_000

QUANT_TRAPS = {f"quantized-{s.name}": Trap(
    f"quantized-{s.name}", "quantization", f"the weights, quantized as {s.library} does",
    f"the implementation runs on {s.title} weights (the reference on the same weights matches "
    "it): not an implementation fault; its cost is reported beside",
    "the reference runs on the float weights quantized -> dequantized by quantization.SCHEMES"
    f"['{s.name}'] under each layer policy") for s in SCHEMES.values()} | {
    "quantized-dequant-no-bias": Trap(
        "quantized-dequant-no-bias", "quantization", "MLX affine dequantization: w = scale * q "
        "+ bias per group", "the implementation dequantizes group-wise affine weights without "
        "the bias term; w = scale * q + bias", "the reference runs on the weights quantized by "
        "an MLX scheme and dequantized as scale * q (quantization.mlx_dequant_no_bias)"),
    "quantized-dequant-wrong-group": Trap(
        "quantized-dequant-wrong-group", "quantization", "MLX affine dequantization: one scale "
        "and bias per group of G, the G the weights were quantized with", "the implementation "
        "reads the per-group scales and biases with a larger group size than the weights were "
        "quantized with; the group size is the quantization's own (config.json "
        "quantization.group_size)", "the reference runs on the weights quantized with G and "
        "dequantized with a larger G (quantization.mlx_dequant_group)")}


def effective_params(params, weights: dict, spec: str) -> tuple[dict, list[str]]:
    """The float params with the adapter's "weights" in place: keys are canonical names or any
    known layout's on-disk names; a key or shape that does not fit is one clear error."""
    flat = flatten(params)
    names = {k: k for k in flat}
    for layout in LAYOUTS:
        names |= disk_names(flat, layout)
    out, replaced, unknown = dict(flat), [], []
    for key, w in weights.items():
        canon = names.get(key)
        if canon is None:
            unknown.append(key)
            continue
        a = np.asarray(w, np.float32)
        bad = int(np.count_nonzero(~np.isfinite(a)))
        if bad:  # the adapter's weights, not npgemma's run, would carry the NaN into the logits
            raise InputError(f"--against {spec}: 'weights' {key!r}: {bad} of {a.size} values are "
                             "NaN or Inf")
        if a.shape != flat[canon].shape:
            raise InputError(f"--against {spec}: 'weights' {key!r} has shape {list(a.shape)}; "
                             f"the checkpoint's is {list(flat[canon].shape)}")
        out[canon] = a
        replaced.append(canon)
    if unknown:
        raise InputError(f"--against {spec}: 'weights' has {len(unknown)} keys that are no "
                         f"checkpoint tensor (e.g. {unknown[0]!r})")
    return unflatten(out), replaced


def identify(params, replaced: dict) -> dict:
    """Which catalogue scheme turns the float weights into the adapter's: the one that makes the
    most of the replaced tensors that differ from float (within 1e-6 of the weights' scale),
    then the smallest largest difference. When it makes some but not all of them, the others
    are listed ("differing"): the implementation dequantizes those otherwise (a port fault)."""
    flat = flatten(params)
    changed = [k for k in replaced if not np.array_equal(replaced[k], flat[k])]
    if not changed:
        return {"scheme": None, "title": "float (no weight differs)", "quantized": 0}
    bf16 = all(np.array_equal(flat[k], flat[k].astype(bfloat16).astype(np.float32))
               for k in changed)
    scale = max(float(np.abs(flat[k]).max()) for k in changed)
    tol = 1e-6 * max(scale, 1.0)
    best = None
    for s in SCHEMES.values():
        # MLX stores scales and biases in the weight's dtype: a bfloat16 checkpoint's in bfloat16
        fn = (lambda w, s=s: mlx_affine(w, int(s.name.split("-")[1][:-3]), s.group, bfloat16)) \
            if bf16 and s.name.startswith("mlx-") else s.fn
        ds = {}
        for k in changed:
            try:
                ds[k] = float(np.abs(fn(flat[k]) - replaced[k]).max())
            except ValueError:  # a group the weight's width does not divide
                ds[k] = np.inf
        rank = (-sum(d <= tol for d in ds.values()), max(ds.values()))
        if best is None or rank < best[1]:
            best = (s, rank, ds)
    s, (minus_made, d), ds = best
    made = -minus_made
    policy = next((p for p in POLICIES if sorted(quantized_params(
        {k: v for k, v in flat.items() if v.ndim == 2}, s, p)[1]) == sorted(changed)), None)
    out = {"scheme": s.name if made == len(changed) else None,
           "title": s.title, "closest_distance": d, "quantized": len(changed),
           "policy": policy, "layers": POLICIES[policy][0] if policy else "other layers",
           "vision_tower_quantized": any(k.startswith("vision_tower.") for k in changed),
           "embedding_quantized": "language_model.embed_tokens.weight" in changed}
    if 0 < made < len(changed):
        out |= {"partial_scheme": s.name, "matching": made,
                "differing": [{"key": k, "shape": list(flat[k].shape), "distance": ds[k]}
                              for k in changed if ds[k] > tol]}
    return out


def made_by(who: dict) -> str:
    """How the implementation's own weights were made, in words (for a verdict or a table)."""
    if who["scheme"]:
        return f"quantized: {who['title']}, {who['layers']}"
    if who.get("partial_scheme"):
        widths = sorted({x["shape"][-1] for x in who["differing"]})
        worst = max(x["distance"] for x in who["differing"])
        return (f"{who['matching']} are {who['title']}; the other "
                f"{len(who['differing'])} (input widths {', '.join(map(str, widths))}) are not, "
                f"up to {worst:.3g} off: the implementation dequantizes those otherwise")
    return "changed, by no catalogue scheme"


def candidates(flat: dict, schemes, policies=tuple(POLICIES)):
    """(scheme, policy, quantized params) for every distinct set of quantized keys."""
    seen = set()
    for s in schemes:
        for policy in policies:
            q, keys = quantized_params(flat, s, policy)
            if keys and (s.name, tuple(keys)) not in seen:
                seen.add((s.name, tuple(keys)))
                yield s, policy, q


def search(params, cfg, ids, pix, theirs, forced, base, dtype: str) -> tuple[list, dict | None]:
    """Every candidate's fit, best first, and the explaining one (None when none explains)."""
    flat = flatten(params)
    if sum(a.size for a in flat.values()) > MAX_SEARCH_PARAMS:
        return [], None
    fits = _fits(candidates(flat, SCHEMES.values()), cfg, ids, pix, theirs, forced, base, dtype)
    fault = False
    if not (fits and fits[0][0].explains):  # quantized, and one other trap (an authority's)
        # a decode-time trap leaves the prompt's logits alone: the closest there go on
        near = sorted(fits, key=lambda x: x[0].prompt_distance)[:COMBINE_TOP]
        fits = sorted(fits + _with_deviation(near, cfg, ids, pix, theirs, forced, base, dtype),
                      key=_rank)
    if not (fits and fits[0][0].explains):  # a port's own dequantization faults, each scheme
        wrong = [f for s in SCHEMES.values() for f in faulty(s)]   # under its library's default
        fits += _fits(candidates(flat, wrong, (DEFAULTS[wrong[0].library],)), cfg, ids, pix,
                      theirs, forced, base, dtype)
        fits.sort(key=_rank)
        fault = True
    best = None
    if fits and fits[0][0].explains:
        f, s, policy, qp = fits[0]
        trap = (f"quantized-{s.name}" if not fault else "quantized-dequant-no-bias"
                if s.name.endswith("-no-bias") else "quantized-dequant-wrong-group")
        deviation = f.name.split(" + ", 1)[1] if " + " in f.name else None
        best = {"trap": trap, "deviation": deviation, "scheme": s.name, "title": s.title,
                "library": s.library,
                "policy": policy, "layers": POLICIES[policy][0], "distance": f.distance,
                "fault": fault, "params": qp}
    return [(f, s.title, POLICIES[p][0]) for f, s, p, _ in fits], best


COMBINE_TOP = 3   # the closest schemes tried with each other trap of the catalogue


def _prompt_distance(fwd, theirs) -> float:
    """Max |difference| of the prompt's logits (inf when the other side gave none)."""
    if theirs.logits is None:
        return float("inf")
    mine = fwd.logits[-1:] if theirs.last_only else fwd.logits
    if mine.shape[0] != theirs.logits.shape[0]:
        return float("inf")
    v = min(mine.shape[1], theirs.logits.shape[1])
    return float(np.abs(mine[:, :v] - theirs.logits[:, :v]).max())


def _with_deviation(fits, cfg, ids, pix, theirs, forced, base, dtype) -> list:
    """The closest schemes' weights, each with one deviation of `deviations.DEVIATIONS`
    swapped in (judged at that deviation's tolerances)."""
    from .deviations import DEVIATIONS
    from .diagnose import _forward, judged_at

    out = []
    for f0, s, policy, qp in fits:
        for name in DEVIATIONS:
            fwd = _forward([name], qp, cfg, ids, pix, forced, dtype)
            f = fit(f"{s.name} + {name}", fwd, theirs, forced, judged_at([name], dtype))
            f.explains = f.ok and f.distance < base.distance
            out.append((f, s, policy, qp))
    return out


def _rank(x):
    f = x[0]
    return (not f.explains, f.tokens_total - f.tokens_agree,
            np.inf if np.isnan(f.distance) else f.distance)


def _fits(cands, cfg, ids, pix, theirs, forced, base, dtype) -> list:
    fits = []
    for s, policy, q in cands:
        qp = unflatten(q)
        fwd = teacher_forced(qp, cfg, ids, pix, forced)
        f = fit(s.name, fwd, theirs, forced, dtype)
        f.explains = f.ok and f.distance < base.distance
        f.prompt_distance = _prompt_distance(fwd, theirs)
        fits.append((f, s, policy, qp))
    return sorted(fits, key=_rank)


PROCESSOR = ("input_ids", "pixel_values")


def amend(report: dict, request, cfg, ids, pix, theirs, forced, params, float_params,
          replaced: list | None) -> None:
    """The quantization part of one input's report: with the adapter's own weights, which
    scheme they are and what they cost; else, when a model stage fails and no other trap
    explains it, the catalogue search, and the verdict rewritten when a scheme explains it."""
    d = report.get("diagnosis")
    if replaced is not None:
        flat = flatten(params)
        who = identify(float_params, {k: flat[k] for k in replaced})
        cost = quantization_cost(float_params, params, cfg, ids, pix, request.max_new_tokens)
        report["quantization"] = {"source": "the implementation's own weights (exact)",
                                  "replaced": len(replaced), **who, "cost": cost}
        if d is not None:
            d.verdict += (f"; on the implementation's own weights ({who['quantized']} tensors "
                          + made_by(who)
                          + f"); cost vs float weights: {describe(cost)}")
        return
    if d is None or d.explained:
        return
    failed = [r["stage"] for r in report["stages"] if not r["ok"]]
    model_failed = [s for s in failed if s not in PROCESSOR and not s.endswith(" width")]
    if not model_failed:
        return
    plain = d.npgemma or {}
    base = Fit("npgemma", plain.get("distance", float("nan")), False, 0, 0)
    if np.isnan(base.distance):
        base.distance = float("inf")
    fits, best = search(params, cfg, ids, pix, theirs, forced, base, request.dtype)
    d.candidates += [{"name": f.name, "distance": f.distance, "ok": f.ok,
                      "tokens_agree": f.tokens_agree, "tokens_total": f.tokens_total,
                      "explains": f.explains, "explain": f"{title} ({layers})"}
                     for f, title, layers in fits[:5]]
    if best is None:
        return
    cost = quantization_cost(params, best["params"], cfg, ids, pix, request.max_new_tokens)
    report["quantization"] = {"source": "the catalogue search", "trap": best["trap"],
                              "deviation": best["deviation"],
                              "scheme": best["scheme"], "title": best["title"],
                              "policy": best["policy"], "layers": best["layers"],
                              "distance": best["distance"], "fault": best["fault"], "cost": cost}
    others = [s for s in failed if s not in model_failed]
    dev = best["deviation"]
    d.explained = not others
    d.deviations = [best["trap"]] + ([dev] if dev else [])
    d.distance = best["distance"]
    authority = DEVIATIONS[dev].authority if dev else None
    d.fault = best["fault"] or bool(others) or bool(dev and not authority)
    if authority:
        d.authorities = {"npgemma": TRANSFORMERS, "implementation": authority}
    what = ("an implementation fault" if best["fault"] else
            "the weights are quantized (not a fault)")
    title = best["title"] if best["fault"] else f"{best['title']} weights"
    also = ""
    if dev:
        also = (f"; and `{dev}`: {DEVIATIONS[dev].explain}"
                + (f" (follows {authority}, not a fault)" if authority else ""))
    d.verdict = (f"matches npgemma on {title} ({best['layers']})"
                 + (f" with `{dev}`" if dev else "") + f" to {best['distance']:.2g} — {what}"
                 + also + f"; cost vs float weights: {describe(cost)}"
                 + (f"; also failing: {', '.join(others)}" if others else ""))
