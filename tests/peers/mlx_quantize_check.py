"""Run in an interpreter with MLX (mlx 0.32.4 on the CPU): npgemma's NumPy MLX affine scheme
(npgemma/compare/quantization.py, loaded by path: it needs only NumPy) against MLX's own
`mx.quantize` -> `mx.dequantize`, bits 4 and 8, groups 32/64/128, float32 and (with ml_dtypes)
bfloat16 weights. Prints the largest difference per setting as JSON."""

import importlib.util
import json
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np

path = Path(__file__).parents[2] / "npgemma" / "compare" / "quantization.py"
spec = importlib.util.spec_from_file_location("npgemma_quantization", path)
qz = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = qz
spec.loader.exec_module(qz)
try:
    from ml_dtypes import bfloat16
except ImportError:
    bfloat16 = None

rng = np.random.default_rng(0)
out = {}
for dtype in ("float32", "bfloat16"):
    if dtype == "bfloat16" and bfloat16 is None:
        continue
    for bits in (4, 8):
        for g in (32, 64, 128):
            w = (rng.standard_normal((32, 256)) * rng.uniform(0.01, 2)).astype(np.float32)
            w[:, :g] = np.abs(w[:, :g])           # a group with no negative edge
            w[1, g:2 * g] = 0.0                   # an all-zero group
            x = mx.array(w)
            if dtype == "bfloat16":
                x = x.astype(mx.bfloat16)
                w = w.astype(bfloat16).astype(np.float32)
            q, s, b = mx.quantize(x, group_size=g, bits=bits)
            ref = np.array(mx.dequantize(q, s, b, group_size=g, bits=bits).astype(mx.float32))
            mine = qz.mlx_affine(w, bits, g, np.float32 if dtype == "float32" else bfloat16)
            out[f"{dtype} {bits}-bit g{g}"] = float(np.abs(ref - mine).max())
print(json.dumps(out))
