"""Named activations, NumPy vs torch: the same hook names, shapes and numbers on both backends
(tiny random checkpoints, Gemma-1 GQA and Gemma-2 with a window shorter than the prompt).

The torch backend's fused attention kernel never forms the weights; under a capture that asks
for them it takes the spelled-out path. Each name is judged by the tolerance row of the stage
that produces it (`npgemma.compare.tolerances`), relative to the NumPy reference.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import npgemma  # noqa: E402
from npgemma.compare.tolerances import assert_close  # noqa: E402
from npgemma.inspection import trace as inspect  # noqa: E402
from npgemma.synthetic.checkpoint import tiny_config, write_checkpoint  # noqa: E402
from npgemma.synthetic.random_model import example_image  # noqa: E402

PROMPT = "caption en"


def component(name: str) -> str:
    """The tolerance row of the stage a hook's array comes out of."""
    if name.startswith("vision."):
        return "vision_layer" if name.endswith("resid_post") else "attention"
    if name.startswith("projector."):
        return "projector"
    if name.startswith("unembed."):
        return "logits"
    if name.endswith(("hook_q", "hook_k")):
        return "rope"
    return "attention" if ".attn." in name else "decoder_layer"


@pytest.fixture(scope="module", params=["gemma", "gemma2"])
def folder(request, tmp_path_factory):
    extra = dict(sliding_window=4) if request.param == "gemma2" else dict(num_key_value_heads=2)
    return write_checkpoint(tmp_path_factory.mktemp(request.param) / "ckpt",
                            tiny_config(text=request.param, **extra))


def test_every_hook_matches_numpy(folder, device):
    image = example_image()
    ref = inspect.trace(npgemma.load(folder), image, PROMPT, max_new_tokens=6)
    twin_pipe = npgemma.load(folder, backend="torch", device=str(device))
    twin = inspect.trace(twin_pipe, image, PROMPT, max_new_tokens=6)
    assert twin.token_ids == ref.token_ids and twin.text == ref.text
    assert twin.text == twin_pipe.generate(image, PROMPT, max_new_tokens=6).text
    assert twin.names == ref.names
    for name in ref.names:
        a, b = twin[name], ref[name]
        assert a.shape == b.shape, name
        done = ~np.isnan(b)  # scores a decode step never computed are NaN on both sides
        np.testing.assert_array_equal(np.isnan(a), ~done, err_msg=name)
        assert_close(a[done], b[done], component(name), what=name)
