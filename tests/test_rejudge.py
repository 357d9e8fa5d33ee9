"""A bfloat16 file that a port computes in bfloat16: when nothing explains it at float32, conform
runs the case again at --dtype bfloat16 and names `bf16-compute` only when it passes (or is
explained) there. The port is tests/peers/quantized.py, whose bfloat16 rounding is its own bit
arithmetic; the float32 verdict handed in is made up, so each test decides what the re-run
alone must do."""

from __future__ import annotations

from pathlib import Path

import pytest

from npgemma.compare import conform
from npgemma.compare.request import Request

PORT = str(Path(__file__).parent / "peers" / "quantized.py") + ":run"
CASES = {c.name: c for c in conform.CASES}


def _unexplained(name: str) -> conform.Result:
    return conform.Result(name, False, verdict="no known deviation explains the difference",
                          explained=False, report={})


@pytest.fixture
def port(monkeypatch):
    monkeypatch.setenv("NPGEMMA_QUANT", "right")
    monkeypatch.setenv("NPGEMMA_QUANT_WEIGHTS", "1")  # judged on its own weights: exact
    return monkeypatch


def test_a_port_computing_in_bf16_is_named_after_passing_at_bf16(port, tmp_path):
    port.setenv("NPGEMMA_QUANT_LOGITS", "bf16")
    base = Request(PORT, max_new_tokens=2)
    got = conform.rejudged_in_bf16(CASES["pg1-bf16"], tmp_path, base, _unexplained("pg1-bf16"))
    assert got.explained and got.deviations == ["bf16-compute"], got.verdict
    assert got.report["bf16_rejudged"]["ok"]
    assert "the case passes" in got.verdict and got.verdict.startswith("no known deviation")


def test_a_port_that_fails_at_bf16_too_stays_unexplained(port, tmp_path):
    port.setenv("NPGEMMA_QUANT_LOGITS", "noise")
    base = Request(PORT, max_new_tokens=2)
    r = _unexplained("pg1-bf16")
    got = conform.rejudged_in_bf16(CASES["pg1-bf16"], tmp_path, base, r)
    assert not got.explained and got.deviations == [] and "bf16_rejudged" not in got.report


@pytest.mark.parametrize("case, dtype", [("pg1-hub-f32", "float32"),   # a float32 file
                                         ("pg1-bf16", "bfloat16")])    # already judged at bf16
def test_only_a_bf16_file_judged_at_float32_is_run_again(case, dtype, tmp_path, monkeypatch):
    def never(*a, **k):
        raise AssertionError("run again")

    monkeypatch.setattr(conform, "_run_case", never)
    r = _unexplained(case)
    assert conform.rejudged_in_bf16(CASES[case], tmp_path, Request(PORT, dtype=dtype), r) is r
    assert not r.explained and r.deviations == []


def test_a_bf16_model_folder_counts_as_a_bf16_file(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file
    from ml_dtypes import bfloat16

    save_file({"a": np.zeros(2, bfloat16), "ids": np.zeros(2, np.int64)},
              str(tmp_path / "model.safetensors"))
    assert conform._bf16_file(conform.model_case(str(tmp_path)))
    save_file({"a": np.zeros(2, np.float32)}, str(tmp_path / "model.safetensors"))
    assert not conform._bf16_file(conform.model_case(str(tmp_path)))
    assert conform._bf16_file(CASES["pg1-bf16"]) and not conform._bf16_file(CASES["pg1-hub-f32"])
