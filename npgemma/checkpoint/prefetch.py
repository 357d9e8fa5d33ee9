"""Streaming a checkpoint larger than RAM from disk: the next block's bytes asked for ahead, the
used ones handed back.

The low-memory mode memory-maps the safetensors files and computes on the weights in their file
dtype, so a checkpoint needs its bytes *on disk*, not in RAM. When the file is larger than the
memory the machine has, every pass (a prefill, each decode step) reads the weights from disk
again: the page cache, scanned cyclically, keeps nothing useful. Two things make that pass run
at the disk's speed and leave other processes their memory:

- prefetch: when the model enters block i (`hooks.scope`), a reader thread has the kernel read
  the bytes of the READ_AHEAD blocks after it into the page cache (`read_ahead`: sendfile(2) to
  /dev/null, the kernel's own sequential read-ahead, nothing copied), so the disk reads while
  the cores multiply. The last two read-ahead windows of each range are asked for with
  `posix_fadvise(WILLNEED)` instead (`willneed`), which reads exactly what it is asked: the
  kernel's read-ahead runs past the end of what sendfile reads, into a neighbour in the file
  (perhaps a block just dropped);
- drop: block i-2's pages are unmapped from this process (`madvise(DONTNEED)`: a later touch
  reads them again) and dropped from the page cache (`posix_fadvise(DONTNEED)`) as the model
  enters block i, by a second thread, so that the file's pages never crowd out anyone's memory
  and neither the cores nor the reader wait for the unmapping. (Done by the reader, behind its
  reads, the pages of two blocks stayed until the output table was read, the largest block: in
  a memory group the kernel then had to reclaim while reading, benchmarks/RESULTS.md run 34.)
  Only when streaming: a checkpoint that fits keeps its pages cached between passes, and so
  does a streamed run for its first `keep` decoder layers, as many as the memory check found
  room for (`memory.resident_layers`): each pass then reads only the rest from disk, and the
  reader asks past the kept layers for the first streamed ones, one more for each kept layer
  among the two blocks cached behind the one entered (they take no room of the 2 + READ_AHEAD
  streamed blocks cached), so the disk works while the cores run the kept layers.

A block is a vision layer, a decoder layer or the output table (the scope `lm_head`), each read
and dropped as one range per file, each asked for once until it is dropped.

Neither changes a number: both are hints about *when* bytes are read, the arrays are the same
read-only maps. One check rides along (`finite.py`): each block's weights are checked for NaN
and Inf the first time the model enters it (the tensors outside the blocks, small, when the
streamer is made), so a mapped checkpoint is never scanned twice: once per block per run.
Anonymous memory (what the kernel cannot reclaim) stays the activations, the KV-cache and the
widening buffers.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from .. import hooks
from . import finite
from .layout import flatten

PAGE = mmap.PAGESIZE
# Blocks asked for ahead of the one computing: blocks i+1 and i+2 while block i computes, so the
# disk always has a block queued. One more block in flight (`estimate.resident_layers` counts
# 2 + READ_AHEAD). Measured on paligemma2-10b streamed in an 8 GiB memory group (benchmarks/
# RESULTS.md): runs 20, 21, one run each, busy machine, when only each tensor's first 8 MB was
# read ahead (one WILLNEED call): one block ahead 0.41 GB/s, two 0.53 GB/s. Runs 22-25, whole
# blocks read ahead (`willneed`): 1.6-2.1 GB/s, the disk busy 84-99% of a decode step (one call
# a tensor, side by side: 1.7-1.8 GB/s, 67-77% busy). Runs 29, 30: read by sendfile instead,
# side by side with the chunked WILLNEED: 2.25 against 2.11 GB/s (10B), 2.51 against 1.99 (28B).
READ_AHEAD = 2


def _mapping(arr: np.ndarray):
    """(np.memmap owning the mmap, byte offset of `arr` in its file) or None for RAM arrays."""
    base = arr  # views of a memmap carry its `offset` too: the owner is the one over the mmap
    while isinstance(base, np.ndarray) and not isinstance(base.base, mmap.mmap):
        base = base.base
    if not isinstance(base, np.memmap) or not base.filename:
        return None
    start = arr.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    return base, base.offset + start


def _arrays(tree) -> list[np.ndarray]:
    if isinstance(tree, dict):
        return [a for v in tree.values() for a in _arrays(v)]
    if isinstance(tree, list):
        return [a for v in tree for a in _arrays(v)]
    return [tree] if isinstance(tree, np.ndarray) else []


class Streamer:
    """The `hooks.scope` listener of a streamed run: prefetch the next block, drop the old ones.

    Blocks in the order a pass reads them: the vision layers, then the decoder layers and the
    output table (the tied embedding), after which a decode step starts again at decoder layer 0.
    """

    def __init__(self, params: dict, drop: bool, keep: int = 0, ahead: int = READ_AHEAD):
        vision = params["vision_tower"]["encoder"]["layers"]
        text = params["language_model"]
        table = params.get("lm_head", {}).get("weight", text["embed_tokens"]["weight"])
        self.blocks: dict[str, list] = {f"vision.blocks.{i}": self._ranges(layer)
                                         for i, layer in enumerate(vision)}
        decoder = [f"decoder.blocks.{i}" for i in range(len(text["layers"]))]
        self.blocks |= {name: self._ranges(layer) for name, layer in zip(decoder, text["layers"])}
        self.blocks["lm_head"] = self._ranges(table)
        # What the reader reads of a block: its tensors' ranges joined where they touch (a
        # layer's tensors lie one after another in its file), so that each is one long read.
        self.spans = {name: _joined(ranges) for name, ranges in self.blocks.items()}
        self.next: dict[str, list[str]] = {}
        vision_names = [f"vision.blocks.{i}" for i in range(len(vision))]
        # What to ask for on entering a block: the `ahead` blocks after it in the order a pass
        # reads them (the decoder layers, the output table, layer 0 of the next decode step,
        # and on); and what two blocks back to hand back. From the second pass on, the kept
        # layers are cached: skipped, so that the disk reads the first streamed layers while
        # the cores run the kept ones, and a kept layer among the two cached behind (i-1, i)
        # lets one more streamed block be asked for in their place: the streamed blocks in the
        # page cache stay 2 + ahead (`first`: the table of the first pass, which reads the kept
        # layers too).
        cycle = decoder + ["lm_head"]
        self.kept = set(decoder[:keep])  # never dropped: cached from the first pass on
        prefill = vision_names + cycle + decoder  # a pass, then the next one's start
        for i, name in enumerate(vision_names):
            self.next[name] = prefill[i + 1:i + 1 + ahead]
        self.first = dict(self.next)
        for i, name in enumerate(cycle):
            held = len({cycle[i - 1], name} & self.kept)
            self.first[name] = _ahead(name, cycle[i + 1:] + cycle, ahead, set())
            self.next[name] = _ahead(name, cycle[i + 1:] + cycle, ahead + held, self.kept)
        self.behind = {name: cycle[i - 2] for i, name in enumerate(cycle)}
        # Asked for and not handed back since (not asked again): the reader's task for it.
        self._asked: dict[str, Future] = {}
        # Finiteness, once per block: {block: {canonical key: array}} until first entered.
        self.unchecked = {f"vision.blocks.{i}": flatten(layer, f"vision_tower.encoder.layers.{i}.")
                          for i, layer in enumerate(vision)}
        self.unchecked |= {name: flatten(layer, f"language_model.layers.{i}.")
                           for i, (name, layer) in enumerate(zip(decoder, text["layers"]))}
        self.unchecked["lm_head"] = {"lm_head.weight" if "lm_head" in params else
                                     "language_model.embed_tokens.weight": table}
        blocks = {id(a) for tree in self.unchecked.values() for a in tree.values()}
        _check_finite({k: a for k, a in flatten(params).items() if id(a) not in blocks},
                      mapped=False)
        self.drop = drop
        self.bytes_prefetched = 0
        self._fds: dict[str, int] = {}
        self._fds_lock = threading.Lock()  # both threads open descriptors
        # Two threads: one reads ahead, in order; one hands back, at once (behind a read of a
        # GB, a hand-back would leave that GB's worth of pages over the budget meanwhile).
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="npgemma-prefetch")
        self._dropper = ThreadPoolExecutor(1, thread_name_prefix="npgemma-drop")
        self._dropping: dict[str, Future] = {}
        # A pipeline never says it is done: its threads and descriptors go with it.
        self._finalizer = weakref.finalize(self, _release, (self._reader, self._dropper),
                                           self._fds)

    @staticmethod
    def _ranges(tree) -> list:
        out = []
        for a in _arrays(tree):
            m = _mapping(a)
            if m is not None:
                out.append((m[0], m[1], a.nbytes))
        return out

    def __call__(self, name: str) -> None:
        if self.unchecked:  # first pass: this block
            _check_finite(self.unchecked.pop(name, {}))
        # Block i-2 handed back at once, so that no more than 2 + READ_AHEAD streamed blocks
        # (i-1, i, i+1, ...) are in the page cache (but for the milliseconds the hand-back runs
        # beside a read already under way; a read of it still queued is called off, one under
        # way is let finish first); then the blocks ahead asked
        # for, each once until it is handed back (a second ask would have sendfile walk a GB of
        # cached pages again), and not read before its hand-back is done.
        old = self.behind.get(name)
        if self.drop and old is not None and old != name and old not in self.kept:
            reading = self._asked.pop(old, None)
            if reading is not None and reading.cancel():
                reading = None
            self._dropping[old] = self._dropper.submit(self._drop_after, old, reading)
        for nxt in (self.first if self.unchecked else self.next).get(name, ()):
            if nxt not in self._asked:
                self._asked[nxt] = self._reader.submit(self._read_after, nxt,
                                                       self._dropping.pop(nxt, None))

    def _fd(self, filename: str) -> int:
        with self._fds_lock:
            fd = self._fds.get(filename)
            if fd is None:
                fd = self._fds[filename] = os.open(filename, os.O_RDONLY)
            return fd

    def _read_after(self, name: str, dropping: Future | None) -> None:
        if dropping is not None:
            wait([dropping])  # done, or failed: either way no longer in the way
        self._read_ahead(name)

    def _drop_after(self, name: str, reading: Future | None) -> None:
        if reading is not None:
            wait([reading])
        self._dontneed(name)

    def _read_ahead(self, name: str) -> None:
        for owner, offset, nbytes in self.spans[name]:
            read_ahead(self._fd(owner.filename), offset, nbytes)
            self.bytes_prefetched += nbytes

    def _dontneed(self, name: str) -> None:
        # Over the joined ranges, not tensor by tensor: a page two tensors share would stay
        # mapped, and the kernel keeps a folio (a page-cache unit, up to 2 MiB on ext4 since
        # Linux 6.x) that is mapped or lies partly outside the range asked for.
        for owner, offset, nbytes in self.spans[name]:
            _unmap(owner, offset, nbytes)
            os.posix_fadvise(self._fd(owner.filename), offset, nbytes, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        self._reader.shutdown(wait=True)
        self._dropper.shutdown(wait=True)
        self._finalizer()


def read_ahead(fd: int, offset: int, nbytes: int) -> None:
    """Have the kernel read bytes [offset, offset + nbytes) of the file into the page cache, and
    nothing past them; returns once all but the last two windows are read (those are in flight).

    The bulk by sendfile(2) to /dev/null: the file read in order by the kernel's sequential
    read-ahead, no byte copied to this process (benchmarks/RESULTS.md runs 29, 30: 2.25 and 2.51
    GB/s a streamed step against 2.11 and 1.99 for the chunked WILLNEED, side by side). That
    read-ahead runs ahead of the reader by up to two windows (the window being read and the next
    one, asked for when the reader reaches the first), so it would go past the range by up to
    that much, into bytes of another block, perhaps one just dropped (8 MiB past a range on the
    machine of run 30, mincore). So the last 2 * `willneed_chunk` bytes (a window is no larger)
    are asked for by `willneed`, which reads exactly the range. Where sendfile fails (a file
    system that cannot splice), `willneed` asks for all of it."""
    tail = min(nbytes, 2 * willneed_chunk(fd))
    done = 0
    with contextlib.suppress(OSError):
        done = _sendfile(fd, offset, nbytes - tail)
    willneed(fd, offset + done, nbytes - done)


def _sendfile(fd: int, offset: int, nbytes: int) -> int:
    """Bytes [offset, offset + nbytes) sent to /dev/null (read into the page cache on the way):
    how many were."""
    if nbytes <= 0:
        return 0
    null = os.open(os.devnull, os.O_WRONLY)
    done = 0
    try:
        while done < nbytes:
            sent = os.sendfile(null, fd, offset + done, nbytes - done)
            if sent <= 0:  # the end of the file
                break
            done += sent
    finally:
        os.close(null)
    return done


def willneed_chunk(fd: int) -> int:
    """The most bytes one posix_fadvise(WILLNEED) call has the kernel read for the file: Linux
    (force_page_cache_ra, since 4.10) cuts the request to max(read-ahead window, the device's
    largest request), whatever length is asked for. Read from the file's block device in
    /sys (read_ahead_kb, max_sectors_kb; a partition's are its disk's); 128 KiB, the kernel's
    default window, where there is none to read (tmpfs, a network file system)."""
    return _device_chunk(os.fstat(fd).st_dev)


@functools.lru_cache(maxsize=None)
def _device_chunk(dev: int) -> int:
    kib = 128
    base = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
    for queue in (f"{base}/queue", f"{base}/../queue"):
        try:
            kib = max([kib] + [int(Path(queue, f).read_text()) for f in
                               ("read_ahead_kb", "max_sectors_kb")])
            break
        except (OSError, ValueError):
            continue
    return kib << 10


def willneed(fd: int, offset: int, nbytes: int, chunk: int | None = None) -> None:
    """Ask the kernel to read bytes [offset, offset + nbytes) of the file into the page cache,
    asynchronously, all of them: one WILLNEED per `chunk` (default `willneed_chunk`), so the disk
    gets the whole range queued as requests of its largest size. On the virtio disk of
    benchmarks/RESULTS.md run 22 (read_ahead_kb 8192): one call over a GiB of a shard put 8 MB
    of it in the page cache (fincore); chunked, all of it."""
    chunk = chunk or willneed_chunk(fd)
    for at in range(offset, offset + nbytes, chunk):
        os.posix_fadvise(fd, at, min(chunk, offset + nbytes - at), os.POSIX_FADV_WILLNEED)


def _joined(ranges: list) -> list[tuple[np.memmap, int, int]]:
    """The (memmap, offset, bytes) ranges in file order, neighbours in one map joined where less
    than a page lies between them (a tensor's alignment)."""
    out: list[list] = []
    for owner, offset, nbytes in sorted(ranges, key=lambda r: (r[0].filename, r[1])):
        if out and out[-1][0] is owner and offset - (out[-1][1] + out[-1][2]) < PAGE:
            out[-1][2] = max(out[-1][2], offset + nbytes - out[-1][1])
        else:
            out.append([owner, offset, nbytes])
    return [tuple(span) for span in out]


def _ahead(name: str, after: list[str], ahead: int, kept: set) -> list[str]:
    """The blocks to ask for on entering `name`, from `after` (the blocks that follow, in a
    pass's order, wrapping): the first `ahead` not kept, each once, never `name` itself."""
    out: list[str] = []
    for b in after:
        if len(out) == ahead:
            break
        if b != name and b not in kept and b not in out:
            out.append(b)
    return out


def _check_finite(tensors: dict, mapped: bool = True) -> None:
    """`finite.check` each memory-mapped tensor, naming its file and canonical key. With
    `mapped=False` a mapped tensor is read into a buffer (`os.pread`) instead of through the
    map: touching a map maps the kernel's read-around too, pages of the neighbouring blocks
    that a drop could then never take out of the page cache."""
    for key, arr in tensors.items():
        m = _mapping(arr)
        if m is not None and not mapped and arr.flags.c_contiguous:
            with open(m[0].filename, "rb") as f:
                arr = np.frombuffer(os.pread(f.fileno(), arr.nbytes, m[1]),
                                    arr.dtype).reshape(arr.shape)
        finite.check(arr, key, m[0].filename if m else "weights")


def _release(threads: tuple, fds: dict) -> None:
    for pool in threads:
        pool.shutdown(wait=False)
    for fd in fds.values():
        os.close(fd)
    fds.clear()


def _unmap(owner: np.memmap, offset: int, nbytes: int) -> None:
    """madvise(DONTNEED) over the whole pages of file bytes [offset, offset + nbytes) in the
    memmap's mmap. np.memmap maps the file from the allocation-granularity boundary at or below
    its own offset, so file offset f sits at f - that boundary in the mmap."""
    begins = owner.offset - owner.offset % mmap.ALLOCATIONGRANULARITY
    lo = -(-(offset - begins) // PAGE) * PAGE
    hi = (offset + nbytes - begins) // PAGE * PAGE
    if hi > lo:
        owner._mmap.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


@contextlib.contextmanager
def streaming(streamer: Streamer | None):
    """Run a block with `streamer` listening to the model's scopes (None: no change)."""
    if streamer is None:
        yield
        return
    with hooks.listening(streamer):
        yield


def read_speed(files: list[Path], nbytes: int = 1 << 30) -> float | None:
    """Bytes per second the disk gives these files read as a streamed pass reads them (the
    range asked for ahead with WILLNEED, then read in order), measured on up to `nbytes` from
    the middle of the largest one after dropping that range from the page cache (so the figure
    is the disk's, not memory's). None when nothing could be read."""
    path = max(files, key=lambda p: p.stat().st_size)
    size = path.stat().st_size
    n = min(nbytes, size) // PAGE * PAGE
    if n == 0:
        return None
    start = (size - n) // 2 // PAGE * PAGE
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, start, n, os.POSIX_FADV_DONTNEED)
        buf = bytearray(8 << 20)
        done, t0 = 0, time.perf_counter()
        willneed(fd, start, n)
        while done < n:
            got = os.preadv(fd, [memoryview(buf)[:min(len(buf), n - done)]], start + done)
            if got <= 0:
                break
            done += got
        seconds = time.perf_counter() - t0
        os.posix_fadvise(fd, start, n, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return done / seconds if done and seconds > 0 else None
