"""Why an implementation cannot run a case: the load, config and crash traps (`CASE_TRAPS`),
and `sort_crash`, which runs sibling cases on demand to tell them apart.

A crash is a symptom with a cause, and the case set isolates it: a case that differs from its
`sibling` in one property (a key layout, a bfloat16 file, a grey image) names that property
when the sibling runs; the crash traps compare PaliGemma 1 with 2, one key/value head with two,
and a PaliGemma 2 sequence shorter than its window with one longer. A quantization library's own
crash (`LIBRARY_CRASHES`) is told by its message.
"""

from __future__ import annotations

import re
from typing import Callable

from .trap import Trap

PG1_BASE, PG1_KV2 = "pg1-hub-f32", "pg1-kv2"
PG2_SHORT, PG2_KV1 = "pg2-short", "pg2-kv1"   # K = 2 within the window; K = 1 past it


def _layout(name: str, label: str) -> Trap:
    return Trap(f"unreadable-layout-{name}", "load", "checkpoint/layout.py: every key layout "
                "transformers has written", f"the implementation cannot read the {label} key "
                "layout (it reads the Hub's, where the same checkpoint loads)",
                "the case in that layout fails to load beside its Hub-layout sibling")


CASE_TRAPS: dict[str, Trap] = {t.name: t for t in (
    _layout("v4.52", "transformers 4.52"),
    _layout("v5", "transformers 5.x (in memory)"),
    _layout("v5-save", "transformers 5.x save_pretrained"),
    Trap("no-bf16-file", "load", "checkpoint/weights.py: safetensors BF16 tensors",
         "the implementation cannot read a bfloat16 safetensors file",
         "a bfloat16 file fails beside its float32 sibling"),
    Trap("no-sharded-checkpoint", "load", "model.safetensors.index.json's weight_map",
         "the implementation cannot read a sharded checkpoint",
         "three shards fail beside the one-file sibling"),
    Trap("head-dim-from-image-tokens", "config", "config.json text_config.head_dim",
         "the implementation runs 16 image tokens (= head_dim) but not 64: it takes head_dim "
         "from the image-token count (config.json's text_config.head_dim is the head size)",
         "a case with more image tokens than head_dim fails beside one with as many"),
    Trap("head-dim-ignored", "config", "config.json text_config.head_dim",
         "the implementation ignores config.json's head_dim for Gemma 1 (takes hidden_size / "
         "num_attention_heads)", "head_dim != hidden_size / heads fails beside ="),
    Trap("no-convert-rgb", "processor", "generation/processing.py: every image converted to RGB",
         "the implementation does not convert a grey-scale image to RGB (the Hub's "
         "preprocessor_config.json says do_convert_rgb null; npgemma converts every image, as "
         "transformers' load_image does)", "the grey-image case fails beside its RGB sibling"),
    Trap("no-left-padded-batch", "batch", "generation/slots.py: left padding",
         "the implementation cannot run a left-padded batch",
         "a batch of RGB rows fails beside its single-input sibling"),
    Trap("no-gemma2", "crash", "config.json text_config.model_type 'gemma2'",
         "the implementation has no Gemma 2 (PaliGemma 2): a PaliGemma 1 case runs, every "
         "PaliGemma 2 case crashes (e.g. KeyError: 'gemma2')",
         f"{PG1_BASE} runs, {PG2_SHORT} and {PG2_KV1} crash (run on demand)",
         needs="a PaliGemma 2 case"),
    Trap("prefix-mask-one-kv-head", "crash", "paligemma.prefix_lm_mask: one mask for every head "
         "([B, L, S], broadcast over the heads)", "the implementation builds its prefix mask for "
         "one key/value head (expanded to num_key_value_heads, a shape mismatch): one key/value "
         "head runs, two crash", f"{PG2_KV1} (or {PG1_BASE}) runs, {PG2_SHORT} (or {PG1_KV2}) "
         "crashes (run on demand)", needs="num_key_value_heads > 1"),
    Trap("fails-past-window", "crash", "kv_cache.py: the cache holds the whole sequence; the "
         "window is a mask", "the implementation's sliding-window cache fails once the sequence "
         "outgrows the window (e.g. an IndexError at the first token past it)",
         f"{PG2_SHORT} (shorter than its window) runs, {PG2_KV1} (longer) crashes (run on "
         "demand)", needs="a Gemma-2 sequence longer than the window"),
    Trap("window-not-in-top-config", "crash", "config.json text_config.sliding_window (the "
         "window is the text model's; PaliGemma's own config has none)", "the implementation "
         "looks for the Gemma 2 window in PaliGemma's top-level config, which has none (it is "
         "text_config.sliding_window), and fails there (transformers 4.44's generate builds "
         "its sliding-window cache from the top-level config when text_config's "
         "cache_implementation 'hybrid' reaches its generation config)", f"the crash names "
         f"sliding_window; {PG1_BASE} runs (run on demand)",
         needs="a PaliGemma 2 case that reaches generate"),
)}


# What a crash's own message says, read before the siblings are (first match wins): a crash is
# sorted by its error *and* the cases beside it. Each kind: the words transformers, PyTorch and
# NumPy use for it.
_KINDS = (
    ("model-type", re.compile(r"KeyError: '?gemma2'?|Unrecognized (model|configuration)|does not "
                              r"recognize this architecture|unknown model type|model.type.*gemma2",
                              re.I)),
    ("layout", re.compile(r"weights? (were )?missing|missing (from the checkpoint|keys?)|"
                          r"unexpected keys?|keys? it did not expect", re.I)),
    ("window-config", re.compile(r"sliding_window", re.I)),
    ("shape", re.compile(r"must match the size of tensor|shape mismatch|shapes? .*(not )?"
                         r"(broadcast|aligned)|cannot reshape|size mismatch", re.I)),
    ("index", re.compile(r"IndexError|out of bounds|index out of range", re.I)),
)
_WHERE = re.compile(r" at [\w./-]+:\d+$")   # the adapter's "at FILE:LINE" tail


def crash_kind(error: str | None) -> str | None:
    """The kind of crash `error` (one line, as a conform row holds it) is, or None."""
    for kind, pattern in _KINDS:
        if error and pattern.search(error):
            return kind
    return None


def same_crash(a: str | None, b: str | None) -> bool:
    """Two crashes with one message (the file and line it was raised at aside)."""
    strip = lambda e: _WHERE.sub("", e.split("): ", 1)[-1].strip())  # noqa: E731
    return bool(a and b) and strip(a) == strip(b)


def sort_crash(case, outcome: Callable[[str], str | None],
               error_of: Callable[[str], str | None] = lambda name: None) -> str | None:
    """The catalogue's name of the cause of `case`'s crash, or None. `outcome(name)` runs the
    case `name` if it has not run (whatever --cases selected) and says "ran", "crashed" or None
    (declined, timed out, or no such case); `error_of(name)` is that case's error line. The
    crash's own message decides first: `no-gemma2` only for a crash about the model type, a
    shape mismatch never is one, a missing-weights error on a layout case is the layout."""
    error = error_of(case.name)
    kind = crash_kind(error)
    if case.sibling and case.trap:
        sibling = outcome(case.sibling)
        if sibling == "ran":
            return case.trap
        if (sibling == "crashed" and case.trap.startswith("unreadable-layout") and kind == "layout"
                and crash_kind(error_of(case.sibling)) != "layout"):
            return case.trap  # the sibling fails for another reason; this one cannot load
    text = case.config.get("text", "gemma")
    kv = case.config.get("num_key_value_heads", 1)
    if kind == "layout":
        return None
    if text != "gemma2":
        if kv > 1 and kind in ("shape", None) and outcome(PG1_BASE) == "ran":
            return "prefix-mask-one-kv-head"
        return None
    if kind == "model-type":
        return "no-gemma2" if outcome(PG1_BASE) == "ran" else None
    if kind == "window-config":
        return "window-not-in-top-config" if outcome(PG1_BASE) == "ran" else None
    if kv > 1 and kind in ("shape", None):
        if outcome(PG2_KV1) == "ran" and outcome(PG2_SHORT) == "crashed":
            return "prefix-mask-one-kv-head"
        if kind == "shape" and outcome(PG1_KV2) == "crashed" and \
                same_crash(error, error_of(PG1_KV2)) and outcome(PG1_BASE) == "ran":
            return "prefix-mask-one-kv-head"  # pg1-kv2's crash, whose cause its sibling sorts
    if kind in ("index", None) and case.name != PG2_SHORT and outcome(PG2_SHORT) == "ran" \
            and outcome(PG2_KV1) == "crashed" and crash_kind(error_of(PG2_KV1)) in ("index", None):
        return "fails-past-window"
    if kind is None and outcome(PG1_BASE) == "ran" and all(
            outcome(n) == "crashed" and same_crash(error, error_of(n))
            for n in (PG2_SHORT, PG2_KV1)):
        return "no-gemma2"  # a message it does not know, the same on every PaliGemma 2 case
    return None


# A quantization library's own crash, told by its message (the error line conform keeps: the
# exception, its message, "at FILE:LINE" of the innermost frame). bitsandbytes 0.50.2 on a CPU
# with AVX512-BF16 repacks each 4-bit weight for its bf16 kernel on the first forward
# (nn/modules.py Linear4bit.forward -> functional.py _convert_weight_packed_for_cpu):
# `absmax.reshape(out, in // blocksize)` has no room for a linear narrower than one block of
# 64 and does not fit one whose width is no multiple of 64 (SigLIP's fc2, 4304 wide, in the
# released checkpoints): "shape '[32, 0]' is invalid for input of size 16 at functional.py:1720".
LIBRARY_CRASHES = (
    (r"RuntimeError: shape '\[\d+, \d+\]' is invalid for input of size \d+ at "
     r"functional\.py:\d+", "bnb", "bnb-cpu-repack-block-width"),
)
LIBRARY_TRAPS = {"bnb-cpu-repack-block-width": Trap(
    "bnb-cpu-repack-block-width", "crash", "bitsandbytes functional.py "
    "_convert_weight_packed_for_cpu: absmax reshaped to [out, in // blocksize]",
    "bitsandbytes' AVX512-BF16 CPU path repacks each 4-bit weight on the first forward and "
    "cannot for a linear whose input width is not a multiple of its block of 64 (this CPU has "
    "AVX512-BF16); without the repacking (its path on other CPUs) the same weights run",
    "the crash's own message (a reshape of the absmax in bitsandbytes' functional.py), from an "
    "implementation whose spec names bitsandbytes", needs="a bitsandbytes 4-bit model on a CPU "
    "with AVX512-BF16")}


def library_crash(spec: str, error: str | None) -> str | None:
    """The catalogue's name of a quantization library's own crash, from its message."""
    for pattern, library, name in LIBRARY_CRASHES:
        if error and library in spec and re.search(pattern, error):
            return name
    return None


CASE_TRAPS |= LIBRARY_TRAPS  # one catalogue: these are crash traps too
