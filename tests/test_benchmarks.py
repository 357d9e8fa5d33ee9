"""Every script in benchmarks/ runs, end to end, on something tiny: a crash fails CI.

Each script's smoke path (seconds) is run as a user runs it — `python benchmarks/NAME.py ...` in a
fresh process, so an import-time or argument-parsing error is caught too — with `--record`, and
the file it writes must hold the provenance record.py promises and finite figures. The timings
mean nothing here (tiny shapes, a busy machine); the real runs are in benchmarks/results/.
Marked `scripts` (a few seconds each): the quick tier leaves them out.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name != "record.py")
SMOKED = {"bench.py", "eval_demo.py", "inspect_demo.py", "kernels.py", "make_checkpoint.py",
          "stream_compare.py"}

pytestmark = pytest.mark.scripts


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script} {' '.join(args)}:\n{proc.stderr[-3000:]}"
    return proc


def recorded(path: Path, script: str) -> dict:
    result = json.loads(path.read_text(encoding="utf-8"))
    assert result["script"] == script
    assert result["command"].startswith(f"python benchmarks/{script} ")
    assert result["machine"]["cores"] >= 1 and result["versions"]["numpy"]
    assert isinstance(result["blas"], list) and result["date"].endswith("Z")
    return result["figures"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """paligemma2-3b-pt-224's files, keys and config fields at 1/128 of its widths."""
    out = tmp_path_factory.mktemp("ckpt") / "pg2-3b-tiny"
    run("make_checkpoint.py", "paligemma2-3b-pt-224", str(out), "--shrink", "128", cwd=out.parent)
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["hidden_size"] == 2304 // 128
    assert config["text_config"]["vocab_size"] == 257216  # the real vocabulary, the real keys
    return out


def test_every_script_has_a_smoke_test():
    assert set(SCRIPTS) == SMOKED, "a new benchmarks/ script needs its smoke run here"


def test_make_checkpoint_list(tmp_path):
    run("make_checkpoint.py", "--list", "--record", str(tmp_path / "r.json"), cwd=tmp_path)
    sizes = recorded(tmp_path / "r.json", "make_checkpoint.py")["checkpoints"]
    pg1 = sizes["paligemma-3b-pt-224"]
    assert 2.9e9 < pg1["parameters"] < 3.0e9 and pg1["size_gb"] == pg1["parameters"] * 2 / 1e9
    assert len(sizes) == 12  # PaliGemma 1 3B and PaliGemma 2 3B/10B/28B, at 224/448/896


ENGINES = ["npgemma-numpy:float32", "npgemma-numpy:bfloat16"]


def test_bench(tiny, tmp_path):
    run("bench.py", "--model", str(tiny), "--engines", ",".join(ENGINES),
        "--new-tokens", "3", "--bandwidth-gib", "0.01", "--disk-pass",
        "--record", str(tmp_path / "r.json"), cwd=tmp_path)
    figures = recorded(tmp_path / "r.json", "bench.py")
    # With OPENBLAS_CORETYPE set (as on some machines; never changed here) the script also runs
    # the numpy engines with the forced kernel, beside the headline rows (OpenBLAS's own choice).
    forced = os.environ.get("OPENBLAS_CORETYPE")
    beside = [f"{e} (OPENBLAS_CORETYPE={forced})" for e in ENGINES] if forced else []
    assert [r["engine"] for r in figures["rows"]] == ENGINES + beside
    rows = figures["rows"][:2]
    assert rows[0]["tokens"] == rows[1]["tokens"] and len(rows[0]["tokens"]) == 3
    bound = figures["bounds"][tiny.name]
    assert bound["gemv_gbs"] > 0 and bound["gemm_gflops"] > 0 and bound["disk_gbs"] > 0
    assert len(figures["load_average"]) == 3
    assert len(bound["disk_pass_gbs"]) == 2 and all(g > 0 for g in bound["disk_pass_gbs"])
    for r in rows:  # a percentage over 100 would have failed the run (see test_over_bounds)
        assert math.isfinite(r["ms_per_token"]) and 0 < r["pct_of_gemm_bound"] <= 100
        assert r["pct_of_gemm_bound"] <= r["pct_of_prefill_bound"] <= 100  # max(GEMM, disk)
        assert r["prefill_disk_gb"] >= 0
        # the tiny checkpoint's step reads at most 18.5 MB of weights: from the cache, so no
        # memory bound is claimed for it (a real one's GBs are: test_gemv_bound_applies)
        assert "pct_of_gemv_bound" not in r and "last-level cache" in r["gemv_bound_not_applied"]
    # the bounds from their own definitions: weight bytes at the GEMV rate, FLOPs at the GEMM rate
    f32, bf16 = rows
    assert f32["bound_ms"] == pytest.approx(2 * bf16["bound_ms"])  # 4 bytes a weight against 2
    assert f32["prefill_bound_s"] == pytest.approx(bf16["prefill_bound_s"])  # the same products


def test_stream_compare(tiny, tmp_path):
    """The readers alternate A B B A over the decode steps; a checkpoint that fits is
    refused unless streamed anyway (the smoke run)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    refused = subprocess.run([sys.executable, str(BENCH / "stream_compare.py"), "--model",
                              str(tiny), "--steps", "2"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "is not streamed here" in refused.stderr
    run("stream_compare.py", "--model", str(tiny), "--steps", "4", "--stream-anyway",
        "--disk-gib", "0.001", "--record", str(tmp_path / "r.json"), cwd=tmp_path)
    figures = recorded(tmp_path / "r.json", "stream_compare.py")
    assert [s["way"] for s in figures["steps"]] == ["sendfile", "chunked", "chunked", "sendfile"]
    for way in figures["ways"].values():
        assert way["steps"] == 2 and way["median_s"] > 0 and math.isfinite(way["median_gbs"])
    assert len(figures["disk_pass_gbs"]) == 2 and all(g > 0 for g in figures["disk_pass_gbs"])
    run("stream_compare.py", "--model", str(tiny), "--steps", "2", "--stream-anyway",
        "--disk-gib", "0.001", "--ways", "chunked,touch", "--record", str(tmp_path / "t.json"),
        cwd=tmp_path)
    assert [s["way"] for s in recorded(tmp_path / "t.json", "stream_compare.py")["steps"]] == [
        "chunked", "touch"]


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench", BENCH / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_gemv_bound_applies():
    """The memory bound is claimed for a step whose weights dwarf the cache, not for one that
    fits in a few times the cache: 3B's 2.6 billion decode parameters against the tiny's."""
    bench = _bench_module()
    llc = bench.last_level_cache_bytes()
    assert 2**20 <= llc <= 2**31  # a cache size, in bytes (sysfs says e.g. '32768K')
    assert 2.6e9 * 2 > bench.CACHE_MARGIN * llc  # bfloat16 3B: bound applies
    assert 257216 * 18 * 4 < bench.CACHE_MARGIN * max(llc, 8 * 2**20)  # the tiny table's bytes


def test_over_bounds_names_the_row():
    """A decode or prefill faster than its bound is reported by row: the script then exits 2."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench", BENCH / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    row = {"checkpoint": "pg", "engine": "npgemma-numpy:float32", "batch": 1}
    assert bench.over_bounds([row | {"pct_of_gemv_bound": 99.9, "pct_of_gemm_bound": 100}]) == []
    (line,) = bench.over_bounds([row | {"pct_of_gemv_bound": 120.0, "pct_of_gemm_bound": 50}])
    assert "npgemma-numpy:float32" in line and "decode at 120%" in line
    (line,) = bench.over_bounds([row | {"pct_of_gemm_bound": 101.0}])
    assert "prefill at 101%" in line
    # the GEMM bound is float32's: engines multiplying in bfloat16 are not held to it
    assert bench._float32_products("npgemma-numpy:bfloat16")  # widened to float32
    assert bench._float32_products("transformers:float32")
    assert not bench._float32_products("transformers:bfloat16")
    assert not bench._float32_products("npgemma-torch:bfloat16:cuda")


def test_prefill_disk_bound():
    """The prefill's disk bound is its bytes read at the fastest rate the run measured (the
    lower bound of the readings), and a prefill faster than it is a bound that does not bound."""
    bench = _bench_module()
    bound = {"disk_gbs": 1.5, "disk_pass_gbs": [2.0, None]}
    assert bench.prefill_disk_bound_s(55.3, bound) == pytest.approx(27.65)  # 55.3 GB at 2 GB/s
    assert bench.prefill_disk_bound_s(3.0, {"disk_gbs": 1.5, "disk_pass_gbs": []}) == 2.0
    row = {"checkpoint": "pg", "engine": "transformers:bfloat16", "batch": 1}
    (line,) = bench.over_bounds([row | {"pct_of_prefill_bound": 130.0}])
    assert "prefill at 130%" in line and "pct_of_prefill_bound" in line


@pytest.mark.parametrize("args", [["--out", "64", "--in", "32", "--shrink", "2"],
                                  ["--step", "--shrink", "64"],
                                  ["--slabs", "--model", "TINY", "--shrink", "2"]],
                         ids=["one-weight", "step", "slabs-mapped"])
def test_kernels(args, tiny, tmp_path):
    args = [str(tiny) if a == "TINY" else a for a in args]
    run("kernels.py", *args, "--record", str(tmp_path / "r.json"), cwd=tmp_path)
    tables = recorded(tmp_path / "r.json", "kernels.py")["tables"]
    assert len(tables) == 1 and tables[0]["rows"]


def test_eval_demo(tmp_path):
    run("eval_demo.py", "--scenes", "1", "--backends", "numpy", "--record", str(tmp_path / "r.json"),
        cwd=tmp_path)
    scores = recorded(tmp_path / "r.json", "eval_demo.py")["scores"]["numpy"]
    assert {"caption", "color", "count", "shape", "detect_iou"} <= set(scores)
    assert all(0 <= v <= 1 for k, v in scores.items() if k != "seconds")


def test_inspect_demo(tmp_path):
    run("inspect_demo.py", "--scenes", "1", "--record", str(tmp_path / "r.json"), cwd=tmp_path)
    rates = recorded(tmp_path / "r.json", "inspect_demo.py")
    assert rates["scenes"] == 1 and 0 <= rates["chance"] <= 1
