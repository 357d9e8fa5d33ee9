"""The demo's segmentation: scene masks, the `segment` task, the shipped VQ-VAE, fine-tuning."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from npgemma import vqvae
from npgemma.demo import scenes, tasks
from npgemma.generation.postprocess import mask_in_image, parse_objects


def _scene(seed):
    return scenes.draw_scene(np.random.default_rng(seed))


def test_masks_are_where_the_shapes_are_drawn():
    for seed in range(20):
        scene = _scene(seed)
        for obj, mask in zip(scene.objects, scene.masks):
            cover = scenes.object_coverage(obj)
            assert mask.dtype == bool and (mask == (cover > 0.5)).all()
            x1, y1, x2, y2 = obj.box
            assert not mask[:y1].any() and not mask[y2:].any() and not mask[:, :x1].any()
            full = cover == 1.0     # wholly covered pixels have exactly the shape's colour
            assert full.any() and (scene.image[full] == scenes.COLORS[obj.color]).all()
        assert not (scene.masks.sum(0) > 1).any()   # shapes never overlap


def test_masks_use_no_randomness():
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    a, _ = scenes.draw_scene(rng_a), scenes.draw_scene(rng_b)
    _ = a.masks  # drawing the masks of one scene ...
    assert rng_a.random() == rng_b.random()  # ... draws nothing from its generator


def test_segment_answer_is_box_codes_label_and_decodes_to_the_mask():
    rng = np.random.default_rng(11)
    ious = []
    for _ in range(10):
        scene = scenes.draw_scene(rng)
        prompt, answer = tasks.make_task(scene, "segment", rng)
        (obj,) = parse_objects(answer, 64, 64)
        truth = [o for o in scene.objects if o.shape == obj.label][0]
        assert prompt == f"segment {truth.shape}" and obj.box == truth.box
        assert answer.startswith(tasks.loc_tokens(truth.box)) and len(obj.seg_codes) == 16
        from npgemma.demo.masks import demo_vae

        pred = mask_in_image(vqvae.decode(demo_vae(), [obj.seg_codes])[0], obj.box, 64, 64)
        want = scenes.object_mask(truth)
        ious.append((pred & want).sum() / (pred | want).sum())
    assert np.mean(ious) > 0.85, ious


def test_shipped_vae_is_small_and_in_the_vae_oid_layout():
    from npgemma.checkpoint.bundled import vae_path
    from npgemma.checkpoint.vae_file import load_vae
    from npgemma.synthetic.vae import vae_shapes

    vae = load_vae(vae_path())
    assert vae_path().stat().st_size < 400_000 and vae["_vq_vae._embedding"].shape[0] == 128
    assert set(vae) == set(vae_shapes())


def test_task_mix_option():
    from npgemma.demo.train import parse_mix

    assert parse_mix("segment=0.5,detect=0.5") == {"segment": 0.5, "detect": 0.5}
    for bad in ("segmnet=1", "segment", "segment=-1", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_mix(bad)


def test_fine_tune_from_a_model_folder_lowers_the_segment_loss(tmp_path):
    """--init-from loads the folder's weights (not fresh ones); a few steps on `segment` lower
    the loss on a fixed batch."""
    torch = pytest.importorskip("torch")
    from npgemma.checkpoint.config_json import config_from_dict
    from npgemma.demo import train as T
    from npgemma.demo.bundle import demo_config, write_model

    cfg_dict = demo_config(hidden_size=32, layers=1, vision_layers=1)
    start = T.init_weights(config_from_dict(cfg_dict), seed=5)
    write_model(tmp_path / "model", cfg_dict, start)
    args = T.parse_args(["--init-from", str(tmp_path / "model"), "--tasks", "segment=1", "--batch", "4",
                         "--steps", "5", "--warmup", "1", "--lr", "3e-3", "--seed", "1"])
    cfg, init = T.init_from(args.init_from)
    trainer = T.Trainer(cfg, args, torch.device("cpu"), init)
    key = "language_model.layers.0.mlp.down_proj.weight"
    assert np.array_equal(trainer.numpy_weights()[key], start[key])   # not init_weights(seed=1)
    fixed = T.encode_batch(trainer.processor, trainer.cfg,
                           T.draw_examples(np.random.default_rng(99), 4, mix={"segment": 1}), "cpu")
    with torch.no_grad():
        before = float(T.loss_fn(trainer.params, trainer.cfg, fixed))
    for _ in range(5):
        trainer.train_step()
    with torch.no_grad():
        after = float(T.loss_fn(trainer.params, trainer.cfg, fixed))
    assert after < before - 0.5, (before, after)


def test_demo_picture_is_large_crisp_coloured_per_object_with_a_legend():
    """`npgemma demo --out`: the 64-px scene at 512 px in whole pixel blocks, each object's box
    in its own colour, the segmented object striped, and a legend strip under the scene."""
    import npgemma
    from npgemma.demo.run import SHOW_SCALE, picture

    pipe = npgemma.load(None)               # the bundled model and its VQ-VAE; nothing generated
    rng = np.random.default_rng([15, 0x5EED])
    scene = scenes.draw_scene(rng)
    shapes = [o.shape for o in scene.objects]
    detect = ("detect " + " ; ".join(shapes), tasks.detect_answer(scene, shapes))
    segment = (f"segment {shapes[0]}", tasks.make_task(scene, "segment", rng)[1])
    if not segment[1].endswith(shapes[0]):   # make_task picked another shape: ask for that one
        segment = (f"segment {segment[1].split('>')[-1].strip()}", segment[1])
    pic = np.asarray(picture(pipe, scene, [detect[1], segment[1]], [detect[0], segment[0]]))
    side = 64 * SHOW_SCALE
    assert side >= 512 and pic.shape[1] == side and pic.shape[0] > side + 40
    crisp = np.kron(scene.image, np.ones((SHOW_SCALE, SHOW_SCALE, 1), np.uint8))
    assert (pic[:side] == crisp).all(-1).mean() > 0.6          # untouched pixels: whole blocks
    edges = {tuple(pic[(o.box[1] + o.box[3]) * SHOW_SCALE // 2, o.box[0] * SHOW_SCALE])
             for o in scene.objects}
    assert len(edges) == len(scene.objects)                     # one colour per object
    legend = pic[side:]
    assert (legend.sum(-1) < 150).sum() > 200                   # the legend's text
    from npgemma.generation.drawing import PALETTE

    k = shapes.index(segment[0].split()[-1])                    # the segmented object ...
    x0, y0, x1, y1 = (v * SHOW_SCALE for v in scene.objects[k].box)
    colour = np.array(PALETTE[k], np.uint8)
    assert (pic[y0 + 8:y1 - 8, x0 + 8:x1 - 8] == colour).all(-1).sum() > 100   # ... striped
    assert (legend == colour).all(-1).sum() > 20                # and its swatch in the legend
