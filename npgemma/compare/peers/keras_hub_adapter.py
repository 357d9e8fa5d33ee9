"""`--against keras-hub`: keras-hub's PaliGemma (Keras 3 on JAX), as its users run it:
`PaliGemmaCausalLM.from_preset(folder)` (its own Hugging Face converter; it sets no image
converter, so the one keras-hub's conversion scripts give its presets is set), its preprocessor
(the prompt ends in "\\n", as keras-hub's examples write it; the image as an RGB array, as
`keras.utils.load_img` gives it), the model's logits at the last prompt position, and
`generate` (greedy, its default sampler) for the answer.

Run by `npgemma/compare/remote.py` inside keras-hub's own environment (`--python`); imports
nothing of npgemma. NPGEMMA_PEER_DTYPE "bfloat16" loads it with dtype="bfloat16".
"""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")


def run(model_dir, image, prompt, max_new_tokens=8):
    import keras_hub

    dtype = "bfloat16" if os.environ.get("NPGEMMA_PEER_DTYPE") == "bfloat16" else "float32"
    lm = keras_hub.models.PaliGemmaCausalLM.from_preset(str(model_dir), dtype=dtype)
    pre, backbone = lm.preprocessor, lm.backbone
    if pre.image_converter is None:  # its HF loader sets none ("TODO: set image size")
        # The converter keras-hub's own PaliGemma conversion scripts build for its presets.
        size = backbone.image_size
        pre.image_converter = keras_hub.layers.PaliGemmaImageConverter(
            image_size=(size, size), scale=1.0 / 127.5, offset=-1)
    text = prompt + "\n"
    rgb = np.asarray(image.convert("RGB"), np.float32)[None]  # [1, H, W, 3], 0..255
    ids = np.asarray(pre.tokenizer(text)).reshape(-1)
    length = len(ids) + 1  # <bos> + the prompt
    x = pre.generate_preprocess({"images": rgb, "prompts": [text]}, sequence_length=length)
    logits = np.asarray(lm(x), np.float32)[0]  # [L_text, V]: the model itself, preprocessed
    answer = lm.generate({"images": rgb, "prompts": [text]}, max_length=length + max_new_tokens,
                         strip_prompt=True)
    answer = answer[0] if isinstance(answer, (list, tuple)) else answer
    tokens = [int(t) for t in np.asarray(pre.tokenizer(answer)).reshape(-1)][:max_new_tokens]
    image_ids = np.full(backbone.image_sequence_length, backbone.vocabulary_size, np.int64)
    token_ids = np.asarray(x["token_ids"], np.int64)[0][:length]
    return {"logits": logits[length - 1],  # the last prompt position: what the first token is read from
            "input_ids": np.concatenate([image_ids, token_ids]),
            "pixel_values": np.asarray(x["images"], np.float32)[0].transpose(2, 0, 1),
            "token_ids": tokens}
