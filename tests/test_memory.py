"""The memory check: its figures against what the code really allocates, the readers of
/proc/meminfo and cgroup files (fake files, never real pressure), and the refusal before any
weight is read."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

import npgemma
from npgemma import cli, paligemma
from npgemma.checkpoint import estimate, machine, memory, prefetch, weights
from npgemma.checkpoint.config_json import config_from_dict, load_config
from npgemma.checkpoint.weights import expected_shapes, flatten
from npgemma.errors import InputError
from npgemma.generation import numpy_backend
from npgemma.synthetic.checkpoint import tiny_config, write_checkpoint
from npgemma.synthetic.random_model import write_demo

REPO = Path(npgemma.__file__).resolve().parents[1]
GiB = 2**30


def _make_checkpoint_module():
    spec = importlib.util.spec_from_file_location("make_checkpoint",
                                                  REPO / "benchmarks" / "make_checkpoint.py")
    mc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mc)
    return mc


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo(tmp_path_factory.mktemp("mem") / "demo")


def fake_available(monkeypatch, nbytes: int):
    monkeypatch.setattr(machine, "available_memory", lambda: machine.Available(nbytes, "fake"))


# --- the figures --------------------------------------------------------------------------

@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("disk", ["float32", "bfloat16"])
def test_weight_bytes_are_what_the_numpy_backend_loads(tmp_path, tied, dtype, disk):
    """float32 mode widens to 4 bytes; the low-memory mode memory-maps the file's own dtype."""
    from npgemma.generation.backend import get_backend

    raw = tiny_config(text="gemma2", tie_word_embeddings=tied)
    raw["tie_word_embeddings"] = tied
    folder = write_checkpoint(tmp_path / "ck", raw, dtype=disk)
    cfg = load_config(folder)
    tree = flatten(get_backend("numpy", dtype=dtype).load_weights(folder, cfg))
    assert estimate.num_params(cfg) == sum(a.size for a in tree.values())
    need = estimate.estimate(cfg, "numpy", dtype, disk_dtype=disk)
    if dtype == "float32":
        assert need.ram["weights"] == sum(a.nbytes for a in tree.values()) and not need.file
    else:  # memory-mapped: file pages, not anonymous memory
        assert need.file["weights"] == sum(a.nbytes for a in tree.values())
        assert "weights" not in need.ram


def test_kv_cache_bytes_are_what_init_cache_allocates():
    cfg = config_from_dict(tiny_config(text="gemma2", num_key_value_heads=2))
    cache = paligemma.init_cache(cfg, batch=3, max_length=37)
    allocated = sum(a.nbytes for a in cache.keys + cache.values)
    assert estimate.kv_cache_bytes(cfg, 37, 4, batch=3) == allocated


def test_kv_cache_bytes_match_the_torch_cache():
    torch = pytest.importorskip("torch")
    from npgemma.generation.backend import get_backend

    cfg = config_from_dict(tiny_config(num_key_value_heads=1))
    cache = get_backend("torch", dtype="bfloat16").init_cache(cfg, 2, 19)
    tensors = [t for t in vars(cache).values() if isinstance(t, list)]
    allocated = sum(t.numel() * t.element_size() for part in tensors for t in part
                    if isinstance(t, torch.Tensor))
    assert allocated == estimate.kv_cache_bytes(cfg, 19, 2, batch=2)


def test_real_configs_match_the_independent_parameter_count():
    """benchmarks/make_checkpoint.py counts parameters from its own tensor list; the README
    table's weight sizes follow (10B: 38.7 GB float32, 19.3 GB bfloat16)."""
    mc = _make_checkpoint_module()
    configs = mc._build_real_configs()
    for name, raw in configs.items():
        assert estimate.num_params(config_from_dict(raw)) == mc.count_parameters(name), name
    cfg = config_from_dict(configs["paligemma2-10b-pt-224"])
    assert round(estimate.estimate(cfg, "numpy", "float32").ram["weights"] / 1e9, 1) == 38.7
    assert round(estimate.estimate(cfg, "numpy", "bfloat16").file["weights"] / 1e9, 1) == 19.3


def test_attention_scores_are_bounded_by_the_chunk_limit():
    mc = _make_checkpoint_module()
    cfg = config_from_dict(mc._build_real_configs()["paligemma-3b-pt-896"])
    # SigLIP at 896 px: 16 heads x 4096 x 4096 float32 scores = 1 GiB per copy, unbounded.
    assert 16 * 4096**2 * 4 > estimate.MAX_SCORE_BYTES
    act = estimate.activation_bytes(cfg, 4096 + 40, 4)
    mlp = 4136 * cfg.text_config.intermediate_size * 4 * estimate._MLP_COPIES  # the decoder MLP
    assert act == max(estimate.MAX_SCORE_BYTES, mlp)
    small = config_from_dict(tiny_config())
    assert estimate.activation_bytes(small, 10, 4) < estimate.MAX_SCORE_BYTES


def test_more_tokens_never_need_less():
    cfg = config_from_dict(tiny_config(text="gemma2"))
    totals = [estimate.estimate(cfg, text_tokens=n).ram_total for n in (1, 100, 10_000, 100_000)]
    assert totals == sorted(totals) and totals[0] < totals[-1]


def test_torch_on_a_gpu_splits_host_and_device():
    cfg = config_from_dict(tiny_config())
    need = estimate.estimate(cfg, "torch", "bfloat16", "cuda", disk_dtype="bfloat16")
    assert need.gpu["weights"] == estimate.num_params(cfg) * 2
    # Tensors reach the device one at a time: host RAM holds the largest, read and cast.
    largest = max(math.prod(s) for s in expected_shapes(cfg).values())
    assert need.ram["loading"] == largest * (2 + 2) and "weights" not in need.ram
    assert "KV-cache" in need.gpu and "KV-cache" not in need.ram


# --- the readers ----------------------------------------------------------------------------

def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_meminfo_available(tmp_path):
    f = write(tmp_path / "meminfo", "MemTotal:       24683584 kB\nMemFree:  1 kB\n"
                                    "MemAvailable:   11552644 kB\nBuffers: 2 kB\n")
    assert machine.meminfo_available(f) == 11552644 * 1024
    assert machine.meminfo_available(tmp_path / "absent") is None


def test_cgroup_v2_tightest_ancestor_minus_working_set(tmp_path):
    root = tmp_path / "cgroup"
    proc = write(tmp_path / "proc_cgroup", "0::/user.slice/job\n")
    job = root / "user.slice" / "job"
    write(job / "memory.max", "max\n")  # no limit on the job itself
    write(job / "memory.current", "999\n")
    parent = root / "user.slice"
    write(parent / "memory.max", f"{8 * GiB}\n")
    write(parent / "memory.current", f"{3 * GiB}\n")
    write(parent / "memory.stat", f"anon 5\ninactive_file {1 * GiB}\nactive_file 7\n")
    assert machine.cgroup_headroom(proc, root) == (6 * GiB, f"cgroup {parent / 'memory.max'}")
    write(job / "memory.max", f"{2 * GiB}\n")  # now the job's own limit is tighter
    write(job / "memory.current", f"{GiB // 2}\n")
    assert machine.cgroup_headroom(proc, root)[0] == GiB + GiB // 2


def test_cgroup_v2_without_limits_and_v1_unlimited(tmp_path):
    root = tmp_path / "cgroup"
    write(root / "memory.max", "max\n")
    write(root / "memory.current", "5\n")
    assert machine.cgroup_headroom(write(tmp_path / "c2", "0::/\n"), root) is None
    write(root / "memory" / "x" / "memory.limit_in_bytes", "9223372036854771712\n")
    write(root / "memory" / "x" / "memory.usage_in_bytes", "128495616\n")
    assert machine.cgroup_headroom(write(tmp_path / "c1", "4:memory:/x\n"), root) is None


def test_cgroup_v1_hierarchical_limit(tmp_path):
    root = tmp_path / "cgroup"
    d = root / "memory" / "process_api" / "abc"
    write(d / "memory.limit_in_bytes", "9223372036854771712\n")
    write(d / "memory.usage_in_bytes", f"{5 * GiB}\n")
    write(d / "memory.stat", f"cache 1\nhierarchical_memory_limit {16 * GiB}\n"
                             f"total_inactive_file {2 * GiB}\n")
    proc = write(tmp_path / "pc", "5:cpu,cpuacct:/\n4:memory:/process_api/abc\n0::/\n")
    assert machine.cgroup_headroom(proc, root)[0] == 13 * GiB


def test_available_is_the_smaller_reading(tmp_path):
    root = tmp_path / "cgroup"
    write(root / "memory.max", f"{4 * GiB}\n")
    write(root / "memory.current", f"{1 * GiB}\n")
    proc = write(tmp_path / "pc", "0::/\n")
    mem = write(tmp_path / "meminfo", f"MemAvailable: {10 * GiB // 1024} kB\n")
    got = machine.available_memory(mem, proc, root)
    assert got.bytes == 3 * GiB and "memory.max" in got.source
    write(root / "memory.max", f"{40 * GiB}\n")
    assert machine.available_memory(mem, proc, root) == machine.Available(10 * GiB, "MemAvailable")
    assert machine.available_memory(tmp_path / "no", tmp_path / "no", tmp_path / "no") is None


# --- the refusal ----------------------------------------------------------------------------

def test_refused_with_the_figures_and_what_fits(monkeypatch, demo):
    cfg = load_config(demo[0])  # as if stored in bfloat16 (the low-memory mode maps the file's dtype)
    monkeypatch.setattr(estimate, "_WIDENING_BYTES", 0)  # the demo's weights are smaller than them
    f32 = estimate.estimate(cfg, "numpy", "float32", disk_dtype="bfloat16").ram_total
    lowest = estimate.estimate(cfg, "numpy", "bfloat16", disk_dtype="bfloat16")
    low = lowest.ram_total + lowest.file_total
    assert low < f32
    fake_available(monkeypatch, (low + f32) // 2)
    with pytest.raises(InputError) as e:
        memory.check(cfg, "ck", disk_dtype="bfloat16")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("ck: not enough memory for the numpy backend")
    assert f"needs {f32 / 1e9:.1f} GB of RAM (weights " in msg and "(fake)" in msg
    assert "--dtype bfloat16 (low-memory mode) needs" in msg and "(fits)" in msg
    assert "--backend torch --device cuda --dtype bfloat16" in msg and "--force" in msg
    need = memory.check(cfg, "ck", dtype="bfloat16", disk_dtype="bfloat16")
    assert need.ram_total + need.file_total == low and need.streams is None
    fake_available(monkeypatch, 1)
    with pytest.raises(InputError, match=r"needs .* \(does not fit either\)"):
        memory.check(cfg, "ck", disk_dtype="bfloat16")


def test_gpu_memory_checked_for_torch_on_cuda(monkeypatch):
    cfg = config_from_dict(tiny_config())
    fake_available(monkeypatch, 10**15)
    monkeypatch.setattr(machine, "gpu_free", lambda device: 1000)
    with pytest.raises(InputError, match=r"not enough GPU memory on cuda:1 .* 0\.0 GB free"):
        memory.check(cfg, "ck", backend="torch", dtype="float32", device="cuda:1")
    monkeypatch.setattr(machine, "available_memory", lambda: None)  # unknown RAM: no RAM check
    monkeypatch.setattr(machine, "gpu_free", lambda device: None)
    assert memory.check(cfg, "ck", backend="torch", device="cuda").gpu_total > 0


def _never_read(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("weights were read before the memory check refused")
    monkeypatch.setattr(numpy_backend, "load_weights", boom)  # what NumpyBackend reads with


def test_load_refuses_before_reading_weights_and_force_loads(monkeypatch, demo):
    fake_available(monkeypatch, 1000)
    _never_read(monkeypatch)
    with pytest.raises(InputError, match="not enough memory"):
        npgemma.load(demo[0])
    monkeypatch.undo()
    fake_available(monkeypatch, 1000)
    pipe = npgemma.load(demo[0], force=True)
    assert pipe.generate(demo[1], "caption en", max_new_tokens=2).token_ids


def test_cli_refuses_in_one_line_and_force_runs(monkeypatch, demo, capsys):
    fake_available(monkeypatch, 1000)
    args = ["generate", "--model", str(demo[0]), "--image", str(demo[1]), "--prompt", "caption en",
            "--max-new-tokens", "2", "--json"]
    _never_read(monkeypatch)
    assert cli.main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"npgemma: error: {demo[0]}: not enough memory for the numpy backend")
    monkeypatch.setattr(numpy_backend, "load_weights", weights.load_weights)
    assert cli.main(args + ["--force"]) == 0


def test_cli_budget_counts_the_prompt_and_new_tokens(monkeypatch, demo, capsys):
    seen = []
    real = memory.check
    monkeypatch.setattr(memory, "check", lambda *a, **k: seen.append(k) or real(*a, **k))
    prompt = "caption en"
    cli.main(["generate", "--model", str(demo[0]), "--image", str(demo[1]), "--prompt", prompt,
              "--max-new-tokens", "7", "--json"])
    capsys.readouterr()
    ids = npgemma.load(demo[0]).processor(demo[1], prompt).input_ids
    text_ids = int(math.fsum(1 for i in ids if i != load_config(demo[0]).image_token_index))
    assert seen[0]["text_tokens"] >= text_ids + 7  # an upper bound on what the run holds
    assert seen[0]["text_tokens"] == len(prompt) + 2 + 7


def test_parity_cli_refuses_too(monkeypatch, demo, capsys):
    pytest.importorskip("torch")
    fake_available(monkeypatch, 1000)
    rc = cli.main(["parity", "--model", str(demo[0]), "--image", str(demo[1]),
                   "--prompt", "caption en"])
    err = capsys.readouterr().err
    assert rc == 2 and "not enough memory for npgemma parity" in err


def test_parity_needs_both_runs_and_a_narrow_copy_of_the_weights():
    cfg = config_from_dict(tiny_config())
    ref = estimate.estimate(cfg, "numpy", "float32", disk_dtype="float32")
    shared = estimate.parity_estimate(cfg, "float32", "cpu", "float32", estimate.TEXT_TOKENS)
    narrow = estimate.parity_estimate(cfg, "bfloat16", "cpu", "float32", estimate.TEXT_TOKENS)
    assert shared.ram_total > ref.ram_total and "torch weights" not in shared.ram
    assert narrow.ram["torch weights"] == estimate.num_params(cfg) * 2
    assert narrow.ram["torch run"] > 0


def test_parity_reference_maps_a_narrow_checkpoint_when_float32_cannot_fit(monkeypatch):
    """parity's reference holds float32 weights when they fit; else a bfloat16 checkpoint is
    memory-mapped (file pages), and torch in bfloat16 on the CPU shares those pages."""
    monkeypatch.setattr(estimate, "_WIDENING_BYTES", 0)  # sized for real models: above tiny weights
    cfg = config_from_dict(tiny_config(text="gemma2"))
    tokens = estimate.TEXT_TOKENS
    whole = estimate.parity_estimate(cfg, "bfloat16", "cpu", "bfloat16", tokens)
    mapped = estimate.parity_estimate(cfg, "bfloat16", "cpu", "bfloat16", tokens, reference="bfloat16")
    assert whole.ram["weights"] == estimate.num_params(cfg) * 4 and not whole.file
    assert mapped.file["weights"] == estimate.num_params(cfg) * 2
    assert "weights" not in mapped.ram and "torch weights" not in mapped.ram  # shared pages
    assert mapped.ram["torch run"] > 0 and mapped.ram_total < whole.ram_total
    copy = estimate.parity_estimate(cfg, "float32", "cpu", "bfloat16", tokens, reference="bfloat16")
    assert copy.ram["torch weights"] == estimate.num_params(cfg) * 4  # torch float32: its own copy
    gpu = estimate.parity_estimate(cfg, "bfloat16", "cuda", "bfloat16", tokens, reference="bfloat16")
    assert gpu.file == mapped.file and gpu.gpu["weights"] == estimate.num_params(cfg) * 2

    choose = lambda dtype="bfloat16", disk="bfloat16": memory.parity_reference(  # noqa: E731
        cfg, dtype, "cpu", disk, tokens)
    fake_available(monkeypatch, whole.ram_total)
    assert choose() == "float32"  # it fits: the float32 reference, as always
    fake_available(monkeypatch, whole.ram_total - 1)
    assert choose() == "bfloat16" and choose(disk="float16") == "float16"
    assert choose(disk="float32") == "float32"  # nothing narrower to map: refused by the check
    monkeypatch.setattr(machine, "available_memory", lambda: None)
    assert choose() == "float32"


def test_parity_cli_maps_the_reference_and_passes(monkeypatch, tmp_path, capsys):
    """On too little memory for float32 weights, `npgemma parity` on a bfloat16 checkpoint runs
    its reference memory-mapped, says so, and still passes against torch in bfloat16."""
    pytest.importorskip("torch")
    from PIL import Image

    monkeypatch.setattr(estimate, "_WIDENING_BYTES", 0)
    from npgemma.synthetic.random_model import example_image

    folder = write_checkpoint(tmp_path / "ck", tiny_config(text="gemma2", sliding_window=4),
                              dtype="bfloat16", seed=3, decisive=True)
    Image.fromarray(example_image()).save(tmp_path / "img.png")
    cfg = load_config(folder)
    tokens = estimate.text_tokens("caption en", 4)
    whole = estimate.parity_estimate(cfg, "bfloat16", "cpu", "bfloat16", tokens)
    fake_available(monkeypatch, whole.ram_total - 1)
    rc = cli.main(["parity", "--model", str(folder), "--image", str(tmp_path / "img.png"),
                   "--prompt", "caption en", "--dtype", "bfloat16", "--max-new-tokens", "4"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "vs numpy float32 (weights memory-mapped in bfloat16, widened as used)" in out
    assert "greedy tokens (4): agree" in out


# --- streaming: a memory-mapped checkpoint larger than the memory available -------------------

def test_a_checkpoint_larger_than_memory_streams_with_a_time_estimate(monkeypatch):
    """The low-memory mode's weights are file pages: when they do not fit but the anonymous
    memory does, the check predicts instead of refusing — bytes per token (the decoder and the
    tied output table, in the file's dtype) over the measured read speed."""
    cfg = config_from_dict(tiny_config(text="gemma2"))
    need = estimate.estimate(cfg, "numpy", "bfloat16", disk_dtype="bfloat16")
    fake_available(monkeypatch, need.ram_total + need.file_total // 2)
    seen = []
    speed = lambda files: seen.append(files) or 1e6  # noqa: E731
    got = memory.check(cfg, "ck", dtype="bfloat16", files=["a.safetensors"], read_speed=speed)
    text = sum(math.prod(s) for k, s in expected_shapes(cfg).items()
               if not k.startswith(("vision_tower", "multi_modal_projector")))
    assert got.streams.bytes_per_token == text * 2 < got.file_total
    assert got.streams.seconds_per_token == pytest.approx(text * 2 / 1e6)
    assert seen == [["a.safetensors"]]
    assert str(got.streams).startswith(f"streams {text * 2 / 1e9:.1f} GB from disk per token")
    fake_available(monkeypatch, need.ram_total + need.file_total)  # it fits: no streaming
    assert memory.check(cfg, "ck", dtype="bfloat16", read_speed=speed).streams is None
    fake_available(monkeypatch, need.ram_total - 1)  # the anonymous part cannot fit: refused
    with pytest.raises(InputError, match=r"not enough memory for the numpy backend in bfloat16: "
                                         rf"needs {need.ram_total / 1e9:.1f} GB of RAM \(runtime"):
        memory.check(cfg, "ck", dtype="bfloat16", read_speed=speed)


@pytest.mark.parametrize("layers, inter", [(12, 1024), (12, 64)], ids=["layer-largest", "table-largest"])
def test_a_streamed_run_keeps_what_fits_of_the_decoder_cached(monkeypatch, layers, inter):
    """Beyond its anonymous part, the memory a streamed run has holds the vision tower (never
    dropped), 2 + READ_AHEAD blocks in flight (as many layers, or one fewer and the output table
    where that is larger, as in every real PaliGemma) and then as many decoder layers as fit, from the
    first: those stay cached and are not read again per token."""
    cfg = config_from_dict(tiny_config(text="gemma2", num_hidden_layers=layers,
                                       intermediate_size=inter))
    monkeypatch.setattr(estimate, "_CACHE_SLACK", 0)
    shapes = expected_shapes(cfg)
    layer = 2 * sum(math.prod(s) for k, s in shapes.items() if k.startswith("language_model.layers.3."))
    table = 2 * math.prod(shapes["language_model.embed_tokens.weight"])
    vision = 2 * sum(math.prod(s) for k, s in shapes.items()
                     if k.startswith(("vision_tower", "multi_modal_projector")))
    in_flight = (1 + prefetch.READ_AHEAD) * layer + max(layer, table)
    need = estimate.estimate(cfg, "numpy", "bfloat16", disk_dtype="bfloat16")
    spare = vision + in_flight + 2 * layer + layer // 2
    assert spare < need.file_total  # so it streams
    fake_available(monkeypatch, need.ram_total + spare)
    got = memory.check(cfg, "ck", dtype="bfloat16", files=["a"], read_speed=lambda files: 1e6)
    text = 2 * estimate.per_token_params(cfg)
    assert (got.streams.resident_layers, got.streams.resident_bytes) == (2, 2 * layer)
    assert got.streams.bytes_per_token == text - 2 * layer
    assert got.streams.seconds_per_token == pytest.approx((text - 2 * layer) / 1e6)
    assert str(got.streams).startswith(f"keeps 2 decoder layers ({2 * layer / 1e9:.1f} GB) cached, streams")
    fake_available(monkeypatch, need.ram_total + vision + in_flight - 1)  # not even those
    assert memory.check(cfg, "ck", dtype="bfloat16").streams.resident_layers == 0
    assert estimate.resident_layers(cfg, 2, 10**15) == layers  # never more than the model has


def test_load_streams_without_force_and_returns_the_verdict(monkeypatch, demo, capsys):
    """A checkpoint whose file pages exceed the memory available loads without --force; the
    loader prints nothing and returns the verdict (`pipe.streaming`: what it reads per token,
    how fast), with which the backend was built to drop used pages. The CLI says it."""
    cfg = load_config(demo[0])
    need = estimate.estimate(cfg, "numpy", "bfloat16", disk_dtype="float32")
    fake_available(monkeypatch, need.ram_total + 1)
    pipe = npgemma.load(demo[0], dtype="bfloat16")
    assert capsys.readouterr() == ("", "")
    verdict = pipe.streaming
    assert isinstance(verdict, memory.Streaming) and verdict.available.bytes == need.ram_total + 1
    assert verdict.bytes_per_token > 0 and verdict.read_bytes_per_s > 0
    assert pipe.memory.streams is verdict and pipe.memory.file_total == need.file_total
    assert pipe.backend.stream and pipe.backend.streamer.drop
    assert pipe.backend.keep == verdict.resident_layers == 0
    assert pipe.backend.streamer.kept == set()  # the demo's layers: no room beside the blocks in flight
    assert pipe.generate(demo[1], "caption en", max_new_tokens=2).token_ids
    few = estimate.estimate(cfg, "numpy", "bfloat16", disk_dtype="float32",
                            text_tokens=estimate.text_tokens("caption en", 1))
    fake_available(monkeypatch, few.ram_total + 1)  # the CLI counts the prompt's own tokens
    rc = cli.main(["generate", "--model", str(demo[0]), "--image", str(demo[1]), "--prompt",
                   "caption en", "--dtype", "bfloat16", "--max-new-tokens", "1", "--json"])
    err = capsys.readouterr().err
    assert rc == 0 and err.startswith(f"npgemma: {demo[0].name}: ") and err.count("\n") == 1
    assert "of memory available: streams" in err and "s per token at the measured read speed" in err


def test_load_that_fits_does_not_stream(demo):
    """Within memory the verdict is None and the backend keeps its pages; `force` skips the
    check (no estimate at all)."""
    pipe = npgemma.load(demo[0], dtype="bfloat16")
    assert pipe.streaming is None and not pipe.backend.stream
    assert pipe.memory.ram_total > 0
    assert npgemma.load(demo[0], force=True).memory is None


# --- the check's own cost: bounded by the files on disk, not by config.json's numbers ---------

def _shape_sum(cfg, *prefixes) -> int:
    """Parameters under `prefixes`, summed over the listed tensors (the slow, obvious way)."""
    return sum(math.prod(s) for k, s in expected_shapes(cfg).items() if k.startswith(prefixes))


@pytest.mark.parametrize("text", ["gemma", "gemma2"])
@pytest.mark.parametrize("tied", [True, False])
def test_counts_by_formula_equal_the_tensor_list(text, tied):
    raw = tiny_config(text=text, num_key_value_heads=2)
    raw["tie_word_embeddings"] = tied
    cfg = config_from_dict(raw)
    assert estimate.num_params(cfg) == _shape_sum(cfg, "")
    assert estimate.per_token_params(cfg) == _shape_sum(cfg, "language_model.", "lm_head.")
    assert estimate.decoder_layer_params(cfg) == _shape_sum(cfg, "language_model.layers.0.")
    assert estimate._largest_tensor(cfg) == max(math.prod(s) for s in expected_shapes(cfg).values())


def _rss_growth(fn) -> int:
    """Bytes the process's peak RSS grew by while `fn` ran (what building 10**9 key names
    would show: GBs)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024  # kB on Linux


def _refused(fn, error, match) -> None:
    with pytest.raises(error, match=match):
        fn()


def test_a_billion_layers_are_counted_by_formula():
    """The estimate of a 10**9-layer config is the same affine function of the layer count as
    the tensor list of 1 and 2 layers gives, computed without building any per-layer name."""
    def with_layers(n):
        raw = tiny_config(text="gemma")
        raw["text_config"]["num_hidden_layers"] = n
        return config_from_dict(raw)
    one, two = (_shape_sum(with_layers(n), "") for n in (1, 2))
    huge = with_layers(10**9)
    got = {}
    grew = _rss_growth(lambda: got.update(n=estimate.num_params(huge),
                                          need=estimate.estimate(huge)))
    assert got["n"] == one + (two - one) * (10**9 - 1)
    assert got["need"].ram["weights"] == got["n"] * 4
    grew += _rss_growth(lambda: _refused(lambda: memory.check(huge, "ck"), InputError,
                                         "not enough memory"))
    assert grew < 50 * 2**20


@pytest.mark.parametrize("text", ["gemma", "gemma2"])
def test_a_config_claiming_a_billion_layers_is_refused_against_the_files(tmp_path, demo, text):
    """config.json says 10**9 decoder layers, the weights hold 2: refused from the files' names
    before any per-layer work (the memory check used to build every layer's key names and
    grow past 2 GB; Gemma-2's default layer_types would be a 10**9-entry list)."""
    import json

    from npgemma.errors import ConfigError, WeightsError

    raw = tiny_config(text=text)
    raw["text_config"].pop("layer_types", None)
    folder = write_checkpoint(tmp_path / "ck", raw)
    layers = raw["text_config"]["num_hidden_layers"]
    raw["text_config"]["num_hidden_layers"] = 10**9
    (folder / "config.json").write_text(json.dumps(raw))
    message = (f"text_config.num_hidden_layers is 1000000000 in config.json, the weights hold "
               f"{layers} decoder layers")
    for attempt in (lambda: load_config(folder), lambda: npgemma.load(folder),
                    lambda: npgemma.load(folder, force=True)):
        assert _rss_growth(lambda: _refused(attempt, ConfigError, message)) < 50 * 2**20
    if text == "gemma":  # a config made without the folder: the weight loader says it first
        cfg = config_from_dict(raw)
        with pytest.raises(WeightsError, match=f"layer count: {message}"):
            weights.load_weights(folder, cfg)


# --- the runtime allowance: measured, so a small model runs in a small memory group ----------

_RUN_AND_MEASURE = r"""
import json, sys
import numpy as np
def rss(field="VmRSS:"):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
import npgemma
from npgemma import pipeline
seen = {}
real = pipeline.memory.check
def spy(*args, **kwargs):
    seen["rss"] = rss()
    need = real(*args, **kwargs)
    seen["ram"], seen["file"] = need.ram_total, need.file_total
    return need
pipeline.memory.check = spy
pipe = npgemma.load(None, backend=sys.argv[1], dtype=sys.argv[2])
image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
pipe.generate(image, "caption en", max_new_tokens=8)
seen["peak"] = rss("VmHWM:")  # not getrusage: its maxrss keeps the parent's across fork+exec
print(json.dumps(seen))
"""


@pytest.mark.parametrize("backend, dtype", [("numpy", "float32"), ("numpy", "bfloat16"),
                                            ("torch", "float32")])
def test_runtime_allowance_covers_a_real_run(backend, dtype):
    """A fresh process runs the bundled demo model: what its RSS grew by from the memory check
    to its peak is within what the check said the run needs (anonymous memory plus the mapped
    file pages, which RSS counts too), so a refusal comes before an OOM kill; and the need is
    small: the fixed 1 GiB allowance refused this 4.5 M-parameter model in a 300 MB group."""
    import json
    import subprocess
    import sys

    if backend == "torch":
        pytest.importorskip("torch")
    done = subprocess.run([sys.executable, "-c", _RUN_AND_MEASURE, backend, dtype], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.splitlines()[-1])
    grew = got["peak"] - got["rss"]
    assert 0 < grew <= got["ram"] + got["file"], got
    if backend == "numpy":  # torch's import alone is 180 MB of RSS
        assert got["rss"] + got["ram"] + got["file"] < 300 * 2**20, got  # fits a 300 MB group


def test_the_demo_model_is_not_refused_in_a_300_mb_group(monkeypatch):
    """The cgroup as `machine.available_memory` reads it: 300 MB, of which the process already
    holds what it holds now (its RSS counts in the group's usage)."""
    from npgemma.checkpoint import bundled

    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    cfg = load_config(bundled.model_dir())
    left = 300 * 2**20 - min(rss(), 120 * 2**20)  # a fresh `npgemma` process holds ~55 MB
    for dtype in ("float32", "bfloat16"):
        memory.check(cfg, "demo", dtype=dtype, disk_dtype="float32",
                     available=machine.Available(left, "cgroup (fake)"))
