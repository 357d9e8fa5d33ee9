"""A padded row with two batch faults at once, as mlx-vlm 0.7.10 runs a PaliGemma 1 batch: its
image features placed by absolute position in the padded row (shifted by the padding) *and*
its integer 0/1 attention mask handed to `mx.fast.scaled_dot_product_attention`, which adds a
mask that is not boolean (pads not masked: a real key +1, a pad +0), the pads' embeddings
zeroed, RoPE positions over every slot of the padded row. The port below does this in its own
code (its own attention, merge and positions), not through the diagnosis's swaps."""

from __future__ import annotations

import json

from npgemma import cli

PORT = '''
import os

import numpy as np
import npgemma
from npgemma import gemma, paligemma

STATE = {}


def _added(q, k, v, mask, scale, logit_cap=None):
    """Every key visible; the outer product of the 0/1 padding mask added to the scores."""
    n, kv = q.shape[1], k.shape[1]
    k, v = np.repeat(k, n // kv, axis=1), np.repeat(v, n // kv, axis=1)  # [B, N, S, H]
    scores = np.einsum("bnlh,bnsh->bnls", q, k) * np.float32(scale)
    m = STATE["mask"]  # [B, S] 0/1
    scores = scores + STATE["plus"] * (m[:, :, None] * m[:, None, :])[:, None]
    scores = scores - scores.max(axis=-1, keepdims=True)
    w = np.exp(scores)
    return np.einsum("bnls,bnsh->bnlh", w / w.sum(axis=-1, keepdims=True), v).astype(np.float32)


def _zeroed_pads(table, input_ids, text):
    x = STATE["embed"](table, input_ids, text)
    return np.where((STATE["mask"] == 0)[..., None], np.float32(0), x)


def run(model_dir, image, prompt, max_new_tokens=8):
    pipe = npgemma.load(model_dir)
    if not isinstance(prompt, list):
        tokens = pipe.generate(image, prompt, max_new_tokens=max_new_tokens).token_ids
        return {"logits": pipe.logits(image, prompt, positions=slice(None)), "token_ids": tokens}
    cfg, p = pipe.cfg, pipe.params
    b = pipe.processor.batch(image, prompt)
    valid = b.attention_mask.astype(bool)  # [B, S], left-padded
    rows, n = valid.shape
    pads = n - valid.sum(axis=1)
    feats = paligemma.encode_image(p, b.pixel_values, cfg)  # [B, P, D]
    shifted = np.zeros_like(feats)  # image token t gets feature t + pad, the last ones zeros
    for r in range(rows):
        shifted[r, :feats.shape[1] - pads[r]] = feats[r, pads[r]:]
    STATE.update(mask=valid.astype(np.float32), embed=gemma.embed,
                 plus=np.float32(os.environ.get("MLX_BATCH_PLUS", "1")))
    saved = gemma.attention, gemma.embed
    gemma.attention, gemma.embed = _added, _zeroed_pads
    try:
        positions = np.broadcast_to(np.arange(1, n + 1), (rows, n)).copy()  # every slot counted
        everything = np.ones_like(valid)
        logits, _ = paligemma.forward(p, cfg, b.input_ids, positions,
                                      paligemma.attention_masks(cfg, everything, everything, 0),
                                      shifted)
    finally:
        gemma.attention, gemma.embed = saved
    return [{"logits": logits[r][valid[r]]} for r in range(rows)]
'''


def _run(capsys, tmp_path, monkeypatch, plus: str):
    path = tmp_path / "mlx_batch_port.py"
    path.write_text(PORT)
    monkeypatch.setenv("MLX_BATCH_PLUS", plus)
    rc = cli.main(["conform", "--against", f"{path}:run", "--workdir", str(tmp_path / "w"),
                   "--cases", "pg1-batch", "--json", "--quiet", "--max-new-tokens", "2"])
    (r,) = json.loads(capsys.readouterr().out)["cases"]
    return rc, r


def test_shifted_features_and_an_added_mask_are_named_together(capsys, tmp_path, monkeypatch):
    rc, r = _run(capsys, tmp_path, monkeypatch, "1")
    assert rc == 1 and r["explained"], r["verdict"]
    padded = [i for i, row in enumerate(r["report"]["rows"]) if not row["ok"]]
    assert padded == [0, 2]  # the unpadded row 1 is right
    pair = ["batch-image-features-shifted-by-padding", "mask-added-padded-positions"]
    assert r["deviations"] == pair * len(padded), r["verdict"]


def test_a_mask_added_otherwise_is_not_named(capsys, tmp_path, monkeypatch):
    # +2 on the real keys: no trap of the catalogue does that
    rc, r = _run(capsys, tmp_path, monkeypatch, "2")
    assert rc == 1 and not r["explained"], r["verdict"]
    assert "mask-added-padded-positions" not in r["deviations"]


def test_the_trap_is_in_the_catalogue():
    from npgemma.compare.catalogue import CATALOGUE

    assert CATALOGUE["mask-added-padded-positions"].family == "batch"
