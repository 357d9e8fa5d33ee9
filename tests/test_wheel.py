"""The package a user would `pip install`: `python -m build` makes an sdist and, from it, a
wheel; the wheel goes into a fresh virtual environment (not editable, without the torch extra)
and runs from outside the checkout. Slow (a build and an install): `.ci/run` runs it as its
own step, `python -m pytest -q -m slow tests/test_wheel.py`."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import npgemma

REPO = Path(npgemma.__file__).resolve().parents[1]
DEMO_MODEL = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "preprocessor_config.json")

pytestmark = pytest.mark.slow


def _run(cmd, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    pytest.importorskip("build", reason="python -m build needs the `build` package")
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", out, REPO], cwd=out)
    return out


@pytest.fixture(scope="module")
def venv(tmp_path_factory, dist) -> Path:
    """A fresh venv holding the wheel and its runtime dependencies only."""
    root = tmp_path_factory.mktemp("venv") / "v"
    _run([sys.executable, "-m", "venv", root], cwd=root.parent)
    (wheel,) = dist.glob("npgemma-*.whl")
    _run([root / "bin" / "python", "-m", "pip", "install", "--quiet", wheel], cwd=root.parent)
    return root


def _outside_env(venv: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_wheel_and_sdist_carry_every_module_and_the_demo_model(dist):
    (wheel,) = dist.glob("npgemma-*.whl")
    (sdist,) = dist.glob("npgemma-*.tar.gz")
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    prefix = sdist.name[:-len(".tar.gz")] + "/"
    in_sdist = {n[len(prefix):] for n in tarfile.open(sdist).getnames()}
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "npgemma").rglob("*.py")}
    assert modules - in_wheel == set() and modules - in_sdist == set()
    demo = REPO / "npgemma" / "demo"
    data = [f"npgemma/demo/model/{n}" for n in DEMO_MODEL if (REPO / "npgemma/demo/model" / n).exists()]
    data += [p.relative_to(REPO).as_posix() for p in demo.glob("vae/*.npz")]
    assert set(data) - in_wheel == set() and set(data) - in_sdist == set()
    version = next(n for n in in_wheel if n.endswith(".dist-info/METADATA"))
    assert f"npgemma-{npgemma.__version__}.dist-info" in version


def test_installed_wheel_runs_outside_the_checkout(venv, tmp_path):
    env, py = _outside_env(venv), venv / "bin" / "python"
    where = _run([py, "-c", "import npgemma, sys; print(npgemma.__file__); "
                            "print('torch' in sys.modules)"], cwd=tmp_path, env=env)
    path, torch_loaded = where.stdout.split()
    assert Path(path).is_relative_to(venv) and torch_loaded == "False"
    assert "generate" in _run([venv / "bin" / "npgemma", "--help"], cwd=tmp_path, env=env).stdout
    version = _run([venv / "bin" / "npgemma", "--version"], cwd=tmp_path, env=env).stdout
    assert version.strip() == f"npgemma {npgemma.__version__}"
    # End to end on the numpy backend, with nothing but the wheel's own files.
    _run([py, "-m", "npgemma.synthetic.random_model", tmp_path / "demo"], cwd=tmp_path, env=env)
    out = _run([venv / "bin" / "npgemma", "generate", "--model", tmp_path / "demo", "--image",
                tmp_path / "demo" / "example.png", "--prompt", "caption en",
                "--max-new-tokens", "3", "--json"], cwd=tmp_path, env=env)
    assert '"token_ids"' in out.stdout
    env["HF_HUB_CACHE"] = str(tmp_path / "empty-cache")  # never the user's own cache
    models = _run([venv / "bin" / "npgemma", "models", tmp_path / "demo"], cwd=tmp_path, env=env)
    assert "0.12 M" in models.stdout.splitlines()[2]  # the demo row: 117,216 parameters


def test_installed_demo_command_runs(venv, tmp_path):
    env = _outside_env(venv)
    help_ = subprocess.run([venv / "bin" / "npgemma", "demo", "--help"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    if help_.returncode != 0:
        pytest.skip("this version has no `npgemma demo` command")
    _run([venv / "bin" / "npgemma", "demo"], cwd=tmp_path, env=env)
