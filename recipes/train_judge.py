"""Train a SELF-J judge with self-distillation (with-reference teacher, reference-free student).

    accelerate launch recipes/train_judge.py --config recipes/configs/train_judge.yaml
    accelerate launch --config_file ds_configs/accelerate_zero2.yaml recipes/train_judge.py --config recipes/configs/train_judge.yaml
    accelerate launch --config_file ds_configs/accelerate_zero3.yaml recipes/train_judge.py --config recipes/configs/train_judge.yaml

A scalar head on middle layers of the frozen model (the shipped judges' design; one process), for the policy's
own samples with the design chosen by cross-validation, or for other models' answers:

    python recipes/train_judge.py --config recipes/configs/train_judge_own_samples.yaml
    python recipes/train_judge.py --config recipes/configs/train_judge_pool.yaml
"""

from transformers import TrainingArguments

from selfj_rlhf.cli.recipes import cpu_training_defaults, make_trl_parser, run_cli
from selfj_rlhf.cli.dry_run import DryRunArgs, allow_gpu_config_on_cpu, dry_run_plan, print_plan
from selfj_rlhf.cli.stages import run_train_judge_stage
from selfj_rlhf.training.distill import JudgeTrainingConfig


def make_parser():
    return cpu_training_defaults(make_trl_parser(JudgeTrainingConfig, TrainingArguments, DryRunArgs))


def main(argv=None):
    parser = make_parser()
    allow_gpu_config_on_cpu(parser, argv)
    config, training_args, dry = parser.parse_args_and_config(argv)
    if dry.dry_run:
        layers = config.head_layers or [config.head_layer]
        cv = (f"choose among {len(config.cv_grid)} designs by {config.cv_folds}-fold cross-validation by prompt"
              if config.cv_folds else f"one design: layers {layers}")
        stages = ([f"cache the states up to the highest head layer (student prompts; teacher prompts with beta > 0)",
                   cv, "fit the design on every row", "publish the judge directory (cv.json, PROVENANCE.md)"]
                  if config.head == "scalar" else
                  ["teacher/student examples", "LoRA self-distillation (Trainer)", "save the judge directory"])
        print_plan(dry_run_plan("train_judge", [config, training_args], model=config.base_model, data=[config.labels],
                                dry=dry, template=config.template, max_length=config.max_length, stages=stages))
        return
    print(f"judge saved to {run_train_judge_stage(config, training_args)}")


if __name__ == "__main__":
    run_cli(main)
