"""Progress on stderr (npgemma/cli/progress.py): a tqdm bar on a terminal, nothing otherwise."""

from __future__ import annotations

import io

from npgemma.cli.progress import weights_progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _feed(report, sizes):
    total, done = sum(sizes), 0
    for i, size in enumerate(sizes):
        done += size
        report(done, total, f"layers.{i}.weight")


def test_weights_bar_counts_bytes_of_the_total_on_a_terminal():
    term = _Terminal()
    _feed(weights_progress("loading weights", file=term), [3 << 20, 1 << 20, 4 << 20])
    out = term.getvalue()
    assert "loading weights" in out and "/8.00M" in out  # one bar, in bytes (binary units)
    assert out.endswith("\r") and out.count("|") >= 2    # redrawn in place, erased when done


def test_quiet_or_not_a_terminal_draws_nothing():
    for file, quiet in ((_Terminal(), True), (io.StringIO(), False)):
        _feed(weights_progress(file=file, quiet=quiet), [10, 20])
        assert file.getvalue() == ""
