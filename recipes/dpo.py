"""DPO on SELF-J judge-built pairs (TRL DPOTrainer); ``--rounds k`` runs iterative DPO: the current
policy samples, the judge scores, pairs are built, DPO trains the next policy.

    accelerate launch recipes/dpo.py --config recipes/configs/dpo.yaml
    accelerate launch recipes/dpo.py --config recipes/configs/dpo.yaml --pairs_file runs/pairs/pairs.jsonl
    accelerate launch --cpu --num_processes 2 recipes/dpo.py --config recipes/configs/dpo.yaml
    accelerate launch --config_file ds_configs/accelerate_zero2.yaml recipes/dpo.py --config recipes/configs/dpo.yaml

Restarting the same command after a kill resumes: finished stages of every round are skipped.
"""

from pathlib import Path

from trl import DPOConfig, ModelConfig

from selfj_rlhf.cli.recipes import cpu_training_defaults, make_trl_parser, run_cli
from selfj_rlhf.cli.dry_run import DryRunArgs, allow_gpu_config_on_cpu, dry_run_plan, print_plan
from selfj_rlhf.data.prompts import BUNDLED_PROMPTS
from selfj_rlhf.rlhf.pairs import PairConfig
from selfj_rlhf.rlhf.rounds import DPOLoopConfig, run_dpo_loop


def make_parser():
    return cpu_training_defaults(make_trl_parser(DPOLoopConfig, PairConfig, DPOConfig, ModelConfig, DryRunArgs))


def main(argv=None):
    parser = make_parser()
    allow_gpu_config_on_cpu(parser, argv)
    config, pair_config, training_args, model_args, dry = parser.parse_args_and_config(argv)
    if dry.dry_run:
        data = [config.pairs_file] if config.pairs_file else [config.dataset or str(BUNDLED_PROMPTS)]
        stages = [f"round {k}: sample {config.n} answers per prompt, judge, build pairs ({pair_config.strategy}), DPO, "
                  "publish the merged policy" for k in range(config.rounds)]
        print_plan(dry_run_plan("dpo", [config, pair_config, training_args], model=model_args.model_name_or_path,
                                data=data if not config.pairs_file or Path(config.pairs_file).exists() else [],
                                dry=dry, judge=config.judge, template=config.judge_template,
                                max_length=config.max_judge_length, stages=stages))
        return
    print(f"final policy: {run_dpo_loop(config, pair_config, training_args, model_args)}")


if __name__ == "__main__":
    run_cli(main)
