"""Shared fixtures: the SmolLM2 tokenizer and a tiny random Llama built on it (fast unit tests)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
# the external data (see the data README): SELFJ_DATA_DIR, else ../shared/data beside the repository
SHARED_DATA = Path(os.environ.get("SELFJ_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
if SHARED_DATA.is_dir():  # the evals and recipes the tests start read their data defaults from it
    os.environ["SELFJ_DATA_DIR"] = str(SHARED_DATA.resolve())


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory) -> Path:
    """The SmolLM2-135M-Instruct tokenizer, read from the embedded GGUF and saved as a plain directory."""
    from transformers import AutoTokenizer

    from selfj_rlhf.core.models import embedded_gguf_path

    gguf = embedded_gguf_path("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    directory = tmp_path_factory.mktemp("smol_tokenizer")
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama with the SmolLM2 vocabulary and chat template, saved like a hub checkpoint."""
    from selfj_rlhf.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_judge(tiny_model_dir):
    from selfj_rlhf import SelfJudge

    return SelfJudge.from_pretrained(str(tiny_model_dir), device="cpu")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"external data not found at {SHARED_DATA} (set SELFJ_DATA_DIR)")
    return SHARED_DATA


def _hub_reachable() -> bool:
    """Whether the Hugging Face hub's name resolves (a DNS look-up only) and the run did not ask for offline."""
    import socket

    if os.environ.get("SELFJ_NETWORK_TESTS") != "1":  # the suite sets HF_HUB_OFFLINE itself: opt in explicitly
        return False
    try:
        socket.getaddrinfo("huggingface.co", 443)
    except OSError:
        return False
    return True


def pytest_collection_modifyitems(config, items):
    """``gpu``, ``multigpu`` and ``network`` tests skip, with one line each, where the machine lacks what they need."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    reasons = {"gpu": None if gpus >= 1 else "needs a CUDA GPU",
               "multigpu": None if gpus >= 2 else f"needs two or more CUDA GPUs ({gpus} here)",
               "network": None if _hub_reachable() else "needs the Hugging Face hub (set SELFJ_NETWORK_TESTS=1 online)"}
    for item in items:
        for marker, reason in reasons.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))
