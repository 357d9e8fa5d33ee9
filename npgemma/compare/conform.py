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
its error. The weights are decisive (`testing.checkpoint`, `decisive=True`), so greedy tokens
depend on the layers, not on the embedding alone.
"""

from __future__ import annotations

import argparse
import fnmatch
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError, Unsupported
from ..testing.checkpoint import tiny_config, write_checkpoint
from ..testing.random_model import example_image
from . import against

# Gemma-2 settings that bite at this size: a window (4) shorter than every prompt, caps inside
# the range of the scores and logits, a query scale of 24^-0.5 where head_dim is 16.
PG2 = dict(text="gemma2", num_key_value_heads=2, sliding_window=4, attn_logit_softcapping=1.5,
           final_logit_softcapping=4.0, query_pre_attn_scalar=24)
# PaliGemma 1 as paligemma-3b is: head_dim = hidden_size / heads (64 / 4); PaliGemma 2 as
# Gemma-2 is: head_dim 16 != 32 / 4.
PG1 = dict(hidden_size=64)
BASE = 56   # 16 image tokens = head_dim, as 256 = head_dim at 224 px
LARGE = 112  # 64 image tokens != head_dim, as 1024 at 448 px
_HEAD_DIM = ("the implementation runs 16 image tokens (= head_dim) but not 64: it takes head_dim "
             "from the image-token count (config.json's text_config.head_dim is the head size)")


@dataclass(frozen=True)
class Case:
    name: str
    config: dict
    prompt: str
    layout: str = "v5-save"
    dtype: str = "float32"
    shards: int = 1
    image: str = "rgb"          # "rgb" (75 x 60, resized to the model's size) or "gray"
    what: str = ""              # what the case is there to catch
    folder: str | None = None   # a checkpoint of the user's (`--model`) instead of a written one
    # When the implementation cannot run this case but runs `sibling` (the same but for the one
    # property this case is there for), `hint` is the likely cause.
    sibling: str | None = None
    hint: str = ""
    # A batch case: (image, prompt) per row, run as one left-padded batch; `prompt` and `image`
    # are then row 0's.
    batch: tuple = ()


def _layout_hint(layout: str) -> str:
    return (f"the implementation cannot read the {LAYOUT_NAMES[layout]} key layout (it reads the "
            "Hub's, where the same checkpoint loads)")


LAYOUT_NAMES = {"v4.52": "transformers 4.52", "v5": "transformers 5.x (in memory)",
                "v5-save": "transformers 5.x save_pretrained"}

# Each case differs from its sibling (the Hub-layout float32 case of the same model) in the one
# property it is there for, so that a case the implementation cannot load names its cause.
CASES = (
    Case("pg1-hub-f32", dict(image_size=BASE, **PG1), "caption en", layout="hub",
         what="PaliGemma 1 in the Hub's key layout (transformers <= 4.51), float32"),
    Case("pg1-v4.52-detect", dict(image_size=BASE, **PG1), "detect cat ; dog", layout="v4.52",
         what="transformers 4.52's key layout; a detect prompt", sibling="pg1-hub-f32",
         hint=_layout_hint("v4.52")),
    Case("pg1-v5-vqa", dict(image_size=BASE, **PG1), "answer en what is in the image ?",
         layout="v5", what="transformers 5.x's key layout; a VQA prompt", sibling="pg1-hub-f32",
         hint=_layout_hint("v5")),
    Case("pg1-v5save-segment", dict(image_size=BASE, **PG1), "segment cat", layout="v5-save",
         what="the layout transformers 5.x's save_pretrained writes; a segment prompt",
         sibling="pg1-hub-f32", hint=_layout_hint("v5-save")),
    Case("pg1-bf16", dict(image_size=BASE, **PG1), "caption en", layout="hub", dtype="bfloat16",
         what="a bfloat16 file", sibling="pg1-hub-f32",
         hint="the implementation cannot read a bfloat16 safetensors file"),
    Case("pg1-sharded", dict(image_size=BASE, **PG1), "caption en", layout="hub", shards=3,
         what="three shards and model.safetensors.index.json", sibling="pg1-hub-f32",
         hint="the implementation cannot read a sharded checkpoint"),
    Case("pg1-448", dict(image_size=LARGE, **PG1), "caption en", layout="hub",
         what="more image tokens than head_dim (448 px and up)", sibling="pg1-hub-f32",
         hint=_HEAD_DIM),
    Case("pg1-gray-image", dict(image_size=BASE, **PG1), "caption en", layout="hub", image="gray",
         what="a grey-scale image: the processor converts it to RGB", sibling="pg1-hub-f32",
         hint="the implementation does not convert a grey-scale image to RGB (the Hub's "
              "preprocessor_config.json says do_convert_rgb null; npgemma converts every image, "
              "as transformers' load_image does)"),
    Case("pg1-head-dim", dict(image_size=BASE), "caption en", layout="hub", sibling="pg1-hub-f32",
         what="config.json's head_dim (16) != hidden_size / heads (32 / 4), as in Gemma 7B",
         hint="the implementation ignores config.json's head_dim for Gemma 1 (takes "
              "hidden_size / num_attention_heads)"),
    Case("pg2-hub-caption", dict(image_size=BASE, **PG2), "caption en", layout="hub",
         what="PaliGemma 2: four norms, soft caps, a window shorter than the prompt, "
              "query_pre_attn_scalar != head_dim"),
    Case("pg2-v5save-detect", dict(image_size=BASE, **PG2), "detect cat", layout="v5-save",
         what="PaliGemma 2 as transformers 5.x saves it; a detect prompt",
         sibling="pg2-hub-caption", hint=_layout_hint("v5-save")),
    Case("pg2-bf16-segment", dict(image_size=BASE, **PG2), "segment dog", layout="hub",
         dtype="bfloat16", what="PaliGemma 2, a bfloat16 file; a segment prompt",
         sibling="pg2-hub-caption",
         hint="the implementation cannot read a bfloat16 safetensors file"),
    Case("pg2-batch", dict(image_size=BASE, **PG2), "caption en", layout="hub",
         batch=(("rgb", "caption en"), ("other", "answer en what is in the image ?"),
                ("gray", "detect cat ; dog")),
         what="a left-padded batch of three (image, prompt) rows, prompts of three lengths: "
              "each row as it is alone (padding masked, positions from the row's first real "
              "token, each row its own image)",
         sibling="pg2-hub-caption",
         hint="the implementation cannot run a left-padded batch"),
    Case("pg2-448-vqa", dict(image_size=LARGE, **PG2), "answer en what color is it ?",
         layout="hub", what="PaliGemma 2 with more image tokens than head_dim",
         sibling="pg2-hub-caption", hint=_HEAD_DIM),
)

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


def _image(kind: str) -> Image.Image:
    """"rgb": 75 x 60; "gray": the same in grey; "other": another picture (a batch row's)."""
    rgb = np.asarray(Image.fromarray(example_image(75)).resize((75, 60), Image.Resampling.BICUBIC))
    if kind == "other":
        return Image.fromarray(np.ascontiguousarray(rgb[::-1, ::-1, ::-1]))
    return Image.fromarray(rgb).convert("L") if kind == "gray" else Image.fromarray(rgb)


def row_images(case: Case, root: Path) -> list[tuple[Path, str]]:
    """A batch case's rows as (image file, prompt), the images written once."""
    out = []
    for kind, prompt in case.batch:
        path = root / f"image-{kind}.png"
        if not path.is_file():
            _image(kind).save(path)
        out.append((path, prompt))
    return out


def write_case(case: Case, root: Path) -> tuple[Path, Path]:
    """The case's checkpoint folder and image under `root` (written once, then reused)."""
    folder, image = root / case.name, root / f"{case.name}.png"
    if case.folder is not None:
        folder = Path(case.folder)
    elif not (folder / "config.json").is_file():
        write_checkpoint(folder, tiny_config(**case.config), layout=case.layout, dtype=case.dtype,
                         num_shards=case.shards, decisive=True, preprocessor=True,
                         sentencepiece=True)
    if not image.is_file():
        _image(case.image).save(image)
    return folder, image


def model_case(folder: str) -> Case:
    """A real checkpoint of the user's (`--model DIR`) as one more case."""
    return Case(f"model:{Path(folder).name}", {}, "caption en", folder=str(folder),
                what="the checkpoint given with --model")


def select(patterns: str | None, extra: list[Case] = ()) -> list[Case]:
    cases = list(CASES) + list(extra)
    if not patterns:
        return cases
    globs = [p.strip() for p in patterns.split(",") if p.strip()]
    chosen = [c for c in cases if any(fnmatch.fnmatchcase(c.name, g) for g in globs)]
    if not chosen:
        raise InputError(f"--cases {patterns}: matches none of {', '.join(c.name for c in cases)}")
    return chosen


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
    seconds: float = 0.0
    report: dict | None = None


def run_case(case: Case, root: Path, args) -> Result:
    """One case through `against.run`; an implementation that cannot load it is a row too."""
    t0 = time.perf_counter()
    folder, image = write_case(case, root)
    ns = argparse.Namespace(model=str(folder), image=str(image), prompt=case.prompt,
                            against=args.against, dtype=args.dtype, device=args.device,
                            attn=args.attn, max_new_tokens=args.max_new_tokens, diagnose=True,
                            python=args.python, window=getattr(args, "window", "transformers"),
                            batch=[(str(p), q) for p, q in row_images(case, root)] or None)
    try:
        report, rc = against.run(ns)
    except Unsupported as e:
        return Result(case.name, True, {c: ("n/a" if c == "load" else "-") for c in COLUMNS},
                      unsupported=str(e).split(": not supported by the implementation: ")[-1],
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
    d = report["diagnosis"] or {}
    return Result(case.name, rc == 0, cells, verdict=None if rc == 0 else d.get("verdict"),
                  explained=d.get("explained"), deviations=d.get("deviations", []),
                  seconds=time.perf_counter() - t0, report=report)


def explain_load_failures(cases: list[Case], results: list[Result]) -> None:
    """A case the implementation cannot run, whose sibling it runs, is explained by its hint."""
    ran = {r.case for r in results if r.error is None}
    for case, r in zip(cases, results):
        if r.error is not None and case.sibling in ran and case.hint:
            r.verdict, r.explained = f"{case.hint} ({r.error})", True


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
    return (f"{len(failed)} of {len(results)} cases fail; "
            + ("every failure is explained by the diagnosis" if not unexplained else
               f"unexplained: {', '.join(unexplained)}") + also)


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
