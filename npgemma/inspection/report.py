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
from PIL import Image, ImageDraw

from ..errors import InputError
from ..generation.postprocess import parse_objects
from ..generation.slots import Slots
from . import analysis
from .report_js import SCRIPT

VIEW = 384            # displayed image side, pixels
HEAD_VALUES = 4_000_000  # per-head maps are embedded only below this many numbers
HEAT = np.array([255, 40, 0], np.float32)


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


def overlay(rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.75) -> np.ndarray:
    """uint8[H, W, 3] image blended with a g x g map (its max -> full heat colour), nearest cells."""
    h, w = rgb.shape[:2]
    v = np.asarray(heat, np.float64)
    v = v / v.max() if v.max() > 0 else v * 0
    cells = np.asarray(Image.fromarray((v * 255).astype(np.uint8)).resize((w, h), Image.NEAREST))
    a = (alpha * cells / 255.0)[..., None]
    return (rgb * (1 - a) + HEAT * a).clip(0, 255).astype(np.uint8)


def mask_picture(cfg, prompt_len: int, steps: int, sliding: bool) -> np.ndarray:
    """uint8[S, S, 3]: the prefix-LM mask (white = may attend) of the whole traced sequence,
    with the image / text / generated boundaries as coloured lines."""
    slots = Slots.full(1, prompt_len).append(steps)
    masks = slots.masks(cfg)
    m = masks["sliding_attention" if sliding else "full_attention"][0]
    k = max(1, min(8, 512 // m.shape[0]))  # cells of k x k pixels, lines between them
    pic = np.where(m[..., None], 235, 40).astype(np.uint8).repeat(3, axis=-1)
    pic = pic.repeat(k, axis=0).repeat(k, axis=1)
    for at, color in ((cfg.num_image_tokens, (60, 120, 255)), (prompt_len, (255, 120, 0))):
        if at * k < pic.shape[0]:
            pic[at * k, :] = pic[:, at * k] = color
    return pic


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
    view = np.asarray(Image.fromarray(rgb).resize((VIEW, VIEW), Image.BICUBIC))
    norm_w, head = lens_weights(pipe)
    ids, probs = analysis.logit_lens(trace, norm_w, head, cfg, k=5)
    steps = trace["decoder.blocks.0.attn.hook_pattern"].shape[-1] - trace.prompt_len
    y, t = ids.shape[:2]
    n = cfg.text_config.num_attention_heads
    g = trace.grid
    boxes = [dict(o.as_dict()) for o in parse_objects(trace.text, VIEW, VIEW)]
    data = {
        "tokens": _display_tokens(pipe, trace), "text": trace.text, "grid": g, "layers": y,
        "heads": n if y * n * t * g * g <= HEAD_VALUES else 0,
        "mean": _u8(analysis.image_attention(trace)),
        "rollout": _u8(analysis.decoder_rollout(trace)),
        "lens": [[[[_token_text(pipe, i), round(float(p), 4)] for i, p in zip(ids[l, k], probs[l, k])]
                  for l in range(y)] for k in range(t)],
        "mass": analysis.attention_mass(trace).round(4).tolist(), "mass_groups": analysis.MASS_GROUPS,
        "norms": analysis.residual_norms(trace).round(3).tolist(),
        "boxes": boxes, "image": _png(view), "view": VIEW,
        "masks": {"full": _png(mask_picture(cfg, trace.prompt_len, steps, False))},
        "checkpoint_hash": trace.checkpoint_hash,
    }
    if "vision.blocks.0.attn.hook_pattern" in trace:
        data["pixel"] = _u8(analysis.pixel_rollout(trace))
    if cfg.text_config.is_gemma2 and cfg.text_config.sliding_window is not None:
        data["masks"]["sliding"] = _png(mask_picture(cfg, trace.prompt_len, steps, True))
    if data["heads"]:
        per_head = [analysis.image_attention(trace, head=h) for h in range(n)]  # [N][Y, T, g, g]
        data["head_maps"] = _u8(np.stack(per_head, axis=1))  # [Y, N, T, g, g]
    if occlusion_grid:
        occ = analysis.occlusion(pipe, trace.pixel_values, trace.input_ids, trace.token_ids[0],
                                 grid=occlusion_grid, progress=progress)
        data["occlusion"] = occ.round(4).tolist()
    return data


def _svg_lines(series: list[list[float]], labels, title: str, y_label: str, width=320,
               height=150) -> str:
    """A small inline SVG line plot, one line per column of `series` [Y][C], with axes: x the
    layer (ticks at the first, middle and last), y from 0 to the largest value (`y_label`)."""
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
    for i in sorted({0, last // 2, last}):  # x ticks
        parts.append(f'<line x1="{x(i):.1f}" y1="{y1}" x2="{x(i):.1f}" y2="{y1 + 3}" stroke="#444"/>'
                     f'<text x="{x(i):.1f}" y="{y1 + 14}" font-size="10" text-anchor="middle">{i}</text>')
    parts.append(f'<text x="{(left + right) / 2:.1f}" y="{height + 4}" font-size="11" '
                 f'text-anchor="middle">layer</text>'
                 f'<text x="10" y="{(y0 + y1) / 2:.1f}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 10 {(y0 + y1) / 2:.1f})">{html.escape(y_label)}</text>')
    for c in range(a.shape[1]):
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(a[:, c]))
        parts.append(f'<polyline fill="none" stroke="{colors[c % 4]}" stroke-width="2" points="{pts}"/>')
        parts.append(f'<text x="{left + c * (right - left) / a.shape[1]:.1f}" y="{height + 19}" font-size="11" '
                     f'fill="{colors[c % 4]}">{html.escape(labels[c])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(data: dict, title: str) -> str:
    plots = (_svg_lines(data["mass"], data["mass_groups"], "attention mass of the answer rows",
                        "share of attention")
             + _svg_lines(data["norms"], ["image", "prompt", "answer"], "residual stream norm",
                          "mean L2 norm"))
    masks = "".join(f'<figure><img class="mask" src="{src}" alt="{k} mask"><figcaption>{k} attention '
                    f'mask, rows = queries, columns = keys (white = may attend; blue line: image | text, orange line: prompt | generated)</figcaption>'
                    f'</figure>' for k, src in data["masks"].items())
    payload = json.dumps(data).replace("</", "<\\/")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font:14px sans-serif;margin:16px;max-width:1200px}} .row{{display:flex;gap:24px;flex-wrap:wrap}}
canvas{{border:1px solid #999}} table{{border-collapse:collapse;font-size:12px}} td,th{{border:1px solid #ccc;padding:2px 5px}}
.mask{{width:256px;image-rendering:pixelated;border:1px solid #999}} .tok{{padding:1px 3px;margin:1px;border-radius:3px;cursor:pointer}}
.tok.on{{background:#ffd27f}} figure{{margin:0}}</style></head><body>
<h2>{html.escape(title)}</h2>
<p>Answer: <b id="answer"></b></p><div id="tokens"></div>
<div class="row"><div><canvas id="heatmap" width="{data['view']}" height="{data['view']}"></canvas>
<div>token <input type="range" id="token-slider" min="0" max="{len(data['tokens']) - 1}" value="0"> <span id="token-label"></span></div>
<div>layer <input type="range" id="layer-slider" min="0" max="{data['layers'] - 1}" value="{data['layers'] - 1}"> <span id="layer-label"></span></div>
<div>show <select id="mode"><option value="mean">attention (mean of heads)</option>
{'<option value="head">attention (one head)</option>' if data['heads'] else ''}<option value="rollout">decoder rollout to layer</option>
{'<option value="pixel">rollout through SigLIP (all layers)</option>' if 'pixel' in data else ''}{'<option value="occlusion">occlusion (first token)</option>' if 'occlusion' in data else ''}</select>
head <input type="number" id="head" min="0" max="{max(0, data['heads'] - 1)}" value="0" style="width:4em"></div>
<div id="scale"><canvas id="scale-bar" width="{data['view']}" height="12"></canvas>
<div style="display:flex;justify-content:space-between;width:{data['view']}px;font-size:12px"><span>0</span>
<span id="scale-label"></span><span id="scale-max"></span></div></div></div>
<div><h3>Logit lens <small id="lens-token"></small></h3><table id="lens"></table></div></div>
<h3>Per-layer statistics</h3><div class="row">{plots}</div>
<h3>Attention masks</h3><div class="row">{masks}</div>
<p><small>checkpoint sha256: {html.escape(str(data['checkpoint_hash']))}. Heatmaps: the row of the
query that produced each token; each map scaled to its own max.</small></p>
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


def write_pngs(pipe, trace, rgb, folder) -> list[Path]:
    """Plain pictures: per generated token the rollout to pixels and each layer's mean attention
    (one strip), plus the attention mask."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--png {folder}: cannot create the folder ({e.strerror})") from None
    view = np.asarray(Image.fromarray(rgb).resize((VIEW // 2, VIEW // 2), Image.BICUBIC))
    att = analysis.image_attention(trace)
    pix = (analysis.pixel_rollout(trace) if "vision.blocks.0.attn.hook_pattern" in trace
           else analysis.decoder_rollout(trace)[-1])  # without SigLIP's patterns: the decoder's
    steps = trace["decoder.blocks.0.attn.hook_pattern"].shape[-1] - trace.prompt_len
    written = []
    for t in range(len(trace.token_ids)):
        p = folder / f"token{t:02d}_rollout.png"
        Image.fromarray(overlay(view, pix[t])).save(p)
        strip = np.concatenate([overlay(view, att[l, t]) for l in range(att.shape[0])], axis=1)
        q = folder / f"token{t:02d}_attention_by_layer.png"
        Image.fromarray(strip).save(q)
        written += [p, q]
    m = folder / "mask_full.png"
    Image.fromarray(mask_picture(pipe.cfg, trace.prompt_len, steps, False)).save(m)
    boxes = Image.fromarray(view)
    draw = ImageDraw.Draw(boxes)
    for o in parse_objects(trace.text, view.shape[1], view.shape[0]):
        draw.rectangle(o.box, outline=(255, 0, 0), width=2)
    b = folder / "boxes.png"
    boxes.save(b)
    return written + [m, b]
