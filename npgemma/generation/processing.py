"""Image -> pixel_values, prompt -> input_ids, token ids -> text.

Mirrors transformers 5.24's `PaliGemmaProcessor` with the PIL backend of `SiglipImageProcessor`
(`SiglipImageProcessorPil`, what HF picks when torchvision is absent; the torchvision backend
resizes with a different antialiasing kernel and is *not* reproduced here):

* image: to RGB as `transformers.image_transforms.convert_to_rgb` does, resize to exactly S×S
  with PIL on uint8, `float32(float64(x) * rescale_factor)`, then `(x - mean) / std` in float32,
  CHW.  The arithmetic order is HF's, so pixel values agree bit for bit.
* prompt: `"<image>" * num_image_tokens + "<bos>" + prompt + "\\n"`, tokenized without adding
  special tokens again; `<image>`/`<locNNNN>`/`<segNNN>` are added tokens, matched whole.
* batches: left padding with the pad id, `attention_mask` 0 on pads (GemmaTokenizer's
  `padding_side = "left"`), `token_type_ids` 0 everywhere (no suffix: the whole prompt is prefix).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import tokenizers
from PIL import Image, ImageOps, UnidentifiedImageError

from ..checkpoint.config_json import read_json_object
from ..errors import ConfigError, InputError
from . import utf8

IMAGE_TOKEN = "<image>"
# PaliGemmaProcessor adds these as ordinary (non-special) tokens: decoding keeps them.
EXTRA_TOKENS = [f"<loc{i:04d}>" for i in range(1024)] + [f"<seg{i:03d}>" for i in range(128)]


@dataclass(frozen=True)
class Inputs:
    """One example (from `Processor.__call__`) or a left-padded batch (from `Processor.batch`)."""

    input_ids: np.ndarray       # int64[L] or int64[B, L]
    pixel_values: np.ndarray    # float32[3, S, S] or float32[B, 3, S, S]
    token_type_ids: np.ndarray  # int64 like input_ids; 0 = prefix (bidirectional), as HF returns
    attention_mask: np.ndarray | None = None  # int64 like input_ids; 0 on padding; ones if absent

    def __post_init__(self):
        if self.attention_mask is None:
            object.__setattr__(self, "attention_mask", np.ones_like(self.input_ids))


# ---- images ----------------------------------------------------------------------------------

def open_image(path: str | os.PathLike) -> Image.Image:
    """A file as HF's `load_image` opens it: Pillow, then EXIF orientation applied."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise InputError(f"{name}: no such image file")
    try:
        with Image.open(name) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image file Pillow can read") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"{name}: cannot read image ({e})") from None


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    """`convert_to_rgb` for PIL images: any alpha band or palette transparency is composited
    onto white with `Image.alpha_composite`; other modes go through `.convert("RGB")`.

    Pillow semantics come along unchanged: 16-bit and 32-bit modes ("I;16", "I", "F") are
    *clipped* to 0..255 by `.convert("RGB")`, exactly as HF does.  "La" (premultiplied), which
    HF cannot convert, is first un-premultiplied to "LA".
    """
    if image.mode == "La":
        image = image.convert("LA")
    try:
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba)
        return np.array(image.convert("RGB"))
    except (ValueError, OSError) as e:
        raise InputError(f"image: cannot convert PIL mode {image.mode!r} to RGB ({e})") from None


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    """`convert_to_rgb` for uint8 arrays, channels last: gray is repeated, RGBA is blended onto
    white in float64 and rounded (`round(a/255 * rgb + (1 - a/255) * 255)`), as HF does."""
    if array.dtype != np.uint8:
        raise InputError(f"image array: expected dtype uint8 (0..255), got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise InputError(f"image array: expected shape [H, W], [H, W, 1], [H, W, 3] or "
                         f"[H, W, 4] (channels last), got {list(array.shape)}")
    if array.shape[-1] == 1:
        return np.repeat(array, 3, axis=-1)
    if array.shape[-1] == 4:
        alpha = array[..., 3:4] / 255
        blended = alpha * array[..., :3] + (1 - alpha) * 255  # float64
        return np.round(blended).astype(np.uint8)
    return np.ascontiguousarray(array)


def load_image(image) -> np.ndarray:
    """A path, a PIL image or a uint8 [H, W(, C)] array -> uint8[H, W, 3] RGB."""
    if isinstance(image, (str, os.PathLike)):
        image = open_image(image)
    if isinstance(image, Image.Image):
        rgb = _pil_to_rgb(image)
    elif isinstance(image, np.ndarray):
        rgb = _array_to_rgb(image)
    else:
        raise InputError(f"image: expected a file path, a PIL image or a uint8 [H, W, 3] array, "
                         f"got {type(image).__name__}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise InputError(f"image: empty image of size {rgb.shape[1]}x{rgb.shape[0]}")
    return rgb


# ---- the processor ---------------------------------------------------------------------------

class Processor:
    """PaliGemma's processor over a `tokenizers.Tokenizer`.

    The tokenizer is used in place: `<image>`, `<locNNNN>` and `<segNNN>` are added to it when
    missing (as `PaliGemmaProcessor.__init__` does), and its padding/truncation are switched off.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, *, image_size: int, num_image_tokens: int,
                 image_token: str = IMAGE_TOKEN, resample=Image.Resampling.BICUBIC,
                 image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
                 rescale_factor: float = 1 / 255, do_rescale: bool = True,
                 do_normalize: bool = True, bos_token: str = "<bos>", eos_token_id: int = 1,
                 pad_token_id: int = 0):
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.num_image_tokens = int(num_image_tokens)
        self.image_token = image_token
        self.resample = _resampling(resample)
        self.image_mean = np.array(_per_channel(image_mean, "image_mean"), dtype=np.float32)
        self.image_std = np.array(_per_channel(image_std, "image_std", positive=True),
                                  dtype=np.float32)
        self.rescale_factor = _finite(rescale_factor, "rescale_factor", positive=True)
        self.do_rescale, self.do_normalize = bool(do_rescale), bool(do_normalize)
        self.bos_token = bos_token
        self.eos_token_id, self.pad_token_id = int(eos_token_id), int(pad_token_id)
        _add_paligemma_tokens(tokenizer, image_token)
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.image_token_id = tokenizer.token_to_id(image_token)
        self.bos_token_id = tokenizer.token_to_id(bos_token)
        if self.bos_token_id is None:
            raise InputError(f"tokenizer: has no {bos_token!r} token")

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, cfg) -> "Processor":
        """`tokenizer.json` plus the image settings of `preprocessor_config.json` (hub files), of
        `processor_config.json`'s `image_processor` (what transformers 5 writes), or of `cfg`."""
        tokenizer = _load_tokenizer(os.path.join(os.fspath(model_dir), "tokenizer.json"))
        image_cfg, where = _image_processor_config(os.fspath(model_dir))
        size = _square_size(image_cfg.get("size"), where, cfg.vision_config.image_size)
        if size != cfg.vision_config.image_size:
            raise ConfigError(f"{where}: size {size} differs from config.json's vision_config."
                              f"image_size {cfg.vision_config.image_size}")
        seq = image_cfg.get("image_seq_length", cfg.num_image_tokens)
        if seq != cfg.num_image_tokens:
            raise ConfigError(f"{where}: image_seq_length {seq} differs from the "
                              f"{cfg.num_image_tokens} patches of config.json's vision tower")
        if image_cfg.get("do_resize") is False:
            raise ConfigError(f"{where}: do_resize=false is not supported (the vision tower "
                              f"needs exactly {size}x{size} pixels)")
        proc = cls(tokenizer, image_size=size, num_image_tokens=cfg.num_image_tokens,
                   **_pick_image_options(image_cfg, where),
                   eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
        if proc.image_token_id != cfg.image_token_index:
            raise ConfigError(f"{model_dir}: tokenizer.json gives {IMAGE_TOKEN} id "
                              f"{proc.image_token_id}, config.json says image_token_index "
                              f"{cfg.image_token_index}")
        return proc

    def __call__(self, image, prompt: str) -> Inputs:
        """One image and its prompt -> `Inputs` with int64[L] ids, float32[3, S, S] pixels."""
        input_ids = self.encode_prompt(prompt)
        return Inputs(input_ids=input_ids, pixel_values=self.preprocess_image(image),
                      token_type_ids=np.zeros_like(input_ids))

    def preprocess_image(self, image) -> np.ndarray:
        """`SiglipImageProcessorPil`: RGB -> PIL resize on uint8 -> rescale -> normalize; float32[3, S, S]."""
        rgb = load_image(image)
        size = (self.image_size, self.image_size)
        resized = np.asarray(Image.fromarray(rgb).resize(size, resample=self.resample))
        x = resized.astype(np.float32)
        if self.do_rescale:
            # HF upcasts to float64 for the product, then rounds to float32 once.
            x = (resized.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            x = (x - self.image_mean) / self.image_std  # float32 throughout
        return np.ascontiguousarray(x.transpose(2, 0, 1))  # [S, S, 3] -> [3, S, S]

    def encode_prompt(self, prompt: str) -> np.ndarray:
        """The prefix text PaliGemmaProcessor builds, tokenized -> int64[L].

        Without `<image>`: `<image>`*N + `<bos>` + prompt + "\\n".  With one `<image>` (HF's other
        branch) `<bos>` goes right after it, and that `<image>` expands to N copies in place.
        """
        if not isinstance(prompt, str):
            raise InputError(f"prompt: expected a string, got {type(prompt).__name__}")
        utf8.checked(prompt, "prompt")  # the tokenizer would fail on a lone surrogate
        count = prompt.count(self.image_token)
        if count == 0:
            text = self.image_token + self.bos_token + prompt + "\n"
        elif count == 1:
            end = prompt.index(self.image_token) + len(self.image_token)
            text = prompt[:end] + self.bos_token + prompt[end:] + "\n"
        else:
            raise InputError(f"prompt: contains {count} {self.image_token} tokens; PaliGemma "
                             f"takes one image per prompt (leave {self.image_token} out)")
        text = text.replace(self.image_token, self.image_token * self.num_image_tokens)
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return np.asarray(ids, dtype=np.int64)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Token ids -> text. `<locNNNN>`/`<segNNN>` are not special: they are kept."""
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch(self, images, prompts) -> Inputs:
        """B images and B prompts -> `Inputs` [B, L], left-padded with the pad id, as HF pads."""
        images, prompts = list(images), list(prompts)
        if not prompts or len(images) != len(prompts):
            raise InputError(f"batch: expected as many images as prompts (at least one), got "
                             f"{len(images)} images and {len(prompts)} prompts")
        rows = [self(image, prompt) for image, prompt in zip(images, prompts)]
        length = max(len(r.input_ids) for r in rows)
        ids = np.full((len(rows), length), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), length), dtype=np.int64)
        for b, r in enumerate(rows):
            ids[b, length - len(r.input_ids):] = r.input_ids
            mask[b, length - len(r.input_ids):] = 1
        return Inputs(input_ids=ids, pixel_values=np.stack([r.pixel_values for r in rows]),
                      token_type_ids=np.zeros_like(ids), attention_mask=mask)


# ---- loading helpers -------------------------------------------------------------------------

def _add_paligemma_tokens(tokenizer: tokenizers.Tokenizer, image_token: str) -> None:
    """What `PaliGemmaProcessor.__init__` adds: `<image>` (special), then loc/seg (not special)."""
    added = {t.content: t for t in tokenizer.get_added_tokens_decoder().values()}
    if image_token not in added or not added[image_token].special:
        tokenizer.add_special_tokens(
            [tokenizers.AddedToken(image_token, normalized=False, special=True)])
    missing = [t for t in EXTRA_TOKENS if t not in added]
    if missing:
        tokenizer.add_tokens(missing)


def _load_tokenizer(path: str) -> tokenizers.Tokenizer:
    if not os.path.isfile(path):
        raise InputError(f"{path}: missing (npgemma reads the checkpoint's tokenizer.json)")
    try:
        return tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise InputError(f"{path}: not a valid tokenizers JSON file ({e})") from None


def _image_processor_config(model_dir: str) -> tuple[dict, str]:
    """The image-processor settings and the file they came from ({} when there is none)."""
    pre = os.path.join(model_dir, "preprocessor_config.json")
    if os.path.isfile(pre):
        return read_json_object(pre), pre
    proc = os.path.join(model_dir, "processor_config.json")
    if os.path.isfile(proc):
        section = read_json_object(proc).get("image_processor")
        if isinstance(section, dict):
            return section, proc
    return {}, os.path.join(model_dir, "config.json")


def _square_size(size, where: str, default: int) -> int:
    if size is None:
        return default
    if isinstance(size, int):
        return size
    if isinstance(size, dict) and "height" in size and "width" in size:
        if size["height"] != size["width"]:
            raise ConfigError(f"{where}: size {size} is not square")
        return int(size["height"])
    raise ConfigError(f"{where}: size {size!r} is not supported (expected "
                      '{"height": S, "width": S})')


def _pick_image_options(image_cfg: dict, where: str) -> dict:
    """The `Processor` keyword arguments present (and not null) in an image-processor config,
    the numeric ones checked here so that a bad value names the file (`where`): a zero std or a
    NaN anywhere would make every pixel NaN and the answer meaningless, without an error."""
    names = ("resample", "image_mean", "image_std", "rescale_factor", "do_rescale",
             "do_normalize")
    out = {k: image_cfg[k] for k in names if image_cfg.get(k) is not None}
    for name in ("image_mean", "image_std"):
        if name in out:
            out[name] = _per_channel(out[name], f"{where}: {name}", positive=name == "image_std")
    if "rescale_factor" in out:
        out["rescale_factor"] = _finite(out["rescale_factor"], f"{where}: rescale_factor", True)
    return out


def _resampling(value) -> Image.Resampling:
    try:
        return Image.Resampling(int(value))
    except (TypeError, ValueError):
        raise ConfigError(f"resample: {value!r} is not a PIL resampling filter (3 = BICUBIC)") from None


def _finite(value, name: str, positive: bool = False) -> float:
    """`value` as a float that is finite (and > 0 when `positive`), else a ConfigError."""
    kind = "a positive finite number" if positive else "a finite number"
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {kind}, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(x) or (positive and x <= 0):
        raise ConfigError(f"{name}: expected {kind}, got {value!r}")
    return x


def _per_channel(value, name: str, positive: bool = False) -> tuple[float, float, float]:
    """Three per-channel numbers (a scalar stands for all three), each finite (and > 0 when
    `positive`: a std divides)."""
    try:
        values = [value] * 3 if np.isscalar(value) else list(value)
    except TypeError:
        values = None
    if values is None or len(values) != 3:
        raise ConfigError(f"{name}: expected 3 values (one per RGB channel), got {value!r}")
    return tuple(_finite(v, f"{name}[{i}]", positive) for i, v in enumerate(values))
