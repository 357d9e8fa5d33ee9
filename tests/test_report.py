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
from npgemma.synthetic.checkpoint import tiny_config, write_checkpoint
from npgemma.synthetic.random_model import example_image

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


def _data(page: str) -> dict:
    return json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>',
                                page, re.S).group(1).replace("<\\/", "</"))


def _png(data_url: str) -> np.ndarray:
    import base64
    import io

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


def test_every_layer_is_a_tick_on_the_layer_axis(made):
    page = made[1].read_text()
    layers = _data(page)["layers"]
    for svg in re.findall(r'<svg .*?</svg>', page, re.S):
        assert svg.count('class="xtick"') == layers
        assert re.findall(r'class="xlabel"[^>]*>(\d+)</text>', svg) == [str(i) for i in range(layers)]


def test_layer_numbers_thin_out_on_deep_models_but_every_layer_keeps_a_tick():
    from npgemma.inspection.report import _svg_lines

    svg = _svg_lines([[float(i), 1.0] for i in range(46)], ["a", "b"], "t", "y")   # PaliGemma 2 28B
    assert svg.count('class="xtick"') == 46
    labels = [int(v) for v in re.findall(r'class="xlabel"[^>]*>(\d+)</text>', svg)]
    xs = [float(v) for v in re.findall(r'class="xlabel" x="([\d.]+)"', svg)]
    assert labels[0] == 0 and labels[-1] == 45 and min(np.diff(xs[:-1])) >= 16   # legible, not crowded


def test_the_heat_map_leaves_the_scene_its_colours(made):
    """The image is shown as it is beside the heat map; under the heat map it is grey, so the
    heat colours are the only colours there."""
    data = _data(made[1].read_text())
    image, dimmed = _png(data["image"]), _png(data["dimmed"]).astype(int)
    assert image.shape == dimmed.shape and np.ptp(image, axis=-1).max() > 0   # the scene has colour
    assert (dimmed[..., 0] == dimmed[..., 1]).all() and (dimmed[..., 1] == dimmed[..., 2]).all()
    assert f'src="{data["image"]}"' in made[1].read_text()   # the original, undimmed, on the page
    assert len(data["colormap"]) == 256 and data["colormap"][0] != data["colormap"][-1]


def test_each_analysis_is_explained_in_one_sentence(made):
    page = made[1].read_text()
    for what in ("Logit lens: each layer's residual stream read out as if it were the last layer",
                 "Attention rollout (Abnar &amp; Zuidema 2020)", "Occlusion: each cell of the image",
                 "Attention masks: which key (column) each query (row) may attend to"):
        assert what in page, what


def _expected_mask(prompt_len: int, steps: int, window: int | None) -> np.ndarray:
    """PaliGemma's prefix-LM rule written out: the prefix sees itself whole, a generated token
    sees the prefix and the generated tokens up to itself (within `window` keys of itself on a
    sliding layer, 5.24 semantics); nothing sees a later generated token."""
    s = prompt_len + steps
    out = np.zeros((s, s), bool)
    for q in range(s):
        for k in range(s):
            if q < prompt_len:
                out[q, k] = k < prompt_len
            else:
                out[q, k] = k <= q and (window is None or q - k < window)
    return out


@pytest.mark.parametrize("sliding", [False, True])
def test_mask_picture_is_pure_white_where_a_query_may_attend(sliding):
    """Every cell pixel is pure white exactly where the rule above allows attention, and dark
    elsewhere; a generated token's row is at least 8 px tall."""
    from npgemma.checkpoint.bundled import model_dir
    from npgemma.checkpoint.config_json import load_config
    from npgemma.inspection.pictures import MASK_MARGIN, SEPARATOR, mask_axis, mask_picture

    cfg = load_config(model_dir())   # 16 image tokens, a sliding window of 8
    prompt_len, steps = 26, 11
    pic = mask_picture(cfg, prompt_len, steps, sliding)
    axis = mask_axis(cfg.num_image_tokens, prompt_len, steps)
    top, left = MASK_MARGIN
    cells = pic[top:top + len(axis), left:left + len(axis)]
    want = _expected_mask(prompt_len, steps, cfg.text_config.sliding_window if sliding else None)
    keep = axis != SEPARATOR
    tokens = axis[keep]
    seen = cells[np.ix_(keep, keep)]
    white = (seen == 255).all(-1)
    assert (white == want[np.ix_(tokens, tokens)]).all()
    assert (seen[~white] == 40).all()   # the masked cells: one dark grey, no light grey
    assert min(np.bincount(tokens)[prompt_len:]) >= 8


def test_report_masks_use_pure_white(made):
    from npgemma.inspection.pictures import MASK_MARGIN

    top, left = MASK_MARGIN
    for src in _data(made[1].read_text())["masks"].values():
        cells = _png(src)[top:-1, left:-1]
        colours = {tuple(c) for c in cells.reshape(-1, 3).tolist()}
        assert (255, 255, 255) in colours and (40, 40, 40) in colours
        assert colours <= {(255, 255, 255), (40, 40, 40), (60, 120, 255), (255, 120, 0)}


def test_png_panels_are_titled_with_a_numbered_colour_bar(made):
    """The --png figures: a title strip, the image in its own colours beside the heat panels,
    and a colour bar with tick marks and numbers under it."""
    root = made[0]
    for name, panels in (("token00_attention_by_layer.png", 3), ("token00_rollout.png", 2)):
        fig = np.asarray(Image.open(root / "png" / name).convert("RGB")).astype(int)
        assert fig.shape[1] >= panels * 192                 # the image and one panel per map
        dark = fig.sum(-1) < 200
        assert dark[:26].sum() > 50                         # the heading's text
        rows = np.flatnonzero(dark.any(axis=1))
        assert dark[rows.max() - 40:].sum() > 40            # the colour bar's numbers and caption
        # example_image's red square (32 px, drawn 3x): whole, in its colour, in the image panel
        assert (fig == (220, 30, 30)).all(-1).sum() == 96 * 96, name


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
    assert 'id="scale-label">attention weight on the patch</div>' in dom  # drawn by the script
    data = _data(made[1].read_text())
    top = data["mean_top"][data["layers"] - 1][0]   # the view shown first: last layer, token 0
    shown = re.search(r'id="scale-max"[^>]*>([^<]*)<', dom).group(1)
    assert float(shown) == pytest.approx(top, rel=5e-3) and top > 0   # the bar has numbers
    assert float(re.search(r'id="scale-mid"[^>]*>([^<]*)<', dom).group(1)) == pytest.approx(top / 2, rel=5e-3)
    assert "Attention: at the chosen layer" in dom   # the view's one-sentence explanation
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
