"""``selfj data prepare``: one command that fills a ``SELFJ_DATA_DIR`` with every file the recipes and benchmarks read.

    selfj data prepare --data_dir data                              # presets with a hub copy, then the RL prompts
    selfj data prepare --data_dir data --raw flask=FLASK/evaluation_set/flask_evaluation.jsonl
    selfj data prepare --data_dir data --check                      # what is there, and what can run

Each preset is converted to the file name its readers expect (``datasets.LOCAL_FILES``): from ``--raw NAME=PATH``
when given, else from its hub copy when it has one; a preset with neither is listed with where its raw files are.
When FLASK, GPTeacher codegen and GSM8K are all present, the RL prompt files are written too:
``rl_prompts/prompts_train.jsonl`` and ``rl_prompts/prompts_heldout.jsonl`` (disjoint, balanced by source), which
the rejection-sampling, DPO and GRPO configs read, and ``rl_prompts/prompts_judge_train.jsonl`` (the training prompts
and more drawn with every RL prompt excluded), which the own-samples judge's chain samples (sample_own.yaml). ``--check`` changes nothing: it lists each preset and, in a
checkout, each recipe config and benchmark with the data it still lacks.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import ConfigError, SelfJError
from ..core.io import atomic_write_json, atomic_write_jsonl
from .datasets import LOCAL_FILES, PRESETS, iter_records, resolve_dataset
from .prompts import draw_prompt_split, write_prompt_split

RL_PROMPTS_DIR = "rl_prompts"
RL_SOURCES = ("flask", "gpteacher_codegen", "gsm8k")
JUDGE_TRAIN_PROMPTS = "prompts_judge_train.jsonl"
# a benchmark's data defaults: evals.lib.common.default_data("<preset>") calls
DEFAULT_DATA_CALL = re.compile(r"default_data\(\s*[\"'](\w+)[\"']\s*\)")
DATA_DIR_PATH = re.compile(r"\$\{?SELFJ_DATA_DIR\}?/([\w./-]+)")


@dataclass
class DataPrepareConfig:
    """Where the converted data goes and where raw files are."""

    data_dir: str | None = field(default=None, metadata={
        "help": "The folder to fill (default: $SELFJ_DATA_DIR, else ./data). Point SELFJ_DATA_DIR at it afterwards."})
    raw: list[str] = field(default_factory=list, metadata={
        "help": "NAME=PATH: convert preset NAME from raw files on disk (a checkout of its source); repeatable."})
    check: bool = field(default=False, metadata={
        "help": "Only report: each preset present or missing, and which recipes and benchmarks can run."})
    rl_train_per_source: int = field(default=32, metadata={"help": "RL training prompts per source."})
    rl_heldout_per_source: int = field(default=22, metadata={"help": "RL held-out prompts per source."})
    rl_seed: int = field(default=7, metadata={"help": "Seed of the RL prompt split."})
    judge_extra_per_source: int = field(default=48, metadata={
        "help": "The own-samples judge's training prompts (rl_prompts/prompts_judge_train.jsonl): the RL training "
                "prompts plus this many more per source, drawn with every RL prompt excluded (0: not written)."})

    def __post_init__(self):
        for item in self.raw:
            name, sep, path = item.partition("=")
            if not sep or not path:
                raise ConfigError(f"--raw takes NAME=PATH, got '{item}'")
            if name not in PRESETS:
                raise ConfigError(f"--raw: unknown preset '{name}'; presets: {', '.join(sorted(PRESETS))}")

    def target(self) -> Path:
        return Path(self.data_dir or os.environ.get("SELFJ_DATA_DIR") or "data").expanduser()


def preset_status(data_dir: Path) -> dict[str, dict]:
    """Per preset: its expected file under ``data_dir``, whether it is there, and where its data comes from."""
    return {name: {"file": LOCAL_FILES[name], "present": (data_dir / LOCAL_FILES[name]).is_file(),
                   "origin": preset.origin, "hub_copy": preset.hub_download is not None}
            for name, preset in PRESETS.items()}


def convert_preset(name: str, raw: str | None, data_dir: Path) -> Path:
    """Convert one preset (from ``raw`` or its hub copy) into ``data_dir``, atomically."""
    spec = f"preset:{name}={raw}" if raw else f"preset:{name}"
    environ = os.environ.pop("SELFJ_DATA_DIR", None)  # read the source, never a converted file in a data dir
    try:
        source = resolve_dataset(spec)
    finally:
        if environ is not None:
            os.environ["SELFJ_DATA_DIR"] = environ
    target = data_dir / LOCAL_FILES[name]
    target.parent.mkdir(parents=True, exist_ok=True)
    if name == "alpaca_eval" and target.suffix == ".json":  # AlpacaEval reads a JSON list of its outputs

        atomic_write_json(target, [row for _, row in iter_records(source)])
        return target
    partial = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, partial)
    partial.replace(target)
    return target


def rl_prompt_files(cfg: DataPrepareConfig, data_dir: Path) -> tuple[Path, Path]:
    """The RL prompt split and, from it, the own-samples judge's training prompts (both disjoint from the held-out
    prompts)."""
    sources = {name: str(data_dir / LOCAL_FILES[name]) for name in RL_SOURCES}
    train, heldout = write_prompt_split(sources, data_dir / RL_PROMPTS_DIR, train_per_source=cfg.rl_train_per_source,
                                        heldout_per_source=cfg.rl_heldout_per_source, seed=cfg.rl_seed)
    if cfg.judge_extra_per_source:
        drawn = frozenset(row["id"] for path in (train, heldout) for _, row in iter_records(path))
        extra, _ = draw_prompt_split(sources, train_per_source=cfg.judge_extra_per_source, heldout_per_source=0,
                                     seed=cfg.rl_seed, exclude_ids=drawn)
        atomic_write_jsonl(data_dir / RL_PROMPTS_DIR / JUDGE_TRAIN_PROMPTS,
                           [row for _, row in iter_records(train)] + extra)
    return train, heldout


def prepare(cfg: DataPrepareConfig) -> dict:
    """Fill the data folder; returns ``{preset: status}`` plus the RL prompt files. A preset that cannot be had
    is reported, not fatal: the others are still converted."""
    data_dir = cfg.target()
    raw = dict(item.split("=", 1) for item in cfg.raw)
    report = {}
    for name, status in preset_status(data_dir).items():
        if name in raw or (not status["present"] and status["hub_copy"]):
            try:
                convert_preset(name, raw.get(name), data_dir)
                status = {**status, "present": True, "converted": True}
            except SelfJError as err:  # offline, or a bad raw file: reported, and the other presets go on
                status = {**status, "error": str(err)}
        report[name] = status
    rl_ready = all(report[name]["present"] for name in RL_SOURCES)
    report[RL_PROMPTS_DIR] = {"file": f"{RL_PROMPTS_DIR}/prompts_train.jsonl, prompts_heldout.jsonl",
                              "present": rl_ready, "origin": f"made here from {', '.join(RL_SOURCES)}"}
    if rl_ready:
        rl_prompt_files(cfg, data_dir)
    return report


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _needs_of_config(path: Path) -> set[str]:
    """The data-dir files and presets a recipe config's values read (comments are not values)."""
    import yaml

    needs = set()
    for value in _strings(yaml.safe_load(path.read_text())):
        needs |= {f"file:{found}" for found in DATA_DIR_PATH.findall(value)}
        needs |= {f"preset:{name}" for name in re.findall(r"preset:(\w+)", value)}
    return needs


def consumers(root: Path) -> dict[str, set[str]]:
    """In a checkout: each recipe config and benchmark with the data it reads (files under the data dir, presets)."""
    found = {}
    for config in sorted((root / "recipes" / "configs").glob("*.yaml")):
        found[f"recipes/configs/{config.name}"] = _needs_of_config(config)
    for script in sorted((root / "evals").glob("*.py")):
        found[f"evals/{script.name}"] = {f"preset:{name}" for name in DEFAULT_DATA_CALL.findall(script.read_text())}
    return {name: needs for name, needs in found.items() if needs}


def check(cfg: DataPrepareConfig, root: Path | None = None) -> dict:
    """What is present, and for each recipe config and benchmark whether its data is (nothing is written)."""
    data_dir = cfg.target()
    presets = preset_status(data_dir)
    rl_present = all((data_dir / RL_PROMPTS_DIR / f).is_file() for f in ("prompts_train.jsonl", "prompts_heldout.jsonl"))

    def missing(need: str) -> bool:
        kind, _, value = need.partition(":")
        if kind == "preset":
            return not presets[value]["present"]
        return not (data_dir / value).exists()

    runnable = {name: sorted(n for n in needs if missing(n)) for name, needs in consumers(root or Path.cwd()).items()}
    return {"data_dir": str(data_dir), "presets": presets, "rl_prompts": rl_present, "consumers": runnable}


def print_report(report: dict, data_dir: Path) -> None:
    print(f"SELFJ_DATA_DIR={data_dir}")
    for name, status in report["presets"].items() if "presets" in report else report.items():
        mark = "present" if status["present"] else "MISSING"
        line = f"  {name:<18} {mark:<8} {status['file']}"
        if not status["present"]:
            line += f"\n  {'':<18} get it: {status['origin']}" + (f"\n  {'':<18} {status['error']}"
                                                                   if status.get("error") else "")
        print(line)
    if "consumers" in report:
        print(f"  {'rl_prompts':<18} {'present' if report['rl_prompts'] else 'MISSING':<8} "
              f"{RL_PROMPTS_DIR}/ (selfj data prepare writes it once {', '.join(RL_SOURCES)} are present)")
        print("recipes and benchmarks:")
        for name, lacking in report["consumers"].items():
            print(f"  {'can run' if not lacking else 'lacks ' + ', '.join(lacking)}: {name}")
