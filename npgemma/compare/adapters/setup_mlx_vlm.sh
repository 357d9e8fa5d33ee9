#!/usr/bin/env bash
# mlx-vlm (MLX's Linux CPU build) in a virtual environment of its own, at the versions
# docs/conformance.md was measured with; then the command that checks it.
#   bash npgemma/compare/adapters/setup_mlx_vlm.sh [VENV]      (default .venv-mlx-vlm)
set -euo pipefail
venv="${1:-.venv-mlx-vlm}"
python3 -m venv "$venv"
"$venv/bin/pip" install -q "mlx[cpu]==0.32.4" "mlx-vlm==0.7.10" pillow
echo "ready: npgemma conform --against mlx-vlm --python $venv/bin/python"
