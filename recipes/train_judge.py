"""Train a SELF-J judge with self-distillation (with-reference teacher, reference-free student).

    accelerate launch recipes/train_judge.py --config recipes/configs/train_judge.yaml
    accelerate launch --config_file ds_configs/accelerate_zero2.yaml recipes/train_judge.py --config recipes/configs/train_judge.yaml
    accelerate launch --config_file ds_configs/accelerate_zero3.yaml recipes/train_judge.py --config recipes/configs/train_judge.yaml

A scalar head on a middle layer of the frozen model (the shipped judge's design; one process):

    python recipes/train_judge.py --config recipes/configs/train_judge_pool.yaml
"""

from transformers import TrainingArguments

from selfj_rlhf.cli.recipes import cpu_training_defaults, make_trl_parser, run_cli
from selfj_rlhf.cli.dry_run import DryRunArgs, allow_gpu_config_on_cpu, dry_run_plan, print_plan
from selfj_rlhf.core.errors import ConfigError
from selfj_rlhf.training.distill import JudgeTrainingConfig
from selfj_rlhf.training.train_judge import train_judge, train_scalar_judge


def make_parser():
    return cpu_training_defaults(make_trl_parser(JudgeTrainingConfig, TrainingArguments, DryRunArgs))


def main(argv=None):
    parser = make_parser()
    allow_gpu_config_on_cpu(parser, argv)
    config, training_args, dry = parser.parse_args_and_config(argv)
    if dry.dry_run:
        stages = ([f"cache layer-{config.head_layer} states (student and teacher prompts)", "fit the scalar head",
                   "save the judge directory"] if config.head == "scalar" else
                  ["teacher/student examples", "LoRA self-distillation (Trainer)", "save the judge directory"])
        print_plan(dry_run_plan("train_judge", [config, training_args], model=config.base_model, data=[config.labels],
                                dry=dry, template=config.template, max_length=config.max_length, stages=stages))
        return
    if config.head == "scalar":
        saved = train_scalar_judge(config, training_args.output_dir, seed=training_args.seed)
    elif config.head == "digit":
        saved = train_judge(config, training_args)
    else:
        raise ConfigError(f"head must be digit or scalar, got '{config.head}'")
    print(f"judge saved to {saved}")


if __name__ == "__main__":
    run_cli(main)
