"""config.json -> `PaliGemmaConfig`: transformers 5.24.0's defaults, its two traps, strict checks.

The dataclasses themselves (and the field names and class defaults) are `npgemma/config.py`;
this file is how a checkpoint's `config.json` becomes one, and every way it can be wrong
(a `ConfigError` naming the file, the key and what was expected).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

from ..config import PaliGemmaConfig, TextConfig, VisionConfig
from ..errors import ConfigError
from .checks import layer_count_problems
from .read import disk_keys

# Activations that all mean tanh-approximated GELU (transformers' ACT2FN names).
_TANH_GELU = {"gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu"}


# Gemma2Config's defaults where they differ from TextConfig's (= GemmaConfig's).
_GEMMA2_DEFAULTS = dict(
    hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
    num_key_value_heads=4, query_pre_attn_scalar=256, sliding_window=4096,
    attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
)


# transformers' PaliGemmaConfig.sub_configs_defaults: used only when a sub-config is absent.
_PALIGEMMA_VISION_DEFAULTS = dict(
    intermediate_size=4096, hidden_size=1152, patch_size=14, image_size=224,
    num_hidden_layers=27, num_attention_heads=16, vision_use_head=False,
)


_PALIGEMMA_TEXT_DEFAULTS = dict(
    hidden_size=2048, num_hidden_layers=18, intermediate_size=16384,
    num_attention_heads=8, num_key_value_heads=1, vocab_size=257152,
)


def _pick(cls, raw: dict, defaults: dict) -> dict:
    """Values for `cls` fields: raw config.json entries over `defaults` over the class's own."""
    names = {f.name for f in dataclasses.fields(cls)} - {"window"}  # npgemma's option, not a file's
    out = {k: v for k, v in defaults.items() if k in names}
    out.update({k: v for k, v in raw.items() if k in names})
    return out


def _check_types(cfg, section: str, where: str) -> None:
    """Sizes must be positive integers and numeric fields positive finite numbers: a string, a
    zero or a NaN in config.json would otherwise fail deep inside the model math (or, NaN,
    silently: every logit NaN and argmax picking token 0)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.type in ("int", "int | None") and value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}: {section}.{f.name} must be a positive integer, "
                                  f"got {value!r}")
        if f.type in ("float", "float | None") and value is not None:
            # json reads NaN, Infinity and -Infinity as floats; `value <= 0` alone lets NaN pass.
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{where}: {section}.{f.name} must be a positive finite "
                                  f"number, got {value!r}")


def _require_object(raw, section: str, where: str) -> None:
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{where}: {section} must be a JSON object, found {type(raw).__name__}")


def _vision_from_dict(raw: dict | None, projection_dim: int, where: str) -> VisionConfig:
    _require_object(raw, "vision_config", where)
    if raw is None:
        values = dict(_PALIGEMMA_VISION_DEFAULTS)
    else:
        if raw.get("model_type", "siglip_vision_model") != "siglip_vision_model":
            raise ConfigError(f"{where}: vision_config.model_type is {raw['model_type']!r}, "
                              "expected 'siglip_vision_model'")
        values = _pick(VisionConfig, raw, {})
    values["projection_dim"] = projection_dim  # PaliGemmaConfig overwrites it, as here
    for key in ("image_size", "patch_size"):
        if isinstance(values.get(key), (list, tuple)):
            h, w = values[key]
            if h != w:
                raise ConfigError(f"{where}: vision_config.{key} {values[key]} is not square")
            values[key] = h
    cfg = VisionConfig(**_pick(VisionConfig, values, {}))
    _check_types(cfg, "vision_config", where)
    if cfg.hidden_act not in _TANH_GELU - {"gelu"}:
        raise ConfigError(f"{where}: vision_config.hidden_act {cfg.hidden_act!r} is not supported "
                          "(SigLIP uses gelu_pytorch_tanh)")
    if cfg.vision_use_head:
        # The attention-pooling head is not part of PaliGemma; its weights are not loaded.
        cfg = dataclasses.replace(cfg, vision_use_head=False)
    return cfg


def _text_model_type(raw: dict, where: str) -> str:
    model_type = raw.get("model_type", "gemma")
    if model_type not in ("gemma", "gemma2"):
        raise ConfigError(f"{where}: text_config.model_type is {model_type!r}; "
                          "npgemma runs 'gemma' (PaliGemma 1) and 'gemma2' (PaliGemma 2)")
    return model_type


def _rope_theta(raw: dict, where: str) -> dict:
    """`{"rope_theta": ...}` when the file sets it: transformers 5 writes `rope_parameters`
    {rope_theta, rope_type}, older files a top-level `rope_theta`; only the default
    (unscaled) RoPE exists in Gemma."""
    rope = raw.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"{where}: text_config.rope_parameters.rope_type "
                          f"{rope['rope_type']!r} is not supported (expected 'default')")
    if "rope_theta" in rope:
        return {"rope_theta": rope["rope_theta"]}
    return {"rope_theta": raw["rope_theta"]} if "rope_theta" in raw else {}


def _text_activation(raw: dict, model_type: str) -> dict:
    """Gemma-2 names its activation `hidden_activation` (and ignores `hidden_act`); Gemma-1
    reads `hidden_act`, whose legacy "gelu" also means tanh-GELU (checked in _check_text)."""
    if model_type == "gemma2":
        return {"hidden_act": raw.get("hidden_activation") or "gelu_pytorch_tanh"}
    return {"hidden_act": raw["hidden_act"]} if "hidden_act" in raw else {}


def _layer_types(given, num_layers: int, where: str) -> tuple[str, ...]:
    """Gemma-2's per-layer attention kinds; Gemma2Config's default: even layers slide, odd
    layers see everything."""
    types = given or ["sliding_attention" if (i + 1) % 2 else "full_attention"
                      for i in range(num_layers)]
    if len(types) != num_layers or set(types) - {"sliding_attention", "full_attention"}:
        raise ConfigError(f"{where}: text_config.layer_types must list {num_layers} entries of "
                          f"'sliding_attention'/'full_attention', found {types}")
    return tuple(types)


def _check_text(cfg: TextConfig, where: str) -> None:
    """What npgemma's decoder supports: tanh-GELU, no attention biases, whole GQA groups."""
    _check_types(cfg, "text_config", where)
    if cfg.hidden_act not in _TANH_GELU:
        raise ConfigError(f"{where}: text_config activation {cfg.hidden_act!r} is not supported "
                          "(Gemma uses tanh-GELU, gelu_pytorch_tanh)")
    if cfg.attention_bias:
        raise ConfigError(f"{where}: text_config.attention_bias=true is not supported "
                          "(Gemma attention has no biases)")
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        raise ConfigError(f"{where}: num_attention_heads {cfg.num_attention_heads} is not a "
                          f"multiple of num_key_value_heads {cfg.num_key_value_heads}")


def _text_from_dict(raw: dict | None, where: str) -> TextConfig:
    """`GemmaConfig` / `Gemma2Config` from a text_config dict (absent: PaliGemma's built-in)."""
    _require_object(raw, "text_config", where)
    if raw is None:
        return TextConfig(**_PALIGEMMA_TEXT_DEFAULTS)
    model_type = _text_model_type(raw, where)
    resolved = {**raw, **_rope_theta(raw, where), **_text_activation(raw, model_type)}
    values = _pick(TextConfig, resolved, _GEMMA2_DEFAULTS if model_type == "gemma2" else {})
    values["model_type"] = model_type
    if model_type == "gemma2":
        n = values.get("num_hidden_layers", TextConfig.num_hidden_layers)
        values["layer_types"] = _layer_types(values.get("layer_types"), n, where)
    else:
        values.pop("layer_types", None)
    cfg = TextConfig(**values)
    _check_text(cfg, where)
    return cfg


def config_from_dict(raw: dict, where: str = "config.json") -> PaliGemmaConfig:
    """Resolve a PaliGemma config.json dict exactly as transformers 5.24.0 does."""
    model_type = raw.get("model_type")
    if model_type != "paligemma":
        archs = raw.get("architectures")
        raise ConfigError(f"{where}: model_type is {model_type!r} (architectures {archs}); "
                          "npgemma loads PaliGemma checkpoints (model_type 'paligemma')")
    projection_dim = raw.get("projection_dim", 2048)
    vision = _vision_from_dict(raw.get("vision_config"), projection_dim, where)
    text = _text_from_dict(raw.get("text_config"), where)
    # transformers 5.24 ties lm_head to the embedding by the *top-level* flag (default true);
    # the text_config one is ignored.
    text = dataclasses.replace(text, tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)))
    if vision.image_size % vision.patch_size:
        raise ConfigError(f"{where}: image_size {vision.image_size} is not a multiple of "
                          f"patch_size {vision.patch_size}")
    if projection_dim != text.hidden_size:
        raise ConfigError(f"{where}: projection_dim {projection_dim} != text hidden_size "
                          f"{text.hidden_size}; the projector must map into the decoder width")
    if "image_token_index" not in raw and "image_token_id" in raw:
        raw = {**raw, "image_token_index": raw["image_token_id"]}
    top = _pick(PaliGemmaConfig, raw, {})
    top.pop("vision_config", None)
    top.pop("text_config", None)
    for key, value in top.items():  # token ids
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}: {key} must be a non-negative integer, got {value!r}")
    return PaliGemmaConfig(vision_config=vision, text_config=text, **top)


def read_json_object(path: str) -> dict:
    """A JSON file that must hold an object (config.json and the processor configs)."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {type(raw).__name__}")
    return raw


def load_config(model_dir: str | os.PathLike) -> PaliGemmaConfig:
    """Read `<model_dir>/config.json`."""
    path = os.path.join(os.fspath(model_dir), "config.json")
    if not os.path.isdir(os.fspath(model_dir)):
        if os.path.exists(os.fspath(model_dir)):
            raise ConfigError(f"{model_dir}: a file, not a checkpoint folder (config.json, "
                              "*.safetensors, tokenizer.json)")
        raise ConfigError(f"{model_dir}: no such checkpoint folder")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: missing (a Hugging Face checkpoint folder has a config.json)")
    raw = read_json_object(path)
    _check_layer_counts(raw, Path(os.fspath(model_dir)), path)
    try:
        return config_from_dict(raw, where=path)
    except TypeError as e:  # a field with the wrong type, e.g. a string where an int belongs
        raise ConfigError(f"{path}: {e}") from None


def _check_layer_counts(raw: dict, model_dir: Path, where: str) -> None:
    """A layer count config.json states against the layers the weight files name (index or
    header: no tensor data), before anything is built per layer: `num_hidden_layers: 10**9`
    would otherwise cost 10**9 of everything (layer types, key names) before any check spoke.
    Skipped when the folder has no readable weight files (the loader reports those)."""
    counts = {}
    for section in ("vision_config", "text_config"):
        n = raw[section].get("num_hidden_layers") if isinstance(raw.get(section), dict) else None
        if isinstance(n, int) and not isinstance(n, bool):
            counts[section] = n
    keys = disk_keys(model_dir) if counts else None
    probs = layer_count_problems(keys, counts) if keys is not None else []
    if probs:
        raise ConfigError(f"{where}: " + "; ".join(probs))
