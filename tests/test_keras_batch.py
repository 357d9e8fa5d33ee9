"""keras-hub's batch `generate` starts its decode loop at the shortest row's end, so a longer
row's prompt tail is run again, one causal query at a time (`batch-prompt-tail-causal`,
npgemma/compare/shortest_row.py). The stand-in peer (tests/peers/standin.py, fault
`batch-tail-causal`) does it as keras-hub's generate_step does, by its own code: a seeded cache,
then a loop of single-token steps from `min(row_lengths)`. The diagnosis must find it by its own
search (it shares no code with the stand-in's loop)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from npgemma import cli

STANDIN = str(Path(__file__).parent / "peers" / "standin.py") + ":run"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("keras-batch")


def _conform(capsys, workdir, case):
    rc = cli.main(["conform", "--against", STANDIN, "--workdir", str(workdir), "--cases", case,
                   "--json", "--quiet", "--max-new-tokens", "6"])
    out, _ = capsys.readouterr()
    (result,) = json.loads(out)["cases"]
    return rc, result


def test_a_loop_from_the_shortest_rows_end_is_named_row_by_row(capsys, workdir, monkeypatch):
    monkeypatch.setenv("NPGEMMA_STANDIN_FAULT", "batch-tail-causal")
    rc, result = _conform(capsys, workdir, "pg2-batch")
    assert rc == 1 and result["explained"], result["verdict"]
    rows = result["report"]["rows"]
    failing = [i for i, r in enumerate(rows) if not r["ok"]]
    assert failing and result["deviations"] == ["batch-prompt-tail-causal"] * len(failing)
    for i in failing:  # the forward pass is right: only the greedy tokens part
        stages = {s["stage"]: s["ok"] for s in rows[i]["stages"]}
        assert stages["logits"] and not stages["greedy tokens"], stages
        assert f"row {i}: matches npgemma with `batch-prompt-tail-causal`" in result["verdict"]


def test_a_correct_batch_is_not_given_the_trap(capsys, workdir, monkeypatch):
    monkeypatch.delenv("NPGEMMA_STANDIN_FAULT", raising=False)
    rc, result = _conform(capsys, workdir, "pg2-batch")
    assert rc == 0 and result["ok"]


def test_recomputing_the_last_prompt_slot_alone_changes_nothing_without_a_window(workdir):
    """Invariant: a causal query at the prompt's last slot sees what a prefix query there sees
    (every earlier slot and itself), so the loop's first slot at the last prompt slot gives the
    plain reference's logits; one slot earlier the first token's logits move, the prompt's not."""
    import npgemma
    from npgemma.compare.cases import CASES, write_case
    from npgemma.compare.reference import teacher_forced
    from npgemma.compare.shortest_row import tail_causal

    case = next(c for c in CASES if c.name == "pg1-hub-f32")
    folder, image = write_case(case, Path(workdir))
    pipe = npgemma.load(folder)
    x = pipe.processor(image, "answer en what is in the image ?")
    n, tokens = len(x.input_ids), [5, 7]
    plain = teacher_forced(pipe.params, pipe.cfg, x.input_ids, x.pixel_values, tokens)
    same = tail_causal(pipe.params, pipe.cfg, x.input_ids, x.pixel_values, tokens, n - 1)
    np.testing.assert_allclose(same.step_logits, plain.step_logits, atol=2e-5)
    moved = tail_causal(pipe.params, pipe.cfg, x.input_ids, x.pixel_values, tokens, n - 4)
    assert np.array_equal(moved.logits, plain.logits)
    assert np.abs(moved.step_logits[0] - plain.step_logits[0]).max() > 1e-3
    with pytest.raises(ValueError, match="image slot"):
        tail_causal(pipe.params, pipe.cfg, x.input_ids, x.pixel_values, tokens, 3)
