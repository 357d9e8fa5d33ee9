"""Model ids resolved in a Hugging Face cache built in the real layout (blobs, refs/main,
snapshots/<commit>/ of symlinks), offline; `npgemma models` over that cache."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import npgemma
from npgemma import cli
from npgemma.checkpoint import hub
from npgemma.errors import InputError
from npgemma.synthetic.checkpoint import tiny_config, write_checkpoint
from npgemma.synthetic.hub_cache import cache_snapshot, repo_folder
from npgemma.synthetic.random_model import write_demo

huggingface_hub = pytest.importorskip("huggingface_hub")
import huggingface_hub.constants  # noqa: E402  (a lazy submodule: load it to patch it)

REPO = Path(npgemma.__file__).resolve().parents[1]
OTHER_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo(tmp_path_factory.mktemp("hub") / "demo")


@pytest.fixture(scope="module")
def cache(tmp_path_factory, demo):
    """org/tiny-pali at main (the demo) and at tag v2 (a PaliGemma-2 checkpoint), plus a
    cached model that is not PaliGemma."""
    root = tmp_path_factory.mktemp("hf") / "hub"
    main = cache_snapshot(root, "org/tiny-pali", demo[0])
    pg2 = write_checkpoint(tmp_path_factory.mktemp("pg2") / "ck", tiny_config(text="gemma2"))
    v2 = cache_snapshot(root, "org/tiny-pali", pg2, commit=OTHER_COMMIT, refs=("v2",))
    bert = tmp_path_factory.mktemp("bert")
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    cache_snapshot(root, "org/not-pali", bert)
    return root, main, v2


@pytest.fixture
def hf_cache(cache, monkeypatch):
    """Point huggingface_hub at the fake cache (it reads HF_HUB_CACHE once, at import)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache[0]))
    return cache


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("npgemma opened a network connection")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_cache_fixture_has_the_real_layout(cache):
    root, main, _ = cache
    repo = repo_folder(root, "org/tiny-pali")
    assert repo.name == "models--org--tiny-pali"
    assert (repo / "refs" / "main").read_text() == main.name
    config = main / "config.json"
    assert config.is_symlink() and config.resolve().parent == (repo / "blobs").resolve()


def test_ids_resolve_to_their_snapshot_offline(hf_cache, no_network):
    _, main, v2 = hf_cache
    assert hub.resolve("org/tiny-pali") == main
    assert hub.resolve("org/tiny-pali@main") == main
    assert hub.resolve(f"org/tiny-pali@{main.name}") == main
    assert hub.resolve("org/tiny-pali@v2") == v2


def test_a_folder_is_never_an_id(tmp_path, monkeypatch, demo):
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not hub.is_model_id("org/name")  # the relative folder exists: it wins
    assert hub.resolve("org/name") == Path("org/name")
    assert not hub.is_model_id(str(demo[0])) and not hub.is_model_id("./x/y")
    assert hub.is_model_id("google/paligemma2-3b-pt-224@main")


def test_a_missing_id_names_the_cache_and_what_is_cached(hf_cache, no_network):
    root = str(hf_cache[0])
    with pytest.raises(InputError) as e:
        hub.resolve("google/paligemma2-3b-pt-224")
    msg = str(e.value)
    assert "\n" not in msg and root in msg and "not in the Hugging Face cache" in msg
    assert "org/tiny-pali@main" in msg and "org/tiny-pali@v2" in msg and "not-pali" not in msg
    with pytest.raises(InputError, match=r"revision 'v3' of org/tiny-pali is not in"):
        hub.resolve("org/tiny-pali@v3")


def test_empty_or_absent_cache_lists_none(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "absent"))
    assert hub.cached_paligemma() == []
    with pytest.raises(InputError, match="cached PaliGemma checkpoints: none"):
        hub.resolve("org/anything")


def test_without_huggingface_hub_ids_say_how_to_install(monkeypatch, demo):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(InputError, match=r"pip install 'npgemma\[hub\]'"):
        hub.resolve("org/tiny-pali")
    assert hub.resolve(demo[0]) == demo[0]  # folders need nothing


def test_load_by_id_equals_load_by_folder(hf_cache, demo, no_network):
    by_id = npgemma.load("org/tiny-pali").generate(demo[1], "caption en", max_new_tokens=4)
    by_dir = npgemma.load(demo[0]).generate(demo[1], "caption en", max_new_tokens=4)
    assert by_id.token_ids == by_dir.token_ids and len(by_id.token_ids) > 0


def _npgemma(env_extra: dict, *argv) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env |= env_extra | {"PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "npgemma", *argv], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("where", ["HF_HUB_CACHE", "HF_HOME"])
def test_cli_generate_by_id_from_the_environment(cache, demo, where):
    """End to end: the environment variable names the cache, as a user sets it."""
    root = cache[0]
    env = {"HF_HUB_CACHE": str(root)} if where == "HF_HUB_CACHE" else {"HF_HOME": str(root.parent)}
    args = ["--image", str(demo[1]), "--prompt", "caption en", "--max-new-tokens", "3", "--json"]
    by_id = _npgemma(env, "generate", "--model", "org/tiny-pali", *args)
    assert by_id.returncode == 0, by_id.stderr
    by_dir = npgemma.load(demo[0]).generate(demo[1], "caption en", max_new_tokens=3)
    assert json.loads(by_id.stdout)["token_ids"] == by_dir.token_ids
    if where == "HF_HUB_CACHE":
        wrong = _npgemma(env, "generate", "--model", "org/tiny-palo", *args)
        assert wrong.returncode == 2 and wrong.stdout == ""
        assert wrong.stderr.startswith("npgemma: error: org/tiny-palo: no such folder")
        assert "org/tiny-pali@main" in wrong.stderr and len(wrong.stderr.splitlines()) == 1


def test_models_lists_cached_paligemma_and_folders(hf_cache, demo, capsys, no_network,
                                                  monkeypatch):
    from npgemma.checkpoint import estimate, machine, memory
    from npgemma.checkpoint.config_json import load_config

    _, main, v2 = hf_cache

    class HeadersOnly:  # safetensors' safe_open, with tensor data off limits
        def __init__(self, *a, **k):
            self.f = real_open(*a, **k)

        def __enter__(self):
            self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def keys(self):
            return self.f.keys()

        def get_slice(self, key):
            return self.f.get_slice(key)

        def get_tensor(self, key):
            raise AssertionError("npgemma models read tensor data")

    from npgemma.checkpoint import read as weights_read  # where the headers and tensors are read

    real_open = weights_read.safe_open
    monkeypatch.setattr(weights_read, "safe_open", HeadersOnly)
    assert cli.main(["models", str(demo[0]), "--json"]) == 0
    monkeypatch.setattr(weights_read, "safe_open", real_open)
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["checkpoints"]}
    assert set(rows) == {"org/tiny-pali@main", "org/tiny-pali@v2", str(demo[0])}
    assert rows["org/tiny-pali@main"]["version"] == 1 and rows["org/tiny-pali@v2"]["version"] == 2
    row = rows["org/tiny-pali@main"]
    assert row["path"] == str(main) and row["resolution"] == 28 and row["disk_dtype"] == "float32"
    # bytes: the safetensors files (through the snapshot's symlinks), headers and data
    assert row["disk_bytes"] == (main / "model.safetensors").stat().st_size
    tree = npgemma.load(main).params
    assert row["params"] == sum(a.size for a in npgemma.checkpoint.flatten(tree).values())
    cfg = load_config(main)
    low = estimate.estimate(cfg, "numpy", "bfloat16", "cpu", "float32")  # anonymous + file pages
    assert row["ram"]["numpy bf16"] == low.ram_total + low.file_total


def test_models_table_marks_what_does_not_fit(hf_cache, capsys, monkeypatch):
    from npgemma.checkpoint import estimate, machine, memory

    # 10 MB: below even the tiny model's runtime allowance (measured, estimate.runtime_bytes)
    monkeypatch.setattr(machine, "available_memory", lambda: machine.Available(10**7, "fake"))
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"Hugging Face cache {hf_cache[0]}: 2 PaliGemma checkpoint(s);")
    assert "10.0 MB (fake)" in out[0]
    assert out[2].startswith("org/tiny-pali@main") and out[2].count(" NO") == 4
    # Room for the low-memory mode's anonymous memory but not its file pages: it streams.
    from npgemma.checkpoint.config_json import load_config

    low = estimate.estimate(load_config(hf_cache[1]), "numpy", "bfloat16", "cpu", "float32")
    monkeypatch.setattr(machine, "available_memory",
                        lambda: machine.Available(low.ram_total + low.file_total // 2, "fake"))
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].count(" streams") == 1  # the low-memory column only
    assert any("streams = the low-memory mode's weights exceed it" in line for line in out)


def test_models_bad_folder_is_one_error(tmp_path, capsys, hf_cache):
    assert cli.main(["models", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("npgemma: error: ") and "nope" in err


def test_models_without_huggingface_hub_lists_the_folders(monkeypatch, demo, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    monkeypatch.setitem(sys.modules, "huggingface_hub.constants", None)
    assert cli.main(["models", str(demo[0])]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Hugging Face cache not read (pip install 'npgemma[hub]'): 0 PaliGemma")
    assert out[2].startswith(str(demo[0]))
