"""`--against transformers-torchao-int8` / `transformers-quanto-int8` / `transformers-bnb-nf4` /
`transformers-bnb-fp4`: transformers' PaliGemma loaded with a quantization library the way its
users load it, `from_pretrained(..., quantization_config=...)`, on the CPU:
- torchao: `TorchAoConfig(Int8WeightOnlyConfig())` (int8 weights per output channel);
- optimum-quanto: `QuantoConfig(weights="int8")`;
- bitsandbytes: `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4" / "fp4")`.
Besides its outputs it returns its effective weights ("weights": every quantized linear's
weight dequantized by the library itself, under transformers' own key names), so npgemma's
reference runs on exactly those weights.

Run by `npgemma/compare/remote.py` in the library's own environment (`--python`; setup:
setup_transformers_quant.sh); imports nothing of npgemma.
"""

from __future__ import annotations

import numpy as np


def _config(kind: str):
    import torch
    from transformers import BitsAndBytesConfig, QuantoConfig, TorchAoConfig

    if kind == "torchao-int8":
        from torchao.quantization import Int8WeightOnlyConfig

        return TorchAoConfig(Int8WeightOnlyConfig())
    if kind == "quanto-int8":
        return QuantoConfig(weights="int8")
    if kind in ("bnb-nf4", "bnb-fp4"):
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind[4:],
                                  bnb_4bit_compute_dtype=torch.float32)
    raise ValueError(kind)


def _dequantized(module):
    """The weight a quantized linear multiplies by, as the library dequantizes it (None when
    the module's weight is a plain tensor)."""
    w = getattr(module, "weight", None)
    if w is None:
        return None
    if type(w).__name__ == "Params4bit":  # bitsandbytes
        import bitsandbytes.functional as bf

        return bf.dequantize_4bit(w.data, w.quant_state)
    qweight = getattr(module, "qweight", None)  # optimum-quanto's QModuleMixin
    if qweight is not None and hasattr(qweight, "dequantize"):
        return qweight.dequantize()
    if type(w).__name__ not in ("Parameter", "Tensor") and hasattr(w, "dequantize"):
        return w.dequantize()  # torchao's tensor subclasses
    return None


def _np(t) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def run(model_dir, image, prompt, max_new_tokens=8, kind="torchao-int8"):
    """One input, or a batch (lists: left-padded, as generate needs; each row returned as it
    would be alone: its own positions, its tokens up to the first EOS)."""
    import torch
    import transformers
    from transformers import (AutoImageProcessor, AutoTokenizer,
                              PaliGemmaForConditionalGeneration, PaliGemmaProcessor)

    transformers.logging.set_verbosity_error()
    batch = isinstance(prompt, (list, tuple))
    processor = PaliGemmaProcessor(
        image_processor=AutoImageProcessor.from_pretrained(model_dir, backend="pil"),
        tokenizer=AutoTokenizer.from_pretrained(model_dir))
    model = PaliGemmaForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager",
        quantization_config=_config(kind)).eval()
    if batch:
        processor.tokenizer.padding_side = "left"
        inputs = processor(images=list(image), text=list(prompt), return_tensors="pt",
                           do_convert_rgb=True, padding="longest")
    else:
        inputs = processor(images=image, text=prompt, return_tensors="pt", do_convert_rgb=True)
    cfg = model.config
    with torch.no_grad():
        out = model(**inputs)
        gen = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
                             return_dict_in_generate=True, output_logits=True)
    weights = {}
    for name, module in model.named_modules():
        w = _dequantized(module)
        if w is not None:
            weights[f"{name}.weight"] = _np(w)
    length = inputs["input_ids"].shape[1]

    def row(b: int) -> dict:
        keep = inputs["attention_mask"][b].bool() if batch else slice(None)
        new = gen.sequences[b, length:].tolist()
        if batch and cfg.eos_token_id in new:  # a finished row is padded after its EOS
            new = new[:new.index(cfg.eos_token_id) + 1]
        steps = [_np(x[b]) for x in gen.logits][:len(new)]
        return {"logits": _np(out.logits[b][keep]),
                "input_ids": inputs["input_ids"][b][keep].numpy(),
                "pixel_values": inputs["pixel_values"][b].numpy(), "token_ids": new,
                "step_logits": np.stack(steps) if steps else None, "weights": weights}

    return [row(b) for b in range(len(prompt))] if batch else row(0)


def run_torchao_int8(model_dir, image, prompt, max_new_tokens=8):
    return run(model_dir, image, prompt, max_new_tokens, "torchao-int8")


def run_quanto_int8(model_dir, image, prompt, max_new_tokens=8):
    return run(model_dir, image, prompt, max_new_tokens, "quanto-int8")


def run_bnb_nf4(model_dir, image, prompt, max_new_tokens=8):
    return run(model_dir, image, prompt, max_new_tokens, "bnb-nf4")


def run_bnb_fp4(model_dir, image, prompt, max_new_tokens=8):
    return run(model_dir, image, prompt, max_new_tokens, "bnb-fp4")
