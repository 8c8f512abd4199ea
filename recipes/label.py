"""SELF-J self-labelling: sample k responses per instruction, self-evaluate them against the reference,
measure similarity to the reference, and combine into quality classes 0-9.

    accelerate launch recipes/label.py --config recipes/configs/label.yaml
    accelerate launch --cpu --num_processes 2 recipes/label.py --data preset:gsm8k \
        --max_instructions 16 --k 4 --output_dir runs/labels

Re-combine existing samples with other label settings (no sampling): add --relabel_only true.
Label a response pool of other models' answers instead of sampling (see selfj_rlhf.training.pool):

    python recipes/label.py --config recipes/configs/label_pool.yaml
"""

from selfj_rlhf.cli.dry_run import DryRunArgs, dry_run_plan, print_plan
from selfj_rlhf.cli.recipes import make_trl_parser, run_cli
from selfj_rlhf.cli.stages import LabelRunArgs, run_label_stage
from selfj_rlhf.training.labeling import LabelConfig
from selfj_rlhf.training.pool import PoolLabelConfig


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
    summary = run_label_stage(config, pool, run_args)
    if summary is not None:
        print({k: v for k, v in summary.items() if k != "config"})


if __name__ == "__main__":
    run_cli(main)
