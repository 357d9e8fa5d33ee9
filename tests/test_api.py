"""The public API exactly as the README shows it: `npgemma.load(dir)` -> a Pipeline with
`.processor`, `.logits`, `.generate`, `.stream`, `.generate_batch`, on tiny random checkpoints."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import npgemma
from npgemma.synthetic.checkpoint import tiny_config, write_checkpoint
from npgemma.synthetic.random_model import example_image

REPO = Path(npgemma.__file__).resolve().parents[1]
PROMPT = "caption en"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("api") / "tiny", tiny_config(), layout="hub")


@pytest.fixture(scope="module")
def pipe(ckpt):
    return npgemma.load(ckpt)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return example_image()  # uint8[64, 64, 3]


@pytest.fixture(scope="module")
def image_path(tmp_path_factory, image) -> Path:
    path = tmp_path_factory.mktemp("img") / "example.png"
    Image.fromarray(image).save(path)
    return path


def test_processor_outputs(pipe, image):
    cfg = pipe.cfg
    inputs = pipe.processor(image, PROMPT)
    p, s = cfg.num_image_tokens, cfg.vision_config.image_size
    assert inputs.input_ids.dtype == np.int64 and inputs.input_ids.ndim == 1
    assert inputs.pixel_values.dtype == np.float32 and inputs.pixel_values.shape == (3, s, s)
    ids = inputs.input_ids.tolist()
    assert ids[:p] == [cfg.image_token_index] * p  # <image> * P, then <bos>, the prompt, "\n"
    assert ids[p] == cfg.bos_token_id
    assert pipe.processor.decode(ids[p + 1:]) == PROMPT + "\n"


def test_logits_shape_and_greedy_agreement(pipe, image):
    logits = pipe.logits(image, PROMPT)
    ids = pipe.processor(image, PROMPT).input_ids
    text = int((ids != pipe.cfg.image_token_index).sum())  # the default: text positions only
    assert logits.dtype == np.float32
    assert logits.shape == (text, pipe.cfg.text_config.vocab_size)
    assert np.isfinite(logits).all()
    everything = pipe.logits(image, PROMPT, positions=slice(None))
    assert everything.shape == (len(ids), pipe.cfg.text_config.vocab_size)
    np.testing.assert_allclose(everything[-text:], logits, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(pipe.logits(image, PROMPT, positions=[0, len(ids) - 1]).shape,
                                  (2, pipe.cfg.text_config.vocab_size))
    # The last prompt position predicts the first greedy token.
    first = pipe.generate(image, PROMPT, max_new_tokens=1).token_ids
    assert first == [int(logits[-1].argmax())]


def test_generate_output_types(pipe, image):
    out = pipe.generate(image, PROMPT, max_new_tokens=6, do_sample=False)
    assert isinstance(out.text, str)
    assert isinstance(out.token_ids, list) and all(type(t) is int for t in out.token_ids)
    assert 1 <= len(out.token_ids) <= 6
    assert pipe.cfg.eos_token_id not in out.token_ids
    assert out.text == pipe.processor.decode(out.token_ids)
    # Greedy is deterministic.
    assert pipe.generate(image, PROMPT, max_new_tokens=6) == out


def test_image_as_path_pil_or_array(pipe, image, image_path):
    with Image.open(image_path) as im:
        pil = im.copy()
    forms = [image_path, str(image_path), pil, image]
    pixels = [pipe.processor(f, PROMPT).pixel_values for f in forms]
    for p in pixels[1:]:
        np.testing.assert_array_equal(p, pixels[0])
    outs = [pipe.generate(f, PROMPT, max_new_tokens=4) for f in forms]
    assert all(o == outs[0] for o in outs)
    np.testing.assert_array_equal(pipe.logits(pil, PROMPT), pipe.logits(image_path, PROMPT))


@pytest.mark.parametrize("prompt", [PROMPT, "detect cat", "answer en what is on the bench"])
def test_stream_concatenates_to_generate(pipe, image, prompt):
    pieces = list(pipe.stream(image, prompt, max_new_tokens=12))
    assert all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == pipe.generate(image, prompt, max_new_tokens=12).text


def test_stream_sampling_matches_generate(pipe, image):
    kw = dict(max_new_tokens=8, do_sample=True, temperature=0.8, top_k=50, top_p=0.95, seed=5)
    assert "".join(pipe.stream(image, PROMPT, **kw)) == pipe.generate(image, PROMPT, **kw).text


def test_generate_batch_equals_single_runs(pipe, image):
    other = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    images = [image, other, other]
    prompts = [PROMPT, "answer en what is on the bench", "detect cat"]  # different lengths: padding
    batch = pipe.generate_batch(images, prompts, max_new_tokens=6)
    single = [pipe.generate(i, p, max_new_tokens=6) for i, p in zip(images, prompts)]
    assert [b.token_ids for b in batch] == [s.token_ids for s in single]
    assert [b.text for b in batch] == [s.text for s in single]


def test_generate_batch_rejects_mismatched_lengths(pipe, image):
    with pytest.raises(npgemma.InputError, match="2 images but 1 prompts"):
        pipe.generate_batch([image, image], [PROMPT])


def test_max_new_tokens_zero(pipe, image):
    out = pipe.generate(image, PROMPT, max_new_tokens=0)
    assert out.text == "" and out.token_ids == []
    assert list(pipe.stream(image, PROMPT, max_new_tokens=0)) == []


@pytest.mark.parametrize("kw, culprit", [
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(do_sample=True, temperature=0.0), "temperature"),
    (dict(do_sample=True, top_p=0.0), "top_p"),
    (dict(do_sample=True, top_p=1.5), "top_p"),
    (dict(max_new_tokens=10**6), "max_position_embeddings"),
])
def test_bad_generation_arguments(pipe, image, kw, culprit):
    with pytest.raises(npgemma.InputError, match=culprit):
        pipe.generate(image, PROMPT, **kw)


def test_bad_image_and_backend(pipe, ckpt, tmp_path):
    with pytest.raises(npgemma.InputError, match="float64"):
        pipe.generate(np.zeros((8, 8, 3)), PROMPT)
    with pytest.raises(npgemma.InputError, match="no such image file"):
        pipe.generate(tmp_path / "missing.png", PROMPT)
    with pytest.raises(npgemma.InputError, match="'jax'"):
        npgemma.load(ckpt, backend="jax")


# ---- EOS -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def untied(tmp_path_factory):
    """A pipeline with its own lm_head, and its greedy tokens; tests edit a copy of its params."""
    folder = write_checkpoint(tmp_path_factory.mktemp("untied") / "tiny",
                              tiny_config(tie_word_embeddings=False), layout="hub")
    pipe = npgemma.load(folder)
    assert "lm_head" in pipe.params
    return pipe


def _with_eos_swapped(pipe, token: int):
    """Swap lm_head rows `token` and EOS: wherever greedy picked `token`, it now picks EOS, and
    nothing else changes (the inputs go through embed_tokens, which is untouched)."""
    params = copy.deepcopy(pipe.params)
    w = params["lm_head"]["weight"]
    eos = pipe.cfg.eos_token_id
    w[[token, eos]] = w[[eos, token]]
    calls = []
    backend = copy.copy(pipe.backend)
    forward = backend.forward
    backend.forward = lambda *a, **kw: calls.append(1) or forward(*a, **kw)
    return npgemma.Pipeline(pipe.cfg, params, pipe.processor, backend), calls


@pytest.mark.parametrize("stop_at", [0, "later"])
def test_eos_stops_generation(untied, image, stop_at):
    greedy = untied.generate(image, PROMPT, max_new_tokens=8).token_ids
    eos = untied.cfg.eos_token_id
    assert len(greedy) == 8 and eos not in greedy
    if stop_at == "later":  # the first step whose token has not been produced before
        stop_at = next(i for i in range(1, len(greedy)) if greedy[i] not in greedy[:i])
    pipe, calls = _with_eos_swapped(untied, greedy[stop_at])
    out = pipe.generate(image, PROMPT, max_new_tokens=8)
    assert out.token_ids == greedy[:stop_at]  # EOS excluded, everything before it kept
    assert out.text == untied.processor.decode(greedy[:stop_at])
    assert len(calls) == 1 + stop_at  # prefill + one decode step per token before EOS: no more
    assert "".join(pipe.stream(image, PROMPT, max_new_tokens=8)) == out.text
    # In a batch the finished row stops growing while the other one runs on.
    rows = pipe.generate_batch([image, image], [PROMPT, "detect cat"], max_new_tokens=8)
    assert rows[0].token_ids == greedy[:stop_at]
    assert rows[1].token_ids == pipe.generate(image, "detect cat", max_new_tokens=8).token_ids


# ---- backends --------------------------------------------------------------------------------

def test_torch_backend_matches_numpy(ckpt, pipe, image):
    pytest.importorskip("torch")
    tpipe = npgemma.load(ckpt, backend="torch")
    assert tpipe.backend.name == "torch"
    np.testing.assert_allclose(tpipe.logits(image, PROMPT), pipe.logits(image, PROMPT),
                               rtol=1e-4, atol=1e-4)
    assert (tpipe.generate(image, PROMPT, max_new_tokens=6).token_ids
            == pipe.generate(image, PROMPT, max_new_tokens=6).token_ids)
    kw = dict(max_new_tokens=6, do_sample=True, temperature=0.7, top_k=20, top_p=0.9, seed=3)
    assert tpipe.generate(image, PROMPT, **kw) == pipe.generate(image, PROMPT, **kw)


def _run_python(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that imports npgemma from this checkout."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_import_and_numpy_run_never_import_torch(ckpt, image_path):
    code = (
        "import sys, npgemma\n"
        "assert 'torch' not in sys.modules, 'import npgemma imported torch'\n"
        f"out = npgemma.load({str(ckpt)!r}).generate({str(image_path)!r}, 'caption en', "
        "max_new_tokens=2)\n"
        "assert len(out.token_ids) <= 2\n"
        "assert 'torch' not in sys.modules, 'the numpy backend imported torch'\n"
    )
    done = _run_python(code)
    assert done.returncode == 0, done.stderr


def test_torch_backend_without_torch_says_how_to_install(ckpt):
    """With torch not importable, asking for it is one clear InputError naming the install."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # makes `import torch` raise ImportError\n"
        "import npgemma\n"
        "try:\n"
        f"    npgemma.load({str(ckpt)!r}, backend='torch')\n"
        "except npgemma.InputError as e:\n"
        "    print(e)\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    done = _run_python(code)
    assert done.returncode == 0, done.stderr
    assert "pip install" in done.stdout and "torch" in done.stdout


def test_sampled_row_is_the_same_in_any_batch(pipe, image):
    """Each row draws from its own RNG stream: row 0 of a batch samples what it samples alone,
    and a row's tokens do not depend on the other rows of the batch."""
    gen = dict(max_new_tokens=8, do_sample=True, temperature=1.5, seed=11)
    alone = pipe.generate(image, PROMPT, **gen).token_ids
    flipped = np.ascontiguousarray(np.asarray(image)[::-1])
    batch = pipe.generate_batch([image, flipped], [PROMPT, "detect cat"], **gen)
    other = pipe.generate_batch([image, image], [PROMPT, "caption es"], **gen)
    assert batch[0].token_ids == alone == other[0].token_ids
    # A per-row seed list: row i draws exactly what it draws alone with seed=seeds[i].
    rows = pipe.generate_batch([flipped, image], ["detect cat", PROMPT], **(gen | {"seed": [3, 11]}))
    assert rows[0].token_ids == pipe.generate(flipped, "detect cat", **(gen | {"seed": 3})).token_ids
    seeded = pipe.generate(image, PROMPT, **(gen | {"seed": [11]}))
    assert rows[1].token_ids == seeded.token_ids
    # Different rows of one batch do not share a stream: the same input twice samples differently.
    twice = pipe.generate_batch([image, image], [PROMPT, PROMPT], **gen)
    assert twice[0].token_ids != twice[1].token_ids


@pytest.mark.parametrize("ours", [False, True], ids=["blas-threads", "our-threads"])
@pytest.mark.parametrize("rows", [1, 8, 40])
def test_batched_linear_reads_each_weight_once(rows, ours, monkeypatch):
    """A decode step of B rows reads each weight row once (one matrix product, or one pass over
    cache-sized slabs shared out over our threads), not once per batch row."""
    import contextlib
    import threading

    from npgemma import _kernels, layers

    lock = threading.Lock()  # the slabs are read by one thread per core

    class Counting(np.ndarray):
        read = 0  # weight rows handed to a matrix product

        @property
        def T(self):  # noqa: N802  (the one-product path: weight.T)
            with lock:
                Counting.read += self.shape[0]
            return np.asarray(self).T

        def __getitem__(self, item):  # the slab path: weight[i:i + n]
            out = np.asarray(self)[item]
            with lock:
                Counting.read += out.shape[0]
            return out

    rng = np.random.default_rng(0)
    w = rng.standard_normal((1100, 4)).astype(np.float32).view(Counting)
    x = rng.standard_normal((rows, 1, 4)).astype(np.float32)
    monkeypatch.setattr(_kernels, "SLAB_BYTES", 100 * 4 * 4)  # 11 slabs of 100 rows, several a thread
    with _kernels.on_our_threads() if ours else contextlib.nullcontext():
        y = layers.linear(x, w)
    assert Counting.read == 1100 and y.shape == (rows, 1, 1100)
    np.testing.assert_allclose(y[:, 0], x[:, 0] @ np.asarray(w).T, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_numpy_decode_steps_threads(ckpt, image, monkeypatch, dtype):
    """Prefill products are one BLAS call on BLAS's threads; the low-memory mode's decode steps
    (widening every weight) run inside `_kernels.on_our_threads()`, float32's do not."""
    import dataclasses

    from npgemma import _kernels
    from npgemma.generation.generate import GenerationConfig, generate_tokens
    from npgemma.generation.numpy_backend import NumpyBackend

    seen = []
    forward = NumpyBackend.forward

    def spy(self, params, cfg, input_ids, *args, **kwargs):
        seen.append((input_ids.shape[1], _kernels._depth))
        return forward(self, params, cfg, input_ids, *args, **kwargs)

    monkeypatch.setattr(NumpyBackend, "forward", spy)
    pipe = npgemma.load(ckpt, dtype=dtype)
    cfg = dataclasses.replace(pipe.cfg, eos_token_id=-1)  # never stops early
    batch = pipe.processor.batch([image], [PROMPT])
    tokens = list(generate_tokens(pipe.backend, pipe.params, cfg, batch.input_ids,
                                  batch.pixel_values, GenerationConfig(max_new_tokens=4)))
    assert len(tokens) == 4
    prefill, *steps = seen
    assert prefill[0] > 1 and prefill[1] == 0
    assert steps == [(1, int(dtype != "float32"))] * 3
    assert _kernels._depth == 0
