"""`conform --json` says where its figures came from: the command as typed, when, the commit,
the machine, the BLAS kernel, the versions, and the other interpreter's versions (`--python`).
Each field is checked against what this process finds out by itself (not through the module)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from npgemma import cli

STANDIN = str(Path(__file__).parent / "peers" / "standin.py") + ":run"


def test_conform_json_carries_its_provenance(capsys, tmp_path):
    argv = ["conform", "--against", STANDIN, "--python", sys.executable, "--workdir",
            str(tmp_path), "--cases", "pg1-hub-f32", "--json", "--quiet", "--max-new-tokens", "2"]
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    rc = cli.main(argv)
    got = json.loads(capsys.readouterr().out)["provenance"]
    assert rc == 0
    assert got["command"].split() == ["npgemma", *argv]
    when = datetime.datetime.strptime(got["date"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc)
    assert before <= when <= datetime.datetime.now(datetime.timezone.utc)
    assert got["machine"]["cores"] == os.cpu_count()
    assert got["machine"]["arch"] == platform.machine()
    assert got["versions"]["numpy"] == np.__version__
    assert got["versions"]["python"] == platform.python_version()
    # numpy's BLAS is loaded in this process: its kernel is named
    assert got["blas"] and all(b["internal_api"] and b["num_threads"] >= 1 for b in got["blas"])
    head = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short",
                           "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert got["commit"].split("+")[0] == head.stdout.strip()
    else:
        assert got["commit"] is None
    peer = got["peer"]
    assert peer["python_executable"] == sys.executable
    assert peer["versions"]["python"] == platform.python_version()
    assert peer["versions"]["numpy"] == metadata.version("numpy")


def test_an_interpreter_that_cannot_be_asked_gives_none(tmp_path):
    from npgemma.compare.provenance import peer_versions

    assert peer_versions(str(tmp_path / "no-such-python")) is None
