"""GRPO (TRL GRPOTrainer) with the SELF-J judge as reward, optionally plus a soft overlong punishment.

    accelerate launch recipes/grpo.py --config recipes/configs/grpo.yaml
    accelerate launch --cpu --num_processes 2 recipes/grpo.py --config recipes/configs/grpo.yaml
    accelerate launch --config_file ds_configs/accelerate_zero2.yaml recipes/grpo.py --config recipes/configs/grpo.yaml

The merged policy is written to <output_dir>/policy; restarting after a kill resumes from the newest checkpoint.
"""

from trl import GRPOConfig, ModelConfig

from selfj_rlhf.cli import cpu_training_defaults, make_trl_parser, run_cli
from selfj_rlhf.grpo import GRPOScriptConfig, run_grpo


def make_parser():
    return cpu_training_defaults(make_trl_parser(GRPOScriptConfig, GRPOConfig, ModelConfig))


def main(argv=None):
    config, training_args, model_args = make_parser().parse_args_and_config(argv)
    print(f"final policy: {run_grpo(config, training_args, model_args)}")


if __name__ == "__main__":
    run_cli(main)
