"""Run in an interpreter with bitsandbytes (0.50.2, CPU): npgemma's NumPy NF4/FP4 scheme
(npgemma/compare/quantization.py, loaded by path) against bitsandbytes' own `quantize_4bit` ->
`dequantize_4bit` (blocksize 64), on float32 weights and on bfloat16-valued ones (whose values
land on the code's midpoints more often). Prints the largest difference per setting as JSON."""

import importlib.util
import json
import sys
from pathlib import Path

import bitsandbytes.functional as bf
import torch

path = Path(__file__).parents[2] / "npgemma" / "compare" / "quantization.py"
spec = importlib.util.spec_from_file_location("npgemma_quantization", path)
qz = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = qz
spec.loader.exec_module(qz)

torch.manual_seed(0)
out = {}
for kind, code in (("nf4", qz.NF4), ("fp4", qz.FP4)):
    for dtype in ("float32", "bfloat16"):
        w = torch.randn(49, 199) * 0.05          # 9751 values: the last block is short (23)
        w[0, :64] = 0.0                           # an all-zero block
        if dtype == "bfloat16":
            w = w.bfloat16().float()
        q, state = bf.quantize_4bit(w, blocksize=64, quant_type=kind)
        ref = bf.dequantize_4bit(q, state).float().numpy()
        mine = qz.bnb_4bit(w.numpy(), code, 64)
        out[f"{kind} {dtype}"] = float(abs(ref - mine).max())
print(json.dumps(out))
