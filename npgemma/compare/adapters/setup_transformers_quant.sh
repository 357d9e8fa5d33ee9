#!/usr/bin/env bash
# transformers 5.24.0 with one quantization library, on the CPU, in a virtual environment of its
# own, at the versions docs/conformance.md was measured with; then the command that checks it.
#   bash npgemma/compare/adapters/setup_transformers_quant.sh torchao|quanto|bnb [VENV]
set -euo pipefail
kind="${1:?torchao, quanto or bnb}"
venv="${2:-.venv-$kind}"
case "$kind" in
  torchao) lib="torchao==0.18.0"; spec="transformers-torchao-int8" ;;
  quanto)  lib="optimum-quanto==0.2.7 accelerate==1.16.0"; spec="transformers-quanto-int8" ;;
  bnb)     lib="bitsandbytes==0.50.2 accelerate==1.16.0"; spec="transformers-bnb-nf4" ;;
  *) echo "unknown kind $kind (torchao, quanto, bnb)" >&2; exit 2 ;;
esac
python3 -m venv "$venv"
# torch's CPU build from its own index; no retries, so that a machine which cannot reach that
# index (one with the CPU wheel in its pip find-links) goes on at once instead of retrying
# every package for minutes
"$venv/bin/pip" install -q --retries 0 --timeout 15 \
    --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
# shellcheck disable=SC2086
"$venv/bin/pip" install -q "transformers==5.24.0" pillow $lib
echo "ready: npgemma conform --against $spec --python $venv/bin/python"
