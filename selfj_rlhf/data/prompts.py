"""Prompt sets for generation: local JSON/JSONL/parquet, hub datasets, dataset presets, or the bundled set."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import ConfigError, RecordError
from ..core.io import atomic_write_jsonl, require_str
from .datasets import is_spec, iter_records, resolve_dataset

BUNDLED_PROMPTS = Path(__file__).resolve().parent / "prompts.jsonl"


@dataclass
class PromptRecord:
    """One instruction to answer. ``id`` is stable and seeds the instruction's generation."""

    id: str
    instruction: str
    dataset: str
    reference: str | None = None
    meta: dict = field(default_factory=dict)


def prompt_content(prompt: PromptRecord) -> list:
    """What a stage reads of a prompt, for pinning a run's inputs (not where it was read from)."""
    return [prompt.id, prompt.instruction, prompt.reference, prompt.meta]


def _rows(dataset: str | None, split: str):
    """Yield ``(source_name, line, row)`` for a local file, the bundled set, or a hub dataset."""

    if dataset is None:
        path = BUNDLED_PROMPTS
    elif is_spec(dataset) or "$" in dataset:
        path = resolve_dataset(dataset)
    else:
        path = Path(dataset).expanduser()
    if dataset is None or path.suffix.lower() in (".json", ".jsonl", ".ndjson", ".parquet") or path.exists():
        for line, row in iter_records(path):
            yield path, line, row
        return
    from datasets import load_dataset

    for index, row in enumerate(load_dataset(dataset, split=split)):
        yield f"{dataset}[{split}]", index + 1, row


def load_prompts(dataset: str | None = None, *, split: str = "train", instruction_field: str = "instruction",
                 input_field: str = "input", reference_field: str = "reference", id_field: str = "id",
                 max_prompts: int | None = None) -> list[PromptRecord]:
    """Load and validate prompts; errors name the file, line and field.

    A non-empty ``input`` column is appended to the instruction after a blank line (Alpaca style).
    Rows without an ``id`` get ``<file stem>:<line>``. ``dataset`` (AlpacaEval's column) defaults to
    the file stem.
    """
    if max_prompts is not None and max_prompts < 1:
        raise ConfigError(f"max_prompts must be >= 1, got {max_prompts}")
    records: list[PromptRecord] = []
    seen: dict[str, int] = {}
    for source, line, row in _rows(dataset, split):
        instruction = require_str(row, instruction_field, source, line)
        extra_input = require_str(row, input_field, source, line, allow_empty=True, optional=True)
        if extra_input and extra_input.strip():
            instruction = f"{instruction}\n\n{extra_input}"
        reference = require_str(row, reference_field, source, line, allow_empty=True, optional=True)
        raw_id = row.get(id_field)
        if raw_id is None:
            record_id = f"{Path(str(source)).stem}:{line}"
        elif isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) and str(raw_id).strip():
            record_id = str(raw_id)
        else:
            raise RecordError(source, line, id_field, f"expected a non-empty string or integer, got {raw_id!r}")
        if record_id in seen:
            raise RecordError(source, line, id_field, f"duplicate id '{record_id}' (first seen on line {seen[record_id]})")
        seen[record_id] = line
        name = row.get("dataset") if isinstance(row.get("dataset"), str) else Path(str(source)).stem
        meta = {k: row[k] for k in ("category", "source") if k in row}
        records.append(PromptRecord(record_id, instruction, name, reference or None, meta))
        if max_prompts is not None and len(records) >= max_prompts:
            break
    if not records:
        raise RecordError(dataset or BUNDLED_PROMPTS, None, None, "dataset is empty: no prompts to answer")
    return records


PROMPT_FIELDS = ("id", "instruction", "input", "reference", "category")
# a source row's ``meta.split`` that marks it as part of an evaluation set
EVALUATION_SPLITS = ("test",)


def draw_prompt_split(sources: dict[str, str], *, train_per_source: int, heldout_per_source: int,
                      min_reference_chars: int = 20, max_instruction_chars: int = 1200, seed: int = 7,
                      exclude_ids: frozenset[str] = frozenset()) -> tuple[list[dict], list[dict]]:
    """Disjoint train and held-out prompt rows with references, the same number from each source (a name -> data
    spec map), seeded. Rows keep ``PROMPT_FIELDS``; rows of a source's test split (``meta.split``: GSM8K's test
    problems are an evaluation set, never training prompts), rows with a short reference or a long instruction, or
    whose id is in ``exclude_ids`` (prompts already drawn, so that more prompts stay disjoint from an existing split), are
    skipped. An error names a source that has too few usable rows."""
    import random

    rng = random.Random(seed)
    train, heldout = [], []
    for name, spec in sources.items():
        rows = [row for _, row in iter_records(spec)
                if len(row.get("reference") or "") >= min_reference_chars
                and len(row["instruction"]) + len(row.get("input") or "") <= max_instruction_chars
                and row.get("id") not in exclude_ids
                and (row.get("meta") or {}).get("split") not in EVALUATION_SPLITS]
        wanted = train_per_source + heldout_per_source
        if len(rows) < wanted:
            raise ConfigError(f"{name} ({spec}): {len(rows)} usable rows, {wanted} wanted")
        picked = [{k: r[k] for k in PROMPT_FIELDS if k in r} for r in rng.sample(rows, wanted)]
        train += picked[:train_per_source]
        heldout += picked[train_per_source:]
    return train, heldout


def write_prompt_split(sources: dict[str, str], output_dir: str | Path, *, train_per_source: int,
                       heldout_per_source: int, min_reference_chars: int = 20, max_instruction_chars: int = 1200,
                       seed: int = 7, exclude_ids: frozenset[str] = frozenset()) -> tuple[Path, Path]:
    """``draw_prompt_split`` written atomically as ``prompts_train.jsonl`` and ``prompts_heldout.jsonl``."""
    train, heldout = draw_prompt_split(sources, train_per_source=train_per_source,
                                       heldout_per_source=heldout_per_source, min_reference_chars=min_reference_chars,
                                       max_instruction_chars=max_instruction_chars, seed=seed, exclude_ids=exclude_ids)
    out = Path(output_dir)
    atomic_write_jsonl(out / "prompts_train.jsonl", train)
    atomic_write_jsonl(out / "prompts_heldout.jsonl", heldout)
    return out / "prompts_train.jsonl", out / "prompts_heldout.jsonl"
