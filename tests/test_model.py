"""Model-level invariants of the NumPy PaliGemma on tiny random configs (NumPy only).

The weight tree is built here, in the canonical nested layout the model functions read
(checkpoint leaf names), so these tests depend on nothing but the math modules.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from npgemma import gemma, kv_cache, paligemma, siglip
from npgemma.checkpoint.config_json import config_from_dict
from npgemma.layers import rope_tables

F32 = np.float32
IMAGE = 63  # <image> id of the tiny configs (inside the 64-row vocabulary)
BOS = 2

_VISION = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
               image_size=8, patch_size=4)  # 4 image tokens
_GEMMA1 = dict(model_type="gemma", vocab_size=64, hidden_size=20, intermediate_size=32,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=8)
_GEMMA2 = dict(model_type="gemma2", vocab_size=64, hidden_size=20, intermediate_size=32,
               num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
               query_pre_attn_scalar=12, sliding_window=3, attn_logit_softcapping=2.0,
               final_logit_softcapping=4.0)


def make_config(text: dict, **text_overrides):
    return config_from_dict({
        "model_type": "paligemma", "projection_dim": text["hidden_size"],
        "image_token_index": IMAGE, "vision_config": dict(_VISION),
        "text_config": {**text, **text_overrides},
    })


def random_params(cfg, seed: int = 0) -> dict:
    """Random weights in the canonical nested layout (Linear weights [out, in])."""
    rng = np.random.default_rng(seed)

    def randn(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(F32)

    def lin(out, inp, bias):
        d = {"weight": randn(out, inp, scale=inp ** -0.5)}
        if bias:
            d["bias"] = randn(out, scale=0.1)
        return d

    def ln(d):
        return {"weight": 1.0 + randn(d, scale=0.1), "bias": randn(d, scale=0.1)}

    def rms(d):
        return {"weight": randn(d, scale=0.2)}

    v, t = cfg.vision_config, cfg.text_config
    dv, p = v.hidden_size, v.patch_size
    vision = {
        "embeddings": {"patch_embedding": {"weight": randn(dv, 3, p, p, scale=(3 * p * p) ** -0.5),
                                           "bias": randn(dv, scale=0.1)},
                       "position_embedding": {"weight": randn(v.num_patches, dv, scale=0.5)}},
        "encoder": {"layers": [{
            "layer_norm1": ln(dv),
            "self_attn": {name: lin(dv, dv, True)
                          for name in ("q_proj", "k_proj", "v_proj", "out_proj")},
            "layer_norm2": ln(dv),
            "mlp": {"fc1": lin(v.intermediate_size, dv, True),
                    "fc2": lin(dv, v.intermediate_size, True)},
        } for _ in range(v.num_hidden_layers)]},
        "post_layernorm": ln(dv),
    }
    d, h, n, k, f = t.hidden_size, t.head_dim, t.num_attention_heads, t.num_key_value_heads, t.intermediate_size
    layers = []
    for _ in range(t.num_hidden_layers):
        layer = {
            "input_layernorm": rms(d),
            "self_attn": {"q_proj": lin(n * h, d, False), "k_proj": lin(k * h, d, False),
                          "v_proj": lin(k * h, d, False), "o_proj": lin(d, n * h, False)},
            "post_attention_layernorm": rms(d),
            "mlp": {"gate_proj": lin(f, d, False), "up_proj": lin(f, d, False),
                    "down_proj": lin(d, f, False)},
        }
        if t.is_gemma2:
            layer["pre_feedforward_layernorm"] = rms(d)
            layer["post_feedforward_layernorm"] = rms(d)
        layers.append(layer)
    return {
        "vision_tower": vision,
        "multi_modal_projector": {"linear": lin(d, dv, True)},
        "language_model": {"embed_tokens": {"weight": randn(t.vocab_size, d, scale=0.3)},
                           "layers": layers, "norm": rms(d)},
    }


def random_pixels(rng, batch, cfg):
    s = cfg.vision_config.image_size
    return rng.uniform(-1, 1, size=(batch, 3, s, s)).astype(F32)


def prompt(rng, n_text, cfg):
    """One row: P `<image>` tokens, `<bos>`, n_text random text ids (never `<image>`)."""
    text = rng.integers(4, IMAGE, size=n_text)
    return np.concatenate([[IMAGE] * cfg.num_image_tokens, [BOS], text]).astype(np.int64)


def left_pad(rows, pad_id=0):
    """Stack rows of different lengths with left padding -> ids int[B, S], valid bool[B, S]."""
    s = max(len(r) for r in rows)
    ids = np.full((len(rows), s), pad_id, np.int64)
    valid = np.zeros((len(rows), s), bool)
    for i, r in enumerate(rows):
        ids[i, s - len(r):] = r
        valid[i, s - len(r):] = True
    return ids, valid


def full_forward(params, cfg, ids, valid, is_prefix, image_features):
    """One uncached pass over every slot."""
    masks = paligemma.attention_masks(cfg, valid, is_prefix, 0)
    positions = paligemma.rope_positions(valid)
    logits, _ = paligemma.forward(params, cfg, ids, positions, masks, image_features=image_features)
    return logits


def cached_forward(params, cfg, ids, valid, is_prefix, image_features, n_prefix):
    """Prefill the first n_prefix slots, then feed the rest one token at a time."""
    b, s = ids.shape
    cache = paligemma.init_cache(cfg, b, s)
    masks = paligemma.attention_masks(cfg, valid[:, :n_prefix], is_prefix[:, :n_prefix], 0)
    positions = paligemma.rope_positions(valid[:, :n_prefix])
    first, cache = paligemma.forward(params, cfg, ids[:, :n_prefix], positions, masks,
                                     image_features=image_features, cache=cache)
    steps = [first]
    for t in range(n_prefix, s):
        masks = paligemma.attention_masks(cfg, valid[:, :t + 1], is_prefix[:, :t + 1], t)
        positions = paligemma.rope_positions(valid[:, :t + 1])[:, t:t + 1]
        step, cache = paligemma.forward(params, cfg, ids[:, t:t + 1], positions, masks, cache=cache)
        assert cache.length == t + 1
        steps.append(step)
    return np.concatenate(steps, axis=1)


# --------------------------------------------------------------------------- config sanity


def test_tiny_configs_resolve_as_intended():
    c1, c2 = make_config(_GEMMA1), make_config(_GEMMA2)
    assert c1.num_image_tokens == 4 and c1.image_token_index == IMAGE
    assert not c1.text_config.is_gemma2 and c1.text_config.num_key_value_heads == 1
    assert c2.text_config.is_gemma2 and c2.text_config.num_key_value_heads == 2
    # Gemma-2: even layers slide, odd layers attend fully
    assert [c2.text_config.layer_sliding_window(i) for i in range(3)] == [3, None, 3]
    assert c1.text_config.layer_sliding_window(0) is None
    assert c1.text_config.query_scale == pytest.approx(8 ** -0.5)
    assert c2.text_config.query_scale == pytest.approx(12 ** -0.5)  # not head_dim^-0.5


# --------------------------------------------------------------------------- masks / positions


def _bool(rows):
    return np.array(rows, bool)


# Row 0: two left pads, a 3-token prefix, 1 suffix token. Row 1: 4-token prefix, 2 suffix tokens.
_VALID = _bool([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
_PREFIX = _bool([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])


def test_prefix_lm_mask_golden():
    expected = _bool([
        [[0, 0, 0, 0, 0, 0],   # pad queries see nothing real before them
         [0, 0, 0, 0, 0, 0],
         [0, 0, 1, 1, 1, 0],   # prefix: bidirectional over the prefix, never the suffix
         [0, 0, 1, 1, 1, 0],
         [0, 0, 1, 1, 1, 0],
         [0, 0, 1, 1, 1, 1]],  # suffix: causal, sees the whole prefix, never a pad
        [[1, 1, 1, 1, 0, 0],
         [1, 1, 1, 1, 0, 0],
         [1, 1, 1, 1, 0, 0],
         [1, 1, 1, 1, 0, 0],
         [1, 1, 1, 1, 1, 0],
         [1, 1, 1, 1, 1, 1]],
    ])
    mask = paligemma.prefix_lm_mask(_VALID, _PREFIX, 0)
    assert mask.dtype == bool and mask.shape == (2, 6, 6)
    np.testing.assert_array_equal(mask, expected)
    # the last queries alone (a decode step over cache slots) are the same rows
    np.testing.assert_array_equal(paligemma.prefix_lm_mask(_VALID, _PREFIX, 4), expected[:, 4:])


def test_prefix_lm_mask_sliding_window_golden():
    expected = _bool([
        [[0, 0, 0, 0, 0, 0],
         [0, 0, 0, 0, 0, 0],
         [0, 0, 1, 1, 1, 0],   # prefix never windowed (slot 2 <-> 4 is 2 apart, window 2)
         [0, 0, 1, 1, 1, 0],
         [0, 0, 1, 1, 1, 0],
         [0, 0, 0, 0, 1, 1]],  # suffix windowed: i - j < 2
        [[1, 1, 1, 1, 0, 0],
         [1, 1, 1, 1, 0, 0],
         [1, 1, 1, 1, 0, 0],
         [1, 1, 1, 1, 0, 0],
         [0, 0, 0, 1, 1, 0],
         [0, 0, 0, 0, 1, 1]],
    ])
    np.testing.assert_array_equal(paligemma.prefix_lm_mask(_VALID, _PREFIX, 0, sliding_window=2),
                                  expected)
    np.testing.assert_array_equal(
        paligemma.prefix_lm_mask(_VALID, _PREFIX, 5, sliding_window=2), expected[:, 5:])


def test_attention_masks_per_layer_type():
    m1 = paligemma.attention_masks(make_config(_GEMMA1), _VALID, _PREFIX, 0)
    assert set(m1) == {"full_attention"}
    m2 = paligemma.attention_masks(make_config(_GEMMA2, sliding_window=2), _VALID, _PREFIX, 0)
    assert set(m2) == {"full_attention", "sliding_attention"}
    np.testing.assert_array_equal(m2["full_attention"], m1["full_attention"])
    assert m2["sliding_attention"][1, 5, 0] == 0 and m2["full_attention"][1, 5, 0] == 1


def test_rope_positions_one_based_counting_real_tokens():
    valid = _bool([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    pos = paligemma.rope_positions(valid)
    assert pos.shape == (3, 5) and np.issubdtype(pos.dtype, np.integer)
    assert pos[0, 2:].tolist() == [1, 2, 3]
    assert pos[1].tolist() == [1, 2, 3, 4, 5]
    assert pos[2, 4] == 1


# --------------------------------------------------------------------------- merge / embed


def test_merge_places_image_features_in_order():
    rng = np.random.default_rng(1)
    text = rng.standard_normal((2, 7, 3)).astype(F32)
    feats = rng.standard_normal((2, 3, 3)).astype(F32)
    ids = np.array([[IMAGE, 5, IMAGE, IMAGE, 6, 7, 8],
                    [9, 9, IMAGE, IMAGE, IMAGE, 1, 1]])
    before = text.copy()
    out = paligemma.merge(text, feats, ids, IMAGE)
    for b, where in enumerate([[0, 2, 3], [2, 3, 4]]):
        for j, pos in enumerate(where):
            np.testing.assert_array_equal(out[b, pos], feats[b, j])
        others = [i for i in range(7) if i not in where]
        np.testing.assert_array_equal(out[b, others], text[b, others])
    np.testing.assert_array_equal(text, before)  # input left untouched


@pytest.mark.parametrize("ids", [
    [[IMAGE, IMAGE, 5, 6], [IMAGE, IMAGE, IMAGE, 6]],   # too few in row 0
    [[IMAGE, IMAGE, IMAGE, IMAGE], [IMAGE, IMAGE, IMAGE, 6]],  # too many in row 0
    [[5, 6, 7, 8], [IMAGE, IMAGE, IMAGE, 6]],           # none
])
def test_merge_wrong_image_token_count_raises(ids):
    text = np.zeros((2, 4, 3), F32)
    feats = np.ones((2, 3, 3), F32)
    with pytest.raises(ValueError):
        paligemma.merge(text, feats, np.array(ids), IMAGE)


SQRT_20 = 4.47213595499958  # sqrt(hidden_size 20), the Gemma embedding normalizer (float64)


def test_embedding_scale_is_sqrt_hidden_in_float32():
    cfg = make_config(_GEMMA1)
    # one-hot rows read the scale itself: sqrt(D) rounded once to float32 (HF builds it as
    # torch.tensor(hidden_size ** 0.5, dtype=activations)), not sqrt(head_dim) nor 1
    eye = np.eye(64, 20, dtype=F32)
    scale = gemma.embed({"weight": eye}, np.array([[0, 19]]), cfg.text_config)
    assert scale.dtype == np.float32
    np.testing.assert_array_equal(scale[0, [0, 1], [0, 19]], [F32(SQRT_20)] * 2)
    table = np.random.default_rng(2).standard_normal((64, 20)).astype(F32)
    ids = np.array([[0, 5, 63, 7]])
    x = gemma.embed({"weight": table}, ids, cfg.text_config)
    np.testing.assert_allclose(x, table[ids].astype(np.float64) * SQRT_20, rtol=2e-7, atol=0)
    # an id beyond the table (an out-of-vocabulary <image>) reads row 0
    oov = gemma.embed({"weight": table}, np.array([[64, 1000]]), cfg.text_config)
    np.testing.assert_allclose(oov[0], table[[0, 0]].astype(np.float64) * SQRT_20, rtol=2e-7)


def test_embedding_of_bfloat16_table_is_float32():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    cfg = make_config(_GEMMA1)
    table = np.random.default_rng(3).standard_normal((64, 20)).astype(ml_dtypes.bfloat16)
    x = gemma.embed({"weight": table}, np.array([[3, 4]]), cfg.text_config)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x[0], table[[3, 4]].astype(np.float64) * SQRT_20, rtol=2e-7, atol=0)


# --------------------------------------------------------------------------- vision


def test_encode_image_shapes_and_bidirectional_patches():
    cfg = make_config(_GEMMA1)
    params = random_params(cfg, seed=4)
    rng = np.random.default_rng(4)
    pix = random_pixels(rng, 2, cfg)
    hidden = []
    feats = paligemma.encode_image(params, pix, cfg, hidden_states=hidden)
    assert feats.dtype == np.float32 and feats.shape == (2, 4, 20)
    assert len(hidden) == cfg.vision_config.num_hidden_layers + 1
    # changing only the last patch changes the first token's features (no causal mask) and
    # leaves the other image untouched (rows are independent)
    pix2 = pix.copy()
    pix2[0, :, 4:, 4:] += 1.0
    feats2 = paligemma.encode_image(params, pix2, cfg)
    assert np.abs(feats2[0, 0] - feats[0, 0]).max() > 1e-4
    np.testing.assert_allclose(feats2[1], feats[1], atol=1e-6)


def test_vision_embeddings_add_one_position_vector_per_patch():
    """`SiglipVisionEmbeddings`: conv patches + position_embedding[p] for patch p (row-major)."""
    cfg = make_config(_GEMMA1)
    emb = random_params(cfg, seed=3)["vision_tower"]["embeddings"]
    conv, table = emb["patch_embedding"], emb["position_embedding"]["weight"]
    black = np.zeros((1, 3, 8, 8), F32)  # the conv then gives its bias alone
    np.testing.assert_allclose(siglip.embeddings(black, **emb)[0],
                               conv["bias"].astype(np.float64) + table, atol=1e-6)
    # a pattern in patch 1 only (top-right 4x4 block) moves row 1 alone
    pix = black.copy()
    pix[0, :, :4, 4:] = 1.0
    delta = siglip.embeddings(pix, **emb)[0] - siglip.embeddings(black, **emb)[0]
    np.testing.assert_allclose(delta[1], conv["weight"].astype(np.float64).sum(axis=(1, 2, 3)),
                               atol=1e-5)
    np.testing.assert_array_equal(delta[[0, 2, 3]], 0.0)


def test_vision_tower_and_decoder_end_in_their_final_norms():
    """SigLIP's last hidden state goes through its post LayerNorm (each patch: mean = bias,
    standard deviation = weight) and Gemma's decoder through its final RMSNorm (each position:
    root mean square = 1 + w): with constant norm weights both are visible in the output."""
    cfg = make_config(_GEMMA2)
    params = random_params(cfg, seed=6)
    vt, lm = params["vision_tower"], params["language_model"]
    dv, d = cfg.vision_config.hidden_size, cfg.text_config.hidden_size
    vt["post_layernorm"] = {"weight": np.full(dv, 2.0, F32), "bias": np.full(dv, 3.0, F32)}
    out = siglip.vision_tower(vt, random_pixels(np.random.default_rng(6), 2, cfg), cfg.vision_config)
    np.testing.assert_allclose(out.mean(-1), 3.0, atol=1e-5)
    np.testing.assert_allclose(out.std(-1), 2.0, rtol=1e-4)
    lm["norm"] = {"weight": np.full(d, 1.5, F32)}  # scale 1 + 1.5
    ids = prompt(np.random.default_rng(6), 3, cfg)[None]
    valid = np.ones(ids.shape, bool)
    h = gemma.decoder(lm, gemma.embed(lm["embed_tokens"], ids, cfg.text_config),
                      paligemma.rope_positions(valid), paligemma.attention_masks(cfg, valid, valid, 0),
                      cfg.text_config)
    np.testing.assert_allclose(np.sqrt((h.astype(np.float64) ** 2).mean(-1)), 2.5, rtol=1e-4)


@pytest.mark.parametrize("text", [_GEMMA1, _GEMMA2], ids=["gemma", "gemma2"])
def test_generation_picks_what_full_passes_over_masks_built_here_pick(text):
    """`generate_tokens` on the NumPy backend (the slots, the host decode state, the KV-cache)
    picks the greedy tokens of full uncached passes whose masks and positions this test builds
    itself: image and prompt see each other both ways, each generated token is causal (and
    windowed on the sliding layers), positions count 1, 2, ..."""
    from npgemma.generation.generate import GenerationConfig, generate_tokens
    from npgemma.generation.numpy_backend import NumpyBackend

    cfg = dataclasses.replace(make_config(text), eos_token_id=-1)  # never stops early
    params = random_params(cfg, seed=11)
    rng = np.random.default_rng(11)
    pix, ids = random_pixels(rng, 1, cfg), prompt(rng, 5, cfg)
    feats = paligemma.encode_image(params, pix, cfg)
    window = cfg.text_config.sliding_window
    want: list[int] = []
    for _ in range(6):
        seq = np.concatenate([ids, want]).astype(np.int64)
        q, k = np.arange(len(seq))[:, None], np.arange(len(seq))[None]
        both = (q < len(ids)) & (k < len(ids))
        masks = {"full_attention": ((k <= q) | both)[None]}
        if window:
            masks["sliding_attention"] = (((k <= q) & (q - k < window)) | both)[None]
        logits, _ = paligemma.forward(params, cfg, seq[None], np.arange(1, len(seq) + 1)[None],
                                      masks, image_features=feats)
        want.append(int(logits[0, -1].argmax()))
    got = generate_tokens(NumpyBackend(), params, cfg, ids[None], pix, GenerationConfig(max_new_tokens=6))
    assert [int(t[0]) for t in got] == want


# --------------------------------------------------------------------------- naive float64 layers


def _f64(tree):
    return {k: _f64(v) if isinstance(v, dict) else np.asarray(v, np.float64) for k, v in tree.items()}


def _gelu64(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x * x * x)))


def _rms64(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * (1 + w)


def _ln64(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


def _softmax64(s, mask):
    s = np.where(mask, s, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _rope64(x, pos, theta):
    """x [L, heads, H] float64, split-half pairs (i, i + H/2) rotated by pos * theta^(-2i/H)."""
    h = x.shape[-1]
    ang = pos[:, None] * theta ** (-np.arange(0, h, 2) / h)  # [L, H/2]
    c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
    x1, x2 = x[..., :h // 2], x[..., h // 2:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)


def _naive_gemma_layer(x, p, pos, mask, t):
    """One Gemma / Gemma-2 decoder layer for one row, written out in float64. x [L, D]."""
    p, eps = _f64(p), t.rms_norm_eps
    n, kvh, h = t.num_attention_heads, t.num_key_value_heads, t.head_dim
    a = _rms64(x, p["input_layernorm"]["weight"], eps)
    att = p["self_attn"]
    q = _rope64((a @ att["q_proj"]["weight"].T).reshape(len(x), n, h), pos, t.rope_theta)
    k = _rope64((a @ att["k_proj"]["weight"].T).reshape(len(x), kvh, h), pos, t.rope_theta)
    v = (a @ att["v_proj"]["weight"].T).reshape(len(x), kvh, h)
    scale = (t.query_pre_attn_scalar if t.is_gemma2 else h) ** -0.5
    heads = []
    for i in range(n):
        j = i // (n // kvh)
        sc = q[:, i] @ k[:, j].T * scale
        if t.attn_logit_softcapping is not None:
            sc = t.attn_logit_softcapping * np.tanh(sc / t.attn_logit_softcapping)
        heads.append(_softmax64(sc, mask) @ v[:, j])
    o = np.concatenate(heads, -1) @ att["o_proj"]["weight"].T
    mlp = p["mlp"]

    def ffw(z):
        return (_gelu64(z @ mlp["gate_proj"]["weight"].T) * (z @ mlp["up_proj"]["weight"].T)) \
            @ mlp["down_proj"]["weight"].T

    if t.is_gemma2:
        x = x + _rms64(o, p["post_attention_layernorm"]["weight"], eps)
        return x + _rms64(ffw(_rms64(x, p["pre_feedforward_layernorm"]["weight"], eps)),
                          p["post_feedforward_layernorm"]["weight"], eps)
    x = x + o
    return x + ffw(_rms64(x, p["post_attention_layernorm"]["weight"], eps))


@pytest.mark.parametrize("text, layer_idx", [(_GEMMA1, 0), (_GEMMA2, 0), (_GEMMA2, 1)],
                         ids=["gemma1", "gemma2-sliding", "gemma2-full"])
def test_decoder_layer_matches_naive_float64(text, layer_idx):
    cfg = make_config(text)
    t = cfg.text_config
    params = random_params(cfg, seed=12)
    layer = params["language_model"]["layers"][layer_idx]
    for name in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                 "post_feedforward_layernorm"):  # distinct norms, so swapping two of them shows
        if name in layer:
            layer[name]["weight"] = np.random.default_rng(len(name)).normal(0, 0.5, 20).astype(F32)
    rng = np.random.default_rng(12)
    l = 7
    x = rng.standard_normal((1, l, 20)).astype(F32)
    valid = np.ones((1, l), bool)
    is_prefix = np.array([[True] * 4 + [False] * 3])
    masks = paligemma.attention_masks(cfg, valid, is_prefix, 0)
    mask = masks["sliding_attention" if t.layer_sliding_window(layer_idx) else "full_attention"]
    pos = paligemma.rope_positions(valid)
    cos, sin = rope_tables(pos, t.head_dim, t.rope_theta)
    y = gemma.decoder_layer(x, layer, cos=cos, sin=sin, mask=mask, cfg=t)
    ref = _naive_gemma_layer(x[0].astype(np.float64), layer, pos[0].astype(np.float64), mask[0], t)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y[0], ref, atol=1e-4, rtol=1e-4)


def test_siglip_encoder_layer_matches_naive_float64():
    cfg = make_config(_GEMMA1)
    v = cfg.vision_config
    layer = random_params(cfg, seed=13)["vision_tower"]["encoder"]["layers"][0]
    x = np.random.default_rng(13).standard_normal((1, 4, 16)).astype(F32)
    y = siglip.encoder_layer(x, **layer, cfg=v)
    p, z, eps = _f64(layer), x[0].astype(np.float64), v.layer_norm_eps
    a = _ln64(z, p["layer_norm1"]["weight"], p["layer_norm1"]["bias"], eps)
    att = p["self_attn"]
    proj = {k: a @ att[k]["weight"].T + att[k]["bias"] for k in ("q_proj", "k_proj", "v_proj")}
    h = v.head_dim
    heads = []
    for i in range(v.num_attention_heads):
        cols = slice(i * h, (i + 1) * h)
        w = _softmax64(proj["q_proj"][:, cols] @ proj["k_proj"][:, cols].T * h ** -0.5, True)
        heads.append(w @ proj["v_proj"][:, cols])
    z = z + np.concatenate(heads, -1) @ att["out_proj"]["weight"].T + att["out_proj"]["bias"]
    m = p["mlp"]
    b = _ln64(z, p["layer_norm2"]["weight"], p["layer_norm2"]["bias"], eps)
    z = z + _gelu64(b @ m["fc1"]["weight"].T + m["fc1"]["bias"]) @ m["fc2"]["weight"].T + m["fc2"]["bias"]
    assert y.dtype == np.float32
    np.testing.assert_allclose(y[0], z, atol=1e-4, rtol=1e-4)


def test_projector_is_linear_with_bias():
    cfg = make_config(_GEMMA1)
    lin = random_params(cfg, seed=14)["multi_modal_projector"]["linear"]
    f = np.random.default_rng(14).standard_normal((2, 4, 16)).astype(F32)
    np.testing.assert_allclose(paligemma.project(f, lin),
                               f.astype(np.float64) @ lin["weight"].T.astype(np.float64) + lin["bias"],
                               atol=1e-5)


def test_logits_depend_only_on_relative_positions():
    """RoPE is Gemma's only position signal: shifting every position by a constant is a no-op
    (up to float32 rounding), while a different spacing is not."""
    cfg, params, ids, valid, is_prefix, _, feats = _case(_GEMMA2, 15, [4, 2], 2)
    masks = paligemma.attention_masks(cfg, valid, is_prefix, 0)
    pos = paligemma.rope_positions(valid)

    def run(p):
        return paligemma.forward(params, cfg, ids, p, masks, image_features=feats)[0][valid]

    base = run(pos)
    np.testing.assert_allclose(run(pos + 9), base, atol=1e-4)
    assert np.abs(run(pos * 2) - base).max() > 1e-3


# --------------------------------------------------------------------------- cached == uncached


def _batch(cfg, rng, n_texts, n_suffix):
    """Left-padded rows: image tokens + <bos> + text (prefix), then n_suffix suffix tokens."""
    rows, prefix_lens = [], []
    for n in n_texts:
        p = prompt(rng, n, cfg)
        prefix_lens.append(len(p))
        rows.append(np.concatenate([p, rng.integers(4, IMAGE, size=n_suffix)]))
    ids, valid = left_pad(rows)
    s = ids.shape[1]
    is_prefix = np.zeros_like(valid)
    for i, (row, n_pre) in enumerate(zip(rows, prefix_lens)):
        start = s - len(row)
        is_prefix[i, start:start + n_pre] = True
    return ids, valid, is_prefix, s - n_suffix


def _case(text: dict, seed: int, n_texts: list[int], n_suffix: int):
    """A tiny model and a left-padded batch for it: (cfg, params, ids, valid, is_prefix,
    n_prefix, image features), all from `seed`."""
    cfg = make_config(text)
    params = random_params(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    ids, valid, is_prefix, n_prefix = _batch(cfg, rng, n_texts=n_texts, n_suffix=n_suffix)
    feats = paligemma.encode_image(params, random_pixels(rng, len(n_texts), cfg), cfg)
    return cfg, params, ids, valid, is_prefix, n_prefix, feats


@pytest.mark.parametrize("text", [_GEMMA1, _GEMMA2], ids=["gemma1-mqa", "gemma2-gqa-window"])
def test_cached_generation_equals_uncached(text):
    cfg, params, ids, valid, is_prefix, n_prefix, feats = _case(text, 5, [5, 3], 4)
    full = full_forward(params, cfg, ids, valid, is_prefix, feats)
    cached = cached_forward(params, cfg, ids, valid, is_prefix, feats, n_prefix)
    assert full.dtype == np.float32 and full.shape == (2, ids.shape[1], 64)
    real = valid
    np.testing.assert_allclose(cached[real], full[real], atol=1e-5, rtol=0)


def test_gemma2_window_and_softcaps_have_teeth():
    """The Gemma-2 case above is only meaningful if the window and the caps change the output."""
    cfg, params, ids, valid, is_prefix, n_prefix, feats = _case(_GEMMA2, 5, [5, 3], 4)
    base = full_forward(params, cfg, ids, valid, is_prefix, feats)

    wide = dataclasses.replace(cfg, text_config=dataclasses.replace(cfg.text_config, sliding_window=100))
    wide_logits = full_forward(params, wide, ids, valid, is_prefix, feats)
    # the prefix is never windowed: prefix logits do not depend on the window...
    np.testing.assert_allclose(wide_logits[is_prefix], base[is_prefix], atol=1e-6)
    # ...while suffix tokens (window 3 < prefix length 10) see fewer keys
    suffix = valid & ~is_prefix
    assert np.abs(wide_logits[suffix] - base[suffix]).max() > 1e-3

    uncapped = dataclasses.replace(cfg, text_config=dataclasses.replace(
        cfg.text_config, attn_logit_softcapping=None))
    assert np.abs(full_forward(params, uncapped, ids, valid, is_prefix, feats)[valid]
                  - base[valid]).max() > 1e-3


# --------------------------------------------------------------------------- padding


@pytest.mark.parametrize("text", [_GEMMA1, _GEMMA2], ids=["gemma1", "gemma2"])
def test_left_padded_rows_equal_rows_alone(text):
    cfg, params, ids, valid, is_prefix, _, feats = _case(text, 6, [2, 6, 4], 3)
    assert not valid.all()  # there is padding to ignore
    batch = full_forward(params, cfg, ids, valid, is_prefix, feats)
    assert np.all(np.isfinite(batch))  # pad queries included
    for b in range(3):
        keep = valid[b]
        alone = full_forward(params, cfg, ids[b:b + 1, keep], valid[b:b + 1, keep],
                             is_prefix[b:b + 1, keep], feats[b:b + 1])
        np.testing.assert_allclose(batch[b, keep], alone[0], atol=1e-5, rtol=0)


def test_pad_token_values_do_not_leak():
    """Whatever sits in a padded slot (id, and so its key/value) never reaches real tokens."""
    cfg, params, ids, valid, is_prefix, _, feats = _case(_GEMMA2, 7, [2, 6], 2)
    a = full_forward(params, cfg, ids, valid, is_prefix, feats)
    ids2 = np.where(valid, ids, 17)
    b = full_forward(params, cfg, ids2, valid, is_prefix, feats)
    np.testing.assert_array_equal(a[valid], b[valid])


# --------------------------------------------------------------------------- logits head


def test_final_softcap_bounds_logits_and_keeps_argmax():
    cfg, params, ids, valid, is_prefix, _, feats = _case(_GEMMA2, 8, [4], 2)
    capped = full_forward(params, cfg, ids, valid, is_prefix, feats)
    nocap = dataclasses.replace(cfg, text_config=dataclasses.replace(
        cfg.text_config, final_logit_softcapping=None))
    raw = full_forward(params, nocap, ids, valid, is_prefix, feats)
    cap = cfg.text_config.final_logit_softcapping
    assert np.abs(raw).max() > cap  # the cap bites
    assert np.abs(capped).max() < cap
    np.testing.assert_allclose(capped, cap * np.tanh(raw.astype(np.float64) / cap), atol=1e-5)
    np.testing.assert_array_equal(capped.argmax(-1), raw.argmax(-1))


def test_lm_head_is_tied_to_embeddings_unless_given():
    cfg, params, ids, valid, is_prefix, _, feats = _case(_GEMMA1, 9, [3], 0)
    hidden = []
    masks = paligemma.attention_masks(cfg, valid, is_prefix, 0)
    logits, _ = paligemma.forward(params, cfg, ids, paligemma.rope_positions(valid), masks,
                                  image_features=feats, hidden_states=hidden)
    table = params["language_model"]["embed_tokens"]["weight"]
    np.testing.assert_allclose(logits, hidden[-1] @ table.T, atol=1e-5)
    other = {**params, "lm_head": {"weight": -table}}
    flipped, _ = paligemma.forward(other, cfg, ids, paligemma.rope_positions(valid), masks,
                                   image_features=feats)
    np.testing.assert_allclose(flipped, -logits, atol=1e-5)


def test_last_only_returns_the_last_position():
    cfg, params, ids, valid, is_prefix, _, feats = _case(_GEMMA2, 10, [3, 1], 0)
    full = full_forward(params, cfg, ids, valid, is_prefix, feats)
    masks = paligemma.attention_masks(cfg, valid, is_prefix, 0)
    last, _ = paligemma.forward(params, cfg, ids, paligemma.rope_positions(valid), masks,
                                image_features=feats, last_only=True)
    assert last.shape == (2, 1, 64)
    np.testing.assert_allclose(last[:, 0], full[:, -1], atol=1e-6)


# --------------------------------------------------------------------------- KV-cache


def test_cache_shapes_follow_kv_heads():
    for text, k in [(_GEMMA1, 1), (_GEMMA2, 2)]:
        cfg = make_config(text)
        cache = paligemma.init_cache(cfg, batch=3, max_length=11)
        assert len(cache.keys) == len(cache.values) == cfg.text_config.num_hidden_layers
        assert cache.keys[0].shape == (3, k, 11, 8) and cache.keys[0].dtype == np.float32
        assert cache.length == 0 and cache.max_length == 11


def test_kv_cache_overflow_raises():
    cfg, params, ids, valid, is_prefix, _, feats = _case(_GEMMA1, 11, [2], 0)  # 7 tokens
    masks = paligemma.attention_masks(cfg, valid, is_prefix, 0)
    positions = paligemma.rope_positions(valid)
    # the prompt alone does not fit
    with pytest.raises(ValueError, match="overflow"):
        paligemma.forward(params, cfg, ids, positions, masks, image_features=feats,
                          cache=paligemma.init_cache(cfg, 1, ids.shape[1] - 1))
    # the prompt fits exactly; one more decode step does not
    cache = paligemma.init_cache(cfg, 1, ids.shape[1])
    _, cache = paligemma.forward(params, cfg, ids, positions, masks, image_features=feats, cache=cache)
    assert cache.length == ids.shape[1]
    valid2 = np.ones((1, ids.shape[1] + 1), bool)
    prefix2 = np.concatenate([is_prefix, [[False]]], axis=1)
    masks2 = paligemma.attention_masks(cfg, valid2, prefix2, ids.shape[1])
    with pytest.raises(ValueError, match="overflow"):
        paligemma.forward(params, cfg, np.array([[5]]), paligemma.rope_positions(valid2)[:, -1:],
                          masks2, cache=cache)


def test_kv_cache_write_returns_filled_slots():
    cache = kv_cache.init_cache(num_layers=1, batch=1, kv_heads=1, max_length=4, head_dim=2)
    k1 = np.full((1, 1, 2, 2), 1.0, F32)
    keys, values = kv_cache.write(cache, 0, k1, -k1)
    assert keys.shape == (1, 1, 2, 2)
    kv_cache.advance(cache, 2)
    keys, values = kv_cache.write(cache, 0, np.full((1, 1, 1, 2), 2.0, F32), np.zeros((1, 1, 1, 2), F32))
    np.testing.assert_array_equal(keys[0, 0, :, 0], [1.0, 1.0, 2.0])
    np.testing.assert_array_equal(values[0, 0, :, 0], [-1.0, -1.0, 0.0])
    kv_cache.advance(cache, 1)
    with pytest.raises(ValueError):
        kv_cache.write(cache, 0, np.zeros((1, 1, 2, 2), F32), np.zeros((1, 1, 2, 2), F32))


def test_prefix_lm_mask_is_the_docstring_grid():
    """The worked example in `prefix_lm_mask`'s docstring, as the function computes it."""
    from npgemma.paligemma import prefix_lm_mask

    valid = np.array([[0, 1, 1, 1, 1, 1]], bool)
    prefix = np.array([[0, 1, 1, 1, 0, 0]], bool)
    grid = ["000000", "011100", "011100", "011100", "011110", "011111"]
    want = np.array([[c == "1" for c in row] for row in grid])
    np.testing.assert_array_equal(prefix_lm_mask(valid, prefix, 0)[0], want)
    np.testing.assert_array_equal(prefix_lm_mask(valid, prefix, 4)[0], want[4:])  # decode rows


def test_slots_of_a_padded_prompt_and_two_generated_tokens_give_that_grid():
    """`Slots` (what generation and teacher forcing build their masks and positions from): a
    prompt with one pad, then two generated tokens, is the same grid, positions 1-based on
    real tokens only."""
    from npgemma.generation.slots import Slots

    slots = Slots.prompt(np.array([[0, 1, 1, 1]])).append(2)
    assert slots.valid.tolist() == [[False, True, True, True, True, True]]
    assert slots.is_prefix.tolist() == [[False, True, True, True, False, False]]
    np.testing.assert_array_equal(slots.positions(), [[0, 1, 2, 3, 4, 5]])
    np.testing.assert_array_equal(slots.positions(4), [[4, 5]])
    grid = ["000000", "011100", "011100", "011100", "011110", "011111"]
    want = np.array([[c == "1" for c in row] for row in grid])
    masks = slots.masks(make_config(_GEMMA1), 4)
    np.testing.assert_array_equal(masks["full_attention"][0], want[4:])
