"""A release's cached greedy decode against the same release without a cache, step by step.

    /work/peers/tf-VERSION/bin/python docs/conformance-runs/hybrid_cache_probe.py CASE_DIR IMAGE

Runs in a past transformers release's own environment through the legacy adapter
(npgemma/compare/adapters/transformers_legacy_adapter.py) on one case folder of a `conform
--workdir` (pg2-short: a PaliGemma 2 whose window, 64, is longer than the whole sequence), its
prompt "caption en" and conform's 6 new tokens. Each step's logits from `generate` (its
HybridCache) are compared with one forward of the same release over prompt + generated tokens,
no cache, the prompt a bidirectional prefix and positions 1.. as PaliGemma numbers them: a
fault of the cache shows as a step that differs. Also printed: the sizes of the cache that
`generate` built, and the same comparison once more with the sliding layers' update made to
roll only once the cache is full (a write past its last slot; where there is room, the write
goes in place). No npgemma involved.
"""

import os
import sys

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "npgemma", "compare", "adapters"))
import transformers_legacy_adapter as adapter  # noqa: E402

NEW_TOKENS = 6  # conform's max_new_tokens


def roll_only_when_full(cls) -> None:
    """`cls._sliding_update` (HybridCache), except that a write that fits is made in place."""
    original = cls._sliding_update

    def update(self, cache_position, layer_idx, key_states, value_states, k_out, v_out, size):
        if cache_position.shape[0] <= size and int(cache_position[-1]) < size:
            k_out[:, :, cache_position] = key_states  # k_out is the layer's own buffer
            v_out[:, :, cache_position] = value_states
            return k_out, v_out
        return original(self, cache_position, layer_idx, key_states, value_states, k_out, v_out,
                        size)
    cls._sliding_update = update


def compare(case_dir: str, image: str) -> None:
    import transformers

    processor, model = adapter._load(case_dir, "float32")
    inputs = dict(processor(text="caption en", images=Image.open(image), return_tensors="pt",
                            do_convert_rgb=True))
    n = inputs["input_ids"].shape[1]
    with torch.no_grad():
        gen = model.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS,
                             return_dict_in_generate=True, output_logits=True,
                             eos_token_id=model.config.eos_token_id,
                             pad_token_id=model.config.pad_token_id)
        cache = gen.past_key_values
        sizes = sorted({k.shape[2] for k in cache.key_cache}) if hasattr(cache, "key_cache") else None
        seq = gen.sequences[:, :-1]  # every token fed: the prompt and all but the last new one
        s = seq.shape[1]
        allowed = torch.ones(s, s).tril().bool()
        allowed[:n, :n] = True  # the prompt is a bidirectional prefix
        mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[None, None]
        plain = model(input_ids=seq, pixel_values=inputs["pixel_values"], attention_mask=mask,
                      position_ids=torch.arange(1, s + 1)[None], use_cache=False).logits[0, n - 1:]
    steps = [round(float((g[0] - plain[k]).abs().max()), 4) for k, g in enumerate(gen.logits)]
    print(f"transformers {transformers.__version__}, {os.path.basename(case_dir)}: prompt {n} "
          f"tokens, {len(gen.logits)} new, {type(cache).__name__} slots per layer {sizes}, "
          f"window {model.config.text_config.sliding_window}")
    print(f"generate vs one uncached forward, each step (max |diff| of the logits): {steps}")


def main(case_dir: str, image: str) -> None:
    from transformers.cache_utils import HybridCache

    compare(case_dir, image)
    roll_only_when_full(HybridCache)
    print("with the sliding layers rolling only once the cache is full:")
    compare(case_dir, image)


if __name__ == "__main__":
    main(*sys.argv[1:3])
