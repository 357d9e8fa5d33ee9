#!/usr/bin/env bash
# The GPU check, one script for a CUDA machine (sized for under 5 minutes on one H100):
#   1. the hypothesis parity suite with the torch side on CUDA, float32 and bfloat16;
#   2. `npgemma parity` (numpy float32 on the CPU vs torch on CUDA) on a full-size random
#      paligemma-3b-pt-224, in float32 and bfloat16;
#   3. decode speed of the torch backend on that checkpoint, float32 and bfloat16.
# DEVICE=cpu runs the same steps without a GPU (a dry run of the script itself, slow).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
CKPT=${CKPT:-/tmp/npgemma-paligemma-3b-pt-224}
OUT=${OUT:-/tmp}
export PYTHONUNBUFFERED=1
python - <<PY
import torch
print("torch", torch.__version__, "cuda available:", torch.cuda.is_available())
if "$DEVICE" == "cuda":
    assert torch.cuda.is_available(), "no CUDA device: run on a GPU machine or set DEVICE=cpu"
    print(torch.cuda.get_device_name(0))
PY

echo "== 1. parity suite on $DEVICE (float32, bfloat16)"
NPGEMMA_TEST_DEVICE=$DEVICE NPGEMMA_TEST_DTYPES=float32,bfloat16 HYPOTHESIS_PROFILE=ci \
    python -m pytest -q -p no:cacheprovider parity/test_layers_parity.py parity/test_model_parity.py

echo "== 2. full-size random checkpoint, stage-by-stage parity"
[ -f "$CKPT/config.json" ] || python benchmarks/make_checkpoint.py paligemma-3b-pt-224 "$CKPT"
python -m npgemma.testing.demo "$OUT/npgemma-gpu-demo" >/dev/null   # for its example.png
IMG="$OUT/npgemma-gpu-demo/example.png"
for dtype in float32 bfloat16; do
    python -m npgemma parity --model "$CKPT" --image "$IMG" --prompt "caption en" \
        --device "$DEVICE" --dtype "$dtype" --max-new-tokens 4 --quiet \
        | tee "$OUT/parity-$DEVICE-$dtype.txt" || echo "parity $dtype: FAILED (see above)"
done

echo "== 3. decode speed, torch on $DEVICE"
python benchmarks/bench_generate.py --model "$CKPT" --new-tokens 32 \
    --backends "torch:float32:$DEVICE,torch:bfloat16:$DEVICE" | tee "$OUT/bench-$DEVICE.txt"
