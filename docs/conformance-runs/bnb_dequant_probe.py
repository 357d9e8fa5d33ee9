"""bitsandbytes 0.50.2's NF4 on this CPU: its quantization against its own two dequantizations
of the same codes and absmax, at the widths of conform's cases (32, 64, 96) and SigLIP's fc2
(4304). No npgemma involved. Run in the bitsandbytes venv (setup_transformers_quant.sh bnb):

    /work/peers/bnb/bin/python docs/conformance-runs/bnb_dequant_probe.py

"native": `dequantize_4bit` as the CPU backend runs it where torch's CPU capability is AVX512
(its C++ kernel, backends/cpu/ops.py); "generic": the default backend's
`_dequantize_4bit_compute` on the same codes and absmax (what the format defines: the weight
flattened in blocks of 64, one absmax per block).
"""

import numpy as np
import torch
import bitsandbytes as bnb
import bitsandbytes.functional as bf
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
from bitsandbytes.backends.utils import _get_4bit_code

print(f"torch {torch.__version__} (CPU capability {torch.backends.cpu.get_cpu_capability()}), "
      f"bitsandbytes {bnb.__version__}")
rng = np.random.default_rng(0)
for shape in ((32, 32), (64, 32), (32, 64), (16, 96), (64, 4304)):
    w = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    q, state = bf.quantize_4bit(w, blocksize=64, quant_type="nf4")
    native = bf.dequantize_4bit(q, state)
    generic = _dequantize_4bit_compute(q.view(torch.uint8).reshape(-1), state.absmax,
                                       _get_4bit_code("nf4", q.device), 64, shape, torch.float32)
    print(f"{tuple(shape)}: max |native - generic| = {float((native - generic).abs().max()):.3g}")

# Which absmax the native kernel applies to a 32-wide weight: each row's largest |value|
# against the first block's absmax (rows 2r and 2r+1 share block r in the format).
w = torch.from_numpy(rng.standard_normal((32, 32)).astype(np.float32))
q, state = bf.quantize_4bit(w, blocksize=64, quant_type="nf4")
native = bf.dequantize_4bit(q, state)
row_max = native.abs().amax(dim=1)
first = float(state.absmax[0])
print(f"(32, 32): rows whose largest |value| is block 0's absmax {first:.4f}: "
      f"{int((row_max == first).sum())} of 32 (the format: at most 2)")
