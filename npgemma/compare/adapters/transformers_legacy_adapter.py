"""A past release of transformers (4.41 on) through the adapter contract, as its users ran it:
`PaliGemmaProcessor.from_pretrained` and `PaliGemmaForConditionalGeneration.from_pretrained`
in float32 (or bfloat16) with eager attention, the model's logits and hidden states at every
prompt position, greedy `generate` for the answer and the logits each token was picked from.

    bash npgemma/compare/adapters/setup_transformers_legacy.sh 4.44.2
    npgemma conform --against npgemma/compare/adapters/transformers_legacy_adapter.py:run \\
        --python /work/peers/tf-4.44.2/bin/python

Run by `npgemma/compare/remote.py` inside that release's own environment; imports nothing of
npgemma. What differs between releases, and how it is met here:
  * the dtype keyword of `from_pretrained`: `torch_dtype` before 4.56, `dtype` after;
  * the per-step logits of `generate`: `output_logits` (4.38 on), else `output_scores`
    (the same numbers for plain greedy search: no logits processor is set);
  * grey images: `do_convert_rgb=True`, as npgemma's own `--against transformers` passes it
    (the Hub's preprocessor_config.json says null, with which a grey image is refused);
  * a batch: the tokenizer pads on the left, each row comes back as it would alone (its
    padding dropped, its tokens up to the first EOS).
The dtype comes as a keyword (`dtype=`, npgemma's `--dtype`; "float32" when not given).
Weights the release cannot find in the file (a key layout newer than it) are an error here,
not the warning and random weights transformers gives.
A release that cannot run a case raises, and the row says what it raised: that is a finding
(a release without Gemma 2 raises KeyError 'gemma2' on a PaliGemma 2 config), not a defect here.
"""

from __future__ import annotations

import inspect

import numpy as np


def _np(t) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _version() -> tuple[int, int]:
    import transformers

    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int(minor)


def _load(model_dir: str, dtype: str):
    import torch
    import transformers
    from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    transformers.logging.set_verbosity_error()  # the "add <image> tokens" notice, load reports
    processor = PaliGemmaProcessor.from_pretrained(model_dir)
    key = "dtype" if _version() >= (4, 56) else "torch_dtype"
    model, info = PaliGemmaForConditionalGeneration.from_pretrained(
        model_dir, attn_implementation="eager", output_loading_info=True,
        **{key: getattr(torch, dtype)})
    missing = sorted(info.get("missing_keys") or [])
    if missing:  # what its own warning says ("newly initialized"), as the error it is
        unexpected = sorted(info.get("unexpected_keys") or [])
        raise RuntimeError(
            f"transformers {transformers.__version__} found {len(missing)} weights missing from "
            f"the checkpoint and initialised them at random (e.g. {missing[0]!r}); keys it did "
            f"not expect: {len(unexpected)} (e.g. {unexpected[0] if unexpected else None!r})")
    return processor, model.eval()


def _generate(model, inputs: dict, max_new_tokens: int):
    """Greedy generate -> (sequences [B, L + T], per-step logits, T of [B, V])."""
    cfg = model.config
    kwargs = dict(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=cfg.eos_token_id,
                  pad_token_id=cfg.pad_token_id, return_dict_in_generate=True)
    accepted = inspect.signature(type(model.generation_config)).parameters
    if "output_logits" in accepted:
        gen = model.generate(**inputs, output_logits=True, **kwargs)
        return gen.sequences, gen.logits
    gen = model.generate(**inputs, output_scores=True, **kwargs)
    return gen.sequences, gen.scores


def run(model_dir, image, prompt, max_new_tokens=8, dtype=None):
    import torch

    dtype = dtype or "float32"
    processor, model = _load(str(model_dir), dtype)
    batch = isinstance(prompt, (list, tuple))
    if batch:  # left-padded, as generate needs
        processor.tokenizer.padding_side = "left"
        inputs = processor(text=list(prompt), images=list(image), return_tensors="pt",
                           padding="longest", do_convert_rgb=True)
    else:
        inputs = processor(text=prompt, images=image, return_tensors="pt", do_convert_rgb=True)
    inputs = dict(inputs)
    pixels = inputs["pixel_values"].numpy().copy()
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    cfg = model.config
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        sequences, step_logits = _generate(model, inputs, max_new_tokens)
    length = inputs["input_ids"].shape[1]
    pad = inputs["attention_mask"].bool()

    def row(b: int) -> dict:
        keep = pad[b]
        new = sequences[b, length:].tolist()
        if cfg.eos_token_id in new:
            new = new[:new.index(cfg.eos_token_id) + 1]
        steps = [_np(x[b]) for x in step_logits][:len(new)]
        return {"logits": _np(out.logits[b][keep]),
                "input_ids": inputs["input_ids"][b][keep].numpy(),
                "pixel_values": pixels[b], "token_ids": new,
                "hidden_states": [_np(h[b][keep]) for h in out.hidden_states],
                "step_logits": np.stack(steps) if steps else None}

    return [row(b) for b in range(len(prompt))] if batch else row(0)
