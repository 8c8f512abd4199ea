"""Train a SELF-J judge with self-distillation (with-reference teacher, reference-free student).

    accelerate launch recipes/train_judge.py --config recipes/configs/train_judge.yaml
    accelerate launch --config_file ds_configs/accelerate_zero2.yaml recipes/train_judge.py --config recipes/configs/train_judge.yaml
    accelerate launch --config_file ds_configs/accelerate_zero3.yaml recipes/train_judge.py --config recipes/configs/train_judge.yaml
"""

from transformers import TrainingArguments

from selfj_rlhf.cli import cpu_training_defaults, make_trl_parser, run_cli
from selfj_rlhf.distill import JudgeTrainingConfig
from selfj_rlhf.train_judge import train_judge


def make_parser():
    return cpu_training_defaults(make_trl_parser(JudgeTrainingConfig, TrainingArguments))


def main(argv=None):
    config, training_args = make_parser().parse_args_and_config(argv)
    print(f"judge saved to {train_judge(config, training_args)}")


if __name__ == "__main__":
    run_cli(main)
