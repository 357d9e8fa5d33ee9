"""The low-memory mode (numpy backend, dtype="bfloat16") end to end: it keeps the weights in
bfloat16 and widens each matrix to float32 where it is used. bf16 -> float32 is exact, so on a
checkpoint stored in bfloat16 it must compute what the float32 mode computes, up to float32
round-off (the table's float32 "logits" row), with the weights really held in bfloat16."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import npgemma
from npgemma.checkpoint.weights import flatten
from npgemma.compare.tolerances import assert_close
from npgemma.synthetic.checkpoint import tiny_config, write_checkpoint
from npgemma.synthetic.random_model import example_image

PROMPT = "caption en"


@pytest.fixture(scope="module", params=["gemma", "gemma2"])
def pipes(request, tmp_path_factory):
    extra = dict(sliding_window=4) if request.param == "gemma2" else {}
    folder = write_checkpoint(tmp_path_factory.mktemp("lowmem") / request.param,
                              tiny_config(text=request.param, **extra), dtype="bfloat16", seed=4)
    return npgemma.load(folder), npgemma.load(folder, dtype="bfloat16")


def test_weights_are_held_in_bfloat16(pipes):
    full, low = pipes
    leaves_full, leaves_low = flatten(full.params), flatten(low.params)
    assert leaves_full.keys() == leaves_low.keys()
    assert {a.dtype for a in leaves_full.values()} == {np.dtype(np.float32)}
    big = [k for k, a in leaves_low.items() if a.ndim == 2]
    assert big and all(leaves_low[k].dtype == ml_dtypes.bfloat16 for k in big)
    for k in big:  # the same numbers: the float32 mode widened exactly what is on disk
        np.testing.assert_array_equal(leaves_low[k].astype(np.float32), leaves_full[k])
    nbytes = lambda leaves: sum(a.nbytes for a in leaves.values())  # noqa: E731
    assert nbytes(leaves_low) < 0.6 * nbytes(leaves_full)


def test_logits_and_tokens_equal_the_float32_mode(pipes):
    full, low = pipes
    image = example_image()
    assert_close(low.logits(image, PROMPT), full.logits(image, PROMPT), "logits", "float32",
                 what="low-memory vs float32 logits")
    for kw in (dict(max_new_tokens=8),
               dict(max_new_tokens=8, do_sample=True, temperature=0.8, top_k=40, top_p=0.9, seed=2)):
        assert low.generate(image, PROMPT, **kw) == full.generate(image, PROMPT, **kw)
