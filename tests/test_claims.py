"""Every measured figure the README and docs/ quote is found in a committed result file.

The convention (docs/development.md): a figure is a number written with a unit of measurement —
ms, s, min, h, GB/s, GB, GiB, %, × — or a score written with three decimals (0.945), in prose or
a table of README.md or docs/*.md (code blocks and `inline code` are commands and sample output,
not claims). Each must be found, at the precision the page writes it, among the figures of
benchmarks/results/*.json: their numbers in text ("28.0 s per token"), their table cells (the
unit from the column: "ms/token", "% of bound"), and their named numbers (`ms_per_token`,
`prefill_s`, ...). A range "77–97%" is two figures. A page that needs a number that is not a
measurement (a design size, a default) writes it in code (`4 MiB`) or without a unit.

A page that cites its sources — `benchmarks/results/NAME.json`, or RESULTS.md's "run 13",
"runs 12 and 15", "runs 1–15" — is checked against those files only; a page that cites none
(the README) against all of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RESULTS = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
# `npgemma conform --json` outputs as they came (their commands, versions and wall times in that
# folder's README.md): figures a page may quote, beside the benchmarks' results.
CONFORM_RUNS = sorted((ROOT / "docs" / "conformance-runs").glob("*.json"))

NUMBER = r"(\d[\d,]*(?:\.\d+)?)"
UNITS = {"ms": "ms", "s": "s", "min": "min", "h": "h", "GB/s": "GB/s", "GB": "GB", "GiB": "GiB",
         "%": "%", "×": "x"}
# A number, an optional range end, a unit; the unit not followed by a letter ("5 steps" is no "s").
FIGURE = re.compile(NUMBER + r"(?:\s?[–-]\s?" + NUMBER + r")?\s?(GB/s|GiB|GB|min|ms|s|h|%|×)(?![A-Za-z0-9/])")
SCORE = re.compile(r"(?<![\d.])(0\.\d{3})(?![\d])")
# Column headers of the result tables -> the unit of their bare cells.
COLUMN_UNITS = [("ms", "ms"), ("% of bound", "%"), ("× ", "x"), ("÷", "x"), ("GiB", "GiB"),
                ("GB/token", "GB"), (" s", "s")]
# Named numbers in the results files -> their unit.
KEY_UNITS = [("pct", "%"), ("ms", "ms"), ("_gib", "GiB"), ("_gbs", "GB/s"), ("_gb", "GB"),
             ("_min", "min"), ("_s", "s"), ("seconds", "s"), ("_x", "x")]


def _value(text: str) -> float:
    return float(text.replace(",", ""))


def figures_in_text(text: str) -> list[tuple[float, str, int]]:
    """(value, unit, decimals) of every figure in `text`; a range gives both ends."""
    out = []
    for m in FIGURE.finditer(text):
        for number in filter(None, m.group(1, 2)):
            decimals = len(number.split(".")[1]) if "." in number else 0
            out.append((_value(number), UNITS[m.group(3)], decimals))
    out += [(float(m.group(1)), "score", 3) for m in SCORE.finditer(text)]
    return out


def _column_unit(header: str) -> str | None:
    for key, unit in COLUMN_UNITS:
        if key in f"{header} ":
            return unit
    return None


def harvest(node, key: str = "", out: set | None = None) -> set:
    """Every (value, unit) a results file holds, at full precision."""
    out = set() if out is None else out
    if isinstance(node, dict):
        if "columns" in node and "rows" in node:  # a table: cells take their column's unit
            for row in node["rows"]:
                for header, cell in zip(node["columns"], row):
                    unit = _column_unit(header)
                    bare = re.fullmatch(r"-?" + NUMBER, str(cell).strip())
                    if unit and bare:
                        out.add((_value(bare.group(1)), unit))
        for k, v in node.items():
            harvest(v, str(k), out)
    elif isinstance(node, list):
        for v in node:
            harvest(v, key, out)
    elif isinstance(node, str):
        out.update((v, u) for v, u, _ in figures_in_text(node))
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        out.add((float(node), "score"))
        for part, unit in KEY_UNITS:
            if part in key.lower():
                out.add((float(node), unit))
                break
    return out


RUNS = re.compile(r"\bruns? (\d+[a-d]?(?:(?:\s*[–,-]\s*|,? and )\d+[a-d]?)*)")
CITED_FILE = re.compile(r"([\w.*-]+)\.json")  # a results file or a conform run, by name


def cited(text: str) -> list[Path]:
    """The result files `text` names: by file name, or RESULTS.md's run numbers (a range
    "1–15" is every run in it)."""
    names = set(CITED_FILE.findall(text))
    for group in RUNS.findall(text):
        for part in re.split(r"\s*,\s*|,? and ", group):
            ends = [int(re.match(r"\d+", e).group()) for e in re.split(r"\s*[–-]\s*", part)]
            names |= {f"run-{n:02d}" for n in range(ends[0], ends[-1] + 1)}
    folders = (RESULTS[0].parent, ROOT / "docs" / "conformance-runs")
    return [p for n in sorted(names) for d in folders for p in sorted(d.glob(f"{n}.json"))]


def known_figures(paths: list[Path] | None = None) -> set:
    known = set()
    for path in RESULTS + CONFORM_RUNS if paths is None else paths:
        harvest(json.loads(path.read_text(encoding="utf-8")), out=known)
        timed = path.with_suffix(".time")  # a conform run's wall time, as `time` printed it
        if timed.is_file():
            known |= {(float(m), "s") for m in re.findall(r"wall " + NUMBER + " s", timed.read_text())}
    # Derived units: seconds from milliseconds, minutes and hours from seconds, GB from GiB and back.
    known |= {(v / 1000, "s") for v, u in known if u == "ms"}
    for v, u in list(known):
        if u == "s":
            known |= {(v / 60, "min"), (v / 3600, "h")}
        elif u == "GiB":
            known.add((v * 2**30 / 1e9, "GB"))
        elif u == "GB":
            known.add((v * 1e9 / 2**30, "GiB"))
    return known


def _matches(value: float, unit: str, decimals: int, known: set) -> bool:
    """`value` as written (to `decimals`) equals a known figure rounded to the same places."""
    half = 0.5 * 10**-decimals + 1e-9
    return any(u == unit and abs(v - value) <= half for v, u in known)


def prose(text: str) -> str:
    """Markdown without fenced code blocks, inline code and link targets."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`]*`", "", text)
    return re.sub(r"\]\([^)]*\)", "]", text)


@pytest.fixture(scope="module")
def known():
    return known_figures()


def test_results_carry_their_provenance():
    assert RESULTS, "no benchmarks/results/*.json"
    for path in RESULTS:
        result = json.loads(path.read_text(encoding="utf-8"))
        missing = [k for k in ("machine", "blas", "versions", "date") if not result.get(k)]
        assert not missing, f"{path.name} lacks {missing}"
        assert result.get("command") or result.get("commands"), path.name


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_quoted_figure_is_in_a_result(page, known):
    text = page.read_text(encoding="utf-8")
    sources = cited(text)
    pool = known_figures(sources) if sources else known
    absent = [f"{v:g} {u}" for v, u, d in figures_in_text(prose(text)) if not _matches(v, u, d, pool)]
    where = ", ".join(p.name for p in sources) or "any benchmarks/results/*.json"
    assert absent == [], f"{page.name} quotes figures found in none of {where}"


def test_citations_are_read():
    names = [p.stem for p in cited("runs 1–3, run 14b and runs 12 and 15; "
                                   "benchmarks/results/eval_demo.json")]
    assert names == ["eval_demo", "run-01", "run-02", "run-03", "run-12", "run-14", "run-15"]


def test_the_check_finds_figures_and_refuses_unknown_ones(known):
    # Independent of the pages: a figure written by hand, and one shaped like a real one.
    found = figures_in_text("decode 438 ms a step, 77–97% of it, 0.50 GiB, 1.62× and 0.945; "
                            "5 steps, 16 new tokens, `4 MiB`")
    assert found == [(438.0, "ms", 0), (77.0, "%", 0), (97.0, "%", 0), (0.5, "GiB", 2),
                     (1.62, "x", 2), (0.945, "score", 3)]
    assert not _matches(437.0, "ms", 0, {(438.2, "ms")})
    assert _matches(438.0, "ms", 0, {(438.2, "ms")})
    assert not _matches(438.0, "s", 0, {(438.0, "ms")})  # the unit must agree
    assert not _matches(250.0, "%", 0, known)  # no run reached 250% of anything
    assert not _matches(1234.5, "ms", 1, known)
    assert len(figures_in_text("`438 ms`")) == 1 and figures_in_text(prose("`438 ms` ```\n9 s\n```")) == []
