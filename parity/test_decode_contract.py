"""The decode contract of a backend: prefill `forward`, then `start_decode` once and
`decode_step` per token, with `greedy` / `ids_to_numpy` / `last_logits_to_numpy`.

What it must compute: after N greedy steps, the logits of every step equal those of one
uncached NumPy `forward` over the whole sequence (prompt + the N tokens fed), with the prompt
as the bidirectional prefix and the fed tokens causal — `paligemma.prefix_lm_mask` semantics,
including a Gemma-2 sliding window smaller than the prompt (a generated query is windowed even
against prefix keys) and left-padded rows (RoPE positions count real tokens only). The ids fed
back alternate between `greedy`'s device tensor and NumPy int64 (both forms are allowed).

The torch backend runs in each decode mode this machine has: "eager", "static" (the kept,
reused buffers of graph mode, replayed without a graph) and, on CUDA, "graph".
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

torch = pytest.importorskip("torch")

from npgemma import gemma as G  # noqa: E402
from npgemma import paligemma as P  # noqa: E402
from npgemma.compare.tolerances import assert_close  # noqa: E402
from npgemma.generation.backend import get_backend  # noqa: E402
from npgemma.torch_backend import TorchBackend  # noqa: E402
from parity.strategies import (  # noqa: E402
    ModelSpec,
    gemma1,
    gemma2,
    model_specs,
    normal,
    on_grid,
    paligemma_params,
    tiny_paligemma,
    to_torch,
)


def _modes(device) -> list[str]:
    return ["eager", "static"] + (["graph"] if device.type == "cuda" else [])


def _case(spec: ModelSpec, dtype: str):
    """Decoder weights and random image features (on `dtype`'s grid), prompt ids, valid."""
    cfg, t = spec.cfg, spec.cfg.text_config
    ids, attn, _ = spec.inputs()
    rng = np.random.default_rng(spec.seed + 3)
    feats = normal(rng, (spec.batch, cfg.num_image_tokens, t.hidden_size))
    tree = {k: v for k, v in paligemma_params(cfg, spec.seed, spec.tied).items()
            if k in ("language_model", "lm_head")}
    tree, feats = on_grid((tree, feats), dtype)
    return tree, feats, ids, attn.astype(bool)


def run_contract(backend, params, cfg, ids, valid, feats, steps: int):
    """Prefill then `steps` greedy decode steps -> (logits float32[B, V] per step: the
    prefill's last one, then one per fed token; the fed tokens int64[B] per step)."""
    b, s = ids.shape
    cache = backend.init_cache(cfg, b, s + steps)
    logits, cache = backend.forward(params, cfg, ids, P.rope_positions(valid),
                                    P.attention_masks(cfg, valid, valid, 0),
                                    image_features=feats, cache=cache, last_only=True)
    state = backend.start_decode(cfg, valid, valid.copy(), cache)
    out, tokens = [backend.last_logits_to_numpy(logits)], []
    for i in range(steps):
        ids_dev = backend.greedy(logits)
        tok = backend.ids_to_numpy(ids_dev)
        assert tok.dtype == np.int64 and tok.shape == (b,)
        tokens.append(tok)
        logits = backend.decode_step(params, cfg, ids_dev if i % 2 == 0 else tok, state, cache)
        assert tuple(logits.shape) == (b, 1, cfg.text_config.vocab_size)
        out.append(backend.last_logits_to_numpy(logits))
    return out, tokens


def uncached_reference(tree, cfg, ids, valid, feats, tokens) -> np.ndarray:
    """NumPy float32 logits [B, S + N, V] of one forward over prompt + fed tokens.

    `paligemma.forward`'s steps spelled out, so that a fed token that happens to be the
    `<image>` id (random weights may pick it) is embedded as text, as decoding embeds it."""
    n, b, t = len(tokens), len(ids), cfg.text_config
    lm = tree["language_model"]
    prompt = P.merge(G.embed(lm["embed_tokens"], ids, t), feats, ids, cfg.image_token_index)
    fed = G.embed(lm["embed_tokens"], np.stack(tokens, axis=1), t) if n else prompt[:, :0]
    valid_all = np.concatenate([valid, np.ones((b, n), bool)], axis=1)
    prefix = np.concatenate([valid, np.zeros((b, n), bool)], axis=1)
    h = G.decoder(lm, np.concatenate([prompt, fed], axis=1), P.rope_positions(valid_all),
                  P.attention_masks(cfg, valid_all, prefix, 0), t)
    head = tree["lm_head"]["weight"] if "lm_head" in tree else lm["embed_tokens"]["weight"]
    return G.lm_head(h, head, t)


def check_against_reference(got, tokens, tree, cfg, ids, valid, feats, dtype, what):
    ref = uncached_reference(tree, cfg, ids, valid, feats, tokens)
    s = ids.shape[1]
    for i, g in enumerate(got):
        assert_close(g, ref[:, s - 1 + i], "decode_step", dtype, f"{what}: step {i} logits")


PINNED = [
    # Gemma-2, window 2 < every prompt, three rows of different lengths (left padding), GQA.
    ModelSpec(tiny_paligemma(gemma2(n=4, k=2, layers=3)), True, (5, 1, 3), 21, decode_steps=6),
    # Gemma-2 with window 3, MQA, untied head.
    ModelSpec(tiny_paligemma(gemma2(n=4, k=1, layers=2, sliding_window=3)), False, (2, 4), 22,
              decode_steps=5),
    # Gemma-1 GQA, one row.
    ModelSpec(tiny_paligemma(gemma1(n=8, k=2)), True, (3,), 23, decode_steps=4),
]


@pytest.mark.parametrize("spec", PINNED, ids=["gemma2-w2-padded", "gemma2-w3-mqa", "gemma1-gqa"])
def test_torch_decode_matches_uncached_forward(spec, dtype, device):
    tree, feats, ids, valid = _case(spec, dtype)
    params, feats_t = to_torch(tree, device, dtype), to_torch(feats, device, dtype)
    for mode in _modes(device):
        backend = TorchBackend(device=str(device), dtype=dtype, decode=mode)
        # Twice on one backend: the second generation reuses the first one's kept buffers in
        # static / graph mode (stale slots must stay invisible), with other prompts.
        for run in range(2):
            run_ids = ids if run == 0 else np.where(valid, (ids + 5) % spec.cfg.image_token_index, 0)
            run_ids = np.where(ids == spec.cfg.image_token_index, ids, run_ids)
            got, tokens = run_contract(backend, params, spec.cfg, run_ids, valid, feats_t,
                                       spec.decode_steps)
            check_against_reference(got, tokens, tree, spec.cfg, run_ids, valid, feats, dtype,
                                    f"{mode} run {run}")


@given(spec=model_specs(max_decode=4))
@settings(max_examples=10)
def test_torch_decode_drawn(spec, dtype, device):
    tree, feats, ids, valid = _case(spec, dtype)
    backend = TorchBackend(device=str(device), dtype=dtype, decode="static")
    got, tokens = run_contract(backend, to_torch(tree, device, dtype), spec.cfg, ids, valid,
                               to_torch(feats, device, dtype), max(1, spec.decode_steps))
    check_against_reference(got, tokens, tree, spec.cfg, ids, valid, feats, dtype, "static")


def test_interleaved_generations_do_not_share_buffers(device):
    """Two generations of the same shape alive at once (two suspended streams): the second
    init_cache must not hand out the buffers the first is still using."""
    spec = PINNED[0]
    tree, feats, ids, valid = _case(spec, "float32")
    params, feats_t = to_torch(tree, device, "float32"), to_torch(feats, device, "float32")
    backend = TorchBackend(device=str(device), dtype="float32",
                           decode="graph" if device.type == "cuda" else "static")
    cfg, b, s = spec.cfg, spec.batch, ids.shape[1]
    runs = []
    for _ in range(2):
        cache = backend.init_cache(cfg, b, s + 3)
        logits, cache = backend.forward(params, cfg, ids, P.rope_positions(valid),
                                        P.attention_masks(cfg, valid, valid, 0),
                                        image_features=feats_t, cache=cache, last_only=True)
        runs.append([cache, backend.start_decode(cfg, valid, valid, cache), logits, []])
    assert runs[0][0].keys[0].data_ptr() != runs[1][0].keys[0].data_ptr()
    for _ in range(3):
        for run in runs:
            cache, state, logits, tokens = run
            tokens.append(backend.ids_to_numpy(backend.greedy(logits)))
            run[2] = backend.decode_step(params, cfg, tokens[-1], state, cache)
    np.testing.assert_array_equal(np.stack(runs[0][3]), np.stack(runs[1][3]))
    np.testing.assert_array_equal(backend.last_logits_to_numpy(runs[0][2]),
                                  backend.last_logits_to_numpy(runs[1][2]))


def test_decode_past_the_cache_is_an_error(device):
    spec = PINNED[2]
    tree, feats, ids, valid = _case(spec, "float32")
    backend = TorchBackend(device=str(device), dtype="float32")
    params = to_torch(tree, device, "float32")
    cfg, s = spec.cfg, ids.shape[1]
    cache = backend.init_cache(cfg, 1, s + 1)
    logits, cache = backend.forward(params, cfg, ids, P.rope_positions(valid),
                                    P.attention_masks(cfg, valid, valid, 0),
                                    image_features=to_torch(feats, device, "float32"),
                                    cache=cache, last_only=True)
    state = backend.start_decode(cfg, valid, valid, cache)
    logits = backend.decode_step(params, cfg, backend.greedy(logits), state, cache)
    with pytest.raises(ValueError, match="KV-cache overflow"):
        backend.decode_step(params, cfg, backend.greedy(logits), state, cache)


def test_numpy_backend_implements_the_contract(dtype):
    """The reference backend, where it implements the contract (same checks, float32)."""
    ref = get_backend("numpy")
    if not hasattr(ref, "start_decode"):
        pytest.skip("the numpy backend does not implement start_decode/decode_step yet")
    spec = PINNED[0]
    tree, feats, ids, valid = _case(spec, "float32")
    got, tokens = run_contract(ref, tree, spec.cfg, ids, valid, feats, spec.decode_steps)
    check_against_reference(got, tokens, tree, spec.cfg, ids, valid, feats, "float32", "numpy")
