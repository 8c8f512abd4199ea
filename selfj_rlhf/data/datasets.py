"""Datasets by name: every data argument takes a local file, a hub dataset, or a preset of a public source.

Forms of a data spec (``resolve_dataset``):

* ``path/to/file.jsonl`` (or ``.json`` / ``.parquet``): read as it is; the recipe's ``*_field`` options map its
  columns.
* ``hf:<dataset id>[:<config>][@<split>]``: ``datasets.load_dataset`` on the hub (or its local cache), columns as
  they are; e.g. ``hf:openai/gsm8k:main@test``.
* ``preset:<name>``: a public source converted to the project schema (docs/data.md), downloaded from its hub
  copy where one exists. Instruction rows: ``id, instruction, input, reference, source, category, meta``;
  grade rows: ``id, instruction, response, score, scale, judge, source, model, question_id, reference,
  rationale``; pairwise rows: ``id, instruction, response_a, response_b, preference, judge, source, subset``.
* ``preset:<name>=<path>``: the same conversion from the source's raw files on disk (offline use; for sources
  that live only in a GitHub repository, pass the file or folder of a checkout).
* ``preset:<name>@<split>`` (also with ``=<path>``): only the rows whose ``meta.split`` is ``<split>``; training
  configs read ``preset:gsm8k@train``, never GSM8K's test problems.

With ``SELFJ_DATA_DIR`` set to a folder of already converted files (``LOCAL_FILES``: e.g.
``gsm8k/gsm8k_ref.jsonl``), ``preset:<name>`` reads the file there instead of converting or downloading.

Converted and downloaded data is written once, atomically, under ``<cache>/datasets/`` (see
``models.cache_root``) and read from there afterwards.

Presets (raw layout -> schema):

==================  ===========================================================================================
alpaca_eval         AlpacaEval outputs JSON list ``{instruction, output, generator, dataset}`` -> A rows whose
                    reference is the output (AlpacaEval's columns kept, so it also serves as reference outputs). Hub: ``tatsu-lab/alpaca_eval``, file
                    ``alpaca_eval_gpt4_baseline.json`` (the AlpacaEval 2.0 reference, GPT-4 Turbo), fetched as a
                    file because the hub loader script no longer runs under ``datasets`` 4.
gsm8k               ``{question, answer}`` rows (the grade-school-math JSONL or the hub parquet) -> A rows;
                    calculator annotations ``<<...>>`` removed, ``#### N`` -> ``The answer is N.``.
                    Hub: ``openai/gsm8k`` (config ``main``, both splits).
arena_bench_v1      lm-sys/arena-hard-auto (commit 4a705dd, ``data/arena-bench-v1``): the
                    ``model_judgment/*.jsonl`` files ``{question_id, model, user_prompt, judgment, score}`` ->
                    grade rows; question, reference and answer are cut from ``user_prompt`` at its markers;
                    rows without a score are dropped. GitHub only: pass the folder.
llmbar              princeton-nlp/LLMBar ``dataset.json`` lists ``{input, output_1, output_2, label}`` -> pairwise
                    rows (label 1 -> ``a``). Pass one ``dataset.json`` or the repository's ``Dataset`` folder
                    (every subset under it). GitHub only.
flask               kaistAI/FLASK ``evaluation_set/flask_evaluation.jsonl`` ``{idx, instruction, answer, task,
                    skill, domain, difficulty}`` -> A rows; the AlpacaEval source tasks (Self-instruct, Koala,
                    Vicuna) are dropped; category from the domain. GitHub only.
gpteacher_codegen   teknium1/GPTeacher ``Codegen/codegen-instruct.json`` ``{instruction, input, response}`` -> A
                    rows, category ``coding``. GitHub only.
==================  ===========================================================================================
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..core.errors import ConfigError, RecordError
from ..core.io import atomic_write_jsonl, read_records
from ..core.models import cache_root

FLASK_ALPACAEVAL_TASKS = ("Self-instruct", "Koala", "Vicuna")
ARENA_MARKERS = {
    "instruction": ("[Question]", "[The Start of Reference Answer]"),
    "reference": ("[The Start of Reference Answer]", "[The End of Reference Answer]"),
    "response": ("[The Start of Assistant's Answer]", "[The End of Assistant's Answer]"),
}


# each preset's converted file inside SELFJ_DATA_DIR
LOCAL_FILES = {"arena_bench_v1": "arena_bench_v1/grades.jsonl", "llmbar": "llmbar/pairwise.jsonl",
               "alpaca_eval": "alpaca_eval/gpt4_1106_preview_outputs.json", "flask": "flask/flask_ref.jsonl",
               "gsm8k": "gsm8k/gsm8k_ref.jsonl", "gpteacher_codegen": "gpteacher_codegen/codegen_ref.jsonl"}


@dataclass(frozen=True)
class Preset:
    """A public source: how to read its raw layout, and where its hub copy is (None: GitHub only)."""

    convert: Callable[[Path], Iterator[dict]]
    hub_download: Callable[[], Path] | None
    description: str
    origin: str  # where the raw files are, for a user who must fetch them


# ---------------------------------------------------------------------------------------------- raw readers
def _raw_rows(path: Path) -> Iterator[tuple[Path, int, dict]]:
    """(file, line or 1-based item index, row) from a JSONL / JSON list / parquet file or every such file under a
    folder (sorted, so conversions are reproducible)."""

    files = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl", ".parquet")) if path.is_dir() else [path]
    if not files:
        raise RecordError(path, None, None, "no .json, .jsonl or .parquet file found")
    for file in files:
        for line, row in read_records(file):
            yield file, line, row


def _field(row: dict, name: str, file: Path, line: int, *, kind=str):
    value = row.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        got = "missing" if value is None else f"expected {kind.__name__}, got {type(value).__name__}"
        raise RecordError(file, line, name, got)
    return value


# ---------------------------------------------------------------------------------------------- converters
def convert_alpaca_eval(path: Path) -> Iterator[dict]:
    for index, (file, line, row) in enumerate(_raw_rows(path)):
        output = _field(row, "output", file, line)
        # AlpacaEval's own columns stay beside the schema's, so the file is also a reference_outputs file
        yield {"id": f"alpaca_eval:{index}", "instruction": _field(row, "instruction", file, line), "input": "",
               "reference": output, "source": "alpaca_eval", "category": "common",
               "meta": {"generator": row.get("generator"), "dataset": row.get("dataset")},
               "output": output, "generator": row.get("generator"), "dataset": row.get("dataset")}


def gsm8k_reference(answer: str) -> tuple[str, str]:
    """(cleaned solution, final answer): calculator annotations removed, ``#### N`` -> ``The answer is N.``"""
    text = re.sub(r"<<[^>]*>>", "", answer)
    match = re.search(r"####\s*(.+?)\s*$", text)
    if not match:
        raise ValueError("no '#### <answer>' line")
    final = match.group(1).strip()
    return f"{text[:match.start()].rstrip()}\nThe answer is {final}.", final


def convert_gsm8k(path: Path) -> Iterator[dict]:
    for file, line, row in _raw_rows(path):
        try:
            reference, final = gsm8k_reference(_field(row, "answer", file, line))
        except ValueError as err:
            raise RecordError(file, line, "answer", str(err)) from None
        split = "test" if "test" in file.stem else "train"
        yield {"id": f"gsm8k:{split}:{line - 1}", "instruction": _field(row, "question", file, line), "input": "",
               "reference": reference, "source": "gsm8k", "category": "academic",
               "meta": {"split": split, "final_answer": final}}


def _between(text: str, start: str, end: str) -> str | None:
    i = text.find(start)
    j = text.find(end, i + len(start)) if i >= 0 else -1
    return text[i + len(start):j].strip() if i >= 0 and j >= 0 else None


def convert_arena_bench_v1(path: Path) -> Iterator[dict]:
    folder = path / "model_judgment" if (path / "model_judgment").is_dir() else path
    for file, line, row in _raw_rows(folder):
        if row.get("score") is None:  # the judge's rating could not be parsed upstream
            continue
        prompt = _field(row, "user_prompt", file, line)
        parts = {name: _between(prompt, *markers) for name, markers in ARENA_MARKERS.items()}
        for name, value in parts.items():
            if value is None:
                raise RecordError(file, line, "user_prompt", f"no {name} between {ARENA_MARKERS[name]}")
        question_id = str(_field(row, "question_id", file, line))
        model = _field(row, "model", file, line)
        yield {"id": f"arena-bench-v1:{question_id}:{model}", **parts,
               "score": _field(row, "score", file, line, kind=int), "scale": "1-10", "judge": "gpt-4",
               "source": "arena-bench-v1", "model": model, "question_id": question_id,
               "rationale": row.get("judgment", ""), "in_alpacaeval": False}


def convert_llmbar(path: Path) -> Iterator[dict]:
    for file, line, row in _raw_rows(path):
        label = _field(row, "label", file, line, kind=int)
        if label not in (1, 2):
            raise RecordError(file, line, "label", f"expected 1 or 2, got {label}")
        subset = file.parent.name.replace("^", "")
        yield {"id": f"llmbar:{subset}:{line - 1}", "instruction": _field(row, "input", file, line),
               "response_a": _field(row, "output_1", file, line), "response_b": _field(row, "output_2", file, line),
               "preference": "a" if label == 1 else "b", "judge": "LLMBar gold label", "source": "llmbar",
               "subset": subset}


def flask_category(domains: list) -> str:
    if "Coding" in domains:
        return "coding"
    if any(d in domains for d in ("Math", "Natural Science", "Health")):
        return "academic"
    return "common"


def convert_flask(path: Path) -> Iterator[dict]:
    for file, line, row in _raw_rows(path):
        task = row.get("task", "")
        if task in FLASK_ALPACAEVAL_TASKS:
            continue
        domains = row.get("domain") if isinstance(row.get("domain"), list) else []
        yield {"id": f"flask:{row.get('idx', line - 1)}", "instruction": _field(row, "instruction", file, line).strip(),
               "input": "", "reference": _field(row, "answer", file, line), "source": "flask",
               "category": flask_category(domains),
               "meta": {"task": task, "domain": domains, "skill": row.get("skill"),
                        "difficulty": row.get("difficulty")}}


def convert_gpteacher_codegen(path: Path) -> Iterator[dict]:
    for file, line, row in _raw_rows(path):
        yield {"id": f"gpteacher-codegen:{line - 1}", "instruction": _field(row, "instruction", file, line),
               "input": row.get("input") or "", "reference": _field(row, "response", file, line),
               "source": "gpteacher-codegen", "category": "coding", "meta": {}}


# ---------------------------------------------------------------------------------------------- hub copies
def _hub_file(repo_id: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset"))


def _hub_gsm8k() -> Path:
    folder = _cache_dir() / "raw" / "gsm8k"
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        _write_jsonl(folder / f"{split}.jsonl", _load_hub("openai/gsm8k", "main", split))
    return folder


PRESETS: dict[str, Preset] = {
    "alpaca_eval": Preset(convert_alpaca_eval, lambda: _hub_file("tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline.json"),
                          "AlpacaEval's 805 instructions, GPT-4 Turbo outputs as references",
                          "hub dataset tatsu-lab/alpaca_eval, file alpaca_eval_gpt4_baseline.json"),
    "gsm8k": Preset(convert_gsm8k, _hub_gsm8k, "GSM8K maths word problems with worked solutions",
                    "hub dataset openai/gsm8k (main), or github.com/openai/grade-school-math: "
                    "grade_school_math/data/{train,test}.jsonl"),
    "arena_bench_v1": Preset(convert_arena_bench_v1, None, "arena-bench v1 GPT-4 1-10 grades with references",
                             "github.com/lm-sys/arena-hard-auto at commit 4a705dd: pass the folder "
                             "data/arena-bench-v1/model_judgment"),
    "llmbar": Preset(convert_llmbar, None, "LLMBar pairwise gold preferences",
                     "github.com/princeton-nlp/LLMBar: pass the folder Dataset (or one dataset.json)"),
    "flask": Preset(convert_flask, None, "FLASK instructions with reference answers",
                    "github.com/kaistAI/FLASK: pass evaluation_set/flask_evaluation.jsonl"),
    "gpteacher_codegen": Preset(convert_gpteacher_codegen, None, "GPTeacher code instructions with GPT-4 answers",
                                "github.com/teknium1/GPTeacher: pass Codegen/codegen-instruct.json"),
}


# ---------------------------------------------------------------------------------------------- resolution
def _cache_dir() -> Path:
    return cache_root() / "datasets"


def _write_jsonl(path: Path, rows: Iterable[dict]) -> Path:
    atomic_write_jsonl(path, rows)
    return path


def _load_hub(dataset_id: str, config: str | None, split: str | None):
    from datasets import load_dataset

    try:
        data = load_dataset(dataset_id, config, split=split)
    except Exception as err:  # offline, unknown id, missing config: one line that names the spec
        raise ConfigError(f"could not load hub dataset '{dataset_id}' (config {config}, split {split}): "
                          f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    if hasattr(data, "keys"):  # a DatasetDict: every split, in order
        return [row for name in data for row in data[name]]
    return list(data)


def iter_records(source: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_or_item_number, row)`` from a .jsonl, .json or .parquet file, or from the data a ``preset:`` /
    ``hf:`` spec names (``resolve_dataset``)."""
    return read_records(resolve_dataset(source))


def is_spec(text: str) -> bool:
    return text.startswith(("preset:", "hf:"))


def _split_rows(source: Path, split: str, spec: str) -> Path:
    """A cached file of the rows of ``source`` whose ``meta.split`` is ``split`` (written once, atomically)."""
    import hashlib

    key = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:12]
    target = _cache_dir() / f"{source.stem}-{split}-{key}.jsonl"
    if not target.is_file() or source.stat().st_mtime > target.stat().st_mtime:
        rows = [row for _, row in read_records(source) if (row.get("meta") or {}).get("split") == split]
        if not rows:
            raise ConfigError(f"{spec}@{split}: no row of {source} has meta.split '{split}'")
        _write_jsonl(target, rows)
    return target


def resolve_dataset(spec: str | Path) -> Path:
    """A local file holding the data a spec names (see the module docstring), converting or downloading once.
    Environment variables in the spec are expanded (``$SELFJ_DATA_DIR/gsm8k/gsm8k_ref.jsonl``)."""
    text = os.path.expandvars(str(spec))
    unset = re.search(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text)
    if unset:
        raise ConfigError(f"data path '{spec}' uses ${unset.group(1)}, which is not set in the environment")
    if text.startswith("preset:"):
        head, sep, raw = text[len("preset:"):].partition("=")
        name, _, split = head.partition("@")
        if split:
            return _split_rows(resolve_dataset(f"preset:{name}{sep}{raw}"), split, f"preset:{name}")
        if name not in PRESETS:
            raise ConfigError(f"unknown dataset preset '{name}'; presets: {', '.join(sorted(PRESETS))}")
        preset = PRESETS[name]
        local = Path(os.environ["SELFJ_DATA_DIR"]) / LOCAL_FILES[name] if os.environ.get("SELFJ_DATA_DIR") else None
        if not raw and local is not None and local.is_file():
            return local
        if raw:
            source = Path(raw).expanduser()
            if not source.exists():
                raise ConfigError(f"preset:{name}: raw data not found at {source}")
        elif preset.hub_download is None:
            raise ConfigError(f"preset '{name}' ({preset.description}) has no hub copy: pass the raw files of a "
                              f"checkout as preset:{name}=<path>, or set SELFJ_DATA_DIR to a folder holding "
                              f"{LOCAL_FILES[name]} (see selfj_rlhf/data/datasets.py)")
        else:
            source = None
        import hashlib

        key = hashlib.sha1(str(source.resolve() if source else "hub").encode()).hexdigest()[:12]
        target = _cache_dir() / f"{name}-{key}.jsonl"
        if not target.is_file() or (source is not None and source.stat().st_mtime > target.stat().st_mtime):
            if source is None:
                try:
                    source = preset.hub_download()
                except Exception as err:  # offline or moved upstream: one line naming the preset
                    raise ConfigError(f"preset '{name}': could not download its hub copy ({type(err).__name__}); "
                                      f"offline, pass preset:{name}=<raw file> or set SELFJ_DATA_DIR") from None
            rows = list(preset.convert(source))
            if not rows:
                raise RecordError(source, None, None, f"preset {name}: no rows converted")
            _write_jsonl(target, rows)
        return target
    if text.startswith("hf:"):
        match = re.fullmatch(r"hf:([^:@]+)(?::([^@]+))?(?:@(.+))?", text)
        if not match:
            raise ConfigError(f"hub dataset spec '{text}' is not hf:<id>[:<config>][@<split>]")
        dataset_id, config, split = match.groups()
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", text[3:])
        target = _cache_dir() / "hub" / f"{safe}.jsonl"
        if not target.is_file():
            _write_jsonl(target, ({k: _jsonable(v) for k, v in row.items()} for row in _load_hub(dataset_id, config, split)))
        return target
    return Path(text)


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)
