"""npgemma's processor vs transformers 5.24's PaliGemmaProcessor on the tiny tokenizers.

HF is built from the folder the tests write (tokenizer files + a hub-style
`preprocessor_config.json`), with the PIL backend of SiglipImageProcessor pinned: the torchvision
backend, HF's default when torchvision is installed, resizes with another kernel.
"""

import json

import numpy as np
import pytest
from PIL import Image

transformers = pytest.importorskip("transformers")

from npgemma.generation.processing import Processor  # noqa: E402
from npgemma.synthetic.tokenizer import write_tokenizer  # noqa: E402

pytestmark = pytest.mark.oracle

S, N = 28, 4

PROMPTS = ["caption en", "detect cat ; dog", "<loc0001><loc1023> cat ; <seg005> dog",
           "answer en héllo 日本 🐱?", "", "<image>segment cats\n", "caption <image>en",
           "  two  spaces <bos> and <eos> "]


def _images():
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (21, 17, 3), dtype=np.uint8))
    rgba = rng.integers(0, 256, (19, 26, 4), dtype=np.uint8)
    rgba[:5, :, 3] = 0
    palette = noise.convert("P")
    palette.info["transparency"] = int(np.asarray(palette)[0, 0])
    return {
        "rgb_noise": noise,
        "rgba": Image.fromarray(rgba),
        "rgba_array": rgba,
        "rgb_array": np.asarray(noise),
        "gray_array_hw1": np.asarray(noise.convert("L"))[..., None],
        "L": noise.convert("L"),
        "LA": Image.fromarray(rgba).convert("LA"),
        "P": noise.convert("P"),
        "P_transparency": palette,
        "CMYK": noise.convert("CMYK"),
        "1": noise.convert("1"),
        "I;16": Image.fromarray(rng.integers(0, 700, (9, 11)).astype(np.uint16)),
        "wide": Image.fromarray(rng.integers(0, 256, (8, 97, 3), dtype=np.uint8)),
        "big": Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)),
        "1x1": Image.new("RGB", (1, 1), (200, 30, 90)),
    }


IMAGES = _images()


def _write_checkpoint(folder, full, **overrides):
    write_tokenizer(folder, full=full)
    cfg = {"image_processor_type": "SiglipImageProcessor", "image_seq_length": N,
           "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
           "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 3,
           "rescale_factor": 0.00392156862745098, "size": {"height": S, "width": S},
           "processor_class": "PaliGemmaProcessor", **overrides}
    (folder / "preprocessor_config.json").write_text(json.dumps(cfg))


def _hf_processor(folder):
    from transformers import AutoImageProcessor, AutoTokenizer, PaliGemmaProcessor
    image_processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    return PaliGemmaProcessor(image_processor=image_processor,
                              tokenizer=AutoTokenizer.from_pretrained(folder))


@pytest.fixture(scope="module", params=[False, True], ids=["tiny_vocab", "full_vocab"])
def pair(request, tmp_path_factory):
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # HF warns on every call without "<image>"
    folder = tmp_path_factory.mktemp("full" if request.param else "tiny")
    _write_checkpoint(folder, request.param)
    hf = _hf_processor(folder)
    yield hf, Processor.from_pretrained(folder, _cfg(hf.image_token_id))
    transformers.logging.set_verbosity(verbosity)


def _cfg(image_token_index):
    from npgemma.checkpoint.config_json import config_from_dict
    return config_from_dict({
        "model_type": "paligemma", "image_token_index": image_token_index, "projection_dim": 32,
        "vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                          "num_attention_heads": 2, "image_size": S, "patch_size": 14},
        "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16},
    })


def _hf(hf, image, prompt):
    return hf(images=image, text=prompt, return_tensors="np")


def test_tokenizer_loads_as_gemma(pair):
    hf, ours = pair
    assert type(hf.tokenizer).__name__ == "GemmaTokenizer"
    assert type(hf.image_processor).__name__ == "SiglipImageProcessorPil"
    assert hf.tokenizer.padding_side == "left"
    assert (hf.image_token_id, hf.tokenizer.bos_token_id) == (ours.image_token_id, ours.bos_token_id)
    assert len(hf.tokenizer) == ours.tokenizer.get_vocab_size()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_input_ids_and_decode(pair, prompt):
    hf, ours = pair
    expect = _hf(hf, IMAGES["rgb_noise"], prompt)
    got = ours(IMAGES["rgb_noise"], prompt)
    assert got.input_ids.tolist() == expect["input_ids"][0].tolist()
    assert got.token_type_ids.tolist() == expect["token_type_ids"][0].tolist()
    assert got.attention_mask.tolist() == expect["attention_mask"][0].tolist()
    for skip in (True, False):
        assert ours.decode(got.input_ids, skip) == hf.decode(got.input_ids, skip_special_tokens=skip)


def test_decode_arbitrary_ids(pair):
    hf, ours = pair
    rng = np.random.default_rng(1)
    vocab = len(hf.tokenizer)
    for _ in range(20):
        ids = rng.integers(0, vocab, 12).tolist() + rng.integers(vocab - 1153, vocab, 4).tolist()
        for skip in (True, False):
            assert ours.decode(ids, skip) == hf.decode(ids, skip_special_tokens=skip)


@pytest.mark.parametrize("name", list(IMAGES))
def test_pixel_values(pair, name):
    hf, ours = pair
    expect = _hf(hf, IMAGES[name], "caption en")["pixel_values"][0]
    got = ours.preprocess_image(IMAGES[name])
    assert got.shape == expect.shape == (3, S, S) and got.dtype == expect.dtype == np.float32
    np.testing.assert_allclose(got, expect, rtol=0, atol=1e-6)


def test_batch_padding(pair):
    hf, ours = pair
    images = [IMAGES["rgb_noise"], IMAGES["wide"], IMAGES["1x1"]]
    prompts = ["caption en", "detect cat ; dog <loc0001>", ""]
    expect = hf(images=images, text=prompts, padding="longest", return_tensors="np")
    got = ours.batch(images, prompts)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert getattr(got, key).tolist() == expect[key].tolist(), key
    np.testing.assert_allclose(got.pixel_values, expect["pixel_values"], rtol=0, atol=1e-6)


def test_hub_config_null_convert_rgb_agrees_on_rgb(tmp_path):
    # Hub preprocessor_config.json files written by transformers 4.x may say "do_convert_rgb": null;
    # HF 5.24 then skips the RGB conversion (non-RGB images fail inside HF), but RGB images are
    # processed identically: npgemma always converts, as HF does with the class default (true).
    _write_checkpoint(tmp_path, False, do_convert_rgb=None)
    hf = _hf_processor(tmp_path)
    ours = Processor.from_pretrained(tmp_path, _cfg(hf.image_token_id))
    for name in ("rgb_noise", "big", "1x1"):
        expect = _hf(hf, IMAGES[name], "caption en")["pixel_values"][0]
        np.testing.assert_allclose(ours.preprocess_image(IMAGES[name]), expect, rtol=0, atol=1e-6)


def test_reads_what_hf_save_pretrained_writes(pair, tmp_path):
    # transformers 5 saves the image settings inside processor_config.json (no preprocessor_config).
    hf, ours = pair
    hf.save_pretrained(tmp_path)
    assert not (tmp_path / "preprocessor_config.json").exists()
    reloaded = Processor.from_pretrained(tmp_path, _cfg(hf.image_token_id))
    image = IMAGES["rgba"]
    a, b = reloaded(image, "detect cat"), ours(image, "detect cat")
    assert np.array_equal(a.input_ids, b.input_ids)
    assert np.array_equal(a.pixel_values, b.pixel_values)
