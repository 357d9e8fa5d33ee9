"""`npgemma inspect`'s pictures: the attention mask, and the heat-map panels of `--png`.

Heat maps keep the scene readable: the original image in colour sits beside the same image in
dimmed grey with the map over it (`drawing.heat_over`), so the heat colours never mix with the
scene's own. Every panel says what it shows (token, layer) and a colour bar gives the numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import InputError
from ..generation import drawing
from ..generation.postprocess import draw_objects, parse_objects
from ..generation.slots import Slots
from . import analysis

ALLOWED, MASKED = (255, 255, 255), (40, 40, 40)            # mask cells: may attend / may not
IMAGE_LINE, ANSWER_LINE = (60, 120, 255), (255, 120, 0)     # image | text, prompt | generated
MASK_MARGIN = (22, 72)   # (top, left) pixels of labels around the mask's cells
SEPARATOR = -1           # mask_axis: a pixel of a boundary line, not of a token


def mask_axis(num_image: int, prompt_len: int, steps: int) -> np.ndarray:
    """int[pixels]: the token each pixel along a mask picture's side shows (SEPARATOR on the two
    2-px boundary lines). Image tokens share at most 256 px (their block is all-or-nothing);
    each text and generated token gets 8-16 px, so an answer's rows are never hair-thin."""
    text = prompt_len - num_image + steps
    image_px = min(256, num_image * max(1, min(8, 256 // max(1, num_image))))
    per_text = int(np.clip(384 // max(1, text), 8, 16))
    image = np.arange(image_px) * num_image // image_px
    prompt = np.repeat(np.arange(num_image, prompt_len), per_text)
    answer = np.repeat(np.arange(prompt_len, prompt_len + steps), per_text)
    line = np.full(2, SEPARATOR)
    return np.concatenate([image, line, prompt] + ([line, answer] if steps else []))


def mask_picture(cfg, prompt_len: int, steps: int, sliding: bool) -> np.ndarray:
    """uint8[H, W, 3]: the attention mask of the traced sequence, rows = queries, columns =
    keys, pure white where a query may attend, dark where it may not; a blue line between
    image and text, an orange one between prompt and generated tokens; labels on the margins."""
    slots = Slots.full(1, prompt_len).append(steps)
    m = slots.masks(cfg)["sliding_attention" if sliding else "full_attention"][0]
    axis = mask_axis(cfg.num_image_tokens, prompt_len, steps)
    cells = np.where(m[np.ix_(np.maximum(axis, 0), np.maximum(axis, 0))][..., None],
                     np.array(ALLOWED, np.uint8), np.array(MASKED, np.uint8))
    where = np.flatnonzero(axis == SEPARATOR)
    for at, color in zip(where[::2], (IMAGE_LINE, ANSWER_LINE)):
        cells[at:at + 2, :] = color
        cells[:, at:at + 2] = color
    top, left = MASK_MARGIN
    out = Image.new("RGB", (left + cells.shape[1] + 1, top + cells.shape[0] + 1), (255, 255, 255))
    out.paste(Image.fromarray(cells), (left, top))
    draw, fnt = ImageDraw.Draw(out), drawing.font(12)
    draw.rectangle((left - 1, top - 1, left + cells.shape[1], top + cells.shape[0]), outline=(150, 150, 150))
    bounds = [0, *where[::2], len(axis)]
    for name, a, b in zip(("image", "prompt", "answer"), bounds[:-1], bounds[1:]):
        mid = (a + b) / 2
        if draw.textlength(name, font=fnt) < b - a:  # a column label only where it fits
            drawing.text_at(draw, (left + mid, 4), name, fnt, align=0.5)
        drawing.text_at(draw, (left - 6, top + mid - 7), name, fnt, align=1.0)
    return np.asarray(out)


def _titled(panel: np.ndarray, title: str, size: int = 14) -> np.ndarray:
    """The panel with `title` in black on a white strip above it."""
    out = Image.new("RGB", (panel.shape[1], panel.shape[0] + size + 8), (255, 255, 255))
    out.paste(Image.fromarray(panel), (0, size + 8))
    drawing.text_at(ImageDraw.Draw(out), (4, 4), title, drawing.font(size))
    return np.asarray(out)


def _cells(v: np.ndarray, side: int) -> np.ndarray:
    """A g x g map enlarged to side x side pixels, nearest cells (what each patch covers)."""
    g = v.shape[0]
    idx = np.arange(side) * g // side
    return v[np.ix_(idx, idx)]


def heat_figure(view: np.ndarray, maps: list[np.ndarray], titles: list[str], top: float,
                heading: str, caption: str, per_row: int = 6) -> np.ndarray:
    """uint8 figure: `heading`, then the image in colour and each map (scaled by `top`) over
    the dimmed image, each panel titled, rows of `per_row`; a colour bar 0 .. `top` below."""
    side = view.shape[0]
    panels = [_titled(view, "the image")]
    for v, t in zip(maps, titles):
        scaled = np.asarray(v) / top if top > 0 else np.zeros_like(v)
        panels.append(_titled(drawing.heat_over(view, _cells(scaled, side)), t))
    gap, ph, pw = 6, panels[0].shape[0], side
    cols = min(per_row, len(panels))
    rows = -(-len(panels) // cols)
    bar = np.asarray(drawing.colour_bar(min(cols * (pw + gap) - gap, 384), top, caption))
    width, fnt = cols * (pw + gap) - gap + 8, drawing.font(15)
    lines = drawing.wrap(ImageDraw.Draw(Image.new("RGB", (1, 1))), heading, fnt, width - 8)
    head = 10 + 20 * len(lines)
    fig = Image.new("RGB", (width, head + rows * (ph + gap) + bar.shape[0] + 6), (255, 255, 255))
    draw = ImageDraw.Draw(fig)
    for i, line in enumerate(lines):
        drawing.text_at(draw, (4, 6 + 20 * i), line, fnt)
    for k, p in enumerate(panels):
        fig.paste(Image.fromarray(p), (4 + (k % cols) * (pw + gap), head + (k // cols) * (ph + gap)))
    fig.paste(Image.fromarray(bar), (4, head + rows * (ph + gap)))
    return np.asarray(fig)


def write_pngs(pipe, trace, rgb, folder, side: int = 192) -> list[Path]:
    """Plain pictures: per generated token the rollout to the pixels and each layer's mean
    attention (one figure each, titled, with a colour bar), the attention mask, the boxes."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--png {folder}: cannot create the folder ({e.strerror})") from None
    resample = Image.NEAREST if 2 * rgb.shape[0] <= side else Image.BICUBIC
    view = np.asarray(Image.fromarray(rgb).resize((side, side), resample))
    att = analysis.image_attention(trace)
    through = "vision.blocks.0.attn.hook_pattern" in trace
    pix = analysis.pixel_rollout(trace) if through else analysis.decoder_rollout(trace)[-1]
    what = "rollout through the decoder and SigLIP" if through else "rollout through the decoder"
    steps = trace["decoder.blocks.0.attn.hook_pattern"].shape[-1] - trace.prompt_len
    tokens = [pipe.processor.decode([int(i)], skip_special_tokens=False) for i in trace.token_ids]
    written = []
    for t, tok in enumerate(tokens):
        p = folder / f"token{t:02d}_rollout.png"
        Image.fromarray(heat_figure(view, [pix[t]], ["rollout"], float(pix[t].max()),
                                    f"token {t} {tok!r}: attention {what}, onto each image patch",
                                    "share of the token's attention, per patch")).save(p)
        q = folder / f"token{t:02d}_attention_by_layer.png"
        Image.fromarray(heat_figure(view, list(att[:, t]), [f"layer {l}" for l in range(att.shape[0])],
                                    float(att[:, t].max()),
                                    f"token {t} {tok!r}: attention to each image patch, mean of heads",
                                    "attention weight (one scale for all layers)")).save(q)
        written += [p, q]
    m = folder / "mask_full.png"
    Image.fromarray(mask_picture(pipe.cfg, trace.prompt_len, steps, False)).save(m)
    b = folder / "boxes.png"
    draw_objects(Image.fromarray(view), parse_objects(trace.text, side, side)).save(b)
    return written + [m, b]
