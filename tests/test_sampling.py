"""Sampling (npgemma/generation/generate.py `filter_logits`, `sample`): golden filters,
transformers' warpers as the oracle, and seeded draws checked against the filtered distribution.

References, all independent of the code under test:
* hand-worked rows (probabilities chosen so the nucleus boundary is far from any rounding);
* transformers 5.24's `TemperatureLogitsWarper` -> `TopKLogitsWarper` -> `TopPLogitsWarper`,
  the order `generate` applies them (skipped when transformers is not installed);
* a chi-square test of 40,000 seeded draws against softmax of the filtered logits in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from npgemma.generation.generate import GenerationConfig, filter_logits, sample

F32 = np.float32


def _gen(**kw) -> GenerationConfig:
    return GenerationConfig(do_sample=True, **kw)


def _kept(x: np.ndarray) -> list[list[int]]:
    return [np.flatnonzero(np.isfinite(row)).tolist() for row in x]


# --------------------------------------------------------------------------- golden rows

_PROBS = np.log(np.array([[0.05, 0.5, 0.15, 0.3]]))  # ranking: 1 (0.5), 3 (0.3), 2, 0


@pytest.mark.parametrize("kw, kept", [
    (dict(top_k=1), [1]),
    (dict(top_k=2), [1, 3]),
    (dict(top_k=0), [0, 1, 2, 3]),            # 0 switches top-k off, as in HF
    (dict(top_k=50), [0, 1, 2, 3]),           # k beyond V keeps everything
    (dict(top_p=0.45), [1]),                  # the top token alone already covers 0.45
    (dict(top_p=0.75), [1, 3]),               # 0.5 < 0.75 <= 0.8
    (dict(top_p=0.9), [1, 2, 3]),             # 0.8 < 0.9 <= 0.95
    (dict(top_p=1.0), [0, 1, 2, 3]),
    (dict(top_p=1e-9), [1]),                  # the top token always stays
    (dict(top_k=3, top_p=0.75), [1, 3]),
    (dict(top_k=1, top_p=0.99), [1]),         # both filters apply, not just the last one
])
def test_filter_golden(kw, kept):
    out = filter_logits(_PROBS.astype(F32), _gen(**kw))
    assert out.dtype == np.float32
    assert _kept(out) == [kept]
    # kept entries are the logits / temperature, untouched
    np.testing.assert_array_equal(out[0, kept], _PROBS.astype(F32)[0, kept])
    assert np.all(out[~np.isfinite(out)] == -np.inf)


def test_temperature_comes_before_top_p():
    # At temperature 2 the distribution flattens: p ∝ sqrt([0.05, 0.5, 0.15, 0.3]), whose top
    # two tokens hold 0.707 / 1.94... ~ 0.65, so top_p = 0.7 needs a third token. Applying
    # top-p to the unscaled logits would keep two.
    out = filter_logits(_PROBS.astype(F32), _gen(temperature=2.0, top_p=0.7))
    assert _kept(out) == [[1, 2, 3]]
    np.testing.assert_allclose(out[0, [1, 2, 3]], _PROBS[0, [1, 2, 3]] / 2, rtol=1e-6)


def test_nucleus_boundary_is_inclusive():
    # Four equal logits: probabilities exactly 0.25 and their sums exact in float32. top_p 0.5
    # is reached by two tokens, so the third (mass above it = 0.5 >= top_p) goes: HF removes
    # `cumsum_ascending <= 1 - top_p`, the same rule. Ties break by id, lowest first.
    flat = np.zeros((1, 4), F32)
    assert _kept(filter_logits(flat, _gen(top_p=0.5))) == [[0, 1]]
    assert _kept(filter_logits(flat, _gen(top_p=0.5000001))) == [[0, 1, 2]]
    assert _kept(filter_logits(flat, _gen(top_p=0.25))) == [[0]]


def test_ties_at_the_kth_value_are_all_kept():
    x = np.array([[1.0, 3.0, 3.0, 3.0, 0.0]], F32)
    assert _kept(filter_logits(x, _gen(top_k=2))) == [[1, 2, 3]]  # HF's `scores < kth` rule


def test_greedy_is_first_argmax():
    x = np.array([[0.0, 2.0, 2.0, -1.0], [5.0, 5.0, 5.0, 5.0]], F32)
    assert sample(x, GenerationConfig(), np.random.default_rng(0)).tolist() == [1, 0]


# --------------------------------------------------------------------------- transformers oracle

def _adversarial_rows(rng, v):
    rows = [rng.standard_normal(v) * 3,                         # random
            rng.standard_normal(v) * 0.01,                      # nearly flat
            np.zeros(v),                                        # flat: every value tied
            np.r_[60.0, rng.standard_normal(v - 1)],            # one dominant token
            np.round(rng.standard_normal(v) * 2) / 2,           # many ties at every level
            np.r_[np.full(v // 2, 4.0), np.full(v - v // 2, -4.0)],  # two tied blocks
            rng.standard_normal(v) * 30]                        # very peaked
    return np.stack(rows).astype(F32)


def _hf_filter(logits: np.ndarray, gen: GenerationConfig) -> np.ndarray:
    torch = pytest.importorskip("torch")
    lp = pytest.importorskip("transformers.generation.logits_process")
    scores = torch.from_numpy(logits.copy())
    warpers = [lp.TemperatureLogitsWarper(gen.temperature)]
    if gen.top_k:
        warpers.append(lp.TopKLogitsWarper(gen.top_k))
    if gen.top_p is not None and gen.top_p < 1.0:
        warpers.append(lp.TopPLogitsWarper(gen.top_p))
    ids = torch.zeros((scores.shape[0], 1), dtype=torch.long)
    for w in warpers:
        scores = w(ids, scores)
    return scores.numpy()


def _on_nucleus_boundary(x: np.ndarray, a: np.ndarray, b: np.ndarray, gen) -> bool:
    """One token more or fewer, where the smaller nucleus holds top_p up to rounding: a block of
    tied tokens whose mass is exactly top_p (150 equal tokens, top_p 0.5) is decided by float32
    round-off in either implementation. x: the row's logits; a, b: the two filtered rows."""
    na, nb = int(np.isfinite(a).sum()), int(np.isfinite(b).sum())
    if abs(na - nb) != 1 or gen.top_p is None:
        return False
    z = np.sort(x.astype(np.float64) / gen.temperature)[::-1]
    if gen.top_k:
        z = z[z >= z[min(gen.top_k, len(z)) - 1]]  # top-k's survivors (ties at the kth kept)
    p = np.exp(z - z[0])
    return abs(p[:min(na, nb)].sum() / p.sum() - gen.top_p) < 1e-5


_SETTINGS = [dict(top_k=5), dict(top_k=1), dict(top_p=0.9), dict(top_p=0.3), dict(top_p=0.999),
             dict(temperature=0.7, top_k=20, top_p=0.8), dict(temperature=1.6, top_p=0.6),
             dict(temperature=0.25, top_k=3), dict(top_k=40, top_p=0.5)]


@pytest.mark.oracle
@pytest.mark.parametrize("kw", _SETTINGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_filter_matches_transformers_warpers(kw):
    rng = np.random.default_rng(len(str(kw)))
    gen = _gen(**kw)
    for v in (7, 64, 301):
        x = _adversarial_rows(rng, v)
        ours, hf = filter_logits(x, gen), _hf_filter(x, gen)
        for row, (a, b) in enumerate(zip(ours, hf)):
            ka, kb = np.isfinite(a), np.isfinite(b)
            # Among tied values the two sorts may keep different members: same count, same
            # values. Untied rows must keep exactly the same tokens.
            if ka.sum() != kb.sum():
                assert _on_nucleus_boundary(x[row], a, b, gen), (kw, v, row)
                continue
            np.testing.assert_allclose(np.sort(a[ka]), np.sort(b[kb]), rtol=1e-6)
            if len(np.unique(x[row])) == v:
                np.testing.assert_array_equal(ka, kb)
                np.testing.assert_allclose(a[ka], b[kb], rtol=1e-6)


# --------------------------------------------------------------------------- seeded draws

def _chi2_critical(dof: int, z: float = 3.72) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z = 3.72: p = 1e-4)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


@pytest.mark.parametrize("kw", [dict(), dict(top_k=4), dict(top_p=0.8),
                                dict(temperature=0.6, top_k=6, top_p=0.9)],
                         ids=["plain", "top_k", "top_p", "all"])
def test_seeded_draws_follow_the_filtered_distribution(kw):
    rng = np.random.default_rng(1)
    row = (rng.standard_normal(12) * 1.5).astype(F32)
    gen, n = _gen(seed=0, **kw), 40_000
    draws = sample(np.tile(row, (n, 1)), gen, np.random.default_rng(gen.seed))
    assert draws.dtype == np.int64 and draws.shape == (n,)
    kept = np.isfinite(filter_logits(row[None], gen)[0])
    assert kept[draws].all(), "a draw outside the filtered set"
    z = row.astype(np.float64) / gen.temperature
    p = np.where(kept, np.exp(z - z.max()), 0.0)
    p /= p.sum()
    counts = np.bincount(draws, minlength=len(row))
    expected = n * p[kept]
    chi2 = float(((counts[kept] - expected) ** 2 / expected).sum())
    dof = int(kept.sum()) - 1
    if dof:
        assert chi2 < _chi2_critical(dof), (chi2, dof)
    # the same seed draws the same tokens; another seed does not
    again = sample(np.tile(row, (200, 1)), gen, np.random.default_rng(gen.seed))
    np.testing.assert_array_equal(again, draws[:200])
    if dof:
        other = sample(np.tile(row, (200, 1)), gen, np.random.default_rng(gen.seed + 1))
        assert (other != draws[:200]).any()


def test_draw_per_row_uses_that_rows_distribution():
    # Row 0 puts all mass on token 2, row 1 on token 0: a draw must never mix rows up.
    x = np.array([[-50.0, -50.0, 50.0], [50.0, -50.0, -50.0]], F32)
    for seed in range(20):
        assert sample(x, _gen(), np.random.default_rng(seed)).tolist() == [2, 0]


# --------------------------------------------------------------------------- non-finite logits

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("do_sample", [False, True])
def test_no_token_is_chosen_from_non_finite_logits(bad, do_sample):
    """argmax over a row holding a NaN returns the NaN's index (token 0 when all are NaN): a
    silently wrong token. Row 1 alone is bad; the error names it, not row 0."""
    from npgemma.errors import NonFiniteError

    x = np.array([[0.0, 2.0, 1.0, -1.0], [0.0, 2.0, bad, -1.0]], F32)
    gen = GenerationConfig(do_sample=do_sample)
    with pytest.raises(NonFiniteError, match=r"^generation step 4 \(decode step 4\): the logits "
                                             r"of row 1 hold NaN or Inf"):
        sample(x, gen, np.random.default_rng(0), step=4)
    with pytest.raises(NonFiniteError, match=r"^the logits of rows 0, 1 hold NaN or Inf"):
        sample(np.full((2, 4), bad, F32), gen, np.random.default_rng(0))


class _Poisoned:
    """A stand-in backend whose logits turn NaN from decode step `at` on (step 0: the prefill);
    its `greedy` is the NumPy backend's (which marks a bad row -1 on the device side)."""

    name = "poisoned"

    def __init__(self, at: int):
        self.at, self.step = at, 0

    def _logits(self):
        x = np.tile(np.array([0.0, 3.0, 1.0, 2.0], F32), (1, 1, 1))  # [B=1, L=1, V=4]: token 1
        return np.full_like(x, np.nan) if self.step >= self.at else x

    def encode_image(self, params, pixel_values, cfg):
        return None

    def init_cache(self, cfg, batch, max_length):
        return None

    def forward(self, *args, **kwargs):
        return self._logits(), None

    def start_decode(self, *args):
        return None

    def decode_step(self, *args, **kwargs):
        self.step += 1
        return self._logits()

    def greedy(self, logits):
        from npgemma.generation.numpy_backend import NumpyBackend

        return NumpyBackend.greedy(self, logits)

    def ids_to_numpy(self, ids):
        return np.asarray(ids, np.int64)

    def last_logits_to_numpy(self, logits):
        return np.asarray(logits[:, -1], F32)


@pytest.mark.parametrize("do_sample", [False, True])
@pytest.mark.parametrize("at", [0, 2])
def test_generation_stops_at_the_step_whose_logits_are_not_finite(at, do_sample):
    from types import SimpleNamespace

    from npgemma.errors import NonFiniteError
    from npgemma.generation.generate import generate_tokens

    cfg = SimpleNamespace(eos_token_id=9, num_image_tokens=0,
                          text_config=SimpleNamespace(max_position_embeddings=64,
                                                      is_gemma2=False, sliding_window=None))
    gen = GenerationConfig(max_new_tokens=5, do_sample=do_sample, seed=0)
    got = []
    with pytest.raises(NonFiniteError, match=rf"^generation step {at} "):
        for token in generate_tokens(_Poisoned(at), None, cfg,
                                     np.zeros((1, 3), np.int64), None, gen):
            got.append(int(token[0]))
    assert len(got) == at and (do_sample or got == [1] * at)


def test_numpy_backend_greedy_marks_non_finite_rows():
    from npgemma.generation.numpy_backend import NumpyBackend

    x = np.array([[[0.0, 2.0, 1.0]], [[0.0, np.nan, 5.0]], [[np.inf, 0.0, 1.0]]], F32)
    assert NumpyBackend().greedy(x).tolist() == [1, -1, -1]


class _Scripted:
    """A backend whose greedy picks are given row by row (the generation loop's contract with a
    backend, nothing computed): step t of row b picks script[b][t]."""

    def __init__(self, script):
        self.script, self.step = np.asarray(script), 0

    def encode_image(self, params, pixel_values, cfg):
        return None

    def init_cache(self, cfg, batch, max_length):
        return None

    def forward(self, params, cfg, input_ids, positions, masks, image_features=None, cache=None,
                last_only=False):
        return self.script[:, 0], cache

    def start_decode(self, cfg, valid, is_prefix, cache):
        return None

    def greedy(self, picks):
        return picks

    def ids_to_numpy(self, ids):
        return np.asarray(ids, np.int64)

    def decode_step(self, params, cfg, ids, state, cache):
        self.step += 1
        return self.script[:, self.step]


def test_a_row_that_has_produced_eos_keeps_producing_eos():
    """Rows finish apart: once a row has given EOS it is given EOS at every later step, whatever
    the model goes on computing for it, and the loop ends when every row is done."""
    from types import SimpleNamespace

    from npgemma.generation.generate import generate_tokens

    eos = 1
    cfg = SimpleNamespace(eos_token_id=eos, num_image_tokens=1,
                          text_config=SimpleNamespace(max_position_embeddings=100, is_gemma2=False))
    script = [[5, eos, 7, 8, 9], [6, 6, 6, eos, 4]]
    got = generate_tokens(_Scripted(script), None, cfg, np.zeros((2, 3), np.int64), None,
                          GenerationConfig(max_new_tokens=5))
    assert np.stack(list(got)).T.tolist() == [[5, eos, eos, eos], [6, 6, 6, eos]]
