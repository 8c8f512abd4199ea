#!/usr/bin/env bash
# GPU check on a CUDA machine (see evals/bench_gpu.py): judge-scoring throughput in bf16 on a random model of the
# embedded model's architecture, against the GPU's measured bf16 matmul peak. Needs torch + transformers with CUDA.
#   bash evals/gpu_check.sh            # prints one JSON per setting; results go to $OUT when set
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-.venv/bin/python}"
[[ -x "$py" ]] || py=python3
"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
for setting in "--batch_size 64 --seq_len 512" "--batch_size 128 --seq_len 1024" "--batch_size 32 --seq_len 2048"; do
  # shellcheck disable=SC2086
  PYTHONPATH=. "$py" evals/bench_gpu.py $setting | tee -a "${OUT:-/tmp}/gpu_check.jsonl"
done
