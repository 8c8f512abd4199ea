"""Records on disk: validated JSON/JSONL reading, atomic writes and resumable append-only shards.

Every stage of selfj-rlhf hands its output to the next as a file. The helpers here make those files
safe to produce from long, killable jobs:

* ``read_records`` loads JSON / JSONL / parquet rows and reports bad input as ``file:line: field``.
* ``atomic_write_text`` / ``atomic_write_json`` write to a temporary sibling and ``os.replace`` it, so a
  reader never sees half a file.
* ``ShardWriter`` appends one finished row per line (flushed and fsynced), and ``read_shards`` reads
  every shard back, ignoring a torn last line left by a kill. Resuming = skip the ids already there.
"""

from __future__ import annotations

import glob
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import ConfigError, RecordError


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise RecordError(path, line_no, None, f"invalid UTF-8 ({err.reason} at byte {err.start})") from None
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                raise RecordError(path, line_no, None, f"malformed JSON ({err.msg}, column {err.colno})") from None
            if not isinstance(row, dict):
                raise RecordError(path, line_no, None, f"expected a JSON object, got {type(row).__name__}")
            yield line_no, row


def _iter_json(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise RecordError(path, None, None, f"invalid UTF-8 ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise RecordError(path, err.lineno, None, f"malformed JSON ({err.msg}, column {err.colno})") from None
    if isinstance(data, dict):  # {"data": [...]} or a column-oriented dict are common; accept a list under one key
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise RecordError(path, None, None, "expected a JSON list of objects (or an object holding one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise RecordError(path, None, None, f"expected a JSON list of objects, got {type(data).__name__}")
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            # JSON lists have no line numbers per item; report the item index as the "line" (1-based).
            raise RecordError(path, index + 1, None, f"item {index} is {type(row).__name__}, expected an object")
        yield index + 1, row


def read_records(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_or_item_number, row)`` from a .jsonl, .json or .parquet file (``selfj_rlhf.data.datasets.iter_records``
    also reads the data a ``preset:`` / ``hf:`` spec names)."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(path, None, None, "file not found")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from _iter_jsonl(path)
    elif suffix == ".json":
        yield from _iter_json(path)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for index, row in enumerate(pq.read_table(path).to_pylist()):
            yield index + 1, row
    else:
        raise RecordError(path, None, None, f"unsupported file type '{suffix}' (use .jsonl, .json or .parquet)")


def require_str(row: dict, field: str, path, line, *, allow_empty: bool = False, optional: bool = False) -> str | None:
    """Return ``row[field]`` as a string, or raise a ``RecordError`` that names the row and field."""
    if field not in row or row[field] is None:
        if optional:
            return None
        raise RecordError(path, line, field, "missing")
    value = row[field]
    if not isinstance(value, str):
        raise RecordError(path, line, field, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RecordError(path, line, field, "empty string")
    return value


def require_finite(value: Any, path, line, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(path, line, field, f"expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise RecordError(path, line, field, f"expected a finite number, got {value}")
    return float(value)


_UMASK = os.umask(0)
os.umask(_UMASK)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old file or the whole new one.

    The temporary file's name carries the writer's process id; a writer first removes the temporary files of the
    same target left by processes that no longer run (a kill between writing and renaming)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        owner = stale.name[len(path.name) + 2:].split(".", 1)[0]
        if owner.isdigit() and not _process_alive(int(owner)):
            stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; the result should look like any written file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=indent, allow_nan=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows))


class ShardWriter:
    """Append-only JSONL shard for one process; one complete row per line, durable after ``write``.

    A kill can leave a torn last line; opening the shard again truncates it first, so the rows that
    follow never get glued onto a fragment.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_torn_tail(self.path)
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self._fh.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _truncate_torn_tail(path: Path) -> None:
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with open(path, "r+b") as fh:
            fh.truncate(keep)


def read_shards(directory: str | os.PathLike, pattern: str = "*.jsonl", key: str = "id") -> dict[str, dict]:
    """Read every finished row from the shards in ``directory``: ``{row[key]: row}``.

    A torn trailing line (no newline: the writer was killed mid-row) is ignored; the first copy of a
    duplicated id wins, so a row is never counted twice.
    """
    rows: dict[str, dict] = {}
    directory = Path(directory)
    if not directory.is_dir():
        return rows
    for shard in sorted(directory.glob(pattern)):
        data = shard.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        for line_no, raw in enumerate(complete.splitlines(), start=1):
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as err:
                raise RecordError(shard, line_no, None, f"corrupt shard row ({err.msg})") from None
            rows.setdefault(str(row[key]), row)
    return rows


def ordered_shard_rows(shard_dir: str | os.PathLike, ids: list[str], what: str = "result",
                       items: str = "prompts") -> list[dict]:
    """The rows of a finished sharded stage in the order of ``ids``; an error when one is missing."""
    rows = read_shards(shard_dir)
    missing = [i for i in ids if i not in rows]
    if missing:
        raise RuntimeError(f"{len(missing)} {items} have no {what} after the run (first: {missing[0]})")
    return [rows[i] for i in ids]


def pin_run_settings(out: Path, settings: dict, name: str = "run_config.json") -> None:
    """Record the result-changing settings of a run in ``out/name``; refuse to resume with other ones."""

    path = Path(out) / name
    if path.is_file():
        previous = json.loads(path.read_text())
        changed = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
        if changed:
            raise ConfigError(f"{out} holds a run made with other settings {changed}; use a new --output_dir")
    else:
        atomic_write_json(path, settings)


def pin_run_inputs(out: Path, items: list, item_id, content, extra: dict | None = None,
                   name: str = "inputs.json") -> None:
    """Record what a run read in ``out/name``: a sha256 of every item's ``content(item)`` (JSON) by id, and
    ``extra`` (for example a judge's content hash). Refuse to resume when an item the run has seen changed, or
    ``extra`` did: rows made from the old inputs would be mixed silently with rows made from the new ones. Items
    added since (a run extended with more prompts) are recorded; a run started before inputs were pinned gets them
    now."""
    import hashlib

    hashes = {str(item_id(item)): hashlib.sha256(json.dumps(content(item), sort_keys=True, ensure_ascii=False,
                                                            default=str).encode()).hexdigest()[:16]
              for item in items}
    path = Path(out) / name
    previous = json.loads(path.read_text()) if path.is_file() else {"items": {}, "extra": extra or {}}
    if previous["extra"] != (extra or {}):
        raise ConfigError(f"{out} was started with {previous['extra']} and this run has {extra or {}}: the judge or "
                          "another input changed since; restore it, or start again in a new --output_dir")
    changed = [key for key, digest in hashes.items() if previous["items"].get(key, digest) != digest]
    if changed:
        raise ConfigError(f"{out} was started on other inputs: {len(changed)} items changed since (first: "
                          f"'{changed[0]}'); restore them, or start again in a new --output_dir")
    if not path.is_file() or hashes.keys() - previous["items"].keys():
        atomic_write_json(path, {"items": {**previous["items"], **hashes}, "extra": extra or {}})


def start_sharded_run(accelerator, out: Path, settings: dict, items: list, item_id, content=None,
                      extra_inputs: dict | None = None) -> tuple[Path, dict, list]:
    """Prepare a resumable sharded stage: create ``out``, pin ``settings`` and the inputs (``content(item)`` of
    every item, default its id, and ``extra_inputs``; main process), then return ``(shard_dir, finished rows by
    id, items still to do)`` on every process."""
    out = Path(out)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        pin_run_settings(out, settings)
        pin_run_inputs(out, items, item_id, content or item_id, extra_inputs)
    accelerator.wait_for_everyone()
    shard_dir = out / "shards"
    done = read_shards(shard_dir)
    return shard_dir, done, [item for item in items if item_id(item) not in done]


def publish_directory(staging: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Make the finished directory ``staging`` the one at ``final`` in one atomic step, and return ``final``.

    A directory cannot be replaced atomically, a symbolic link can: ``staging`` is renamed to a hidden sibling
    ``.<name>.<token>`` and ``final`` becomes a relative link to it, swapped with ``os.replace``. A reader that opens
    ``final`` sees the old version or the new one, whenever a kill comes; one that resolves the link first
    (``SelfJudge.from_pretrained`` does) reads one version throughout. Versions no link points to (the previous
    one, those of killed publishes) are removed. A real directory at ``final`` (a training run's checkpoints, a
    judge published before links) is moved aside first: the one step that is not atomic.
    """
    import secrets
    import shutil

    staging, final = Path(staging), Path(final)
    token = secrets.token_hex(6)
    version = final.with_name(f".{final.name}.{token}")
    os.replace(staging, version)
    link = final.with_name(f".{final.name}.{token}.link")
    os.symlink(version.name, link)
    if final.exists() and not final.is_symlink():
        os.replace(final, final.with_name(f".{final.name}.{token}.old"))
    os.replace(link, final)
    _fsync_directory(final.parent)
    current = os.readlink(final)
    for stale in final.parent.glob(f".{glob.escape(final.name)}.*"):
        if stale.name != current:
            if stale.is_symlink() or stale.is_file():
                stale.unlink(missing_ok=True)
            else:
                shutil.rmtree(stale, ignore_errors=True)
    return final


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-<step>`` in ``output_dir`` that a kill did not cut short, or None.

    The transformers Trainer writes a checkpoint in place, ``trainer_state.json`` last, and its own
    ``get_last_checkpoint`` returns the newest directory whatever its state; resuming from a torn one
    fails or silently loses state. A checkpoint counts here only when its ``trainer_state.json`` parses;
    newer torn ones are removed so the Trainer rewrites them from scratch.
    """
    import re
    import shutil

    directory = Path(output_dir)
    if not directory.is_dir():
        return None
    steps = sorted((int(m.group(1)), p) for p in directory.iterdir()
                   if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name)))
    for _, path in reversed(steps):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, ValueError):
            shutil.rmtree(path, ignore_errors=True)
    return None
