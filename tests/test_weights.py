"""Checkpoint loading: every key layout, dtype and sharding round-trips; every bad folder fails
with one WeightsError that names the culprit file, key and shapes."""

import json
import struct

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from npgemma.checkpoint.config_json import config_from_dict, load_config
from npgemma.checkpoint.weights import LAYOUTS, expected_shapes, flatten, load_weights, unflatten
from npgemma.errors import WeightsError
from npgemma.synthetic.checkpoint import random_weights, tiny_config, write_checkpoint

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def _write(tmp_path, name="ckpt", text="gemma", **kw):
    overrides = kw.pop("overrides", {})
    kw.setdefault("tokenizer", False)
    return write_checkpoint(tmp_path / name, tiny_config(text=text, **overrides), **kw)


def _load(folder, **kw):
    return load_weights(folder, load_config(folder), **kw)


def _edit(path, fn):
    """Rewrite one safetensors file with fn(tensors) applied."""
    tensors = load_file(str(path))
    fn(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _error(folder) -> str:
    with pytest.raises(WeightsError) as e:
        _load(folder)
    return str(e.value)


@pytest.mark.parametrize("num_shards", [1, 3])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_round_trip(tmp_path, layout, dtype, num_shards):
    folder = _write(tmp_path, text="gemma2", layout=layout, dtype=dtype, num_shards=num_shards)
    cfg = load_config(folder)
    flat = flatten(_load(folder))
    assert {k: v.shape for k, v in flat.items()} == expected_shapes(cfg)
    for key, ref in random_weights(cfg).items():
        assert flat[key].dtype == np.float32
        # bf16 / fp16 -> float32 upcasts are exact: the loaded value is the on-disk value.
        np.testing.assert_array_equal(flat[key], ref.astype(DTYPES[dtype]).astype(np.float32))


def test_tree_structure(tmp_path):
    tree = _load(_write(tmp_path, text="gemma2"))
    assert sorted(tree) == ["language_model", "multi_modal_projector", "vision_tower"]
    layers = tree["language_model"]["layers"]
    assert isinstance(layers, list) and len(layers) == 2
    assert set(layers[0]) == {"input_layernorm", "self_attn", "post_attention_layernorm", "mlp",
                              "pre_feedforward_layernorm", "post_feedforward_layernorm"}
    assert tree["vision_tower"]["embeddings"]["patch_embedding"]["weight"].shape == (32, 3, 14, 14)
    assert isinstance(tree["vision_tower"]["encoder"]["layers"], list)
    gemma1 = _load(_write(tmp_path, "g1"))["language_model"]["layers"][0]
    assert "pre_feedforward_layernorm" not in gemma1


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16, "bfloat16"])
def test_low_precision_target(tmp_path, dtype):
    folder = _write(tmp_path, dtype="float32")
    flat = flatten(_load(folder, dtype=dtype))
    ref = random_weights(load_config(folder))
    for key, value in flat.items():
        assert value.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(value, ref[key].astype(dtype))


def test_bad_target_dtype(tmp_path):
    with pytest.raises(WeightsError, match="int8"):
        _load(_write(tmp_path), dtype=np.int8)


def test_flatten_unflatten_inverse(tmp_path):
    folder = _write(tmp_path)
    tree = _load(folder)
    flat = flatten(tree)
    assert "language_model.layers.1.mlp.down_proj.weight" in flat
    assert "vision_tower.encoder.layers.0.self_attn.q_proj.bias" in flat
    again = unflatten(flat)
    assert flatten(again).keys() == flat.keys()
    assert isinstance(again["vision_tower"]["encoder"]["layers"], list)


def test_progress_reports_every_tensor(tmp_path):
    folder = _write(tmp_path, dtype="bfloat16", num_shards=2)
    calls = []
    flat = flatten(_load(folder, progress=lambda *args: calls.append(args)))
    assert sorted(key for _, _, key in calls) == sorted(flat)
    done = [d for d, _, _ in calls]
    on_disk = sum(v.size * 2 for v in flat.values())  # bf16 bytes read
    assert done == sorted(done) and done[-1] == calls[-1][1] == on_disk


def test_tied_lm_head_on_disk_is_dropped(tmp_path):
    tree = _load(_write(tmp_path, write_lm_head=True, layout="v5"))
    assert "lm_head" not in tree


def test_vision_pooling_head_is_dropped(tmp_path):
    """transformers 5.24 saves SigLIP's unused pooling head when vision_use_head is left true."""
    folder = _write(tmp_path, layout="v5-save", write_vision_head=True)
    assert json.loads((folder / "config.json").read_text())["vision_config"]["vision_use_head"]
    assert not any(".head." in k for k in flatten(_load(folder)))


def test_untied_lm_head_loaded_and_required(tmp_path):
    untied = {"tie_word_embeddings": False}
    tree = _load(_write(tmp_path, overrides=untied))
    assert tree["lm_head"]["weight"].shape == tree["language_model"]["embed_tokens"]["weight"].shape
    folder = _write(tmp_path, "no_head", overrides=untied)
    _edit(folder / "model.safetensors", lambda t: t.pop("language_model.lm_head.weight"))
    msg = _error(folder)
    assert "missing: lm_head.weight (expected on disk as language_model.lm_head.weight)" in msg


def test_missing_tensor(tmp_path):
    folder = _write(tmp_path, layout="v4.52")
    disk = "model.language_model.layers.1.mlp.up_proj.weight"
    _edit(folder / "model.safetensors", lambda t: t.pop(disk))
    msg = _error(folder)
    assert "language_model.layers.1.mlp.up_proj.weight" in msg and disk in msg
    assert "missing:" in msg and "\n" not in msg  # a single problem is a single line


def test_unexpected_tensor(tmp_path):
    folder = _write(tmp_path)
    _edit(folder / "model.safetensors", lambda t: t.update(extra=np.zeros(3, np.float32)))
    msg = _error(folder)
    assert "unexpected: model.safetensors: extra" in msg


def test_layer_beyond_config_is_unexpected(tmp_path):
    folder = _write(tmp_path)
    key = "language_model.model.layers.2.input_layernorm.weight"
    _edit(folder / "model.safetensors", lambda t: t.update({key: np.zeros(32, np.float32)}))
    assert f"unexpected: model.safetensors: {key}" in _error(folder)


def test_wrong_shape_names_file_key_and_shapes(tmp_path):
    folder = _write(tmp_path, layout="v5", num_shards=2)
    key = "model.vision_tower.encoder.layers.0.mlp.fc1.weight"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = index["weight_map"][key]
    _edit(folder / shard, lambda t: t.update({key: np.zeros((64, 31), np.float32)}))
    msg = _error(folder)
    assert f"wrong shape: {shard}: {key}: expected (64, 32), found (64, 31)" in msg


def test_tied_lm_head_with_wrong_shape(tmp_path):
    folder = _write(tmp_path, write_lm_head=True)
    key = "language_model.lm_head.weight"
    _edit(folder / "model.safetensors", lambda t: t.update({key: np.zeros((5, 32), np.float32)}))
    assert f"{key}: expected ({config_vocab(folder)}, 32), found (5, 32)" in _error(folder)


def config_vocab(folder):
    return load_config(folder).text_config.vocab_size


def test_all_problems_in_one_error(tmp_path):
    folder = _write(tmp_path)

    def damage(t):
        t.pop("multi_modal_projector.linear.bias")
        t["language_model.model.norm.weight"] = np.zeros(7, np.float32)
        t["bogus.weight"] = np.zeros(1, np.float32)
    _edit(folder / "model.safetensors", damage)
    msg = _error(folder)
    assert "1 wrong shape" in msg and "1 unexpected" in msg and "1 missing" in msg
    assert "multi_modal_projector.linear.bias" in msg and "bogus.weight" in msg
    assert "expected (32,), found (7,)" in msg


def test_mixed_layouts(tmp_path):
    folder = _write(tmp_path, layout="hub")
    old, new = ("vision_tower.vision_model.post_layernorm.weight",
                "model.vision_tower.post_layernorm.weight")
    _edit(folder / "model.safetensors", lambda t: t.update({new: t.pop(old)}))
    msg = _error(folder)
    assert f"mixed layouts: follows 'v5', not 'hub': model.safetensors: {new}" in msg
    assert f"missing: vision_tower.post_layernorm.weight (expected on disk as {old})" in msg


def test_unsupported_disk_dtype(tmp_path):
    folder = _write(tmp_path)
    key = "multi_modal_projector.linear.bias"
    _edit(folder / "model.safetensors", lambda t: t.update({key: np.zeros(32, np.int8)}))
    msg = _error(folder)
    assert f"unsupported dtype: model.safetensors: {key}: I8" in msg


def test_truncated_file(tmp_path):
    path = _write(tmp_path) / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    msg = _error(path.parent)
    assert str(path) in msg and "not a readable safetensors file" in msg


def test_garbage_file(tmp_path):
    path = _write(tmp_path) / "model.safetensors"
    path.write_bytes(b"this is not a safetensors file at all" * 10)
    assert str(path) in _error(path.parent)


@pytest.mark.parametrize("content, says", [
    (b"abc", "3 bytes, too short"),
    (struct.pack("<Q", 2**62) + b"{}", f"says {2**62} bytes but only 2 follow"),
    (struct.pack("<Q", 12) + b"{}" * 3, "says 12 bytes but only 6 follow"),  # just past the end
], ids=["short", "absurd", "past-the-end"])
def test_absurd_or_short_header(tmp_path, content, says):
    path = _write(tmp_path) / "model.safetensors"
    path.write_bytes(content)
    msg = _error(path.parent)
    assert str(path) in msg and says in msg


def test_tensor_in_two_shards_is_a_duplicate(tmp_path):
    folder = _write(tmp_path, num_shards=2)
    first = load_file(str(folder / "model-00001-of-00002.safetensors"))
    key = sorted(first)[0]
    _edit(folder / "model-00002-of-00002.safetensors", lambda t: t.update({key: first[key]}))
    msg = _error(folder)
    assert (f"duplicate: {key} is in model-00001-of-00002.safetensors, "
            "model-00002-of-00002.safetensors") in msg


def test_single_file_wins_over_an_index(tmp_path):
    # transformers reads model.safetensors when both exist; a stale index must not matter.
    folder = _write(tmp_path)
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"x.weight": "model-00001-of-00009.safetensors"}}))
    assert flatten(_load(folder)).keys() == expected_shapes(load_config(folder)).keys()


def test_unflatten_orders_layers_numerically():
    flat = {f"m.layers.{i}.w": np.full(1, i) for i in (0, 10, 2, 11, 1, 3, 4, 5, 6, 7, 8, 9)}
    layers = unflatten(flat)["m"]["layers"]
    assert [int(layer["w"][0]) for layer in layers] == list(range(12))  # not 0, 1, 10, 11, 2, ...
    with pytest.raises(WeightsError, match="not 0..1"):
        unflatten({"m.layers.0.w": 0, "m.layers.2.w": 0})


def test_long_reports_list_one_hundred_per_kind(tmp_path):
    folder = _write(tmp_path)
    extra = {f"language_model.model.extra{i:03d}.weight": np.zeros(1, np.float32) for i in range(103)}
    _edit(folder / "model.safetensors", lambda t: t.update(extra))
    lines = _error(folder).splitlines()
    assert "103 unexpected" in lines[0]
    assert sum(line.startswith("  unexpected: ") for line in lines) == 100
    assert lines[-1] == "  ... and 3 more"


def test_bad_header_json(tmp_path):
    path = _write(tmp_path) / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 5) + b"{abc}")
    assert str(path) in _error(path.parent)


def test_missing_shard(tmp_path):
    folder = _write(tmp_path, num_shards=3)
    (folder / "model-00002-of-00003.safetensors").unlink()
    msg = _error(folder)
    assert "model-00002-of-00003.safetensors" in msg and "missing" in msg


def test_index_names_tensor_absent_from_shard(tmp_path):
    folder = _write(tmp_path, num_shards=2)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["language_model.model.phantom.weight"] = "model-00001-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    msg = _error(folder)
    assert "not in shard: model-00001-of-00002.safetensors: language_model.model.phantom" in msg


def test_tensor_in_wrong_shard(tmp_path):
    folder = _write(tmp_path, num_shards=2)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    key, shard = next(iter(index["weight_map"].items()))
    index["weight_map"][key] = "model-00002-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    msg = _error(folder)
    assert f"index mismatch: {shard}: {key}" in msg and "not in shard: " in msg


def test_bad_index(tmp_path):
    folder = _write(tmp_path, num_shards=2)
    (folder / "model.safetensors.index.json").write_text("{not json")
    assert "model.safetensors.index.json" in _error(folder)


def test_empty_folder(tmp_path):
    folder = _write(tmp_path)
    (folder / "model.safetensors").unlink()
    msg = _error(folder)
    assert "no model.safetensors or model.safetensors.index.json" in msg and "config.json" in msg
    with pytest.raises(WeightsError, match="no such checkpoint folder"):
        load_weights(tmp_path / "nowhere", load_config(folder))


def test_expected_shapes_count_paligemma_3b():
    """The real PaliGemma-1 3B (google/paligemma-3b-pt-224 config.json) has 2,923,466,480
    parameters: tied lm_head, no vision pooling head."""
    cfg = config_from_dict({
        "model_type": "paligemma", "projection_dim": 2048, "image_token_index": 257152,
        "text_config": {"model_type": "gemma", "hidden_size": 2048, "intermediate_size": 16384,
                        "num_attention_heads": 8, "num_hidden_layers": 18,
                        "num_key_value_heads": 1, "vocab_size": 257216},
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152,
                          "intermediate_size": 4304, "num_attention_heads": 16,
                          "num_hidden_layers": 27, "patch_size": 14, "vision_use_head": False}})
    shapes = expected_shapes(cfg)
    assert sum(int(np.prod(s)) for s in shapes.values()) == 2_923_466_480
    assert shapes["language_model.layers.0.self_attn.k_proj.weight"] == (256, 2048)
    assert shapes["vision_tower.embeddings.position_embedding.weight"] == (256, 1152)


# ---- non-finite weights: found as each tensor is read (or first used, memory-mapped), named ----

_POISON = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}


def _poison(folder, key: str, where: list[int], value: float) -> None:
    """Put `value` at flat positions `where` of on-disk tensor `key` (in its file dtype)."""
    def fn(tensors):
        t = tensors[key].copy()
        t.reshape(-1)[where] = value
        tensors[key] = t
    _edit(folder / "model.safetensors", fn)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind", list(_POISON))
def test_non_finite_weight_named_with_its_count_while_read(tmp_path, dtype, kind):
    """float32 mode (read, then cast) and the one-tensor-at-a-time reader (the torch backend's):
    every logit would be NaN, token 0 chosen, exit 0."""
    from npgemma.checkpoint.weights import iter_weights

    folder = _write(tmp_path, dtype=dtype)
    key = "language_model.model.layers.1.mlp.up_proj.weight"
    _poison(folder, key, [0, 5, 77], _POISON[kind])
    size = int(np.prod(load_file(str(folder / "model.safetensors"))[key].shape))
    message = f"model.safetensors: {key}: 3 of {size} values are NaN or Inf"
    with pytest.raises(WeightsError, match=message):
        _load(folder)
    with pytest.raises(WeightsError, match=message):
        list(iter_weights(folder, load_config(folder)))
    with pytest.raises(WeightsError, match=message):
        list(iter_weights(folder, load_config(folder), dtype=None))


@pytest.mark.parametrize("key, canonical", [
    ("language_model.model.layers.1.self_attn.o_proj.weight",
     "language_model.layers.1.self_attn.o_proj.weight"),
    ("vision_tower.vision_model.encoder.layers.0.mlp.fc2.bias",
     "vision_tower.encoder.layers.0.mlp.fc2.bias"),
    ("multi_modal_projector.linear.weight", "multi_modal_projector.linear.weight"),
    ("language_model.model.embed_tokens.weight", "language_model.embed_tokens.weight"),
])
def test_non_finite_weight_found_memory_mapped(tmp_path, key, canonical):
    """The low-memory mode maps the file: loading reads nothing; each block is checked when the
    model first enters it, the small tensors outside the blocks when the streamer is made. The
    error names the file, the tensor (canonical name) and the count, before any token."""
    import npgemma

    folder = _write(tmp_path, dtype="bfloat16", tokenizer=True)
    _poison(folder, key, [1, 2], np.nan)
    image = np.full((20, 20, 3), 128, np.uint8)
    with pytest.raises(WeightsError, match=rf"model\.safetensors: {canonical}: 2 of \d+ values "
                                           r"are NaN or Inf"):
        npgemma.load(folder, dtype="bfloat16", force=True).generate(image, "caption en",
                                                                    max_new_tokens=2)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_non_finite_count_by_bits_agrees_with_isfinite(dtype):
    """The bit test against NumPy's isfinite on the float32 widening (exact for all three), on
    slab edges, subnormals, the largest finite values and every kind of NaN and Inf."""
    from npgemma.checkpoint import finite

    rng = np.random.default_rng(0)
    big = float(np.finfo(DTYPES[dtype]).max) if dtype != "bfloat16" else 3.3895e38
    x = rng.standard_normal(finite._SLAB * 2 + 7).astype(np.float32)
    x[:4] = [big, -big, 1e-40, -0.0]
    x = x.astype(DTYPES[dtype])
    assert finite.non_finite_count(x) == 0 and not finite.any_non_finite(x)
    for where in ([0], [finite._SLAB - 1, finite._SLAB], [x.size - 1], list(range(9, 40, 3))):
        y = x.copy()
        y[where] = [(np.nan, np.inf, -np.inf)[i % 3] for i in range(len(where))]
        expected = int((~np.isfinite(y.astype(np.float32))).sum())
        assert finite.non_finite_count(y.reshape(1, -1)) == expected == len(where)
        assert finite.any_non_finite(y)
