"""`--against torch`: npgemma's own torch backend through the adapter contract (its prefix
logits, hidden states and the cached decode loop's logits, step by step)."""

from __future__ import annotations

import numpy as np


def torch_adapter(model_dir, image, prompt, *, device="cpu", dtype="float32", max_new_tokens=8):
    """npgemma's torch backend through the contract (prefix logits, hidden states, greedy)."""
    if isinstance(prompt, (list, tuple)):
        raise NotImplementedError("--against torch takes one input at a time (npgemma's own "
                                  "batches are checked by its test suite)")
    import npgemma

    from ...generation.backend import Observed
    from ...generation.generate import GenerationConfig, generate_tokens
    from ...generation.slots import Slots

    pipe = npgemma.load(model_dir, backend="torch", device=device, dtype=dtype)  # clear error
    import torch  # without torch

    from ...torch_backend import paligemma as tpg

    tb, cfg = pipe.backend, pipe.cfg
    inputs = pipe.processor(image, prompt)
    ids = inputs.input_ids[None]
    slots = Slots.full(*ids.shape)
    states: list = []
    with torch.inference_mode():
        feats = tpg.encode_image(pipe.params, tb.as_tensor(inputs.pixel_values[None], tb.dtype), cfg)
        logits, _ = tpg.forward(pipe.params, cfg, tb.as_tensor(ids, torch.long),
                                tb.as_tensor(slots.positions(), torch.long),
                                {k: tb.as_tensor(m) for k, m in slots.masks(cfg).items()},
                                feats, hidden_states=states)
    steps: list = []  # the cached decode loop's last-position logits, step by step

    def record(call: str, out) -> None:
        if call != "encode_image":  # forward (the prefill) -> (logits, cache); a step -> logits
            steps.append(tb.to_numpy(out[0] if call == "forward" else out)[0, -1])

    tokens = []
    for t in generate_tokens(Observed(tb, after=record), pipe.params, cfg, ids, inputs.pixel_values[None],
                             GenerationConfig(max_new_tokens=max_new_tokens)):
        if t[0] == cfg.eos_token_id:
            break
        tokens.append(int(t[0]))
    return {"logits": tb.to_numpy(logits)[0], "input_ids": inputs.input_ids,
            "pixel_values": inputs.pixel_values, "token_ids": tokens,
            "hidden_states": [tb.to_numpy(h)[0] for h in states],
            "step_logits": np.stack(steps[:len(tokens)]) if tokens else None}
