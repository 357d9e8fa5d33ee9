"""`--against transformers`: the installed transformers' PaliGemma through the adapter contract.

Only imported when asked for (transformers is not a dependency of npgemma). It runs the way
transformers documents: `PaliGemmaProcessor` (the PIL image backend, the one npgemma mirrors),
`PaliGemmaForConditionalGeneration` in `dtype` with `attn` ("eager" or "sdpa"), token_type_ids
passed (without them transformers 5.x silently runs a causal prefix), greedy `generate`. The
processor is called with `do_convert_rgb=True`: the Hub's preprocessor_config.json says
`do_convert_rgb: null`, with which transformers' processor refuses a grey-scale image ("mean must
have 1 elements") where npgemma converts every image the way `do_convert_rgb=True` does (alpha
composited onto white; not `load_image`'s `.convert("RGB")`, which drops alpha). Gemma 2 has no sdpa attention in transformers (its modeling
file: "sdpa does not support softcapping"), so `attn="sdpa"` on a PaliGemma 2 checkpoint is a
case it declines (NotImplementedError), not a failure.
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError


def _np(t) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def transformers_adapter(model_dir, image, prompt, *, dtype="float32", attn="eager", device="cpu",
                         max_new_tokens=8, token_type_ids=True):
    try:
        import torch
        import transformers
        from transformers import (AutoImageProcessor, AutoTokenizer,
                                  PaliGemmaForConditionalGeneration, PaliGemmaProcessor)
    except ImportError:
        raise InputError("--against transformers needs transformers and torch: "
                         "pip install 'npgemma[torch,oracle]'") from None
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the "add <image> tokens" notice, load reports
    transformers.utils.logging.disable_progress_bar()
    try:
        processor = PaliGemmaProcessor(
            image_processor=AutoImageProcessor.from_pretrained(model_dir, backend="pil"),
            tokenizer=AutoTokenizer.from_pretrained(model_dir))
        try:
            model = PaliGemmaForConditionalGeneration.from_pretrained(
                model_dir, dtype=getattr(torch, dtype), attn_implementation=attn).to(device).eval()
        except ValueError as e:
            if "does not support an attention implementation" in str(e):
                raise NotImplementedError(
                    f"transformers {transformers.__version__} offers no attn_implementation="
                    f"{attn!r} for this text model ({str(e).split(' yet.')[0]}); run --attn eager"
                ) from None
            raise
        if isinstance(prompt, (list, tuple)):  # a batch: left-padded, as generate needs
            processor.tokenizer.padding_side = "left"
            inputs = processor(images=list(image), text=list(prompt), return_tensors="pt",
                               do_convert_rgb=True, padding="longest")
        else:
            inputs = processor(images=image, text=prompt, return_tensors="pt", do_convert_rgb=True)
    finally:
        transformers.utils.logging.enable_progress_bar()
        transformers.logging.set_verbosity(verbosity)
    batch = isinstance(prompt, (list, tuple))
    pad = inputs["attention_mask"].bool() if batch else None
    pixels = inputs["pixel_values"].numpy().copy()
    if not token_type_ids:
        del inputs["token_type_ids"]
    inputs = {k: v.to(device) for k, v in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    cfg = model.config
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        gen = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
                             return_dict_in_generate=True, output_logits=True)
    length = inputs["input_ids"].shape[1]

    def row(b: int) -> dict:
        """Row b as it would be alone: its own positions (the left padding dropped), its tokens
        up to the first EOS (a finished row is padded after it in a batch)."""
        keep = pad[b].cpu() if batch else slice(None)
        new = gen.sequences[b, length:].tolist()
        if batch and cfg.eos_token_id in new:
            new = new[:new.index(cfg.eos_token_id) + 1]
        steps = [_np(x[b]) for x in gen.logits][:len(new)]
        return {"logits": _np(out.logits[b][keep]),
                "input_ids": inputs["input_ids"][b].cpu()[keep].numpy(),
                "pixel_values": pixels[b], "token_ids": new,
                "hidden_states": [_np(h[b][keep]) for h in out.hidden_states],
                "step_logits": np.stack(steps) if steps else None}

    return [row(b) for b in range(len(prompt))] if batch else row(0)
