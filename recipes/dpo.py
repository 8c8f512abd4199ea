"""DPO on SELF-J judge-built pairs (TRL DPOTrainer); ``--rounds k`` runs iterative DPO: the current
policy samples, the judge scores, pairs are built, DPO trains the next policy.

    accelerate launch recipes/dpo.py --config recipes/configs/dpo.yaml
    accelerate launch recipes/dpo.py --config recipes/configs/dpo.yaml --pairs_file runs/pairs/pairs.jsonl
    accelerate launch --cpu --num_processes 2 recipes/dpo.py --config recipes/configs/dpo.yaml
    accelerate launch --config_file ds_configs/accelerate_zero2.yaml recipes/dpo.py --config recipes/configs/dpo.yaml

Restarting the same command after a kill resumes: finished stages of every round are skipped.
"""

from trl import DPOConfig, ModelConfig

from selfj_rlhf.cli import cpu_training_defaults, make_trl_parser, run_cli
from selfj_rlhf.pairs import PairConfig
from selfj_rlhf.policy_loop import DPOLoopConfig, run_dpo_loop


def make_parser():
    return cpu_training_defaults(make_trl_parser(DPOLoopConfig, PairConfig, DPOConfig, ModelConfig))


def main(argv=None):
    config, pair_config, training_args, model_args = make_parser().parse_args_and_config(argv)
    print(f"final policy: {run_dpo_loop(config, pair_config, training_args, model_args)}")


if __name__ == "__main__":
    run_cli(main)
