"""Another implementation vs npgemma's NumPy reference (`npgemma parity --against SPEC`).

Stage by stage, where the adapter returned the stage: processor ids and pixels, the decoder's
hidden states, the prompt logits, the logits (or top logprobs) behind each greedy token, the
greedy tokens themselves and the first divergent token with both sides' top-5 — each judged
by `tolerances.py` at the other side's compute dtype. The model stages run the reference
on the *other side's* ids and pixels when it returned them, so a processor difference shows
once, at the processor rows, not again in every row after. Exit status 1 when anything is over.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..checkpoint.config_json import load_config
from ..config import with_window
from ..checkpoint.hub import resolve
from ..checkpoint.weights import load_weights
from ..generation.processing import Processor, open_image
from . import adapters, contract
from .catalogue import CATALOGUE
from .diagnose import diagnose, explain
from .pixels import diagnose_pixels
from .quantdiag import amend, effective_params
from .reference import forced_tokens, greedy_tokens, log_softmax, teacher_forced
from .request import Request
from .tolerances import compare, pick_margin
from .verdict import Verdict


@dataclass
class Row:
    stage: str
    ok: bool
    max_abs: float | None = None
    max_rel: float | None = None
    limit: float | None = None
    note: str = ""


def _row(stage, theirs, mine, component, dtype, note="") -> Row:
    c = compare(theirs, mine, component, dtype)
    return Row(stage, c.ok, c.max_abs, c.max_rel, c.limit, note)


def _ids_row(theirs, mine) -> Row:
    if theirs.tolist() == mine.tolist():
        return Row("input_ids", True, note=f"identical ({len(mine)} tokens)")
    n = min(len(theirs), len(mine))
    i = next((j for j in range(n) if theirs[j] != mine[j]), n)
    return Row("input_ids", False, note=f"differ at {i} of {len(theirs)} (npgemma {len(mine)}): "
               f"other {theirs[i:i + 3].tolist()} vs npgemma {mine[i:i + 3].tolist()}")


def _with_eos(tokens, eos: int, stopped: bool = False) -> list[int]:
    """Tokens up to and including the first EOS; `stopped`: the list excludes an EOS that ended
    it (npgemma's lists do), put it back so an early stop counts as a divergent token."""
    if eos in tokens:
        return tokens[:tokens.index(eos) + 1]
    return tokens + [eos] if stopped else tokens


def _top5(logits_row, proc):
    """[[id, text, value]] of the 5 largest logits (or logprobs of a {id: logprob} dict)."""
    if isinstance(logits_row, dict):
        items = sorted(logits_row.items(), key=lambda kv: -kv[1])[:5]
    else:
        order = np.argsort(-logits_row, kind="stable")[:5]
        items = [(int(i), float(logits_row[i])) for i in order]
    return [[i, proc.decode([i], skip_special_tokens=False), round(v, 5)] for i, v in items]


def run(request: Request) -> tuple[dict, int]:
    """The report (a dict: stages, greedy tokens, diagnosis — a `Verdict`) of `request.against`
    against npgemma on `request.model` (None: the bundled model), and the exit status (1 when
    anything is over). The adapter's call is abandoned past `request.timeout` (`TimedOut`)."""
    model_dir = resolve(request.model)
    cfg = with_window(load_config(model_dir), request.window)
    proc = Processor.from_pretrained(model_dir, cfg)
    func = adapters.resolve(request)
    if request.batch:
        return _batch(request, model_dir, cfg, proc, func)
    image = open_image(request.image)
    theirs = contract.call(request.against, func, str(model_dir), image, request.prompt,
                           cfg.text_config.num_hidden_layers, request.timeout)
    return _report(request, model_dir, cfg, proc, image, request.prompt, theirs)


def _batch(request, model_dir, cfg, proc, func) -> tuple[dict, int]:
    """`request.batch`, ((image path, prompt), ...), as one call with lists (the implementation
    pads, left, as generation needs); each row is judged as its own input would be, against
    npgemma on that row alone, so padding, masks and the per-row image must leave it unchanged."""
    from .batch import batch_diagnosis

    images = [open_image(path) for path, _ in request.batch]
    prompts = [prompt for _, prompt in request.batch]
    rows = contract.call_batch(request.against, func, str(model_dir), images, prompts,
                               cfg.text_config.num_hidden_layers, request.timeout)
    reports = [_report(request, model_dir, cfg, proc, image, prompt, theirs)[0]
               for image, prompt, theirs in zip(images, prompts, rows)]
    stages = [s | {"stage": f"row {i}: {s['stage']}"} for i, r in enumerate(reports)
              for s in r["stages"]]
    ok = all(r["ok"] for r in reports)
    report = {"against": request.against, "model": str(model_dir), "dtype": request.dtype,
              "stages": stages, "ok": ok, "rows": reports, "greedy_tokens": None,
              "diagnosis": None}
    failing = [(i, r) for i, r in enumerate(reports) if not r["ok"]]
    if request.diagnose and failing:
        report["diagnosis"] = batch_diagnosis(model_dir, cfg, failing, rows, images, prompts,
                                              proc, request.dtype)
    return report, 0 if ok else 1


def _report(request, model_dir, cfg, proc, image, prompt, theirs) -> tuple[dict, int]:
    """One input's report: `theirs` (an adapter's `Returned`) against npgemma on (image, prompt)."""
    mine = proc(image, prompt)
    rows: list[Row] = []
    ids, pix = mine.input_ids, mine.pixel_values
    if theirs.input_ids is not None:
        rows.append(_ids_row(theirs.input_ids, mine.input_ids))
        if np.count_nonzero(theirs.input_ids == cfg.image_token_index) == cfg.num_image_tokens:
            ids = theirs.input_ids
    if theirs.pixel_values is not None:
        if theirs.pixel_values.shape == mine.pixel_values.shape:
            rows.append(_row("pixel_values", theirs.pixel_values, mine.pixel_values,
                             "pixel_values", request.dtype))
            pix = theirs.pixel_values
        else:
            rows.append(Row("pixel_values", False, note=f"shape {list(theirs.pixel_values.shape)} "
                            f"vs npgemma {list(mine.pixel_values.shape)}"))
    params = float_params = load_weights(model_dir, cfg, dtype=np.float32)
    replaced = None
    if theirs.weights:  # its own effective weights: the reference runs on exactly those
        params, replaced = effective_params(params, theirs.weights, request.against)
    eos = cfg.eos_token_id
    own = greedy_tokens(params, cfg, ids, pix, request.max_new_tokens)
    other = None if theirs.token_ids is None else _with_eos(theirs.token_ids, eos)
    forced = forced_tokens(cfg, other if other is not None else own)
    ref = teacher_forced(params, cfg, ids, pix, forced, hidden=theirs.hidden_states is not None)
    rows += _vocabulary_rows(theirs, proc.tokenizer.get_vocab_size(), cfg.image_token_index)
    rows += _model_rows(theirs, ref, forced, request.dtype)

    report = {"against": request.against, "model": str(model_dir), "dtype": request.dtype,
              "stages": None, "greedy_tokens": None, "diagnosis": None}
    if other is not None:
        stopped = len(own) < request.max_new_tokens
        report["greedy_tokens"] = _tokens(_with_eos(own, eos, stopped), other, eos, ref, theirs,
                                          proc, request.dtype)
        t = report["greedy_tokens"]
        alone = theirs.logits is None and theirs.step_logits is None and not theirs.top_logprobs
        rows.append(Row("greedy tokens", t["agree"] or t["near_tie"], note=_tokens_note(t) + (
            " (tokens only: no logits or logprobs returned)" if alone else "")))
    report["stages"] = [asdict(r) for r in rows]
    report["ok"] = all(r.ok for r in rows)
    if request.diagnose:
        report["diagnosis"] = _diagnosis(params, cfg, ids, pix, theirs, forced, ref, request.dtype,
                                         rows, image, proc)
    amend(report, request, cfg, ids, pix, theirs, forced, params, float_params, replaced)
    return report, 0 if report["ok"] else 1


PROCESSOR_STAGES = ("input_ids", "pixel_values")


def _diagnosis(params, cfg, ids, pix, theirs, forced, ref, dtype, rows, image, proc) -> Verdict:
    """The model's diagnosis (on the other side's own ids and pixels) and, when the pixels
    differ, the preprocessing trap that explains them; one verdict over both, whose first words
    say what failed, so the last line printed and the exit status always agree."""
    d = diagnose(params, cfg, ids, pix, theirs, forced, ref, dtype)
    failed = [r.stage for r in rows if not r.ok]
    pixels = None
    if "pixel_values" in failed and theirs.pixel_values is not None \
            and theirs.pixel_values.shape == (3, proc.image_size, proc.image_size):
        pixels = diagnose_pixels(image, proc, theirs.pixel_values, dtype)
    width = [r for r in rows if r.stage.endswith(" width") and not r.ok]
    model_failed = [s for s in failed if s not in PROCESSOR_STAGES and not s.endswith(" width")]
    processor = ([pixels["verdict"]] if pixels else
                 ["pixel_values differ"] if "pixel_values" in failed else []) + \
        (["input_ids differ"] if "input_ids" in failed else [])
    cut = bool(width) and all("cut at image_token_index" in r.note for r in width)
    explained = (not width or cut) and (d.explained or not model_failed) \
        and (pixels is None or pixels["explained"]) and "input_ids" not in failed
    if not failed:
        verdict = d.verdict
    else:
        parts = [f"{r.stage}: {r.note}" for r in width]
        if model_failed:
            parts.append(d.verdict)
        if processor:
            parts.append(("the model matches; " if not model_failed and not width else "")
                         + "the processor differs: " + "; ".join(processor))
        verdict = "; ".join(parts) if parts else d.verdict
    authorities = {} if not d.authority else {"npgemma": d.ours, "implementation": d.authority}
    fault = not (d.authority and explained and not width and not processor)
    return Verdict(verdict, bool(explained), d.names + (["vocab-cut-at-image-token"] if cut else []),
                   d.distance, failed, fault, authorities, pixels, asdict(d.plain),
                   [asdict(f) | {"explain": explain(f.name)} for f in d.fits],
                   [{"name": n, "needs": _needs(n)} for n in d.no_effect])


def _vocabulary_rows(theirs, vocab: int, image_token_index: int) -> list[Row]:
    """Logits narrower than the tokenizer's vocabulary fail: only the embedding's padding rows
    past the real vocabulary (257152 -> 257216 in the released checkpoints) may be missing."""
    rows = []
    for name, a in (("logits", theirs.logits), ("step_logits", theirs.step_logits)):
        if a is not None and a.shape[1] < vocab:
            cut = (" (cut at image_token_index: the <image> id is missing, and what follows it)"
                   if a.shape[1] == image_token_index else "")
            rows.append(Row(f"{name} width", False, note=f"{a.shape[1]} ids, fewer than the "
                            f"tokenizer's {vocab}{cut}"))
    return rows


def _tokens(ours, other, eos, ref, theirs, proc, dtype="float32") -> dict:
    """Both greedy continuations (EOS kept where it ended one) and the first divergence, with
    each side's top-5 there (npgemma's from the shared history: they agree before it).

    A divergence is a near-tie, not a failure, when every one of the other side's tokens is
    npgemma's greedy pick to within the logits tolerance at the other side's dtype, judged on
    npgemma's teacher-forced logits along the other side's own history (`pick_margin`)."""
    n = min(len(ours), len(other))
    k = next((i for i in range(n) if ours[i] != other[i]), None)
    out = {"npgemma": [t for t in ours if t != eos], "other": [t for t in other if t != eos],
           "agree": k is None, "near_tie": False, "compared": n, "first_divergence": None}
    if k is not None:
        margins = [pick_margin(ref.step_logits[i], other[i], dtype)
                   for i in range(min(len(other), len(ref.step_logits)))]
        margin, limit = margins[k] if k < len(margins) else (float("inf"), float("nan"))
        out["near_tie"] = k < len(margins) and all(m <= lim for m, lim in margins)
        out["first_divergence"] = {
            "index": k, "npgemma": ours[k], "other": other[k], "margin": margin, "limit": limit,
            "npgemma_top5": _top5(ref.step_logits[k], proc) if k < len(ref.step_logits) else None,
            "other_top5": _other_top5(theirs, k, proc)}
    return out


def _tokens_note(t: dict) -> str:
    if t["agree"]:
        return f"{t['compared']} compared, agree"
    d = t["first_divergence"]
    note = f"{t['compared']} compared, first differ at {d['index']}"
    if t["near_tie"]:
        note += (f": a near-tie (npgemma's logit for the other's pick is {d['margin']:.3g} below "
                 f"its own, within the limit {d['limit']:.3g}; every later pick within it too)")
    return note


def _needs(name: str) -> str:
    return CATALOGUE[name].needs


def _other_top5(theirs, k, proc):
    if theirs.step_logits is not None and k < len(theirs.step_logits):
        return _top5(theirs.step_logits[k], proc)
    if theirs.top_logprobs is not None and k < len(theirs.top_logprobs):
        return _top5(theirs.top_logprobs[k], proc)
    if k == 0 and theirs.logits is not None:
        return _top5(theirs.logits[-1], proc)
    return None


def _model_rows(theirs, ref, forced, dtype) -> list[Row]:
    """Hidden states, prompt logits, logits / top logprobs behind the forced tokens."""
    rows = []
    if theirs.hidden_states is not None:
        n = len(theirs.hidden_states)
        for i, (a, b) in enumerate(zip(theirs.hidden_states, ref.hidden_states)):
            name, comp = (("decoder input (merged)", "projector") if i == 0 else
                          ("final norm", "final_norm") if i == n - 1 else
                          (f"decoder layer {i - 1}", "decoder_layer"))
            if a.shape != b.shape:
                rows.append(Row(name, False, note=f"shape {list(a.shape)} vs npgemma {list(b.shape)}"))
            else:
                rows.append(_row(name, a, b, comp, dtype))
    if theirs.logits is not None:
        mine = ref.logits[-1:] if theirs.last_only else ref.logits
        name = "logits (last position)" if theirs.last_only else "logits"
        v, vm = theirs.logits.shape[1], mine.shape[1]
        note = "" if v == vm else f"compared on the first {min(v, vm)} of V: other {v}, npgemma {vm}"
        if theirs.logits.shape[0] != mine.shape[0]:
            rows.append(Row(name, False, note=f"{theirs.logits.shape[0]} positions vs npgemma "
                            f"{mine.shape[0]}"))
        else:
            w = min(v, vm)
            rows.append(_row(name, theirs.logits[:, :w], mine[:, :w], "logits", dtype, note))
    t = len(forced)
    if theirs.step_logits is not None and t:
        n = min(t, len(theirs.step_logits))
        w = min(theirs.step_logits.shape[1], ref.step_logits.shape[1])
        rows.append(_row(f"logits behind tokens 0..{n - 1}", theirs.step_logits[:n, :w],
                         ref.step_logits[:n, :w], "logits", dtype, "npgemma teacher-forced"))
    if theirs.top_logprobs:
        lp = log_softmax(ref.step_logits)
        pairs = [(v, lp[i, tok]) for i, step in enumerate(theirs.top_logprobs[:len(lp)])
                 for tok, v in step.items() if 0 <= tok < lp.shape[1]]
        if pairs:
            a, b = np.array(pairs, np.float64).T
            rows.append(_row(f"top logprobs ({len(pairs)})", a, b, "logits", dtype,
                             "npgemma teacher-forced"))
    return rows
