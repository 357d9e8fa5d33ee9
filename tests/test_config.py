"""config.json resolution (npgemma/config.py) against the published model configurations.

Goldens are the shapes and settings of the released checkpoints (google/paligemma-3b-pt-224,
google/paligemma2-{3b,28b}-pt-224) and transformers 5.24's documented defaults: a Hub config
leaves most fields out, and what fills them in is exactly what these tests pin.
"""

from __future__ import annotations

import pytest

from npgemma.checkpoint.config_json import config_from_dict
from npgemma.errors import ConfigError

_SIGLIP_SO400M = {"model_type": "siglip_vision_model", "hidden_size": 1152,
                  "intermediate_size": 4304, "num_attention_heads": 16, "num_hidden_layers": 27,
                  "patch_size": 14, "projection_dim": 2304, "vision_use_head": False}


def _pg2(text: dict | None = None, **top) -> dict:
    """google/paligemma2-3b-pt-224/config.json, as the Hub has it (minimal)."""
    text_config = {"model_type": "gemma2", "hidden_activation": "gelu_pytorch_tanh",
                   "hidden_size": 2304, "intermediate_size": 9216, "num_attention_heads": 8,
                   "num_hidden_layers": 26, "num_key_value_heads": 4,
                   "query_pre_attn_scalar": 256, "sliding_window": 4096, "vocab_size": 257216}
    return {"model_type": "paligemma", "image_token_index": 257152, "projection_dim": 2304,
            "hidden_size": 2048, "text_config": text_config | (text or {}),
            "vision_config": dict(_SIGLIP_SO400M), **top}


def test_paligemma2_3b_defaults():
    cfg = config_from_dict(_pg2())
    t, v = cfg.text_config, cfg.vision_config
    assert (t.hidden_size, t.num_hidden_layers, t.head_dim, t.num_key_value_heads) == (2304, 26, 256, 4)
    assert t.query_scale == 256 ** -0.5 and t.rope_theta == 10000.0 and t.rms_norm_eps == 1e-6
    assert (t.attn_logit_softcapping, t.final_logit_softcapping) == (50.0, 30.0)
    assert [t.layer_sliding_window(i) for i in range(4)] == [4096, None, 4096, None]
    assert t.tie_word_embeddings and t.max_position_embeddings == 8192
    assert t.hidden_act == "gelu_pytorch_tanh"
    assert (v.num_patches, v.head_dim, v.layer_norm_eps) == (256, 72, 1e-6)
    assert cfg.num_image_tokens == 256 and cfg.image_token_index == 257152


def test_paligemma2_28b_query_scale_is_one_twelfth():
    cfg = config_from_dict(_pg2({"hidden_size": 4608, "head_dim": 128, "num_attention_heads": 32,
                                 "num_key_value_heads": 16, "query_pre_attn_scalar": 144},
                                projection_dim=4608))
    assert cfg.text_config.query_scale == pytest.approx(1 / 12, rel=1e-15)
    assert cfg.text_config.head_dim == 128  # not head_dim^-0.5 = 1/11.3


def test_paligemma1_absent_text_config_is_gemma_2b():
    cfg = config_from_dict({"model_type": "paligemma", "projection_dim": 2048})
    t = cfg.text_config
    assert (t.hidden_size, t.num_hidden_layers, t.intermediate_size) == (2048, 18, 16384)
    assert (t.num_attention_heads, t.num_key_value_heads, t.vocab_size) == (8, 1, 257152)
    assert t.query_scale == 256 ** -0.5 and not t.is_gemma2
    assert t.layer_sliding_window(0) is None and t.final_logit_softcapping is None


def test_rope_parameters_of_transformers_5_are_read():
    cfg = config_from_dict(_pg2({"rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}}))
    assert cfg.text_config.rope_theta == 1e6
    assert config_from_dict(_pg2({"rope_theta": 5e5})).text_config.rope_theta == 5e5
    with pytest.raises(ConfigError, match="rope_type 'linear'"):
        config_from_dict(_pg2({"rope_parameters": {"rope_theta": 1e4, "rope_type": "linear"}}))


def test_gemma2_activation_is_hidden_activation_not_hidden_act():
    # Gemma2Config ignores `hidden_act` (some converted files carry a stale one).
    cfg = config_from_dict(_pg2({"hidden_act": "silu"}))
    assert cfg.text_config.hidden_act == "gelu_pytorch_tanh"
    with pytest.raises(ConfigError, match="'relu' is not supported"):
        config_from_dict(_pg2({"hidden_activation": "relu"}))
    # Gemma-1's legacy "gelu" means tanh-GELU and is accepted
    gemma1 = config_from_dict({"model_type": "paligemma", "projection_dim": 2048,
                               "text_config": {"model_type": "gemma", "hidden_size": 2048,
                                               "hidden_act": "gelu"}})
    assert gemma1.text_config.hidden_act == "gelu"


def test_tying_follows_the_top_level_flag():
    assert config_from_dict(_pg2()).text_config.tie_word_embeddings
    assert not config_from_dict(_pg2(tie_word_embeddings=False)).text_config.tie_word_embeddings
    # transformers 5.24 ignores the text_config flag
    assert config_from_dict(_pg2({"tie_word_embeddings": False})).text_config.tie_word_embeddings


def test_explicit_layer_types_win_and_are_checked():
    types = ["full_attention"] * 25 + ["sliding_attention"]
    cfg = config_from_dict(_pg2({"layer_types": types}))
    assert cfg.text_config.layer_sliding_window(0) is None
    assert cfg.text_config.layer_sliding_window(25) == 4096
    with pytest.raises(ConfigError, match="layer_types must list 26"):
        config_from_dict(_pg2({"layer_types": types[:-1]}))


# Every float field of the three dataclasses, by the section config.json puts it in (a NaN or an
# Inf in any of them used to reach the model math: NaN passes `value <= 0`).
_FLOAT_FIELDS = [("text_config", "rms_norm_eps"), ("text_config", "rope_theta"),
                 ("text_config", "final_logit_softcapping"),
                 ("text_config", "attn_logit_softcapping"),
                 ("text_config", "query_pre_attn_scalar"), ("vision_config", "layer_norm_eps")]


@pytest.mark.parametrize("section,name", _FLOAT_FIELDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_float_fields_are_refused_by_name(section, name, bad):
    raw = _pg2()
    raw[section] = {**raw[section], name: bad}
    with pytest.raises(ConfigError, match=rf"{section}\.{name} must be a positive finite number"):
        config_from_dict(raw)


def test_every_float_field_is_covered():
    import dataclasses

    from npgemma.config import TextConfig, VisionConfig

    floats = {(s, f.name) for s, cls in (("text_config", TextConfig), ("vision_config", VisionConfig))
              for f in dataclasses.fields(cls) if "float" in str(f.type)}
    assert floats == set(_FLOAT_FIELDS)


def test_nan_rope_theta_in_rope_parameters_is_refused(tmp_path):
    """Through the file, as a user writes it: json's NaN literal inside rope_parameters."""
    import json

    from npgemma.checkpoint.config_json import load_config

    raw = _pg2({"rope_parameters": {"rope_type": "default", "rope_theta": float("nan")}})
    (tmp_path / "config.json").write_text(json.dumps(raw))  # json.dumps writes NaN
    assert "NaN" in (tmp_path / "config.json").read_text()
    with pytest.raises(ConfigError, match=r"config\.json: text_config\.rope_theta must be a "
                                          r"positive finite number, got nan"):
        load_config(tmp_path)
