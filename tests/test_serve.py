"""`--against openai:` against a real `transformers serve` (transformers 5.24's OpenAI-compatible
server), started on one of conform's own case checkpoints on a free port on 127.0.0.1 and
stopped at the end. It needs transformers' serving extra (fastapi, uvicorn, openai,
accelerate), which npgemma's test environment does not carry: the interpreter that has it is
NPGEMMA_SERVE_PYTHON (else this one, when it can import them); without one the tests skip, and
with NPGEMMA_REQUIRE_SERVE=1 (CI's serve stage) they fail instead. 30-50 s on 2 cores, most
of it the server's start."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from npgemma import cli
from npgemma.compare.adapters.openai_adapter import CHAT_TEMPLATE
from npgemma.compare.cases import CASES, write_case

START_S = 180   # the server's imports and startup on a loaded machine
STOP_S = 20


def _python() -> str | None:
    given = os.environ.get("NPGEMMA_SERVE_PYTHON")
    if given:
        return given
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        return None
    return sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    python = _python()
    if python is None:
        if os.environ.get("NPGEMMA_REQUIRE_SERVE"):
            pytest.fail("NPGEMMA_REQUIRE_SERVE=1 but no interpreter with transformers[serving]")
        pytest.skip("needs transformers[serving] (NPGEMMA_SERVE_PYTHON names an interpreter)")
    root = tmp_path_factory.mktemp("serve")
    case = next(c for c in CASES if c.name == "pg1-hub-f32")
    folder, image = write_case(case, root)
    bare = root / "no-template"
    shutil.copytree(folder, bare)
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    port = _free_port()
    log = open(root / "serve.log", "w")
    proc = subprocess.Popen([python, "-m", "transformers.cli.transformers", "serve", "--host",
                             "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype",
                             "float32"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_S
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"transformers serve did not start: {(root / 'serve.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield url, folder, bare, image
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(STOP_S)
        log.close()


def test_conform_against_a_live_transformers_serve(server, capsys):
    url, folder, _, _ = server
    rc = cli.main(["conform", "--against", f"openai:{url}?model={folder}", "--model", str(folder),
                   "--cases", "model:*", "--json", "--quiet", "--max-new-tokens", "4"])
    out, err = capsys.readouterr()
    got = json.loads(out)
    (case,) = got["cases"]
    assert rc == 0 and got["ok"], case["verdict"]
    (row,) = [s for s in case["report"]["stages"] if s["stage"] == "greedy tokens"]
    assert row["ok"] and "tokens only" in row["note"] and "agree" in row["note"]
    assert "no logprobs; judging its greedy tokens alone" in err


def test_a_checkpoint_without_a_chat_template_is_told_with_the_fix(server, capsys):
    url, _, bare, image = server
    rc = cli.main(["parity", "--against", f"openai:{url}?model={bare}", "--model", str(bare),
                   "--image", str(image), "--prompt", "caption en", "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "HTTP 500" in err and "has no chat template" in err
    # the fix as printed, run as a shell would, writes the very template the served case
    # folder has (with which the conform test above passes; the server keeps a loaded model's
    # processor, hence "restart it")
    fix = err.split("restart it: ", 1)[1].strip()
    subprocess.run(["bash", "-c", fix], check=True)
    assert (bare / "chat_template.jinja").read_text() == CHAT_TEMPLATE
