"""The conformance case set: tiny checkpoints npgemma writes itself, each chosen so that a trap
the diagnosis knows has an input where it shows (see `conform.py` for how they are run), and
the images and batch rows they are run on."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..synthetic.checkpoint import tiny_config, write_checkpoint
from ..synthetic.random_model import example_image

# Gemma-2 settings that bite at this size: a window (4) shorter than every prompt, caps inside
# the range of the scores and logits, a query scale of 24^-0.5 where head_dim is 16.
PG2 = dict(text="gemma2", num_key_value_heads=2, sliding_window=4, attn_logit_softcapping=1.5,
           final_logit_softcapping=4.0, query_pre_attn_scalar=24)
# PaliGemma 1 as paligemma-3b is: head_dim = hidden_size / heads (64 / 4); PaliGemma 2 as
# Gemma-2 is: head_dim 16 != 32 / 4.
PG1 = dict(hidden_size=64)
BASE = 56   # 16 image tokens = head_dim, as 256 = head_dim at 224 px
LARGE = 112  # 64 image tokens != head_dim, as 1024 at 448 px
# A PaliGemma 2 whose window (64) is longer than its whole sequence (16 image tokens, the
# prompt, the new tokens): beside pg2-kv1 (past the window) it sorts a crash by its cause.
PG2_SHORT = dict(PG2, sliding_window=64)
# The batch cases' rows: three RGB images, prompts of three lengths (so two rows are padded).
BATCH_ROWS = (("rgb", "caption en"), ("other", "answer en what is in the image ?"),
              ("third", "detect cat ; dog"))


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
    # property this case is there for), the catalogue's `trap` is the likely cause.
    sibling: str | None = None
    trap: str | None = None
    # A batch case: (image, prompt) per row, run as one left-padded batch; `prompt` and `image`
    # are then row 0's.
    batch: tuple = ()


# Each case differs from its sibling (the Hub-layout float32 case of the same model) in the one
# property it is there for, so that a case the implementation cannot load names its cause.
CASES = (
    Case("pg1-hub-f32", dict(image_size=BASE, **PG1), "caption en", layout="hub",
         what="PaliGemma 1 in the Hub's key layout (transformers <= 4.51), float32, one "
              "key/value head"),
    Case("pg1-v4.52-detect", dict(image_size=BASE, **PG1), "detect cat ; dog", layout="v4.52",
         what="transformers 4.52's key layout; a detect prompt", sibling="pg1-hub-f32",
         trap="unreadable-layout-v4.52"),
    Case("pg1-v5-vqa", dict(image_size=BASE, **PG1), "answer en what is in the image ?",
         layout="v5", what="transformers 5.x's key layout; a VQA prompt", sibling="pg1-hub-f32",
         trap="unreadable-layout-v5"),
    Case("pg1-v5save-segment", dict(image_size=BASE, **PG1), "segment cat", layout="v5-save",
         what="the layout transformers 5.x's save_pretrained writes; a segment prompt",
         sibling="pg1-hub-f32", trap="unreadable-layout-v5-save"),
    Case("pg1-bf16", dict(image_size=BASE, **PG1), "caption en", layout="hub", dtype="bfloat16",
         what="a bfloat16 file", sibling="pg1-hub-f32", trap="no-bf16-file"),
    Case("pg1-sharded", dict(image_size=BASE, **PG1), "caption en", layout="hub", shards=3,
         what="three shards and model.safetensors.index.json", sibling="pg1-hub-f32",
         trap="no-sharded-checkpoint"),
    Case("pg1-448", dict(image_size=LARGE, **PG1), "caption en", layout="hub",
         what="more image tokens than head_dim (448 px and up)", sibling="pg1-hub-f32",
         trap="head-dim-from-image-tokens"),
    Case("pg1-gray-image", dict(image_size=BASE, **PG1), "caption en", layout="hub", image="gray",
         what="a grey-scale image: the processor converts it to RGB", sibling="pg1-hub-f32",
         trap="no-convert-rgb"),
    Case("pg1-head-dim", dict(image_size=BASE), "caption en", layout="hub", sibling="pg1-hub-f32",
         what="config.json's head_dim (16) != hidden_size / heads (32 / 4), as in Gemma 7B",
         trap="head-dim-ignored"),
    Case("pg1-kv2", dict(image_size=BASE, num_key_value_heads=2, **PG1), "caption en",
         layout="hub", what="two key/value heads beside pg1-hub-f32's one",
         sibling="pg1-hub-f32", trap="prefix-mask-one-kv-head"),
    Case("pg1-batch", dict(image_size=BASE, **PG1), "caption en", layout="hub",
         batch=BATCH_ROWS,
         what="PaliGemma 1, a left-padded batch of three RGB rows, prompts of three lengths: "
              "each row as it is alone (pads masked, positions from the row's first real token)",
         sibling="pg1-hub-f32", trap="no-left-padded-batch"),
    Case("pg2-hub-caption", dict(image_size=BASE, **PG2), "caption en", layout="hub",
         what="PaliGemma 2: four norms, soft caps, a window shorter than the prompt, "
              "query_pre_attn_scalar != head_dim, two key/value heads"),
    Case("pg2-short", dict(image_size=BASE, **PG2_SHORT), "caption en", layout="hub",
         what="PaliGemma 2 with a window (64) longer than the whole sequence, beside the others' "
              "shorter one: a crash past the window shows here as a pass"),
    Case("pg2-kv1", dict(image_size=BASE, **dict(PG2, num_key_value_heads=1)), "caption en",
         layout="hub", what="PaliGemma 2 with one key/value head (past its window), beside "
                            "pg2-short's two (within it)"),
    Case("pg2-v5save-detect", dict(image_size=BASE, **PG2), "detect cat", layout="v5-save",
         what="PaliGemma 2 as transformers 5.x saves it; a detect prompt",
         sibling="pg2-hub-caption", trap="unreadable-layout-v5-save"),
    Case("pg2-bf16-segment", dict(image_size=BASE, **PG2), "segment dog", layout="hub",
         dtype="bfloat16", what="PaliGemma 2, a bfloat16 file; a segment prompt",
         sibling="pg2-hub-caption", trap="no-bf16-file"),
    Case("pg2-batch", dict(image_size=BASE, **PG2), "caption en", layout="hub",
         batch=BATCH_ROWS,
         what="a left-padded batch of three RGB (image, prompt) rows, prompts of three lengths: "
              "each row as it is alone (padding masked, positions from the row's first real "
              "token, each row its own image); a grey-image fault shows in pg1-gray-image only",
         sibling="pg2-hub-caption", trap="no-left-padded-batch"),
    Case("pg2-448-vqa", dict(image_size=LARGE, **PG2), "answer en what color is it ?",
         layout="hub", what="PaliGemma 2 with more image tokens than head_dim",
         sibling="pg2-hub-caption", trap="head-dim-from-image-tokens"),
)

def _image(kind: str) -> Image.Image:
    """"rgb": 75 x 60; "gray": the same in grey; "other", "third": other pictures (batch rows')."""
    rgb = np.asarray(Image.fromarray(example_image(75)).resize((75, 60), Image.Resampling.BICUBIC))
    if kind == "other":
        return Image.fromarray(np.ascontiguousarray(rgb[::-1, ::-1, ::-1]))
    if kind == "third":
        return Image.fromarray(np.ascontiguousarray(rgb[:, ::-1][..., [1, 2, 0]]))
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


