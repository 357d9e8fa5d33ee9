"""Processor: golden pixel values, prompt layout, decoding, loading and error messages."""

import json

import numpy as np
import pytest
from PIL import Image

from npgemma.checkpoint.config_json import config_from_dict
from npgemma.errors import ConfigError, InputError
from npgemma.generation.processing import Inputs, Processor, load_image
from npgemma.synthetic.tokenizer import (FULL_IMAGE_TOKEN_ID, FULL_VOCAB_SIZE, TINY_IMAGE_TOKEN_ID,
                                       TINY_NEWLINE_ID, TINY_VOCAB_SIZE, build_tokenizer,
                                       write_tokenizer)

S, N = 28, 4  # image size, image tokens (patch 14)


@pytest.fixture(scope="module")
def proc():
    return Processor(build_tokenizer(), image_size=S, num_image_tokens=N)


@pytest.fixture(scope="module")
def full_proc():
    return Processor(build_tokenizer(full=True), image_size=S, num_image_tokens=N)


def tiny_cfg(image_token_index=TINY_IMAGE_TOKEN_ID, image_size=S):
    return config_from_dict({
        "model_type": "paligemma", "image_token_index": image_token_index, "projection_dim": 32,
        "vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                          "num_attention_heads": 2, "image_size": image_size, "patch_size": 14},
        "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
                        "vocab_size": TINY_VOCAB_SIZE},
    })


def solid(color, size=(13, 7), mode="RGB"):
    return Image.new(mode, size, color)


# ---- pixel values ----------------------------------------------------------------------------

def test_solid_colors_map_to_known_values(proc):
    x = proc.preprocess_image(solid((255, 0, 128)))
    assert x.shape == (3, S, S) and x.dtype == np.float32 and x.flags.c_contiguous
    assert np.all(x[0] == 1.0) and np.all(x[1] == -1.0)
    np.testing.assert_allclose(x[2], 2 * 128 / 255 - 1, atol=1e-6)


def test_pixel_arithmetic_is_hf_order():
    # float32(float64(v) * (1/255)), then (x - 0.5) / 0.5 in float32: every uint8 level exactly
    # (a 16x16 image at image_size 16 is not resampled).
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    p = Processor(build_tokenizer(), image_size=16, num_image_tokens=N)
    x = p.preprocess_image(np.stack([levels] * 3, axis=-1))
    expect = (np.float32(levels.astype(np.float64) * (1 / 255)) - np.float32(0.5)) / np.float32(0.5)
    assert x.dtype == np.float32 and np.array_equal(x[1], expect)
    assert np.abs(x[1] - (levels / 127.5 - 1)).max() < 1e-6


def test_per_channel_mean_and_std():
    p = Processor(build_tokenizer(), image_size=S, num_image_tokens=N,
                  image_mean=(0.25, 0.5, 0.75), image_std=(0.5, 0.25, 0.125))
    x = p.preprocess_image(solid((255, 0, 102)))
    expect = (np.array([255, 0, 102]) / 255 - np.array([0.25, 0.5, 0.75])) / np.array([0.5, 0.25, 0.125])
    np.testing.assert_allclose(x[:, 0, 0], expect, rtol=1e-6)  # [1.5, -2.0, -2.8]
    assert np.all(x == x[:, :1, :1])


def test_transparent_pixels_become_white(proc):
    clear = proc.preprocess_image(solid((0, 0, 0, 0), mode="RGBA"))
    assert np.all(clear == 1.0)
    half = np.zeros((6, 9, 4), np.uint8)
    half[..., 3] = 128  # black at alpha 128/255 over white -> round(255 * 127/255) = 127
    np.testing.assert_allclose(proc.preprocess_image(half), 2 * 127 / 255 - 1, atol=1e-6)
    pil_half = proc.preprocess_image(Image.fromarray(half))
    assert np.abs(pil_half - (2 * 127 / 255 - 1)).max() <= 2 / 255  # PIL's integer blend


def test_palette_transparency_and_premultiplied_la(proc):
    p = Image.new("P", (5, 5), 3)
    p.putpalette([0, 0, 0] * 256)
    p.info["transparency"] = 3
    assert np.all(proc.preprocess_image(p) == 1.0)
    la = Image.new("La", (4, 4))  # transformers cannot convert "La"; npgemma un-premultiplies
    assert np.all(proc.preprocess_image(la) == 1.0)


def test_gray_modes_and_16_bit_clipping(proc):
    for image in (solid(64, mode="L"), np.full((5, 6), 64, np.uint8),
                  np.full((5, 6, 1), 64, np.uint8)):
        x = proc.preprocess_image(image)
        np.testing.assert_allclose(x, 2 * 64 / 255 - 1, atol=1e-6)
    i16 = Image.fromarray(np.full((4, 4), 300, np.uint16))  # Pillow clips to 255, as HF does
    assert np.all(proc.preprocess_image(i16) == 1.0)
    assert load_image(solid((0, 0, 0, 0), mode="CMYK")).tolist()[0][0] == [255, 255, 255]


def test_no_aspect_preservation(proc):
    a = np.zeros((10, 40, 3), np.uint8)
    a[:, 20:] = 255
    x = proc.preprocess_image(a)
    assert np.all(x[:, :, :10] == -1.0) and np.all(x[:, :, -10:] == 1.0)
    assert proc.preprocess_image(solid((9, 9, 9), size=(1, 1))).shape == (3, S, S)


def test_path_matches_pil_and_applies_exif_orientation(proc, tmp_path):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (12, 20, 4), dtype=np.uint8))
    image.save(tmp_path / "x.png")
    assert np.array_equal(proc.preprocess_image(tmp_path / "x.png"), proc.preprocess_image(image))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.new("RGB", (20, 12)).save(tmp_path / "r.png", exif=exif)
    assert load_image(str(tmp_path / "r.png")).shape == (20, 12, 3)


def test_image_errors_name_the_culprit(proc, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    cases = [
        (tmp_path / "missing.png", "missing.png: no such image file"),
        (tmp_path / "notes.txt", "notes.txt: not an image file"),
        (str(tmp_path), "no such image file"),
        (np.zeros((4, 4, 3), np.float32), "dtype uint8"),
        (np.zeros((4, 4, 2), np.uint8), r"\[4, 4, 2\]"),
        (np.zeros((2, 4, 4, 3), np.uint8), r"\[2, 4, 4, 3\]"),
        (np.zeros((0, 4, 3), np.uint8), "empty image"),
        ([[0, 0], [0, 0]], "got list"),
    ]
    for image, message in cases:
        with pytest.raises(InputError, match=message):
            proc.preprocess_image(image)


# ---- prompts and decoding --------------------------------------------------------------------

def test_input_ids_layout(proc):
    out = proc(solid((1, 2, 3)), "caption en")
    assert isinstance(out, Inputs)
    prompt_ids = proc.tokenizer.encode("caption en", add_special_tokens=False).ids
    expect = [TINY_IMAGE_TOKEN_ID] * N + [2] + prompt_ids + [TINY_NEWLINE_ID]
    assert out.input_ids.tolist() == expect and out.input_ids.dtype == np.int64
    assert out.token_type_ids.dtype == np.int64 and not out.token_type_ids.any()
    assert out.attention_mask.tolist() == [1] * len(expect)
    assert proc.image_token_id == TINY_IMAGE_TOKEN_ID and proc.bos_token_id == 2
    with pytest.raises(AttributeError):
        out.input_ids = None


def test_full_vocabulary_ids(full_proc):
    # The published ids of google/paligemma-3b-pt-224's tokenizer.json: <image> 257152,
    # <loc0000> 256000, <seg127> 257151, "\n" 108, <bos> 2; 257153 tokens in all.
    ids = full_proc.encode_prompt("detect <loc0000><seg127>")
    assert ids[:N].tolist() == [257152] * N and ids[N] == 2
    assert ids[-3:].tolist() == [256000, 257151, 108]
    assert full_proc.tokenizer.get_vocab_size(with_added_tokens=True) == 257153
    # the embedding rows (config.json vocab_size) cover every id, in both layouts
    assert FULL_VOCAB_SIZE >= 257153 and FULL_IMAGE_TOKEN_ID == 257152
    assert TINY_VOCAB_SIZE > build_tokenizer().get_vocab_size(with_added_tokens=True) - 1


def test_image_token_in_prompt_follows_hf(proc):
    plain = proc.encode_prompt("caption en")
    assert np.array_equal(proc.encode_prompt("<image>caption en"), plain)
    # <bos> goes right after the one <image>, wherever it is
    mid = proc.encode_prompt("caption <image>en").tolist()
    assert mid[-N - 3:-2] == [TINY_IMAGE_TOKEN_ID] * N + [2]
    with pytest.raises(InputError, match="2 <image> tokens"):
        proc.encode_prompt("<image><image>caption en")
    with pytest.raises(InputError, match="expected a string"):
        proc.encode_prompt(None)


def test_empty_and_unicode_prompts_round_trip(proc):
    assert proc.encode_prompt("").tolist() == [TINY_IMAGE_TOKEN_ID] * N + [2, TINY_NEWLINE_ID]
    for text in ("héllo 日本 🐱", "answer en what is the question?", "a  b\n"):
        ids = proc.encode_prompt(text)
        assert proc.decode(ids) == text + "\n"


def test_decode_keeps_loc_and_seg(proc):
    text = "<loc0010><loc0020><loc0900><loc1023> cat ; <seg000><seg127>"
    ids = proc.tokenizer.encode(text, add_special_tokens=False).ids
    assert len(ids) < len(text) // 4  # matched whole, not spelled out
    assert proc.decode(np.array(ids + [1])) == text
    assert proc.decode([TINY_IMAGE_TOKEN_ID, 2] + ids + [1, 0], skip_special_tokens=False) == \
        "<image><bos>" + text + "<eos><pad>"
    assert proc.decode([TINY_VOCAB_SIZE - 1, 10**6]) == ""  # padded rows decode to nothing


def test_batch_pads_left(proc):
    images = [solid((0, 0, 0)), np.full((3, 5, 3), 255, np.uint8)]
    out = proc.batch(images, ["caption en", "detect cat ; dog"])
    a, b = proc(images[0], "caption en"), proc(images[1], "detect cat ; dog")
    pad = len(b.input_ids) - len(a.input_ids)
    assert pad > 0 and out.input_ids.shape == (2, len(b.input_ids))
    assert out.input_ids[0].tolist() == [0] * pad + a.input_ids.tolist()
    assert out.attention_mask[0].tolist() == [0] * pad + [1] * len(a.input_ids)
    assert out.attention_mask[1].all() and not out.token_type_ids.any()
    assert out.pixel_values.shape == (2, 3, S, S)
    assert np.array_equal(out.pixel_values[1], b.pixel_values)
    with pytest.raises(InputError, match="1 images and 2 prompts"):
        proc.batch(images[:1], ["a", "b"])


# ---- loading ---------------------------------------------------------------------------------

def write_image_config(folder, name="preprocessor_config.json", size=S, **extra):
    cfg = {"image_processor_type": "SiglipImageProcessor", "image_seq_length": (size // 14) ** 2,
           "do_normalize": True, "do_rescale": True, "do_resize": True, "do_convert_rgb": None,
           "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": 3,
           "rescale_factor": 0.00392156862745098, "size": {"height": size, "width": size},
           "processor_class": "PaliGemmaProcessor", **extra}
    if name == "processor_config.json":
        cfg = {"image_processor": cfg, "processor_class": "PaliGemmaProcessor"}
    (folder / name).write_text(json.dumps(cfg))


@pytest.mark.parametrize("source", ["preprocessor_config.json", "processor_config.json", None])
def test_from_pretrained(tmp_path, proc, source):
    write_tokenizer(tmp_path)
    if source:
        write_image_config(tmp_path, source, image_mean=[0.25, 0.5, 0.75])
    loaded = Processor.from_pretrained(tmp_path, tiny_cfg())
    assert loaded.image_size == S and loaded.num_image_tokens == N
    image = solid((10, 200, 30))
    assert np.array_equal(loaded(image, "caption en").input_ids, proc(image, "caption en").input_ids)
    mean = [0.25, 0.5, 0.75] if source else [0.5] * 3
    assert loaded.image_mean.tolist() == mean


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(InputError, match="tokenizer.json: missing"):
        Processor.from_pretrained(tmp_path, tiny_cfg())
    (tmp_path / "tokenizer.json").write_text("")
    with pytest.raises(InputError, match="tokenizer.json: not a valid tokenizers JSON"):
        Processor.from_pretrained(tmp_path, tiny_cfg())
    write_tokenizer(tmp_path)
    with pytest.raises(ConfigError, match="image_token_index 7"):
        Processor.from_pretrained(tmp_path, tiny_cfg(image_token_index=7))
    write_image_config(tmp_path, resample=42)
    with pytest.raises(ConfigError, match="resample: 42"):
        Processor.from_pretrained(tmp_path, tiny_cfg())
    write_image_config(tmp_path, size=56)
    with pytest.raises(ConfigError, match="size 56 differs"):
        Processor.from_pretrained(tmp_path, tiny_cfg())
    (tmp_path / "preprocessor_config.json").write_text("{")
    with pytest.raises(ConfigError, match="preprocessor_config.json: not valid JSON"):
        Processor.from_pretrained(tmp_path, tiny_cfg())


@pytest.mark.parametrize("field,value,shown", [
    ("image_std", [0, 0, 0], r"image_std\[0\]: expected a positive finite number, got 0"),
    ("image_std", [0.5, 0.0, 0.5], r"image_std\[1\]: expected a positive finite number, got 0.0"),
    ("image_std", [0.5, 0.5, float("nan")], r"image_std\[2\]: expected a positive finite number, got nan"),
    ("image_std", float("inf"), r"image_std\[0\]: expected a positive finite number, got inf"),
    ("image_mean", [float("nan"), 0.5, 0.5], r"image_mean\[0\]: expected a finite number, got nan"),
    ("image_mean", [0.5, float("-inf"), 0.5], r"image_mean\[1\]: expected a finite number, got -inf"),
    ("image_mean", ["half", 0.5, 0.5], r"image_mean\[0\]: expected a finite number, got 'half'"),
    ("rescale_factor", float("nan"), r"rescale_factor: expected a positive finite number, got nan"),
    ("rescale_factor", float("inf"), r"rescale_factor: expected a positive finite number, got inf"),
    ("rescale_factor", 0, r"rescale_factor: expected a positive finite number, got 0"),
])
@pytest.mark.parametrize("source", ["preprocessor_config.json", "processor_config.json"])
def test_non_finite_or_zero_image_settings_are_refused_naming_file_and_field(
        tmp_path, source, field, value, shown):
    """A zero std divides every pixel by zero, a NaN makes every pixel NaN: the answer would be
    meaningless with exit 0. json.dumps writes NaN/Infinity, as a careless file would hold."""
    write_tokenizer(tmp_path)
    write_image_config(tmp_path, source, **{field: value})
    with pytest.raises(ConfigError, match=rf"{source}: {shown}$"):
        Processor.from_pretrained(tmp_path, tiny_cfg())


def test_processor_arguments_are_checked_too(proc):
    with pytest.raises(ConfigError, match=r"^image_std\[0\]: expected a positive finite number"):
        Processor(proc.tokenizer, image_size=S, num_image_tokens=N, image_std=(0, 1, 1))
    with pytest.raises(ConfigError, match=r"^image_mean: expected 3 values"):
        Processor(proc.tokenizer, image_size=S, num_image_tokens=N, image_mean=(0.5, 0.5))
