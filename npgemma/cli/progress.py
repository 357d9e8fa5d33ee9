"""Progress bars for long work (weight loading, benchmarks, training): tqdm on stderr, drawn
only when stderr is a terminal and never with `quiet` — so logs, pipes and tests stay clean;
and the one note a loaded model may need (its weights stream from disk)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from tqdm import tqdm


def bar(total: int | None = None, desc: str = "", *, unit: str = "it", quiet: bool = False,
        file=None, **kwargs) -> tqdm:
    """A tqdm bar with npgemma's defaults (stderr, erased when done, off unless a terminal)."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr if file is None else file,
                disable=True if quiet else None, leave=False, dynamic_ncols=True, **kwargs)


def weights_progress(desc: str = "loading weights", *, quiet: bool = False,
                     file=None) -> Callable[[int, int, str], None]:
    """A `npgemma.load(progress=...)` callback: `(done_bytes, total_bytes, key)` -> one bar in
    bytes, opened on the first call and closed when `done_bytes` reaches `total_bytes`."""
    state: dict[str, tqdm] = {}

    def report(done: int, total: int, key: str) -> None:
        if "bar" not in state:
            state["bar"] = bar(total, desc, unit="B", unit_scale=True, unit_divisor=1024,
                               quiet=quiet, file=file)
        progress = state["bar"]
        progress.update(done - progress.n)
        if done >= total:
            progress.close()

    return report


def say_streaming(pipe, file=None) -> None:
    """The memory check's verdict on stderr when the weights are larger than the memory available
    and stream from disk on every pass (`Pipeline.streaming`): what it reads per token, how fast."""
    verdict = pipe.streaming
    if verdict is not None:
        print(f"npgemma: {Path(pipe.model_dir).name}: {pipe.memory.file_total / 1e9:.1f} GB of "
              f"weights, {verdict.available.bytes / 1e9:.1f} GB of memory available: {verdict}",
              file=sys.stderr if file is None else file)
