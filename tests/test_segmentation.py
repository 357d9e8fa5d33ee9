"""Segmentation through the public API and the CLI: `npgemma.load(..., vae=PATH)`, `--vae`."""

from __future__ import annotations

import json

import numpy as np
import pytest

import npgemma
from npgemma.cli import main
from npgemma.compare.tolerances import assert_close
from npgemma.errors import InputError
from npgemma.synthetic.random_model import write_demo
from npgemma.synthetic.vae import FULL, write_vae


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    model, image = write_demo(root / "demo")
    write_vae(root / "vae-oid.npz", seed=5, **FULL)   # full size: 128 × 512 codebook
    return model, image, root / "vae-oid.npz"


def test_full_size_vae_decodes_the_same_through_both_backends(demo):
    pytest.importorskip("torch")
    model, _, vae = demo
    codes = np.random.default_rng(0).integers(0, 128, size=(3, 16))
    ref = npgemma.load(model, vae=vae).decode_masks(codes)
    got = npgemma.load(model, backend="torch", vae=vae).decode_masks(codes)
    assert ref.shape == (3, 64, 64)
    assert_close(got, ref, "vqvae", what="full-size vae-oid layout, numpy vs torch backend")


def test_objects_get_masks_from_the_loaded_vae(demo):
    model, _, vae = demo
    pipe = npgemma.load(model, vae=vae)
    text = "<loc0100><loc0200><loc0900><loc0800>" + "".join(f"<seg{c:03d}>" for c in range(16)) + " x"
    (obj,) = pipe.objects(text, width=50, height=40)
    want = pipe.decode_masks(np.arange(16)[None])[0]
    from npgemma.generation.postprocess import mask_in_image

    assert (obj.mask == mask_in_image(want, obj.box, 50, 40)).all()  # wiring: decode, then place
    assert not obj.mask[:, :9].any() and not obj.mask[36:].any()   # nothing outside the box


def test_without_a_vae_the_codes_stay_codes_and_decoding_says_why(demo):
    model, _, _ = demo
    pipe = npgemma.load(model)
    (obj,) = pipe.objects("<loc0100><loc0200><loc0900><loc0800>" + "<seg000>" * 16 + " x", 10, 10)
    assert obj.mask is None and obj.seg_codes == (0,) * 16
    with pytest.raises(InputError, match="no VQ-VAE is loaded: pass vae=PATH"):
        pipe.decode_masks(np.zeros((1, 16), np.int64))


def test_cli_vae_errors_are_one_line(demo, tmp_path, capsys):
    model, image, _ = demo
    np.savez(tmp_path / "bad.npz", **{"_vq_vae._embedding": np.zeros((128, 8), np.float32)})
    rc = main(["generate", "--model", str(model), "--image", str(image), "--prompt", "segment x",
               "--vae", str(tmp_path / "bad.npz"), "--max-new-tokens", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "bad.npz: missing key 'decoder.0.weight'" in err


def test_cli_json_objects_carry_an_rle_mask(demo, tmp_path, capsys, monkeypatch):
    """A segmentation answer (forced: the demo weights are random) comes back with its mask."""
    from npgemma.pipeline import Pipeline

    model, image, vae = demo
    answer = "<loc0000><loc0000><loc0512><loc0512>" + "<seg007>" * 16 + " x"
    monkeypatch.setattr(Pipeline, "generate", lambda self, *a, **k: npgemma.GenerateOutput(answer, []))
    assert main(["generate", "--model", str(model), "--image", str(image), "--prompt", "segment x",
                 "--json", "--vae", str(vae), "--draw", str(tmp_path / "m.png")]) == 0
    (obj,) = json.loads(capsys.readouterr().out)["objects"]
    assert obj["seg_codes"] == [7] * 16 and obj["mask"]["size"] == [64, 64]
    assert sum(obj["mask"]["counts"]) == 64 * 64 and (tmp_path / "m.png").is_file()
    # without --vae: boxes only, and a one-line note on stderr saying what to pass
    assert main(["generate", "--model", str(model), "--image", str(image), "--prompt", "segment x",
                 "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["objects"][0]["mask"] is None and "--vae vae-oid.npz" in out.err
