"""The two authorities for Gemma-2's sliding window, run by `npgemma.load(..., window=...)`.

transformers 5.24 windows generated tokens only: a generated query at slot i sees key j iff
i - j < W; big_vision (the training code) applies no window. The expectations below follow
from that definition alone: with a prefix of P slots and generated tokens fed at slots
P, P+1, ..., the two can first differ at the first fed slot i >= W, and nowhere before.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

import npgemma
from npgemma.errors import InputError
from npgemma.generation.slots import Slots
from npgemma.synthetic.checkpoint import tiny_config, write_checkpoint
from npgemma.synthetic.random_model import example_image

WINDOW = 12
SUFFIX = [5, 9, 7, 11, 6, 8, 10, 12]  # fed tokens, the same for every run (teacher forcing)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("window")
    cfg = tiny_config(text="gemma2", num_key_value_heads=2, minimal=False, sliding_window=WINDOW,
                      num_hidden_layers=2, attn_logit_softcapping=None)
    return write_checkpoint(folder, cfg, layout="hub", decisive=True)


@pytest.fixture(scope="module")
def inputs(ckpt):
    pipe = npgemma.load(ckpt, force=True)
    return pipe.processor(Image.fromarray(example_image()), "caption en")


def forced_steps(pipe, inputs, suffix=SUFFIX) -> np.ndarray:
    """float32[1 + len(suffix), V]: the prefill's last logits, then each cached decode step's
    as `suffix` is fed, through the backend's own prefill and decode path."""
    be, cfg, params = pipe.backend, pipe.cfg, pipe.params
    ids, pixels = inputs.input_ids[None], inputs.pixel_values[None]
    slots = Slots.full(*ids.shape)
    feats = be.encode_image(params, pixels, cfg)
    cache = be.init_cache(cfg, 1, ids.shape[1] + len(suffix))
    logits, cache = be.forward(params, cfg, ids, slots.positions(), slots.masks(cfg),
                               image_features=feats, cache=cache, last_only=True)
    out = [be.last_logits_to_numpy(logits)[0]]
    state = be.start_decode(cfg, slots.valid, slots.is_prefix, cache)
    for t in suffix:
        logits = be.decode_step(params, cfg, np.array([t], np.int64), state, cache)
        out.append(be.last_logits_to_numpy(logits)[0])
    return np.stack(out)


def test_prefix_is_shorter_than_the_window_and_the_suffix_outgrows_it(inputs):
    prefix = len(inputs.input_ids)
    assert prefix < WINDOW < prefix + len(SUFFIX)  # else the tests below prove nothing


def test_big_vision_equals_the_unwindowed_forward(ckpt, inputs):
    """big_vision = the same model with every layer a full-attention layer."""
    bv = npgemma.load(ckpt, window="big_vision", force=True)
    unwindowed = npgemma.load(ckpt, force=True)
    text = unwindowed.cfg.text_config
    assert "sliding_attention" in text.layer_types
    unwindowed.cfg = dataclasses.replace(unwindowed.cfg, text_config=dataclasses.replace(
        text, layer_types=("full_attention",) * text.num_hidden_layers))
    np.testing.assert_array_equal(forced_steps(bv, inputs), forced_steps(unwindowed, inputs))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_transformers_differs_only_once_the_sequence_outgrows_the_window(ckpt, inputs, backend):
    if backend == "torch":
        pytest.importorskip("torch")
    tf = forced_steps(npgemma.load(ckpt, backend=backend, force=True), inputs)
    bv = forced_steps(npgemma.load(ckpt, backend=backend, window="big_vision", force=True), inputs)
    prefix = len(inputs.input_ids)
    # row 0: the last prefix query (never windowed); row k >= 1: the query at slot prefix + k - 1
    query_slot = np.array([prefix - 1] + [prefix + k for k in range(len(SUFFIX))])
    inside = query_slot < WINDOW
    np.testing.assert_allclose(tf[inside], bv[inside], rtol=0, atol=1e-6)
    gap = np.abs(tf[~inside] - bv[~inside]).max(axis=-1)
    assert (gap > 1e-3).all(), gap  # each step past the window sees fewer keys under transformers


@pytest.mark.parametrize("window", ["transformers", "big_vision"])
def test_numpy_and_torch_agree_for_both(ckpt, inputs, window):
    pytest.importorskip("torch")
    np_steps = forced_steps(npgemma.load(ckpt, window=window, force=True), inputs)
    t_steps = forced_steps(npgemma.load(ckpt, backend="torch", window=window, force=True), inputs)
    np.testing.assert_allclose(t_steps, np_steps, rtol=0, atol=1e-4)


def test_unknown_window_is_one_clear_error(ckpt):
    with pytest.raises(InputError, match="window 'keras'.*transformers, big_vision"):
        npgemma.load(ckpt, window="keras", force=True)


def test_window_is_never_read_from_config_json(tmp_path):
    """`window` is npgemma's option: a config.json key of that name does not set it."""
    cfg = tiny_config(text="gemma2", minimal=False, sliding_window=WINDOW, window="big_vision")
    folder = write_checkpoint(tmp_path / "m", cfg, layout="hub")
    assert npgemma.load(folder, force=True).cfg.text_config.window == "transformers"


# ---- when the choice can matter: the rule, checked against the masks, and the docs' table ----

@pytest.mark.parametrize("window", [1, 3, 6])
@pytest.mark.parametrize("prefix_len", [2, 4, 6, 9])
def test_first_windowed_token_is_where_the_masks_first_part(prefix_len, window):
    """Brute force: the first generated query whose transformers mask row differs from the
    unwindowed one; token n is read from the query at slot prefix_len + n - 2."""
    from npgemma.paligemma import first_windowed_token, prefix_lm_mask

    total = prefix_len + window + 4
    valid = np.ones((1, total), bool)
    is_prefix = valid.copy()
    is_prefix[:, prefix_len:] = False
    windowed = prefix_lm_mask(valid, is_prefix, 0, window)[0]
    unwindowed = prefix_lm_mask(valid, is_prefix, 0)[0]
    rows = [i for i in range(total) if (windowed[i] != unwindowed[i]).any()]
    assert rows and min(rows) >= prefix_len  # the prefix's own rows never differ
    # the last prefix query gives token 1: that row never differs, so token 1 never does
    assert first_windowed_token(prefix_len, window) == min(rows) - prefix_len + 2
    assert first_windowed_token(prefix_len, None) is None


# (name, text model, sliding_window) of the real checkpoints: PaliGemma 1 is Gemma 2B (no
# window); PaliGemma 2 3B/10B/28B are Gemma 2 2B/9B/27B, each config.json with window 4096.
REAL = [("PaliGemma 1 3B", None), ("PaliGemma 2 3B", 4096), ("PaliGemma 2 10B", 4096),
        ("PaliGemma 2 28B", 4096)]
PATCH = 14  # SigLIP So400m/14: image tokens (px / 14)²


def two_authority_table() -> str:
    """docs/conformance.md's table, from the config values above and `first_windowed_token`."""
    from npgemma.paligemma import first_windowed_token

    lines = ["| checkpoint | px | image tokens | window | can the choice change the output? |",
             "|---|---|---|---|---|"]
    for name, window in REAL:
        for px in (224, 448, 896):
            tokens = (px // PATCH) ** 2
            if window is None:
                verdict = "no: Gemma 1 has no window"
            else:
                # the shortest prompt: <bos> and "\n" alone (2 text tokens)
                n = first_windowed_token(tokens + 2, window)
                text = 2 + n  # the 2-token prompt and n answer tokens: token n exists
                if n == 2:
                    verdict = ("**yes, always**: from the 2nd generated token on (the 1st "
                               "generated token's own attention is windowed)")
                else:
                    verdict = (f"only when prompt (with `<bos>` and `\\n`) + answer reach "
                               f"{text} tokens")
            lines.append(f"| {name} | {px} | {tokens} | {window or '-'} | {verdict} |")
    return "\n".join(lines)


def test_docs_two_authority_table_is_the_computed_one():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "conformance.md").read_text(encoding="utf-8")
    table = two_authority_table()
    assert table in doc, "docs/conformance.md's two-authority table should read:\n" + table
