"""A stand-in PaliGemma implementation with deliberate faults, for the conformance suite's tests.

It is npgemma's own NumPy reference run the way a peer with one fault (or a pair) would run,
chosen by NPGEMMA_STANDIN_FAULT; `npgemma conform --python PYTHON --against THIS.py:run` runs
it in a subprocess, as it would run keras-hub or mlx-vlm in their own environments.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

import npgemma
from npgemma.compare.deviations import DEVIATIONS, deviated, deviated_config
from npgemma.compare.pixels import PIXEL_TRAPS, pixels_with
from npgemma.compare.reference import teacher_forced


def run(model_dir, image, prompt, max_new_tokens=8):
    """One input; or, for lists, a batch row by row (each row alone is what a correct batch
    gives), with fault "batch-first-image" running row 0's image for every row."""
    if isinstance(image, list):
        faults = os.environ.get("NPGEMMA_STANDIN_FAULT", "").split(",")
        if "no-batch" in faults:
            raise NotImplementedError("this stand-in takes one input at a time")
        images = [image[0]] * len(image) if "batch-first-image" in faults else image
        if "batch-shifted-features" in faults:  # mlx-vlm's merge: feature p for position p
            pipe = npgemma.load(model_dir)
            lengths = [len(pipe.processor(im, p).input_ids) for im, p in zip(image, prompt)]
            return [_shifted(max(lengths) - n, model_dir, im, p, max_new_tokens)
                    for n, im, p in zip(lengths, images, prompt)]
        return [run(model_dir, im, p, max_new_tokens) for im, p in zip(images, prompt)]
    faults = [f for f in os.environ.get("NPGEMMA_STANDIN_FAULT", "").split(",") if f]
    with contextlib.ExitStack() as stack:
        for f in faults:
            if f in DEVIATIONS:
                stack.enter_context(deviated(f))
        pipe = npgemma.load(model_dir)
        cfg = pipe.cfg
        if "head-dim-from-image-tokens" in faults and cfg.num_image_tokens != cfg.text_config.head_dim:
            raise ValueError(f"cannot reshape the attention weights for head_dim "
                             f"{cfg.num_image_tokens}")
        if "declines-gemma2" in faults and cfg.text_config.model_type == "gemma2":
            raise NotImplementedError("this stand-in has no Gemma 2")
        if "no-convert-rgb" in faults and image.mode != "RGB":
            raise ValueError("mean must have 1 elements if it is an iterable, got 3")
        pipe.cfg = deviated_config([f for f in faults if f in DEVIATIONS], cfg)
        traps = tuple(f for f in faults if f in PIXEL_TRAPS)
        if traps:
            pipe.processor.preprocess_image = lambda img: pixels_with(traps, img, pipe.processor)
        x = pipe.processor(image, prompt)
        tokens = pipe.generate(image, prompt, max_new_tokens=max_new_tokens).token_ids
        steps = teacher_forced(pipe.params, pipe.cfg, x.input_ids, x.pixel_values, tokens)
        logits = pipe.logits(image, prompt, positions=slice(None))
        if "vocab-cut" in faults:
            logits = logits[:, :cfg.image_token_index]
        return {"logits": logits, "input_ids": x.input_ids, "pixel_values": x.pixel_values,
                "token_ids": tokens, "step_logits": np.asarray(steps.step_logits[:len(tokens)])}


def _shifted(pad, model_dir, image, prompt, max_new_tokens):
    """One row as an implementation computes it that merges image feature p at padded position
    p: `pad` left pads move each image token `pad` features on, the last ones get zeros."""
    from npgemma.compare.batch import shifted_features
    from npgemma.compare.swap import swapped

    with swapped([shifted_features(pad)]):
        return run(model_dir, image, prompt, max_new_tokens)
