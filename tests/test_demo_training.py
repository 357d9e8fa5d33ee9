"""Training the demo model (`npgemma.demo.train`): the loss falls, a resumed run continues exactly,
the targets score only answer tokens, and the folder it writes loads in npgemma."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from npgemma.demo import scenes  # noqa: E402
from npgemma.demo.bundle import demo_config  # noqa: E402
from npgemma.demo.train import Trainer, draw_examples, encode_batch, parse_args  # noqa: E402

TINY = ["--hidden-size", "32", "--layers", "2", "--vision-layers", "1", "--batch", "8",
        "--warmup", "5", "--lr", "3e-3", "--steps", "40"]


def _trainer(tmp_path, *extra):
    args = parse_args([*TINY, "--out", str(tmp_path), *extra])
    return Trainer(demo_config(hidden_size=32, layers=2, vision_layers=1), args, torch.device("cpu"))


def test_loss_falls(tmp_path):
    torch.manual_seed(0)
    trainer = _trainer(tmp_path)
    losses = [trainer.train_step() for _ in range(40)]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def test_resume_continues_exactly(tmp_path):
    straight = _trainer(tmp_path / "a")
    for _ in range(6):
        straight.train_step()
    first = _trainer(tmp_path / "b")
    for _ in range(4):
        first.train_step()
    first.save(tmp_path / "b")
    resumed = _trainer(tmp_path / "b")
    resumed.load(tmp_path / "b" / "state.pt")
    assert resumed.step == 4
    for _ in range(2):
        resumed.train_step()
    for key, value in straight.flat.items():
        torch.testing.assert_close(resumed.flat[key], value, rtol=0, atol=0, msg=key)


def test_targets_are_the_answer_and_eos_only(tmp_path):
    trainer = _trainer(tmp_path)
    rng = np.random.default_rng(3)
    examples = draw_examples(rng, 4)
    batch = encode_batch(trainer.processor, trainer.cfg, examples, "cpu")
    tok = trainer.processor.tokenizer
    for row, (_, prompt, answer) in enumerate(examples):
        scored = batch.targets[row][batch.targets[row] != -100].tolist()
        expected = tok.encode(answer, add_special_tokens=False).ids + [trainer.cfg.eos_token_id]
        assert scored == expected, (prompt, answer)
        # The prefix (image, <bos>, prompt, "\n") is bidirectional; the answer is causal.
        n_prefix = len(trainer.processor.encode_prompt(prompt))
        full = batch.masks["full_attention"][row]
        assert full[:n_prefix, :n_prefix].all()
        assert not full[n_prefix, n_prefix + 1:].any()


def test_saved_folder_loads_and_generates(tmp_path):
    import npgemma

    trainer = _trainer(tmp_path)
    trainer.train_step()
    trainer.save(tmp_path)
    pipe = npgemma.load(tmp_path / "model")
    scene = scenes.draw_scene(np.random.default_rng(0))
    out = pipe.generate(scene.image, "caption en", max_new_tokens=3)
    assert len(out.token_ids) <= 3
    # The numpy reference and the torch weights the trainer holds compute the same logits.
    ids = pipe.processor(scene.image, "caption en").input_ids
    ours = pipe.logits(scene.image, "caption en")
    tpipe = npgemma.load(tmp_path / "model", backend="torch")
    np.testing.assert_allclose(tpipe.logits(scene.image, "caption en"), ours, rtol=1e-4, atol=1e-4)
    assert ours.shape[0] == int((ids != pipe.cfg.image_token_index).sum())


def test_ship_writes_the_weights_in_bfloat16_with_the_step(tmp_path):
    """`python -m npgemma.demo.ship`: the same weights rounded to bf16, the step kept, loadable."""
    import ml_dtypes
    from safetensors import safe_open

    import npgemma
    from npgemma.checkpoint.weights import flatten
    from npgemma.demo.ship import main as ship_main

    trainer = _trainer(tmp_path / "run")
    trainer.train_step()
    trainer.save(tmp_path / "run")
    assert ship_main([str(tmp_path / "run" / "model"), "--to", str(tmp_path / "shipped")]) == 0
    with safe_open(str(tmp_path / "shipped" / "model.safetensors"), "np") as f:
        assert f.metadata()["npgemma_demo_step"] == "1"
    full = flatten(npgemma.load(tmp_path / "run" / "model").params)
    low = flatten(npgemma.load(tmp_path / "shipped", dtype="bfloat16").params)
    assert full.keys() == low.keys()
    for k in full:
        np.testing.assert_array_equal(low[k].astype(np.float32),
                                      full[k].astype(ml_dtypes.bfloat16).astype(np.float32))
    with pytest.raises(SystemExit, match="does not exist"):
        ship_main([str(tmp_path / "nowhere"), "--to", str(tmp_path / "x")])
