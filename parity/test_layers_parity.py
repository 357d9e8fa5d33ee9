"""Per-layer parity, hypothesis-driven: every NumPy math function against its torch twin.

The NumPy function (float32) is the reference; the twin runs on NPGEMMA_TEST_DEVICE in each
dtype of NPGEMMA_TEST_DTYPES. For bf16/fp16 the shared inputs (activations and float32 weights)
are first rounded to that dtype's grid (`strategies.on_grid`), so both sides start from the
same numbers and `npgemma.compare.tolerances` bounds the error of *computing* in that dtype.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from npgemma import gemma as np_gemma  # noqa: E402
from npgemma import kv_cache as np_kv_cache  # noqa: E402
from npgemma import layers as np_layers  # noqa: E402
from npgemma import paligemma as np_paligemma  # noqa: E402
from npgemma import siglip as np_siglip  # noqa: E402
from npgemma.compare.tolerances import assert_close  # noqa: E402
from npgemma.config import VisionConfig  # noqa: E402
from npgemma.torch_backend import gemma as pt_gemma  # noqa: E402
from npgemma.torch_backend import kv_cache as pt_kv_cache  # noqa: E402
from npgemma.torch_backend import layers as pt_layers  # noqa: E402
from npgemma.torch_backend import paligemma as pt_paligemma  # noqa: E402
from npgemma.torch_backend import siglip as pt_siglip  # noqa: E402
from parity.strategies import (  # noqa: E402
    EPSILONS,
    HEAD_DIMS,
    SCALES,
    SEEDS,
    THETAS,
    WIDTHS,
    ArraySpec,
    AttentionSpec,
    DecoderLayerSpec,
    MaskSpec,
    ModelSpec,
    VisionLayerSpec,
    array_specs,
    attention_specs,
    decoder_layer_params,
    decoder_layer_specs,
    gemma1,
    gemma2,
    layer_norm_params,
    linear_params,
    model_specs,
    normal,
    on_grid,
    paligemma_params,
    rms_norm_params,
    text_configs,
    tiny_paligemma,
    to_numpy,
    to_torch,
    torch_dtype,
    vision_layer_params,
    vision_layer_specs,
    vision_tower_params,
)


def check(actual, expected, component: str, dtype: str, what: str = ""):
    """The torch result (any dtype, any device) against the float32 NumPy reference."""
    return assert_close(to_numpy(actual), expected, component, dtype, what)


def check_rows(actual, expected, real: np.ndarray, component: str, dtype: str, what: str = ""):
    """Like `check`, for outputs whose leading axes [B, L] hold query positions (or cache slots),
    `real` bool[B, L] marking those that attend to at least one key.

    A query that sees no key (a left-padding position) has no defined output: the contract
    (docs/numerics.md, "Masks") is only that it stays finite. The reference returns the uniform
    average over all keys, which the twin reproduces in float32 — the mask value there is far
    below any score — so float32 compares every row. In bf16/fp16 the mask value sits within
    the dtype's rounding of `score + mask` (fp16: -65504, ulp 32), the weights of such a row are
    arbitrary, and only the real rows are compared, the others checked to be finite.
    """
    a = to_numpy(actual)
    if dtype == "float32":
        return assert_close(a, expected, component, dtype, what)
    bad = ~np.isfinite(a)
    assert not bad.any(), (f"{what or component} [{dtype}]: {int(bad.sum())} non-finite values, "
                           f"first at {tuple(int(i) for i in np.argwhere(bad)[0])}")
    return assert_close(a[real], expected[real], component, dtype, what)


def heads_last(x: np.ndarray) -> np.ndarray:
    """[B, N, L, H] -> [B, L, N, H], so that query positions lead for `check_rows`."""
    return np.swapaxes(x, 1, 2)


# --------------------------------------------------------------------------------------------
# Elementwise and reductions.

@given(x=array_specs(max_dims=3), out_features=WIDTHS, bias=st.booleans(), seed=SEEDS)
@example(x=ArraySpec((1, 5), 1e3, 0), out_features=8, bias=True, seed=0)  # extreme activations
def test_linear(x, out_features, bias, seed, dtype, device):
    rng = np.random.default_rng(seed)
    xs, p = on_grid((x.draw(), linear_params(rng, out_features, x.shape[-1], bias)), dtype)
    got = pt_layers.linear(*to_torch((xs,), device, dtype), **to_torch(p, device, dtype))
    check(got, np_layers.linear(xs, **p), "linear", dtype)


@given(x=array_specs(offsets=True, min_last=4), eps=EPSILONS, seed=SEEDS)
@example(x=ArraySpec((2, 3, 16), 1e3, 0, offset=-1e4), eps=1e-6, seed=0)  # huge mean and spread
def test_layer_norm(x, eps, seed, dtype, device):
    """Widths >= 4. A (near-)constant row is ill-conditioned — d out / d x = w / sqrt(var + eps),
    1e3 at eps 1e-6 — and torch's kernel forms x * rstd - mean * rstd, whose float32 round-off
    that factor then amplifies (width 1, |x| = 100 in fp16: 2e-3 off the exact `bias`)."""
    xs, p = on_grid((x.draw(), layer_norm_params(np.random.default_rng(seed), x.shape[-1])), dtype)
    got = pt_layers.layer_norm(to_torch(xs, device, dtype), **to_torch(p, device, dtype), eps=eps)
    check(got, np_layers.layer_norm(xs, **p, eps=eps), "layer_norm", dtype)


@given(x=array_specs(offsets=True), eps=EPSILONS, seed=SEEDS)
@example(x=ArraySpec((2, 3, 16), 1e3, 0), eps=1e-6, seed=0)  # Gemma-sized residual magnitudes
def test_rms_norm(x, eps, seed, dtype, device):
    xs, p = on_grid((x.draw(), rms_norm_params(np.random.default_rng(seed), x.shape[-1])), dtype)
    got = pt_layers.rms_norm(to_torch(xs, device, dtype), **to_torch(p, device, dtype), eps=eps)
    check(got, np_layers.rms_norm(xs, **p, eps=eps), "rms_norm", dtype)


@given(x=array_specs())
@example(x=ArraySpec((4, 7), 1e3, 0))  # x³ of 1e9 in the cubic term: no overflow, no float64
def test_gelu_tanh(x, dtype, device):
    xs = on_grid(x.draw(), dtype)
    check(pt_layers.gelu_tanh(to_torch(xs, device, dtype)), np_layers.gelu_tanh(xs), "gelu_tanh", dtype)


@given(x=array_specs(), axis_seed=st.integers(0, 3), masked=st.sampled_from([0.0, 0.3, 1.0]))
@example(x=ArraySpec((2, 5), 1e3, 0), axis_seed=1, masked=0.3)
@example(x=ArraySpec((3, 4), 1.0, 0), axis_seed=1, masked=1.0)  # fully masked rows: uniform
def test_softmax(x, axis_seed, masked, dtype, device):
    """Including entries at the mask value, finfo(dtype).min as the twin's attention adds it
    (float32's would round to -inf in bf16/fp16) — rows of them must come out uniform."""
    a = x.draw()
    lowest = np.float32(pt_layers.mask_value(torch_dtype(dtype)))
    a = np.where(np.random.default_rng(x.seed + 1).random(a.shape) < masked, lowest, a)
    axis = axis_seed % a.ndim - a.ndim  # a negative axis in range
    xs = on_grid(a.astype(np.float32), dtype)
    check(pt_layers.softmax(to_torch(xs, device, dtype), axis=axis), np_layers.softmax(xs, axis=axis),
          "softmax", dtype)


@given(x=array_specs(), cap=st.sampled_from([None, 0.5, 5.0, 30.0, 50.0]))
@example(x=ArraySpec((3, 4), 1e3, 0), cap=30.0)  # deep saturation
def test_softcap(x, cap, dtype, device):
    xs = on_grid(x.draw(), dtype)
    check(pt_layers.softcap(to_torch(xs, device, dtype), cap), np_layers.softcap(xs, cap),
          "softcap", dtype)


# --------------------------------------------------------------------------------------------
# RoPE.
#
# numpy's and torch's float32 `pow` are each within an ulp of the truth (CPU; CUDA's powf
# within 4) but not always the *same* ulp, so an inv_freq entry (< 1) may differ by a couple
# of ulps, 2^-24 each (seen: 2 ulps, head_dim 18, theta 1e4). The angle position · inv_freq
# then differs by up to position · |Δinv_freq|, and so do cos/sin: ~1e-3 at position 8192
# with 2 ulps (the same holds between numpy and HF, whose inv_freq is torch's). The `rope` row
# (limit 2e-5 on tables of scale 1) is met with room for positions <= 64 (<= 8e-6 on the CPU),
# which `POSITIONS` draws; `test_rope_up_to_the_position_limit` draws positions up to the
# models' max_position_embeddings (8192) against that derived bound instead.
POSITIONS = st.integers(0, 64)
MAX_POSITION = 8192  # Gemma's and Gemma-2's max_position_embeddings
@given(head_dim=st.integers(1, 256).map(lambda h: 2 * h), theta=THETAS)
def test_rope_inv_freq_within_a_few_ulps(head_dim, theta, device):
    got = pt_layers.rope_inv_freq(head_dim, theta, device=device)
    assert got.dtype == torch.float32
    maxulp = 2 if device.type == "cpu" else 6  # 1 (numpy) + 1 or 4 (torch pow) + the 1/x
    np.testing.assert_array_max_ulp(to_numpy(got), np_layers.rope_inv_freq(head_dim, theta),
                                    maxulp=maxulp)


@st.composite
def positions(draw, batch=None, length=None):
    b = draw(st.integers(1, 3)) if batch is None else batch
    n = draw(st.integers(1, 9)) if length is None else length
    flat = draw(st.lists(POSITIONS, min_size=b * n, max_size=b * n))
    return np.array(flat, np.int64).reshape(b, n)


@given(pos=positions(), head_dim=HEAD_DIMS, theta=THETAS)
@example(pos=np.array([[64]]), head_dim=18, theta=10000.0)
def test_rope_tables(pos, head_dim, theta, dtype, device):
    cos, sin = pt_layers.rope_tables(torch.from_numpy(pos).to(device), head_dim, theta,
                              dtype=torch_dtype(dtype))
    cos_ref, sin_ref = np_layers.rope_tables(pos, head_dim, theta)
    assert cos.dtype == torch_dtype(dtype)
    check(cos, cos_ref, "rope", dtype, "cos")
    check(sin, sin_ref, "rope", dtype, "sin")


@given(data=st.data(), heads=st.sampled_from([1, 2, 4, 8]), head_dim=HEAD_DIMS, theta=THETAS,
       scale=SCALES, seed=SEEDS)
def test_apply_rope(data, heads, head_dim, theta, scale, seed, dtype, device):
    pos = data.draw(positions())
    b, n = pos.shape
    x = on_grid(normal(np.random.default_rng(seed), (b, heads, n, head_dim), scale), dtype)
    cos, sin = pt_layers.rope_tables(torch.from_numpy(pos).to(device), head_dim, theta,
                              dtype=torch_dtype(dtype))
    got = pt_layers.apply_rope(to_torch(x, device, dtype), cos, sin)
    check(got, np_layers.apply_rope(x, *np_layers.rope_tables(pos, head_dim, theta)), "rope", dtype)


def _angle_bound(pos: np.ndarray, head_dim: int, theta: float, device) -> float:
    """The largest |cos/sin difference| two correct float32 RoPE tables can have: position times
    the measured inv_freq difference, plus the float32 rounding of the angle (half an ulp on
    each side) and of cos/sin themselves."""
    inv_np = np_layers.rope_inv_freq(head_dim, theta).astype(np.float64)
    inv_pt = to_numpy(pt_layers.rope_inv_freq(head_dim, theta, device=device)).astype(np.float64)
    top = float(pos.max())
    angle_ulp = float(np.spacing(np.float32(top * inv_np.max())))
    return top * float(np.abs(inv_np - inv_pt).max()) + angle_ulp + 4e-7


@given(data=st.data(), head_dim=HEAD_DIMS, theta=THETAS, seed=SEEDS)
@example(data=None, head_dim=18, theta=10000.0, seed=0)
def test_rope_up_to_the_position_limit(data, head_dim, theta, seed, device):
    """Positions up to max_position_embeddings: tables and rotated vectors agree within the
    bound the inv_freq ulps allow (a wrong position, frequency or pairing is off by O(1))."""
    if data is None:
        pos = np.array([[0, 1, MAX_POSITION - 1, MAX_POSITION]], np.int64)
    else:
        pos = np.array(data.draw(st.lists(st.integers(0, MAX_POSITION), min_size=1, max_size=8)),
                       np.int64)[None]
    bound = _angle_bound(pos, head_dim, theta, device)
    cos, sin = pt_layers.rope_tables(torch.from_numpy(pos).to(device), head_dim, theta,
                                     dtype=torch.float32)
    cos_ref, sin_ref = np_layers.rope_tables(pos, head_dim, theta)
    np.testing.assert_allclose(to_numpy(cos), cos_ref, rtol=0, atol=bound)
    np.testing.assert_allclose(to_numpy(sin), sin_ref, rtol=0, atol=bound)
    x = normal(np.random.default_rng(seed), (1, 2, pos.shape[1], head_dim))
    got = pt_layers.apply_rope(to_torch(x, device, "float32"), cos, sin)
    ref = np_layers.apply_rope(x, cos_ref, sin_ref)
    # each output is a·cos ± b·sin: the table error times |a| + |b|, plus float32 rounding
    limit = 2 * float(np.abs(x).max()) * (bound + 1e-6)
    np.testing.assert_allclose(to_numpy(got), ref, rtol=0, atol=limit)


# --------------------------------------------------------------------------------------------
# Attention: the torch twin runs fused SDPA without a cap and an explicit path with one.

def _mask(kind, b, l, s, pads=None, prefix=None, window=None):
    pads = pads or (0,) * b
    prefix = prefix if prefix is not None else tuple(s - p for p in pads)
    return MaskSpec(kind, b, l, s, tuple(pads), tuple(prefix), window)


DECODE_1_OF_7 = _mask("causal", 2, 1, 7, prefix=(0, 0))        # L=1 after 6 cached keys
PADDED_FROM_0 = _mask("padded", 2, 5, 5, pads=(0, 3), prefix=(2, 1))  # row 1: 3 blind queries
PREFIX_LM = _mask("prefix_lm", 1, 6, 6, prefix=(3,))
SLIDING = _mask("sliding", 1, 6, 8, prefix=(4,), window=2)


@given(spec=attention_specs())
# Each case on both torch paths: fused SDPA (no cap) and the explicit one (with a cap).
@example(spec=AttentionSpec((8, 1), 16, DECODE_1_OF_7, 2.0, 1.0, 0.25, None, 1))   # MQA decode
@example(spec=AttentionSpec((8, 1), 16, DECODE_1_OF_7, 2.0, 1.0, 0.25, 50.0, 1))
@example(spec=AttentionSpec((4, 2), 8, PADDED_FROM_0, 1.0, 1.0, 8 ** -0.5, None, 2))  # padding
@example(spec=AttentionSpec((4, 2), 8, PADDED_FROM_0, 1.0, 1.0, 8 ** -0.5, 0.5, 2))
@example(spec=AttentionSpec((2, 2), 4, PREFIX_LM, 3.0, 1e3, 0.5, None, 3))   # extreme values
@example(spec=AttentionSpec((2, 2), 4, PREFIX_LM, 3.0, 1e3, 0.5, 50.0, 3))
@example(spec=AttentionSpec((4, 4), 4, SLIDING, 3.0, 1.0, 0.5, None, 4))     # sliding window
@example(spec=AttentionSpec((4, 4), 4, SLIDING, 3.0, 1.0, 0.5, 5.0, 4))
def test_attention(spec, dtype, device):
    q, k, v, mask = on_grid(spec.arrays(low_precision=dtype != "float32"), dtype)
    got = pt_layers.attention(*to_torch((q, k, v, mask), device, dtype), scale=spec.scale,
                       logit_cap=spec.logit_cap)
    expected = np_layers.attention(q, k, v, mask, scale=spec.scale, logit_cap=spec.logit_cap)
    assert got.dtype == torch_dtype(dtype)
    check_rows(heads_last(to_numpy(got)), heads_last(expected), mask.any(-1), "attention", dtype)


# Pinned to every dtype (not only NPGEMMA_TEST_DTYPES): the fp16 case is a regression test.
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("logit_cap", [None, 50.0], ids=["sdpa", "softcap"])
def test_attention_fully_masked_row_stays_finite(logit_cap, dtype, device):
    """A query that sees no key (left padding) must come out finite, even when its scores are
    very negative: in fp16, `score + (-65504)` overflows to -inf below score -16, and a row of
    -inf turns softmax into NaN — which then reaches every real token of the batch row through
    `0 * NaN` in the next layer's weights @ values. Real rows must still match."""
    b, n, kv, l, s, h = 1, 2, 1, 2, 2, 4
    q = np.full((b, n, l, h), 4.0, np.float32)
    k = np.full((b, kv, s, h), -4.0, np.float32)               # every score is -64 * scale
    v = normal(np.random.default_rng(0), (b, kv, s, h))
    mask = np.array([[[False, False], [True, True]]])          # query 0 sees nothing
    got = pt_layers.attention(*to_torch((q, k, v, mask), device, dtype), scale=1.0, logit_cap=logit_cap)
    expected = np_layers.attention(q, k, v, mask, scale=1.0, logit_cap=logit_cap)
    check_rows(heads_last(to_numpy(got)), heads_last(expected), mask.any(-1), "attention", dtype)


# --------------------------------------------------------------------------------------------
# SigLIP.

@given(spec=vision_layer_specs())
def test_vision_embeddings(spec, dtype, device):
    cfg, rng = spec.cfg, np.random.default_rng(spec.seed)
    p = vision_tower_params(rng, cfg)["embeddings"]
    px = normal(rng, (spec.batch, 3, cfg.image_size, cfg.image_size), min(spec.x_scale, 10.0))
    px, p = on_grid((px, p), dtype)
    got = pt_siglip.embeddings(to_torch(px, device, dtype), **to_torch(p, device, dtype))
    check(got, np_siglip.embeddings(px, **p), "vision_embeddings", dtype)


@given(spec=vision_layer_specs())
@example(spec=VisionLayerSpec(VisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=6, patch_size=2),
                              2, 1e3, 0))  # extreme activations in the residual stream
def test_siglip_encoder_layer(spec, dtype, device):
    cfg, rng = spec.cfg, np.random.default_rng(spec.seed)
    x = normal(rng, (spec.batch, cfg.num_patches, cfg.hidden_size), spec.x_scale)
    x, p = on_grid((x, vision_layer_params(rng, cfg)), dtype)
    got = pt_siglip.encoder_layer(to_torch(x, device, dtype), **to_torch(p, device, dtype), cfg=cfg)
    check(got, np_siglip.encoder_layer(x, **p, cfg=cfg), "vision_layer", dtype)


@given(batch=st.integers(1, 3), patches=st.integers(1, 9), dv=WIDTHS, d=WIDTHS, scale=SCALES,
       seed=SEEDS)
def test_projector(batch, patches, dv, d, scale, seed, dtype, device):
    rng = np.random.default_rng(seed)
    feats, p = on_grid((normal(rng, (batch, patches, dv), scale), linear_params(rng, d, dv, True)),
                       dtype)
    got = pt_paligemma.project(to_torch(feats, device, dtype), to_torch(p, device, dtype))
    check(got, np_paligemma.project(feats, p), "projector", dtype)


# --------------------------------------------------------------------------------------------
# Gemma.

@given(spec=model_specs(text_layers=1, vision_layers=1))
def test_embed_and_merge(spec, dtype, device):
    """`gemma.embed` (sqrt(D) scale rounded to the dtype in torch) then `paligemma.merge`."""
    cfg, t = spec.cfg, spec.cfg.text_config
    ids, _, _ = spec.inputs()
    rng = np.random.default_rng(spec.seed)
    table = {"weight": normal(rng, (t.vocab_size, t.hidden_size))}
    feats = normal(rng, (spec.batch, cfg.num_image_tokens, t.hidden_size), 3.0)
    table, feats = on_grid((table, feats), dtype)
    ids_t = torch.from_numpy(ids).to(device)
    emb_t = pt_gemma.embed(to_torch(table, device, dtype), ids_t, t)
    emb = np_gemma.embed(table, ids, t)
    check(emb_t, emb, "merge", dtype, "embed")
    got = pt_paligemma.merge(emb_t, to_torch(feats, device, dtype), ids_t, cfg.image_token_index)
    expected = np_paligemma.merge(emb, feats, ids, cfg.image_token_index)
    check(got, expected, "merge", dtype)
    np.testing.assert_array_equal(expected[ids == cfg.image_token_index],
                                  feats.reshape(-1, t.hidden_size))


def _filled_cache(mod, spec: DecoderLayerSpec, rng, dtype, device=None):
    """A one-layer cache of s_len + free slots whose first q_start slots hold random k/v."""
    t, m = spec.cfg, spec.mask
    shape = (m.batch, t.num_key_value_heads, m.q_start, t.head_dim)
    k, v = on_grid((normal(rng, shape), normal(rng, shape)), dtype)
    sizes = (1, m.batch, t.num_key_value_heads, m.s_len + spec.free, t.head_dim)
    if mod is np_kv_cache:
        cache = np_kv_cache.init_cache(*sizes)
    else:
        cache = pt_kv_cache.init_cache(*sizes, dtype=torch_dtype(dtype), device=device)
        k, v = to_torch((k, v), device, dtype)
    mod.write(cache, 0, k, v)
    mod.advance(cache, m.q_start)
    return cache


DECODE_FILLS_CACHE = _mask("causal", 2, 1, 6, prefix=(3, 3))           # L=1, slot 6 of 6
DECODE_SLIDING = _mask("sliding", 2, 1, 6, prefix=(3, 3), window=2)
PADDED_PREFILL = _mask("padded", 2, 6, 6, pads=(0, 2), prefix=(4, 3))   # row 1: 2 blind queries
PREFIX_LM_5 = _mask("prefix_lm", 1, 5, 5, prefix=(3,))


@given(spec=decoder_layer_specs())
# L=1 decode that fills the cache exactly: Gemma-1 MQA, Gemma-2 GQA with a window.
@example(spec=DecoderLayerSpec(gemma1(layers=1), DECODE_FILLS_CACHE, 0, 1.0, 0))
@example(spec=DecoderLayerSpec(gemma2(layers=1), DECODE_SLIDING, 0, 1.0, 0))
# Prefill of a left-padded batch (free slots left over).
@example(spec=DecoderLayerSpec(gemma1(layers=1, k=2), PADDED_PREFILL, 1, 1.0, 1))
@example(spec=DecoderLayerSpec(gemma2(layers=1), PADDED_PREFILL, 1, 1.0, 1))
# Extreme residual-stream activations.
@example(spec=DecoderLayerSpec(gemma1(layers=1), PREFIX_LM_5, 0, 1e3, 2))
@example(spec=DecoderLayerSpec(gemma2(layers=1), PREFIX_LM_5, 0, 1e3, 2))
def test_gemma_decoder_layer(spec, dtype, device):
    """One layer against a pre-filled cache; the output and every cache slot must agree."""
    cfg, m = spec.cfg, spec.mask
    rng = np.random.default_rng(spec.seed)
    x, p = on_grid((normal(rng, (m.batch, m.q_len, cfg.hidden_size), spec.x_scale),
                    decoder_layer_params(rng, cfg)), dtype)
    state = rng.bit_generator.state
    cache = _filled_cache(np_kv_cache, spec, rng, dtype)
    rng.bit_generator.state = state
    cache_t = _filled_cache(pt_kv_cache, spec, rng, dtype, device)
    pos, mask = m.positions(), m.mask()
    cos, sin = np_layers.rope_tables(pos, cfg.head_dim, cfg.rope_theta)
    cos_t, sin_t = pt_layers.rope_tables(torch.from_numpy(pos).to(device), cfg.head_dim, cfg.rope_theta,
                                  dtype=torch_dtype(dtype))
    expected = np_gemma.decoder_layer(x, p, cos=cos, sin=sin, mask=mask, cfg=cfg, cache=cache)
    got = pt_gemma.decoder_layer(to_torch(x, device, dtype), to_torch(p, device, dtype), cos=cos_t,
                           sin=sin_t, mask=to_torch(mask, device, dtype), cfg=cfg, cache=cache_t)
    valid = m.slots()[0]
    check_rows(got, expected, valid[:, m.q_start:], "decoder_layer", dtype)
    slots = np.pad(valid, ((0, 0), (0, spec.free)), constant_values=True)  # empty slots: zeros
    check_rows(heads_last(to_numpy(cache_t.keys[0])), heads_last(cache.keys[0]), slots,
               "decoder_layer", dtype, "cached keys")
    check_rows(heads_last(to_numpy(cache_t.values[0])), heads_last(cache.values[0]), slots,
               "decoder_layer", dtype, "cached values")


@given(batch=st.integers(1, 3), length=st.integers(1, 9), text=text_configs(),
       scale=st.sampled_from([1.0, 3.0]), seed=SEEDS)
def test_lm_head(batch, length, text, scale, seed, dtype, device):
    """Logits from the final hidden state (tied table), then Gemma-2's final soft cap."""
    rng = np.random.default_rng(seed)
    h, w = on_grid((normal(rng, (batch, length, text.hidden_size), scale),
                    normal(rng, (text.vocab_size, text.hidden_size))), dtype)
    got = pt_gemma.lm_head(to_torch(h, device, dtype), to_torch(w, device, dtype), text)
    check(got, np_gemma.lm_head(h, w, text), "logits", dtype)


# --------------------------------------------------------------------------------------------
# paligemma.forward: prefill into a cache, then L=1 decode steps against it.

def _forward_case(spec: ModelSpec, dtype):
    cfg, t = spec.cfg, spec.cfg.text_config
    ids, attn, _ = spec.inputs()
    rng = np.random.default_rng(spec.seed + 2)
    feats = normal(rng, (spec.batch, cfg.num_image_tokens, t.hidden_size))
    tree = paligemma_params(cfg, spec.seed, spec.tied)
    tree = {k: v for k, v in tree.items() if k in ("language_model", "lm_head")}
    tree, feats = on_grid((tree, feats), dtype)
    return tree, feats, ids, attn.astype(bool)


def _pinned(text, lens=(3,), decode_steps=1, free=0, tied=True, seed=0):
    return ModelSpec(tiny_paligemma(text), tied, lens, seed, decode_steps=decode_steps, free=free)


@given(spec=model_specs())
@example(spec=_pinned(gemma1(), decode_steps=0, free=0))       # prefill fills the cache exactly
@example(spec=_pinned(gemma1(), decode_steps=1, free=0))       # L=1 decode fills the last slot
@example(spec=_pinned(gemma2(), lens=(1, 4), decode_steps=2))  # left padding, sliding window
@example(spec=_pinned(gemma1(n=8, k=2), lens=(5, 1, 3), decode_steps=2, free=2, tied=False))
def test_paligemma_prefill_and_decode(spec, dtype, device):
    """Prefill (image features merged, bidirectional prefix) into both caches, then L=1 decode
    steps as `generate` runs them; logits at every step and every cache slot must agree."""
    cfg = spec.cfg
    tree, feats, ids, valid = _forward_case(spec, dtype)
    is_prefix = valid.copy()
    max_len = ids.shape[1] + spec.decode_steps + spec.free
    tree_t = to_torch(tree, device, dtype)

    def step(ids, positions, masks, feats=None, cache=None, cache_t=None, last_only=False):
        ref, cache = np_paligemma.forward(tree, cfg, ids, positions, masks, feats, cache=cache,
                               last_only=last_only)
        inputs = to_torch((ids, positions, masks, feats), device, dtype)
        got, cache_t = pt_paligemma.forward(tree_t, cfg, *inputs, cache=cache_t, last_only=last_only)
        return ref, got, cache, cache_t

    cache = np_paligemma.init_cache(cfg, spec.batch, max_len)
    cache_t = pt_paligemma.init_cache(cfg, spec.batch, max_len, dtype=torch_dtype(dtype), device=device)
    masks = np_paligemma.attention_masks(cfg, valid, is_prefix, 0)
    ref, got, cache, cache_t = step(ids, np_paligemma.rope_positions(valid), masks, feats, cache,
                                    cache_t)
    check_rows(got, ref, valid, "logits", dtype, "prefill logits")
    for i in range(spec.decode_steps):
        token = ref[:, -1].argmax(-1)[:, None]  # the reference's greedy token feeds both sides
        valid = np.concatenate([valid, np.ones((spec.batch, 1), bool)], axis=1)
        is_prefix = np.concatenate([is_prefix, np.zeros((spec.batch, 1), bool)], axis=1)
        q = valid.shape[1] - 1
        ref, got, cache, cache_t = step(token, np_paligemma.rope_positions(valid)[:, q:],
                                        np_paligemma.attention_masks(cfg, valid, is_prefix, q),
                                        cache=cache, cache_t=cache_t, last_only=True)
        check(got, ref, "decode_step", dtype, f"decode step {i} logits")
    assert cache_t.length == cache.length == max_len - spec.free
    slots = np.pad(valid, ((0, 0), (0, spec.free)), constant_values=True)  # empty slots: zeros
    for layer in range(cfg.text_config.num_hidden_layers):
        for name in ("keys", "values"):
            check_rows(heads_last(to_numpy(getattr(cache_t, name)[layer])),
                       heads_last(getattr(cache, name)[layer]), slots, "decode_step", dtype,
                       f"layer {layer} cached {name}")
