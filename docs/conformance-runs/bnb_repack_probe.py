"""bitsandbytes 0.50.2's 4-bit linear on this CPU (AVX512-BF16), at the widths that matter: no
npgemma involved. Run in the bitsandbytes venv (setup_transformers_quant.sh bnb):

    /work/peers/bnb/bin/python docs/conformance-runs/bnb_repack_probe.py

(out, in): SigLIP So400m's fc2 (1152 x 4304, the released checkpoints' vision tower), a square
1152 layer, and conform's tiny cases' 32 x 32; each run as transformers runs it (the first
forward repacks the weight for the bf16 kernel), then with that repacking switched off.
"""

import torch
import bitsandbytes as bnb
from bitsandbytes.functional import has_avx512bf16

print(f"torch {torch.__version__}, bitsandbytes {bnb.__version__}, AVX512-BF16: {has_avx512bf16()}")
for out_f, in_f in ((1152, 4304), (1152, 1152), (32, 32)):
    for repack in (True, False):
        lin = bnb.nn.Linear4bit(in_f, out_f, compute_dtype=torch.float32, quant_type="nf4")
        lin.load_state_dict(torch.nn.Linear(in_f, out_f).state_dict())
        lin = lin.to("cpu").eval()  # quantizes the weight; eval, as a loaded model runs
        lin.support_avx512bf16_for_cpu = lin.support_avx512bf16_for_cpu and repack
        try:
            with torch.no_grad():
                lin(torch.randn(1, in_f))
            what = "ran"
        except RuntimeError as e:
            what = f"RuntimeError: {e}"
        print(f"({out_f}, {in_f}) {'repacked' if repack else 'not repacked'}: {what}")
