"""`npgemma conform`: one implementation checked over a whole case set, one table.

The cases are tiny checkpoints npgemma writes itself (`CASES`), chosen so that each trap the
diagnosis knows has an input where it shows: PaliGemma 1 and 2; every key layout transformers
has written (the Hub's, 4.52's, 5.x's in memory and as `save_pretrained` writes it); float32
and bfloat16 files, one sharded; the embedding padded past the tokenizer, as the released
checkpoints are; a "224-like" resolution where the image-token count equals head_dim (as 256
does at 224 px) and a "448-like" one where it does not; a Gemma-2 window shorter than the
prompt and `query_pre_attn_scalar` != head_dim; a grey-scale image (`convert("RGB")`); prompts
for caption, VQA, detect and segment. Each case runs `against.run` (the stage rows and the
diagnosis of `npgemma parity --against`); a case the implementation cannot load is a row with
its error. The weights are decisive (`synthetic.checkpoint`, `decisive=True`), so greedy tokens
depend on the layers, not on the embedding alone.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, Unsupported
from . import against
from .cases import (BASE, CASES, LARGE, PG1, PG2, Case, model_case,  # noqa: F401 (the API)
                    row_images, select, write_case)
from .catalogue import CATALOGUE
from .contract import TimedOut
from .crashes import library_crash, same_crash, sort_crash
from .request import Request

COLUMNS = ("load", "ids", "pixels", "hidden", "logits", "tokens")


def _column(stage: str) -> str:
    if stage.startswith("row "):  # a batch row's stage: "row 1: logits"
        stage = stage.split(": ", 1)[1]
    if stage == "input_ids":
        return "ids"
    if stage == "pixel_values":
        return "pixels"
    if stage.startswith(("decoder", "final norm")):
        return "hidden"
    if stage.startswith("logits") and not stage.startswith("logits behind"):
        return "logits"
    return "tokens"  # greedy tokens, the logits behind them, top logprobs, step_logits width


@dataclass
class Result:
    case: str
    ok: bool
    cells: dict = field(default_factory=dict)   # column -> "ok" | "FAIL" | "-"
    error: str | None = None                    # why the implementation could not run the case
    unsupported: str | None = None              # why it declines the case by design (not a failure)
    verdict: str | None = None                  # the diagnosis of a failing case
    explained: bool | None = None
    deviations: list = field(default_factory=list)
    timed_out: bool = False
    fault: bool = True                          # False: it follows another authority (no fault)
    seconds: float = 0.0
    report: dict | None = None


def run_case(case: Case, root: Path, base: Request) -> Result:
    """One case through `against.run` (`base` with this case's model, image, prompt or batch);
    an implementation that cannot load it, or gives no answer within the timeout, is a row too.
    A bfloat16 file judged at float32 that no trap explains is judged again at bfloat16
    (`rejudged_in_bf16`)."""
    return rejudged_in_bf16(case, root, base, _run_case(case, root, base))


def rejudged_in_bf16(case: Case, root: Path, base: Request, r: Result) -> Result:
    """An implementation that computes a bfloat16 file in bfloat16 (mlx-vlm keeps a bf16
    checkpoint's weights as stored) differs from npgemma's float32 reference by bfloat16
    rounding, which the catalogue's `bf16-compute` (npgemma's own bfloat16 run) need not come
    nearer to than no change. The case is run again as `--dtype bfloat16` asks (the adapter
    told to compute in bfloat16, the tolerances bfloat16's); when it passes there, or is
    explained there, that is the explanation: `bf16-compute`, and whatever else explains it."""
    if r.ok or r.explained or r.error is not None or r.unsupported is not None \
            or base.dtype != "float32" or not _bf16_file(case):
        return r
    again = _run_case(case, root, dataclasses.replace(base, dtype="bfloat16"))
    if not (again.ok or again.explained) or again.error is not None:
        return r
    there = "passes" if again.ok else f"is explained ({again.verdict})"
    r.verdict = (f"{r.verdict}; run again at --dtype bfloat16 (the adapter computing in "
                 f"bfloat16, bfloat16's tolerances) the case {there}: the implementation "
                 "computes this bfloat16 file in bfloat16 (`bf16-compute`)")
    r.explained = True
    r.deviations = ["bf16-compute"] + [d for d in again.deviations if d != "bf16-compute"]
    r.fault = again.fault if not again.ok else True
    if r.report is not None:
        r.report["bf16_rejudged"] = {"ok": again.ok, "verdict": again.verdict,
                                     "deviations": again.deviations, "seconds": again.seconds}
    r.seconds += again.seconds
    return r


def _bf16_file(case: Case) -> bool:
    """A case written in bfloat16, or a --model checkpoint whose float tensors are all BF16
    (read from the safetensors headers)."""
    if case.folder is None:
        return case.dtype == "bfloat16"
    import json
    import struct

    dtypes = set()
    for path in Path(case.folder).glob("*.safetensors"):
        with open(path, "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        dtypes |= {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    floats = dtypes & {"F64", "F32", "F16", "BF16"}
    return floats == {"BF16"}


def _run_case(case: Case, root: Path, base: Request) -> Result:
    t0 = time.perf_counter()
    folder, image = write_case(case, root)
    request = dataclasses.replace(base, model=str(folder), image=str(image), prompt=case.prompt,
                                  diagnose=True,
                                  batch=tuple((str(p), q) for p, q in row_images(case, root)))
    try:
        report, rc = against.run(request)
    except Unsupported as e:
        return Result(case.name, True, {c: ("n/a" if c == "load" else "-") for c in COLUMNS},
                      unsupported=str(e).split(": not supported by the implementation: ")[-1],
                      seconds=time.perf_counter() - t0)
    except TimedOut as e:
        why = f"timed out after {e.seconds:g} s"
        return Result(case.name, False, {c: ("timeout" if c == "load" else "-") for c in COLUMNS},
                      error=why, verdict=why, explained=False, timed_out=True,
                      seconds=time.perf_counter() - t0)
    except InputError as e:
        lines = str(e).splitlines()  # a loader's list of every bad key: the first line says it
        error = lines[0] + (f" (+{len(lines) - 1} lines)" if len(lines) > 1 else "")
        return Result(case.name, False, {c: ("FAIL" if c == "load" else "-") for c in COLUMNS},
                      error=error, verdict=f"cannot run the case: {error}", explained=False,
                      seconds=time.perf_counter() - t0)
    cells = {c: "-" for c in COLUMNS} | {"load": "ok"}
    for row in report["stages"]:
        col = _column(row["stage"])
        cells[col] = "FAIL" if not row["ok"] or cells[col] == "FAIL" else "ok"
    d = report["diagnosis"]
    return Result(case.name, rc == 0, cells, verdict=None if rc == 0 or d is None else d.verdict,
                  explained=None if d is None else d.explained,
                  deviations=[] if d is None else list(d.deviations),
                  fault=True if d is None else d.fault, seconds=time.perf_counter() - t0, report=report)


def _outcome(r: Result) -> str | None:
    if r.unsupported is not None or r.timed_out:
        return None
    return "crashed" if r.error is not None else "ran"


def explain_crashes(cases: list[Case], results: list[Result], root: Path, base: Request) -> dict:
    """A case the implementation cannot run gets its cause from the catalogue when sibling cases
    sort it (`crashes.sort_crash`); a sibling --cases left out is run on demand (not a row of
    the table). Returns the on-demand siblings' results, by name."""
    by_name = {r.case: r for r in results}
    extra: dict = {}
    known = {c.name: c for c in CASES}

    asked: list = []

    def outcome(name: str) -> str | None:
        asked.append(name)
        if name not in by_name and name not in extra:
            if name not in known:
                return None
            extra[name] = run_case(known[name], root, base)
        return _outcome(by_name.get(name) or extra[name])

    def error_of(name: str) -> str | None:
        r = by_name.get(name) or extra.get(name)
        return None if r is None else r.error

    unsorted = []
    for case, r in zip(cases, results):
        if r.error is None or r.timed_out:
            continue
        asked.clear()
        cause = sort_crash(case, outcome, error_of)
        if cause is None:
            unsorted.append(r)
            continue
        evidence = [f"{n} {_outcome(by_name.get(n) or extra[n]) or 'n/a'}"
                    for n in dict.fromkeys(asked) if n in by_name or n in extra]
        r.verdict = (f"{CATALOGUE[cause].explain} ({r.error}) [{', '.join(evidence)}]")
        r.explained, r.deviations = True, [cause]
    for r in list(unsorted):  # a quantization library's own crash, by its message
        name = library_crash(base.against, r.error)
        if name is not None:
            r.verdict = f"{CATALOGUE[name].explain} ({r.error})"
            r.explained, r.deviations = True, [name]
            unsorted.remove(r)
    sorted_ = [r for r in results if r.error is not None and r.explained and r.deviations]
    for r in unsorted:  # the very crash of a sorted case (file and line aside): the same cause
        twin = next((t for t in sorted_ if same_crash(r.error, t.error)), None)
        if twin is not None:
            r.verdict = (f"{CATALOGUE[twin.deviations[0]].explain} ({r.error}) [the same crash "
                         f"as {twin.case}]")
            r.explained, r.deviations = True, list(twin.deviations)
    return extra


def verdicts(results: list[Result]) -> str:
    """The whole diagnosis of each failing case."""
    return "\n".join(f"{r.case}: {r.verdict}" if not r.ok else f"{r.case}: not supported: "
                     f"{r.unsupported}" for r in results if not r.ok or r.unsupported)


def passed(results: list[Result]) -> bool:
    """Every case the implementation runs passes, and it runs at least one."""
    return all(r.ok for r in results) and any(r.unsupported is None for r in results)


def summary(results: list[Result]) -> str:
    failed = [r for r in results if not r.ok]
    declined = [r.case for r in results if r.unsupported is not None]
    ran = len(results) - len(declined)
    also = (f"; {len(declined)} not supported by the implementation, by its own account "
            f"({', '.join(declined)})" if declined else "")
    if not failed:
        if not ran:
            return f"no case run: the implementation supports none of the {len(results)}{also}"
        return (f"all {len(results)} cases pass" if not declined else
                f"every case it runs passes ({ran} of {len(results)}){also}")
    unexplained = [r.case for r in failed if not r.explained]
    timed = [r.case for r in failed if r.timed_out]
    quantized = [r.case for r in failed if r.explained and not r.fault
                 and any(d.startswith("quantized-") for d in r.deviations)]
    other = [r.case for r in failed if r.explained and not r.fault and r.case not in quantized]
    return (f"{len(failed)} of {len(results)} cases fail; "
            + ("every failure is explained by the diagnosis" if not unexplained else
               f"unexplained: {', '.join(unexplained)}")
            + (f"; timed out: {', '.join(timed)}" if timed else "")
            + (f"; {len(other)} follow{'s' if len(other) == 1 else ''} another authority, "
               f"not a fault ({', '.join(other)})"
               if other else "")
            + (f"; {len(quantized)} differ only by quantized weights, not a fault "
               f"({', '.join(quantized)})" if quantized else "") + also)


def table(results: list[Result], markdown: bool = False) -> str:
    """One line per case: the stage columns, then the diagnosis of a failing case."""
    head = ("case",) + COLUMNS + ("diagnosis",)
    rows = []
    for r in results:
        why = (f"not supported: {r.unsupported}" if r.unsupported is not None else
               "" if r.ok else (r.verdict or ""))
        if not markdown and len(why) > 90:  # the whole verdict is printed under the table
            why = why[:89] + "…"
        rows.append((r.case,) + tuple(r.cells.get(c, "-") for c in COLUMNS) + (why,))
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(x.replace("|", "\\|") for x in row) + " |" for row in rows]
        return "\n".join(out)
    widths = [max(len(str(x[i])) for x in [head] + rows) for i in range(len(head) - 1)]
    fmt = lambda row: "  ".join(str(x).ljust(w) for x, w in zip(row, widths)) + "  " + row[-1]  # noqa: E731
    return "\n".join([fmt(head)] + [fmt(row).rstrip() for row in rows])
