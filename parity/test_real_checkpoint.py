"""Opt-in: a real (or full-size) checkpoint, both backends vs transformers 5.24.0.

    NPGEMMA_REAL_CHECKPOINT=~/models/paligemma-3b-pt-224 python -m pytest -q -s parity/test_real_checkpoint.py

Optional: NPGEMMA_REAL_IMAGE (default: a synthetic picture), NPGEMMA_REAL_PROMPT ("caption en"),
NPGEMMA_REAL_NEW_TOKENS (8). The models are run one after another and freed in between, so a 3B
checkpoint needs ~13 GB of RAM (float32), not three times that. Skipped unless the variable is set.
"""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

from npgemma.compare.tolerances import assert_close

CKPT = os.environ.get("NPGEMMA_REAL_CHECKPOINT")
pytestmark = [pytest.mark.real, pytest.mark.oracle,
              pytest.mark.skipif(not CKPT, reason="set NPGEMMA_REAL_CHECKPOINT to a checkpoint folder")]
PROMPT = os.environ.get("NPGEMMA_REAL_PROMPT", "caption en")
NEW_TOKENS = int(os.environ.get("NPGEMMA_REAL_NEW_TOKENS", "8"))


def _image():
    from PIL import Image

    path = os.environ.get("NPGEMMA_REAL_IMAGE")
    if path:
        return Image.open(path)
    from npgemma.synthetic.random_model import example_image

    return Image.fromarray(example_image(300))


@pytest.fixture(scope="module")
def hf_reference():
    """HF's processor outputs, prefix logits and greedy tokens; the model is freed afterwards."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    processor = transformers.PaliGemmaProcessor.from_pretrained(CKPT)
    inputs = processor(images=_image(), text=PROMPT, return_tensors="pt")
    model = transformers.PaliGemmaForConditionalGeneration.from_pretrained(
        CKPT, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.inference_mode():
        logits = model(**inputs).logits[0].numpy()
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    tokens = out[0, inputs["input_ids"].shape[1]:].tolist()
    eos = model.config.text_config.eos_token_id
    tokens = tokens[:tokens.index(eos)] if eos in tokens else tokens
    ref = {"input_ids": inputs["input_ids"][0].numpy(), "pixel_values": inputs["pixel_values"][0].numpy(),
           "logits": logits, "tokens": tokens}
    del model, out
    gc.collect()
    return ref


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_backend_matches_transformers(hf_reference, backend):
    import npgemma

    pipe = npgemma.load(CKPT, backend=backend)
    image = _image()
    inputs = pipe.processor(image, PROMPT)
    np.testing.assert_array_equal(inputs.input_ids, hf_reference["input_ids"])
    np.testing.assert_allclose(inputs.pixel_values, hf_reference["pixel_values"], atol=1e-6, rtol=0)
    logits = pipe.logits(image, PROMPT, positions=slice(None))
    c = assert_close(logits, hf_reference["logits"], "logits", "float32", what=f"{backend} logits")
    print(f"\n{backend}: logits max abs diff vs HF {c.max_abs:.3g} (scale-relative {c.max_rel:.3g})")
    assert pipe.generate(image, PROMPT, max_new_tokens=NEW_TOKENS).token_ids == hf_reference["tokens"]
    del pipe
    gc.collect()
