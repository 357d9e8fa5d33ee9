"""Golden values and invariants for the NumPy building blocks (npgemma/layers.py, patch_embed).

NumPy only. Every reference below is either a number written out by hand (closed form) or an
independent float64 loop, never a call back into the function under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from npgemma.layers import (MASK_VALUE, apply_rope, attention, gelu_tanh, layer_norm, linear,
                            merge_heads, rms_norm, rope_inv_freq, rope_tables, softcap, softmax,
                            split_heads)
from npgemma.siglip import patch_embed

F32 = np.float32


def _rng(seed=0):
    return np.random.default_rng(seed)


def _randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(F32)


# --------------------------------------------------------------------------- linear


def test_linear_golden_weight_is_out_by_in():
    x = np.array([[1.0, 2.0, 3.0]], F32)  # [1, in=3]
    w = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5]], F32)  # [out=2, in=3], torch layout
    b = np.array([10.0, -1.0], F32)
    np.testing.assert_array_equal(linear(x, w), np.array([[-2.0, 3.0]], F32))
    y = linear(x, w, b)
    np.testing.assert_array_equal(y, np.array([[8.0, 2.0]], F32))
    assert y.dtype == np.float32


def test_linear_narrow_weights_compute_in_float32():
    rng = _rng(1)
    x = _randn(rng, 2, 3, 8)
    w = _randn(rng, 5, 8).astype(np.float16)
    b = _randn(rng, 5).astype(np.float16)
    y = linear(x, w, b)
    assert y.dtype == np.float32 and y.shape == (2, 3, 5)
    ref = x.astype(np.float64) @ w.astype(np.float64).T + b.astype(np.float64)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_linear_does_not_modify_its_inputs():
    rng = _rng(2)
    x, w, b = _randn(rng, 3, 4), _randn(rng, 4, 4), _randn(rng, 4)
    copies = [a.copy() for a in (x, w, b)]
    linear(x, w, b)
    for a, c in zip((x, w, b), copies):
        np.testing.assert_array_equal(a, c)


# --------------------------------------------------------------------------- rms_norm


def test_rms_norm_golden():
    x = np.array([1.0, 2.0, 3.0, 4.0], F32)
    w = np.array([0.0, 0.5, -0.5, 1.0], F32)
    # mean(x²) = 30 / 4 = 7.5; scale (1 + w) = [1, 1.5, 0.5, 2]
    expected = np.array([1 * 1.0, 2 * 1.5, 3 * 0.5, 4 * 2.0]) / math.sqrt(7.5 + 1e-6)  # float64
    y = rms_norm(x, w, eps=1e-6)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=0)


def test_rms_norm_zero_weight_is_plain_rms_normalisation():
    rng = _rng(3)
    x = _randn(rng, 2, 5, 16, scale=3.0)
    y = rms_norm(x, np.zeros(16, F32), eps=1e-6)
    # unit root-mean-square, same direction
    np.testing.assert_allclose(np.sqrt(np.mean(y.astype(np.float64) ** 2, axis=-1)), 1.0, rtol=1e-5)
    ref = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


def test_rms_norm_is_one_plus_w_not_w():
    x = np.array([3.0, -4.0], F32)  # rms = sqrt(12.5)
    y = rms_norm(x, np.array([1.0, 1.0], F32), eps=0.0)
    np.testing.assert_allclose(y, 2.0 * x / math.sqrt(12.5), rtol=1e-6)


def test_rms_norm_eps_on_zero_vector():
    y = rms_norm(np.zeros((2, 8), F32), np.full(8, 0.3, F32), eps=1e-6)
    assert np.all(np.isfinite(y))
    np.testing.assert_array_equal(y, 0.0)


def test_rms_norm_eps_value_matters():
    x = np.full(4, 1e-3, F32)  # mean(x²) = 1e-6: eps of 1e-6 halves the variance's weight
    y = rms_norm(x, np.zeros(4, F32), eps=1e-6)
    np.testing.assert_allclose(y, 1e-3 / math.sqrt(2e-6), rtol=1e-5)


def test_rms_norm_of_narrow_inputs_computes_in_float32():
    # mean(x²) = 202500 overflows float16 (max 65504): a float16 computation returns zeros or
    # NaN; HF upcasts to float32 first, and so must we.
    x = np.array([[300.0, -400.0, 500.0, 600.0]], np.float16)
    w = np.array([0.0, 0.5, -0.5, 1.0], np.float16)
    y = rms_norm(x, w, eps=1e-6)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-6) * (1 + w.astype(np.float64))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-6)


# --------------------------------------------------------------------------- layer_norm


def test_layer_norm_golden():
    x = np.array([1.0, 2.0, 3.0, 4.0], F32)
    w = np.array([1.0, 2.0, 0.5, -1.0], F32)
    b = np.array([0.0, 1.0, -1.0, 0.5], F32)
    # mean 2.5, biased variance 1.25
    r = 1.0 / math.sqrt(1.25 + 1e-6)
    expected = np.array([-1.5 * r * 1.0 + 0.0, -0.5 * r * 2.0 + 1.0, 0.5 * r * 0.5 - 1.0,
                         1.5 * r * -1.0 + 0.5])
    y = layer_norm(x, w, b, eps=1e-6)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-7)


def test_layer_norm_uses_biased_variance_and_given_eps():
    rng = _rng(4)
    x = _randn(rng, 3, 7, scale=2.0) + F32(5.0)
    y = layer_norm(x, np.ones(7, F32), np.zeros(7, F32), eps=1e-6)
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.var(y.astype(np.float64), axis=-1), 1.0, rtol=1e-4)
    # eps is not hard-coded: a huge eps shrinks the output
    z = layer_norm(x, np.ones(7, F32), np.zeros(7, F32), eps=1e6)
    assert np.abs(z).max() < 0.1


# --------------------------------------------------------------------------- gelu_tanh


def _gelu_tanh_ref(x):
    return 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x)))


def _gelu_erf_ref(x):
    return 0.5 * x * (1 + math.erf(x / math.sqrt(2)))


def test_gelu_tanh_matches_float64_formula_on_a_grid():
    x = np.linspace(-8, 8, 1601).astype(F32)  # includes 0, ±1, the knee and both tails
    y = gelu_tanh(x)
    assert y.dtype == np.float32
    ref = np.array([_gelu_tanh_ref(float(v)) for v in x])
    np.testing.assert_allclose(y, ref, rtol=2e-6, atol=2e-7)


def test_gelu_tanh_matches_torch_tanh_approximation():
    torch = pytest.importorskip("torch")
    x = np.linspace(-6, 6, 241)
    ref = torch.nn.functional.gelu(torch.from_numpy(x), approximate="tanh").numpy()  # float64
    np.testing.assert_allclose(gelu_tanh(x.astype(F32)), ref, rtol=2e-6, atol=2e-7)


def test_gelu_is_tanh_form_not_erf_form():
    y = float(gelu_tanh(np.array([1.0], F32))[0])
    assert abs(_gelu_erf_ref(1.0) - _gelu_tanh_ref(1.0)) > 1e-4  # the two forms differ here
    assert abs(y - _gelu_tanh_ref(1.0)) < 1e-6
    assert abs(y - _gelu_erf_ref(1.0)) > 1e-4


def test_gelu_tanh_extremes_finite():
    y = gelu_tanh(np.array([-1e4, -30.0, 30.0, 1e4], F32))
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, [0.0, 0.0, 30.0, 1e4], atol=1e-6)


# --------------------------------------------------------------------------- softmax / softcap


def test_softmax_sums_to_one_and_shift_invariant():
    rng = _rng(5)
    x = _randn(rng, 4, 9, scale=5.0)
    p = softmax(x)
    assert p.dtype == np.float32
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(softmax(x + F32(123.0)), p, rtol=1e-5, atol=1e-7)
    ref = np.exp(x.astype(np.float64))
    ref /= ref.sum(-1, keepdims=True)
    np.testing.assert_allclose(p, ref, rtol=1e-5, atol=1e-7)


def test_softmax_axis_argument():
    x = np.array([[0.0, 1.0], [2.0, 3.0]], F32)
    p = softmax(x, axis=0)
    e = 1.0 / (1.0 + math.exp(2.0))
    np.testing.assert_allclose(p, [[e, e], [1 - e, 1 - e]], rtol=1e-6)


def test_softmax_stable_for_huge_inputs():
    p = softmax(np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], F32))
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p, [[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)


def test_softcap_golden_and_none():
    x = np.array([0.0, 1.0, 100.0, -100.0], F32)
    y = softcap(x, 50.0)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [0.0, 50 * math.tanh(0.02), 50 * math.tanh(2), -50 * math.tanh(2)],
                               rtol=1e-6)
    assert softcap(x, None) is x


# --------------------------------------------------------------------------- rope


def test_rope_inv_freq_golden():
    inv = rope_inv_freq(4, 10000.0)
    assert inv.dtype == np.float32
    np.testing.assert_allclose(inv, [1.0, 0.01], rtol=1e-7)
    inv8 = rope_inv_freq(8, 10000.0)
    np.testing.assert_allclose(inv8, [1.0, 0.1, 0.01, 0.001], rtol=1e-6)
    # rope_theta is read, not assumed: 1 / 100^(i/2) and 1 / 1e6^(2i/8) (PaliGemma's is 10000)
    np.testing.assert_allclose(rope_inv_freq(4, 100.0), [1.0, 0.1], rtol=1e-7)
    np.testing.assert_allclose(rope_inv_freq(8, 1e6), [1.0, 10 ** -1.5, 1e-3, 10 ** -4.5], rtol=1e-6)


def test_rope_tables_dtype_and_layout():
    pos = np.array([[0, 1, 7]], np.int64)
    cos, sin = rope_tables(pos, 8, 10000.0)
    assert cos.dtype == np.float32 and sin.dtype == np.float32
    assert cos.shape == (1, 3, 8)
    angles = np.array([0, 1, 7])[:, None] * np.array([1.0, 0.1, 0.01, 0.001])[None]
    np.testing.assert_allclose(cos[0], np.cos(np.concatenate([angles, angles], -1)), atol=1e-6)
    np.testing.assert_allclose(sin[0], np.sin(np.concatenate([angles, angles], -1)), atol=1e-6)


def _rope(x, positions, theta=10000.0):
    """x float32[B, N, L, H], positions int[B, L]."""
    cos, sin = rope_tables(positions, x.shape[-1], theta)
    return apply_rope(x, cos, sin)


def test_rope_split_half_golden():
    h = 8
    rng = _rng(6)
    x = _randn(rng, 1, 2, 3, h)
    pos = np.array([[0, 3, 11]])
    y = _rope(x, pos)
    assert y.dtype == np.float32
    inv = [10000.0 ** (-2 * i / h) for i in range(h // 2)]
    ref = np.zeros(x.shape)
    for n in range(2):
        for l, m in enumerate(pos[0]):
            for i in range(h // 2):  # pair (i, i + H/2) rotates by m * inv_freq_i
                a, b = float(x[0, n, l, i]), float(x[0, n, l, i + h // 2])
                c, s = math.cos(m * inv[i]), math.sin(m * inv[i])
                ref[0, n, l, i] = a * c - b * s
                ref[0, n, l, i + h // 2] = b * c + a * s
    np.testing.assert_allclose(y, ref, atol=2e-6)


def test_rope_is_not_interleaved():
    # a vector living only in dims (0, 1): split-half rotates 0 with 4 and 1 with 5, so nothing
    # ever leaks from dim 0 into dim 1 (an interleaved RoPE would mix exactly those two).
    x = np.zeros((1, 1, 1, 8), F32)
    x[..., 0] = 1.0
    y = _rope(x, np.array([[1]]))
    assert y[0, 0, 0, 1] == 0.0
    np.testing.assert_allclose(y[0, 0, 0, [0, 4]], [math.cos(1.0), math.sin(1.0)], atol=1e-6)


def test_rope_position_zero_is_identity():
    rng = _rng(7)
    x = _randn(rng, 2, 3, 4, 16)
    np.testing.assert_array_equal(_rope(x, np.zeros((2, 4), np.int64)), x)


def test_rope_preserves_norm_per_head():
    rng = _rng(8)
    x = _randn(rng, 2, 3, 5, 16)
    pos = rng.integers(0, 200, size=(2, 5))
    y = _rope(x, pos)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


@pytest.mark.parametrize("shift", [1, 5, 17, 40])
def test_rope_relative_property(shift):
    rng = _rng(9)
    q, k = _randn(rng, 1, 1, 1, 16), _randn(rng, 1, 1, 1, 16)
    for m, n in [(3, 1), (7, 7), (2, 9)]:
        base = float((_rope(q, np.array([[m]])) * _rope(k, np.array([[n]]))).sum())
        moved = float((_rope(q, np.array([[m + shift]])) * _rope(k, np.array([[n + shift]]))).sum())
        assert abs(base - moved) < 1e-4 * max(1.0, abs(base))
    # and it really depends on m - n
    d0 = float((_rope(q, np.array([[3]])) * _rope(k, np.array([[1]]))).sum())
    d1 = float((_rope(q, np.array([[4]])) * _rope(k, np.array([[1]]))).sum())
    assert abs(d0 - d1) > 1e-3


# --------------------------------------------------------------------------- attention


def _naive_attention(q, k, v, mask, scale, cap=None):
    """Float64 loop over batch and query heads; head n reads kv head n // (N / K)."""
    b, n, l, h = q.shape
    kv = k.shape[1]
    out = np.zeros((b, n, l, h))
    for bi in range(b):
        for hi in range(n):
            kh = hi // (n // kv)
            s = q[bi, hi].astype(np.float64) @ k[bi, kh].astype(np.float64).T * scale
            if cap is not None:
                s = cap * np.tanh(s / cap)
            s = np.where(mask[bi], s, -np.inf)
            w = np.exp(s - s.max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            out[bi, hi] = w @ v[bi, kh].astype(np.float64)
    return out


def _random_mask(rng, b, l, s):
    mask = rng.random((b, l, s)) < 0.7
    mask[..., 0] = True  # every query sees at least one key
    return mask


def test_attention_mha_matches_naive():
    rng = _rng(10)
    q, k, v = _randn(rng, 2, 4, 3, 8), _randn(rng, 2, 4, 5, 8), _randn(rng, 2, 4, 5, 8)
    mask = _random_mask(rng, 2, 3, 5)
    out = attention(q, k, v, mask, scale=8 ** -0.5)
    assert out.dtype == np.float32 and out.shape == (2, 4, 3, 8)
    np.testing.assert_allclose(out, _naive_attention(q, k, v, mask, 8 ** -0.5), atol=1e-5)


def test_attention_mqa_equals_mha_with_repeated_kv():
    rng = _rng(11)
    q, k, v = _randn(rng, 2, 4, 3, 8), _randn(rng, 2, 1, 6, 8), _randn(rng, 2, 1, 6, 8)
    mask = _random_mask(rng, 2, 3, 6)
    out = attention(q, k, v, mask, scale=0.3)
    rep = attention(q, np.repeat(k, 4, axis=1), np.repeat(v, 4, axis=1), mask, scale=0.3)
    np.testing.assert_allclose(out, rep, atol=1e-6)
    np.testing.assert_allclose(out, _naive_attention(q, k, v, mask, 0.3), atol=1e-5)


def test_attention_gqa_matches_naive():
    rng = _rng(12)
    q, k, v = _randn(rng, 2, 6, 4, 8), _randn(rng, 2, 2, 5, 8), _randn(rng, 2, 2, 5, 8)
    mask = _random_mask(rng, 2, 4, 5)
    np.testing.assert_allclose(attention(q, k, v, mask, scale=0.5),
                               _naive_attention(q, k, v, mask, 0.5), atol=1e-5)


def test_attention_gqa_head_assignment_is_n_div_group():
    # N = 4 query heads over K = 2 kv heads: heads 0, 1 read kv head 0; heads 2, 3 read kv head 1
    # (n // (N / K)), not the interleaved n % K.
    rng = _rng(13)
    q = _randn(rng, 1, 4, 2, 4)
    k = _randn(rng, 1, 2, 3, 4)
    v = np.zeros((1, 2, 3, 4), F32)
    v[:, 0] = 1.0
    v[:, 1] = 2.0
    out = attention(q, k, v, np.ones((1, 2, 3), bool), scale=1.0)
    np.testing.assert_allclose(out[0, :, 0, 0], [1.0, 1.0, 2.0, 2.0], rtol=1e-6)


def test_attention_causal_equals_each_prefix_alone():
    rng = _rng(14)
    l = 5
    q, k, v = _randn(rng, 1, 2, l, 8), _randn(rng, 1, 2, l, 8), _randn(rng, 1, 2, l, 8)
    causal = np.tril(np.ones((l, l), bool))[None]
    out = attention(q, k, v, causal, scale=0.4)
    for i in range(l):
        alone = attention(q[:, :, i:i + 1], k[:, :, :i + 1], v[:, :, :i + 1],
                          np.ones((1, 1, i + 1), bool), scale=0.4)
        np.testing.assert_allclose(out[:, :, i:i + 1], alone, atol=1e-6)


def test_attention_softcap_applied_after_scale():
    rng = _rng(15)
    q, k, v = _randn(rng, 1, 2, 3, 8, scale=3.0), _randn(rng, 1, 2, 4, 8, scale=3.0), _randn(rng, 1, 2, 4, 8)
    mask = np.ones((1, 3, 4), bool)
    out = attention(q, k, v, mask, scale=0.5, logit_cap=2.0)
    np.testing.assert_allclose(out, _naive_attention(q, k, v, mask, 0.5, cap=2.0), atol=1e-5)
    uncapped = attention(q, k, v, mask, scale=0.5)
    assert np.abs(out - uncapped).max() > 1e-2  # the cap really changed something


def test_attention_masked_key_contributes_exactly_zero_with_softcap():
    # The cap comes before the mask: capping after masking would turn the mask value into -cap,
    # a small finite score that lets masked keys leak in (weight e^(-2cap) here, not 0).
    rng = _rng(16)
    q, k = _randn(rng, 1, 1, 2, 4), _randn(rng, 1, 1, 3, 4)
    v = _randn(rng, 1, 1, 3, 4)
    v[:, :, 2] = 1e6  # a masked key with a huge value: any leak shows
    mask = np.array([[[True, True, False], [True, True, False]]])
    out = attention(q, k, v, mask, scale=1.0, logit_cap=1.0)
    ref = attention(q, k[:, :, :2], v[:, :, :2], mask[:, :, :2], scale=1.0, logit_cap=1.0)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out, _naive_attention(q, k, v, mask, 1.0, cap=1.0), atol=1e-5)


def test_attention_fully_masked_row_is_finite():
    rng = _rng(17)
    q, k, v = _randn(rng, 1, 2, 2, 4), _randn(rng, 1, 2, 3, 4), _randn(rng, 1, 2, 3, 4)
    mask = np.array([[[False, False, False], [True, False, True]]])
    out = attention(q, k, v, mask, scale=0.5, logit_cap=50.0)
    assert np.all(np.isfinite(out))
    # a row with no allowed key averages all values uniformly (finite mask value, not -inf)
    np.testing.assert_allclose(out[0, :, 0], v[0].mean(axis=1), rtol=1e-5, atol=1e-6)
    assert MASK_VALUE.dtype == np.float32 and np.isfinite(MASK_VALUE)


def test_attention_large_scores_stay_exact():
    # Scores of ~1e4 (softcap 50 turns them into a near-hard max): a softmax without the max
    # shift overflows, and a cap applied after the mask lets masked keys in.
    rng = _rng(18)
    q, k, v = _randn(rng, 1, 2, 2, 4, scale=60.0), _randn(rng, 1, 1, 3, 4, scale=60.0), _randn(rng, 1, 1, 3, 4)
    mask = np.array([[[True, True, False], [True, True, True]]])
    out = attention(q, k, v, mask, scale=0.5, logit_cap=50.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _naive_attention(q, k, v, mask, 0.5, cap=50.0), atol=1e-5)
    uncapped = attention(q, k, v, mask, scale=0.5)
    np.testing.assert_allclose(uncapped, _naive_attention(q, k, v, mask, 0.5), atol=1e-5)


def test_split_merge_heads_roundtrip_and_layout():
    x = np.arange(2 * 3 * 12, dtype=F32).reshape(2, 3, 12)
    s = split_heads(x, 4)
    assert s.shape == (2, 4, 3, 3)
    np.testing.assert_array_equal(s[1, 2, 0], x[1, 0, 6:9])  # head n owns columns n*H:(n+1)*H
    np.testing.assert_array_equal(merge_heads(s), x)


# --------------------------------------------------------------------------- patch_embed


def _conv_loop(pix, w, b):
    """Explicit stride-p convolution, output flattened row-major over the grid."""
    bsz, c, s, _ = pix.shape
    d, _, p, _ = w.shape
    g = s // p
    out = np.zeros((bsz, g * g, d))
    for bi in range(bsz):
        for gy in range(g):
            for gx in range(g):
                patch = pix[bi, :, gy * p:(gy + 1) * p, gx * p:(gx + 1) * p].astype(np.float64)
                for di in range(d):
                    out[bi, gy * g + gx, di] = (patch * w[di]).sum() + b[di]
    return out


def test_patch_embed_equals_conv_loop():
    rng = _rng(19)
    pix = _randn(rng, 2, 3, 12, 12)
    w, b = _randn(rng, 5, 3, 4, 4), _randn(rng, 5)
    y = patch_embed(pix, w, b)
    assert y.dtype == np.float32 and y.shape == (2, 9, 5)
    np.testing.assert_allclose(y, _conv_loop(pix, w, b), atol=1e-5)


def test_patch_embed_row_major_patch_order():
    p, g = 2, 3
    pix = np.zeros((1, 3, p * g, p * g), F32)
    for gy in range(g):
        for gx in range(g):
            pix[0, :, gy * p:(gy + 1) * p, gx * p:(gx + 1) * p] = 10 * gy + gx
    w = np.zeros((2, 3, p, p), F32)
    w[0] = 1.0 / (3 * p * p)  # channel 0 averages the patch
    w[1, 0, 0, 0] = 1.0       # channel 1 reads the top-left pixel of the red plane
    y = patch_embed(pix, w, np.zeros(2, F32))
    expected = [10 * gy + gx for gy in range(g) for gx in range(g)]
    np.testing.assert_allclose(y[0, :, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(y[0, :, 1], expected, rtol=1e-6)


def test_patch_embed_channel_and_kernel_orientation():
    # OIHW: weight[d, c, y, x] multiplies pixel (c, y, x) of the patch: not transposed.
    pix = np.zeros((1, 3, 2, 2), F32)
    pix[0, 2, 0, 1] = 1.0  # blue, row 0, column 1
    w = np.zeros((1, 3, 2, 2), F32)
    w[0, 2, 0, 1] = 7.0
    w[0, 2, 1, 0] = -100.0  # the transposed position
    w[0, 0, 0, 1] = -1000.0  # the same position in another channel
    np.testing.assert_allclose(patch_embed(pix, w, np.zeros(1, F32)), [[[7.0]]])


@pytest.mark.parametrize("ours", [False, True], ids=["prefill", "decode-step"])
def test_linear_low_memory_slabs_equal_whole_matrix(monkeypatch, ours):
    """bfloat16 weights are widened a slab of rows at a time (in a decode step, on one thread of
    ours per core), as even and odd columns summed apart; the result must not depend on it
    beyond float32 rounding: golden values from float64 sums of the exactly widened weights."""
    import contextlib

    import ml_dtypes

    from npgemma import _kernels, layers

    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    w = rng.standard_normal((37, 64)).astype(ml_dtypes.bfloat16)
    b = rng.standard_normal(37).astype(ml_dtypes.bfloat16)
    exact = x.astype(np.float64) @ w.astype(np.float64).T + b.astype(np.float64)
    whole = x @ w.astype(np.float32).T + b.astype(np.float32)
    monkeypatch.setattr(_kernels, "SLAB_BYTES", 5 * 64 * 4)  # 5 rows a slab: 37 rows -> 8 slabs, the last one short
    with _kernels.on_our_threads() if ours else contextlib.nullcontext():
        got = layers.linear(x, w, b)
    assert got.dtype == np.float32 and got.shape == (2, 3, 37)
    bound = 64 * np.finfo(np.float32).eps * (np.abs(x) @ np.abs(w.astype(np.float32)).T + 1)
    assert (np.abs(got - exact) <= bound).all() and (np.abs(whole - exact) <= bound).all()
    # a wrong column pairing (even weights against odd inputs) is far outside that bound
    swapped = x[..., [1, 0] * 32 + np.repeat(np.arange(0, 64, 2), 2)] @ w.astype(np.float32).T
    assert not (np.abs(swapped + b.astype(np.float32) - exact) <= bound).all()


def test_linear_low_memory_odd_width_and_strided_weights():
    """A bfloat16 weight whose rows cannot be read as pairs (an odd width, a strided view of an
    even width) takes the plain widening: the product to float32 rounding."""
    import ml_dtypes

    from npgemma import _kernels

    rng = np.random.default_rng(8)
    for w in (rng.standard_normal((11, 9)).astype(ml_dtypes.bfloat16),
              rng.standard_normal((11, 36)).astype(ml_dtypes.bfloat16)[:, ::2]):
        assert not _kernels._reads_as_pairs(w) and (w.shape[1] % 2 or w.strides[1] != 2)
        x = rng.standard_normal((1, w.shape[1])).astype(np.float32)
        np.testing.assert_allclose(_kernels.matmul_t(x, w), x @ w.astype(np.float32).T, rtol=1e-6, atol=1e-6)
    assert _kernels._reads_as_pairs(np.ascontiguousarray(w))  # the same weight, contiguous


def test_linear_plain_widening_keeps_values_beyond_float16():
    """The plain widening (an odd width) is exact for every bfloat16 value, 1e30 and 1e-30
    too: far outside float16's range, where a detour through it gives inf and 0."""
    import ml_dtypes

    from npgemma import _kernels

    w = np.array([[1e30, -1e-30, 3.0]], np.float32).astype(ml_dtypes.bfloat16)  # [out=1, in=3]
    x = np.array([[1.0, 0.0, 0.0], [0.0, 1e30, 1.0]], np.float32)
    assert not _kernels._reads_as_pairs(w)
    want = x.astype(np.float64) @ w.astype(np.float64).T
    np.testing.assert_allclose(_kernels.matmul_t(x, w), want, rtol=1e-6)

def test_torch_embedding_scale_is_rounded_to_the_table_dtype():
    """HF multiplies the embeddings by sqrt(D) cast to the weight dtype: 45.25 in bfloat16 for
    D = 2048 (sqrt(2048) = 45.2548...), sqrt(D) itself in float32. A table entry 1.046875:
    × 45.25 = 47.371 -> 47.25 on bfloat16's 0.25 grid, where × 45.2548 = 47.376 -> 47.5."""
    torch = pytest.importorskip("torch")
    from npgemma.config import TextConfig
    from npgemma.torch_backend import gemma as torch_gemma

    cfg = TextConfig(hidden_size=2048)
    ids = torch.zeros((1, 1), dtype=torch.int64)
    for dtype, want in ((torch.bfloat16, 47.25),
                        (torch.float32, float(np.float32(1.046875) * np.float32(np.sqrt(2048))))):
        table = {"weight": torch.full((2, 2048), 1.046875, dtype=dtype)}
        got = torch_gemma.embed(table, ids, cfg)
        assert got.dtype == dtype and float(got[0, 0, 0]) == want

def test_bf16_pair_widening_is_exact_for_every_bit_pattern():
    """Widening a bfloat16 row as its even columns shifted up and its odd columns masked equals
    ml_dtypes' cast for all 65536 bfloat16 patterns (NaN payloads, infinities, subnormals, -0),
    in a reused scratch whose earlier, larger contents must not leak into a later, shorter slab."""
    import ml_dtypes

    from npgemma import _kernels

    every = np.arange(65536, dtype=np.uint16).view(ml_dtypes.bfloat16).reshape(256, 256)
    want = every.astype(np.float32).view(np.uint32)
    scratch = _kernels._slab_buffer(every.size)
    scratch[:] = np.nan  # garbage that must be overwritten
    even, odd = _kernels.widen_bf16_pairs(every, scratch)
    np.testing.assert_array_equal(even.view(np.uint32), want[:, 0::2])
    np.testing.assert_array_equal(odd.view(np.uint32), want[:, 1::2])
    short = np.ascontiguousarray(every[7:9, 100:200])  # another shape, after the full slab
    even, odd = _kernels.widen_bf16_pairs(short, scratch)
    wide = short.astype(np.float32).view(np.uint32)
    np.testing.assert_array_equal(even.view(np.uint32), wide[:, 0::2])
    np.testing.assert_array_equal(odd.view(np.uint32), wide[:, 1::2])


def test_prefill_widening_is_exact_for_every_bit_pattern():
    """A prefill widens a slab in the weight's own column order (`widen_rows`): for all 65536
    bfloat16 patterns and float16's, the bits of NumPy's/ml_dtypes' cast, over a reused scratch
    holding garbage, and over a strided (every other column) view."""
    import ml_dtypes

    from npgemma import _kernels

    every = np.arange(65536, dtype=np.uint16).view(ml_dtypes.bfloat16).reshape(256, 256)
    scratch = np.full(every.size, np.nan, np.float32)
    wide = _kernels.widen_rows(every, scratch)
    np.testing.assert_array_equal(wide.view(np.uint32), every.astype(np.float32).view(np.uint32))
    strided = every[3:9, 1::2]
    np.testing.assert_array_equal(_kernels.widen_rows(strided, scratch).view(np.uint32),
                                  strided.astype(np.float32).view(np.uint32))
    half = np.arange(65536, dtype=np.uint16).view(np.float16).reshape(256, 256)
    half = half[np.isfinite(half).all(axis=1)]  # rows without NaN (its payload may be changed)
    np.testing.assert_array_equal(_kernels.widen_rows(half, scratch), half.astype(np.float32))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("shape", [(37, 64), (37, 63), (5, 7)], ids=["even", "odd", "one-slab"])
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
def test_linear_low_memory_prefill_within_float32_rounding(monkeypatch, dtype, shape, strided):
    """A prefill (more than FEW_ROWS rows) over a narrow weight takes `gemm_slabs`: slabs of the
    weight widened in column order, one product over all rows each. Golden values are float64
    sums of the exactly widened weights; the bound is float32 rounding of an n-term sum."""
    import ml_dtypes

    from npgemma import _kernels, layers

    rng = np.random.default_rng(9)
    out, n = shape
    w = rng.standard_normal((out, 2 * n if strided else n)).astype(getattr(ml_dtypes, dtype, dtype))
    w = w[:, ::2] if strided else w
    x = rng.standard_normal((3, 40, n)).astype(np.float32)  # 120 rows: a prefill
    calls = []
    monkeypatch.setattr(_kernels, "GEMM_SLAB_BYTES", 6 * n * 4)  # 6 rows a slab, the last short
    monkeypatch.setattr(_kernels, "gemm_slabs",
                        lambda *a, f=_kernels.gemm_slabs: calls.append(1) or f(*a))
    got = layers.linear(x, w)
    assert calls, "a prefill over a narrow weight must take gemm_slabs"
    exact = x.astype(np.float64) @ w.astype(np.float64).T
    bound = n * np.finfo(np.float32).eps * (np.abs(x) @ np.abs(w.astype(np.float32)).T)
    assert got.dtype == np.float32 and got.shape == (3, 40, out)
    assert (np.abs(got - exact) <= bound).all()
    # a slab written to the wrong columns (one row off) is far outside that bound
    assert not (np.abs(np.roll(got, 1, axis=-1) - exact) <= bound).all()


def test_on_our_threads_holds_blas_to_one_thread_and_restores_it(monkeypatch):
    """Inside a decode-step block BLAS runs single-threaded (its idle threads would spin beside
    ours); outside it BLAS has its threads back, and the block nests."""
    from threadpoolctl import threadpool_info

    from npgemma import _kernels

    def blas_threads():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    monkeypatch.setattr(_kernels, "WORKERS", 2)  # as on a 2-core machine, whatever this one has
    before = blas_threads()
    with _kernels.on_our_threads():
        with _kernels.on_our_threads():
            inner = blas_threads()
        assert _kernels._depth == 1
        outer = blas_threads()
    assert inner == outer == {1} and _kernels._depth == 0
    assert blas_threads() == before


def test_attention_query_chunks_on_our_threads_equal_one_block(monkeypatch):
    """Queries in chunks, shared out over two threads, give the one-block attention: GQA, a
    mask with fully masked rows, and a softcap."""
    from npgemma import _kernels, layers

    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 4, 37, 8)).astype(np.float32)
    k = rng.standard_normal((2, 2, 41, 8)).astype(np.float32)
    v = rng.standard_normal((2, 2, 41, 8)).astype(np.float32)
    mask = rng.random((2, 37, 41)) < 0.7
    mask[0, 5] = False  # a padding query: a uniform average, never NaN
    monkeypatch.setattr(_kernels, "WORKERS", 1)
    monkeypatch.setattr(layers, "SCORE_BLOCK_BYTES", 1 << 30)
    whole = layers.attention(q, k, v, mask, 0.35, logit_cap=3.0)
    monkeypatch.setattr(_kernels, "WORKERS", 2)
    monkeypatch.setattr(layers, "SCORE_BLOCK_BYTES", 2 * 2 * 4 * 4 * 41 * 3)  # 3 queries a chunk
    chunked = layers.attention(q, k, v, mask, 0.35, logit_cap=3.0)
    assert np.isfinite(chunked).all()
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6)


def test_by_row_blocks_equals_the_whole_array_formula(monkeypatch):
    """Gemma's gelu(gate) · up a block of rows at a time, shared over two threads, is bit for bit
    the formula over the whole array (elementwise: no order of operations changes); fewer rows
    than a block make one short block."""
    from npgemma import _kernels, layers

    rng = np.random.default_rng(11)
    gate = (3 * rng.standard_normal((2, 37, 24))).astype(np.float32)
    up = rng.standard_normal((2, 37, 24)).astype(np.float32)

    def gated(g, u):
        return layers.gelu_tanh(g) * u

    whole = gated(gate, up)
    monkeypatch.setattr(_kernels, "WORKERS", 2)
    monkeypatch.setattr(_kernels, "BLOCK_BYTES", 5 * 24 * 4)  # 5 rows a block: 74 rows -> 15 blocks
    monkeypatch.setattr(_kernels, "CACHED_BYTES", 0)  # as if the arrays were larger than the cache
    blocks = _kernels.by_row_blocks(gated, gate, up)
    assert blocks.shape == (2, 37, 24) and blocks.dtype == np.float32
    np.testing.assert_array_equal(blocks, whole)
    np.testing.assert_array_equal(_kernels.by_row_blocks(gated, gate[:, :2], up[:, :2]), whole[:, :2])
