#!/usr/bin/env bash
# A past release of transformers in a virtual environment of its own, to check it with
# `npgemma conform` through the adapter contract (npgemma/compare/adapters/transformers_legacy_adapter.py).
#   bash npgemma/compare/adapters/setup_transformers_legacy.sh VERSION [VENV]   (default /work/peers/tf-VERSION)
# torch is 2.13.0 (the build this project is tested with); pip picks the tokenizers and
# safetensors releases that VERSION declares. Releases before 4.43 predate NumPy 2: NumPy < 2.
set -euo pipefail
version="${1:?usage: setup_transformers_legacy.sh VERSION [VENV]}"
venv="${2:-/work/peers/tf-$version}"
mkdir -p "$(dirname "$venv")"
python3 -m venv "$venv"
numpy="numpy"
minor="$(echo "$version" | cut -d. -f2)"
if [ "$(echo "$version" | cut -d. -f1)" = 4 ] && [ "$minor" -lt 43 ]; then numpy="numpy<2"; fi
"$venv/bin/pip" install -q "torch==2.13.0" "transformers==$version" "$numpy" pillow sentencepiece protobuf
"$venv/bin/python" -c "import transformers, tokenizers, torch; print('transformers', transformers.__version__, 'tokenizers', tokenizers.__version__, 'torch', torch.__version__)"
echo "ready: npgemma conform --against npgemma/compare/adapters/transformers_legacy_adapter.py:run --python $venv/bin/python"
