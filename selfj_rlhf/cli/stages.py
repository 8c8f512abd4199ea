"""The judge-building stages behind both their recipe and their ``selfj`` subcommand: label, train the judge.

    selfj sample --config recipes/configs/sample_own.yaml                 # = python recipes/sample.py ...
    selfj label --config recipes/configs/label_own_samples.yaml           # = python recipes/label.py ...
    selfj train-judge --config recipes/configs/train_judge_own_samples.yaml
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import ConfigError
from ..core.io import read_shards
from ..training.labeling import LabelConfig, finalize_labels, load_label_sources, run_labeling
from ..training.pool import PoolLabelConfig, run_pool_labeling
from ..training.train_judge import train_judge, train_scalar_judge


@dataclass
class LabelRunArgs:
    relabel_only: bool = field(default=False, metadata={
        "help": "Only recompute labels.jsonl from the samples already in output_dir (new combine/normalize)."})
    partial: bool = field(default=False, metadata={
        "help": "With relabel_only: label just the instructions sampled so far (a run stopped early)."})


def run_label_stage(config: LabelConfig, pool: PoolLabelConfig, run_args: LabelRunArgs) -> dict | None:
    """Label a response pool (``pool.pool``), or sample and self-label, or recombine existing samples."""
    if pool.pool:
        return run_pool_labeling(config, pool)
    if run_args.relabel_only:
        ids = [s.id for s in load_label_sources(config)]
        if run_args.partial:
            sampled = read_shards(Path(config.output_dir) / "shards")
            ids = [i for i in ids if i in sampled]
        return finalize_labels(config, ids)
    return run_labeling(config)


def run_train_judge_stage(config, training_args) -> Path:
    """Train the judge the config describes: a scalar head on the frozen model, or the SELF-J digit judge."""
    if config.head == "scalar":
        return train_scalar_judge(config, training_args.output_dir, seed=training_args.seed)
    if config.head == "digit":
        return train_judge(config, training_args)
    raise ConfigError(f"head must be digit or scalar, got '{config.head}'")
