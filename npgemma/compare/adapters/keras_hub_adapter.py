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
    return _answer(_load(model_dir, dtype), image, prompt, max_new_tokens)


def run_gemma2(model_dir, image, prompt, max_new_tokens=8, dtype="float32"):
    """keras-hub's PaliGemma 2 as its own presets build it, not as its Hugging Face loader does
    (which builds Gemma 1 layers from any folder): Gemma-2's four norms, soft caps and sliding
    window (`use_sliding_window_attention`: every even layer, a two-way band) on the same
    weights. For a PaliGemma 2 case folder in the Hub's key layout; a probe of keras-hub's own
    window semantics (docs/conformance.md), not what `--against keras-hub` runs."""
    return _answer(_as_gemma2(_load(model_dir, dtype), model_dir), image, prompt, max_new_tokens)


def _load(model_dir, dtype):
    import keras_hub

    dtype = "bfloat16" if dtype == "bfloat16" else "float32"
    lm = keras_hub.models.PaliGemmaCausalLM.from_preset(str(model_dir), dtype=dtype)
    pre, backbone = lm.preprocessor, lm.backbone
    if pre.image_converter is None:  # its HF loader sets none ("TODO: set image size")
        # The converter keras-hub's own PaliGemma conversion scripts build for its presets.
        size = backbone.image_size
        pre.image_converter = keras_hub.layers.PaliGemmaImageConverter(
            image_size=(size, size), scale=1.0 / 127.5, offset=-1)
    return lm


def _as_gemma2(lm, model_dir):
    """The loaded (Gemma-1) model rebuilt with keras-hub's Gemma-2 options from config.json,
    every weight carried over by its path, the four norms read from the checkpoint (the loader
    puts post_attention_layernorm where Gemma 1 has its pre-MLP norm). keras-hub scales queries
    by head_dim^-0.5 or (hidden / heads)^-0.5 only: query_pre_attn_scalar picks the first it
    equals, head_dim when it equals neither (keras-hub's 3B and 10B presets: head_dim)."""
    import json
    from pathlib import Path

    import keras_hub
    from safetensors.numpy import load_file

    text = json.loads((Path(model_dir) / "config.json").read_text())["text_config"]
    if text.get("model_type") != "gemma2":
        raise NotImplementedError("run_gemma2 takes a PaliGemma 2 checkpoint")
    old = lm.backbone
    heads = text["num_attention_heads"]
    scalar = text.get("query_pre_attn_scalar", text["head_dim"])
    config = old.get_config() | dict(
        use_post_ffw_norm=True, use_post_attention_norm=True,
        attention_logit_soft_cap=text.get("attn_logit_softcapping"),
        final_logit_soft_cap=text.get("final_logit_softcapping"),
        use_sliding_window_attention=True, sliding_window_size=text["sliding_window"],
        query_head_dim_normalize=scalar == text["head_dim"] or scalar != text["hidden_size"] // heads)
    new = keras_hub.models.PaliGemmaBackbone.from_config(config)
    by_path = {v.path: v for v in new.weights}
    for v in old.weights:
        by_path[v.path].assign(v.value)
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if len(files) != 1:
        raise NotImplementedError("run_gemma2 reads one model.safetensors")
    weights = load_file(str(files[0]))
    for i, layer in enumerate(new.transformer_layers):
        hf = f"language_model.model.layers.{i}."
        layer.pre_ffw_norm.scale.assign(weights[hf + "pre_feedforward_layernorm.weight"])
        layer.post_attention_norm.scale.assign(weights[hf + "post_attention_layernorm.weight"])
        layer.post_ffw_norm.scale.assign(weights[hf + "post_feedforward_layernorm.weight"])
    return keras_hub.models.PaliGemmaCausalLM(backbone=new, preprocessor=lm.preprocessor)


def _answer(lm, image, prompt, max_new_tokens):
    pre, backbone = lm.preprocessor, lm.backbone
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
