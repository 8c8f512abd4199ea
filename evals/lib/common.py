"""Helpers shared by the benchmark scripts: machine description and result writing."""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import sys
from pathlib import Path

from selfj_rlhf.core.io import atomic_write_json, atomic_write_text

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
REPO_ROOT = Path(__file__).resolve().parents[2]


def machine_info() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
            "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    return info


def finite_or_none(value):
    """Recursively replace NaN/inf (undefined metrics, e.g. a correlation over one row) by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    return value


def data_dir() -> Path | None:
    """Where converted data lives: ``SELFJ_DATA_DIR`` when it is set."""
    value = os.environ.get("SELFJ_DATA_DIR")
    return Path(value).resolve() if value else None


def default_data(source: str) -> str:
    """Default of a data argument: the source's file under ``SELFJ_DATA_DIR`` when that is set, else its preset
    (downloaded from the hub, or a clear error asking for the raw files where the source has no hub copy)."""
    from selfj_rlhf.data.datasets import LOCAL_FILES

    root = data_dir()
    return str(root / LOCAL_FILES[source]) if root else f"preset:{source}"


def portable(value):
    """Results that travel: absolute paths under the data directory become ``<data>/...``, under the repository
    ``./...``, under the temporary directory ``<tmp>/...`` (recursively through dicts, lists and text)."""
    import tempfile

    if isinstance(value, str):
        for root, name in ((data_dir(), "<data>"), (REPO_ROOT, "."), (Path(tempfile.gettempdir()).resolve(), "<tmp>")):
            if root is not None:
                value = value.replace(str(root), name)
        return value
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    return value


def write_results(name: str, payload: dict, markdown: str, json_path: str | None = None) -> None:
    """Write ``<name>.json`` and ``<name>.md`` under evals/results (and the JSON to ``json_path`` if given), with
    machine paths made portable."""
    payload = portable(finite_or_none(payload))
    markdown = portable(markdown)
    atomic_write_json(RESULTS_DIR / f"{name}.json", payload)
    atomic_write_text(RESULTS_DIR / f"{name}.md", markdown)
    if json_path:
        atomic_write_json(json_path, payload)


def judges_measured(specs: dict[str, str]) -> list[dict]:
    """What a result records of the judges it measured: ``[{"label", "name", "hash"}]`` (versioned name and content
    hash, ``selfj_rlhf.judge.directory.judge_identity``), so it never names a judge other than the one it measured."""
    from selfj_rlhf.judge.directory import judge_identity

    return [{"label": label, **judge_identity(spec)} for label, spec in specs.items()]


def command_line() -> str:
    """The command that ran this benchmark, as typed from the repository root (``python -m evals.<name> ...``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = ["-m", spec.name] if spec is not None else [sys.argv[0]]
    return " ".join(["python", *program, *sys.argv[1:]])


def scoring_flops(model, token_counts: list[int]) -> float:
    """FLOPs of judge scoring: 2 x (matmul parameters) x tokens + 2 x layers x tokens^2 x hidden (causal
    attention scores and values) per sequence, plus the output head for the last position only."""
    import torch

    matmul_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)
                        and m is not model.get_output_embeddings())
    cfg = model.config
    return sum(2 * matmul_params * t + 2 * cfg.num_hidden_layers * t * t * cfg.hidden_size
               + 2 * cfg.hidden_size * cfg.vocab_size for t in token_counts)
