"""SELF-J self-labelling: sample k responses per instruction, self-evaluate them against the reference,
measure similarity to the reference, and combine into quality classes 0-9.

    accelerate launch recipes/label.py --config recipes/configs/label.yaml
    accelerate launch --cpu --num_processes 2 recipes/label.py --data preset:gsm8k \
        --max_instructions 16 --k 4 --output_dir runs/labels

Re-combine existing samples with other label settings (no sampling): add --relabel_only true.
Label a response pool of other models' answers instead of sampling (see selfj_rlhf.training.pool):

    python recipes/label.py --config recipes/configs/label_pool.yaml
"""

from dataclasses import dataclass, field
from pathlib import Path

from selfj_rlhf.cli.recipes import make_trl_parser, run_cli
from selfj_rlhf.cli.dry_run import DryRunArgs, dry_run_plan, print_plan
from selfj_rlhf.core.io import read_shards
from selfj_rlhf.training.labeling import LabelConfig, finalize_labels, load_label_sources, run_labeling
from selfj_rlhf.training.pool import PoolLabelConfig, run_pool_labeling


@dataclass
class LabelRunArgs:
    relabel_only: bool = field(default=False, metadata={
        "help": "Only recompute labels.jsonl from the samples already in output_dir (new combine/normalize)."})
    partial: bool = field(default=False, metadata={
        "help": "With relabel_only: label just the instructions sampled so far (a run stopped early)."})


def make_parser():
    return make_trl_parser(LabelConfig, PoolLabelConfig, LabelRunArgs, DryRunArgs)


def main(argv=None):
    config, pool, run_args, dry = make_parser().parse_args_and_config(argv)
    if dry.dry_run:
        stages = (["teacher signals of the pool's train groups", "labels.jsonl"] if pool.pool else
                  [f"sample {config.k} answers per instruction ({config.backend})",
                   "self-evaluation with the reference + similarity", "labels.jsonl"])
        print_plan(dry_run_plan("label", [config, pool], model=config.policy, data=pool.pool or config.data, dry=dry,
                                template=config.judge_template, max_length=config.max_judge_length, stages=stages))
        return
    if pool.pool:
        summary = run_pool_labeling(config, pool)
    elif run_args.relabel_only:
        ids = [s.id for s in load_label_sources(config)]
        if run_args.partial:
            sampled = read_shards(Path(config.output_dir) / "shards")
            ids = [i for i in ids if i in sampled]
        summary = finalize_labels(config, ids)
    else:
        summary = run_labeling(config)
    if summary is not None:
        print({k: v for k, v in summary.items() if k != "config"})


if __name__ == "__main__":
    run_cli(main)
