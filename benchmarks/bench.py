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
In the same run: the machine's memory bandwidth (a matrix-vector read over 2 GiB, BLAS on every
core) and the decode bound it implies (weight bytes read per token / bandwidth). The
table's ratios are against transformers float32 (or the first transformers engine) and against
the bound. `--resolution 224,896` with `--make` writes and runs each resolution's checkpoint.
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
        for tok in generate_tokens(pipe.backend, pipe.params, pipe.cfg, batch.input_ids,
                                   batch.pixel_values, gen, attention_mask=batch.attention_mask):
            stamps.append(time.perf_counter())
            reads.append(_read_bytes())
            tokens.append(int(tok[0]))
        yield load_s, b, np.diff(stamps), tokens, int(batch.input_ids.shape[1]), reads


def _transformers_runs(model, dtype, device, attn, batches, new_tokens, offload_gib=None):
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
        yield load_s, b, steps, tokens, int(batch.input_ids.shape[1]), [read0, *stamp.reads]


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
    for load_s, b, steps, tokens, prompt_len, reads in runs:
        decode = float(np.median(steps[1:])) if len(steps) > 1 else float("nan")
        per_token = (reads[-1] - reads[1]) / (len(reads) - 2) if len(reads) > 2 else float("nan")
        rows.append({"engine": spec, "batch": b, "load_s": load_s, "prefill_s": float(steps[0]),
                     "ms_per_token": 1000 * decode, "tokens_per_s": b / decode,
                     "decode_steps": len(steps) - 1, "prompt_tokens": prompt_len,
                     "peak_rss_gib": _rss_gib(), "anon_peak_gib": anon.gib(),
                     "disk_gb_per_token": per_token / 1e9, "tokens": tokens,
                     "blas": blas_kernels()})
    return rows


def bandwidth_gbs(gib: float = 2.0, repeats: int = 5) -> float:
    """Read bandwidth (GB/s, 10^9 bytes) as a decode step meets it: the best of `repeats`
    float32 matrix-vector products over a 2 GiB matrix (every byte read once, BLAS on every
    core). Plain reductions (sum, max, dot) read slower here (~24 GB/s vs ~33), so the bound
    below is what streaming the weights alone would cost, without the rest of the step."""
    m = np.ones((int(gib * 2**30) // (4 * 4096), 4096), np.float32)
    x = np.ones(4096, np.float32)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        m @ x
        best = min(best, time.perf_counter() - t)
    return m.nbytes / best / 1e9


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


def _table(rows: list[dict], bound_ms: dict[str, float]) -> str:
    """Markdown: one row per (engine, batch), ratios against transformers float32 at that batch."""
    def base(b):
        hf = [r for r in rows if r["batch"] == b and r["engine"].startswith("transformers")]
        f32 = [r for r in hf if r["engine"].split(":")[1:2] == ["float32"]]
        return (f32 or hf or [None])[0]

    out = ["| engine | batch | load s | prefill s | ms/token | tokens/s | decode × HF | "
           "prefill ÷ HF | % of bound | peak GiB | anon GiB | disk GB/token | BLAS kernel |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = base(r["batch"])
        speed = f"{ref['ms_per_token'] / r['ms_per_token']:.2f}" if ref else "-"
        pre = f"{r['prefill_s'] / ref['prefill_s']:.2f}" if ref else "-"
        bound = bound_ms.get(r["engine"])
        pct = f"{100 * bound / r['ms_per_token']:.0f}%" if bound else "-"
        out.append(f"| {r['engine']} | {r['batch']} | {r['load_s']:.1f} | {r['prefill_s']:.2f} | "
                   f"{r['ms_per_token']:.0f} | {r['tokens_per_s']:.2f} | {speed} | {pre} | {pct} | "
                   f"{r['peak_rss_gib']:.2f} | {r.get('anon_peak_gib', float('nan')):.2f} | "
                   f"{r.get('disk_gb_per_token', float('nan')):.2f} | {r.get('blas', '?')} |")
    return "\n".join(out)


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
                    help="the matrix the read bandwidth is measured over (default 2 GiB; a tiny "
                         "value for a smoke run on a tiny checkpoint)")
    ap.add_argument("--results", help="append the markdown tables to this file (e.g. RESULTS.md)")
    ap.add_argument("--offload", type=float, metavar="GIB",
                    help="transformers engines load with accelerate's device_map='auto' and "
                         "max_memory={'cpu': GIB}: the layers that do not fit are offloaded to disk")
    ap.add_argument("--hf-python", metavar="PATH",
                    help="the interpreter for the transformers engines (a venv of their own, e.g. "
                         "with accelerate for --offload); npgemma's engines run in this one")
    ap.add_argument("--single", help=argparse.SUPPRESS)
    ap.add_argument("--bandwidth", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batch.split(",")]
    if args.bandwidth:
        print(bandwidth_gbs(args.bandwidth_gib))
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

    # In a child process, so that the 2 GiB buffer never counts in an engine's peak RSS.
    bw = float(subprocess.run([sys.executable, os.path.abspath(__file__), "--bandwidth",
                               "--bandwidth-gib", str(args.bandwidth_gib)],
                              stdout=subprocess.PIPE, text=True, check=True).stdout)
    print(f"memory read bandwidth: {bw:.1f} GB/s ({os.cpu_count()} threads, "
          f"{args.bandwidth_gib:g} GiB)", file=sys.stderr)
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
              "bandwidth_gbs": bw, "new_tokens": args.new_tokens, "rows": []}
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
    failed = len(runs) - len({(r["checkpoint"], r["engine"]) for r in report["rows"]})
    text = [f"machine: {report['machine']}; read bandwidth {bw:.1f} GB/s; CPU vector extensions: "
            f"{report['cpu_extensions']}; {args.new_tokens} new tokens, `{PROMPT}`"]
    for name, model in models:
        rows = [r for r in report["rows"] if r["checkpoint"] == name]
        bound = {r["engine"]: 1000 * decode_weight_bytes(model, _itemsize(r["engine"])) / (bw * 1e9)
                 for r in rows if _itemsize(r["engine"])}
        same = len({tuple(r["tokens"]) for r in rows}) == 1
        text += ["", f"**{name}** ({rows[0]['prompt_tokens'] if rows else '?'} prompt tokens; "
                 f"decode bound at {bw:.1f} GB/s: "
                 + ", ".join(f"{e.split(' ')[0]} {ms:.0f} ms" for e, ms in sorted(bound.items())
                             if "(" not in e)
                 + f"; greedy tokens identical across engines: {same})", "", _table(rows, bound)]
    print("\n".join(text))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n".join(text) + "\n\n")
    if args.record:
        from record import write

        for name, model in models:  # the bound and the ratios the table prints, as numbers
            rows = [r for r in report["rows"] if r["checkpoint"] == name]
            for r in rows:
                if _itemsize(r["engine"]):  # as the table: none for the beside-runs
                    bound = 1000 * decode_weight_bytes(model, _itemsize(r["engine"]))
                    r["bound_ms"] = bound / (bw * 1e9)
                    r["pct_of_bound"] = 100 * r["bound_ms"] / r["ms_per_token"]
        write(args.record, "bench.py", report, argv)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
