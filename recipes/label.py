"""SELF-J self-labelling: sample k responses per instruction, self-evaluate them against the reference,
measure similarity to the reference, and combine into quality classes 0-9.

    accelerate launch recipes/label.py --config recipes/configs/label.yaml
    accelerate launch --cpu --num_processes 2 recipes/label.py --data ../shared/data/flask/flask_ref.jsonl \
        --max_instructions 16 --k 4 --output_dir runs/labels

Re-combine existing samples with other label settings (no sampling): add --relabel_only true.
"""

from dataclasses import dataclass, field
from pathlib import Path

from selfj_rlhf.cli import make_trl_parser, run_cli
from selfj_rlhf.io import read_shards
from selfj_rlhf.labeling import LabelConfig, finalize_labels, load_label_sources, run_labeling


@dataclass
class LabelRunArgs:
    relabel_only: bool = field(default=False, metadata={
        "help": "Only recompute labels.jsonl from the samples already in output_dir (new combine/normalize)."})
    partial: bool = field(default=False, metadata={
        "help": "With relabel_only: label just the instructions sampled so far (a run stopped early)."})


def make_parser():
    return make_trl_parser(LabelConfig, LabelRunArgs)


def main(argv=None):
    config, run_args = make_parser().parse_args_and_config(argv)
    if run_args.relabel_only:
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
