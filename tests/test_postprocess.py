"""Detection / segmentation answers -> boxes: golden values and the validity rules."""

import numpy as np
import pytest
from PIL import Image

from npgemma.generation.postprocess import DetectedObject, draw_objects, parse_objects


def test_two_detections_golden_boxes():
    text = "<loc0256><loc0128><loc0768><loc0512> cat ; <loc0000><loc0000><loc1023><loc1023> big dog"
    cat, dog = parse_objects(text, width=640, height=480)
    assert cat.label == "cat" and cat.bins == (256, 128, 768, 512)
    # x from bins 128..512 of 640 px, y from 256..768 of 480 px, / 1024
    assert cat.box == pytest.approx((80.0, 120.0, 320.0, 360.0))
    assert dog.label == "big dog" and dog.seg_codes is None
    assert dog.box == pytest.approx((0.0, 0.0, 1023 / 1024 * 640, 1023 / 1024 * 480))


def test_divisor_1023_maps_the_last_bin_to_the_edge():
    (obj,) = parse_objects("<loc0000><loc0000><loc1023><loc1023> x", 100, 50, divisor=1023)
    assert obj.box == pytest.approx((0.0, 0.0, 100.0, 50.0))


def test_segmentation_codes_are_kept_in_order():
    codes = list(range(100, 116))
    text = "<loc0010><loc0020><loc0030><loc0040>" + "".join(f"<seg{c:03d}>" for c in codes) + " wheel"
    (obj,) = parse_objects(text, 1024, 1024)
    assert obj.seg_codes == tuple(codes) and obj.label == "wheel"
    assert obj.box == pytest.approx((20.0, 10.0, 40.0, 30.0))


@pytest.mark.parametrize("text", [
    "<loc0500><loc0100><loc0400><loc0200> upside down",   # y_max < y_min
    "<loc0100><loc0300><loc0200><loc0300> zero width",    # x_max == x_min
    "<loc0100><loc0300><loc0200> three locs only",
    "a cat sitting on a mat",
    "",
])
def test_invalid_or_absent_boxes_are_dropped(text):
    assert parse_objects(text, 10, 10) == []


def test_draw_marks_the_box_pixels():
    img = Image.fromarray(np.zeros((40, 40, 3), np.uint8))
    obj = DetectedObject("", (10.0, 10.0, 30.0, 30.0), (256, 256, 768, 768))
    out = np.array(draw_objects(img, [obj], colors=[(255, 0, 0)]))
    assert tuple(out[10, 20]) == (255, 0, 0) and tuple(out[20, 20]) == (0, 0, 0)
    assert np.array(img).sum() == 0  # the input is not modified


# ---- legible drawings: judged from the drawn pixels, with WCAG 2's formulas written out here --

def _wcag_luminance(rgb) -> float:
    """WCAG 2.x relative luminance (https://www.w3.org/TR/WCAG21/#dfn-relative-luminance)."""
    out = 0.0
    for c, weight in zip(rgb, (0.2126, 0.7152, 0.0722)):
        c = c / 255
        out += weight * (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4)
    return out


def _wcag_contrast(a, b) -> float:
    hi, lo = sorted((_wcag_luminance(a), _wcag_luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def _label_contrast(out: np.ndarray, fill) -> tuple[float, int]:
    """(contrast of the label's text against its box, text pixels): the label box is the
    bounding box of the pixels exactly `fill` above the object's box; text pixels are the
    others inside it, judged by the one farthest in luminance from the fill."""
    ys, xs = np.nonzero((out == np.array(fill, np.uint8)).all(-1))
    inside = out[ys.min():ys.max() + 1, xs.min():xs.max() + 1].reshape(-1, 3)
    text = inside[(inside != np.array(fill, np.uint8)).any(-1)]
    far = max(text.tolist(), key=lambda c: abs(_wcag_luminance(c) - _wcag_luminance(fill)))
    return _wcag_contrast(far, fill), len(text)


@pytest.mark.parametrize("fill", [(0, 229, 255), (255, 64, 255), (41, 121, 255), (255, 255, 255),
                                  (90, 90, 90), (128, 20, 20), (255, 200, 0)])
@pytest.mark.parametrize("background", [0, 110, 255])
def test_label_text_contrasts_with_its_box(fill, background):
    """On any background, the label sits on a box of the object's colour and its text reaches
    WCAG's 4.5:1 against it (black or white, by luminance)."""
    img = Image.fromarray(np.full((256, 256, 3), background, np.uint8))
    obj = DetectedObject("star", (60.0, 100.0, 200.0, 200.0), (400, 240, 800, 800))
    out = np.array(draw_objects(img, [obj], colors=[fill]))[:100]   # above the box: the label
    ratio, text_pixels = _label_contrast(out, fill)
    assert ratio >= 4.5 and text_pixels >= 30


def test_each_object_its_own_colour_and_lines_grow_with_the_image():
    objs = [DetectedObject("a", (100.0, 100.0, 400.0, 400.0), (0, 0, 1, 1)),
            DetectedObject("b", (500.0, 500.0, 900.0, 900.0), (0, 0, 1, 1))]
    out = np.array(draw_objects(Image.fromarray(np.zeros((1024, 1024, 3), np.uint8)), objs))
    a, b = tuple(out[250, 100]), tuple(out[700, 500])   # each box's left edge, mid-height
    assert a != b and max(a) > 0 and max(b) > 0
    row = out[250, 95:130]
    assert (row == np.array(a)).all(-1).sum() >= 6   # 8 px at 1024 px (2 px at 256)
    one = [DetectedObject("a", (50.0, 50.0, 200.0, 200.0), (0, 0, 1, 1))]
    small = np.array(draw_objects(Image.fromarray(np.zeros((256, 256, 3), np.uint8)), one))
    assert (small[120, 45:60] == np.array(a)).all(-1).sum() == 2


def test_cli_objects_are_in_original_image_pixels(tmp_path):
    from npgemma.cli.generate import _objects

    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((100, 300, 3), np.uint8)).save(path)  # H=100, W=300
    drawn = tmp_path / "boxes.png"
    (obj,) = _objects(str(path), "<loc0512><loc0256><loc1024><loc0768> car", str(drawn))
    assert obj["label"] == "car" and obj["box"] == pytest.approx([75.0, 50.0, 225.0, 100.0])
    assert Image.open(drawn).size == (300, 100)


def test_cli_json_has_objects_and_draw_writes_an_image(tmp_path, capsys):
    import json

    from npgemma.cli import main
    from npgemma.synthetic.random_model import write_demo

    model, image = write_demo(tmp_path / "demo")
    drawn = tmp_path / "out.png"
    rc = main(["generate", "--model", str(model), "--image", str(image), "--prompt", "detect cat",
               "--max-new-tokens", "3", "--json", "--draw", str(drawn)])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and isinstance(out["objects"], list) and drawn.is_file()


# ---- masks -----------------------------------------------------------------------------------

from npgemma.generation.postprocess import mask_in_image, mask_to_rle  # noqa: E402


def _rle_decode(rle):
    """An independent reading of COCO's uncompressed RLE: alternate 0/1 runs, column-major."""
    h, w = rle["size"]
    flat, value = [], False
    for run in rle["counts"]:
        flat += [value] * run
        value = not value
    assert len(flat) == h * w
    return np.array(flat, bool).reshape((w, h)).T


def test_rle_golden_column_major():
    mask = np.array([[0, 1, 1], [0, 0, 1]], bool)     # columns: (0,0) (1,0) (1,1)
    assert mask_to_rle(mask) == {"size": [2, 3], "counts": [2, 1, 1, 2]}
    assert mask_to_rle(np.ones((2, 2), bool))["counts"] == [0, 4]   # starts with an empty 0-run
    assert mask_to_rle(np.zeros((3, 1), bool))["counts"] == [3]


@pytest.mark.parametrize("seed", range(5))
def test_rle_round_trips_through_an_independent_decoder(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((int(rng.integers(1, 30)), int(rng.integers(1, 30)))) < rng.random()
    rle = mask_to_rle(mask)
    assert (_rle_decode(rle) == mask).all()
    try:
        from pycocotools import mask as coco
    except ImportError:
        return
    compressed = coco.frPyObjects(rle, *rle["size"])
    assert (coco.decode(compressed).astype(bool) == mask).all()


def test_mask_goes_into_the_truncated_box_and_thresholds_at_zero():
    full = mask_in_image(np.full((64, 64), 0.3, np.float32), (10.7, 5.2, 30.9, 20.99), 40, 30)
    assert full.shape == (30, 40) and full.sum() == (30 - 10) * (20 - 5)
    assert full[5:20, 10:30].all()                       # int() truncates both corners
    assert not mask_in_image(np.full((64, 64), -1e-3, np.float32), (0, 0, 40, 30), 40, 30).any()
    left = np.where(np.arange(64) < 32, 1.0, -1.0).astype(np.float32)[None].repeat(64, 0)
    got = mask_in_image(left, (0, 0, 20, 10), 40, 30)    # left half of a 20-wide box
    assert got[:10, :10].all() and not got[:10, 10:].any() and not got[10:].any()
    assert not mask_in_image(left, (5.5, 3, 5.9, 9), 40, 30).any()  # empty after int()


def test_parse_objects_decodes_masks_of_seg_answers_only():
    text = ("<loc0000><loc0000><loc0512><loc0512>" + "<seg001>" * 16 + " cat ; "
            "<loc0512><loc0512><loc1023><loc1023> dog")
    calls = []

    def decode(codes):
        calls.append(codes.copy())
        return np.ones((len(codes), 64, 64), np.float32)

    cat, dog = parse_objects(text, 64, 32, decode_masks=decode)
    assert len(calls) == 1 and calls[0].tolist() == [[1] * 16]
    assert cat.mask.shape == (32, 64) and cat.mask[:16, :32].all() and cat.mask.sum() == 16 * 32
    assert dog.mask is None and dog.as_dict()["mask"] is None
    assert _rle_decode(cat.as_dict()["mask"]).tolist() == cat.mask.tolist()


def test_draw_paints_the_mask_translucently():
    img = Image.fromarray(np.full((40, 40, 3), 100, np.uint8))
    mask = np.zeros((40, 40), bool)
    mask[12:28, 12:28] = True
    obj = DetectedObject("", (10.0, 10.0, 30.0, 30.0), (256, 256, 768, 768), (0,) * 16, mask)
    out = np.array(draw_objects(img, [obj], colors=[(255, 0, 0)], alpha=0.5))
    inside = out[14:26, 14:26].reshape(-1, 3).tolist()  # within the mask, off its solid edge
    assert (178, 50, 50) in map(tuple, inside)           # 0.5 · 100 + 0.5 · (255, 0, 0), rounded
    assert (255, 0, 0) in map(tuple, inside)             # and stripes in the full colour
    assert {tuple(c) for c in inside} <= {(178, 50, 50), (255, 0, 0)}
    assert tuple(out[5, 5]) == (100, 100, 100) and tuple(out[10, 20]) == (255, 0, 0)
