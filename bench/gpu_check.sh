#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): on a CUDA machine, fine-tune efficientnet_b3a in fp16 on ../shared/data/cub50,
# export and verify the ONNX model, print time per epoch, images/s, peak GPU memory and test top-1 (< 10 min).
# Without CUDA (or with --smoke) a tiny run of the same path, in seconds. Installs only what constraints.txt pins,
# and only when the project's venv is missing. Usage: bash bench/gpu_check.sh [--smoke] [--epochs N] [--data DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if ! "$PY" -c "import birdclf.training.trainer, fastai, timm, onnxruntime" >/dev/null 2>&1; then
  echo "gpu_check: installing birdclf[train,serve] into .venv (pinned by constraints.txt)" >&2
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[train,serve]"
  PY=.venv/bin/python
fi
# torch on CPU is ~3x faster with these (glibc malloc keeps its big buffers); harmless on a GPU
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=4294967295}
exec "$PY" -m bench.gpu_check "$@"
