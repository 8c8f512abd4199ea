"""Build DPO preference pairs from judge-scored candidates (best-of-n candidates.jsonl or any JSONL of
prompt + completions + scores).

    python recipes/build_pairs.py --config recipes/configs/build_pairs.yaml
    python recipes/build_pairs.py --candidates runs/best_of_n/candidates.jsonl --strategy max_min \
        --min_margin 0.5 --output_file runs/pairs/pairs.jsonl
"""

from dataclasses import dataclass, field
from pathlib import Path

from selfj_rlhf.cli.recipes import make_trl_parser, run_cli
from selfj_rlhf.core.io import atomic_write_json, atomic_write_jsonl
from selfj_rlhf.rlhf.pairs import PairConfig, build_pairs, load_scored_prompts


@dataclass
class BuildPairsFiles:
    """Where the scored candidates come from and where the pairs go."""

    candidates: str = field(default="runs/best_of_n/candidates.jsonl", metadata={"help": "Scored candidates."})
    output_file: str = field(default="runs/pairs/pairs.jsonl", metadata={
        "help": "DPO pairs (JSONL); the report goes beside it as <name>_report.json."})


def make_parser():
    return make_trl_parser(BuildPairsFiles, PairConfig)


def main(argv=None):
    files, pair_cfg = make_parser().parse_args_and_config(argv)
    rows, report = build_pairs(load_scored_prompts(files.candidates), pair_cfg)
    output = Path(files.output_file)
    atomic_write_jsonl(output, rows)
    atomic_write_json(output.with_name(f"{output.stem}_report.json"), {"candidates": files.candidates, **report})
    print(report)


if __name__ == "__main__":
    run_cli(main)
