"""Streaming a memory-mapped checkpoint (`npgemma/checkpoint/prefetch.py`): the next block is
asked for ahead and used pages are dropped, and neither changes a single number."""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest

import npgemma
from npgemma.checkpoint import prefetch
from npgemma.testing.checkpoint import tiny_config, write_checkpoint
from npgemma.testing.random_model import example_image

PROMPT = "caption en"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("prefetch") / "pg2",
                            tiny_config(text="gemma2", sliding_window=4), dtype="bfloat16",
                            num_shards=2, seed=5)


def _run(pipe):
    image = example_image(40)
    logits = pipe.logits(image, PROMPT, positions=slice(None))
    return logits, pipe.generate(image, PROMPT, max_new_tokens=5).token_ids


class Spy(prefetch.Streamer):
    """The real streamer, recording what it was told and what it asked for."""

    def __init__(self, params, drop, keep=0, **kw):
        super().__init__(params, drop, keep, **kw)
        self.entered, self.fetched, self.dropped = [], [], []

    def __call__(self, name):
        self.entered.append(name)
        super().__call__(name)

    def _willneed(self, name):
        self.fetched.append(name)
        super()._willneed(name)

    def _dontneed(self, name):
        self.dropped.append(name)
        super()._dontneed(name)


@pytest.mark.parametrize("drop", [False, True])
def test_prefetch_and_dropping_pages_never_change_the_results(folder, drop):
    """Bit for bit: the low-memory mode with no streamer, with prefetch, with prefetch and
    every used block dropped from this process and the page cache (the streaming mode)."""
    plain = npgemma.load(folder, dtype="bfloat16")
    plain.backend.streamer = None
    want_logits, want_tokens = _run(plain)
    pipe = npgemma.load(folder, dtype="bfloat16")
    spy = pipe.backend.streamer = Spy(pipe.params, drop)
    logits, tokens = _run(pipe)
    spy.close()
    np.testing.assert_array_equal(logits, want_logits)
    assert tokens == want_tokens
    cfg = pipe.cfg
    layers = cfg.text_config.num_hidden_layers
    assert spy.entered[:cfg.vision_config.num_hidden_layers] == [
        f"vision.blocks.{i}" for i in range(cfg.vision_config.num_hidden_layers)]
    assert spy.entered.count("decoder.blocks.0") >= 5  # the prompt pass(es) and each step
    assert "lm_head" in spy.fetched and f"decoder.blocks.{layers - 1}" in spy.fetched
    assert spy.bytes_prefetched > 0
    assert bool(spy.dropped) == drop
    if drop:  # exactly the block two behind each one entered (in order), never the one entered
        cycle = [n for n in spy.entered if n in spy.behind]
        assert spy.dropped == [spy.behind[n] for n in cycle if spy.behind[n] != n]
        assert all(spy.behind[n] != n for n in cycle)


def test_kept_layers_are_never_dropped_and_change_nothing(folder):
    """A streamed run keeping its first decoder layer cached drops every other block it passes,
    never that one, with the same numbers bit for bit."""
    plain = npgemma.load(folder, dtype="bfloat16")
    plain.backend.streamer = None
    want_logits, want_tokens = _run(plain)
    pipe = npgemma.load(folder, dtype="bfloat16")
    spy = pipe.backend.streamer = Spy(pipe.params, drop=True, keep=1)
    logits, tokens = _run(pipe)
    spy.close()
    np.testing.assert_array_equal(logits, want_logits)
    assert tokens == want_tokens
    assert spy.kept == {"decoder.blocks.0"} and "decoder.blocks.0" not in spy.dropped
    cycle = [n for n in spy.entered if n in spy.behind]
    assert spy.dropped == [spy.behind[n] for n in cycle if spy.behind[n] != "decoder.blocks.0"]


def test_reading_two_blocks_ahead_asks_for_each_block_two_entries_early(folder):
    """With `ahead=2` each block is asked for when the block two before it is entered (the output
    table riding with the last decoder layer, a pass wrapping to layer 0), the block two behind
    is still the one dropped, and the numbers are the same bit for bit."""
    plain = npgemma.load(folder, dtype="bfloat16")
    plain.backend.streamer = None
    want_logits, want_tokens = _run(plain)
    pipe = npgemma.load(folder, dtype="bfloat16")
    spy = pipe.backend.streamer = Spy(pipe.params, drop=True, ahead=2)
    logits, tokens = _run(pipe)
    spy.close()
    np.testing.assert_array_equal(logits, want_logits)
    assert tokens == want_tokens
    n = pipe.cfg.text_config.num_hidden_layers
    d = [f"decoder.blocks.{i}" for i in range(n)]
    order = [*d, "lm_head", *d, "lm_head"]  # two passes of a decode step
    for i, name in enumerate(d):  # the next two blocks, one more when the table is among them
        want = order[i + 1:i + 3]
        assert spy.next[name] == (order[i + 1:i + 4] if "lm_head" in want else want), name
    last_vision = f"vision.blocks.{pipe.cfg.vision_config.num_hidden_layers - 1}"
    assert spy.next[last_vision] == d[:2]
    assert set(spy.fetched) >= set(d) | {"lm_head"}
    assert spy.dropped == [spy.behind[b] for b in spy.entered if b in spy.behind
                           and spy.behind[b] != b]


def test_the_memory_budget_counts_the_blocks_read_ahead(monkeypatch):
    """`resident_layers` leaves room for 2 + READ_AHEAD blocks in flight: one block further ahead
    keeps one decoder layer fewer cached, for the same spare memory."""
    from npgemma.checkpoint import estimate
    from npgemma.checkpoint.config_json import config_from_dict

    cfg = config_from_dict(tiny_config(text="gemma2"))
    layer = estimate.decoder_layer_params(cfg) * 2
    table = estimate._table_params(cfg) * 2
    vision = estimate._vision_params(cfg) * 2
    spare = estimate._CACHE_SLACK + vision + max(layer, table) + 2 * layer + layer  # one to keep
    monkeypatch.setattr(estimate, "READ_AHEAD", 1)
    assert estimate.resident_layers(cfg, 2, spare) == 1
    monkeypatch.setattr(estimate, "READ_AHEAD", 2)
    assert estimate.resident_layers(cfg, 2, spare) == 0
    assert estimate.resident_layers(cfg, 2, spare + layer) == 1


def test_every_weight_of_a_block_is_found_in_its_file(folder):
    """Each block's ranges are the tensors' own bytes: reading them back from the file at the
    recorded offsets gives the arrays."""
    pipe = npgemma.load(folder, dtype="bfloat16")
    streamer = pipe.backend.streamer
    total = 0
    for name, ranges in streamer.blocks.items():
        assert ranges, name
        for owner, offset, nbytes in ranges:
            with open(owner.filename, "rb") as f:
                f.seek(offset)
                total += len(f.read(nbytes)) == nbytes
    assert total == sum(len(r) for r in streamer.blocks.values())
    layer = pipe.params["language_model"]["layers"][0]["mlp"]["down_proj"]["weight"]
    owner, offset = prefetch._mapping(layer)
    with open(owner.filename, "rb") as f:
        f.seek(offset)
        raw = np.frombuffer(f.read(layer.nbytes), layer.dtype).reshape(layer.shape)
    np.testing.assert_array_equal(raw, layer)
    assert prefetch._mapping(np.zeros(3)) is None  # an array in RAM has no file


def test_dropping_unmaps_whole_pages_only(tmp_path):
    """madvise(DONTNEED) over a tensor's bytes rounds inwards to pages: a neighbour sharing the
    first or last page keeps its data (it stays readable either way; the map is read-only)."""
    path = tmp_path / "x.bin"
    data = np.arange(5 * mmap.PAGESIZE // 4, dtype=np.float32)
    data.tofile(path)
    m = np.memmap(path, dtype=np.uint8, mode="r", offset=0)
    prefetch._unmap(m, 100, 3 * mmap.PAGESIZE)
    np.testing.assert_array_equal(np.asarray(m).view(np.float32), data)


def test_read_speed_is_measured_on_the_file(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(os.urandom(4 << 20))
    speed = prefetch.read_speed([path], nbytes=2 << 20)
    assert speed is not None and speed > 0
    assert prefetch.read_speed([tmp_path / "w.safetensors"], nbytes=0) is None
