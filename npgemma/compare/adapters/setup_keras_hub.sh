#!/usr/bin/env bash
# keras-hub on JAX (it pulls TensorFlow for its text preprocessing) in a virtual environment of
# its own, at the versions docs/conformance.md was measured with; then the command that checks it.
#   bash npgemma/compare/adapters/setup_keras_hub.sh [VENV]     (default .venv-keras-hub)
set -euo pipefail
venv="${1:-.venv-keras-hub}"
python3 -m venv "$venv"
# safetensors: keras-hub's Hugging Face converter imports it but does not require it.
"$venv/bin/pip" install -q "keras-hub==0.32.0" "jax[cpu]==0.10.2" safetensors pillow
echo "ready: npgemma conform --against keras-hub --python $venv/bin/python"
