"""Whole-model parity, NumPy vs torch, through the Backend interface on tiny random PaliGemmas.

Gemma-1 (MQA and GQA) and Gemma-2 (small sliding window, soft caps that saturate) decoders,
1-2 SigLIP layers, left-padded batches. Checked stage by stage (the `hidden_states` lists of
`siglip.vision_tower` and `gemma.decoder`), then the logits through `Backend.forward`, then
greedy tokens through `generate.generate_tokens`, the loop the pipeline runs.

Errors here accumulate end to end (the decoder reads the twin's own image features), and
each stage is judged by the table row of its last operation.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, example, given

torch = pytest.importorskip("torch")

from npgemma import paligemma as np_paligemma  # noqa: E402
from npgemma.compare.tolerances import TOLERANCES, assert_close, compare  # noqa: E402
from npgemma.generation.backend import get_backend  # noqa: E402
from npgemma.generation.generate import GenerationConfig, generate_tokens  # noqa: E402
from npgemma.torch_backend import paligemma as pt_paligemma  # noqa: E402
from parity.strategies import (  # noqa: E402
    ModelSpec,
    gemma1,
    gemma2,
    map_tree,
    model_specs,
    on_grid,
    paligemma_params,
    tiny_paligemma,
    to_numpy,
    to_torch,
)

# Relative size of one rounding in each low-precision dtype (a full ulp at 1: 2^-8, 2^-11).
ROUNDING = {"bfloat16": 2.0 ** -8, "float16": 2.0 ** -11}


def _setup(spec: ModelSpec, dtype: str, device):
    ids, attn, pixels = spec.inputs()
    tree, pixels = on_grid((paligemma_params(spec.cfg, spec.seed, spec.tied), pixels), dtype)
    ref, twin = get_backend("numpy"), get_backend("torch", device=str(device), dtype=dtype)
    return ref, twin, tree, twin.from_numpy(tree), ids, attn.astype(bool), pixels


def stages(pal, tree, cfg, pixels, ids, valid, to_input=lambda a: a):
    """[(name, component, output, real)] of one implementation (`pal` = the paligemma module
    of either side), each stage judged by its last operation's row. `real` marks the rows
    compared in bf16/fp16 (None: all rows; see `check_rows`)."""
    out, vis, dec = [], [], []
    feats = pal.encode_image(tree, to_input(pixels), cfg, hidden_states=vis)
    out.append(("vision embeddings", "vision_embeddings", vis[0], None))
    out += [(f"vision layer {i}", "vision_layer", h, None) for i, h in enumerate(vis[1:], 1)]
    out.append(("image features", "projector", feats, None))
    positions = np_paligemma.rope_positions(valid)
    masks = np_paligemma.attention_masks(cfg, valid, valid, 0)
    logits, _ = pal.forward(tree, cfg, to_input(ids), to_input(positions), to_input(masks), feats,
                            hidden_states=dec)
    # The decoder's list: merged embeddings (they carry the image features' error, hence the
    # projector's row), each layer's output, the final norm's output.
    out.append(("merged embeddings", "projector", dec[0], valid))
    out += [(f"decoder hidden state {i}", "decoder_layer", h, valid)
            for i, h in enumerate(dec[1:-1], 1)]
    out.append(("final norm", "final_norm", dec[-1], valid))
    out.append(("logits", "logits", logits, valid))
    return out


def check_rows(actual, expected, real, component, dtype, what):
    """Compare every position in float32; in bf16/fp16 the real (non-padding) positions only,
    the padding ones required finite (a query that sees no key has no defined output, see
    test_layers_parity.check_rows)."""
    a = to_numpy(actual)
    if dtype == "float32" or real is None:
        return assert_close(a, expected, component, dtype, what)
    assert np.isfinite(a).all(), f"{what} [{dtype}]: non-finite values"
    return assert_close(a[real], expected[real], component, dtype, what)


def assume_well_conditioned(spec, tree, pixels, ids, valid, dtype, reference):
    """Skip (hypothesis `assume`) instances too ill-conditioned to judge `dtype` parity on.

    The table's bf16/fp16 rows bound what computing in that dtype costs on a reasonable
    problem; a tiny random model occasionally is not one (~0.3% in bf16: e.g. a Gemma-2
    sub-layer output that nearly cancels, then post-normalised to unit size). The test: rerun
    the reference with every weight and pixel perturbed by one rounding of `dtype` (relative
    ±2^-8 / ±2^-11). If the reference itself then moves by more than half a stage's limit,
    that stage's error is the problem's condition, not the twin's; the instance is rejected
    (~3% of draws in bf16; the twin's error was within the limit on every instance kept among
    2000 sampled). float32 needs no filter: its rounding is 2^16 times smaller.
    """
    if dtype == "float32":
        return
    rng = np.random.default_rng(spec.seed + 7)
    eps = np.float32(ROUNDING[dtype])

    def jiggle(a):
        if not (isinstance(a, np.ndarray) and a.dtype == np.float32):
            return a
        return a * (np.float32(1) + eps * rng.uniform(-1, 1, a.shape).astype(np.float32))

    perturbed = stages(np_paligemma, map_tree(jiggle, tree), spec.cfg, jiggle(pixels), ids, valid)
    for (_, component, a, real), (_, _, b, _) in zip(reference, perturbed):
        sel = slice(None) if real is None else real
        c = compare(b[sel], a[sel], component, dtype)
        assume(c.max_abs <= 0.5 * c.limit)


PINNED = [
    # Gemma-1 MQA; Gemma-1 GQA with a padded row, untied head; Gemma-2 (window 2, caps that
    # saturate) with three rows of different lengths and <image> beyond the embedding table.
    ModelSpec(tiny_paligemma(gemma1(n=4, k=1)), True, (4,), 11, decode_steps=4),
    ModelSpec(tiny_paligemma(gemma1(n=8, k=2)), False, (2, 5), 12, decode_steps=4),
    ModelSpec(tiny_paligemma(gemma2(n=4, k=2, layers=3), image_token_index=32), True,
              (5, 1, 3), 13, decode_steps=5),
]


@given(spec=model_specs())
@example(spec=PINNED[0])
@example(spec=PINNED[1])
@example(spec=PINNED[2])
def test_stages_and_logits(spec, dtype, device):
    """Vision embeddings, each SigLIP layer, image features, merged embeddings, each decoder
    layer, the final norm, the logits; then the same logits through `Backend.forward`."""
    cfg = spec.cfg
    ref, twin, tree, params, ids, valid, pixels = _setup(spec, dtype, device)
    expected = stages(np_paligemma, tree, cfg, pixels, ids, valid)
    assume_well_conditioned(spec, tree, pixels, ids, valid, dtype, expected)
    got = stages(pt_paligemma, params, cfg, pixels, ids, valid,
                 to_input=lambda a: to_torch(a, device, dtype))
    assert [g[0] for g in got] == [e[0] for e in expected]
    for (name, component, e, real), (_, _, g, _) in zip(expected, got):
        check_rows(g, e, real, component, dtype, name)

    # Through the interface, as generation calls it: features, then a cached last-only prefill.
    feats = ref.encode_image(tree, pixels, cfg)
    feats_t = twin.encode_image(params, pixels, cfg)
    assert_close(twin.to_numpy(feats_t), feats, "projector", dtype, "Backend.encode_image")
    positions = np_paligemma.rope_positions(valid)
    masks = np_paligemma.attention_masks(cfg, valid, valid, 0)
    out, _ = ref.forward(tree, cfg, ids, positions, masks, feats,
                         cache=ref.init_cache(cfg, spec.batch, ids.shape[1]), last_only=True)
    out_t, _ = twin.forward(params, cfg, ids, positions, masks, feats_t,
                            cache=twin.init_cache(cfg, spec.batch, ids.shape[1]), last_only=True)
    # The reference itself first: a cache changes the memory layout (BLAS may round
    # differently), not the answer.
    assert_close(out, expected[-1][2][:, -1:], "logits", "float32", "numpy cached vs uncached")
    assert_close(twin.to_numpy(out_t), out, "logits", dtype, "Backend.forward last_only")


class RecordingBackend:
    """The reference backend, keeping the last-position logits of each greedy step."""

    def __init__(self, inner):
        self.inner, self.logits = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def greedy(self, logits):
        self.logits.append(np.asarray(logits[:, -1], np.float32))
        return self.inner.greedy(logits)


def near_tie(logits: np.ndarray, dtype: str) -> np.ndarray:
    """bool[B]: is the reference's top-1 within reach of a flip by `dtype`'s error?

    Each logit of the twin may be off by the `decode_step` limit, atol + rtol * max|logits|,
    so two candidates closer than twice that may swap. In float32 that is ~4e-5 of the
    logits' scale — rarely met, but it can be, and then float32 may legitimately flip too.
    """
    atol, rtol = TOLERANCES["decode_step"][dtype]
    top2 = np.sort(logits, axis=-1)[:, -2:]
    return top2[:, 1] - top2[:, 0] < 2 * (atol + rtol * np.abs(logits).max(axis=-1))


@given(spec=model_specs(max_decode=6))
@example(spec=PINNED[0])
@example(spec=PINNED[1])
@example(spec=PINNED[2])
def test_greedy_tokens(spec, dtype, device):
    """Greedy tokens through `generate_tokens` on both backends agree step by step, per row,
    until the first step where the reference's top-2 margin is a near tie for `dtype`: there
    the twin may pick the other token, and once it does, the rows' contexts differ and nothing
    after is comparable. (Steps after a near tie that both sides resolved the same way are
    still checked.) In float32 this means identical tokens unless logits tie to ~1e-5."""
    ref, twin, tree, params, ids, valid, pixels = _setup(spec, dtype, device)
    assume_well_conditioned(spec, tree, pixels, ids, valid, dtype,
                            stages(np_paligemma, tree, spec.cfg, pixels, ids, valid))
    gen = GenerationConfig(max_new_tokens=max(1, spec.decode_steps))
    recorder = RecordingBackend(ref)
    attn = valid.astype(np.int64)
    expected = list(generate_tokens(recorder, tree, spec.cfg, ids, pixels, gen, attn))
    got = list(generate_tokens(twin, params, spec.cfg, ids, pixels, gen, attn))
    assert all(t.dtype == np.int64 for t in got)
    diverged = np.zeros(spec.batch, bool)
    for step, (e, g, logits) in enumerate(zip(expected, got, recorder.logits)):
        mismatch = (e != g) & ~diverged
        unexplained = mismatch & ~near_tie(logits, dtype)
        assert not unexplained.any(), (
            f"[{dtype}] step {step}: twin tokens {g.tolist()} != reference {e.tolist()} in rows "
            f"{np.flatnonzero(unexplained).tolist()} with no near tie (reference top-2 margins "
            f"{np.round(np.diff(np.sort(logits, -1)[:, -2:], axis=-1)[:, 0], 6).tolist()})")
        diverged |= mismatch
    if not diverged.any():
        assert len(got) == len(expected), "same tokens, yet one backend stopped earlier"
