"""The README's Quick start: every command it shows prints what the README says under it, and
its detection example is right (boxes judged against the shapes measured from the image)."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from npgemma import cli
from npgemma.checkpoint.bundled import model_dir

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = (model_dir() / "model.safetensors").is_file()
pytestmark = pytest.mark.skipif(not SHIPPED, reason="the demo model is not in this checkout")


def _section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text[text.index("## Quick start"):text.index("## Use a real checkpoint")]


def _examples() -> list[tuple[str, str]]:
    """(command, the lines shown under it) for each `$ npgemma ...` line of a console block."""
    out = []
    for block in re.findall(r"```console\n(.*?)```", _section(), re.S):
        for command, shown in re.findall(r"^\$ (.*)\n((?:(?!\$ ).*\n)*)", block, re.M):
            if command.startswith("npgemma"):
                out.append((command, shown))
            else:
                assert shown == "", f"{command!r} shows output the test does not check"
    return out


def test_the_quick_start_shows_an_output_under_every_npgemma_command():
    mentioned = re.findall(r"^\$ (npgemma .*)$", _section(), re.M)
    assert [c for c, shown in _examples() if shown.strip()] == mentioned and len(mentioned) >= 4
    assert "```bash" not in _section().split("Run the tests")[0]   # every command is a console line


def _printed(capsys) -> list[str]:
    """stdout and stderr lines, without tqdm's progress bars."""
    out = capsys.readouterr()
    lines = re.split(r"[\r\n]", out.out + out.err)
    return [x.rstrip() for x in lines if x.strip() and not re.search(r"\d+%\|", x)]


@pytest.mark.parametrize("command, shown", _examples(),
                         ids=[" ".join(c.split()[1:2] + c.split()[-2:]) for c, _ in _examples()])
def test_each_command_prints_what_the_readme_shows(command, shown, tmp_path, monkeypatch, capsys):
    (tmp_path / "docs" / "images").mkdir(parents=True)
    shutil.copy(ROOT / "docs" / "images" / "scene.png", tmp_path / "docs" / "images" / "scene.png")
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(command)
    assert argv[0] == "npgemma"
    capsys.readouterr()
    assert cli.main(argv[1:]) == 0
    assert _printed(capsys) == [x.rstrip() for x in shown.strip().splitlines()]


def _shape_box(rgb: np.ndarray, colour) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 of a shape: the pixels near `colour` (sum of |differences| < 60), grown to
    every pixel off the background within 8 px of them (the anti-aliased rim is the shape's)."""
    rgb = rgb.astype(int)
    ys, xs = np.nonzero(np.abs(rgb - np.array(colour)).sum(-1) < 60)
    x0, y0, x1, y1 = max(0, xs.min() - 8), max(0, ys.min() - 8), xs.max() + 9, ys.max() + 9
    off = np.abs(rgb[y0:y1, x0:x1] - rgb[0, 0]).sum(-1) > 20     # the corner is background
    ys, xs = np.nonzero(off)
    return x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1


def _iou(a, b) -> float:
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return w * h / (area(a) + area(b) - w * h)


SCENE = ROOT / "docs" / "images" / "scene.png"
COLOURS = {"star": (250, 140, 20), "square": (40, 170, 60), "circle": (240, 210, 30)}


def _boxes(answer: str) -> list[tuple[str, tuple[float, ...]]]:
    """(label, x0, y0, x1, y1 in scene.png pixels) from `<loc>` quadruples (y0, x0, y1, x1 / 1024)."""
    h, w = np.asarray(Image.open(SCENE)).shape[:2]
    return [(label, (int(x0) * w / 1024, int(y0) * h / 1024, int(x1) * w / 1024, int(y1) * h / 1024))
            for y0, x0, y1, x1, label in
            re.findall(r"<loc(\d{4})><loc(\d{4})><loc(\d{4})><loc(\d{4})> (\w+)", answer)]


def test_the_detection_example_is_right_with_the_ious_the_readme_quotes():
    """Each box of the README's detect answer covers the shape of that name in scene.png (its
    pixels of that colour) with IoU >= 0.5, at the IoUs the text quotes."""
    command, shown = next((c, s) for c, s in _examples() if "detect" in c)
    rgb = np.asarray(Image.open(SCENE).convert("RGB"))
    found = _boxes(shown)
    assert [label for label, _ in found] == re.search(r'detect ([^"]+)"', command).group(1).split(" ; ")
    ious = [_iou(box, _shape_box(rgb, COLOURS[label])) for label, box in found]
    assert min(ious) >= 0.5
    quoted = re.search(r"\(IoU ([\d.]+), ([\d.]+)\)", _section()).groups()
    assert [f"{v:.2f}" for v in ious] == list(quoted)


def test_the_circle_misses_the_readme_admits_are_what_the_model_answers():
    """`detect circle` boxes the star, `detect circle ; star` boxes the square as the circle."""
    import npgemma

    said = " ".join(_section().split())
    assert "`detect circle` boxes the star and `detect circle ; star` the square" in said
    pipe = npgemma.load(None)
    rgb = np.asarray(Image.open(SCENE).convert("RGB"))
    star, square, circle = (_shape_box(rgb, COLOURS[k]) for k in ("star", "square", "circle"))
    (label, box), = _boxes(pipe.generate(str(SCENE), "detect circle").text)
    assert label == "circle" and _iou(box, star) >= 0.5 and _iou(box, circle) == 0
    pair = dict(_boxes(pipe.generate(str(SCENE), "detect circle ; star").text))
    assert _iou(pair["circle"], square) >= 0.5 and _iou(pair["circle"], circle) == 0


@pytest.mark.oracle
@pytest.mark.slow
def test_the_circle_miss_is_the_models_torch_and_transformers_agree():
    """The README calls the circle miss the trained model's answer: the torch backend and
    transformers 5.24 (on the same folder, same processed inputs) give the same tokens."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import npgemma
    from npgemma.generation.processing import load_image

    pipe, image = npgemma.load(None), load_image(str(SCENE))
    on_torch = npgemma.load(None, backend="torch")
    model = transformers.PaliGemmaForConditionalGeneration.from_pretrained(
        str(model_dir()), dtype=torch.float32, attn_implementation="eager").eval()
    for prompt in ("detect circle", "detect circle ; star"):
        ours = pipe.generate(image, prompt).token_ids
        assert on_torch.generate(image, prompt).token_ids == ours
        x = pipe.processor(image, prompt)
        with torch.no_grad():
            out = model.generate(input_ids=torch.from_numpy(x.input_ids[None]),
                                 pixel_values=torch.from_numpy(x.pixel_values[None]),
                                 token_type_ids=torch.from_numpy(x.token_type_ids[None]),
                                 attention_mask=torch.ones(1, len(x.input_ids), dtype=torch.long),
                                 max_new_tokens=32, do_sample=False)
        theirs = [t for t in out[0, len(x.input_ids):].tolist() if t != pipe.processor.eos_token_id]
        assert theirs == ours, prompt
