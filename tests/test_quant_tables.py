"""docs/conformance.md's quantized-peer tables are what docs/conformance-runs/quant_tables.py
prints from the committed runs, and every committed quantized run carries its provenance."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "docs" / "conformance-runs"


def _tables():
    spec = importlib.util.spec_from_file_location("quant_tables", RUNS / "quant_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_page_holds_the_tables_as_printed():
    qt = _tables()
    page = (ROOT / "docs" / "conformance.md").read_text(encoding="utf-8")
    assert qt.section(page) == qt.render(), "run: python docs/conformance-runs/quant_tables.py --write"


def test_every_quantized_run_is_rendered_with_its_provenance_and_wall_time():
    qt = _tables()
    text = qt.render()
    for path in sorted(RUNS.glob("quant-*.json")):
        run = json.loads(path.read_text(encoding="utf-8"))
        where = run.get("provenance") or {}
        assert where.get("command", "").startswith("npgemma conform --against"), path.name
        assert where.get("machine") and where.get("blas") and where.get("versions"), path.name
        assert where.get("peer", {}).get("versions"), path.name
        assert path.with_suffix(".time").is_file(), path.name
        assert f"`{path.name}` (wall " in text
        assert text.count("\n| ") >= len(run["cases"])


def test_a_row_by_hand():
    qt = _tables()
    cost = {"positions": 10, "kl_mean": 0.012345, "kl_p99_9": 0.5, "top1_agreement": 0.7,
            "max_top_prob_change": 0.25, "greedy_same_until": 2, "greedy_compared": 6}
    case = {"case": "c", "ok": False, "explained": True, "fault": False,
            "deviations": ["no-sliding-window"], "cells": {"load": "ok", "tokens": "FAIL"},
            "report": {"quantization": {"source": "the implementation's own weights (exact)",
                                        "scheme": "mlx-4bit-g64", "title": "MLX 4-bit g64",
                                        "policy": "decoder+embedding", "cost": cost}}}
    assert qt.row(case) == ("c", "explained: `no-sliding-window` (not a fault)", "tokens",
                            "MLX 4-bit g64", "decoder+embedding", "0.0123", "0.5", "7 of 10",
                            "0.25", "2 of 6")
    crashed = {"case": "d", "ok": False, "explained": False, "cells": {"load": "FAIL"},
               "report": None}
    assert qt.row(crashed) == ("d", "**FAIL (unexplained)**", "load", "-", "-",
                               "-", "-", "-", "-", "-")
