"""Train a SELF-J judge with self-distillation (with-reference teacher, reference-free student).

    accelerate launch recipes/train_judge.py --config recipes/configs/train_judge.yaml
    accelerate launch --config_file ds_configs/accelerate_zero2.yaml recipes/train_judge.py --config recipes/configs/train_judge.yaml
    accelerate launch --config_file ds_configs/accelerate_zero3.yaml recipes/train_judge.py --config recipes/configs/train_judge.yaml
"""

import os

import torch
from transformers import TrainingArguments

from selfj_rlhf.cli import make_trl_parser, run_cli
from selfj_rlhf.distill import JudgeTrainingConfig
from selfj_rlhf.train_judge import train_judge


def make_parser():
    parser = make_trl_parser(JudgeTrainingConfig, TrainingArguments)
    # Without CUDA, accelerate's DeepSpeed path finds no backend and every process believes it is alone;
    # gloo makes `--use_deepspeed --num_processes N` on CPU a real N-process job.
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        parser.set_defaults(ddp_backend="gloo")
    return parser


def main(argv=None):
    config, training_args = make_parser().parse_args_and_config(argv)
    print(f"judge saved to {train_judge(config, training_args)}")


if __name__ == "__main__":
    run_cli(main)
