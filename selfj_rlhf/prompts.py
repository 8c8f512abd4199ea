"""Prompt sets for generation: local JSON/JSONL/parquet, hub datasets, dataset presets, or the bundled set."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, RecordError
from .io import iter_records, require_str

BUNDLED_PROMPTS = Path(__file__).resolve().parent / "data" / "prompts.jsonl"


@dataclass
class PromptRecord:
    """One instruction to answer. ``id`` is stable and seeds the instruction's generation."""

    id: str
    instruction: str
    dataset: str
    reference: str | None = None
    meta: dict = field(default_factory=dict)


def _rows(dataset: str | None, split: str):
    """Yield ``(source_name, line, row)`` for a local file, the bundled set, or a hub dataset."""
    from .datasets import is_spec, resolve_dataset

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
