"""Best-of-n sampling reranked by the SELF-J judge.

    accelerate launch recipes/best_of_n.py --config recipes/configs/best_of_n.yaml
    accelerate launch --cpu --num_processes 2 recipes/best_of_n.py --policy smollm2-135m-instruct --n 4 \
        --max_prompts 8 --output_dir runs/bon
"""

from selfj_rlhf.rlhf.best_of_n import BestOfNConfig, run_best_of_n
from selfj_rlhf.cli.recipes import make_trl_parser, run_cli
from selfj_rlhf.data.prompts import BUNDLED_PROMPTS
from selfj_rlhf.cli.dry_run import DryRunArgs, dry_run_plan, print_plan


def make_parser():
    return make_trl_parser(BestOfNConfig, DryRunArgs)


def main(argv=None):
    config, dry = make_parser().parse_args_and_config(argv)
    if dry.dry_run:
        print_plan(dry_run_plan("best_of_n", [config], model=config.policy, data=[config.dataset or str(BUNDLED_PROMPTS)],
                                dry=dry, judge=config.resolved_judge(), template=config.judge_template,
                                max_length=config.max_judge_length,
                                stages=[f"generate {config.n} candidates per prompt ({config.backend})",
                                        "score them with the judge", "candidates.jsonl, model_outputs.json"]))
        return
    summary = run_best_of_n(config)
    if summary is not None:
        print(summary)


if __name__ == "__main__":
    run_cli(main)
