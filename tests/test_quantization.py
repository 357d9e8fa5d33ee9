"""Quantization: each scheme against hand-computed examples and the libraries' code tables
(golden values worked out by hand from the libraries' definitions, not by the code under test),
the cost figures against a hand-computed KL, and the diagnosis against a stand-in quantized port
(tests/peers/quantized.py, its own quantization code) that is right, or dequantizes with the
wrong group size, or forgets the bias."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from npgemma import cli
from npgemma.compare import divergence, quantization as qz
from npgemma.compare.catalogue import CATALOGUE
from npgemma.synthetic.checkpoint import tiny_config, write_checkpoint

PORT = str(Path(__file__).parent / "peers" / "quantized.py") + ":run"


def test_mlx_affine_by_hand():
    # 2 bits, one group [-1, 0, 0.5, 3]: |min| < |max|, so the edge is max = 3 and the scale is
    # negative: -(3 - -1) / 3 = -4/3; q0 = rint(3 / -4/3) = rint(-2.25) = -2, so the scale
    # becomes 3 / -2 = -1.5 and the bias 3. q = rint((w - 3) / -1.5) = rint([2.67, 2, 1.67, 0])
    # = [3, 2, 2, 0]; w ~ -1.5 q + 3 = [-1.5, 0, 0, 3].
    got = qz.mlx_affine(np.array([[-1.0, 0.0, 0.5, 3.0]], np.float32), 2, 4)
    np.testing.assert_array_equal(got, [[-1.5, 0.0, 0.0, 3.0]])
    # The edge is the minimum when it is larger in magnitude: [-3, 1] at 2 bits: scale
    # +4/3, q0 = rint(-2.25) = -2, scale = -3 / -2 = 1.5, bias = -3; q = rint([0, 2.67]) =
    # [0, 3]: w ~ [-3, 1.5].
    np.testing.assert_array_equal(qz.mlx_affine(np.array([[-3.0, 1.0]], np.float32), 2, 2),
                                  [[-3.0, 1.5]])
    # An all-zero group: scale = eps, q0 = 0, bias 0: zeros come back exactly.
    np.testing.assert_array_equal(qz.mlx_affine(np.zeros((1, 4), np.float32), 4, 4), 0)
    # Groups run along the last axis, each its own scale and bias. [0, 2 | -5, 5] at 4 bits:
    # group 0: edge 2, scale -2/15, q0 = -15, bias 2, q = [15, 0]: [0, 2] exactly. Group 1:
    # |-5| is not > |5|, so the edge is 5, scale -10/15, q0 = rint(-7.5) = -8 (half to even),
    # scale 5 / -8 = -0.625, bias 5; q(-5) = 16, clipped to 15: -0.625 * 15 + 5 = -4.375.
    np.testing.assert_allclose(qz.mlx_affine(np.array([[0.0, 2.0, -5.0, 5.0]], np.float32),
                                             4, 2), [[0.0, 2.0, -4.375, 5.0]], atol=1e-6)
    with pytest.raises(ValueError, match="multiple of the group size"):
        qz.mlx_affine(np.zeros((2, 48), np.float32), 4, 32)


def test_mlx_dequantization_faults_by_hand():
    w = np.array([[-1.0, 0.0, 0.5, 3.0]], np.float32)
    # No bias: -1.5 * [3, 2, 2, 0] = [-4.5, -3, -3, 0].
    np.testing.assert_array_equal(qz.mlx_dequant_no_bias(w, 2, 4), [[-4.5, -3.0, -3.0, 0.0]])
    # Two groups of 2 read as one group of 4: the second pair uses the first pair's scale and
    # bias. [0, 2 | -5, 5] at 4 bits (worked out in test_mlx_affine_by_hand): group 0 scale
    # -2/15, bias 2; group 1 q = [15, 0], read with group 0's scale and bias -> [0, 2].
    got = qz.mlx_dequant_group(np.array([[0.0, 2.0, -5.0, 5.0]], np.float32), 4, 2, 4)
    np.testing.assert_allclose(got, [[0.0, 2.0, 0.0, 2.0]], atol=1e-6)


def test_int8_by_hand():
    # torchao: scale = absmax / 127.5 = 0.01; 1.275 / 0.01 = 127.5 -> clamped to 127 (the
    # range is -128..127): 1.27; -0.5 -> -50 -> -0.5.
    got = qz.SCHEMES["int8-torchao"].fn(np.array([[1.275, -0.5, 0.0]], np.float32))
    np.testing.assert_allclose(got, [[1.27, -0.5, 0.0]], atol=1e-6)
    # absmax / 127 (quanto): 2.54 -> scale 0.02; 0.013 / 0.02 = 0.65 -> 1 -> 0.02.
    got = qz.SCHEMES["int8-absmax127"].fn(np.array([[2.54, 0.013, -1.0]], np.float32))
    np.testing.assert_allclose(got, [[2.54, 0.02, -1.0]], atol=1e-6)
    # Per output channel: each row its own scale.
    rows = qz.SCHEMES["int8-absmax127"].fn(np.array([[127.0, 1.0], [1.27, 0.01]], np.float32))
    np.testing.assert_allclose(rows, [[127.0, 1.0], [1.27, 0.01]], atol=1e-6)


def test_bitsandbytes_code_tables_are_the_librarys():
    # bitsandbytes/functional.py get_4bit_type: NF4 as listed; FP4 the e2m1 values in its bit
    # order over their absmax 12.
    nf4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
           -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
           0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
           0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]
    np.testing.assert_array_equal(qz.NF4, np.array(nf4, np.float32))
    fp4 = np.array([0, 0.0625, 8, 12, 4, 6, 2, 3, -0.0, -0.0625, -8, -12, -4, -6, -2, -3]) / 12
    np.testing.assert_array_equal(qz.FP4, fp4.astype(np.float32))


def test_nf4_and_fp4_by_hand():
    # NF4, absmax 2: -1 / 2 = -0.5 is nearest -0.52507 (0.025 away, vs 0.105 to -0.39492);
    # 0.2 / 2 = 0.1 is nearest 0.07958 (0.020, vs 0.061 to 0.16093).
    got = qz.bnb_4bit(np.array([2.0, -1.0, 0.2, 0.0], np.float32), qz.NF4, blocksize=4)
    np.testing.assert_allclose(got, [2.0, -2 * 0.5250730514526367, 2 * 0.07958029955625534, 0],
                               rtol=1e-7)
    # FP4, absmax 6: 3.1 / 6 = 0.517 -> 6/12 = 0.5 (the next are 0.333, 0.667); 0.04 / 6 =
    # 0.0067 -> 0.0625/12; 1.2 / 6 = 0.2 -> 2/12 (0.0333 away, vs 0.05 to 3/12).
    got = qz.bnb_4bit(np.array([-6.0, 3.1, 0.04, 1.2], np.float32), qz.FP4, blocksize=4)
    np.testing.assert_allclose(got, [-6.0, 3.0, 0.03125, 1.0], rtol=1e-6)
    # Blocks run over the flattened weight; a short last block has its own absmax.
    got = qz.bnb_4bit(np.array([[4.0, 1.0, 2.0]], np.float32), qz.FP4, blocksize=2)
    np.testing.assert_allclose(got, [[4.0, 4 * 3 / 12, 2.0]], rtol=1e-6)


def test_layer_policies():
    keys = {"vision_tower.encoder.layers.0.self_attn.q_proj.weight": (64, 64),
            "vision_tower.embeddings.patch_embedding.weight": (64, 3, 14, 14),
            "vision_tower.embeddings.position_embedding.weight": (16, 64),
            "multi_modal_projector.linear.weight": (64, 64),
            "language_model.layers.0.mlp.down_proj.weight": (64, 128),
            "language_model.layers.0.input_layernorm.weight": (64,),
            "language_model.embed_tokens.weight": (256, 64)}
    flat = {k: np.ones(s, np.float32) for k, s in keys.items()}
    s = qz.SCHEMES["int8-torchao"]
    assert sorted(qz.quantized_params(flat, s, "linears")[1]) == [
        "language_model.layers.0.mlp.down_proj.weight", "multi_modal_projector.linear.weight",
        "vision_tower.encoder.layers.0.self_attn.q_proj.weight"]
    assert qz.quantized_params(flat, s, "decoder-linears")[1] == [
        "language_model.layers.0.mlp.down_proj.weight"]
    # MLX: the embedding too, but only where the group divides the width (128 does not divide 64).
    got = qz.quantized_params(flat, qz.SCHEMES["mlx-4bit-g128"], "linears+embedding")[1]
    assert got == ["language_model.layers.0.mlp.down_proj.weight"]
    assert "language_model.embed_tokens.weight" in qz.quantized_params(
        flat, qz.SCHEMES["mlx-4bit-g64"], "text+embedding")[1]


def test_kl_and_cost_figures_by_hand():
    # P = softmax([0, ln 3]) = [1/4, 3/4]; Q uniform: KL = 1/4 ln(1/2) + 3/4 ln(3/2).
    kl = divergence.kl_rows(np.array([[0.0, np.log(3.0)]]), np.array([[0.0, 0.0]]))
    np.testing.assert_allclose(kl, [0.25 * np.log(0.5) + 0.75 * np.log(1.5)], rtol=1e-12)
    assert divergence.kl_rows(np.array([[1.0, 2.0]]), np.array([[1.0, 2.0]]))[0] == 0

    class F:  # two prompt rows (one image token), one step after step 0
        def __init__(self, logits, steps):
            self.logits, self.step_logits = np.array(logits), np.array(steps)
    a = F([[9, 9], [0, np.log(3.0)]], [[0, np.log(3.0)], [5, 0]])
    b = F([[9, 9], [0, 0]], [[0, 0], [0, 5]])
    c = divergence.costs(a, b, 1, [1, 0, 1], [1, 1])
    assert c["positions"] == 2 and c["top1_agreement"] == 0.0
    assert c["greedy_same_until"] == 1 and c["greedy_compared"] == 3
    # top token of P at row 0 is 1 (p = 3/4), Q gives it 1/2: change 1/4.
    assert abs(c["max_top_prob_change"] - (1 / (1 + np.exp(-5)) - 1 / (1 + np.exp(5)))) < 1e-12


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A tiny PaliGemma whose MLP is 128 wide, so a group of 64 has a neighbour to be confused
    with (conform's own cases are at most 64 wide)."""
    root = tmp_path_factory.mktemp("quant")
    write_checkpoint(root / "wide", tiny_config(image_size=56, hidden_size=64,
                                                intermediate_size=128), decisive=True,
                     preprocessor=True, sentencepiece=True)
    return root


def _conform(capsys, monkeypatch, root, mode, weights=False):
    monkeypatch.setenv("NPGEMMA_QUANT", mode)
    if weights:
        monkeypatch.setenv("NPGEMMA_QUANT_WEIGHTS", "1")
    else:
        monkeypatch.delenv("NPGEMMA_QUANT_WEIGHTS", raising=False)
    rc = cli.main(["conform", "--against", PORT, "--model", str(root / "wide"), "--cases",
                   "model:*", "--workdir", str(root), "--json", "--quiet",
                   "--max-new-tokens", "3"])
    out, _ = capsys.readouterr()
    (case,) = json.loads(out)["cases"]
    return rc, json.loads(out), case


def test_a_right_quantized_port_is_named_by_scheme_not_a_fault(capsys, monkeypatch, wide):
    rc, got, case = _conform(capsys, monkeypatch, wide, "right")
    assert case["explained"] and not case["fault"], case["verdict"]
    assert case["deviations"] == ["quantized-mlx-4bit-g64"]
    assert case["verdict"].startswith("matches npgemma on MLX 4-bit g64 weights")
    assert "not a fault" in got["summary"]
    q = case["report"]["quantization"]
    assert q["policy"] == "decoder+embedding" and q["cost"]["kl_mean"] > 0
    assert 0 <= q["cost"]["top1_agreement"] <= 1


@pytest.mark.parametrize("mode, trap", [("wrong-group", "quantized-dequant-wrong-group"),
                                        ("no-bias", "quantized-dequant-no-bias")])
def test_a_broken_quantized_port_fails_with_its_fault_named(mode, trap, capsys, monkeypatch,
                                                            wide):
    rc, got, case = _conform(capsys, monkeypatch, wide, mode)
    assert rc == 1 and not case["ok"] and case["fault"], case["verdict"]
    assert case["deviations"] == [trap] and trap in CATALOGUE
    assert "an implementation fault" in case["verdict"]


def test_the_ports_own_weights_judge_it_exactly(capsys, monkeypatch, wide):
    rc, got, case = _conform(capsys, monkeypatch, wide, "right", weights=True)
    assert rc == 0 and case["ok"]
    q = case["report"]["quantization"]
    assert q["scheme"] == "mlx-4bit-g64" and q["embedding_quantized"]
    # A broken port's own weights are what it runs on: the reference on them matches it too,
    # and the scheme is not named (no catalogue scheme makes those weights).
    rc, got, case = _conform(capsys, monkeypatch, wide, "no-bias", weights=True)
    assert case["ok"] and case["report"]["quantization"]["scheme"] is None


def _peer_check(env: str, library: str, script: str) -> dict:
    """The largest differences a check script in tests/peers/ prints (its last line, JSON), run
    in the interpreter `env` names; skipped when it names none."""
    import os
    import subprocess

    python = os.environ.get(env)
    if not python:
        pytest.skip(f"{env} names no interpreter with {library}")
    script = Path(__file__).parent / "peers" / script
    out = subprocess.run([python, str(script)], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_the_mlx_scheme_is_mlx_bit_for_bit():
    """Against MLX itself, when an interpreter with it is named (NPGEMMA_MLX_PYTHON, e.g. the
    venv of setup_mlx_vlm.sh): every setting's largest difference is 0."""
    got = _peer_check("NPGEMMA_MLX_PYTHON", "mlx", "mlx_quantize_check.py")
    assert len(got) >= 6 and all(v == 0 for v in got.values()), got


def test_the_bitsandbytes_schemes_are_bitsandbytes_bit_for_bit():
    """Against bitsandbytes itself, when an interpreter with it is named (NPGEMMA_BNB_PYTHON,
    e.g. the venv of setup_transformers_quant.sh bnb): every largest difference is 0."""
    got = _peer_check("NPGEMMA_BNB_PYTHON", "bitsandbytes", "bnb_quantize_check.py")
    assert len(got) == 4 and all(v == 0 for v in got.values()), got


def test_weights_partly_of_a_scheme_name_the_ones_dequantized_otherwise():
    """A port whose 64-wide weights are MLX 4-bit g64 and whose 128-wide one it dequantizes
    reading groups of 128 (its own code, tests/peers/quantized.py): the scheme is named for the
    right ones, the other is listed with its width, and no scheme is claimed for the whole."""
    import sys

    from npgemma.checkpoint.layout import unflatten
    from npgemma.compare.quantdiag import identify, made_by

    sys.path.insert(0, str(Path(__file__).parent / "peers"))
    import quantized as port

    rng = np.random.default_rng(3)
    flat = {"language_model.layers.0.mlp.up_proj.weight": rng.standard_normal((8, 64)),
            "language_model.layers.0.self_attn.q_proj.weight": rng.standard_normal((8, 64)),
            "language_model.layers.0.mlp.down_proj.weight": rng.standard_normal((8, 128))}
    flat = {k: v.astype(np.float32) for k, v in flat.items()}
    own = {k: port._dequantize(w, "wrong-group" if w.shape[1] == 128 else "right")
           for k, w in flat.items()}
    who = identify(unflatten(flat), own)
    assert who["scheme"] is None and who["partial_scheme"] == "mlx-4bit-g64"
    assert who["matching"] == 2 and [x["key"] for x in who["differing"]] == [
        "language_model.layers.0.mlp.down_proj.weight"]
    assert "input widths 128" in made_by(who)
    right = {k: port._dequantize(w, "right") for k, w in flat.items()}
    assert identify(unflatten(flat), right)["scheme"] == "mlx-4bit-g64"
