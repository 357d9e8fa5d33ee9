"""npgemma against transformers, side by side in one run: load, prefill, decode, peak RSS.

    python benchmarks/bench.py --make paligemma-3b-pt-224 --out /tmp/pg1-3b \\
        --engines npgemma-numpy:float32,npgemma-numpy:bfloat16,transformers:float32 --batch 1,8 \\
        --record benchmarks/results/NAME.json   # the rows, with machine, BLAS kernel, versions, command

Engines (comma list): `npgemma-numpy:float32`, `npgemma-numpy:bfloat16` (the low-memory mode),
`npgemma-torch:DTYPE[:DEVICE]`, `transformers:DTYPE[:DEVICE[:ATTN]]` (ATTN sdpa or eager, default: transformers' choice;
transformers 5.24.0 when installed; `--hf-python VENV/bin/python` runs them in a venv of their own, and
`--offload GIB` loads them with accelerate's disk offload, what does not fit in GIB read from disk).
Each engine runs in its own process (its peak RSS is its own),
through the public API only: `npgemma.load(...).generate_batch`-equivalent token loop, and
transformers' `generate` with a logits processor that stamps the time of each new token.

Per engine and batch size: load s, prefill s (vision + the whole prompt, until the first new
token), decode ms/token (median over the steps after the first), tokens/s (batch / step time),
peak RSS (counting memory-mapped file pages), peak anonymous RSS (sampled), and the bytes read
from disk per decode step (/proc/self/io: a checkpoint streamed from disk re-reads its weights).
In the same run, the bounds (`bounds`, in a process of its own): the best rate at which a float32
matrix-vector product reads weights shaped like the checkpoint's decoder (>= 1 GiB of them, BLAS
on its threads, as the float32 engine runs a decode step) and the best float32 GEMM rate on the
prefill's shapes (the prompt's rows against the decoder's and the vision tower's matrices). A
decode step cannot beat its weight bytes at that read rate, nor a prefill its products' FLOPs at
that GEMM rate: each row's decode and prefill are given as a percentage of those, and a
percentage over 100 is a bug in the bound: the script says which row and exits 2 (no --record).
(A step whose weights are under CACHE_MARGIN times the last-level cache reads them from the
cache: it gets no GEMV percentage, and says why.)
And the disk (`disk_read_gbs`): the largest shard read sequentially after its pages are dropped
from the page cache, dd-style (buffered, and O_DIRECT) and as the streamers ask (WILLNEED or sendfile
first), the fastest of the four; a row that reads its weights from disk each step (streamed) is given
the bytes it read per second of decode as a percentage of that rate. A prefill that reads from
disk has a disk bound too (the bytes it read at the fastest rate measured): it is also given as
a percentage of the larger of its GEMM and disk bounds.
The table's ratios are against transformers float32 (or the first transformers engine) and
against the bounds. `--resolution 224,896` with `--make` writes and runs each resolution's checkpoint.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # record.py

PROMPT = "caption en"


def _test_image(size: int):
    from PIL import Image

    ramp = np.linspace(0, 255, size, dtype=np.float32)
    return Image.fromarray(np.stack([np.add.outer(ramp, ramp) / 2] * 3, -1).astype(np.uint8))


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _read_bytes() -> int:
    """Bytes this process has had read from disk (/proc/self/io read_bytes; 0 where absent):
    page-cache hits do not count, so a streamed checkpoint shows what each pass re-reads."""
    try:
        with open("/proc/self/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("read_bytes:"))
    except (OSError, StopIteration):
        return 0


class AnonPeak:
    """Peak anonymous RSS (RssAnon in /proc/self/status, sampled every 0.1 s by a thread: the
    kernel keeps a peak of the whole RSS only, and that counts memory-mapped file pages too)."""

    def __init__(self):
        import threading

        self.peak, self._stop = 0, threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            self._stop.wait(0.1)

    @staticmethod
    def now() -> int:
        try:
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))
        except (OSError, StopIteration):
            return 0

    def gib(self) -> float:
        return max(self.peak, self.now()) / 2**30


def _npgemma_runs(model, backend, dtype, device, batches, new_tokens):
    import npgemma
    from npgemma.generation.generate import GenerationConfig, generate_tokens

    t0 = time.perf_counter()
    pipe = npgemma.load(model, backend=backend, device=device, dtype=dtype)
    load_s = time.perf_counter() - t0
    image = _test_image(pipe.cfg.vision_config.image_size)
    for b in batches:
        batch = pipe.processor.batch([image] * b, [PROMPT] * b)
        gen = GenerationConfig(max_new_tokens=new_tokens)
        stamps, reads, tokens = [time.perf_counter()], [_read_bytes()], []
        busy = [disk_busy_ms(model)]
        for tok in generate_tokens(pipe.backend, pipe.params, pipe.cfg, batch.input_ids,
                                   batch.pixel_values, gen, attention_mask=batch.attention_mask):
            stamps.append(time.perf_counter())
            reads.append(_read_bytes())
            busy.append(disk_busy_ms(model))
            tokens.append(int(tok[0]))
        # the disk's busy share of the decode steps (after the first token)
        share = ((busy[-1] - busy[1]) / (1000 * (stamps[-1] - stamps[1]))
                 if None not in busy and len(stamps) > 2 else None)
        yield load_s, b, np.diff(stamps), tokens, int(batch.input_ids.shape[1]), reads, share


def _transformers_runs(model, dtype, device, attn, batches, new_tokens, offload_gib=None):
    # benchmarks/ is on sys.path (for record.py): its kernels.py would stand in for the `kernels`
    # package that transformers probes for on import (hub kernels), and fail where ml_dtypes is
    # not installed (the transformers engine failed so in a venv of its own: run 27's first try)
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    import torch
    from transformers import LogitsProcessor, PaliGemmaForConditionalGeneration

    from npgemma.checkpoint.config_json import load_config
    from npgemma.generation.processing import Processor

    class Stamp(LogitsProcessor):
        def __init__(self):
            self.stamps, self.reads = [], []

        def __call__(self, input_ids, scores):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            self.stamps.append(time.perf_counter())
            self.reads.append(_read_bytes())
            return scores

    t0 = time.perf_counter()
    if offload_gib is None:
        hf = PaliGemmaForConditionalGeneration.from_pretrained(
            model, dtype=getattr(torch, dtype), attn_implementation=attn).to(device).eval()
    else:  # accelerate's big-model inference: what fits in RAM stays, the rest is read from disk
        import tempfile

        hf = PaliGemmaForConditionalGeneration.from_pretrained(
            model, dtype=getattr(torch, dtype), attn_implementation=attn, device_map="auto",
            max_memory={"cpu": f"{offload_gib}GiB"},
            offload_folder=tempfile.mkdtemp(prefix="hf-offload-")).eval()
    load_s = time.perf_counter() - t0
    proc = Processor.from_pretrained(model, load_config(model))  # = HF's processor, exactly
    image = _test_image(hf.config.vision_config.image_size)
    for b in batches:
        batch = proc.batch([image] * b, [PROMPT] * b)
        args = dict(input_ids=torch.from_numpy(batch.input_ids).to(device),
                    attention_mask=torch.from_numpy(batch.attention_mask).to(device),
                    token_type_ids=torch.from_numpy(batch.token_type_ids).to(device),
                    pixel_values=torch.from_numpy(batch.pixel_values).to(device, getattr(torch, dtype)))
        stamp = Stamp()
        start, read0 = time.perf_counter(), _read_bytes()
        with torch.inference_mode():
            out = hf.generate(**args, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              do_sample=False, logits_processor=[stamp])
        steps = np.diff([start, *stamp.stamps])
        tokens = out[0, batch.input_ids.shape[1]:].tolist()
        yield load_s, b, steps, tokens, int(batch.input_ids.shape[1]), [read0, *stamp.reads], None


def blas_kernels() -> str:
    """The BLAS libraries this process has loaded and the kernel each runs (threadpoolctl):
    OpenBLAS names its core type ("Haswell", "SkylakeX", "Cooperlake", "Zen"), which
    OPENBLAS_CORETYPE can force below what the CPU has."""
    from threadpoolctl import threadpool_info

    out = []
    for lib in threadpool_info():
        if lib.get("user_api") != "blas":
            continue
        arch = lib.get("architecture") or "?"
        out.append(f"{lib.get('internal_api')} {lib.get('version') or ''} {arch} "
                   f"x{lib.get('num_threads')}".replace("  ", " "))
    return "; ".join(sorted(set(out))) or "none loaded"


def cpu_extensions(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's vector extensions that BLAS kernels are chosen by."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni",
              "amx_bf16", "amx_tile")
    return " ".join(f for f in wanted if f in flags) or "none of " + ", ".join(wanted)


def run_engine(spec: str, model: str, batches: list[int], new_tokens: int,
               offload_gib: float | None = None) -> list[dict]:
    """Rows for one engine, measured in this process."""
    name, *opts = spec.split(":")
    dtype = opts[0] if opts else "float32"
    device = opts[1] if len(opts) > 1 else "cpu"
    anon = AnonPeak()
    if name == "transformers":
        runs = _transformers_runs(model, dtype, device, (opts[2] or None) if len(opts) > 2 else None,
                                  batches, new_tokens, offload_gib)
    elif name in ("npgemma-numpy", "npgemma-torch"):
        runs = _npgemma_runs(model, name.split("-")[1], dtype, device, batches, new_tokens)
    else:
        raise SystemExit(f"unknown engine {spec!r}")
    rows = []
    for load_s, b, steps, tokens, prompt_len, reads, busy in runs:
        decode = float(np.median(steps[1:])) if len(steps) > 1 else float("nan")
        per_token = (reads[-1] - reads[1]) / (len(reads) - 2) if len(reads) > 2 else float("nan")
        rows.append({"engine": spec, "batch": b, "load_s": load_s, "prefill_s": float(steps[0]),
                     "ms_per_token": 1000 * decode, "tokens_per_s": b / decode,
                     "decode_steps": len(steps) - 1, "prompt_tokens": prompt_len,
                     "peak_rss_gib": _rss_gib(), "anon_peak_gib": anon.gib(),
                     "disk_gb_per_token": per_token / 1e9, "tokens": tokens,
                     "prefill_disk_gb": (reads[1] - reads[0]) / 1e9,
                     "disk_busy_pct": None if busy is None else 100 * busy,
                     "blas": blas_kernels()})
    return rows


def _best(fn, repeats: int) -> float:
    """The shortest of `repeats` timings of fn() (seconds): the least disturbed by the rest of
    a busy machine."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _matrices(model: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int, int]:
    """([out, in] of one decoder layer's matrices, of one vision layer's, the prefill's rows
    (the image tokens and a few of text), the decoder's width)."""
    from npgemma.checkpoint.config_json import load_config
    from npgemma.checkpoint.layout import expected_shapes

    cfg = load_config(model)
    shapes = expected_shapes(cfg)
    text = [s for k, s in shapes.items() if k.startswith("language_model.layers.0.") and len(s) == 2]
    vision = [s for k, s in shapes.items()
              if k.startswith("vision_tower.encoder.layers.0.") and len(s) == 2]
    return text, vision, cfg.num_image_tokens + 8, cfg.text_config.hidden_size


def bounds(model: str, gib: float = 2.0, repeats: int = 5) -> dict:
    """The machine's rates as the engines meet them, best of `repeats` each:
    gemv_gbs: GB/s (10^9 bytes) of weights read by float32 matrix-vector products over distinct
      matrices shaped like the decoder's (as many layers' as make `gib` GiB, at least one; every
      byte read once a pass, the pass far larger than the caches), each product the float32
      engine's own call (x[1, in] @ Wᵀ, BLAS on its threads), and over one [rows, width] matrix
      of `gib` GiB (as the output table is read): the faster of the two;
    gemm_gflops: float32 GEMM GFLOP/s over the prefill's shapes (the prompt's rows @ Wᵀ for
      each decoder and vision matrix): the fastest shape, so that no prefill can beat it.
    An earlier bound (one 2 GiB matrix of 4096 columns) was beaten by the float32 decode itself:
    a decode step's matrices read faster than that one did."""
    text, vision, rows, width = _matrices(model)
    layer = sum(4 * o * i for o, i in text)
    layers = max(1, int(gib * 2**30) // layer)
    mats = [np.ones(s, np.float32) for _ in range(layers) for s in text]
    xs = {i: np.ones((1, i), np.float32) for _, i in text}
    nbytes = sum(m.nbytes for m in mats)
    layered = nbytes / _best(lambda: [xs[m.shape[1]] @ m.T for m in mats], repeats)
    del mats
    table = np.ones((max(1, int(gib * 2**30) // (4 * width)), width), np.float32)
    x = np.ones((1, width), np.float32)
    one = table.nbytes / _best(lambda: x @ table.T, repeats)
    del table
    gemm = 0.0
    for o, i in dict.fromkeys(text + vision):
        w, a = np.ones((o, i), np.float32), np.ones((rows, i), np.float32)
        gemm = max(gemm, 2 * rows * o * i / _best(lambda: a @ w.T, repeats))
    return {"gemv_gbs": max(layered, one) / 1e9, "gemv_layers_gbs": layered / 1e9,
            "gemv_table_gbs": one / 1e9, "gemv_gib": nbytes / 2**30,
            "gemm_gflops": gemm / 1e9, "gemm_rows": rows}


def prefill_flops(model: str, prompt_tokens: int, batch: int) -> float:
    """FLOPs of a prefill's matrix products, at least: each vision matrix (the patch embedding
    and the projector too) over the patches, each decoder matrix over every prompt token, the
    output table for the last one. Norms, biases and attention's own products are left out
    (small at 224 px), so that the bound is never high."""
    import math

    from npgemma.checkpoint.config_json import load_config
    from npgemma.checkpoint.layout import expected_shapes

    cfg = load_config(model)
    flops = 2.0 * cfg.text_config.vocab_size * cfg.text_config.hidden_size
    for key, shape in expected_shapes(cfg).items():
        if len(shape) < 2 or "embed_tokens" in key or "position_embedding" in key:
            continue
        rows = prompt_tokens if key.startswith("language_model.") else cfg.num_image_tokens
        flops += 2.0 * rows * math.prod(shape)
    return batch * flops


def _read_through(path: str, n: int, how: str) -> float:
    """Seconds to read the first n bytes of `path` in order, 8 MiB a read, from the disk: its
    pages dropped from the page cache first (and after). how: "buffered" (dd's way, the
    kernel's own read-ahead), "direct" (O_DIRECT, dd iflag=direct), "willneed" (the whole
    range asked for first with posix_fadvise, in chunks the kernel reads whole: the streamer's
    reader of runs 22-30, `prefetch.willneed`) or "sendfile" (the range read first as the
    streamer reads a block since run 31, `prefetch.read_ahead`)."""
    import mmap

    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if how == "direct" else 0))
    buf = mmap.mmap(-1, 8 << 20)  # page-aligned, as O_DIRECT wants
    try:
        done, t = 0, time.perf_counter()
        if how in ("willneed", "sendfile"):  # a streamer's request for the whole range first
            from npgemma.checkpoint import prefetch

            (prefetch.willneed if how == "willneed" else prefetch.read_ahead)(fd, 0, n)
        while done < n:
            got = os.preadv(fd, [buf], done)
            if got <= 0:
                break
            done += got
        seconds = time.perf_counter() - t
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
        buf.close()
    return seconds if done >= n else float("inf")


def disk_read_gbs(model: str, gib: float = 1.0) -> dict | None:
    """GB/s of the largest shard's first `gib` GiB read in order from the disk (`_read_through`),
    each way; "best" is the fastest: the disk's sequential rate, the bound of a streamed pass.
    None where there is no shard."""
    import glob

    files = glob.glob(os.path.join(model, "*.safetensors"))
    if not files:
        return None
    path = max(files, key=os.path.getsize)
    n = min(os.path.getsize(path), int(gib * 2**30)) // (8 << 20) * (8 << 20) or os.path.getsize(path)
    out = {}
    for how in ("buffered", "direct", "willneed", "sendfile"):
        try:
            out[how] = n / _read_through(path, n, how) / 1e9
        except OSError:  # O_DIRECT refused (tmpfs) or a size it will not read
            out[how] = 0.0
    out["best"] = max(out.values())
    return out if out["best"] > 0 else None


def disk_pass_gbs(model: str) -> float | None:
    """GB/s of every shard read in order, as dd reads (buffered, 8 MiB a read), each file's pages
    dropped before and after: the disk's sustained sequential rate over as many bytes as a
    streamed pass reads, where `disk_read_gbs` reads one GiB (a virtual disk's rate varies
    between reads of a GiB: 0.5 to 3.2 GB/s within a minute on the machine of run 22)."""
    import glob

    files = sorted(glob.glob(os.path.join(model, "*.safetensors")))
    n = [os.path.getsize(f) // (8 << 20) * (8 << 20) for f in files]
    seconds = sum(_read_through(f, k, "buffered") for f, k in zip(files, n) if k)
    return sum(n) / seconds / 1e9 if sum(n) and seconds else None


def prefill_disk_bound_s(gb_read: float, bound: dict) -> float:
    """Seconds the prefill's own reads from disk take at least: the bytes it had read
    (/proc/self/io, so pages already cached do not count) at the fastest sequential rate this
    run measured (the best GiB or a whole pass, before or after: the faster, the lower the bound)."""
    rate = max([bound["disk_gbs"] or 0.0, *(g or 0.0 for g in bound.get("disk_pass_gbs", []))])
    return gb_read / rate


def disk_busy_ms(model: str) -> int | None:
    """Milliseconds the checkpoint's block device has spent with requests in flight since boot
    (/sys/dev/block/MAJ:MIN/stat, io_ticks); None where the file is on no block device."""
    dev = os.stat(model).st_dev
    try:
        with open(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat") as f:
            return int(f.read().split()[9])
    except (OSError, IndexError, ValueError):
        return None


def over_bounds(rows: list[dict]) -> list[str]:
    """One line per row whose decode or prefill beats its bound: the bound is then wrong."""
    out = []
    for r in rows:
        for key, what in (("pct_of_gemv_bound", "decode"), ("pct_of_gemm_bound", "prefill"),
                          ("pct_of_prefill_bound", "prefill")):
            if r.get(key, 0) > 100:
                out.append(f"{r['checkpoint']} {r['engine']} batch {r['batch']}: {what} at "
                           f"{r[key]:.0f}% of its bound ({key}): the bound does not bound")
    return out


def last_level_cache_bytes() -> int:
    """The largest CPU cache (sysfs), 32 MiB where the machine does not say."""
    sizes = []
    for size in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = size.read_text().strip()
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
    return max(sizes, default=32 * 2**20)


# A decode step is bound by reading its weights from memory only when they are far larger than
# the last-level cache; a step whose weights (mostly) stay cached between steps reads from the
# cache and may beat any DRAM figure (the tiny smoke checkpoint: 18.5 MB of float32 weights,
# seen at 120-675% of a DRAM-sized bound under load). Such a row gets no GEMV percentage.
CACHE_MARGIN = 4


def decode_weight_bytes(model: str, itemsize: int) -> int:
    """Bytes of weights one decode step reads: every decoder matrix, the norms and the output
    table (the tied embedding), not the vision tower (it runs once, in the prefill)."""
    from npgemma.checkpoint.config_json import load_config
    from npgemma.checkpoint.estimate import per_token_params

    return itemsize * per_token_params(load_config(model))


def _make(name: str, out: str) -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("make_checkpoint", os.path.join(here, "make_checkpoint.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not os.path.exists(os.path.join(out, "config.json")):
        mod.write_random_checkpoint(name, out)
    return out


def _table(rows: list[dict]) -> str:
    """Markdown: one row per (engine, batch), ratios against transformers float32 at that batch."""
    def base(b):
        hf = [r for r in rows if r["batch"] == b and r["engine"].startswith("transformers")]
        f32 = [r for r in hf if r["engine"].split(":")[1:2] == ["float32"]]
        return (f32 or hf or [None])[0]

    out = ["| engine | batch | load s | prefill s | ms/token | tokens/s | decode × HF | "
           "prefill ÷ HF | decode % of GEMV bound | prefill % of GEMM bound | prefill % of "
           "max(GEMM, disk) bound | peak GiB | anon GiB | disk GB/token | % of disk rate | "
           "% of disk pass | disk busy | BLAS kernel |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = base(r["batch"])
        speed = f"{ref['ms_per_token'] / r['ms_per_token']:.2f}" if ref else "-"
        pre = f"{r['prefill_s'] / ref['prefill_s']:.2f}" if ref else "-"
        pct = {k: f"{r[k]:.0f}%" if k in r else "-"
               for k in ("pct_of_gemv_bound", "pct_of_gemm_bound", "pct_of_prefill_bound",
                         "pct_of_disk_rate", "pct_of_disk_pass")}
        busy = f"{r['disk_busy_pct']:.0f}%" if r.get("disk_busy_pct") is not None else "-"
        out.append(f"| {r['engine']} | {r['batch']} | {r['load_s']:.1f} | {r['prefill_s']:.2f} | "
                   f"{r['ms_per_token']:.0f} | {r['tokens_per_s']:.2f} | {speed} | {pre} | "
                   f"{pct['pct_of_gemv_bound']} | {pct['pct_of_gemm_bound']} | "
                   f"{pct['pct_of_prefill_bound']} | "
                   f"{r['peak_rss_gib']:.2f} | {r.get('anon_peak_gib', float('nan')):.2f} | "
                   f"{r.get('disk_gb_per_token', float('nan')):.2f} | {pct['pct_of_disk_rate']} | "
                   f"{pct['pct_of_disk_pass']} | {busy} | "
                   f"{r.get('blas', '?')} |")
    return "\n".join(out)


def _float32_products(engine: str) -> bool:
    """Does the engine multiply in float32 (the GEMM bound's arithmetic)? npgemma's numpy backend
    always does (its low-memory mode widens the weights); the others in their float32 dtype."""
    spec = engine.split(" ")[0]
    return spec.startswith("npgemma-numpy") or (spec.split(":") + ["float32"])[1] == "float32"


def _itemsize(engine: str) -> int | None:
    dtype = (engine.split(":") + ["float32"])[1]
    return {"float32": 4, "bfloat16": 2, "float16": 2}.get(dtype)


def main(argv=None) -> int:
    from tqdm import tqdm

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint folder")
    ap.add_argument("--make", help="a make_checkpoint.py name to write first (e.g. paligemma-3b-pt-224)")
    ap.add_argument("--out", default="/tmp/npgemma-bench", help="where --make writes")
    ap.add_argument("--resolution", default=None,
                    help="with --make: comma list of 224,448,896 (replaces the name's resolution)")
    ap.add_argument("--engines", default="npgemma-numpy:float32,npgemma-numpy:bfloat16,"
                    "npgemma-torch:float32,npgemma-torch:bfloat16,transformers:float32,"
                    "transformers:bfloat16")
    ap.add_argument("--batch", default="1", help="comma list of batch sizes, e.g. 1,4,8")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--openblas-unset", action="store_true",
                    help="also run the npgemma-numpy engines with OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE "
                         "removed from their environment (this command only); the default when "
                         "OPENBLAS_CORETYPE is set: every engine then runs with both unset (the "
                         "kernel users get) and the numpy engines with them too, beside")
    ap.add_argument("--json", help="write every row (and the bandwidth) to this JSON file")
    ap.add_argument("--record", metavar="FILE",
                    help="write the rows with the machine, BLAS kernel, versions and this command "
                         "(benchmarks/record.py) to FILE, e.g. benchmarks/results/NAME.json")
    ap.add_argument("--bandwidth-gib", type=float, default=2.0,
                    help="the float32 weights the matrix-vector bound is measured over (default "
                         "2 GiB; a tiny value for a smoke run on a tiny checkpoint)")
    ap.add_argument("--disk-gib", type=float, default=1.0,
                    help="how much of the largest shard the disk's sequential rate is read over")
    ap.add_argument("--disk-pass", action="store_true",
                    help="also read every shard in order before and after the engines (the disk's "
                         "sustained sequential rate, `disk_pass_gbs`): streamed rows are given as a "
                         "percentage of the faster pass too")
    ap.add_argument("--results", help="append the markdown tables to this file (e.g. RESULTS.md)")
    ap.add_argument("--offload", type=float, metavar="GIB",
                    help="transformers engines load with accelerate's device_map='auto' and "
                         "max_memory={'cpu': GIB}: the layers that do not fit are offloaded to disk")
    ap.add_argument("--hf-python", metavar="PATH",
                    help="the interpreter for the transformers engines (a venv of their own, e.g. "
                         "with accelerate for --offload); npgemma's engines run in this one")
    ap.add_argument("--single", help=argparse.SUPPRESS)
    ap.add_argument("--bounds", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batch.split(",")]
    if args.bounds:
        print(json.dumps(bounds(args.model, args.bandwidth_gib)))
        return 0

    if args.single:
        print(json.dumps(run_engine(args.single, args.model, batches, args.new_tokens, args.offload)))
        return 0
    models = []
    if args.make:
        base, _, res = args.make.rpartition("-")
        for r in (args.resolution.split(",") if args.resolution else [res]):
            name = f"{base}-{r}"
            models.append((name, _make(name, os.path.join(args.out, name))))
    elif args.model:
        models.append((os.path.basename(os.path.normpath(args.model)), args.model))
    else:
        ap.error("--model or --make is required")

    # In a child process, so that its buffers never count in an engine's peak RSS.
    bound = {name: json.loads(subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--bounds", "--model", model, "--bandwidth-gib",
         str(args.bandwidth_gib)], stdout=subprocess.PIPE, text=True, check=True).stdout)
        for name, model in models}
    for name, model in models:
        disk = disk_read_gbs(model, args.disk_gib)
        bound[name] |= {"disk_gbs": disk and disk["best"], "disk_reads_gbs": disk,
                        "disk_pass_gbs": [disk_pass_gbs(model)] if args.disk_pass else []}
        b = bound[name]
        print(f"{name}: float32 GEMV reads {b['gemv_gbs']:.1f} GB/s, float32 GEMM "
              f"{b['gemm_gflops']:.0f} GFLOP/s, disk {b['disk_gbs'] or float('nan'):.2f} GB/s "
              f"sequential (load average {os.getloadavg()[0]:.2f})", file=sys.stderr)
    forced = os.environ.get("OPENBLAS_CORETYPE")
    print(f"CPU vector extensions: {cpu_extensions()}; OPENBLAS_CORETYPE "
          f"{forced or 'unset'}, OPENBLAS_L2_SIZE {os.environ.get('OPENBLAS_L2_SIZE') or 'unset'}",
          file=sys.stderr)
    if forced:  # the headline runs OpenBLAS's own choice; the forced kernel is reported beside
        runs = [(n, m, e, {"unset": True}) for n, m in models for e in args.engines.split(",")]
        runs += [(n, m, e + f" (OPENBLAS_CORETYPE={forced})", {}) for n, m in models
                 for e in args.engines.split(",") if e.startswith("npgemma-numpy")]
    else:
        runs = [(n, m, e, {}) for n, m in models for e in args.engines.split(",")]
        if args.openblas_unset:
            runs += [(n, m, e + " (OPENBLAS_* unset)", {"unset": True}) for n, m in models
                     for e in args.engines.split(",") if e.startswith("npgemma-numpy")]
    report = {"machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.python_version()}",
              "cpu_extensions": cpu_extensions(), "openblas_coretype": forced,
              "bounds": bound, "load_average": list(os.getloadavg()),
              "new_tokens": args.new_tokens, "rows": []}
    for name, model, engine, opt in tqdm(runs, desc="engines", unit="engine", file=sys.stderr):
        env = dict(os.environ)
        if opt.get("unset"):
            env.pop("OPENBLAS_CORETYPE", None)
            env.pop("OPENBLAS_L2_SIZE", None)
        spec = engine.split(" ")[0]
        tqdm.write(f"{name}: {engine} ...", file=sys.stderr)
        python = args.hf_python if args.hf_python and spec.startswith("transformers") else sys.executable
        offload = ["--offload", str(args.offload)] if args.offload is not None else []
        proc = subprocess.run([python, os.path.abspath(__file__), "--model", model,
                               "--single", spec, "--batch", args.batch,
                               "--new-tokens", str(args.new_tokens), *offload],
                              stdout=subprocess.PIPE, text=True, env=env)
        if proc.returncode:
            tqdm.write(f"{name}: {engine}: failed (exit {proc.returncode})", file=sys.stderr)
            continue
        for row in json.loads(proc.stdout.strip().splitlines()[-1]):
            row |= {"checkpoint": name, "engine": engine}
            report["rows"].append(row)
    report["load_average_after"] = list(os.getloadavg())
    for name, model in models if args.disk_pass else ():  # the sustained rate, after as before
        bound[name]["disk_pass_gbs"].append(disk_pass_gbs(model))
    failed = len(runs) - len({(r["checkpoint"], r["engine"]) for r in report["rows"]})
    llc = last_level_cache_bytes()
    for name, model in models:  # the bounds as numbers, beside each row
        b = bound[name]
        for r in (r for r in report["rows"] if r["checkpoint"] == name):
            if _itemsize(r["engine"]):  # none for the beside-runs (another BLAS kernel)
                weights = decode_weight_bytes(model, _itemsize(r["engine"]))
                r["bound_ms"] = 1000 * weights / (b["gemv_gbs"] * 1e9)
                if weights > CACHE_MARGIN * llc:
                    r["pct_of_gemv_bound"] = 100 * r["bound_ms"] / r["ms_per_token"]
                else:
                    r["gemv_bound_not_applied"] = (
                        f"{weights / 1e6:.1f} MB of weights a step, under {CACHE_MARGIN}x the "
                        f"last-level cache ({llc / 2**20:.0f} MiB): read "
                        "from the cache, not bound by memory")
            if _itemsize(r["engine"]) and _float32_products(r["engine"]):  # bf16 products
                # (torch's, transformers') may beat the float32 GEMM rate: no bound for them
                r["prefill_bound_s"] = prefill_flops(model, r["prompt_tokens"], r["batch"]) / (
                    b["gemm_gflops"] * 1e9)
                r["pct_of_gemm_bound"] = 100 * r["prefill_bound_s"] / r["prefill_s"]
            if b["disk_gbs"] and r.get("prefill_disk_gb", 0) > 0.01:  # the prefill read from disk
                r["prefill_disk_bound_s"] = prefill_disk_bound_s(r["prefill_disk_gb"], b)
            bounds_s = [r[k] for k in ("prefill_bound_s", "prefill_disk_bound_s") if k in r]
            if bounds_s:  # issue 30: the prefill against the larger of its bounds
                r["pct_of_prefill_bound"] = 100 * max(bounds_s) / r["prefill_s"]
            if b["disk_gbs"] and r["disk_gb_per_token"] > 0.01:  # streamed: read from disk
                r["streamed_gbs"] = r["disk_gb_per_token"] / (r["ms_per_token"] / 1000)
                r["pct_of_disk_rate"] = 100 * r["streamed_gbs"] / b["disk_gbs"]
                if None not in b["disk_pass_gbs"][:2] and b["disk_pass_gbs"]:  # the faster pass
                    r["pct_of_disk_pass"] = 100 * r["streamed_gbs"] / max(b["disk_pass_gbs"])
    la = report["load_average"]
    text = [f"machine: {report['machine']}; CPU vector extensions: {report['cpu_extensions']}; "
            f"{args.new_tokens} new tokens, `{PROMPT}`; load average {la[0]:.2f} {la[1]:.2f} "
            f"{la[2]:.2f} before, {report['load_average_after'][0]:.2f} after"]
    for name, model in models:
        rows = [r for r in report["rows"] if r["checkpoint"] == name]
        b = bound[name]
        same = len({tuple(r["tokens"]) for r in rows}) == 1
        text += ["", f"**{name}** ({rows[0]['prompt_tokens'] if rows else '?'} prompt tokens; "
                 f"float32 GEMV reads {b['gemv_gbs']:.1f} GB/s over {b['gemv_gib']:.2f} GiB, "
                 f"float32 GEMM {b['gemm_gflops']:.0f} GFLOP/s, disk "
                 f"{b['disk_gbs'] or float('nan'):.2f} GB/s sequential"
                 + (" (every shard in order: " + ", ".join(f"{g or float('nan'):.2f}" for g in
                                                          b["disk_pass_gbs"]) + " GB/s)"
                    if b["disk_pass_gbs"] else "") + "; "
                 f"greedy tokens identical across engines: {same})", "", _table(rows)]
    print("\n".join(text))
    over = over_bounds(report["rows"])
    for line in over:
        print(f"bench.py: error: {line}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n".join(text) + "\n\n")
    if over:
        return 2  # a bound that does not bound: nothing recorded
    if args.record:
        from record import write

        write(args.record, "bench.py", report, argv)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
