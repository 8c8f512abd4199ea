#!/usr/bin/env bash
# The GPU check (evals/gpu_check.py): every row of the GPU table in docs/performance.md on a bare CUDA machine with
# no network, in a few minutes. Two steps:
#   bash evals/gpu_check.sh prepare          # with the dev install and SELFJ_DATA_DIR: tokenizers, arena answers and
#                                            # the wheels a bare CUDA image lacks, into evals/gpu_inputs/ (< 64 MiB)
#   bash evals/gpu_check.sh RESULTS_DIR      # on the GPU machine (torch with CUDA, transformers, peft, accelerate,
#                                            # httpx there): installs the carried wheels, runs, writes RESULTS_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "prepare" ]]; then
  py=.venv/bin/python
  "$py" -m evals.gpu_check prepare
  # what a bare CUDA image lacks, at the versions installed here (pydantic pins its pydantic-core, and so on);
  # python 3.12 wheels for x86-64 Linux, without their own dependencies
  pins=$("$py" -c 'import importlib.metadata as m; print(" ".join(f"{n}=={m.version(n)}" for n in "fastapi starlette pydantic pydantic-core annotated-types typing-inspection opentelemetry-api uvicorn h11 click gguf trl datasets prometheus-client".split()))')
  # shellcheck disable=SC2086
  "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d evals/gpu_inputs/wheels $pins
  du -sh evals/gpu_inputs
  exit 0
fi
results="${1:?usage: bash evals/gpu_check.sh prepare | bash evals/gpu_check.sh RESULTS_DIR}"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
site=$(mktemp -d)
python3 -m pip install --quiet --no-index --no-deps --target "$site" evals/gpu_inputs/wheels/*.whl
PYTHONPATH="$site:." python3 -m evals.gpu_check run "$results"
