"""Tiny random PaliGemma checkpoints in the exact Hugging Face file layout (no transformers).

`tiny_config` writes a config.json dict shaped like the Hub's (model_type paligemma, explicit
sub-configs); `write_checkpoint` writes that config, the safetensors (single file or HF-named
shards with `model.safetensors.index.json`) under any of the key layouts `npgemma.checkpoint.layout`
reads, and a tiny tokenizer. File names, the `{"format": "pt"}` header metadata and the index
format (`metadata.total_size`, `metadata.total_parameters`, `weight_map`) follow what
transformers 5.24.0's `save_pretrained` writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from ..checkpoint.checks import DTYPES
from ..checkpoint.config_json import config_from_dict
from ..checkpoint.layout import LAYOUTS, disk_name, expected_shapes, vision_head_shapes
from ..config import PaliGemmaConfig

# transformers 5.24.0's defaults, written out when minimal=False (as its save_pretrained does).
_FULL_GEMMA = dict(attention_bias=False, attention_dropout=0.0, hidden_act="gelu_pytorch_tanh",
                   max_position_embeddings=8192, rms_norm_eps=1e-6, tie_word_embeddings=True,
                   rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
                   bos_token_id=2, eos_token_id=1, pad_token_id=0)
_FULL_GEMMA2 = {k: v for k, v in _FULL_GEMMA.items() if k != "hidden_act"} | dict(
    hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=256, sliding_window=4096,
    attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
_FULL_SIGLIP = dict(hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, num_channels=3,
                    attention_dropout=0.0)


def _tokenizer_ids() -> tuple[int, int]:
    """(vocab size, <image> id) of the tiny tokenizer in npgemma.synthetic.tokenizer."""
    from .tokenizer import TINY_IMAGE_TOKEN_ID, TINY_VOCAB_SIZE
    return TINY_VOCAB_SIZE, TINY_IMAGE_TOKEN_ID


def tiny_config(*, text: str = "gemma", num_key_value_heads: int = 1,
                num_attention_heads: int = 4, head_dim: int = 16, hidden_size: int = 32,
                intermediate_size: int = 64, num_hidden_layers: int = 2,
                vision_hidden_size: int = 32, vision_layers: int = 2, vision_heads: int = 4,
                vision_intermediate: int = 64, image_size: int = 28, patch_size: int = 14,
                vocab_size: int | None = None, image_token_index: int | None = None,
                minimal: bool = True, **text_overrides) -> dict:
    """A config.json dict for a tiny PaliGemma (text="gemma") or PaliGemma-2 (text="gemma2").

    minimal=True writes only what the Hub's configs write (sizes, model types), so the rest
    comes from transformers' defaults; minimal=False spells every default out as
    transformers 5.24 does. `text_overrides` go into text_config (e.g. sliding_window=4,
    attn_logit_softcapping=None, query_pre_attn_scalar=16, tie_word_embeddings=False).
    vocab_size / image_token_index default to the tiny tokenizer's.
    """
    if text not in ("gemma", "gemma2"):
        raise ValueError(f"text must be 'gemma' or 'gemma2', not {text!r}")
    tiny_vocab, tiny_image = _tokenizer_ids()
    vocab_size = tiny_vocab if vocab_size is None else vocab_size
    image_token_index = tiny_image if image_token_index is None else image_token_index
    num_image_tokens = (image_size // patch_size) ** 2
    text_config = dict(model_type=text, hidden_size=hidden_size, head_dim=head_dim,
                       intermediate_size=intermediate_size, num_hidden_layers=num_hidden_layers,
                       num_attention_heads=num_attention_heads, vocab_size=vocab_size,
                       num_key_value_heads=num_key_value_heads, num_image_tokens=num_image_tokens)
    vision_config = dict(model_type="siglip_vision_model", hidden_size=vision_hidden_size,
                         intermediate_size=vision_intermediate, num_hidden_layers=vision_layers,
                         num_attention_heads=vision_heads, image_size=image_size,
                         patch_size=patch_size, num_image_tokens=num_image_tokens,
                         projection_dim=hidden_size, projector_hidden_act="gelu_fast",
                         vision_use_head=False)
    if not minimal:
        text_config |= _FULL_GEMMA2 if text == "gemma2" else _FULL_GEMMA
        vision_config |= _FULL_SIGLIP
        if text == "gemma2":  # Gemma2Config: even layers slide, odd layers attend globally
            text_config["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention"
                                          for i in range(num_hidden_layers)]
    text_config |= text_overrides
    top = dict(architectures=["PaliGemmaForConditionalGeneration"], model_type="paligemma",
               bos_token_id=2, eos_token_id=1, pad_token_id=0, ignore_index=-100,
               hidden_size=hidden_size, projection_dim=hidden_size,
               image_token_index=image_token_index, text_config=text_config,
               vision_config=vision_config)
    if "tie_word_embeddings" in text_overrides or not minimal:
        # transformers 5.24 ties (or not) by the top-level flag; keep both in agreement.
        top["tie_word_embeddings"] = text_config["tie_word_embeddings"]
    return top


def _init(key: str, shape: tuple[int, ...], rng: np.random.Generator,
          decisive: bool = False) -> np.ndarray:
    """One tensor of a small but non-trivial network (activations stay O(1)). `decisive`: the
    linears drawn N(0, 1.25² / fan_in), as the oracle tier draws them, so that the layers (not
    the last embedding) decide the next token and every trap moves the logits visibly."""
    n = rng.standard_normal(shape, dtype=np.float32)
    if decisive and not key.endswith("bias") and "norm" not in key and len(shape) > 1 \
            and not key.endswith(("embed_tokens.weight", "position_embedding.weight")):
        return np.float32(1.25 * int(np.prod(shape[1:])) ** -0.5) * n
    if key.startswith("vision_tower.") and "norm" in key:  # LayerNorm: gamma near 1
        return 1 + np.float32(0.1) * n if key.endswith("weight") else np.float32(0.05) * n
    if "norm" in key:  # Gemma RMSNorm scales by (1 + w): small w so the 1 + matters
        return np.float32(0.1) * n
    if key.endswith(("embed_tokens.weight", "position_embedding.weight")):
        return np.float32(0.1) * n
    if key.endswith("bias"):
        return np.float32(0.05) * n
    fan_in = int(np.prod(shape[1:]))  # [out, in] linears and the OIHW patch conv
    return np.float32(np.clip(fan_in ** -0.5, 0.02, 0.1)) * n


def random_weights(cfg: PaliGemmaConfig, seed: int = 0, decisive: bool = False,
                   real_vocab: int | None = None) -> dict[str, np.ndarray]:
    """Canonical flat key -> float32 array for `cfg`, reproducible from `seed`. Embedding rows
    from `real_vocab` on (the padding past the tokenizer) are zero, as nothing trains them."""
    rng = np.random.default_rng(seed)
    flat = {key: _init(key, shape, rng, decisive) for key, shape in expected_shapes(cfg).items()}
    if real_vocab is not None:
        flat["language_model.embed_tokens.weight"][real_vocab:] = 0
    return flat


def _split(keys: list[str], num_shards: int) -> list[list[str]]:
    if not 1 <= num_shards <= len(keys):
        raise ValueError(f"num_shards must be in 1..{len(keys)}, not {num_shards}")
    return [list(part) for part in np.array_split(np.array(keys, dtype=object), num_shards)]


def write_checkpoint(folder: str | os.PathLike, config_dict: dict, *, layout: str = "hub",
                     dtype: str = "float32", num_shards: int = 1, seed: int = 0,
                     write_lm_head: bool = False, write_vision_head: bool = False,
                     tokenizer: bool = True, decisive: bool = False,
                     preprocessor: bool = False, sentencepiece: bool = False) -> Path:
    """Write config.json, random weights and (tokenizer=True) a tokenizer into `folder`.

    layout: one of npgemma.checkpoint.LAYOUTS ("hub", "v4.52", "v5", "v5-save").
    write_lm_head: also store a tied lm_head (a copy of embed_tokens), as some converters do;
    an untied config always gets its own lm_head. write_vision_head: add SigLIP's unused
    pooling head and mark vision_use_head true in config.json, as transformers' save_pretrained
    does for a vision_config dict that leaves vision_use_head at its SigLIP default.
    decisive: larger linear weights and zero padding rows (see `_init`), for comparisons.
    preprocessor: also write the Hub's preprocessor_config.json (transformers' processor needs it).
    sentencepiece: also write the tokenizer as `tokenizer.model`, as the Hub's folders have it.
    """
    if layout not in LAYOUTS or dtype not in DTYPES:
        raise ValueError(f"layout {layout!r} / dtype {dtype!r}: use one of "
                         f"{list(LAYOUTS)} / {list(DTYPES)}")
    if write_vision_head:  # the config transformers would have saved alongside the head
        config_dict = config_dict | {"vision_config": config_dict.get("vision_config", {})
                                     | {"vision_use_head": True}}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
    cfg = config_from_dict(config_dict)
    real = cfg.image_token_index + 1 if decisive else None  # the tokenizer's last id is <image>
    flat = random_weights(cfg, seed, decisive, real)
    if write_lm_head and cfg.text_config.tie_word_embeddings:
        flat["lm_head.weight"] = flat["language_model.embed_tokens.weight"].copy()
    if write_vision_head:
        rng = np.random.default_rng(seed + 1)
        flat |= {k: _init(k, s, rng) for k, s in vision_head_shapes(cfg).items()}
    tensors = {disk_name(k, layout): v.astype(DTYPES[dtype]) for k, v in flat.items()}
    _write_safetensors(folder, tensors, num_shards)
    if preprocessor:
        v = cfg.vision_config
        (folder / "preprocessor_config.json").write_text(
            json.dumps(preprocessor_config(v.image_size, v.patch_size), indent=2) + "\n")
    if tokenizer:
        from .tokenizer import FULL_IMAGE_TOKEN_ID, write_tokenizer
        write_tokenizer(folder, full=cfg.image_token_index == FULL_IMAGE_TOKEN_ID)
        if sentencepiece:
            from .tokenizer import write_sentencepiece
            write_sentencepiece(folder, full=cfg.image_token_index == FULL_IMAGE_TOKEN_ID)
    return folder


def preprocessor_config(image_size: int, patch_size: int) -> dict:
    """preprocessor_config.json as the Hub's PaliGemma repos write it (SigLIP, 0.5/0.5, bicubic)."""
    return {"do_convert_rgb": None, "do_normalize": True, "do_rescale": True, "do_resize": True,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
            "image_processor_type": "SiglipImageProcessor",
            "image_seq_length": (image_size // patch_size) ** 2,
            "processor_class": "PaliGemmaProcessor", "resample": 3, "rescale_factor": 1 / 255,
            "size": {"height": image_size, "width": image_size}}


def _write_safetensors(folder: Path, tensors: dict[str, np.ndarray], num_shards: int) -> None:
    """`model.safetensors`, or HF-named shards plus `model.safetensors.index.json`."""
    meta = {"format": "pt"}  # what torch's save_pretrained puts in every header
    if num_shards == 1:
        save_file(tensors, str(folder / "model.safetensors"), metadata=meta)
        return
    weight_map = {}
    for i, keys in enumerate(_split(sorted(tensors), num_shards), start=1):
        name = f"model-{i:05d}-of-{num_shards:05d}.safetensors"
        save_file({k: tensors[k] for k in keys}, str(folder / name), metadata=meta)
        weight_map |= {k: name for k in keys}
    index = {"metadata": {"total_parameters": sum(int(t.size) for t in tensors.values()),
                          "total_size": sum(int(t.nbytes) for t in tensors.values())},
             "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
