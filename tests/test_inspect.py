"""Named activations (`npgemma.inspection.capture` / `npgemma.inspection.trace`) and the analyses
on a Trace, NumPy only.

What is proved here: the hooks change no bit of any output, off or on; a trace's answer is
`generate`'s; the prefill and per-step pieces stitched together equal one uncached run over the
whole sequence; selection keeps exactly what was asked; the analyses agree with independent
computations (the last logit-lens layer is the model's own distribution; a hand-computed rollout).
"""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest

import npgemma
from npgemma import gemma, hooks, layers, paligemma, siglip
from npgemma.checkpoint.machine import Available
from npgemma.errors import InputError
from npgemma.generation.slots import Slots
from npgemma.inspection import analysis, capture
from npgemma.inspection import trace as inspect
from npgemma.synthetic.checkpoint import tiny_config, write_checkpoint
from npgemma.synthetic.random_model import example_image

PROMPT = "caption en"


@pytest.fixture(scope="module", params=["gemma", "gemma2"])
def pipe(request, tmp_path_factory):
    # Gemma-2 with a window shorter than the prompt (9 tokens): sliding layers really slide for
    # the generated tokens; Gemma-1 with 2 kv heads for 4 query heads: grouped-query unstacking.
    extra = dict(sliding_window=4) if request.param == "gemma2" else dict(num_key_value_heads=2)
    cfg = tiny_config(text=request.param, **extra)
    folder = write_checkpoint(tmp_path_factory.mktemp(request.param) / "ckpt", cfg)
    return npgemma.load(folder)


@pytest.fixture(scope="module")
def image():
    return example_image()


@pytest.fixture(scope="module")
def full(pipe, image):
    return inspect.trace(pipe, image, PROMPT, max_new_tokens=6)


def test_trace_answer_is_generates(pipe, image, full):
    out = pipe.generate(image, PROMPT, max_new_tokens=6)
    assert full.token_ids == out.token_ids and full.text == out.text
    method = pipe.trace(image, PROMPT, names="unembed.*", max_new_tokens=6)
    assert method.token_ids == out.token_ids and method.names == ["unembed.hook_logits"]
    assert len(method.checkpoint_hash) == 64  # the loaded folder's
    assert full.tokens[:full.prompt_len] == [pipe.processor.tokenizer.id_to_token(i)
                                             for i in full.input_ids.tolist()]
    assert full.grid ** 2 == pipe.cfg.num_image_tokens


def test_every_hook_name_is_captured_with_the_documented_shape(pipe, full):
    steps = full["unembed.hook_logits"].shape[1] - 1  # decode steps that ran
    shapes = inspect.hook_shapes(pipe.cfg, full.prompt_len, steps + 1)
    assert full.names == sorted(shapes)
    for name, shape in shapes.items():
        assert full[name].shape == shape, name


def _strip_hooks(monkeypatch):
    """The math with the capture machinery taken out: hook = identity, scope = nothing."""
    for mod in (layers, gemma, siglip, paligemma):
        if hasattr(mod, "hook"):
            monkeypatch.setattr(mod, "hook", lambda name, x: x)
        if hasattr(mod, "scope"):
            monkeypatch.setattr(mod, "scope", lambda name: contextlib.nullcontext())


def _run(pipe, image):
    """Every output of the run: logits of all text positions, generated ids (greedy, and sampled)."""
    return (pipe.logits(image, PROMPT, positions=slice(None)),
            pipe.generate(image, PROMPT, max_new_tokens=6).token_ids,
            pipe.generate(image, PROMPT, max_new_tokens=6, do_sample=True, seed=3).token_ids)


def test_hooks_change_no_bit_off_or_on(pipe, image, monkeypatch):
    off = _run(pipe, image)
    everything = capture.Capture(None, None, None, {"vision": 4, "decoder": 4})
    with hooks.capturing(everything):
        on = _run(pipe, image)
    assert everything.pieces  # it did capture
    with monkeypatch.context() as m:
        _strip_hooks(m)
        bare = _run(pipe, image)
    for a, b, c in zip(off, on, bare):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_stitched_steps_equal_one_uncached_run(pipe, image, full):
    cfg = pipe.cfg
    steps = full["unembed.hook_logits"].shape[1] - 1
    seq = np.concatenate([full.input_ids, full.token_ids[:steps]])[None]
    slots = Slots.full(1, full.prompt_len).append(steps)  # prompt = prefix, answer causal
    cap = capture.Capture(["decoder.*"], None, None, {"vision": 4, "decoder": 4})
    inputs = pipe.processor(image, PROMPT)
    with hooks.capturing(cap):
        feats = paligemma.encode_image(pipe.params, inputs.pixel_values[None], cfg)
        paligemma.forward(pipe.params, cfg, seq, slots.positions(), slots.masks(cfg),
                          image_features=feats)
    assert full["decoder.blocks.0.attn.hook_pattern"].shape[-1] == seq.shape[1]
    for name, parts in cap.pieces.items():
        whole = inspect.stitch(name, list(parts.values()))
        got = full[name]
        if name.endswith(("hook_scores", "hook_scores_capped")):
            # A decode step never computes scores for keys after its query: NaN there.
            done = ~np.isnan(got)
            assert done.sum() < got.size
            got, whole = got[done], whole[done]
        np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-5, err_msg=name)
    pattern = full["decoder.blocks.0.attn.hook_pattern"][0]
    np.testing.assert_allclose(pattern.sum(-1), 1.0, rtol=1e-5)


def test_query_chunks_are_reassembled(pipe, image, full, monkeypatch):
    # At 896 px the NumPy attention runs in query chunks; force one query row per chunk here.
    monkeypatch.setattr(layers, "SCORE_BLOCK_BYTES", 1)
    t = inspect.trace(pipe, image, PROMPT, names=["*.attn.hook_*"], max_new_tokens=6)
    assert len(t.pieces["decoder.blocks.0.attn.hook_pattern"]["prefill"]) == t.prompt_len
    for name in t.names:  # smaller matrix products round differently: ulps, not bits
        ok = ~np.isnan(full[name])
        np.testing.assert_array_equal(np.isnan(t[name]), ~ok, err_msg=name)
        np.testing.assert_allclose(t[name][ok], full[name][ok], rtol=1e-5, atol=1e-6, err_msg=name)


def test_selection_keeps_only_what_was_asked(pipe, image, full):
    t = inspect.trace(pipe, image, PROMPT, names=["decoder.blocks.*.attn.hook_pattern",
                                                  "vision.*.hook_resid_post"],
                      layers=[1], heads=[2, 0], max_new_tokens=6)
    assert t.names == ["decoder.blocks.1.attn.hook_pattern", "vision.blocks.1.hook_resid_post"]
    np.testing.assert_array_equal(t["decoder.blocks.1.attn.hook_pattern"],
                                  full["decoder.blocks.1.attn.hook_pattern"][:, [0, 2]])
    np.testing.assert_array_equal(t["vision.blocks.1.hook_resid_post"],
                                  full["vision.blocks.1.hook_resid_post"])
    with pytest.raises(InputError, match="match no hook"):
        inspect.trace(pipe, image, PROMPT, names=["decoder.blocks.*.attn.pattern"])


def test_capture_everything_checks_memory_first(pipe, image, monkeypatch):
    monkeypatch.setattr(inspect, "available_memory", lambda: Available(1000, "MemAvailable"))
    with pytest.raises(InputError, match=r"GiB is available \(MemAvailable\); select fewer"):
        inspect.trace(pipe, image, PROMPT, max_new_tokens=2)


def test_save_and_load_round_trip(full, tmp_path):
    npz, manifest = full.save(tmp_path / "trace")
    m = json.loads(manifest.read_text())
    assert m["tokens"] == full.tokens and m["grid"] == full.grid and m["text"] == full.text
    assert m["names"]["projector.hook_out"] == list(full["projector.hook_out"].shape)
    back = inspect.Trace.load(npz)
    assert back.names == full.names
    for name in full.names:
        np.testing.assert_array_equal(back[name], full[name])


def test_logit_lens_last_layer_is_the_models_distribution(pipe, full):
    lm = pipe.params["language_model"]
    head = pipe.params["lm_head"]["weight"] if "lm_head" in pipe.params else lm["embed_tokens"]["weight"]
    ids, probs = analysis.logit_lens(full, lm["norm"]["weight"], head, pipe.cfg, k=5)
    y = pipe.cfg.text_config.num_hidden_layers
    t = len(full.token_ids)
    assert ids.shape == probs.shape == (y, t, 5)
    logits = full["unembed.hook_logits"][0, :t].astype(np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_array_equal(ids[-1, :, 0], full.token_ids)  # greedy = the lens' top-1
    np.testing.assert_allclose(probs[-1], np.take_along_axis(p, ids[-1], -1), rtol=1e-4, atol=1e-6)
    assert (np.diff(probs, axis=-1) <= 0).all()  # sorted


def test_rollout_against_a_hand_computation():
    a1 = np.array([[[[1.0, 0.0], [0.5, 0.5]]]])  # [B=1, N=1, 2, 2]
    a2 = np.array([[[[0.0, 1.0], [1.0, 0.0]]]])
    r1 = np.array([[1.0, 0.0], [0.25, 0.75]])            # rownorm(a1 + I)
    r2 = np.array([[0.5, 0.5], [0.5, 0.5]]) @ r1         # rownorm(a2 + I) @ r1
    got = analysis.rollout([a1, a2])
    np.testing.assert_allclose(got[0], r1)
    np.testing.assert_allclose(got[1], r2)


def test_analyses_are_distributions(pipe, full):
    y, t, g = pipe.cfg.text_config.num_hidden_layers, len(full.token_ids), full.grid
    assert analysis.image_attention(full).shape == (y, t, g, g)
    assert analysis.image_attention(full, head=1).shape == (y, t, g, g)
    roll = analysis.decoder_rollout(full)
    assert roll.shape == (y, t, g, g) and (roll >= 0).all() and (roll.sum((-1, -2)) <= 1 + 1e-9).all()
    pix = analysis.pixel_rollout(full)
    # SigLIP's rollout is row-stochastic, so carrying on through it keeps the image share.
    np.testing.assert_allclose(pix.sum((-1, -2)), roll[-1].sum((-1, -2)), rtol=1e-9)
    mass = analysis.attention_mass(full)
    assert mass.shape == (y, 4)
    np.testing.assert_allclose(mass.sum(-1), 1.0, rtol=1e-5)
    norms = analysis.residual_norms(full)
    assert norms.shape == (y, 3) and (norms > 0).all()


def test_occlusion_blanking_nothing_changes_nothing(pipe, image, full):
    inputs = pipe.processor(image, PROMPT)
    occ = analysis.occlusion(pipe, inputs.pixel_values, inputs.input_ids, full.token_ids[0], grid=2)
    assert occ.shape == (2, 2) and np.isfinite(occ).all() and np.abs(occ).max() > 0
    zero = np.zeros_like(inputs.pixel_values)  # already blank: occluding any cell is a no-op
    np.testing.assert_array_equal(
        analysis.occlusion(pipe, zero, inputs.input_ids, full.token_ids[0], grid=2), 0.0)
