"""`--against keras-hub`: keras-hub's PaliGemma (Keras 3 on JAX), as its users run it:
`PaliGemmaCausalLM.from_preset(folder)` (its own Hugging Face converter; it sets no image
converter, so the one keras-hub's conversion scripts give its presets is set), its preprocessor
(the prompt ends in "\\n", as keras-hub's examples write it; the image as an RGB array, as
`keras.utils.load_img` gives it), the model's logits at the last prompt position, and
`generate` (greedy, its default sampler) for the answer: on the preprocessed inputs, so the
token ids come back as generated (a string answer re-tokenized drops a generated <pad> and
merges pieces: the ids it gives are not the ones the model picked).

Run by `npgemma/compare/remote.py` inside keras-hub's own environment (`--python`); imports
nothing of npgemma. `dtype="bfloat16"` (`--dtype`) loads it with dtype="bfloat16".
"""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")


def run(model_dir, image, prompt, max_new_tokens=8, dtype="float32"):
    import keras_hub

    dtype = "bfloat16" if dtype == "bfloat16" else "float32"
    lm = keras_hub.models.PaliGemmaCausalLM.from_preset(str(model_dir), dtype=dtype)
    pre, backbone = lm.preprocessor, lm.backbone
    if pre.image_converter is None:  # its HF loader sets none ("TODO: set image size")
        # The converter keras-hub's own PaliGemma conversion scripts build for its presets.
        size = backbone.image_size
        pre.image_converter = keras_hub.layers.PaliGemmaImageConverter(
            image_size=(size, size), scale=1.0 / 127.5, offset=-1)
    if isinstance(prompt, list):
        return _batch(lm, image, prompt, max_new_tokens)
    text = prompt + "\n"
    rgb = np.asarray(image.convert("RGB"), np.float32)[None]  # [1, H, W, 3], 0..255
    ids = np.asarray(pre.tokenizer(text)).reshape(-1)
    length = len(ids) + 1  # <bos> + the prompt
    x = pre.generate_preprocess({"images": rgb, "prompts": [text]}, sequence_length=length)
    logits = np.asarray(lm(x), np.float32)[0]  # [L_text, V]: the model itself, preprocessed
    room = pre.generate_preprocess({"images": rgb, "prompts": [text]},
                                   sequence_length=length + max_new_tokens)
    lm.preprocessor = None  # generate() then takes and gives token ids, not strings
    eos = pre.tokenizer.end_token_id
    out = lm.generate(room, stop_token_ids=[eos])
    tokens = []
    for t in np.asarray(out["token_ids"])[0][length:length + max_new_tokens].tolist():
        if t == eos:
            break
        tokens.append(int(t))
    image_ids = np.full(backbone.image_sequence_length, backbone.vocabulary_size, np.int64)
    token_ids = np.asarray(x["token_ids"], np.int64)[0][:length]
    return {"logits": logits[length - 1],  # the last prompt position: what the first token is read from
            "input_ids": np.concatenate([image_ids, token_ids]),
            "pixel_values": np.asarray(x["images"], np.float32)[0].transpose(2, 0, 1),
            "token_ids": tokens}


def _batch(lm, images, prompts, max_new_tokens):
    """A batch as keras-hub runs one: `generate_preprocess` pads each row on the right, its
    sampler starts every row at its own end. Each row's logits, ids, pixels and tokens."""
    pre, backbone = lm.preprocessor, lm.backbone
    texts = [p + "\n" for p in prompts]
    sizes = {im.size for im in images}  # keras takes one [B, H, W, 3] array: equal sizes only
    if len(sizes) != 1:
        raise NotImplementedError(f"keras-hub batches images of one size; these are {sorted(sizes)}")
    rgb = np.stack([np.asarray(im.convert("RGB"), np.float32) for im in images])
    lengths = [len(np.asarray(pre.tokenizer(t)).reshape(-1)) + 1 for t in texts]
    width = max(lengths) + max_new_tokens
    x = pre.generate_preprocess({"images": rgb, "prompts": texts}, sequence_length=width)
    logits = np.asarray(lm(x), np.float32)  # [B, width, V]
    lm.preprocessor = None
    eos = pre.tokenizer.end_token_id
    out = np.asarray(lm.generate(x, stop_token_ids=[eos])["token_ids"])
    image_ids = np.full(backbone.image_sequence_length, backbone.vocabulary_size, np.int64)
    rows = []
    for b, n in enumerate(lengths):
        tokens = []
        for t in out[b][n:n + max_new_tokens].tolist():
            if t == eos:
                break
            tokens.append(int(t))
        rows.append({"logits": logits[b, n - 1],
                     "input_ids": np.concatenate([image_ids, np.asarray(x["token_ids"])[b][:n]]),
                     "pixel_values": np.asarray(x["images"], np.float32)[b].transpose(2, 0, 1),
                     "token_ids": tokens})
    return rows
