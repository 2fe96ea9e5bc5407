#!/usr/bin/env bash
# GPU check: rlcore GRPO/PPO and TRL GRPO on one CUDA card with a random ~0.5 B Qwen2 model in bf16; prints
# generation tokens/s, training MFU and peak GPU memory per run. With two or more GPUs it then runs the same
# model under resources.strategy ddp and fsdp on two ranks (GRPO and PPO, 2 steps each) and prints what each
# rank held and its peak GPU memory (benchmarks/memory_table.py --measure). Whole script: under 8 minutes on
# one GPU, under 13 with two or more.
# Usage (repository root): benchmarks/gpu_check.sh [--steps N] [--new-tokens N] [--peak-tflops X]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU found (nvidia-smi missing or lists no device); run this on a GPU machine." >&2
  exit 2
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch cannot use CUDA here ($("$PY" -c 'import torch; print(torch.__version__)')); install a CUDA build of torch." >&2
  exit 2
fi
"$PY" -c "import trl" 2>/dev/null || "$PY" -m pip install -q -e ".[bench]"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
GPUS=$(nvidia-smi -L | grep -c '^GPU')
status=0
timeout 470 "$PY" benchmarks/gpu_check.py "$@" || status=$?
if [ "$GPUS" -ge 2 ]; then
  echo
  echo "fsdp check: $GPUS GPUs; ddp and fsdp on two ranks, the 0.5b model (GRPO and PPO, 2 steps each)"
  timeout 300 "$PY" benchmarks/memory_table.py --measure --size 0.5b || status=$?
else
  echo
  echo "fsdp check: skipped (one GPU; resources.strategy fsdp needs two ranks)"
fi
exit $status
