"""A quantization library's own crash is named by its message, and only for that library:
bitsandbytes 0.50.2's AVX512-BF16 repacking of a 4-bit weight narrower than its block
(RuntimeError at functional.py, written here by hand as the library printed it)."""

from __future__ import annotations

import json
import sys

import pytest

from npgemma import cli

FUNCTIONAL = '''
def repack(out_features, in_features, blocksize=64):
    raise RuntimeError(f"shape '[{out_features}, {in_features // blocksize}]' is invalid for "
                       f"input of size {out_features * in_features // blocksize or 16}")
'''
PORT = '''
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import functional


def run(model_dir, image, prompt, max_new_tokens=8):
    if os.environ.get("CRASH_OTHER"):
        raise RuntimeError("The size of tensor a (4) must match the size of tensor b (2)")
    functional.repack(32, 32)
'''


def _conform(capsys, tmp_path, port_name):
    (tmp_path / "functional.py").write_text(FUNCTIONAL)
    (tmp_path / port_name).write_text(PORT)
    # through another interpreter, as the real bitsandbytes venv runs (its error line says
    # where it was raised)
    rc = cli.main(["conform", "--against", f"{tmp_path / port_name}:run", "--python",
                   sys.executable, "--workdir",
                   str(tmp_path / "w"), "--cases", "pg1-hub-f32,pg2-hub-caption", "--json",
                   "--quiet", "--max-new-tokens", "2"])
    return rc, json.loads(capsys.readouterr().out)["cases"]


def test_bitsandbytes_repack_crash_is_named(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("CRASH_OTHER", raising=False)
    rc, cases = _conform(capsys, tmp_path, "bnb_port.py")
    assert rc == 1
    for c in cases:
        assert c["explained"] and c["deviations"] == ["bnb-cpu-repack-block-width"], c["verdict"]
        assert "at functional.py:" in c["verdict"] and "AVX512-BF16" in c["verdict"]


@pytest.mark.parametrize("port_name, other", [("plain_port.py", False),  # not bitsandbytes
                                              ("bnb_port.py", True)])    # another message
def test_other_crashes_are_not_named_so(port_name, other, capsys, tmp_path, monkeypatch):
    if other:
        monkeypatch.setenv("CRASH_OTHER", "1")
    else:
        monkeypatch.delenv("CRASH_OTHER", raising=False)
    rc, cases = _conform(capsys, tmp_path, port_name)
    assert rc == 1
    assert all("bnb-cpu-repack-block-width" not in c["deviations"] for c in cases)
