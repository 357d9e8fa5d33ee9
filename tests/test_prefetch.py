"""Streaming a memory-mapped checkpoint (`npgemma/checkpoint/prefetch.py`): the next block is
asked for ahead and used pages are dropped, and neither changes a single number.

What was dropped is read from the kernel, not from the streamer: `mincore(2)` on a mapping of
the file made here says which of its pages the page cache holds, `/proc/self/pagemap` which
pages of a mapping are mapped into this process; the byte ranges of each block are read from
the safetensors header, not from the streamer's tables.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import re
import struct
import time
from unittest import mock

import numpy as np
import pytest

import npgemma
from npgemma.checkpoint import prefetch
from npgemma.synthetic.checkpoint import tiny_config, write_checkpoint
from npgemma.synthetic.random_model import example_image

PROMPT = "caption en"
PAGE = mmap.PAGESIZE
LAYERS = 6  # a cycle of 7 blocks (6 decoder layers and the table): block i - 2 is never among
            # the blocks read ahead (i + 1, i + 2, up to i + 4 while kept layers run)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def cached_pages(path) -> np.ndarray:
    """bool[pages of the file]: does the page cache hold this page? (mincore on a fresh shared
    read-only mapping, which maps nothing in: it only asks.)"""
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        try:
            vec = (ctypes.c_ubyte * (-(-size // PAGE)))()
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
            return np.frombuffer(vec, np.uint8) & 1 == 1
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def mapped_pages(address: int, pages: int) -> np.ndarray:
    """bool[pages]: is each page from `address` (page-aligned) mapped into this process?
    (/proc/self/pagemap bit 63, "present", readable without privileges.)"""
    if not os.path.exists("/proc/self/pagemap"):
        pytest.skip("no /proc/self/pagemap on this kernel")
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(address // PAGE * 8)
        entries = np.frombuffer(f.read(8 * pages), np.uint64)
    return (entries >> np.uint64(63)) == 1


def tensor_pages(folder) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Each streamed block's whole pages, read from the safetensors headers: block name ->
    [(file, indices of the file pages lying wholly inside one of the block's tensors)]. A page
    shared with a neighbouring tensor is left out: dropping a tensor rounds inwards."""
    blocks: dict[str, dict[str, set]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        for key, info in json.loads(raw[8:8 + n]).items():
            if key == "__metadata__":
                continue
            m = re.search(r"language_model\.model\.layers\.(\d+)\.", key)
            name = (f"decoder.blocks.{m.group(1)}" if m else
                    "lm_head" if key.endswith("embed_tokens.weight") else None)
            if name is None:
                continue
            begin, end = (8 + n + o for o in info["data_offsets"])
            inside = range(-(-begin // PAGE), end // PAGE)  # whole pages only
            blocks.setdefault(name, {}).setdefault(str(path), set()).update(inside)
    return {name: [(f, np.array(sorted(p), int)) for f, p in files.items() if p]
            for name, files in blocks.items()}


FOLIO = 2 << 20  # the largest page-cache folio (x86-64's PMD size; ext4 has used them since 6.x)


def interior(pages: dict[str, list[tuple[str, np.ndarray]]]) -> dict:
    """`tensor_pages` without the pages a folio shared with a neighbour could hold: for each run
    of consecutive pages (a block's tensors lie one after another in a file), those in the
    naturally aligned FOLIO around its first and its last page. The kernel keeps a folio lying
    partly outside the range handed back, and cannot hand back part of one, so those pages
    may stay cached when the neighbour does; every other page of a dropped block must go."""
    per = FOLIO // PAGE
    out = {}
    for block, files in pages.items():
        kept = []
        for f, p in files:
            starts = p[np.r_[True, np.diff(p) > 1]]
            ends = p[np.r_[np.diff(p) > 1, True]]
            edge = np.zeros(len(p), bool)
            for a, b in zip(starts, ends):
                edge |= (p // per == a // per) | (p // per == b // per)
            if (~edge).any():
                kept.append((f, p[~edge]))
        out[block] = kept
    return out


def evict(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages cannot be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("prefetch") / "pg2",
                            tiny_config(text="gemma2", sliding_window=4), dtype="bfloat16",
                            num_shards=2, seed=5)


@pytest.fixture(scope="module", params=["narrow", "wide"])
def paged(request, tmp_path_factory):
    """A checkpoint whose every decoder tensor spans whole pages (the tiny one's 4 KiB tensors
    straddle page boundaries), six decoder layers, in two shards; its page cache emptied.
    "narrow": each decoder layer 3 FOLIOs long (6 MiB), read ahead by WILLNEED alone when it
    is shorter than the two read-ahead windows `prefetch.read_ahead` leaves to WILLNEED;
    "wide": each layer three windows long (24 MiB where read_ahead_kb is 8192), most of it read
    by sendfile, whose kernel read-ahead would run past a range into the next block."""
    root = tmp_path_factory.mktemp(f"paged-{request.param}")
    probe = root / "probe.bin"
    probe.write_bytes(os.urandom(16 * PAGE))
    evict(probe)
    if cached_pages(probe).any():
        pytest.skip("this file system keeps its pages in memory (tmpfs?): nothing to drop")
    hidden, length = 128, 3 * FOLIO  # the layer's length: its MLP's three matrices, bf16
    if request.param == "wide":
        fd = os.open(probe, os.O_RDONLY)
        length = 3 * prefetch.willneed_chunk(fd)
        os.close(fd)
    width = -(-length // (3 * hidden * 2) // 64) * 64
    return write_checkpoint(root / "pg2", tiny_config(
        text="gemma2", sliding_window=4, hidden_size=hidden, intermediate_size=width, head_dim=32,
        num_hidden_layers=LAYERS), dtype="bfloat16", num_shards=2, seed=7)


def _run(pipe):
    image = example_image(40)
    logits = pipe.logits(image, PROMPT, positions=slice(None))
    return logits, pipe.generate(image, PROMPT, max_new_tokens=5).token_ids


class Spy(prefetch.Streamer):
    """The real streamer, recording what it was told and what it asked for."""

    def __init__(self, params, drop, keep=0, **kw):
        super().__init__(params, drop, keep, **kw)
        self.entered, self.fetched, self.dropped, self.log = [], [], [], []

    def __call__(self, name):
        self.entered.append(name)
        super().__call__(name)

    def _read_ahead(self, name):
        self.fetched.append(name)
        self.log.append(("read", name))  # a read of a block waits for its hand-back
        super()._read_ahead(name)

    def _dontneed(self, name):
        self.dropped.append(name)
        self.log.append(("drop", name))
        super()._dontneed(name)


class Watcher(prefetch.Streamer):
    """The real streamer; on entering each decoder block, once its reader thread has done what
    it was told, the share of each block's whole pages that the page cache holds (mincore)."""

    def __init__(self, params, drop, pages, keep=0, settle=False):
        super().__init__(params, drop, keep)
        self.pages, self.inner, self.seen, self.settle = pages, interior(pages), [], settle

    def __call__(self, name):
        super().__call__(name)
        self._dropper.submit(lambda: None).result()  # each thread in order: all it was told
        self._reader.submit(lambda: None).result()
        if name.startswith("decoder."):
            files = {f for b in self.pages.values() for f, _ in b}
            cached = {f: cached_pages(f) for f in files}
            # settle: the reads asked for ahead are asynchronous, and mincore counts a page once
            # its read is done: wait until two looks 50 ms apart agree (3 s at most)
            for _ in range(60 if self.settle else 0):
                time.sleep(0.05)
                again = {f: cached_pages(f) for f in files}
                if all((again[f] == cached[f]).all() for f in files):
                    break
                cached = again
            def share(pages):  # of each block's pages, the share cached (0 where it has none)
                return {block: float(np.mean(np.concatenate([cached[f][p] for f, p in files])))
                        if files else 0.0 for block, files in pages.items()}

            self.seen.append((name, share(self.pages), share(self.inner)))


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


CYCLE = [f"decoder.blocks.{i}" for i in range(LAYERS)] + ["lm_head"]  # a pass's order, wrapping


def _watched(paged, drop, keep=0, settle=False):
    pipe = npgemma.load(paged, dtype="bfloat16")
    for path in paged.glob("*.safetensors"):
        evict(path)
    watcher = pipe.backend.streamer = Watcher(pipe.params, drop, tensor_pages(paged), keep, settle)
    with mock.patch.object(prefetch, "_sendfile", wraps=prefetch._sendfile) as sent:
        _run(pipe)
    watcher.close()
    assert len(watcher.seen) >= 3 * LAYERS  # the prompt passes and the decode steps
    wide = "paged-wide" in str(paged)  # the fixture's folder: paged-{narrow,wide}N/pg2
    assert any(c.args[2] > 0 for c in sent.call_args_list) == wide, "sendfile read no layer"
    return watcher.seen


def test_streaming_drops_the_block_two_behind_and_keeps_the_one_behind(paged):
    """On entering block i (the table counts as the block after the last decoder layer), the
    page cache holds none of block i - 2 (but the folios it shares with a neighbour: `interior`)
    and all of block i - 1. Measured with mincore."""
    for k, (name, cached, inner) in enumerate(_watched(paged, drop=True)):
        i = CYCLE.index(name)
        assert inner[CYCLE[i - 2]] == 0, f"entering {name} (#{k}): {CYCLE[i - 2]} still cached"
        if k:  # the first entry of all: only the prompt's rows of the table were read so far
            assert cached[CYCLE[i - 1]] == 1, f"entering {name} (#{k}): {CYCLE[i - 1]} dropped"


def test_without_dropping_every_block_read_stays_cached(paged):
    """The control: the same run, not streaming, leaves every block it has read in the page
    cache (so it is the dropping that empties block i - 2 above, not the kernel)."""
    seen = _watched(paged, drop=False)
    for k, (name, cached, _) in enumerate(seen[LAYERS + 1:], LAYERS + 1):  # after a pass
        assert all(v == 1 for v in cached.values()), f"entering {name} (#{k}): {cached}"


def test_kept_layers_are_never_dropped_and_change_nothing(folder, paged):
    """A streamed run keeping its first decoder layer cached drops every other block two
    behind, never that one (mincore), with the same numbers bit for bit."""
    plain = npgemma.load(folder, dtype="bfloat16")
    plain.backend.streamer = None
    want_logits, want_tokens = _run(plain)
    pipe = npgemma.load(folder, dtype="bfloat16")
    pipe.backend.streamer = prefetch.Streamer(pipe.params, drop=True, keep=1)
    logits, tokens = _run(pipe)
    pipe.backend.streamer.close()
    np.testing.assert_array_equal(logits, want_logits)
    assert tokens == want_tokens
    for k, (name, cached, inner) in enumerate(_watched(paged, drop=True, keep=1)):
        i = CYCLE.index(name)
        if k:  # decoder layer 0 was read by the first pass, and stays
            assert cached["decoder.blocks.0"] == 1, f"entering {name} (#{k}): layer 0 dropped"
        if CYCLE[i - 2] != "decoder.blocks.0":
            assert inner[CYCLE[i - 2]] == 0, f"entering {name} (#{k}): {CYCLE[i - 2]} cached"


def test_with_layers_kept_the_first_streamed_layers_are_read_while_the_kept_ones_run(paged):
    """Two layers kept, two blocks ahead: from the second pass on, entering the last decoder
    layer has the table cached, entering layer 0 has layers 2 and 3 in the page cache, not the
    kept layers 0 and 1 asked for (the disk would idle while the cores run the kept layers), and
    entering layer 1 has four streamed layers cached (2 to 5): with nothing streamed behind, the
    reader asks for two more in place of the kept ones. Never more than 2 + READ_AHEAD streamed
    blocks are cached on entering a block (the budget of `estimate.resident_layers`; a block
    counts when any of its `interior` is). mincore, after the streamer's threads have done what
    they were told and the reads asked for have landed."""
    kept = {"decoder.blocks.0", "decoder.blocks.1"}
    seen = _watched(paged, drop=True, keep=2, settle=True)
    checked = 0
    for k, (name, cached, inner) in enumerate(seen):
        streamed = [b for b, share in inner.items() if share > 0 and b not in kept]
        assert len(streamed) <= 2 + prefetch.READ_AHEAD, f"entering {name} (#{k}): {streamed}"
        if k <= LAYERS:  # the first pass reads the kept layers too
            continue
        if name == f"decoder.blocks.{LAYERS - 1}":
            assert cached["lm_head"] == 1, (k, cached)
            checked += 1
        if name == "decoder.blocks.0":
            assert cached["decoder.blocks.2"] == cached["decoder.blocks.3"] == 1, (k, cached)
            checked += 1
        if name == "decoder.blocks.1":
            assert all(cached[f"decoder.blocks.{j}"] == 1 for j in range(2, 6)), (k, cached)
            checked += 1
    assert checked >= 6  # two decode steps at least, each entering all three


def test_reading_two_blocks_ahead_asks_for_each_block_two_entries_early(folder):
    """With `ahead=2` entering a block asks for the next two (the output table, entered as a
    block of its own, after the last decoder layer; a pass wrapping to layer 0), the block two
    behind is the one dropped, a block is read once until it is dropped, and the numbers are
    the same bit for bit."""
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
    for i, name in enumerate([*d, "lm_head"]):
        assert spy.next[name] == order[i + 1:i + 3], name
    last_vision = f"vision.blocks.{pipe.cfg.vision_config.num_hidden_layers - 1}"
    assert spy.next[last_vision] == d[:2]
    assert "lm_head" in spy.entered and set(spy.fetched) >= set(d) | {"lm_head"}
    assert spy.dropped == [spy.behind[b] for b in spy.entered if b in spy.behind
                           and spy.behind[b] != b]
    held: set = set()
    for what, name in spy.log:
        if what == "read":
            assert name not in held, f"{name} read twice with no drop between"
            held.add(name)
        else:
            held.discard(name)


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


@pytest.mark.parametrize("offset, drop, gone", [
    (0, (100, 3 * PAGE), [1, 2]),                # bytes 100 .. 3 pages + 100: pages 1 and 2
    (0, (PAGE, 2 * PAGE), [1, 2]),               # exactly pages 1 and 2
    (PAGE + 10, (2 * PAGE + 1, 2 * PAGE), [2]),  # map from file page 1; file page 3 is inside
    (PAGE + 10, (2 * PAGE, 2 * PAGE - 1), [1]),  # file page 2 is inside, page 3 lacks a byte
])
def test_dropping_unmaps_whole_pages_only(tmp_path, offset, drop, gone):
    """madvise(DONTNEED) over a tensor's file bytes takes out of this process exactly the pages
    lying wholly inside them (rounding inwards): a neighbour sharing the first or last page
    keeps it mapped (/proc/self/pagemap). `gone` counts pages of the map, which np.memmap
    starts at the page holding its offset. The data stays readable either way."""
    path = tmp_path / "x.bin"
    data = np.arange(6 * PAGE // 4, dtype=np.float32)
    data.tofile(path)
    m = np.memmap(path, dtype=np.uint8, mode="r", offset=offset)
    start = m.__array_interface__["data"][0] - offset % PAGE  # the map's first page
    pages = -(-(6 * PAGE - offset // PAGE * PAGE) // PAGE)
    assert int(np.asarray(m).sum()) >= 0 and mapped_pages(start, pages).all()  # all touched
    prefetch._unmap(m, *drop)
    want = np.ones(pages, bool)
    want[gone] = False
    np.testing.assert_array_equal(mapped_pages(start, pages), want)
    np.testing.assert_array_equal(np.asarray(m), data.view(np.uint8)[offset:])


def test_read_speed_is_measured_on_the_file(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(os.urandom(4 << 20))
    speed = prefetch.read_speed([path], nbytes=2 << 20)
    assert speed is not None and speed > 0
    assert prefetch.read_speed([tmp_path / "w.safetensors"], nbytes=0) is None


def test_willneed_has_the_whole_range_read_not_only_the_kernels_first_window(tmp_path):
    """Linux reads at most one read-ahead window of a single posix_fadvise(WILLNEED) call,
    however long the range (the streamer's first version asked once per tensor and got only each
    tensor's first window read ahead). `prefetch.willneed` over a range several windows long
    leaves every page of it in the page cache (mincore), waiting at most a few seconds for the
    disk; the single call, the control, leaves pages out."""
    path = tmp_path / "w.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        chunk = prefetch.willneed_chunk(fd)
        os.ftruncate(fd, 0)
        block = os.urandom(1 << 20)
        for _ in range(4 * chunk // len(block) + 1):  # four windows and a bit
            os.write(fd, block)
    finally:
        os.close(fd)
    size = os.path.getsize(path)
    evict(path)
    if cached_pages(path).any():
        pytest.skip("this file system keeps its pages in memory (tmpfs?): nothing to drop")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)  # the control: one call
        time.sleep(0.5)
        single = cached_pages(path)
        evict(path)
        prefetch.willneed(fd, 0, size)
        for _ in range(200):  # up to 20 s: a busy disk is slow
            if cached_pages(path).all():
                break
            time.sleep(0.1)
        chunked = cached_pages(path)
    finally:
        os.close(fd)
    assert not single.all(), "one WILLNEED call had the whole range read: the control failed"
    assert chunked.all(), f"{np.mean(chunked):.0%} of the range read ahead"


def test_one_willneed_call_of_the_chunk_size_is_read_whole(tmp_path):
    """The chunk is no more than the kernel reads of one call: a single WILLNEED of exactly
    `willneed_chunk` bytes, at a page-aligned offset inside a larger file, has every page of it
    read (mincore), and nothing past it."""
    path = tmp_path / "x.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        chunk = prefetch.willneed_chunk(fd)
        os.write(fd, os.urandom(3 * chunk))
    finally:
        os.close(fd)
    evict(path)
    if cached_pages(path).any():
        pytest.skip("this file system keeps its pages in memory (tmpfs?): nothing to drop")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, chunk, chunk, os.POSIX_FADV_WILLNEED)
        pages = chunk // PAGE
        # The read is asynchronous: on a busy disk it can take longer than any fixed sleep
        # (a 0.5 s sleep failed once beside a benchmark), so wait up to 20 s for it to land.
        deadline = time.monotonic() + 20
        while True:
            cached = cached_pages(path)
            if cached[pages:2 * pages].all() or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        os.close(fd)
    assert cached[pages:2 * pages].all(), f"{np.mean(cached[pages:2 * pages]):.0%} of one chunk"
    assert not cached[2 * pages + 64:].any()  # the kernel's own read-around stays small


def _file_of_chunks(tmp_path, chunks: int):
    """A file `chunks` WILLNEED chunks long, written and evicted; (path, chunk)."""
    path = tmp_path / "r.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        chunk = prefetch.willneed_chunk(fd)
        block = os.urandom(1 << 20)
        for _ in range(chunks * chunk // len(block)):
            os.write(fd, block)
    finally:
        os.close(fd)
    evict(path)
    if cached_pages(path).any():
        pytest.skip("this file system keeps its pages in memory (tmpfs?): nothing to drop")
    return path, chunk


def _read_into_cache(path, reader, lo: int, hi: int) -> np.ndarray:
    """`reader(fd, lo, hi - lo)`, then mincore once every page of the range is cached (20 s at
    most: a busy disk is slow) and the kernel's read-ahead has had time to land (0.5 s more)."""
    evict(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        reader(fd, lo, hi - lo)
    finally:
        os.close(fd)
    for _ in range(200):
        if cached_pages(path)[lo // PAGE:hi // PAGE].all():
            break
        time.sleep(0.1)
    time.sleep(0.5)
    return cached_pages(path)


def test_read_ahead_reads_the_range_by_sendfile_and_nothing_past_it(tmp_path):
    """`prefetch.read_ahead` over four windows in the middle of a file has every page of them
    cached and none before or after (mincore), most of it read by sendfile. The control: plain
    sendfile over the same range, whose kernel read-ahead runs past its end — why the last two
    windows are left to WILLNEED."""
    path, chunk = _file_of_chunks(tmp_path, 9)
    lo, hi = 2 * chunk, 6 * chunk
    control = _read_into_cache(path, prefetch._sendfile, lo, hi)
    assert control[hi // PAGE:].any(), "sendfile read nothing past the range: the control failed"
    with mock.patch.object(prefetch, "_sendfile", wraps=prefetch._sendfile) as sent:
        cached = _read_into_cache(path, prefetch.read_ahead, lo, hi)
    assert [c.args[1:] for c in sent.call_args_list] == [(lo, hi - lo - 2 * chunk)]
    assert cached[lo // PAGE:hi // PAGE].all(), f"{np.mean(cached[lo // PAGE:hi // PAGE]):.0%}"
    assert not cached[:lo // PAGE].any() and not cached[hi // PAGE:].any(), (
        f"{cached[:lo // PAGE].sum()} pages before, {cached[hi // PAGE:].sum()} after the range")


def test_read_ahead_falls_back_to_willneed_where_sendfile_fails(tmp_path, monkeypatch):
    """A file system that cannot splice (sendfile raises): the whole range is still read into
    the page cache, by WILLNEED, and nothing past it."""
    path, chunk = _file_of_chunks(tmp_path, 7)

    def refused(*args):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "sendfile", refused)
    lo, hi = chunk, 5 * chunk
    cached = _read_into_cache(path, prefetch.read_ahead, lo, hi)
    assert cached[lo // PAGE:hi // PAGE].all(), f"{np.mean(cached[lo // PAGE:hi // PAGE]):.0%}"
    assert not cached[:lo // PAGE].any() and not cached[hi // PAGE:].any()


def test_a_block_is_read_and_dropped_as_one_range_per_file(folder):
    """The streamer joins a block's tensors into the runs they form in each file (read from the
    safetensors headers here): each decoder layer is one range in each shard holding part of
    it, covering exactly the bytes from its first tensor to its last."""
    pipe = npgemma.load(folder, dtype="bfloat16")
    streamer = pipe.backend.streamer
    want: dict[str, dict[str, list]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for key, info in header.items():
            m = re.search(r"language_model\.model\.layers\.(\d+)\.", key)
            if m:
                begin, end = (8 + n + o for o in info["data_offsets"])
                want.setdefault(f"decoder.blocks.{m.group(1)}", {}).setdefault(
                    str(path), []).append((begin, end))
    for name, files in want.items():
        got = sorted((str(owner.filename), at, at + nbytes)
                     for owner, at, nbytes in streamer.spans[name])
        runs = sorted((f, min(b for b, _ in r), max(e for _, e in r)) for f, r in files.items())
        assert got == runs, name
    pipe.backend.streamer.close()


def test_a_block_is_handed_back_at_once_and_a_read_of_it_still_queued_is_called_off(paged):
    """The reader busy (a read of a GB, here a gate): entering a block hands back the one two
    behind without waiting for the reader, and a read of that block still queued never runs
    (it would put back the pages just handed back). Six decoder layers, entered in order."""
    import threading

    pipe = npgemma.load(paged, dtype="bfloat16")
    pipe.backend.streamer.close()
    spy = Spy(pipe.params, drop=True)
    gate = threading.Event()
    spy._reader.submit(gate.wait, 30)
    try:
        for i in range(4):  # 0 asks for 1 and 2; ...; 3 hands back 1, still queued
            spy(f"decoder.blocks.{i}")
        spy._dropping["decoder.blocks.1"].result(timeout=10)  # while the reader still waits
        assert spy.dropped[-2:] == ["decoder.blocks.0", "decoder.blocks.1"]  # (5, table first)
        assert spy.fetched == []
    finally:
        gate.set()
        spy.close()
    assert spy.fetched == [f"decoder.blocks.{i}" for i in (2, 3, 4, 5)]
