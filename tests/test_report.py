"""`npgemma inspect`: the command, its outputs, and the report rendered by a real browser.

The browser test runs Debian's `chromium` headless (or NPGEMMA_CHROMIUM) when it is installed
and is skipped otherwise: it checks that the page's script ran (the logit-lens table and the
token chips are built by it), that the heatmap canvas and the token slider are there, and that
the screenshot is not blank.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from npgemma import cli
from npgemma.testing.checkpoint import tiny_config, write_checkpoint
from npgemma.testing.random_model import example_image

CHROMIUM = os.environ.get("NPGEMMA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One `npgemma inspect` run on a tiny PaliGemma-2 with every output asked for."""
    root = tmp_path_factory.mktemp("inspect")
    model = write_checkpoint(root / "ckpt", tiny_config(text="gemma2", sliding_window=4))
    image = root / "image.png"
    Image.fromarray(example_image()).save(image)
    out = root / "report.html"
    rc = cli.main(["inspect", "--model", str(model), "--image", str(image), "--prompt", "caption en",
                   "--out", str(out), "--png", str(root / "png"), "--npz", str(root / "trace"),
                   "--names", "decoder.blocks.0.attn.hook_q", "--max-new-tokens", "4",
                   "--occlusion", "2", "--quiet", "--json"])
    assert rc == 0
    return root, out


def test_outputs_written(made):
    root, out = made
    manifest = json.loads((root / "trace.json").read_text())
    assert "decoder.blocks.0.attn.hook_q" in manifest["names"]  # --names adds to the report's set
    assert "decoder.blocks.1.attn.hook_pattern" in manifest["names"]
    assert len(manifest["checkpoint_hash"]) == 64
    with np.load(root / "trace.npz") as z:
        assert z["decoder.blocks.0.attn.hook_q"].shape == tuple(manifest["names"]["decoder.blocks.0.attn.hook_q"])
    pngs = sorted(p.name for p in (root / "png").iterdir())
    assert "mask_full.png" in pngs and "token00_rollout.png" in pngs and "boxes.png" in pngs


def test_plots_have_axes_and_the_heatmap_a_colour_scale(made):
    page = made[1].read_text()
    plots = re.findall(r'<svg .*?</svg>', page, re.S)
    assert len(plots) == 2
    for svg, y_label in zip(plots, ("share of attention", "mean L2 norm")):
        assert ">layer</text>" in svg and f">{y_label}</text>" in svg
        assert svg.count("<line ") >= 2 + 3 + 2  # two axes, three y ticks, x ticks at ends
        assert re.search(r'text-anchor="end">0</text>', svg)  # the y axis starts at 0
    assert 'id="scale-bar"' in page and 'id="scale-label"' in page


def test_report_is_self_contained(made):
    page = made[1].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", page)  # only inlined data
    assert "http://" not in page and "https://" not in page
    assert page.count("data:image/png;base64,") >= 2  # the image and the mask pictures
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>',
                                page, re.S).group(1).replace("<\\/", "</"))
    assert len(data["tokens"]) >= 1 and len(data["lens"]) == len(data["tokens"])
    assert len(data["lens"][0]) == data["layers"] and len(data["lens"][0][0]) == 5
    assert set(data["masks"]) == {"full", "sliding"} and np.shape(data["occlusion"]) == (2, 2)


def test_without_room_for_siglip_patterns_the_report_drops_that_view(made, tmp_path, monkeypatch):
    from npgemma.cli import inspect as inspect_cli

    monkeypatch.setattr(inspect_cli, "_fits", lambda *a: False)
    root = made[0]
    out = tmp_path / "r.html"
    assert cli.main(["inspect", "--model", str(root / "ckpt"), "--image", str(root / "image.png"),
                     "--prompt", "caption en", "--out", str(out), "--png", str(tmp_path / "png"),
                     "--max-new-tokens", "2", "--occlusion", "0", "--quiet"]) == 0
    page = out.read_text()
    assert 'value="pixel"' not in page and 'value="rollout"' in page
    assert 'value="pixel"' in made[1].read_text()


def test_torch_backend_writes_the_same_answer(made, tmp_path, capsys):
    pytest.importorskip("torch")
    root = made[0]
    args = ["inspect", "--model", str(root / "ckpt"), "--image", str(root / "image.png"),
            "--prompt", "caption en", "--max-new-tokens", "4", "--occlusion", "0", "--quiet", "--json"]
    capsys.readouterr()
    assert cli.main(args + ["--out", str(tmp_path / "n.html")]) == 0
    numpy_answer = json.loads(capsys.readouterr().out)
    assert cli.main(args + ["--out", str(tmp_path / "t.html"), "--backend", "torch"]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == numpy_answer["token_ids"]
    assert 'id="heatmap"' in (tmp_path / "t.html").read_text()


def test_bad_image_is_one_line_error(tmp_path, capsys):
    model = write_checkpoint(tmp_path / "ckpt", tiny_config())
    rc = cli.main(["inspect", "--model", str(model), "--image", str(tmp_path / "nope.png"),
                   "--prompt", "caption en", "--out", str(tmp_path / "r.html"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("npgemma: error: ") and err.count("\n") == 1


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("NPGEMMA_REQUIRE_BROWSER"),
                    reason="chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(made, tmp_path):
    """CI sets NPGEMMA_REQUIRE_BROWSER=1: there a missing chromium fails instead of skipping."""
    assert CHROMIUM is not None, "NPGEMMA_REQUIRE_BROWSER is set but chromium is not installed"
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,900"]
    url = made[1].as_uri()
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert '<canvas id="heatmap"' in dom and 'id="token-slider"' in dom
    assert '<span id="scale-label">attention weight on the patch</span>' in dom  # drawn by the script
    assert re.search(r'<table id="lens"><tbody><tr><th>layer</th>', dom)  # built by the script
    assert dom.count('class="tok') >= 1
    for view in ("mode=head&head=1&layer=0", "mode=pixel&token=1", "mode=occlusion"):
        # The lens table is filled at the end of draw(): a script error in this view leaves it empty.
        dom = subprocess.run(flags + ["--dump-dom", f"{url}#{view}"], capture_output=True,
                             text=True, timeout=120).stdout
        assert re.search(r'<table id="lens"><tbody><tr><th>layer</th>', dom), view
    shot = tmp_path / "shot.png"
    subprocess.run(flags + [f"--screenshot={shot}", url], capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB"))[:500, :400]  # the heatmap's corner
    assert pixels.std() > 10  # drawn, not a blank page
