"""`npgemma inspect`'s outputs: one self-contained HTML report, plain PNGs, from a Trace.

The HTML needs nothing but a browser: the image and pictures are inlined as data URLs, the
numbers as one JSON block, the heatmaps are drawn by a few lines of plain JS on a canvas (no
server, no network, no CDN). Heatmaps are per patch (the g x g grid the model saw), unsmoothed.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..generation import drawing
from ..generation.postprocess import parse_objects
from . import analysis
from .pictures import mask_picture, write_pngs  # noqa: F401  (write_pngs: the CLI's --png)
from .report_js import SCRIPT

VIEW = 384            # displayed image side, pixels
HEAD_VALUES = 4_000_000  # per-head maps are embedded only below this many numbers


def lens_weights(pipe):
    """(final norm weight float32[D], lm head float32[V, D]) as NumPy, from either backend."""
    lm = pipe.params["language_model"]
    head = pipe.params["lm_head"]["weight"] if "lm_head" in pipe.params else lm["embed_tokens"]["weight"]
    to = pipe.backend.to_numpy
    return to(lm["norm"]["weight"]), to(head)


def _png(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _u8(maps: np.ndarray) -> str:
    """Maps [..., g, g] scaled to 0..255 each by its own max, base64 (the JS reads them back)."""
    m = np.asarray(maps, np.float64)
    top = m.max(axis=(-1, -2), keepdims=True)
    q = np.where(top > 0, m / np.where(top > 0, top, 1), 0) * 255
    return base64.b64encode(q.round().astype(np.uint8).tobytes()).decode()


def _tops(maps: np.ndarray) -> list:
    """Each map's own max (what 255 stands for in `_u8`), for the colour bar's numbers."""
    return np.asarray(maps, np.float64).max(axis=(-1, -2)).round(6).tolist()


def _lut() -> list[list[int]]:
    """The heat colour map at 256 steps, [r, g, b, alpha·1000]: the JS draws exactly what
    `drawing.heat_over` draws in the PNGs."""
    v = np.linspace(0, 1, 256)
    rgb = drawing.colormap(v).round().astype(int)
    return [[*c, int(round(a * 1000))] for c, a in zip(rgb.tolist(), drawing.heat_alpha(v))]


def _token_text(pipe, i: int) -> str:
    """A token as the reader should see it: its text, newlines escaped, never empty."""
    s = pipe.processor.decode([int(i)], skip_special_tokens=False).replace("\n", "\\n")
    return s if s.strip() else repr(s) if s else (pipe.processor.tokenizer.id_to_token(int(i)) or f"<{i}>")


def _display_tokens(pipe, trace) -> list[str]:
    return [_token_text(pipe, i) for i in trace.token_ids]


def report_data(pipe, trace, rgb: np.ndarray, occlusion_grid: int = 0, progress=None) -> dict:
    """Everything the HTML shows, as JSON-able values (also used by the tests)."""
    cfg = pipe.cfg
    if not trace.token_ids:
        raise InputError("inspect: the model generated no token (EOS first): nothing to attribute")
    resample = Image.NEAREST if 2 * rgb.shape[0] <= VIEW else Image.BICUBIC  # small: crisp pixels
    view = np.asarray(Image.fromarray(rgb).resize((VIEW, VIEW), resample))
    norm_w, head = lens_weights(pipe)
    ids, probs = analysis.logit_lens(trace, norm_w, head, cfg, k=5)
    steps = trace["decoder.blocks.0.attn.hook_pattern"].shape[-1] - trace.prompt_len
    y, t = ids.shape[:2]
    n = cfg.text_config.num_attention_heads
    g = trace.grid
    boxes = [dict(o.as_dict()) for o in parse_objects(trace.text, VIEW, VIEW)]
    for k, b in enumerate(boxes):
        c = drawing.PALETTE[k % len(drawing.PALETTE)]
        b["color"], b["text_color"] = "#%02x%02x%02x" % c, "#%02x%02x%02x" % drawing.text_colour(c)
    mean, roll = analysis.image_attention(trace), analysis.decoder_rollout(trace)
    data = {
        "tokens": _display_tokens(pipe, trace), "text": trace.text, "grid": g, "layers": y,
        "heads": n if y * n * t * g * g <= HEAD_VALUES else 0,
        "mean": _u8(mean), "mean_top": _tops(mean), "rollout": _u8(roll), "rollout_top": _tops(roll),
        "colormap": _lut(),
        "lens": [[[[_token_text(pipe, i), round(float(p), 4)] for i, p in zip(ids[l, k], probs[l, k])]
                  for l in range(y)] for k in range(t)],
        "mass": analysis.attention_mass(trace).round(4).tolist(), "mass_groups": analysis.MASS_GROUPS,
        "norms": analysis.residual_norms(trace).round(3).tolist(),
        "boxes": boxes, "image": _png(view), "view": VIEW,
        "dimmed": _png(drawing.dim(view).round().astype(np.uint8)),
        "masks": {"full": _png(mask_picture(cfg, trace.prompt_len, steps, False))},
        "checkpoint_hash": trace.checkpoint_hash,
    }
    if "vision.blocks.0.attn.hook_pattern" in trace:
        pix = analysis.pixel_rollout(trace)
        data["pixel"], data["pixel_top"] = _u8(pix), _tops(pix)
    if cfg.text_config.applied_window is not None:  # none under --window big_vision
        data["masks"]["sliding"] = _png(mask_picture(cfg, trace.prompt_len, steps, True))
    if data["heads"]:
        per_head = [analysis.image_attention(trace, head=h) for h in range(n)]  # [N][Y, T, g, g]
        data["head_maps"] = _u8(np.stack(per_head, axis=1))  # [Y, N, T, g, g]
        data["head_top"] = _tops(np.stack(per_head, axis=1))
    if occlusion_grid:
        occ = analysis.occlusion(pipe, trace.pixel_values, trace.input_ids, trace.token_ids[0],
                                 grid=occlusion_grid, progress=progress)
        data["occlusion"] = occ.round(4).tolist()
    return data


def layer_ticks(layers: int, pixels: float) -> list[int]:
    """The layers whose tick gets a number: all of them when each has 16 px, else every 2nd,
    5th or 10th (and the last). Every layer gets a tick line."""
    step = next(s for s in (1, 2, 5, 10, 20, 50) if pixels * s / max(1, layers - 1) >= 16 or s == 50)
    return sorted(set(range(0, layers, step)) | {layers - 1})


def _svg_lines(series: list[list[float]], labels, title: str, y_label: str, width=400,
               height=150) -> str:
    """A small inline SVG line plot, one line per column of `series` [Y][C], with axes: x the
    layer (a tick at every layer, numbered as room allows), y from 0 to the largest value."""
    a = np.asarray(series, np.float64)
    top = a.max() if a.size and a.max() > 0 else 1.0
    colors = ["#e4572e", "#17becf", "#76b041", "#9467bd"]
    left, right, y0, y1 = 48, width - 8, 22, height - 22  # plot area: x left..right, y y0..y1
    last = max(1, a.shape[0] - 1)
    x = lambda i: left + i / last * (right - left)  # noqa: E731
    y = lambda v: y1 - v / top * (y1 - y0)  # noqa: E731
    parts = [f'<svg width="{width}" height="{height + 22}" class="plot">',
             f'<text x="4" y="12" font-size="12">{html.escape(title)}</text>',
             f'<line x1="{left}" y1="{y1}" x2="{right}" y2="{y1}" stroke="#444"/>',
             f'<line x1="{left}" y1="{y0}" x2="{left}" y2="{y1}" stroke="#444"/>']
    for v in (0.0, top / 2, top):  # y ticks
        parts.append(f'<line x1="{left - 3}" y1="{y(v):.1f}" x2="{left}" y2="{y(v):.1f}" stroke="#444"/>'
                     f'<text x="{left - 5}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end">{v:.3g}</text>')
    numbered = layer_ticks(a.shape[0], right - left)
    for i in range(a.shape[0]):  # x ticks: every layer
        parts.append(f'<line class="xtick" x1="{x(i):.1f}" y1="{y1}" x2="{x(i):.1f}" y2="{y1 + 3}" '
                     f'stroke="#444"/>')
        if i in numbered:
            parts.append(f'<text class="xlabel" x="{x(i):.1f}" y="{y1 + 14}" font-size="10" '
                         f'text-anchor="middle">{i}</text>')
    parts.append(f'<text x="{(left + right) / 2:.1f}" y="{height + 4}" font-size="11" '
                 f'text-anchor="middle">layer</text>'
                 f'<text x="10" y="{(y0 + y1) / 2:.1f}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 10 {(y0 + y1) / 2:.1f})">{html.escape(y_label)}</text>')
    for c in range(a.shape[1]):
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(a[:, c]))
        parts.append(f'<polyline fill="none" stroke="{colors[c % 4]}" stroke-width="2" points="{pts}"/>')
        parts += [f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colors[c % 4]}"/>'
                  for i, v in enumerate(a[:, c])]
        lx = left + c * (right - left) / a.shape[1]  # legend: a swatch of the line, dark text
        parts.append(f'<line x1="{lx:.1f}" y1="{height + 15}" x2="{lx + 14:.1f}" y2="{height + 15}" '
                     f'stroke="{colors[c % 4]}" stroke-width="3"/><text x="{lx + 18:.1f}" y="{height + 19}" '
                     f'font-size="11" fill="#222">{html.escape(labels[c])}</text>')
    parts.append("</svg>")
    return "".join(parts)


# One sentence per analysis: what it shows (the JS shows the chosen view's under the heat map).
EXPLAIN = {
    "mean": "Attention: at the chosen layer, how much the query that produced this token looks at "
            "each image patch (its softmax row, restricted to the image tokens, mean of the heads).",
    "head": "Attention of one head: the same row for a single head instead of the mean.",
    "rollout": "Attention rollout (Abnar & Zuidema 2020): the mean-of-heads attention of layers 0 "
               "to the chosen one, each plus the identity for the residual path and renormalised, "
               "multiplied together: how much of the token's input, through all those layers, "
               "came from each image token.",
    "pixel": "Rollout through SigLIP: the decoder rollout onto the image tokens carried on "
             "through the vision tower's own rollout, back to the input patches (pixels).",
    "occlusion": "Occlusion: each cell of the image set to mid-grey in turn, the drop in the "
                 "first answer token's logit; a large drop means the answer depended on that cell.",
    "lens": "Logit lens: each layer's residual stream read out as if it were the last layer "
            "(final norm, then the output embedding): the top-5 next tokens the model would "
            "predict there, so you see at which layer the answer appears.",
    "mass": "Attention mass: of the answer rows' attention (mean of heads), the share that goes to "
            "the image tokens, <bos>, the prompt text and the tokens generated so far, per layer.",
    "norms": "Residual stream norm: the mean length of each layer's output vector over the image "
             "tokens, the prompt and the answer; it grows as layers add to the stream.",
    "masks": "Attention masks: which key (column) each query (row) may attend to; the prefix "
             "(image, <bos>, prompt) sees itself whole, generated tokens see only what came before.",
}


def _mask_figures(masks: dict) -> str:
    legend = ('<span class="sw" style="background:#fff"></span> may attend '
              '<span class="sw" style="background:#282828"></span> masked '
              '<span class="sw" style="background:#3c78ff"></span> image | text '
              '<span class="sw" style="background:#ff7800"></span> prompt | generated')
    figs = "".join(f'<figure><img class="mask" src="{src}" alt="{k} attention mask"><figcaption>{k} '
                   f'attention mask: rows = queries, columns = keys</figcaption></figure>'
                   for k, src in masks.items())
    return f'<p>{html.escape(EXPLAIN["masks"])}</p><p>{legend}</p><div class="row">{figs}</div>'


def render_html(data: dict, title: str) -> str:
    plots = (_svg_lines(data["mass"], data["mass_groups"], "attention mass of the answer rows",
                        "share of attention")
             + _svg_lines(data["norms"], ["image", "prompt", "answer"], "residual stream norm",
                          "mean L2 norm"))
    explain = "".join(f"<li><b>{k}</b>: {html.escape(v)}</li>" for k, v in EXPLAIN.items())
    payload = json.dumps(data | {"explain": EXPLAIN}).replace("</", "<\\/")
    v = data["view"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font:14px sans-serif;margin:16px;max-width:1280px}} .row{{display:flex;gap:24px;flex-wrap:wrap}}
canvas,.view{{border:1px solid #999}} table{{border-collapse:collapse;font-size:12px}} td,th{{border:1px solid #ccc;padding:2px 5px}}
.mask{{image-rendering:pixelated;border:1px solid #999;max-width:600px}} .tok{{padding:1px 3px;margin:1px;border-radius:3px;cursor:pointer;border:1px solid #ccc}}
.tok.on{{background:#ffd27f}} figure{{margin:0}} .help{{max-width:{v}px;font-size:13px;color:#333}}
.sw{{display:inline-block;width:14px;height:14px;border:1px solid #666;vertical-align:middle;margin-left:8px}}
li{{margin:3px 0}}</style></head><body>
<h2>{html.escape(title)}</h2>
<p>Answer: <b id="answer"></b> — pick a generated token (click it) to see what produced it.</p><div id="tokens"></div>
<div class="row"><figure><img class="view" src="{data['image']}" width="{v}" height="{v}" alt="the image">
<figcaption>the image, in its own colours</figcaption></figure>
<div><canvas id="heatmap" width="{v}" height="{v}"></canvas>
<div id="scale"><canvas id="scale-bar" width="{v}" height="14"></canvas>
<div style="position:relative;height:16px;width:{v}px;font-size:12px"><span id="scale-0" style="position:absolute;left:0">0</span>
<span id="scale-mid" style="position:absolute;left:50%;transform:translateX(-50%)"></span>
<span id="scale-max" style="position:absolute;right:0"></span></div>
<div style="text-align:center;width:{v}px;font-size:12px" id="scale-label"></div></div>
<div>token <input type="range" id="token-slider" min="0" max="{len(data['tokens']) - 1}" value="0"> <span id="token-label"></span></div>
<div>layer <input type="range" id="layer-slider" min="0" max="{data['layers'] - 1}" value="{data['layers'] - 1}"> <span id="layer-label"></span></div>
<div>show <select id="mode"><option value="mean">attention (mean of heads)</option>
{'<option value="head">attention (one head)</option>' if data['heads'] else ''}<option value="rollout">decoder rollout to layer</option>
{'<option value="pixel">rollout through SigLIP (all layers)</option>' if 'pixel' in data else ''}{'<option value="occlusion">occlusion (first token)</option>' if 'occlusion' in data else ''}</select>
head <input type="number" id="head" min="0" max="{max(0, data['heads'] - 1)}" value="0" style="width:4em"></div>
<p class="help" id="mode-help"></p></div>
<div><h3>Logit lens <small id="lens-token"></small></h3><p class="help">{html.escape(EXPLAIN['lens'])}</p>
<table id="lens"></table></div></div>
<h3>What each view shows</h3><ul>{explain}</ul>
<h3>Per-layer statistics</h3><div class="row">{plots}</div>
<h3>Attention masks</h3>{_mask_figures(data["masks"])}
<p><small>checkpoint sha256: {html.escape(str(data['checkpoint_hash']))}. Heatmaps: the row of the
query that produced each token, one value per image patch (the model's g x g grid), over the image
in dimmed grey; the colour bar gives the values of the map shown.</small></p>
<script id="data" type="application/json">{payload}</script>
<script>{SCRIPT}</script></body></html>"""


def write_html(pipe, trace, rgb, out, occlusion_grid=4, progress=None, title=None) -> Path:
    data = report_data(pipe, trace, rgb, occlusion_grid, progress)
    out = Path(out)
    try:
        out.write_text(render_html(data, title or f"npgemma inspect: {trace.text!r}"), encoding="utf-8")
    except OSError as e:
        raise InputError(f"--out {out}: cannot write the report ({e.strerror})") from None
    return out
