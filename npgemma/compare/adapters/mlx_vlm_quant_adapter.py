"""`--against mlx-vlm-4bit` / `mlx-vlm-8bit`: the checkpoint converted by mlx-vlm's own
`mlx_vlm.convert(..., quantize=True, q_bits=B, q_group_size=64)` (what `python -m
mlx_vlm.convert --quantize` runs), then run as `mlx_vlm_adapter.run` runs a model; besides its
outputs it returns its effective weights ("weights": every quantized module's
`mx.dequantize(weight, scales, biases)` under the checkpoint's Hub key names), so npgemma's
reference runs on exactly those weights and judges mlx-vlm at float tolerances.

Run by `npgemma/compare/remote.py` inside mlx-vlm's own environment (`--python`); imports
nothing of npgemma. Conversions are kept under the system's temporary folder, one per
checkpoint folder, bits and group size.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import tempfile

GROUP = 64


def _plain_adapter():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mlx_vlm_adapter.py")
    spec = importlib.util.spec_from_file_location("npgemma_mlx_vlm_adapter", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _converted(model_dir: str, bits: int) -> str:
    from mlx_vlm import convert

    src = os.path.abspath(model_dir)
    stamp = max(os.path.getmtime(os.path.join(src, f)) for f in os.listdir(src))
    key = hashlib.sha1(f"{src}:{stamp}".encode()).hexdigest()[:12]
    out = os.path.join(tempfile.gettempdir(), f"npgemma-mlx-vlm-{bits}bit-g{GROUP}-{key}")
    if not os.path.isfile(os.path.join(out, "config.json")):
        with contextlib.redirect_stdout(io.StringIO()):  # its [INFO] lines: stdout is ours
            convert(src, mlx_path=out, quantize=True, q_bits=bits, q_group_size=GROUP)
    return out


def effective_weights(model) -> dict:
    """{Hub key: float32 array} of every quantized module, dequantized by MLX itself."""
    import mlx.core as mx
    import numpy as np

    out = {}
    for path, module in model.named_modules():
        if "scales" in module:
            w = mx.dequantize(module["weight"], module["scales"], module.get("biases"),
                              group_size=module.group_size, bits=module.bits)
            out[f"{path}.weight"] = np.asarray(w.astype(mx.float32))
    return out


def run(model_dir, image, prompt, max_new_tokens=8, dtype="float32", bits=4):
    from mlx_vlm import load

    qdir = _converted(model_dir, bits)
    out = _plain_adapter().run(qdir, image, prompt, max_new_tokens=max_new_tokens, dtype=dtype)
    model, _ = load(qdir)
    weights = effective_weights(model)
    for row in out if isinstance(out, list) else [out]:  # a batch: every row ran on them
        row["weights"] = weights
    return out


def run4(model_dir, image, prompt, max_new_tokens=8, dtype="float32"):
    return run(model_dir, image, prompt, max_new_tokens, dtype, bits=4)


def run8(model_dir, image, prompt, max_new_tokens=8, dtype="float32"):
    return run(model_dir, image, prompt, max_new_tokens, dtype, bits=8)


def run4_outputs_only(model_dir, image, prompt, max_new_tokens=8, dtype="float32"):
    """The 4-bit conversion's outputs without its weights: npgemma then has to find the scheme
    itself (the catalogue search), as for an implementation that cannot give its weights."""
    out = run(model_dir, image, prompt, max_new_tokens, dtype, bits=4)
    out.pop("weights", None)
    return out
