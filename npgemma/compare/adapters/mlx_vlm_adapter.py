"""`--against mlx-vlm`: mlx-vlm's PaliGemma (MLX), as its users run it: `mlx_vlm.load(folder)`,
its processor (`prepare_inputs`), the model's forward for the prompt logits, and
`mlx_vlm.stream_generate` (temperature 0) for the greedy tokens and their log-probabilities.

Run by `npgemma/compare/remote.py` inside mlx-vlm's own environment (`--python`); imports
nothing of npgemma. `dtype="bfloat16"` (`--dtype`) casts the loaded weights (mlx-vlm keeps a
bf16 checkpoint's weights as stored either way).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np


def run(model_dir, image, prompt, max_new_tokens=8, dtype="float32"):
    import mlx.core as mx
    from mlx_vlm import load, stream_generate
    from mlx_vlm.prompt_utils import apply_chat_template
    from mlx_vlm.utils import prepare_inputs

    model, processor = load(str(model_dir))
    if dtype == "bfloat16":
        model.set_dtype(mx.bfloat16)
    if isinstance(prompt, list):
        return _batch(model, processor, image, prompt)
    text = apply_chat_template(processor, model.config, prompt, num_images=1)
    inputs = prepare_inputs(processor, images=[image], prompts=[text],
                            image_token_index=model.config.image_token_index)
    out = model(inputs["input_ids"], inputs["pixel_values"], mask=inputs["attention_mask"])
    logits = getattr(out, "logits", out)
    with tempfile.TemporaryDirectory() as tmp:  # stream_generate takes image paths
        path = os.path.join(tmp, "image.png")
        image.save(path)
        tokens, top = [], []
        for step in stream_generate(model, processor, text, image=[path],
                                    max_tokens=max_new_tokens, temperature=0.0):
            if step.token is None:
                continue
            tokens.append(int(step.token))
            if step.logprobs is not None:
                lp = np.asarray(step.logprobs.astype(mx.float32)).reshape(-1)
                best = np.argsort(-lp)[:20]
                top.append({int(i): float(lp[i]) for i in best})
    eos = getattr(model.config, "eos_token_id", 1)
    eos = eos if isinstance(eos, list) else [eos]
    tokens = [t for t in tokens if t not in eos][:max_new_tokens]  # EOS is not an answer token
    return {"logits": np.asarray(logits.astype(mx.float32))[0],
            "input_ids": np.asarray(inputs["input_ids"])[0],
            "pixel_values": np.asarray(inputs["pixel_values"].astype(mx.float32))[0],
            "token_ids": tokens, "top_logprobs": top[:len(tokens)] or None}


def _batch(model, processor, images, prompts):
    """A batch through `prepare_inputs` (left padding, its default) and one forward: each row's
    logits, ids and pixels at its own positions. (No tokens: `stream_generate` takes one input.)"""
    import mlx.core as mx
    from mlx_vlm.prompt_utils import apply_chat_template
    from mlx_vlm.utils import prepare_inputs

    texts = [apply_chat_template(processor, model.config, p, num_images=1) for p in prompts]
    inputs = prepare_inputs(processor, images=list(images), prompts=texts,
                            image_token_index=model.config.image_token_index)
    out = model(inputs["input_ids"], inputs["pixel_values"], mask=inputs["attention_mask"])
    logits = np.asarray(getattr(out, "logits", out).astype(mx.float32))
    ids, keep = np.asarray(inputs["input_ids"]), np.asarray(inputs["attention_mask"]).astype(bool)
    pixels = np.asarray(inputs["pixel_values"].astype(mx.float32))
    if pixels.shape[0] != len(prompts):
        raise ValueError(f"prepare_inputs gave {pixels.shape[0]} images for {len(prompts)} rows")
    return [{"logits": logits[b][keep[b]], "input_ids": ids[b][keep[b]],
             "pixel_values": pixels[b]} for b in range(len(prompts))]
