#!/usr/bin/env bash
# The GPU check, one script for a bare CUDA machine (sized for about 5 minutes on one H100/H200):
#   0. install npgemma with its torch/test/oracle extras (keeping the machine's CUDA torch);
#   1. the parity suite with the torch side on CUDA, float32 and bfloat16 (layers, whole model,
#      the decode contract in eager/static/graph modes);
#   2. the transformers oracle tier with NPGEMMA_TEST_DEVICE=cuda;
#   3. the GPU's copy bandwidth (for the decode bound: weight bytes / bandwidth);
#   4. benchmarks/bench.py, npgemma torch vs transformers (sdpa and eager) on the same GPU,
#      full-size random paligemma-3b-pt-224 and -896, batch 1 and 8, 32 new tokens.
# Everything lands under $OUT (default /tmp/npgemma-gpu): one log per stage, gpu-224.json,
# gpu-896.json, gpu-bandwidth.json and summary.txt (each stage's exit status and seconds).
# A failing stage is recorded and the next one still runs; the exit status is the worst one.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/npgemma-gpu}
CKPT=${CKPT:-/tmp/npgemma-ckpt}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
PY=${PYTHON:-python}
status=0
: > "$OUT/summary.txt"

stage() {  # stage NAME TIMEOUT_S COMMAND...: run, log to $OUT/NAME.log, record status and time
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo "== $name" | tee -a "$OUT/summary.txt"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "   $name: exit $rc, $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
    [ "$rc" -gt "$status" ] && status=$rc
    return 0
}

# 0. Install. A CUDA torch already on the machine satisfies the `torch` extra and is kept. Without
# an index (an offline machine) the checkout itself still runs: every command below starts in
# the repository root, which puts `npgemma` on the path.
stage install 240 bash -c "$PY -m pip install -q -e '.[torch,test,oracle]' \
    || $PY -m pip install -q --no-deps --no-build-isolation -e . \
    || echo 'pip install failed: running npgemma from the checkout'"
stage environment 60 "$PY" -c "
import torch, npgemma
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
assert torch.cuda.is_available(), 'no CUDA device visible to torch'
print(torch.cuda.get_device_name(0))
try:
    import transformers; print('transformers', transformers.__version__)
except ImportError:
    print('transformers not installed: the oracle tier and the transformers engines will fail')
"

# 1. Parity suite on CUDA (the oracle and real-checkpoint tiers are deselected here).
stage parity-cuda 200 env NPGEMMA_TEST_DEVICE=cuda NPGEMMA_TEST_DTYPES=float32,bfloat16 \
    "$PY" -m pytest -q -p no:cacheprovider -m "not oracle and not real and not slow" \
    parity/test_layers_parity.py parity/test_model_parity.py parity/test_decode_contract.py \
    parity/test_mirror.py

# 2. The oracle tier (transformers 5.24.0), device from NPGEMMA_TEST_DEVICE where a test takes one.
stage oracle-cuda 120 env NPGEMMA_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider \
    -m oracle parity

# 3. GPU copy bandwidth: device-to-device copies of 1 GiB (read + write counted), best of 10.
stage bandwidth 30 "$PY" - "$OUT/gpu-bandwidth.json" <<'PY'
import json, sys, torch
src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
dst = torch.empty_like(src)
best = float("inf")
for _ in range(10):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(); dst.copy_(src); end.record(); torch.cuda.synchronize()
    best = min(best, start.elapsed_time(end) / 1e3)
gbps = 2 * src.numel() / best / 1e9
print(f"{torch.cuda.get_device_name(0)}: device copy {gbps:.0f} GB/s (read + write)")
json.dump({"device": torch.cuda.get_device_name(0), "copy_gb_per_s": gbps}, open(sys.argv[1], "w"))
PY

# 4. npgemma torch vs transformers on the same GPU (bench.py writes the checkpoints first).
ENGINES=npgemma-torch:bfloat16:cuda,transformers:bfloat16:cuda:sdpa,transformers:bfloat16:cuda:eager
stage bench-224 120 "$PY" benchmarks/bench.py --make paligemma-3b-pt-224 --out "$CKPT-224" \
    --engines "$ENGINES" --batch 1,8 --new-tokens 32 --json "$OUT/gpu-224.json"
stage bench-896 150 "$PY" benchmarks/bench.py --make paligemma-3b-pt-896 --out "$CKPT-896" \
    --engines "$ENGINES" --batch 1,8 --new-tokens 32 --json "$OUT/gpu-896.json"

echo "worst exit status: $status" | tee -a "$OUT/summary.txt"
exit "$status"
