"""Rejection-sampling fine-tuning with the SELF-J judge: rounds of best-of-n -> best candidate per
prompt above a score threshold -> SFT (TRL SFTTrainer, LoRA or full) -> next round's policy.

    accelerate launch recipes/rejection_sampling.py --config recipes/configs/rejection_sampling.yaml
    accelerate launch --cpu --num_processes 2 recipes/rejection_sampling.py --config recipes/configs/rejection_sampling.yaml
    accelerate launch --config_file ds_configs/accelerate_zero2.yaml recipes/rejection_sampling.py \
        --config recipes/configs/rejection_sampling.yaml

Restarting the same command after a kill resumes: finished stages of every round are skipped.
"""

from trl import ModelConfig, SFTConfig

from selfj_rlhf.cli import cpu_training_defaults, make_trl_parser, run_cli
from selfj_rlhf.policy_loop import RejectionSamplingConfig, run_rejection_sampling


def make_parser():
    return cpu_training_defaults(make_trl_parser(RejectionSamplingConfig, SFTConfig, ModelConfig))


def main(argv=None):
    config, training_args, model_args = make_parser().parse_args_and_config(argv)
    print(f"final policy: {run_rejection_sampling(config, training_args, model_args)}")


if __name__ == "__main__":
    run_cli(main)
