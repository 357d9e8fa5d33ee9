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


def _unpacked(model) -> None:
    """bitsandbytes' generic CPU path for every 4-bit linear: on a CPU with AVX512-BF16,
    bitsandbytes 0.50 first repacks each weight for its bf16 kernel (Linear4bit.forward ->
    _convert_weight_packed_for_cpu), which reshapes the absmax to [out, in // blocksize] and
    fails for a linear whose input width is not a multiple of the block (64): every one of
    conform's tiny cases, and SigLIP's fc2 (4304 wide) in the released checkpoints. This is
    the path bitsandbytes takes on a CPU without AVX512-BF16."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def run(model_dir, image, prompt, max_new_tokens=8, kind="torchao-int8", unpacked=False):
    """One input, or a batch (lists: left-padded, as generate needs; each row returned as it
    would be alone: its own positions, its tokens up to the first EOS). `unpacked`: without
    bitsandbytes' AVX512-BF16 repacking (`_unpacked`)."""
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
    if unpacked:
        _unpacked(model)
    # Dequantized before the first forward: bitsandbytes' AVX512-BF16 path repacks the weight
    # in place there (another layout, its absmax transposed to bf16), which dequantize_4bit
    # does not read.
    weights = {}
    for name, module in model.named_modules():
        w = _dequantized(module)
        if w is not None:
            weights[f"{name}.weight"] = _np(w)
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


def run_bnb_nf4_unpacked(model_dir, image, prompt, max_new_tokens=8):
    return run(model_dir, image, prompt, max_new_tokens, "bnb-nf4", unpacked=True)


def run_bnb_fp4_unpacked(model_dir, image, prompt, max_new_tokens=8):
    return run(model_dir, image, prompt, max_new_tokens, "bnb-fp4", unpacked=True)
