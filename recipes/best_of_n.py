"""Best-of-n sampling reranked by the SELF-J judge.

    accelerate launch recipes/best_of_n.py --config recipes/configs/best_of_n.yaml
    accelerate launch --cpu --num_processes 2 recipes/best_of_n.py --policy smollm2-135m-instruct --n 4 \
        --max_prompts 8 --output_dir runs/bon
"""

from selfj_rlhf.best_of_n import BestOfNConfig, run_best_of_n
from selfj_rlhf.cli import make_trl_parser, run_cli


def make_parser():
    return make_trl_parser(BestOfNConfig)


def main(argv=None):
    (config,) = make_parser().parse_args_and_config(argv)
    summary = run_best_of_n(config)
    if summary is not None:
        print(summary)


if __name__ == "__main__":
    run_cli(main)
