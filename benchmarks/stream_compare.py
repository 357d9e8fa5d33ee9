"""The streamer's ways of reading the blocks ahead, side by side in one process (issue 30).

    python benchmarks/stream_compare.py --model /work/ckpt/pg2-10b --steps 6 \\
        --record benchmarks/results/NAME.json

A checkpoint larger than the memory it runs in (a memory group, say) is streamed from disk each
decode step. The decode steps of one generation alternate, in the order A B B A A B ... (A B C C
B A with three), between

- "sendfile": `prefetch.read_ahead`, the streamer's reader since run 31: each block's range read
  by sendfile(2) to /dev/null (the kernel's own sequential read-ahead, nothing copied), its last
  two read-ahead windows asked for with WILLNEED (nothing read past the range). Runs 29 and 30
  measured plain sendfile, before the WILLNEED tail;
- "chunked": `prefetch.willneed`, the range asked for with posix_fadvise(WILLNEED) in chunks the
  kernel reads whole (the reader of runs 22-30);
- "one call": one WILLNEED per range, the reader of runs 20 and 21 (Linux reads only the first
  max(read_ahead_kb, max_sectors_kb) of it; the rest comes in by page faults). Then a range
  was a tensor; since run 31 the streamer joins a block's touching tensors into one range;
- "touch": the reader thread maps each range read-only, `madvise(MADV_SEQUENTIAL)`, and reads
  one byte a page in order: the pages come in by page faults, the kernel's sequential
  read-ahead for a mapping, the way transformers' offloaded layers came in at 2.21 GB/s against
  1.74 in run 27 (measured in run 28, not adopted: half the chunked reader's rate, the disk idle
  half of each step: one fault at a time has only the kernel's read-ahead window in flight);

so both see the same disk, the same load and the same process. A step's reader is switched
before the step starts; the blocks asked for from the last decoder layer on (the table, the
next step's first layers) are asked for the previous step's way. Per step: seconds, bytes read
from disk (/proc/self/io), GB/s and the share of the step the disk had requests in flight
(io_ticks). Before and after the steps, the disk's rate is measured as bench.py measures it: a
GiB of the largest shard, the fastest of four reads (`disk_read_gbs`), and every shard read in
order (`disk_pass_gbs`); each way's median GB/s is given as a percentage of the faster of each.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench.py, record.py

from bench import (PROMPT, _read_bytes, _test_image, disk_busy_ms, disk_pass_gbs,  # noqa: E402
                   disk_read_gbs)


def _order(ways: list[str], steps: int) -> list[str]:
    """A B B A A B ... (A B C C B A ... for three): each way as often early as late."""
    cycle = ways + ways[::-1]
    return [cycle[i % len(cycle)] for i in range(steps)]


def _touch(fd: int, offset: int, nbytes: int) -> None:
    """The range read into the page cache by page faults: a fresh read-only map of it, marked
    sequential (the kernel then reads a whole read-ahead window at a fault and the next one
    asynchronously, as for a file read in order), one byte a page read in order, 8 MiB of pages
    at a time (a short numpy call: the compute thread is never kept waiting long); returns once
    it is read. The pages stay in the page cache when the map is closed; the model's own map
    then faults them in from memory, as after a WILLNEED."""
    lo = offset // mmap.ALLOCATIONGRANULARITY * mmap.ALLOCATIONGRANULARITY  # mmap's offset rule
    with mmap.mmap(fd, offset + nbytes - lo, access=mmap.ACCESS_READ, offset=lo) as m:
        m.madvise(mmap.MADV_SEQUENTIAL)
        pages = np.frombuffer(m, np.uint8)[offset - lo::mmap.PAGESIZE]  # one byte a page
        step = (8 << 20) // mmap.PAGESIZE
        for at in range(0, len(pages), step):
            pages[at:at + step].sum()
        del pages  # the map closes only with no array left on it


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint folder (streamed: larger than RAM)")
    ap.add_argument("--steps", type=int, default=6, help="decode steps after the prefill")
    ap.add_argument("--disk-gib", type=float, default=1.0)
    ap.add_argument("--ways", default="sendfile,chunked",
                    help="comma list of: sendfile (the streamer's reader), chunked (WILLNEED "
                         "in chunks), one call (one WILLNEED a range), touch (by page faults on "
                         "a sequential map, one byte a page)")
    ap.add_argument("--stream-anyway", action="store_true",
                    help="stream (drop used pages) even a checkpoint that fits: a smoke run")
    ap.add_argument("--record", metavar="FILE", help="benchmarks/record.py output")
    args = ap.parse_args(argv)

    import npgemma
    from npgemma.checkpoint import prefetch
    from npgemma.generation.generate import GenerationConfig, generate_tokens

    streamer_reads = prefetch.read_ahead  # what the streamer calls, looked up at each call

    def one_call(fd, offset, nbytes):  # the reader before run 22
        return prefetch.willneed(fd, offset, nbytes, chunk=nbytes)

    readers = {"one call": one_call, "chunked": prefetch.willneed, "sendfile": streamer_reads,
               "touch": _touch}
    names = args.ways.split(",")
    if not names or set(names) - set(readers):
        ap.error(f"--ways: comma list of {', '.join(readers)}")

    load = [os.getloadavg()[0]]
    disk = [disk_read_gbs(args.model, args.disk_gib)]
    passes = [disk_pass_gbs(args.model)]
    pipe = npgemma.load(args.model, dtype="bfloat16")
    if args.stream_anyway and not pipe.backend.streamer.drop:
        pipe.backend.streamer.close()
        pipe.backend.streamer = prefetch.Streamer(pipe.params, drop=True)
    if pipe.backend.streamer is None or not pipe.backend.streamer.drop:
        raise SystemExit(f"{args.model} is not streamed here (it fits in memory): run it in a "
                         "memory group smaller than the checkpoint")
    image = _test_image(pipe.cfg.vision_config.image_size)
    batch = pipe.processor.batch([image], [PROMPT])
    order = _order(names, args.steps)
    steps, t, r, b = [], time.perf_counter(), _read_bytes(), disk_busy_ms(args.model)
    tokens = generate_tokens(pipe.backend, pipe.params, pipe.cfg, batch.input_ids,
                             batch.pixel_values, GenerationConfig(max_new_tokens=args.steps + 1),
                             attention_mask=batch.attention_mask)
    for i, _ in enumerate(tokens):  # token 0 ends the prefill (the streamer's reader)
        now, read, busy = time.perf_counter(), _read_bytes(), disk_busy_ms(args.model)
        if i:
            share = None if b is None else 100 * (busy - b) / 1000 / (now - t)
            steps.append({"way": order[i - 1], "s": now - t, "gb": (read - r) / 1e9,
                          "disk_busy_pct": share})
            print(f"step {i} ({order[i - 1]}): {now - t:.1f} s, {(read - r) / 1e9:.2f} GB read, "
                  f"{(read - r) / 1e9 / (now - t):.2f} GB/s, disk busy {share or 0:.0f}%",
                  file=sys.stderr, flush=True)
        else:
            print(f"prefill: {now - t:.1f} s", file=sys.stderr, flush=True)
        if i < args.steps:
            prefetch.read_ahead = readers[order[i]]
        t, r, b = time.perf_counter(), _read_bytes(), disk_busy_ms(args.model)
    prefetch.read_ahead = streamer_reads
    pipe.backend.streamer.close()
    disk.append(disk_read_gbs(args.model, args.disk_gib))
    passes.append(disk_pass_gbs(args.model))
    load.append(os.getloadavg()[0])
    burst, sustained = max(d["best"] for d in disk if d), max(p for p in passes if p)
    ways = {}
    for way in names:
        mine = [s for s in steps if s["way"] == way]
        gbs = float(np.median([s["gb"] / s["s"] for s in mine]))
        busy = [s["disk_busy_pct"] for s in mine if s["disk_busy_pct"] is not None]
        ways[way] = {"steps": len(mine), "median_s": float(np.median([s["s"] for s in mine])),
                     "median_disk_busy_pct": float(np.median(busy)) if busy else None,
                     "median_gb": float(np.median([s["gb"] for s in mine])), "median_gbs": gbs,
                     "pct_of_disk_rate": 100 * gbs / burst, "pct_of_disk_pass": 100 * gbs / sustained}
        print(f"{way}: {ways[way]['median_s']:.1f} s a step, {gbs:.2f} GB/s streamed: "
              f"{100 * gbs / burst:.0f}% of the disk's {burst:.2f} GB/s (a GiB), "
              f"{100 * gbs / sustained:.0f}% of {sustained:.2f} GB/s (every shard)", flush=True)
    report = {"model": os.path.basename(os.path.normpath(args.model)), "steps": steps,
              "ways": ways, "disk_reads_gbs": disk, "disk_pass_gbs": passes,
              "load_average": load}
    if args.record:
        from record import write

        write(args.record, "stream_compare.py", report, argv)
    print(json.dumps(ways))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
