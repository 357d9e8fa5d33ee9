"""The `npgemma` command line's surface, with no model run: a bare `npgemma` shows the usage and
the commands; every option of every command has help and says its default; a usage mistake is
one line that names the command once; building the parser (so `--help`) imports no NumPy, torch
or model code; and the refusals found by trying wrong inputs are in our own words."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import npgemma
from npgemma import cli
from npgemma.cli import args as cli_args
from npgemma.cli.main import COMMANDS
from npgemma.generation import backend

REPO = Path(npgemma.__file__).resolve().parents[1]
IMAGE = REPO / "docs" / "images" / "scene.png"


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in cli.build_parser()._actions
                  if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_bare_npgemma_prints_the_usage_and_the_commands(capsys):
    rc, out, err = run_cli(capsys)
    assert rc == 2 and out == ""
    assert err.startswith("usage: npgemma ") and "error" not in err
    for name in ["generate", "demo", "inspect", "parity", "conform", "models", "tiny-checkpoint"]:
        assert f"\n    {name} " in err or f"\n    {name}\n" in err, name
    assert "COMMAND --help" in err


@pytest.mark.parametrize("argv, head", [
    (["translate"], "npgemma: error: unknown command: 'translate' (choose from 'generate', "),
    (["generate", "--top-k", "1.5"], "npgemma: error: generate: argument --top-k/"),
    (["models", "--frobnicate"], "npgemma: error: models: unrecognized arguments: --frobnicate"),
])
def test_a_usage_mistake_names_the_command_once(capsys, argv, head):
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(head.split("/")[0]) and err.count("npgemma") == 2  # the prefix, the hint
    assert err.rstrip().endswith("--help)")


def test_every_command_has_help():
    commands = subcommands()
    assert set(commands) == set(COMMANDS)
    text = " ".join(cli.build_parser().format_help().split())
    for name, parser in commands.items():
        assert parser.description and f"{name} {parser.description[:20].lower()}" in text.lower()


def help_blocks(text: str) -> dict[str, str]:
    """An option's (or argument's) first word -> its help entry, whitespace collapsed."""
    out, key = {}, None
    for line in text.splitlines():
        if re.match(r"^  \S", line):
            key = line.split()[0].rstrip(",")
            out[key] = line
        elif key is not None and line.startswith("   "):
            out[key] += line
        else:
            key = None
    return {k: " ".join(v.split()) for k, v in out.items()}


def _options():
    for name, parser in subcommands().items():
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                yield name, parser, action


@pytest.mark.parametrize("name, parser, action",
                         [pytest.param(*o, id=f"{o[0]} {o[2].dest}") for o in _options()])
def test_every_option_has_help_and_its_default(name, parser, action):
    """Help text on every option (none hidden); a default that is a value is printed, as it is
    set, in that option's own entry; no entry says 'None'."""
    assert action.help and action.help is not argparse.SUPPRESS
    key = action.option_strings[-1] if action.option_strings else action.metavar
    entry = help_blocks(parser.format_help())[key]
    assert len(entry) > len(key) + 10  # the option and some words
    default = action.default
    if not (default is None or default is False or default == []):
        assert f"(default: {default})" in entry
    assert "None" not in entry


def test_generate_help_names_the_four_tasks_and_the_sampling_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = capsys.readouterr().out
    assert "caption / answer / detect / segment" in " ".join(text.lower().split())
    entries = help_blocks(text)
    for option, default in [("--max-new-tokens", "32"), ("--temperature", "1.0"),
                            ("--top-k", "all"), ("--top-p", "1.0, off"), ("--do-sample", "greedy"),
                            ("--seed", "a different draw every run")]:
        assert f"(default: {default}" in entries[option], entries[option]


def test_the_parser_choices_are_the_backends_tables():
    assert cli_args.BACKENDS == backend.BACKENDS and cli_args.DTYPES == backend.DTYPES


HEAVY = ("numpy", "torch", "PIL", "tqdm", "ml_dtypes", "safetensors", "tokenizers", "transformers")


def test_help_and_usage_mistakes_import_nothing_heavy():
    """`npgemma --help`, a command's --help, a bare `npgemma` and a usage mistake answer from
    argparse alone: the modules that take seconds to import are never loaded."""
    code = f"""
import contextlib, io, sys
from npgemma.cli.main import main
for argv in ([], ["--help"], ["generate", "--help"], ["conform", "--help"],
             ["tiny-checkpoint", "--help"], ["generate", "--top-k", "x"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
print(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r})))
"""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_sampling_options_without_do_sample_are_refused(capsys):
    for extra, named in [(["--temperature", "0.7"], "--temperature"),
                         (["--top-k", "5", "--seed", "3"], "--top-k, --seed")]:
        rc, out, err = run_cli(capsys, "generate", "--image", IMAGE, "--prompt", "caption en",
                               *extra)
        assert rc == 2 and out == "" and len(err.splitlines()) == 1
        assert err.startswith(f"npgemma: error: generate: {named} only act with --do-sample")


@pytest.mark.parametrize("kind, said", [
    ("text", "not an .npz archive"),
    ("npy", "a single .npy array, not an .npz archive"),
    ("pickled", "holds pickled Python objects, not plain arrays"),
    ("folder", "is a folder, not a file"),
    ("missing", "no such VQ-VAE file"),
])
def test_a_vae_that_is_not_one_is_named_in_our_words(capsys, tmp_path, kind, said):
    path = tmp_path / f"vae-{kind}"
    if kind == "text":
        path.write_text("hello\n")
    elif kind == "npy":
        np.save(path, np.zeros(3))
        path = path.with_suffix(".npy")
    elif kind == "pickled":
        np.savez(path, a=np.array([{"x": 1}], dtype=object))
        path = path.with_suffix(".npz")
    elif kind == "folder":
        path.mkdir()
    rc, out, err = run_cli(capsys, "generate", "--image", IMAGE, "--prompt", "caption en",
                           "--vae", path)
    assert rc == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"npgemma: error: {path}: {said} (expected PaliGemma's mask VQ-VAE")
    assert "allow_pickle" not in err and "pickle.load" not in err


@pytest.mark.parametrize("argv, said", [
    (["generate", "--draw", "{tmp}/no/x.png"],
     "--draw {tmp}/no/x.png: no folder {tmp}/no to write it in"),
    (["generate", "--draw", "{tmp}/x.txt"], "--draw {tmp}/x.txt: not a picture file name"),
    (["demo", "--out", "{tmp}"], "--out {tmp}: is a folder; give a file name"),
    (["inspect", "--png", "{tmp}/file"], "--png {tmp}/file: is a file; give a folder"),
    (["inspect", "--npz", "{tmp}/no/t"], "--npz {tmp}/no/t: no folder {tmp}/no"),
    (["conform", "--against", "torch", "--markdown", "{tmp}/no/x.md"],
     "--markdown {tmp}/no/x.md: no folder"),
    (["generate", "--model", "{tmp}/file"], "{tmp}/file: a file, not a checkpoint folder"),
    (["inspect", "--names", "zzz.*", "--max-new-tokens", "1"],
     "--names zzz.*: matches none of this model's hook names (decoder.blocks.*.attn.hook_k, "),
    (["generate", "--backend", "torch", "--device", "tpu"], "device 'tpu' is not a torch device"),
], ids=["draw-no-folder", "draw-not-a-picture", "demo-out-folder", "png-a-file", "npz-no-folder",
        "markdown-no-folder", "model-a-file", "names-match-nothing", "torch-device"])
def test_refusals_found_by_trying(capsys, tmp_path, argv, said):
    """Each was an internal error, NumPy's or Pillow's words, or a refusal only after the work
    (the report traced, the conformance cases run) before; outputs are checked up front."""
    if "torch" in argv:
        pytest.importorskip("torch")
    (tmp_path / "file").write_text("x")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] in ("generate", "inspect"):
        argv += ["--image", str(IMAGE), "--prompt", "caption en", "--out", str(tmp_path / "r.html")]
        argv = argv[:-2] if argv[0] == "generate" else argv
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("npgemma: error: " + said.replace("{tmp}", str(tmp_path))), err
    assert not (tmp_path / "r.html").exists()
