"""The `npgemma` command line: happy paths (numpy, torch, sampling, parity, --json) and, for every
bad input a user can give, a non-zero exit with one `npgemma: error:` line naming the culprit
and no traceback. Most cases call `npgemma.cli.main` in-process; a few run the real
`python -m npgemma` to pin exit codes and stderr end to end."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import npgemma
from npgemma import cli
from npgemma.synthetic.checkpoint import tiny_config, write_checkpoint
from npgemma.synthetic.random_model import write_demo

REPO = Path(npgemma.__file__).resolve().parents[1]
PROMPT = "caption en"
SAMPLING = ["--do-sample", "--temperature", "0.7", "--top-k", "20", "--top-p", "0.9"]
SAMPLING_SEED = 3  # a seed whose draw differs from the greedy tokens on the demo image


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint folder, example.png), as `python -m npgemma.synthetic.random_model` writes them."""
    return write_demo(tmp_path_factory.mktemp("cli") / "demo")


@pytest.fixture(scope="module")
def pipe(demo):
    return npgemma.load(demo[0])


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def generate_args(model, image, *extra, prompt=PROMPT):
    return ["generate", "--model", model, "--image", image, "--prompt", prompt, *extra]


def assert_clean_error(rc: int, out: str, err: str, culprit: str, detail_lines: bool = False):
    """Non-zero exit, nothing on stdout, one `npgemma: error:` line naming the culprit.
    detail_lines: the checkpoint report may follow its headline with indented problem lines."""
    assert rc != 0
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines and lines[0].startswith("npgemma: error: "), err
    if detail_lines:
        assert all(line.startswith("  ") for line in lines[1:]), err
    else:
        assert len(lines) == 1, err
    assert culprit in err, f"{culprit!r} not named in: {err}"


# ---- happy paths -----------------------------------------------------------------------------

def test_generate_streams_text(capsys, demo, pipe):
    model, image = demo
    rc, out, err = run_cli(capsys, *generate_args(model, image, "--max-new-tokens", "5"))
    assert rc == 0 and err == ""
    assert out == pipe.generate(str(image), PROMPT, max_new_tokens=5).text + "\n"


def _json(capsys, *argv) -> dict:
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 1, out  # exactly one JSON object
    return json.loads(lines[0])


def test_generate_json_matches_api(capsys, demo, pipe):
    model, image = demo
    got = _json(capsys, *generate_args(model, image, "--max-new-tokens", "5", "--json"))
    assert isinstance(got["text"], str)
    ids = got["token_ids"]
    assert isinstance(ids, list) and all(type(t) is int for t in ids) and len(ids) <= 5
    want = pipe.generate(str(image), PROMPT, max_new_tokens=5)
    assert ids == want.token_ids and got["text"] == want.text


def test_generate_torch_backend_matches_numpy(capsys, demo):
    pytest.importorskip("torch")
    args = generate_args(*demo, "--max-new-tokens", "5", "--json")
    numpy_ids = _json(capsys, *args)["token_ids"]
    got = _json(capsys, *args, "--backend", "torch")
    assert got["backend"] == "torch" and got["token_ids"] == numpy_ids


def test_sampling_is_seeded(capsys, demo):
    args = generate_args(*demo, "--max-new-tokens", "5", "--json")
    greedy = _json(capsys, *args)["token_ids"]
    sampled = [_json(capsys, *args, *SAMPLING, "--seed", SAMPLING_SEED)["token_ids"]
               for _ in range(2)]
    assert sampled[0] == sampled[1]
    assert sampled[0] != greedy
    other_seed = _json(capsys, *args, *SAMPLING, "--seed", SAMPLING_SEED + 1)["token_ids"]
    assert other_seed != sampled[0]


def test_max_new_tokens_zero_prints_empty_line(capsys, demo):
    rc, out, err = run_cli(capsys, *generate_args(*demo, "--max-new-tokens", "0"))
    assert (rc, out, err) == (0, "\n", "")


def _stage_names(cfg) -> list[str]:
    return (["vision embeddings"]
            + [f"vision layer {i}" for i in range(cfg.vision_config.num_hidden_layers)]
            + ["projector", "decoder input (merged)"]
            + [f"decoder layer {i}" for i in range(cfg.text_config.num_hidden_layers)]
            + ["final norm", "logits"])


def test_parity_table(capsys, demo, pipe):
    pytest.importorskip("torch")
    model, image = demo
    rc, out, err = run_cli(capsys, "parity", "--model", model, "--image", image, "--prompt", PROMPT)
    assert rc == 0 and err == ""
    rows = {line[:26].strip(): line.split() for line in out.splitlines()}
    for stage in _stage_names(pipe.cfg):
        assert stage in rows, out
        assert rows[stage][-1] == "yes", out
    assert "agree" in out.splitlines()[-1]


def test_parity_json(capsys, demo, pipe):
    pytest.importorskip("torch")
    model, image = demo
    got = _json(capsys, "parity", "--model", model, "--image", image, "--prompt", PROMPT,
                "--max-new-tokens", "3", "--json")
    assert got["ok"] is True
    assert [s["stage"] for s in got["stages"]] == _stage_names(pipe.cfg)
    assert all(s["max_abs"] <= s["limit"] for s in got["stages"])
    tokens = got["greedy_tokens"]
    assert tokens["agree"] and tokens["numpy"] == tokens["torch"] and len(tokens["numpy"]) == 3


# ---- bad input -------------------------------------------------------------------------------

def _cut_in_half(d: Path):
    path = d / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _absurd_header(d: Path):
    path = d / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + path.read_bytes()[8:])


def _edit_tensors(fn):
    def edit(d: Path):
        path = d / "model.safetensors"
        tensors = load_file(str(path))
        fn(tensors)
        save_file(tensors, str(path), metadata={"format": "pt"})
    return edit


def _config(d: Path, config) -> None:
    (d / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))


NORM = "language_model.model.norm.weight"  # the final RMSNorm's on-disk ("hub") name
LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 32}

# (id, edit of a copy of the demo checkpoint, the culprit the message must name, detail lines)
BROKEN_CHECKPOINTS = [
    ("no-config", lambda d: (d / "config.json").unlink(), "{dir}/config.json", False),
    ("llama-config", lambda d: _config(d, LLAMA), "'llama'", False),
    ("config-not-json", lambda d: _config(d, "{not json"), "{dir}/config.json", False),
    ("config-not-object", lambda d: _config(d, "[1, 2]"), "{dir}/config.json", False),
    ("truncated-safetensors", _cut_in_half, "{dir}/model.safetensors", False),
    ("garbage-safetensors",
     lambda d: (d / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(4096)),
     "{dir}/model.safetensors", False),
    ("empty-safetensors", lambda d: (d / "model.safetensors").write_bytes(b""),
     "{dir}/model.safetensors", False),
    ("absurd-header-length", _absurd_header, "{dir}/model.safetensors", False),
    ("no-safetensors", lambda d: (d / "model.safetensors").unlink(), "no model.safetensors", False),
    ("missing-tensor", _edit_tensors(lambda t: t.pop(NORM)),
     f"missing: language_model.norm.weight (expected on disk as {NORM})", False),
    ("wrong-shape-tensor",
     _edit_tensors(lambda t: t.update({NORM: np.zeros(7, np.float32)})),
     f"{NORM}: expected (32,), found (7,)", False),
    ("no-tokenizer", lambda d: (d / "tokenizer.json").unlink(), "{dir}/tokenizer.json", False),
    ("empty-tokenizer", lambda d: (d / "tokenizer.json").write_text(""),
     "{dir}/tokenizer.json", False),
    ("garbage-tokenizer", lambda d: (d / "tokenizer.json").write_text('{"model": 7}'),
     "{dir}/tokenizer.json", False),
]


@pytest.fixture
def broken(demo, tmp_path):
    """A copy of the demo checkpoint with `edit` applied."""
    def make(edit) -> Path:
        folder = tmp_path / "broken"
        shutil.copytree(demo[0], folder)
        edit(folder)
        return folder
    return make


@pytest.mark.parametrize("edit, culprit, detail_lines", [c[1:] for c in BROKEN_CHECKPOINTS],
                         ids=[c[0] for c in BROKEN_CHECKPOINTS])
def test_broken_checkpoint(capsys, demo, broken, edit, culprit, detail_lines):
    folder = broken(edit)
    rc, out, err = run_cli(capsys, *generate_args(folder, demo[1], "--max-new-tokens", "2"))
    assert_clean_error(rc, out, err, culprit.format(dir=folder), detail_lines)


def test_missing_model_folder(capsys, demo, tmp_path):
    rc, out, err = run_cli(capsys, *generate_args(tmp_path / "nope", demo[1]))
    assert_clean_error(rc, out, err, f"{tmp_path / 'nope'}: no such checkpoint folder")


def test_image_not_an_image(capsys, demo, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not a picture\n")
    rc, out, err = run_cli(capsys, *generate_args(demo[0], text))
    assert_clean_error(rc, out, err, f"{text}: not an image")


def test_missing_image(capsys, demo, tmp_path):
    rc, out, err = run_cli(capsys, *generate_args(demo[0], tmp_path / "gone.png"))
    assert_clean_error(rc, out, err, f"{tmp_path / 'gone.png'}: no such image file")


@pytest.mark.parametrize("extra, culprit", [
    (["--max-new-tokens", "-3"], "--max-new-tokens"),
    (["--max-new-tokens", "2.5"], "'2.5'"),
    (["--max-new-tokens", "many"], "'many'"),
    (["--backend", "jax"], "'jax'"),
    (["--dtype", "int8"], "'int8'"),
    (["--temperature", "hot"], "--temperature"),
    (["--top-k", "1.5"], "--top-k"),
    (["--frobnicate"], "--frobnicate"),
    ([*SAMPLING, "--top-p", "1.5"], "top_p must be in (0, 1], got 1.5"),
    (["--do-sample", "--top-p", "0"], "top_p must be in (0, 1], got 0.0"),
    (["--do-sample", "--temperature", "0"], "temperature must be a finite number > 0"),
    (["--do-sample", "--temperature", "inf"], "temperature must be a finite number > 0 when sampling, got inf"),
    (["--do-sample", "--top-k", "-2"], "top_k"),
    (["--device", "cuda"], "numpy backend runs on the CPU only"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_bad_generate_option(capsys, demo, extra, culprit):
    rc, out, err = run_cli(capsys, *generate_args(*demo, *extra))
    assert_clean_error(rc, out, err, culprit)


def test_cuda_on_a_cpu_only_machine(capsys, demo):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    generate = generate_args(*demo, "--backend", "torch", "--device", "cuda")
    parity = ["parity", "--model", demo[0], "--image", demo[1], "--prompt", PROMPT,
              "--device", "cuda"]
    for command in (generate, parity):
        rc, out, err = run_cli(capsys, *command)
        assert_clean_error(rc, out, err, "CUDA")
        assert "'cuda'" in err


@pytest.fixture(scope="module")
def short_model(tmp_path_factory) -> Path:
    """A model with 16 positions: 4 image tokens + <bos> + prompt + "\\n" + new tokens."""
    return write_checkpoint(tmp_path_factory.mktemp("short") / "tiny",
                            tiny_config(max_position_embeddings=16), layout="hub")


def test_prompt_longer_than_positions(capsys, demo, short_model):
    long_prompt = "caption en " * 8
    rc, out, err = run_cli(capsys, *generate_args(short_model, demo[1], "--max-new-tokens", "1",
                                                  prompt=long_prompt))
    assert_clean_error(rc, out, err, "max_position_embeddings 16")
    # A short prompt that fits, asking for more new tokens than the positions left.
    rc, out, err = run_cli(capsys, *generate_args(short_model, demo[1], "--max-new-tokens", "20"))
    assert_clean_error(rc, out, err, "max_new_tokens 20")
    rc, out, err = run_cli(capsys, *generate_args(short_model, demo[1], "--max-new-tokens", "2"))
    assert rc == 0 and err == ""


@pytest.mark.parametrize("argv, culprit", [
    (["generate"], "--image"),  # --model defaults to the bundled demo model
    (["translate"], "'translate'"),
])
def test_bad_command_line(capsys, argv, culprit):
    rc, out, err = run_cli(capsys, *argv)
    assert_clean_error(rc, out, err, culprit)


def test_internal_error_is_one_line_unless_debugging(capsys, demo, monkeypatch):
    def boom(*a, **kw):
        raise RuntimeError("kaboom")
    monkeypatch.setattr("npgemma.cli.generate.load", boom)
    monkeypatch.delenv("NPGEMMA_DEBUG", raising=False)
    rc, out, err = run_cli(capsys, *generate_args(*demo))
    assert rc == 1 and out == "" and "Traceback" not in err
    assert err.splitlines() == ["npgemma: internal error: RuntimeError: kaboom "
                                "(NPGEMMA_DEBUG=1 for a traceback)"]
    monkeypatch.setenv("NPGEMMA_DEBUG", "1")
    with pytest.raises(RuntimeError, match="kaboom"):
        cli.main([str(a) for a in generate_args(*demo)])


def test_negative_seed(capsys, demo):
    # np.random.default_rng(-1) would raise a bare ValueError deep in generation; the seed is
    # checked up front and the message names it.
    rc, out, err = run_cli(capsys, *generate_args(*demo, *SAMPLING, "--seed", "-1"))
    assert_clean_error(rc, out, err, "seed")


@pytest.mark.parametrize("edit, culprit", [
    (lambda c: c | {"text_config": [1, 2]}, "text_config"),
    (lambda c: c | {"vision_config": "siglip"}, "vision_config"),
    (lambda c: c | {"text_config": c["text_config"] | {"num_hidden_layers": "2"}},
     "num_hidden_layers"),
    (lambda c: c | {"text_config": c["text_config"] | {"num_key_value_heads": 0}},
     "num_key_value_heads"),
    (lambda c: c | {"vision_config": c["vision_config"] | {"patch_size": 0}}, "patch_size"),
], ids=["text_config-list", "vision_config-str", "layers-str", "kv-heads-0", "patch-size-0"])
def test_config_with_wrong_types(capsys, demo, broken, edit, culprit):
    # Unchecked, each of these would crash later (AttributeError, TypeError, ZeroDivisionError)
    # instead of naming the bad key.
    folder = broken(lambda d: _config(d, edit(tiny_config())))
    rc, out, err = run_cli(capsys, *generate_args(folder, demo[1]))
    assert_clean_error(rc, out, err, culprit)


# ---- real processes: exit codes and stderr end to end -----------------------------------------

def _run(*argv, cwd=REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    env.pop("NPGEMMA_DEBUG", None)
    return subprocess.run([sys.executable, *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_process_generate_json(demo, pipe):
    done = _run("-m", "npgemma", *generate_args(*demo, "--max-new-tokens", "5", "--json"))
    assert done.returncode == 0 and done.stderr == ""
    got = json.loads(done.stdout)
    assert got["token_ids"] == pipe.generate(str(demo[1]), PROMPT, max_new_tokens=5).token_ids


@pytest.mark.parametrize("case", ["missing-model", "bad-max-new-tokens"])
def test_process_bad_input(demo, tmp_path, case):
    if case == "missing-model":
        argv, culprit = generate_args(tmp_path / "nope", demo[1]), str(tmp_path / "nope")
    else:
        argv, culprit = generate_args(*demo, "--max-new-tokens", "-1"), "--max-new-tokens"
    done = _run("-m", "npgemma", *argv)
    assert done.returncode == 2
    assert_clean_error(done.returncode, done.stdout, done.stderr, culprit)


def test_demo_quick_start(tmp_path):
    """The README's quick start: write the demo, then run the command it prints."""
    done = _run("-m", "npgemma.synthetic.random_model", tmp_path / "demo")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "demo" / "example.png").is_file()
    command = next(line.strip() for line in done.stdout.splitlines()
                   if line.strip().startswith("npgemma generate"))
    argv = shlex.split(command)
    assert argv[:2] == ["npgemma", "generate"]
    assert argv[argv.index("--image") + 1] == str(tmp_path / "demo" / "example.png")
    run = _run("-m", *argv, "--max-new-tokens", "4")  # `npgemma` -> `python -m npgemma`
    assert run.returncode == 0 and run.stderr == ""
    assert run.stdout.endswith("\n")


def test_generate_batch_jsonl_one_line_per_input_in_order(capsys, demo, pipe, tmp_path):
    """--batch FILE.jsonl and repeated --image/--prompt: one batch, one JSON line per input, in
    order, each equal to the input generated alone."""
    model, image = demo
    prompts = ["caption en", "detect cat", "answer en what is this ?"]
    batch = tmp_path / "in.jsonl"
    batch.write_text("".join(json.dumps({"image": str(image), "prompt": p}) + "\n" for p in prompts))
    rc, out, err = run_cli(capsys, "generate", "--model", model, "--batch", batch,
                           "--max-new-tokens", "5")
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["prompt"] for r in rows] == prompts
    for r, p in zip(rows, prompts):
        assert r["token_ids"] == pipe.generate(image, p, max_new_tokens=5).token_ids
    rc, out2, _ = run_cli(capsys, "generate", "--model", model, *sum(
        (["--image", image, "--prompt", p] for p in prompts), []), "--max-new-tokens", "5")
    assert rc == 0 and out2 == out


@pytest.mark.parametrize("content, culprit", [
    ('{"image": "x.png"}\n', "in.jsonl:1"),
    ("not json\n", "in.jsonl:1"),
    ("\n", "no inputs"),
])
def test_generate_batch_bad_file(capsys, demo, tmp_path, content, culprit):
    batch = tmp_path / "in.jsonl"
    batch.write_text(content)
    rc, out, err = run_cli(capsys, "generate", "--model", demo[0], "--batch", batch)
    assert_clean_error(rc, out, err, culprit)


def test_generate_prompt_count_must_match_images(capsys, demo):
    model, image = demo
    rc, out, err = run_cli(capsys, "generate", "--model", model, "--image", image,
                           "--image", image, "--prompt", PROMPT)
    assert_clean_error(rc, out, err, "one --prompt per --image")


# ---- from no weights to --model DIR -----------------------------------------------------------

def test_tiny_checkpoint_route(capsys, tmp_path):
    """`npgemma tiny-checkpoint DIR` writes a checkpoint in the Hugging Face layout and prints
    the three commands to try on it; each of them runs on it (generate, parity, conform)."""
    folder = tmp_path / "tiny"
    rc, out, err = run_cli(capsys, "tiny-checkpoint", folder, "--gemma", "2", "--seed", "1")
    assert rc == 0 and err == ""
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json",
            "example.png"} <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert (config["model_type"], config["text_config"]["model_type"]) == ("paligemma", "gemma2")
    keys = set(load_file(folder / "model.safetensors"))  # the Hub's PaliGemma key names
    assert {"language_model.model.embed_tokens.weight", "multi_modal_projector.linear.weight",
            "vision_tower.vision_model.embeddings.patch_embedding.weight"} <= keys
    commands = [shlex.split(line) for line in out.splitlines() if line.startswith("  npgemma ")]
    assert [c[1] for c in commands] == ["generate", "parity", "conform"]
    assert all(c[c.index("--model") + 1] == str(folder) for c in commands)
    for argv in commands:
        if argv[1] != "generate":
            pytest.importorskip("torch")
        rc, out, err = run_cli(capsys, *argv[1:], "--max-new-tokens", "2")
        assert rc == 0 and "error" not in err, err
    assert "model:tiny " in out and "all 1 cases pass" in out  # conform's table, one case

    rc, out, err = run_cli(capsys, "tiny-checkpoint", folder)  # never over a folder with files
    assert_clean_error(rc, out, err, f"{folder} is a folder that is not empty")
    again = tmp_path / "again"
    assert run_cli(capsys, "tiny-checkpoint", again, "--gemma", "2", "--seed", "1")[0] == 0
    assert (again / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert run_cli(capsys, "tiny-checkpoint", tmp_path / "other", "--gemma", "2")[0] == 0
    other = load_file(tmp_path / "other" / "model.safetensors")
    assert not np.array_equal(other["multi_modal_projector.linear.weight"],
                              load_file(folder / "model.safetensors")["multi_modal_projector.linear.weight"])
# ---- text that is not UTF-8: one line naming the argument or the file, and the byte offset -----

def test_prompt_argument_with_invalid_utf8_bytes(demo):
    """A real process, argv given as bytes: Python hands the 0xff to npgemma as U+DCFF
    (surrogateescape), which used to end in `internal error: UnicodeEncodeError`."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("NPGEMMA_DEBUG", None)
    argv = [sys.executable, "-m", "npgemma", *map(str, generate_args(*demo, prompt="x"))]
    argv[-1] = b"caption \xff en"
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, timeout=120)
    assert_clean_error(done.returncode, done.stdout.decode(), done.stderr.decode(),
                       "--prompt: not valid UTF-8: byte 0xff at byte offset 8")


def test_batch_line_with_a_lone_surrogate_escape(capsys, demo, tmp_path):
    batch = tmp_path / "in.jsonl"
    good = json.dumps({"image": str(demo[1]), "prompt": PROMPT})
    bad = '{"prompt": "caption \\ud83d\\ude00 \\\\ud800 en \\udc00", "image": "%s"}' % demo[1]
    batch.write_text(good + "\n" + bad + "\n")
    assert bad.index("\\udc00") == 44  # the lone low half; the pair and "\\\\ud800" are fine
    rc, out, err = run_cli(capsys, "generate", "--model", demo[0], "--batch", batch)
    assert_clean_error(rc, out, err, f"{batch}:2: prompt: a lone surrogate escape \\udc00 at "
                                     "byte offset 44 of the line")


def test_batch_file_that_is_not_utf8(capsys, demo, tmp_path):
    batch = tmp_path / "in.jsonl"
    good = json.dumps({"image": str(demo[1]), "prompt": PROMPT}).encode()
    batch.write_bytes(good + b"\n" + b'{"image": "a.png", "prompt": "caf\xe9"}\n')
    rc, out, err = run_cli(capsys, "generate", "--model", demo[0], "--batch", batch)
    offset = len(good) + 1 + len(b'{"image": "a.png", "prompt": "caf')
    assert_clean_error(rc, out, err, f"--batch {batch}: not UTF-8: byte 0xe9 at byte offset "
                                     f"{offset} (line 2)")


def test_api_prompt_that_utf8_cannot_encode(pipe, demo):
    from npgemma.errors import InputError

    with pytest.raises(InputError, match=r"^prompt: not valid UTF-8: byte 0xff at byte offset 4$"):
        pipe.generate(demo[1], "ab\u00e9\udcffc", max_new_tokens=1)  # 'é' is two bytes
    with pytest.raises(InputError, match=r"^prompt: not valid UTF-8: a lone surrogate U\+D800 at "
                                         r"byte offset 1 "):
        pipe.generate(demo[1], "a\ud800", max_new_tokens=1)
